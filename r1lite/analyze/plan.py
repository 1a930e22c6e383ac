"""`r1lite plan`: whether a recipe fits a card, how long it runs and what it costs, before anything loads.

    >>> p = make_plan(load_recipe("countdown", "gpu-16gb"), card_by_name("16"))
    >>> p.fits, p.peak_gib, p.stages["grpo_train"].parts          # bytes per part, per stage
    >>> check_fits(recipe, card)            # raises with the setting to change when it cannot fit
    >>> auto_fit(recipe, card)              # the recipe with micro-batch, merge and eval batch that fit

A model of memory, not a measurement: it counts what r1lite's stages allocate, part by part, from
the model's shape and the recipe, the way transformers 5.24 / TRL 1.16 / PEFT 0.21 / bitsandbytes 0.50
allocate it (see each function). It is checked against stock-TRL GRPO peaks measured on an H200
(tests/test_plan.py, within 15 %) and against CPU runs of tiny models. Tensor bytes are what
`torch.cuda.max_memory_allocated` counts; a card also needs the CUDA context and allocator slack,
which `peak` adds.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from r1lite.analyze import hardware
from r1lite.analyze.hardware import CARDS, GIB, Card, card_by_name, find_card
from r1lite.analyze.report import series
from r1lite.errors import R1liteError
from r1lite.runs.distributed import world_size
from r1lite.runs.rundir import Run
from r1lite.train.models import cpu_bf16

PROMPT_TOKENS = 160  # a rendered Countdown prompt is ~140 Qwen tokens; chat templates add ~20
COMPACT_PROMPT_TOKENS = 70  # data.prompt_format=compact, with SmolLM2's default system prompt


CHARS_PER_TOKEN = 3.5  # English prompt text in Qwen's and SmolLM2's tokenizers (Countdown's: ~560 chars, ~160 tokens)
CHAT_TEMPLATE_TOKENS = 40  # a chat template's system prompt and role markers (SmolLM2's default)


def prompt_tokens_for(recipe: Any) -> int:
    """The longest prompt of a batch, estimated from the recipe's task and prompt format.

    Countdown's are measured constants; another task's longest of 16 sampled prompts, rendered
    without a tokenizer, at CHARS_PER_TOKEN (no model or tokenizer is loaded to plan).
    """
    fmt = recipe.data.prompt_format
    if recipe.data.task == "countdown":
        return COMPACT_PROMPT_TOKENS if fmt == "compact" else PROMPT_TOKENS
    import itertools

    task = recipe.data.make_task()
    examples = list(itertools.islice(task.stream(recipe.data.seed), 16))
    chars = max(len(task.render_prompt(e, "qwen-instruct" if fmt == "chat" else fmt)) for e in examples)
    return math.ceil(chars / CHARS_PER_TOKEN) + (CHAT_TEMPLATE_TOKENS if fmt in ("compact", "chat") else 0)


# Device memory a process holds outside PyTorch's allocator (so outside max_memory_allocated): the CUDA context
# and the kernel modules it loads. A bare context takes 0.27 GiB with CUDA's lazy module loading and 0.62 GiB
# without (pytorch/pytorch#86509); with every torch kernel loaded transformers' "Model training anatomy" measured
# 1,343 MB and quotes 1-2 GB. A training process adds cuBLAS/cuBLASLt, Triton (TRL's fused LM head) and
# bitsandbytes modules, and NCCL's buffers under several processes. 1.0 GiB until `make gpu-check` measures it
# (each profile's `cuda_context_gib`: device memory in use minus what the allocator reserved).
CUDA_CONTEXT_GIB = 1.0
ALLOCATOR_SLACK = 0.05  # fragmentation of PyTorch's caching allocator, share of tensor bytes
HEADROOM = 0.10  # a plan "fits comfortably" with this share of the card left over
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ----------------------------------------------------------------------------------------------
# Model shapes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int = 0  # 0: hidden // heads
    tied: bool = True
    qkv_bias: bool = False
    source: str = ""

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder-layer linear."""
        h, q, kv, i = self.hidden, self.heads * self.d, self.kv_heads * self.d, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def other_params(self) -> int:
        """Embeddings (and an untied LM head), norms, attention biases: never quantized."""
        bias = (self.heads + 2 * self.kv_heads) * self.d if self.qkv_bias else 0
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * (2 * self.hidden + bias) + self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        names = LORA_TARGETS if targets == "all-linear" else [t for t in targets if t in LORA_TARGETS]
        return self.layers * sum(r * sum(self.linear_shapes()[n]) for n in names)

    @classmethod
    def from_config(cls, config: Any, source: str = "config.json") -> Shape:
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        get = (lambda k, d=None: c.get(k, d)) if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
        return cls(
            vocab=get("vocab_size"),
            hidden=get("hidden_size"),
            intermediate=get("intermediate_size"),
            layers=get("num_hidden_layers"),
            heads=get("num_attention_heads"),
            kv_heads=get("num_key_value_heads") or get("num_attention_heads"),
            head_dim=get("head_dim") or 0,
            tied=bool(get("tie_word_embeddings", True)),
            qkv_bias=get("model_type") == "qwen2" or bool(get("attention_bias", False)),
            source=source,
        )


_QWEN = "published config.json on the Hugging Face hub"
SHAPES: dict[str, Shape] = {
    "qwen/qwen2.5-0.5b": Shape(151936, 896, 4864, 24, 14, 2, qkv_bias=True, source=_QWEN),
    "qwen/qwen2.5-1.5b": Shape(151936, 1536, 8960, 28, 12, 2, qkv_bias=True, source=_QWEN),
    "qwen/qwen2.5-3b": Shape(151936, 2048, 11008, 36, 16, 2, qkv_bias=True, source=_QWEN),
    "qwen/qwen2.5-7b": Shape(152064, 3584, 18944, 28, 28, 4, tied=False, qkv_bias=True, source=_QWEN),
    # Qwen3-1.7B(-Base): 8 KV heads of 128 (4x Qwen2.5-3B's KV cache per token), no q/k/v bias, tied embeddings;
    # q_norm/k_norm (2 x 128 weights a layer) are left out of the count
    "qwen/qwen3-1.7b": Shape(151936, 2048, 6144, 28, 16, 8, head_dim=128, source=_QWEN),
    "smollm2-135m-instruct": Shape(49152, 576, 1536, 30, 9, 3, source="SmolLM2-135M-Instruct config.json"),
}
SHAPES["huggingfacetb/smollm2-135m-instruct"] = SHAPES["smollm2-135m-instruct"]


def shape_for(name: str) -> Shape:
    """The built-in shape of a model the recipes name (instruct and base variants too), or a local folder's
    config.json."""
    key = name.lower().removesuffix("-instruct").removesuffix("-base")
    if name.lower() in SHAPES or key in SHAPES:
        return SHAPES.get(name.lower(), SHAPES.get(key))
    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        return Shape.from_config(json.loads(config.read_text()), source=str(config))
    known = ", ".join(sorted(k for k in SHAPES if "/" in k))
    raise R1liteError(
        f"r1lite plan does not know the shape of '{name}'; point model.name at a local folder with config.json, "
        f"or use one of: {known}"
    )


# ----------------------------------------------------------------------------------------------
# Cards
# ----------------------------------------------------------------------------------------------


# The card table (memory, speed, rental price) and its one name matcher live in r1lite.analyze.hardware:
# `r1lite plan --gpu`, the cost report and the detected GPU all find cards through `hardware.find_card`.


def card_for_profile(profile: str | None) -> Card | None:
    """The card a `gpu-<N>gb` profile (or a variant of it, `gpu-<N>gb-<what>`) is named for."""
    m = re.fullmatch(r"gpu-(\d+)gb(-[\w.-]+)?", profile or "")
    return card_by_name(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------------
# Memory parts (bytes)
# ----------------------------------------------------------------------------------------------


def weight_bytes(shape: Shape, mode: str, double_quant: bool, dtype_bytes: int) -> int:
    """The frozen base: bitsandbytes quantizes the decoder linears; embeddings, norms, biases stay in dtype.

    NF4/FP4: 4 bits per weight, one absmax per 64 weights (fp32, or 8-bit with one fp32 per 256 blocks
    under double quantization); int8: one byte per weight plus one fp32 scale per output row.
    """
    linear = shape.linear_params
    if mode in ("nf4", "fp4"):
        absmax = linear / 64 * (1 + 4 / 256) if double_quant else linear / 64 * 4
        quantized = linear / 2 + absmax
    elif mode == "int8":
        quantized = linear + shape.layers * sum(out for _, out in shape.linear_shapes().values()) * 4
    else:
        quantized = linear * dtype_bytes
    return int(quantized + shape.other_params * dtype_bytes)


def lora_bytes(trainable: int, adapter_bytes: int = 4, training: bool = True) -> int:
    """Adapters: weights, and when training their gradients and AdamW's two moments, all in the adapter dtype."""
    return trainable * adapter_bytes * (4 if training else 1)


def kv_bytes(shape: Shape, rows: int, length: int, act_bytes: int) -> int:
    """K and V of every layer for `rows` sequences of `length` tokens, in the activations' dtype."""
    return 2 * shape.layers * rows * shape.kv_heads * shape.d * length * act_bytes


def training_activation_parts(
    shape: Shape,
    micro_batch: int,
    seq_len: int,
    grad_ckpt: bool,
    act_bytes: int,
    compute_bytes: int,
    lora_cast_copies: bool,
    on_cpu: bool = False,
    scored: int | None = None,
) -> dict[str, int]:
    """Activations of one micro-batch at the peak of its backward pass, in two parts.

    `activations_kept`: what the forward leaves for the backward. Per token and layer: the layer input
    and the normed input of both blocks, q/k/v, the rotated q/k and the attention output, the MLP's
    gate, up, activation and product (4 x intermediate); bf16 norms also keep an fp32 upcast of their
    input; with fp32 LoRA weights under bf16 autocast, PEFT casts each adapted layer's input and autocast
    keeps a bf16 copy for the adapter's backward. CPU SDPA with a padding mask takes the math path, which
    keeps the [batch, heads, seq, seq] attention weights. With gradient checkpointing only each layer's
    input is kept and a layer's worth is rebuilt during its backward.

    `backward_working_set`: the largest transient of the backward, either TRL 1.16's fused LM head (one
    [4,096 tokens x 32,768] logits tile, allocated at full width whatever the vocabulary, plus the fp32
    gradient of the hidden states) or one layer's gradients (2 hidden + 2 intermediate per token) on top
    of its recomputed activations. On CUDA a Triton kernel folds each tile in place; on CPU TRL's torch
    fallback makes ~7 fp32 temporaries of the tile's used width (measured: bench/plan_check.py). GRPO on
    CPU (`scored`: completion tokens per sequence) scores with r1lite's plain head instead: the logits of
    the completion, their temperature-scaled copy, log-softmax and the entropy's two temporaries, fp32.
    """
    h, i, q, kv = shape.hidden, shape.intermediate, shape.heads * shape.d, shape.kv_heads * shape.d
    tokens = micro_batch * seq_len
    per_token = (4 * h + 3 * q + 3 * kv + 4 * i) * act_bytes
    if act_bytes == 2:
        per_token += 2 * h * 4  # RMSNorm's fp32 upcast of its input, kept for the backward
    if lora_cast_copies:
        per_token += (6 * h + i) * 2
    layer = tokens * per_token
    if on_cpu:
        layer += micro_batch * shape.heads * seq_len * seq_len * 4
    transient = tokens * (2 * h + 2 * i) * act_bytes
    head = min(tokens, 4096) * 32768 * compute_bytes + tokens * h * 4
    if on_cpu and scored is not None:  # r1lite.train.grpo_trainer's plain head
        head = 5 * micro_batch * scored * shape.vocab * 4 + tokens * h * 4
    elif on_cpu:
        head += 7 * min(tokens, 4096) * min(shape.vocab, 32768) * 4
    if grad_ckpt:
        kept = shape.layers * tokens * h * act_bytes
        working = max(head, layer + transient)
    else:
        kept = shape.layers * layer
        working = max(head, transient)
    return {"activations_kept": int(kept), "backward_working_set": int(working)}


def decode_logits_bytes(shape: Shape, rows: int) -> int:
    """One decode step's logits in fp32 and sampling's copies (scaled, softmax, filtered)."""
    return rows * shape.vocab * 4 * 4


def train_step_bytes(
    shape: Shape, trainable: int, micro_batch: int, seq_len: int, grad_ckpt: bool, act_bytes: int
) -> int:
    """What the GRPO/SFT training step adds to a loaded policy: adapter gradients, AdamW's two moments and one
    micro-batch's activations (the adapter itself is resident before the first rollout; its states are not).

    This is the reserve the rollout engine keeps free when it decides whether to merge (`rollout_fits`).
    """
    parts = training_activation_parts(
        shape, micro_batch, seq_len, grad_ckpt, act_bytes, act_bytes, lora_cast_copies=act_bytes == 2
    )
    return lora_bytes(trainable) - lora_bytes(trainable, training=False) + sum(parts.values())


def graph_pool_bytes(shape: Shape, rows: int) -> int:
    """The private memory pool of a captured decode step: its logits and the layer-sized temporaries it keeps."""
    return rows * (shape.vocab * 4 + (8 * shape.hidden + 4 * shape.intermediate) * 2)


# ----------------------------------------------------------------------------------------------
# Decisions the planner and the rollout engine share (one function each, called by both)
# ----------------------------------------------------------------------------------------------

# Compiled (CUDA-graph) decode per engine path, from GPU measurements: under `grpo.rollout_compile: auto` a
# path is captured only once `bench/gpu_check.py` has shown on a GPU that it works and is faster than
# eager decoding. Neither has been measured yet (bench/NOTES.md), so both decode eagerly by default.
COMPILE_PROVEN: dict[str, bool] = {"merged": False, "unmerged": False}


def compiles(setting: bool | str, merged: bool, on_cuda: bool) -> bool:
    """Whether the engine captures its decode step: never off CUDA; `auto` only on a path proven on a GPU."""
    if not on_cuda or setting is False:
        return False
    return setting is True or COMPILE_PROVEN["merged" if merged else "unmerged"]


def headroom_bytes(total: int) -> int:
    """Memory a stage leaves free on a card of `total` bytes: HEADROOM of it, at least 1 GiB."""
    return int(max(GIB, HEADROOM * total))


def rollout_fits(need: int, reserve: int, free: int, total: int, headroom: bool = True) -> bool:
    """The engine's memory rule: a rollout's buffers (`need`) beside the stage's `reserve` (the training step in
    GRPO, nothing in an eval), with allocator slack, in `free` bytes, keeping the headroom when asked.

    With headroom it decides whether LoRA is merged for decoding; without, whether the rollout can run at all.
    """
    margin = headroom_bytes(total) if headroom else 0
    return (need + reserve) * (1 + ALLOCATOR_SLACK) + margin <= free


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


@dataclass
class Stage:
    parts: dict[str, int]

    @property
    def tensor_bytes(self) -> int:
        return sum(self.parts.values())

    def peak_gib(self, on_cuda: bool) -> float:
        """Tensor bytes plus allocator slack, plus the CUDA context on a GPU."""
        return self.tensor_bytes * (1 + ALLOCATOR_SLACK) / GIB + (CUDA_CONTEXT_GIB if on_cuda else 0.0)

    def as_dict(self, on_cuda: bool) -> dict[str, Any]:
        return {
            "peak_gib": round(self.peak_gib(on_cuda), 2),
            "tensor_gib": round(self.tensor_bytes / GIB, 3),
            "parts": {k: round(v / GIB, 3) for k, v in self.parts.items() if v},
        }


@dataclass
class Plan:
    model: str
    profile: str | None
    shape: Shape
    on_cuda: bool
    card: Card | None
    stages: dict[str, Stage]
    merged: bool | None  # the engine's merge decision for GRPO rollouts (None: TRL generates)
    rollout: str
    step_seconds: float | None
    run_hours: float | None
    usd: float | None
    timing_sources: list[str] = field(default_factory=list)
    gpus: int = 1
    verdicts: dict[str, bool] = field(default_factory=dict)  # card -> fits with headroom, planned for that card
    merge: dict[str, bool | None] = field(default_factory=dict)  # stage -> LoRA merged for decoding (None: no engine)
    compiled: dict[str, bool] = field(default_factory=dict)  # stage -> decode step captured
    free_before: dict[str, int] = field(default_factory=dict)  # stage -> free bytes its merge decision assumed
    episodes: int = 0  # prompts x generations x steps
    generated_tokens: int = 0  # at most: every completion at max_completion_length
    typical: TypicalLength | None = None  # the run timed at a measured or cited mean completion length

    @property
    def peak_gib(self) -> float:
        return max(s.peak_gib(self.on_cuda) for s in self.stages.values())

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda k: self.stages[k].peak_gib(self.on_cuda))

    def fits(self, card: Card | None = None, headroom: float = 0.0) -> bool | None:
        card = card or self.card
        return None if card is None else self.peak_gib <= card.gib * (1 - headroom)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "profile": self.profile,
            "device": "cuda" if self.on_cuda else "cpu",
            "gpus": self.gpus,
            "card": self.card.name if self.card else None,
            "card_gib": self.card.gib if self.card else None,
            "peak_gib": round(self.peak_gib, 2),
            "peak_stage": self.peak_stage,
            "fits": self.fits(),
            "fits_with_headroom": self.fits(headroom=HEADROOM),
            "rollout": self.rollout,
            "merged": self.merged,
            "merge": self.merge,
            "compiled_decode": self.compiled,
            "episodes": self.episodes,
            "generated_tokens_max": self.generated_tokens,
            "typical": None if self.typical is None else self.typical.as_dict(),
            "stages": {k: s.as_dict(self.on_cuda) for k, s in self.stages.items()},
            "step_seconds": None if self.step_seconds is None else round(self.step_seconds, 1),
            "run_hours": None if self.run_hours is None else round(self.run_hours, 2),
            "usd": None if self.usd is None else round(self.usd, 2),
            "cards": self.verdicts,
            "timing_sources": self.timing_sources,
            "shape_source": self.shape.source,
        }


def make_plan(
    recipe: Any,
    card: Card | None = None,
    gpus: int = 1,
    stock_trl: bool = False,
    prompt_tokens: int | None = None,
    verdicts: bool = True,
) -> Plan:
    """Every stage's memory, the engine's merge decision, step time, run time and cost for `recipe`.

    `stock_trl` models TRL 1.16 as it comes (adapters cast to bf16 on a quantized base, HF generate),
    which is what the calibration measurements ran; `prompt_tokens` is the longest prompt of a batch
    (default: estimated from the prompt format). `verdicts` (the plan a user reads) adds each card's fit and
    the run timed at a typical completion length; the plans made inside (per card, per auto-fit candidate, for
    the engine) skip both.
    """
    prompt_tokens = prompt_tokens or prompt_tokens_for(recipe)
    shape = shape_for(recipe.model.name)
    on_cuda = recipe.model.device != "cpu"
    dtype_bytes = 2 if on_cuda and recipe.model.dtype in ("auto", "bfloat16", "float16") else 4
    compute_bytes = (
        dtype_bytes
        if recipe.quantization.mode == "none"
        else (4 if recipe.quantization.compute_dtype == "float32" else 2)
    )
    act = dtype_bytes  # hidden states take the embeddings' dtype
    q = recipe.quantization
    weights = weight_bytes(shape, q.mode, q.double_quant, dtype_bytes)
    trainable = shape.lora_params(recipe.lora.r, recipe.lora.target_modules)
    adapter_bytes = 2 if stock_trl and q.mode != "none" else 4
    lora_train = lora_bytes(trainable, adapter_bytes)
    strategy = recipe.distributed.strategy if gpus > 1 else "ddp"
    if strategy in ("zero2", "zero3"):  # gradients and Adam moments sharded over the processes
        lora_train = int(trainable * adapter_bytes * (1 + 3 / gpus))
    if strategy == "zero3":  # the weights too
        weights //= gpus
    casts = adapter_bytes == 4 and act == 2
    g = recipe.grpo
    rows = g.prompts_per_step * g.num_generations // gpus
    seq = prompt_tokens + g.max_completion_length
    backend = "trl" if stock_trl else g.backend(on_cuda, sharded=gpus > 1 and recipe.distributed.strategy == "zero3")

    def train_parts(micro: int, length: int, ckpt: bool, scored: int | None = None) -> dict[str, int]:
        on_cpu = not on_cuda
        return training_activation_parts(shape, micro, length, ckpt, act, compute_bytes, casts, on_cpu, scored)

    # The engine's decisions, taken as it takes them (`rollout_fits`, `compiles`): from the free memory of a
    # loaded policy (its adapter, no optimizer state yet) and each stage's own reserve.
    card_bytes = int(card.gib * GIB) if card else 0
    copy = shape.params * compute_bytes  # the engine's dense copy is in the compute dtype
    adapter = lora_bytes(trainable, adapter_bytes, training=False)
    decisions: dict[str, bool | None] = {}
    compiled: dict[str, bool] = {}
    free_before: dict[str, int] = {}

    def engine_parts(stage: str, rows: int, length: int, resident: int, reserve: int) -> dict[str, int]:
        """The rollout buffers of one stage's engine, after its merge decision (recorded per stage)."""
        free = card_bytes - int(CUDA_CONTEXT_GIB * GIB) - int(resident * (1 + ALLOCATOR_SLACK))
        logits = decode_logits_bytes(shape, rows)

        def need(merged: bool) -> int:
            pool = graph_pool_bytes(shape, rows) if compiles(g.rollout_compile, merged, on_cuda) else 0
            return (copy if merged else 0) + kv_bytes(shape, rows, length, compute_bytes if merged else act) + pool

        if g.rollout_merge != "auto":
            merged = g.rollout_merge == "merged"
        elif card is None or not on_cuda:  # the engine on CPU: merge unless the weights are quantized
            merged = q.mode == "none"
        else:
            merged = rollout_fits(need(True) + logits, reserve, free, card_bytes)
        decisions[stage], free_before[stage] = merged, free
        compiled[stage] = compiles(g.rollout_compile, merged, on_cuda)
        return {
            "merged_copy": copy if merged else 0,
            "kv_cache": kv_bytes(shape, rows, length, compute_bytes if merged else act),
            "graph_pool": graph_pool_bytes(shape, rows) if compiled[stage] else 0,
        }

    cache_len = -(-seq // 256) * 256
    train = train_parts(g.micro_batch_size, seq, recipe.model.gradient_checkpointing, g.max_completion_length)
    resident = {"weights": weights, "lora_and_adam": lora_train}
    merged: bool | None = None
    rollout_parts: dict[str, int]
    if backend == "engine":
        reserve = train_step_bytes(shape, trainable, g.micro_batch_size, seq, recipe.model.gradient_checkpointing, act)
        rollout_parts = engine_parts("grpo_rollout", rows, cache_len, weights + adapter, reserve)
        merged = decisions["grpo_rollout"]
        held = rollout_parts  # the engine keeps its buffers for the whole run
    else:
        rollout_parts = {"kv_cache": kv_bytes(shape, rows, seq, act) + kv_bytes(shape, rows, seq, act) // shape.layers}
        held = {}
    stages: dict[str, Stage] = {}
    e = recipe.eval
    eval_len = prompt_tokens + e.max_new_tokens
    infer_weights = {"weights": weights, "adapter": lora_bytes(trainable, training=False)}
    if backend == "engine":  # an eval stage's engine decides for itself: nothing to train beside it
        eval_cache = -(-eval_len // 256) * 256
        eval_parts = engine_parts("eval", e.batch_size, eval_cache, sum(infer_weights.values()), 0)
    else:
        eval_parts = {"kv_cache": kv_bytes(shape, e.batch_size, eval_len, act)}
    stages["eval"] = Stage({**infer_weights, **eval_parts, "logits": decode_logits_bytes(shape, e.batch_size)})
    if recipe.sft.enabled:
        s = recipe.sft
        stages["sft_step"] = Stage(
            {**resident, **train_parts(s.batch_size, s.max_length, recipe.model.gradient_checkpointing)}
        )
    if g.enabled:
        stages["grpo_rollout"] = Stage({**resident, **rollout_parts, "logits": decode_logits_bytes(shape, rows)})
        stages["grpo_train"] = Stage({**resident, **held, **train})
        if g.eval_every:
            # greedy eval batches run on the training engine in its rollout's batch shape (stages.eval.generate):
            # no second cache; TRL's generation makes a cache per eval batch
            eval_rows = rows if backend == "engine" else min(e.batch_size, g.eval_examples)
            stages["grpo_periodic_eval"] = Stage(
                {
                    **resident,
                    **held,
                    "eval_kv_cache": 0 if backend == "engine" else kv_bytes(shape, eval_rows, seq, act),
                    "logits": decode_logits_bytes(shape, eval_rows),
                }
            )
    episodes = g.prompts_per_step * g.num_generations * g.max_steps if g.enabled else 0
    timing = run_timing(recipe, shape, card, on_cuda, rows, prompt_tokens, gpus)
    typical = (
        _typical(recipe, episodes, shape, card, on_cuda, rows, prompt_tokens, gpus) if timing and verdicts else None
    )
    fits = {}
    if on_cuda and verdicts:  # each card planned on its own: the engine's merge decision depends on the card
        fits = {
            c.name: bool(make_plan(recipe, c, gpus, stock_trl, prompt_tokens, verdicts=False).fits(headroom=HEADROOM))
            for c in CARDS
        }
    return Plan(
        model=recipe.model.name,
        profile=recipe.profile,
        shape=shape,
        on_cuda=on_cuda,
        card=card,
        stages=stages,
        merged=merged,
        rollout=backend,
        step_seconds=None if timing is None else timing.step_seconds,
        run_hours=None if timing is None else timing.run_hours,
        usd=None if timing is None else timing.usd,
        timing_sources=[] if timing is None else timing.sources,
        gpus=gpus,
        verdicts=fits,
        merge=decisions,
        compiled=compiled,
        free_before=free_before,
        episodes=episodes,
        generated_tokens=episodes * g.max_completion_length,
        typical=typical,
    )


# ----------------------------------------------------------------------------------------------
# Time and cost
# ----------------------------------------------------------------------------------------------

# Decode with HF generate (and with the engine, until it is measured on a GPU) is bound by kernel
# launches, not bandwidth, at these batch sizes: ms per decoder layer per decode step.
_CALIBRATION = "H200, stock TRL 1.16 GRPO on Qwen2.5-3B, 64 rows (shared/calibration, 2026-11-28)"
HF_GENERATE_MS_PER_LAYER = {
    "nf4": (129.0 / 36, f"{_CALIBRATION}: NF4 HF generate at 496 tok/s"),
    "none": (95.4 / 36, f"{_CALIBRATION}: bf16 HF generate at 671 tok/s"),
}
TRAIN_MFU = (0.30, "assumed share of the card's dense bf16 TFLOP/s reached by LoRA training steps (not measured)")
# CPU throughput of SmolLM2-135M in bf16 on 2 cores, scaled by parameter count for other models
CPU_SOURCE = (
    "SmolLM2-135M in bf16 on a 2-core AMD EPYC with AVX512-BF16 (2026-12-06: bench/decode.py, make demo-rl): "
    "a decode step 16 ms + 1.1 ms per row, GRPO training ~420 tokens/s, SFT ~270 tokens/s, ~2.3 sampling rounds a "
    "step with dynamic sampling"
)
CPU_DECODE_MS = (16.0, 1.125)  # one decode step of the engine: fixed + per row
CPU_TRAIN_S_PER_TOKEN = 1 / 420  # GRPO training, prompt + completion tokens (forward + backward)
CPU_SFT_S_PER_TOKEN = 1 / 270  # SFT (its batches of 4 are padded and small)
CPU_FP32_SLOWER = 2.1  # a decode step in fp32 / in bf16 (bench/decode.py: 319 / 152 ms), taken for training too
CPU_SAMPLING_ROUNDS = 2.3  # rollouts per GRPO batch with dynamic sampling (measured mean, cpu profiles)


# A mean completion length where no run of the recipe has logged one, per task. minrl trains Qwen3-1.7B-Base with
# LoRA to ~60 % on Countdown with completions capped at 400 tokens (github.com/janhuenermann/minrl,
# scripts/train_grpo.py: generation_length=400), so a run that learns the task can average that or less.
CITED_COMPLETION_TOKENS: dict[str, tuple[int, str]] = {
    "countdown": (
        400,
        "cited: minrl trains Qwen3-1.7B-Base to ~60 % on Countdown with completions capped at 400 tokens",
    ),
}


@dataclass
class Timing:
    """Seconds per GRPO step, hours and dollars for a run, and where the figures come from."""

    step_seconds: float
    run_hours: float
    usd: float | None
    sources: list[str]


@dataclass
class TypicalLength:
    """The run timed at a stated mean completion length instead of every completion at its maximum."""

    completion_tokens: int
    source: str
    measured: bool
    generated_tokens: int
    timing: Timing

    def as_dict(self) -> dict[str, Any]:
        t = self.timing
        return {
            "completion_tokens": self.completion_tokens,
            "source": self.source,
            "measured": self.measured,
            "generated_tokens": self.generated_tokens,
            "step_seconds": round(t.step_seconds, 1),
            "run_hours": round(t.run_hours, 2),
            "usd": None if t.usd is None else round(t.usd, 2),
        }


def _cpu_timing(recipe: Any, shape: Shape, rows: int, prompt: int) -> Timing:
    """Seconds per GRPO step and hours of a CPU run from what the engine and the trainer measured on 2 cores
    (`CPU_SOURCE`, bf16; `CPU_FP32_SLOWER` times that where the run computes in fp32).

    A GRPO batch is sampled once (more rounds with dynamic sampling), scored once more for the old log-probs when
    it serves several updates (TRL's num_iterations), then trained on once per update; evals decode greedily and,
    with pass@k, k samples per problem.
    """
    g, e = recipe.grpo, recipe.eval
    scale = shape.params / SHAPES["smollm2-135m-instruct"].params
    if not cpu_bf16(recipe.model, on_cuda=False):
        scale *= CPU_FP32_SLOWER
    train_s = CPU_TRAIN_S_PER_TOKEN * scale

    def decode_s(batch: int, tokens: int) -> float:
        return tokens * (CPU_DECODE_MS[0] + CPU_DECODE_MS[1] * batch) / 1000 * scale

    seq = prompt + g.max_completion_length
    iterations = g.trl.get("num_iterations", 1)
    rounds = min(CPU_SAMPLING_ROUNDS, 1 + g.dynamic_sampling_rounds) if g.dynamic_sampling else 1
    sampling = rounds * decode_s(rows, g.max_completion_length) + (rows * seq * train_s / 3 if iterations > 1 else 0)
    step = sampling / iterations + rows * seq * train_s
    completion = 20 if recipe.sft_completions() == "answers" else 60 if recipe.sft.trace_style == "short" else 150
    sft_tokens = min(prompt + completion, recipe.sft.max_length)
    sft_s = recipe.sft.examples * recipe.sft.epochs * sft_tokens * CPU_SFT_S_PER_TOKEN * scale
    sft_s = sft_s if recipe.sft.enabled else 0.0
    one_eval = math.ceil(e.examples / e.batch_size) * decode_s(e.batch_size, e.max_new_tokens)
    if e.pass_k:
        one_eval += math.ceil(e.examples * e.pass_k / e.batch_size) * decode_s(e.batch_size, e.max_new_tokens)
    hours = (step * g.max_steps + sft_s + 2 * one_eval) / 3600
    return Timing(step, hours, 0.0, [f"CPU: {CPU_SOURCE}; scaled by parameter count for other models"])


def _gpu_timing(recipe: Any, shape: Shape, card: Card, rows: int, prompt: int, gpus: int) -> Timing:
    g = recipe.grpo
    mode = "none" if recipe.quantization.mode == "none" else "nf4"
    ms_per_layer, gen_source = HF_GENERATE_MS_PER_LAYER[mode]
    decode_s = max(ms_per_layer * shape.layers / 1000, weight_bytes(shape, mode, True, 2) / (card.bandwidth_gbs * 1e9))
    mfu, mfu_source = TRAIN_MFU
    flops_per_token = (8 if recipe.model.gradient_checkpointing else 6) * shape.params
    train = rows * (prompt + g.max_completion_length) * flops_per_token / (card.tflops * 1e12 * mfu)
    step = decode_s * g.max_completion_length + train
    evals = (g.max_steps // g.eval_every if g.eval_every else 0) * math.ceil(g.eval_examples / recipe.eval.batch_size)
    final_evals = 2 * math.ceil(recipe.eval.examples / recipe.eval.batch_size)
    eval_s = (evals * g.max_completion_length + final_evals * recipe.eval.max_new_tokens) * decode_s
    sft_s = 0.0
    if recipe.sft.enabled:
        sft_tokens = recipe.sft.examples * recipe.sft.epochs * recipe.sft.max_length
        sft_s = sft_tokens * flops_per_token / (card.tflops * 1e12 * mfu)
    hours = (step * g.max_steps + eval_s + sft_s) / 3600
    hourly = recipe.cost.gpu_hourly_usd if recipe.cost.gpu_hourly_usd is not None else card.usd_per_hour
    sources = [
        f"decode: {gen_source}; taken as card-independent (launch-bound), or the card's bandwidth if slower",
        f"training: {mfu_source}",
        "engine decode speed: not yet measured on a GPU; planned at HF generate's rate (an upper bound on time)",
    ]
    return Timing(step, hours, None if hourly is None else hours * hourly * gpus, sources)


def run_timing(
    recipe: Any, shape: Shape, card: Card | None, on_cuda: bool, rows: int, prompt: int, gpus: int = 1
) -> Timing | None:
    """The run's time and cost on `card` (None on a GPU the table has no speed for)."""
    if not on_cuda:
        return _cpu_timing(recipe, shape, rows, prompt)
    return _gpu_timing(recipe, shape, card, rows, prompt, gpus) if card is not None and card.tflops else None


def _measured_completion_tokens(recipe: Any) -> tuple[int, str] | None:
    """The mean completion length this recipe's own GRPO run logged (TRL's completions/mean_length), if any."""
    folder = Run.of(recipe).root
    _, lengths = series(folder, "grpo", "completion_length")
    if not lengths:
        return None
    mean = round(sum(lengths) / len(lengths))
    return mean, f"measured: mean over {len(lengths)} logged GRPO steps of {folder}"


def typical_completion(recipe: Any) -> tuple[int, str, bool] | None:
    """(tokens, source, measured): a measured run's mean completion length when there is one, else a cited figure
    for the recipe's task; None without either."""
    measured = _measured_completion_tokens(recipe)
    if measured is not None:
        return (*measured, True)
    cited = CITED_COMPLETION_TOKENS.get(recipe.data.task)
    return None if cited is None else (*cited, False)


def at_completion_length(recipe: Any, tokens: int) -> Any:
    """The recipe with every completion (GRPO and evals) at most `tokens` long."""
    g, e = recipe.grpo, recipe.eval
    return recipe.model_copy(
        update={
            "grpo": g.model_copy(update={"max_completion_length": min(tokens, g.max_completion_length)}),
            "eval": e.model_copy(update={"max_new_tokens": min(tokens, e.max_new_tokens)}),
        }
    )


def _typical(
    recipe: Any, episodes: int, shape: Shape, card: Card | None, on_cuda: bool, rows: int, prompt: int, gpus: int
) -> TypicalLength | None:
    """The run timed at the typical completion length, when one is known and below the maximum."""
    typical = typical_completion(recipe)
    if typical is None or not episodes or typical[0] >= recipe.grpo.max_completion_length:
        return None
    tokens, source, measured = typical
    timing = run_timing(at_completion_length(recipe, tokens), shape, card, on_cuda, rows, prompt, gpus)
    return None if timing is None else TypicalLength(tokens, source, measured, episodes * tokens, timing)


# ----------------------------------------------------------------------------------------------
# Refusing what cannot fit, and fitting it
# ----------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def auto_fit(recipe: Any, card: Card, headroom: float = HEADROOM, gpus: int = 1) -> tuple[Any, dict[str, Any]]:
    """The recipe with the largest micro-batch, eval batch and SFT batch (merged decoding if possible) that fit.

    Only memory knobs move: the GRPO batch per step, completion length and learning schedule stay as
    the recipe says (SFT keeps its effective batch through gradient accumulation). Returns the adjusted
    recipe and the settings changed (none when it already fits).
    """
    if make_plan(recipe, card, gpus, verdicts=False).fits(headroom=headroom):
        return recipe, {}
    g, e, s = recipe.grpo, recipe.eval, recipe.sft
    total = g.prompts_per_step * g.num_generations
    merges = ["auto", "unmerged"] if g.rollout_merge != "unmerged" else ["unmerged"]
    micros = sorted((d for d in _divisors(total) if d <= g.micro_batch_size), reverse=True)
    evals = sorted({b for b in (e.batch_size, 32, 16, 8, 4, 2, 1) if b <= e.batch_size}, reverse=True)
    sfts = _divisors(s.batch_size)[::-1]
    for merge, micro, eval_batch, sft_batch in itertools.product(merges, micros, evals, sfts):
        candidate = recipe.model_copy(
            update={
                "grpo": g.model_copy(update={"micro_batch_size": micro, "rollout_merge": merge}),
                "eval": e.model_copy(update={"batch_size": eval_batch}),
                "sft": s.model_copy(
                    update={"batch_size": sft_batch, "grad_accum": s.grad_accum * (s.batch_size // sft_batch)}
                ),
            }
        )
        if make_plan(candidate, card, gpus, verdicts=False).fits(headroom=headroom):
            return candidate, _changes(recipe, candidate)
    raise R1liteError(
        f"no micro-batch, merge mode or eval batch makes {recipe.model.name} fit {card.name} ({card.gib:.1f} GiB); "
        "lower grpo.max_completion_length or grpo.prompts_per_step x grpo.num_generations, or use a smaller model"
    )


def _changes(before: Any, after: Any) -> dict[str, Any]:
    out = {}
    for section, key in (
        ("grpo", "micro_batch_size"),
        ("grpo", "rollout_merge"),
        ("eval", "batch_size"),
        ("sft", "batch_size"),
        ("sft", "grad_accum"),
    ):
        old, new = getattr(getattr(before, section), key), getattr(getattr(after, section), key)
        if old != new:
            out[f"{section}.{key}"] = new
    return out


def check_fits(recipe: Any, card: Card, gpus: int = 1) -> Plan:
    """The plan, or one line naming the setting to change and the value that fits (with headroom)."""
    plan = make_plan(recipe, card, gpus, verdicts=False)
    if plan.fits():
        return plan
    try:
        _, changes = auto_fit(recipe, card, gpus=gpus)
    except R1liteError as e:
        raise R1liteError(
            f"{recipe.run_name} needs ~{plan.peak_gib:.1f} GiB at its peak ({plan.peak_stage}) but {card.name} has "
            f"{card.gib:.1f} GiB; {e}"
        ) from None
    fix = " ".join(f"--set {k}={v}" for k, v in changes.items())
    raise R1liteError(
        f"{recipe.run_name} needs ~{plan.peak_gib:.1f} GiB at its peak ({plan.peak_stage}) but {card.name} has "
        f"{card.gib:.1f} GiB; use {fix}, or --auto-fit to choose these for you"
    )


def planned_merge(recipe: Any, stage: str) -> bool | None:
    """The plan's merge decision for `stage` on this machine's card (None without CUDA or for an unknown model)."""
    card = detected_card()
    if card is None:
        return None
    try:
        return make_plan(recipe, card, world_size(), verdicts=False).merge.get(stage)
    except R1liteError:
        return None


def detected_card(vram_gib: float | None = None) -> Card | None:
    """The card this machine has (None without CUDA), or one of `vram_gib`."""
    if vram_gib is not None:
        return Card(f"{vram_gib:g} GiB card", vram_gib)
    hw = hardware.probe()
    if not hw.cuda:
        return None
    known = find_card(hw.gpu_name)
    return (
        replace(known, name=hw.gpu_name or known.name, gib=hw.gpu_total_gib)
        if known
        else Card(hw.gpu_name or "GPU", hw.gpu_total_gib)
    )

"""`r1lite plan`: whether a recipe fits a card, how long it runs and what it costs, before anything loads.

    >>> p = make_plan(load_recipe("countdown", "gpu-16gb"), card_by_name("16"))
    >>> p.fits, p.peak_gib, p.stages["grpo_train"].parts          # bytes per part, per stage
    >>> check_fits(recipe, card)            # raises with the setting to change when it cannot fit
    >>> auto_fit(recipe, card)              # the recipe with micro-batch, merge and eval batch that fit

The plan puts together the byte model (`r1lite.plan.memory`, per part from the model's `Shape`), the engine's
decisions (which it takes as the engine takes them, from the same functions) and the time model
(`r1lite.plan.timing`). Tensor bytes are what `torch.cuda.max_memory_allocated` counts; a card also needs the
CUDA context and allocator slack, which `peak` adds. Checked against stock-TRL GRPO peaks measured on an H200
(tests/test_plan.py) and against CPU runs of tiny models.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lite.errors import R1liteError
from r1lite.plan.hardware import CARDS, Card
from r1lite.plan.memory import (
    ALLOCATOR_SLACK,
    CUDA_CONTEXT_GIB,
    GIB,
    HEADROOM,
    compiles,
    decode_logits_bytes,
    graph_pool_bytes,
    kv_bytes,
    lora_bytes,
    optimizer_state_bytes,
    rollout_fits,
    training_activation_parts,
    weight_bytes,
)
from r1lite.plan.shapes import SHAPES, Shape
from r1lite.plan.timing import Timing, TypicalLength, run_timing, typical_timing, with_captured

PROMPT_TOKENS = 160  # a rendered Countdown prompt is ~140 Qwen tokens; chat templates add ~20
COMPACT_PROMPT_TOKENS = 54  # data.prompt_format=compact in SmolLM2's template with an empty system turn (51-54)


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
    task = recipe.data.make_task()
    examples = list(itertools.islice(task.stream(recipe.data.seed), 16))
    chars = max(len(task.render_prompt(e, "qwen-instruct" if fmt == "chat" else fmt)) for e in examples)
    return math.ceil(chars / CHARS_PER_TOKEN) + (CHAT_TEMPLATE_TOKENS if fmt in ("compact", "chat") else 0)


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
    timing: Timing | None = None  # eager and captured both, and which the plan's hours assume

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
            "decode_assumed": None if self.timing is None else self.timing.assumed,
            "captured": None
            if self.timing is None or self.timing.captured_step_seconds is None
            else {
                "step_seconds": round(self.timing.captured_step_seconds, 1),
                "run_hours": round(self.timing.captured_run_hours, 2),
            },
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
    measured_length: tuple[int, str] | None = None,
) -> Plan:
    """Every stage's memory, the engine's merge decision, step time, run time and cost for `recipe`.

    `stock_trl` models TRL 1.16 as it comes (adapters cast to bf16 on a quantized base, HF generate),
    which is what the calibration measurements ran; `prompt_tokens` is the longest prompt of a batch
    (default: estimated from the prompt format). `verdicts` (the plan a user reads) adds each card's fit and
    the run timed at a typical completion length (`measured_length`, a run's own mean with its source, when there
    is one; else the task's cited figure); the plans made inside (per card, per auto-fit candidate, for the engine)
    skip both.
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
    # loaded policy (its adapter, no optimizer state yet) and each stage's own reserve (in GRPO the optimizer state,
    # which lives through the step; training's activations do not meet the rollout's buffers, released before them).
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
    if backend == "engine":  # time-shared: the buffers are released before each training step and rebuilt after
        reserve = optimizer_state_bytes(trainable) if adapter_bytes == 4 else lora_train - adapter
        rollout_parts = engine_parts("grpo_rollout", rows, cache_len, weights + adapter, reserve)
        merged = decisions["grpo_rollout"]
    else:
        rollout_parts = {"kv_cache": kv_bytes(shape, rows, seq, act) + kv_bytes(shape, rows, seq, act) // shape.layers}
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
        # the step's peak is the larger phase plus what persists (base, adapter, optimizer state)
        stages["grpo_rollout"] = Stage({**resident, **rollout_parts, "logits": decode_logits_bytes(shape, rows)})
        stages["grpo_train"] = Stage({**resident, **train})
        if g.eval_every:
            # greedy eval batches run on the training engine in its rollout's batch shape (stages.eval.generate),
            # on its rebuilt buffers; TRL's generation makes a cache per eval batch
            eval_rows = rows if backend == "engine" else min(e.batch_size, g.eval_examples)
            eval_kv = {} if backend == "engine" else {"eval_kv_cache": kv_bytes(shape, eval_rows, seq, act)}
            own = rollout_parts if backend == "engine" else eval_kv
            stages["grpo_periodic_eval"] = Stage({**resident, **own, "logits": decode_logits_bytes(shape, eval_rows)})
    episodes = g.prompts_per_step * g.num_generations * g.max_steps if g.enabled else 0
    timing = run_timing(recipe, shape, card, on_cuda, rows, prompt_tokens, gpus, merged, backend)
    typical = (
        typical_timing(
            recipe, episodes, shape, card, on_cuda, rows, prompt_tokens, gpus, merged, backend, measured_length
        )
        if timing and verdicts
        else None
    )
    if compiled.get("grpo_rollout") and timing is not None:  # a GPU proved the captured step on this path
        timing = with_captured(timing)
        if typical is not None:
            typical.timing = with_captured(typical.timing)
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
        timing=timing,
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
# Refusing what cannot fit, and fitting it
# ----------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def auto_fit(
    recipe: Any,
    card: Card,
    headroom: float = HEADROOM,
    gpus: int = 1,
    stage: str | None = None,
    stage_gib: float | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The recipe with the largest micro-batch, eval batch and SFT batch (merged decoding if possible) that fit.

    Only memory knobs move: the GRPO batch per step, completion length and learning schedule stay as
    the recipe says (SFT keeps its effective batch through gradient accumulation). Returns the adjusted
    recipe and the settings changed (none when it already fits). With `stage` (a pipeline stage: `grpo`,
    `sft`, `eval_base`, ...) and `stage_gib`, that stage's planned peak on `card` must come under `stage_gib`: what
    ran out of memory is what must shrink, however much room another stage leaves, planned on the real card (a
    smaller imaginary one could change the merge decision the run will make).
    """

    def fits(candidate: Any) -> bool:
        plan = make_plan(candidate, card, gpus, verdicts=False)
        if stage is None or stage_gib is None:
            return bool(plan.fits(headroom=headroom))
        return stage_peak_gib(plan, stage) <= stage_gib

    if fits(recipe):
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
        if fits(candidate):
            return candidate, _changes(recipe, candidate)
    raise R1liteError(
        f"no micro-batch, merge mode or eval batch makes {recipe.model.name} fit {card.name} ({card.gib:.1f} GiB); "
        "lower grpo.max_completion_length or grpo.prompts_per_step x grpo.num_generations, or use a smaller model"
    )


def stage_peak_gib(plan: Plan, stage: str) -> float:
    """The planned peak of a pipeline stage (`grpo`, `sft`, `eval_base`, ...): the largest of its planned parts."""
    family = "eval" if stage.startswith("eval") else "sft" if stage == "sft" else stage
    return max((s.peak_gib(plan.on_cuda) for name, s in plan.stages.items() if name.startswith(family)), default=0.0)


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

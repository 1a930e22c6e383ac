"""Our rollout engine for GRPO: shared prefill, static KV cache, captured decode, optional LoRA merge.

    >>> engine = RolloutEngine(model, tokenizer, RolloutSettings(max_new_tokens=256, temperature=1.0))
    >>> out = engine.generate(prompt_ids, num_generations=8)    # prompts repeated 8x in a row, as TRL sends them
    >>> out.completion_ids, out.logprobs                         # per completion: tokens (EOS included), log-probs

Why not `model.generate`: in GRPO every prompt is sampled G times, and stock generation prefills
each copy separately, grows a dynamic cache token by token, and launches hundreds of small kernels
per token (NF4 dequantization + LoRA). Here:

1. each distinct prompt is prefilled once and its KV cache copied into its G rows;
2. the whole batch decodes into one preallocated static cache, so every decode step has the same
   shapes and, on CUDA, is compiled once (`torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs)
   and replayed;
3. when free memory allows, LoRA is merged into a dense working copy of the weights (dequantized
   NF4 + B·A·scale, in the compute dtype) for the duration of the rollout, so decoding runs plain
   matmuls; otherwise the NF4 + LoRA model decodes unmerged. The choice is logged and overridable.

Decode attention is grouped-query attention without repeated K/V (`grouped_decode_attention`): under
`torch.compile` transformers' SDPA path would expand K/V to every query head (8x the bytes per step on
Qwen2.5-3B). The prefill keeps only the last position's logits. Memory is checked before anything is
allocated, on both paths, against what the cache really costs in the dtype activations run in.

Sampling follows TRL/HF semantics (temperature, then top-k, then top-p). Returned log-probs are
log_softmax(logits / temperature) of the sampled tokens, the quantity TRL recomputes in training, with
the logits of a half-precision head computed in fp32 (`last_logits`). Non-finite logits (an fp16
overflow) stop the rollout with the setting to change, not a device-side assert.

Engines live on the model they serve (`engine_for`), so they die with it; `release_engines(model)`
frees their buffers at once (end of an eval, end of a stage).
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from r1lite import ui
from r1lite.analyze.hardware import GIB
from r1lite.analyze.plan import (
    Shape,
    compiles,
    decode_logits_bytes,
    graph_pool_bytes,
    kv_bytes,
    prompt_tokens_for,
    rollout_fits,
    train_step_bytes,
)
from r1lite.errors import PrecisionError, R1liteError
from r1lite.train.models import contiguous_head, cpu_bf16, uses_cuda


@dataclass
class RolloutSettings:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    merge: str = "auto"  # auto | merged | unmerged
    compile: bool | str = "auto"  # capture the decode step on CUDA: True, False, or auto (paths proven on a GPU)
    stop_at_eos: bool = True  # benchmarks turn this off so every completion has full length
    compile_backend: Any = None  # None: CUDA graphs on CUDA only; e.g. "aot_eager" to trace on CPU (tests)
    sync_every: int = 16  # decode steps between checks that every row has stopped (one device->host sync each)
    # the training step that must still fit beside the rollout buffers (0: no training, e.g. eval)
    train_micro_batch: int = 0  # completions per forward/backward
    train_seq_len: int = 0  # prompt + completion tokens of the longest sequence in a micro-batch
    train_grad_ckpt: bool = True
    planned_merge: bool | None = None  # `r1lite plan`'s decision for this stage, logged beside the engine's
    dtype: str | None = None  # the merged copy's dtype (e.g. "bfloat16" for CPU bf16); None: the compute dtype
    # auto: `inverse_cdf` on CPU (one uniform per row; multinomial is a third of a CPU decode step), multinomial
    # on CUDA; multinomial: torch.multinomial everywhere, the draws of transformers' generate under one seed
    sampler: Literal["auto", "multinomial"] = "auto"


@dataclass
class RolloutOutput:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def sample(
    logits: torch.Tensor, s: RolloutSettings, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] and their log-probs [B] under log_softmax(logits / temperature).

    A row whose logits are not finite (NaN or +inf: fp16 activations that overflowed) gets a non-finite log-prob
    and an arbitrary token, with no device-side assert (`torch.multinomial` on such a row kills a CUDA process);
    the engine raises `PrecisionError` at its next sync instead.
    """
    scaled = logits.float() if s.temperature == 1.0 else logits.float() / s.temperature  # [B, V]
    logp = torch.log_softmax(scaled, dim=-1)
    if s.greedy:
        tokens = scaled.argmax(dim=-1)
    else:
        filtered = scaled
        if s.top_k and s.top_k < filtered.shape[-1]:
            kth = torch.topk(filtered, s.top_k, dim=-1).values[:, -1:]
            filtered = filtered.masked_fill(filtered < kth, float("-inf"))
        if s.top_p < 1.0:
            sorted_logits, order = torch.sort(filtered, descending=True, dim=-1)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) > s.top_p  # keep the token that crosses top_p
            filtered = filtered.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(filtered, dim=-1)
        finite = torch.isfinite(probs.sum(dim=-1, keepdim=True))  # [B, 1]; NaN anywhere makes the sum NaN; no sync
        probs = torch.where(finite, probs, 1.0)  # a non-finite row is sampled as uniform
        if s.sampler == "multinomial" or probs.device.type != "cpu":
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            tokens = inverse_cdf(probs, generator)
    # not finite for a row with NaN or +inf logits (log_softmax spreads them over the row); finite otherwise, as
    # the chosen token has a probability above 0
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of CPU `probs` [B, V] (finite, not necessarily normalised), drawn by inverting the row's
    cumulative distribution.

    Draws B uniforms where `torch.multinomial` draws B x V exponentials on CPU (a third of a 135M model's
    decode step at 128 rows x 49k tokens). u is in (0, 1] and the CPU's cumsum adds in order, so the sums never
    decrease and the chosen token's interval has positive width: a token of probability 0 (masked by top-k/top-p)
    is never drawn. CUDA's parallel cumsum promises neither, which is why CUDA keeps multinomial.
    """
    cdf = probs.cumsum(dim=-1)
    u = 1.0 - torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def nonfinite_error(dtype: torch.dtype) -> PrecisionError:
    """The one-line error for NaN/inf logits in `dtype`, naming the settings that widen it."""
    wider = "--set model.dtype=float32 --set quantization.compute_dtype=float32"
    if dtype == torch.float16:
        bf16 = "--set model.dtype=bfloat16 --set quantization.compute_dtype=bfloat16"
        fix = f"use bf16 on a GPU that has it ({bf16}) or fp32 ({wider})"
    else:
        fix = f"rerun with {wider}"
    return PrecisionError(
        f"rollout: the policy's next-token logits are NaN or infinite in {str(dtype).removeprefix('torch.')} "
        f"(activations overflowed, or the weights diverged); {fix}"
    )


def _all_stopped(done: torch.Tensor, logps: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every row has stopped, in one device->host sync that also raises `PrecisionError` when a sampled
    token's log-prob is not finite (its logits were not)."""
    stopped, broken = torch.stack([done.all(), ~torch.isfinite(logps).all()]).tolist()
    if broken:
        raise nonfinite_error(dtype)
    return bool(stopped)


# ----------------------------------------------------------------------------------------------
# Merged working copy of a (quantized) PEFT model
# ----------------------------------------------------------------------------------------------


def _is_lora(module: Any) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer)


def _dense(module: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A parameter of `module` as a dense tensor: dequantized if bitsandbytes, LoRA delta added if adapted."""
    if _is_lora(module):
        w = _dense(module.base_layer, name, torch.float32)
        if name == "weight" and not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    w = w + module.get_delta_weight(adapter).float()
        return w.to(dtype)
    p = getattr(module, name)
    if type(p).__name__ in ("Params4bit", "Int8Params"):
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(p, state=getattr(module, "state", None)).to(dtype)
    return p.detach().to(dtype)


def base_model_of(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (with LoRA layers injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged_copy(model: Any, dtype: torch.dtype) -> Any:
    """A plain transformers model whose weights equal the (dequantized) base plus the LoRA deltas."""
    from transformers import AutoModelForCausalLM

    source = base_model_of(model)
    device = next(source.parameters()).device
    # built on the meta device and then filled: no random init (slow, and it would consume the RNG
    # stream that seeded sampling relies on)
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(source.config, dtype=dtype)
    copy.tie_weights()  # a no-op for untied models
    _materialize(copy, device)
    copy.eval().requires_grad_(False)
    filled: set[int] = set()
    with torch.no_grad():
        for name, module in copy.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in filled]
            src = source.get_submodule(name) if own or list(module.named_buffers(recurse=False)) else None
            for pname, param in own:  # a tied head is the embeddings' tensor, filled once
                param.copy_(_dense(src, pname, dtype))
                filled.add(id(param))
            for bname, buf in module.named_buffers(recurse=False):
                buf.copy_(getattr(src, bname))
    copy.generation_config = source.generation_config
    contiguous_head(copy)  # frozen: a sliced prefill would copy the whole head per prompt
    return copy


def _materialize(model: Any, device: torch.device) -> None:
    """Allocate the parameters and buffers of a model built on the meta device, one tensor per distinct parameter.

    Not `Module.to_empty`: it gives every module a tensor of its own, so a tied LM head becomes a second head
    (0.58 GiB on Qwen2.5-3B) until `tie_weights()`, memory neither the engine's estimate nor the plan counts.
    """
    made: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                if id(param) not in made:
                    made[id(param)] = torch.nn.Parameter(torch.empty_like(param, device=device), requires_grad=False)
                module._parameters[name] = made[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = torch.empty_like(buf, device=device)


def refresh_merged(copy: Any, model: Any, dtype: torch.dtype) -> None:
    """Rewrite the adapted weights of a merged copy in place (same tensors, so captured graphs stay valid)."""
    source = base_model_of(model)
    with torch.no_grad():
        for name, module in source.named_modules():
            if _is_lora(module):
                copy.get_submodule(name).weight.copy_(_dense(module, "weight", dtype))


def param_bytes(model: Any, dtype: torch.dtype) -> int:
    """Bytes a dense copy of `model` takes in `dtype` (LoRA parameters excluded)."""
    n = sum(
        p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        for name, p in base_model_of(model).named_parameters()
        if "lora_" not in name
    )
    return n * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def activation_dtype(runner: Any) -> torch.dtype:
    """The dtype hidden states (and so K/V) take in `runner`: its input embeddings' dtype.

    Not the 4-bit layers' compute dtype: they return their input's dtype, so a base loaded in fp32
    (or cast to fp32, as PEFT's k-bit preparation does) keeps fp32 K/V even when matmuls run in bf16.
    """
    return base_model_of(runner).get_input_embeddings().weight.dtype


def model_shape(model: Any) -> Any:
    """The planner's `Shape` of a loaded model: every memory estimate here is `r1lite.analyze.plan`'s."""
    return Shape.from_config(base_model_of(model).config)


def training_step_bytes(model: Any, micro_batch: int, seq_len: int, grad_ckpt: bool = True) -> int:
    """The training step's own memory for `model`, from the planner's model (`r1lite.analyze.plan.train_step_bytes`)."""
    shape = model_shape(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act = _itemsize(activation_dtype(model))
    return train_step_bytes(shape, trainable, micro_batch, seq_len, grad_ckpt, act)


def _capped_total(device: torch.device) -> int:
    """The device's memory, or the share `torch.cuda.set_per_process_memory_fraction` allows this process."""
    total = torch.cuda.mem_get_info(device)[1]
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.9
    return int(total * getter(device)) if getter is not None else total


def free_bytes(device: torch.device) -> int | None:
    """Memory the next allocation can use on CUDA (device free + allocator cache, within any per-process cap),
    None on CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return min(available, _capped_total(device) - torch.cuda.memory_allocated(device))


def total_bytes(device: torch.device) -> int | None:
    return _capped_total(device) if device.type == "cuda" else None


class RolloutMemoryError(R1liteError):
    """The rollout's buffers do not fit in free device memory."""


# ----------------------------------------------------------------------------------------------
# Decode attention: grouped-query attention without repeating K/V
# ----------------------------------------------------------------------------------------------

ATTENTION = "r1lite_sdpa"


def grouped_decode_attention(
    module: Any,
    query: torch.Tensor,  # [B, Hq, q_len, D]
    key: torch.Tensor,  # [B, Hkv, L, D]
    value: torch.Tensor,  # [B, Hkv, L, D]
    attention_mask: torch.Tensor | None,  # [B, 1, q_len, L]
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA whose one-token decode step reads each K/V head once for its whole group of query heads.

    transformers packs the query heads of a group eagerly but, under torch.compile, expands K/V with
    `repeat_kv` to every query head (16 over 2 on Qwen2.5-3B: 8x the bytes a decode step reads). Here
    the group's query heads stand in for query positions of one KV head: [B, Hkv, G, D] against
    [B, Hkv, L, D], the same mask for each. Prefill and training (q_len > 1) use transformers' SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    key, value, attention_mask = written_part(query, key, value, attention_mask)
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, _, dim = query.shape
    grouped = query.reshape(batch, heads // groups, groups, dim)  # [B, Hkv, G, D]
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None  # [B, 1, Hq, D]


def written_part(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """K, V and mask cut after the last cache slot any row attends to, for an eager one-token step on CPU.

    The static cache is as long as the longest completion; early in a rollout most of it is unwritten and
    masked, yet attention reads all of it (on the CPU demo, over half of a decode step's attention). Masked
    slots weigh exactly 0, so only rounding changes: SDPA blocks a shorter K/V differently (1 ulp of bf16, up
    to ~1e-7 in fp32), which can flip a greedy near-tie (the demo's warm-up eval: 52 of 256 right, was 50).
    Finding the cut reads the mask on the host: free on CPU, a sync per layer on CUDA, and a data-dependent
    shape under compile, so both keep the whole cache.
    """
    eager_cpu = query.device.type == "cpu" and not torch.compiler.is_compiling()
    if query.shape[2] != 1 or mask is None or mask.dtype != torch.bool or not eager_cpu:
        return key, value, mask
    used = mask.flatten(0, -2).any(dim=0).nonzero()  # slots some row attends to
    end = int(used[-1]) + 1 if len(used) else mask.shape[-1]
    return key[:, :, :end], value[:, :, :end], mask[..., :end]


def use_grouped_decode_attention(model: Any) -> bool:
    """Switch a model that uses SDPA to `grouped_decode_attention` (same numbers up to rounding; others are left
    alone)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, grouped_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    target = base_model_of(model)
    if target.config._attn_implementation == ATTENTION:
        return True
    if target.config._attn_implementation != "sdpa":
        return False
    target.set_attn_implementation(ATTENTION)
    return True


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------


def _cache_kwarg(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache`; use whichever this version's forward takes."""
    params = inspect.signature(base_model_of(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# Config fields with which a model's forward post-processes its LM head's output (as TRL's fused head lists them)
_LOGIT_SCALING = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def fp32_head(runner: Any) -> torch.nn.Linear | None:
    """The LM head the engine applies itself, in fp32: a plain half-precision head whose output is the logits.

    None where the model's own forward gives the logits: a head already in fp32 (the same numbers), a quantized
    or adapted head, logits the forward post-processes (softcapping, a scale), or a head off CUDA. On CPU the
    trainer's head (GRPOTrainer's plain head) takes the model's bf16 logits as well, so the engine matches it as
    it is; and CPU has no fp32-output matmul, so an fp32 head would copy the weight every step (the CPU demo took
    6.6 instead of 4.8 minutes).
    """
    base = base_model_of(runner)
    head = base.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.device.type != "cuda":
        return None
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype not in (torch.float16, torch.bfloat16):
        return None
    if any(getattr(config, key, None) not in (None, 1.0) for key in _LOGIT_SCALING):
        return None
    return head


def _fp32_linear(x: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """`head(x)` with the products accumulated and returned in fp32, without an fp32 copy of the weight on CUDA."""
    if x.device.type == "cuda" and torch.__version__ >= (2, 8):  # `out_dtype`: bf16/fp16 in, fp32 out
        out = torch.mm(x, head.weight.t(), out_dtype=torch.float32)
    else:
        out = x.float() @ head.weight.float().t()
    return out if head.bias is None else out + head.bias.float()


def last_logits(runner: Any, head: torch.nn.Linear | None, **inputs: Any) -> torch.Tensor:
    """`runner`'s logits [B, V] at the last position of `inputs`; through `head` in fp32 when given (`fp32_head`,
    looked up once, outside a compiled step).

    The sampled tokens' log-probs are compared with the trainer's (`rollout/logprob_gap`, the importance ratio),
    which TRL folds into log-probs in fp32; bf16 logits would add their rounding (steps of 0.125 at 16 <= |z| < 32)
    to that gap on a GPU. The head costs the same matmul either way.
    """
    if head is None:
        return runner(**inputs, logits_to_keep=1).logits[:, -1, :]
    hidden = base_model_of(runner).base_model(**inputs).last_hidden_state  # [B, L, H]: the model without its head
    return _fp32_linear(hidden[:, -1, :], head)


@dataclass
class _DecodeState:
    """Buffers reused across rollouts of the same batch size, so a captured decode step stays valid."""

    runner: Any  # the model that decodes: the PEFT model, or the merged dense copy
    merged: bool
    cache: Any  # StaticCache of [batch, heads, length, dim] per layer
    mask: torch.Tensor  # [batch, length] padding mask over the whole cache
    length: int
    step: Any = None
    compiled: bool = False  # the decode step is captured (and has not fallen back)


VERIFY_STEPS = 3  # captured decode steps checked against eager decoding before the graph is trusted


def _synchronize(device: torch.device) -> None:
    """Wait for the device, raising the sticky CUDA error a broken capture leaves behind as one clear line."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except Exception as e:
        raise R1liteError(
            f"a captured decode step left the GPU in an error state ({type(e).__name__}: {str(e)[:200]}); "
            "rerun with --set grpo.rollout_compile=false"
        ) from None


def _rewinder(cache: Any) -> Any:
    """A function that puts the cache's write positions back where they are now (in place: graphs read them).

    transformers' static cache layers advance a `cumulative_length` counter on every update, so a step
    run twice would write its second K/V one slot further.
    """
    saved = [
        (layer.cumulative_length, layer.cumulative_length.clone())
        for layer in cache.layers
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)
    ]

    def rewind() -> None:
        for live, value in saved:
            live.copy_(value)

    return rewind


def _agrees(out: torch.Tensor, reference: torch.Tensor) -> bool:
    """Compiled and eager logits agree to the noise of reordered low-precision sums (and are finite)."""
    if not torch.isfinite(out).all():
        return False
    tolerance = 0.02 * reference.abs().max().item() + 1e-3
    return (out.float() - reference.float()).abs().max().item() <= tolerance


class RolloutEngine:
    def __init__(self, model: Any, tokenizer: Any, settings: RolloutSettings) -> None:
        self.model, self.tokenizer, self.s = model, tokenizer, settings
        eos = base_model_of(model).generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted({*eos, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
        if not settings.stop_at_eos:
            self.eos_ids = []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        self._states: dict[int, _DecodeState] = {}
        self._merged: Any = None  # the dense copy, kept across state rebuilds
        self.last_choice = ""
        self.compile_failed = False  # a capture failed or disagreed with eager decoding: this engine decodes eagerly
        self.pinned = False  # the GRPO trainer's engine: `release_engines` leaves it to the trainer
        use_grouped_decode_attention(model)
        contiguous_head(base_model_of(model))  # the prefill keeps one position: no per-row copy of a frozen head
        _LIVE.add(self)

    def close(self) -> None:
        """Drop the cache, mask, merged copy and captured step now (the engine stays usable: it rebuilds them)."""
        self._states.clear()
        self._merged = None

    # -- memory policy -------------------------------------------------------------------------
    def train_reserve(self) -> int:
        """Bytes the training step adds beside the rollout buffers (0 outside training), as the planner counts them."""
        s = self.s
        if not s.train_micro_batch:
            return 0
        return training_step_bytes(self.model, s.train_micro_batch, s.train_seq_len, s.train_grad_ckpt)

    def cache_bytes(self, batch: int, length: int, dtype: torch.dtype, merged: bool) -> int:
        """The static cache in the dtype K/V really take: `dtype` in the merged copy, the embeddings' otherwise."""
        kv_dtype = dtype if merged else activation_dtype(self.model)
        return kv_bytes(model_shape(self.model), batch, length, _itemsize(kv_dtype))

    def compiles(self, merged: bool, device: torch.device) -> bool:
        """Whether this path's decode step is captured (`r1lite.analyze.plan.compiles`; a tracing backend always is)."""
        if self.compile_failed:
            return False
        if self.s.compile_backend is not None:
            return self.s.compile is not False
        return compiles(self.s.compile, merged, device.type == "cuda")

    def rollout_bytes(
        self, batch: int, length: int, dtype: torch.dtype, merged: bool, device: torch.device | None = None
    ) -> int:
        """What a rollout allocates: the dense copy if merged (once per engine), the static cache, one step's
        logits, and the captured step's memory pool when it compiles on `device`."""
        shape = model_shape(self.model)
        copy = param_bytes(self.model, dtype) if merged and self._merged is None else 0
        pool = graph_pool_bytes(shape, batch) if device is not None and self.compiles(merged, device) else 0
        return copy + self.cache_bytes(batch, length, dtype, merged) + decode_logits_bytes(shape, batch) + pool

    def choose_merge(
        self,
        batch: int,
        length: int,
        dtype: torch.dtype,
        device: torch.device,
        free: int | None = None,
        total: int | None = None,
    ) -> bool:
        """Merge when asked, or (auto) by `plan.rollout_fits`, the rule the planner applies to the same bytes.

        Either way the chosen path must fit in free memory, or this raises before anything is allocated.
        """
        free = free_bytes(device) if free is None else free
        total = (total_bytes(device) or 0) if total is None else total
        reserve = self.train_reserve()
        if self.s.merge != "auto":
            merged = self.s.merge == "merged"
            self.last_choice = f"{self.s.merge} (set in the recipe)"
        elif free is None:
            quantized = any(type(p).__name__ in ("Params4bit", "Int8Params") for p in self.model.parameters())
            merged = not quantized
            self.last_choice = "merged (CPU)" if merged else "unmerged (quantized on CPU)"
        else:
            merged_need = self.rollout_bytes(batch, length, dtype, True, device)
            merged = rollout_fits(merged_need, reserve, free, total)
            self.last_choice = (
                f"{'merged' if merged else 'unmerged'}: a merged copy needs "
                f"{merged_need / GIB:.1f} GiB + {reserve / GIB:.1f} GiB "
                f"for the training step, {free / GIB:.1f} GiB free"
            )
        if self.s.planned_merge is not None:
            self.last_choice += f" (plan: {'merged' if self.s.planned_merge else 'unmerged'})"
        need = self.rollout_bytes(batch, length, dtype, merged, device)
        if free is not None and not rollout_fits(need, reserve, free, total, headroom=False):
            raise RolloutMemoryError(
                f"the rollout needs {need / GIB:.1f} GiB ({batch} completions x {length} tokens of KV cache"
                f"{' + a merged copy' if merged else ''}) and the training step ~{reserve / GIB:.1f} GiB, but only "
                f"{free / GIB:.1f} GiB is free; lower grpo.prompts_per_step, grpo.num_generations or "
                "grpo.max_completion_length" + (", or set grpo.rollout_merge=unmerged" if merged else "")
            )
        return merged

    @property
    def batch_rows(self) -> int | None:
        """Rows of the decode state this engine holds (None before its first rollout)."""
        return next(iter(self._states), None)

    def _state(self, batch: int, needed: int, dtype: torch.dtype, device: torch.device) -> _DecodeState:
        """Reuse the buffers when the batch size matches and they are long enough; otherwise rebuild them.

        One state at a time: a second batch size replaces the first (freed before the new one is
        allocated), so an engine never holds two caches. The cache length is rounded up to a multiple
        of 256 so varying prompt lengths reuse one shape.
        """
        from transformers import StaticCache

        state = self._states.get(batch)
        if state is not None and state.length >= needed:
            if state.merged:
                refresh_merged(state.runner, self.model, dtype)  # the adapter changed since the last step
            state.cache.reset()
            return state
        length = -(-needed // 256) * 256
        state = None  # the old state's cache and captured step must be freed before free memory is read
        self._states.clear()
        merged = self.choose_merge(batch, length, dtype, device)
        if merged and self._merged is None:
            self._merged = merged_copy(self.model, dtype)
            use_grouped_decode_attention(self._merged)
        elif merged:
            refresh_merged(self._merged, self.model, dtype)
        else:
            self._merged = None
        runner = self._merged if merged else self.model
        cache = StaticCache(config=base_model_of(self.model).config, max_cache_len=length)
        mask = torch.ones((batch, length), dtype=torch.long, device=device)
        state = _DecodeState(runner, merged, cache, mask, length)
        state.step = self._decode_step(state, device)
        self._states[batch] = state
        return state

    # -- one rollout ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        num_generations: int = 1,
        generator: torch.Generator | None = None,
        sampling: RolloutSettings | None = None,
    ) -> RolloutOutput:
        """Completions for `prompt_ids`, where each run of `num_generations` equal prompts shares a prefill.

        `sampling` overrides the engine's temperature, top-k, top-p and greedy for this call only (a
        greedy eval on the training engine reuses its buffers).
        """
        sampling = sampling or self.s
        from transformers import DynamicCache

        groups = [prompt_ids[i] for i in range(0, len(prompt_ids), num_generations)]
        if any(prompt_ids[i] != groups[i // num_generations] for i in range(len(prompt_ids))):
            groups, num_generations = list(prompt_ids), 1  # not grouped: prefill each row
        G, P, B = num_generations, len(groups), len(prompt_ids)
        source = base_model_of(self.model)
        device = next(source.parameters()).device
        dtype = getattr(torch, self.s.dtype) if self.s.dtype else _compute_dtype(source)
        Lp = max(len(p) for p in groups)
        was_training = self.model.training
        self.model.eval()
        try:
            state = self._state(B, Lp + self.s.max_new_tokens, dtype, device)
            runner, kw = state.runner, _cache_kwarg(state.runner)
            # 1. prefill the P distinct prompts (left-padded) once; only the last position's logits
            ids = torch.full((P, Lp), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((P, Lp), dtype=torch.long, device=device)
            for i, p in enumerate(groups):
                ids[i, Lp - len(p) :] = torch.tensor(p, device=device)
                mask[i, Lp - len(p) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [P, Lp]
            prefill_cache = DynamicCache(config=source.config)
            inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
            first_logits = last_logits(runner, fp32_head(runner), **inputs, **{kw: prefill_cache})
            first_logits = first_logits.repeat_interleave(G, dim=0)  # [B, V]

            # 2. copy each prompt's KV into its G rows of the batch's static cache
            for layer, filled in zip(state.cache.layers, prefill_cache.layers, strict=False):
                layer.update(filled.keys.repeat_interleave(G, dim=0), filled.values.repeat_interleave(G, dim=0))
            del prefill_cache
            state.mask.fill_(1)
            state.mask[:, :Lp] = mask.repeat_interleave(G, dim=0)  # causal masking hides the unwritten tail
            next_pos = mask.sum(-1).repeat_interleave(G, dim=0)  # [B] position of the first new token

            tokens = torch.full((B, self.s.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
            logps = torch.zeros((B, self.s.max_new_tokens), dtype=torch.float32, device=device)
            done = torch.zeros(B, dtype=torch.bool, device=device)
            eos = torch.tensor(self.eos_ids or [-1], device=device)
            logits, steps = first_logits, 0
            for t in range(self.s.max_new_tokens):
                tok, lp = sample(logits, sampling, generator)
                tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
                tokens[:, t], logps[:, t] = tok, torch.where(done, torch.zeros_like(lp), lp)
                steps = t + 1
                done |= torch.isin(tok, eos)
                # 3. rows stop at their EOS (padded after it); the batch stops once all rows have, checked
                #    every `sync_every` tokens: each check waits for the device
                #    (the same sync stops the rollout at a non-finite log-prob: the policy overflowed its dtype)
                if t + 1 == self.s.max_new_tokens or (
                    steps % self.s.sync_every == 0 and _all_stopped(done, logps[:, :steps], dtype)
                ):
                    break
                logits = state.step(tok[:, None], (next_pos + t)[:, None])
            _all_stopped(done, logps[:, :steps], dtype)  # the tokens since the last check
        finally:
            if was_training:
                self.model.train()
        out = self._collect(prompt_ids, tokens[:, :steps], logps[:, :steps], state.merged)
        out.stats["compiled"] = state.compiled
        return out

    def _decode_step(self, state: _DecodeState, device: torch.device) -> Any:
        """One decode step over the persistent buffers; captured once per state where `compiles` says so.

        A captured step is trusted only after it has matched eager decoding: its first VERIFY_STEPS calls
        (warm-up, capture and the first replays under CUDA graphs) also run eagerly on the same input,
        after it, with the cache's write positions put back (the eager step writes the same K/V last, so
        the cache is eager's whatever the captured step did), synchronise, and compare. An exception or a
        mismatch turns capture off for this engine with one logged line and decoding goes on eagerly; a
        CUDA error that outlives the failed capture stops the run with the setting to change.
        """
        kw, head = _cache_kwarg(state.runner), fp32_head(state.runner)

        def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            inputs = {"input_ids": tok, "attention_mask": state.mask, "position_ids": pos, "use_cache": True}
            return last_logits(state.runner, head, **inputs, **{kw: state.cache})

        state.compiled = self.compiles(state.merged, device)
        if not state.compiled:
            return step
        # every state (batch size, engine) is one more compiled variant of `step`; allow plenty
        cfg = torch._dynamo.config
        limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, limit, max(getattr(cfg, limit), 64))
        if self.s.compile_backend is None:
            compiled = torch.compile(step, mode="reduce-overhead", dynamic=False)
        else:
            compiled = torch.compile(step, backend=self.s.compile_backend, dynamic=False)
        checked = [0]

        def fall_back(why: str) -> None:
            ui.log(f"rollout: captured decode step {why}; decoding eagerly from now on")
            self.compile_failed, state.compiled = True, False
            _synchronize(device)  # a CUDA error that outlives the capture surfaces here, not in a later step

        def guarded(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            if not state.compiled:
                return step(tok, pos)
            if checked[0] >= VERIFY_STEPS:
                return compiled(tok, pos).clone()  # the graph's output buffer is reused by the next replay
            rewind = _rewinder(state.cache)
            try:
                out = compiled(tok, pos).clone()
                _synchronize(device)
            except Exception as e:  # capture can fail on exotic layers, before or after writing the cache
                rewind()
                fall_back(f"failed ({type(e).__name__}: {str(e)[:200]})")
                return step(tok, pos)
            rewind()  # the eager step writes this token's K/V into the same slots, last: the cache holds eager's
            reference = step(tok, pos)
            if not _agrees(out, reference):
                fall_back(f"disagreed with eager decoding (max logit difference {(out - reference).abs().max():.3g})")
                return reference
            checked[0] += 1
            return reference

        return guarded

    def _collect(
        self, prompt_ids: list[list[int]], tokens: torch.Tensor, logps: torch.Tensor, merged: bool
    ) -> RolloutOutput:
        eos = set(self.eos_ids)
        completion_ids, logprobs = [], []
        for row, lp in zip(tokens.tolist(), logps.tolist(), strict=True):
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            completion_ids.append(row[:end])
            logprobs.append(lp[:end])
        n = sum(len(c) for c in completion_ids)
        return RolloutOutput(
            [list(p) for p in prompt_ids],
            completion_ids,
            logprobs,
            {"tokens": n, "merged": merged, "choice": self.last_choice},
        )


# Every engine alive, for tests and diagnostics; weak, so it keeps none of them alive.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_ENGINES_ATTR = "_r1lite_engines"
_SAMPLING = ("temperature", "top_p", "top_k", "greedy", "sampler")  # per call, not part of an engine's identity


def engine_for(model: Any, tokenizer: Any, settings: RolloutSettings) -> RolloutEngine:
    """One engine per model and buffer settings, kept on the model itself, so later calls reuse its buffers.

    Sampling settings are not part of the key (they are passed per call), so a greedy held-out eval
    inside GRPO runs on the training engine's cache and merged copy. Kept on the model, not in a
    module-level table: an engine holds its model, so a table entry would keep the model, cache,
    merged copy and captured graphs alive for the rest of the process.
    """
    engines = model.__dict__.setdefault(_ENGINES_ATTR, {})
    for engine in engines.values():  # the GRPO trainer's engine serves any caller with its length
        if engine.pinned and (engine.s.max_new_tokens, engine.s.stop_at_eos) == (
            settings.max_new_tokens,
            settings.stop_at_eos,
        ):
            return engine
    key = repr({k: v for k, v in vars(settings).items() if k not in _SAMPLING})
    if key not in engines:
        engines[key] = RolloutEngine(model, tokenizer, settings)
    return engines[key]


def release_engines(model: Any, pinned: bool = False) -> None:
    """Free the buffers of the engines `engine_for` made for `model`, except the GRPO trainer's own unless `pinned`
    (its trainer is done with it)."""
    engines = model.__dict__.get(_ENGINES_ATTR, {})
    for key, engine in list(engines.items()):
        if pinned or not engine.pinned:
            engine.close()
            del engines[key]
    if not engines:
        model.__dict__.pop(_ENGINES_ATTR, None)


def engine_tensors(model: Any) -> list[Any]:
    """What the engines `engine_for` made for `model` hold (merged copies, caches, masks): the buffers a
    memory measurement must count beside the model and optimizer (`r1lite.train.memtrack.PeakTensorBytes`)."""
    held: list[Any] = []
    for engine in model.__dict__.get(_ENGINES_ATTR, {}).values():
        if engine._merged is not None:
            held.append(engine._merged)
        for state in engine._states.values():
            held.append(state.mask)
            held += [t for layer in state.cache.layers for t in (layer.keys, layer.values) if t is not None]
    return held


def live_engines() -> int:
    import gc

    gc.collect()
    return len(_LIVE)


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype activations run in: bnb's compute dtype for 4-bit layers, else the embedding dtype."""
    for module in model.modules():
        if hasattr(module, "compute_dtype") and module.compute_dtype is not None:
            return module.compute_dtype
    return model.get_input_embeddings().weight.dtype


# ----------------------------------------------------------------------------------------------
# TRL glue
# ----------------------------------------------------------------------------------------------


def settings_from_recipe(recipe: Any, planned_merge: bool | None = None) -> RolloutSettings:
    """The GRPO engine's settings; `planned_merge` is `r1lite plan`'s decision, logged beside the engine's."""
    g = recipe.grpo
    return RolloutSettings(
        planned_merge=planned_merge,
        dtype="bfloat16" if cpu_bf16(recipe.model, uses_cuda(recipe.model)) else None,
        max_new_tokens=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        merge=g.rollout_merge,
        compile=g.rollout_compile,
        train_micro_batch=g.micro_batch_size,
        train_seq_len=prompt_tokens_for(recipe) + g.max_completion_length,
        train_grad_ckpt=recipe.model.gradient_checkpointing,
    )


def make_rollout_func(settings: RolloutSettings) -> Any:
    """A `rollout_func(prompts, trainer)` for GRPOTrainer that generates with our engine."""
    import os

    # rollout_func is marked experimental in TRL; we pin TRL's minor version and test the contract
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    state: dict[str, Any] = {}

    def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        engine = engine_for(model, trainer.processing_class, settings)
        engine.pinned = True
        if not isinstance(prompts[0], str):
            raise R1liteError("the rollout engine takes rendered text prompts; use data.prompt_format base/chat")
        prompt_ids = trainer.processing_class(text=prompts)["input_ids"]
        mode = "train" if model.training else "eval"
        G = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        with _timer() as elapsed:
            # its own sampling settings: the engine may be one an eval made (greedy), reused for its buffers
            out = engine.generate(prompt_ids, num_generations=G, sampling=settings)
        metrics = trainer._metrics[mode]
        metrics["rollout/tokens_per_s"].append(out.stats["tokens"] / max(elapsed(), 1e-9))
        metrics["rollout/merged"].append(float(out.stats["merged"]))
        metrics["rollout/compiled"].append(float(out.stats["compiled"]))
        choice = f"{out.stats['choice']}; decode step {'captured' if out.stats['compiled'] else 'eager'}"
        if state.get("logged") != choice:
            ui.log(f"rollout engine: {choice}")
            state["logged"] = choice
        return {"prompt_ids": out.prompt_ids, "completion_ids": out.completion_ids, "logprobs": out.logprobs}

    return rollout_func


@contextlib.contextmanager
def _timer():
    import time

    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())

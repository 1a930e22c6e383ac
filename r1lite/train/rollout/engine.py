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

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.plan.memory import (
    GIB,
    compiles,
    decode_logits_bytes,
    graph_pool_bytes,
    kv_bytes,
    rollout_fits,
    train_step_bytes,
)
from r1lite.plan.shapes import Shape
from r1lite.train.models import contiguous_head
from r1lite.train.rollout.attention import cache_kwarg, fp32_head, last_logits, use_grouped_decode_attention
from r1lite.train.rollout.capture import verified_capture
from r1lite.train.rollout.merged import base_model_of, compute_dtype, itemsize, merged_copy, param_bytes, refresh_merged
from r1lite.train.rollout.sampling import Sampling, all_stopped, sample

# Every engine alive, for tests and diagnostics; weak, so it keeps none of them alive.
LIVE: weakref.WeakSet = weakref.WeakSet()


@dataclass
class RolloutSettings(Sampling):
    """An engine's settings: its buffers' shape and policy, plus the default `Sampling` a call may override."""

    max_new_tokens: int = 256
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


@dataclass
class RolloutOutput:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    stats: dict[str, Any] = field(default_factory=dict)


def activation_dtype(runner: Any) -> torch.dtype:
    """The dtype hidden states (and so K/V) take in `runner`: its input embeddings' dtype.

    Not the 4-bit layers' compute dtype: they return their input's dtype, so a base loaded in fp32
    (or cast to fp32, as PEFT's k-bit preparation does) keeps fp32 K/V even when matmuls run in bf16.
    """
    return base_model_of(runner).get_input_embeddings().weight.dtype


def model_shape(model: Any) -> Any:
    """The planner's `Shape` of a loaded model: every memory estimate here is `r1lite.plan.memory`'s."""
    return Shape.from_config(base_model_of(model).config)


def training_step_bytes(model: Any, micro_batch: int, seq_len: int, grad_ckpt: bool = True) -> int:
    """The training step's own memory for `model`, from the planner's model (`r1lite.plan.memory.train_step_bytes`)."""
    shape = model_shape(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act = itemsize(activation_dtype(model))
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
        LIVE.add(self)

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
        return kv_bytes(model_shape(self.model), batch, length, itemsize(kv_dtype))

    def compiles(self, merged: bool, device: torch.device) -> bool:
        """Whether this path's decode step is captured (`r1lite.plan.memory.compiles`; a tracing backend always is)."""
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
        dtype = getattr(torch, self.s.dtype) if self.s.dtype else compute_dtype(source)
        Lp = max(len(p) for p in groups)
        was_training = self.model.training
        self.model.eval()
        try:
            state = self._state(B, Lp + self.s.max_new_tokens, dtype, device)
            runner, kw = state.runner, cache_kwarg(state.runner)
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
                    steps % self.s.sync_every == 0 and all_stopped(done, logps[:, :steps], dtype)
                ):
                    break
                logits = state.step(tok[:, None], (next_pos + t)[:, None])
            all_stopped(done, logps[:, :steps], dtype)  # the tokens since the last check
        finally:
            if was_training:
                self.model.train()
        out = self._collect(prompt_ids, tokens[:, :steps], logps[:, :steps], state.merged)
        out.stats["compiled"] = state.compiled
        return out

    def _decode_step(self, state: _DecodeState, device: torch.device) -> Any:
        """One decode step over the persistent buffers; captured once per state where `compiles` says so, and then
        trusted only once it has matched eager decoding (`capture.verified_capture`)."""
        kw, head = cache_kwarg(state.runner), fp32_head(state.runner)

        def step(tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            inputs = {"input_ids": tok, "attention_mask": state.mask, "position_ids": pos, "use_cache": True}
            return last_logits(state.runner, head, **inputs, **{kw: state.cache})

        state.compiled = self.compiles(state.merged, device)
        if not state.compiled:
            return step

        def fall_back(why: str) -> None:
            ui.log(f"rollout: captured decode step {why}; decoding eagerly from now on")
            self.compile_failed, state.compiled = True, False

        return verified_capture(step, state.cache, device, self.s.compile_backend, fall_back)

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

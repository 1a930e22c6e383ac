"""r1lite's rollout engine for GRPO: shared prefill, a static KV cache read as far as written, rows that ended
dropped, a captured decode step, LoRA merged into a 16-bit working copy that training never sees.

    >>> engine = RolloutEngine(model, tokenizer, RolloutSettings(max_new_tokens=256, temperature=1.0))
    >>> out = engine.generate(prompt_ids, num_generations=8)    # prompts repeated 8x in a row, as TRL sends them
    >>> out.completion_ids, out.logprobs                         # per completion: tokens (EOS included), log-probs
    >>> engine.release()                                         # before training: cache and merged copy freed

Why not `model.generate`: in GRPO every prompt is sampled G times, and stock generation prefills
each copy separately, grows a dynamic cache token by token, and launches hundreds of small kernels
per token (NF4 dequantization + LoRA). Here:

1. each distinct prompt is prefilled once and its KV cache copied into its G rows;
2. the batch decodes into one preallocated static cache (r1lite.train.rollout.buffers); each step attends only
   over the slots written so far, and rows that produced EOS are dropped from the batch, so a step costs what the
   live rows need, not the longest completion's worst case;
3. on CUDA the decode step can be captured (`torch.compile(mode="reduce-overhead")`, CUDA graphs) and replayed,
   with the window and the live rows rounded up to a few buckets so a handful of graphs serve the whole rollout;
   a captured step is trusted only after matching eager decoding (r1lite.train.rollout.capture);
4. when memory allows, LoRA is merged into a dense working copy of the weights (dequantized NF4 + B·A·scale, in
   the compute dtype), so decoding runs plain matmuls; otherwise the NF4 + LoRA model decodes unmerged. The GRPO
   stage releases the copy and the cache before each training step and the next rollout rebuilds them: the two
   phases time-share the card. The choice is logged and overridable.

Memory is checked before anything is allocated, on both paths, against what the cache really costs in the dtype
activations run in. Engines live on the model they serve (r1lite.train.rollout.registry).
"""

from __future__ import annotations

import time
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
    optimizer_state_bytes,
    rollout_fits,
)
from r1lite.plan.shapes import Shape
from r1lite.train.models import contiguous_head
from r1lite.train.rollout import buffers
from r1lite.train.rollout.attention import cache_kwarg, fp32_head, last_logits, use_grouped_decode_attention
from r1lite.train.rollout.buffers import DecodeCache, free_bytes, total_bytes
from r1lite.train.rollout.capture import verified_capture
from r1lite.train.rollout.merged import base_model_of, compute_dtype, fill, itemsize, merged_copy, param_bytes, weights
from r1lite.train.rollout.sampling import Sampling, all_stopped, sample

# Every engine alive, for tests and diagnostics; weak, so it keeps none of them alive.
LIVE: weakref.WeakSet = weakref.WeakSet()
WINDOW_BUCKET = 256  # a captured step's window is rounded up to this many slots (one graph per bucket)
ROW_BUCKETS = (1, 2, 4)  # a captured step runs the batch, half of it or a quarter (one graph per bucket)


@dataclass
class RolloutSettings(Sampling):
    """An engine's settings: its buffers' shape and policy, plus the default `Sampling` a call may override."""

    max_new_tokens: int = 256
    merge: str = "auto"  # auto | merged | unmerged
    compile: bool | str = "auto"  # capture the decode step on CUDA: True, False, or auto (paths proven on a GPU)
    stop_at_eos: bool = True  # benchmarks turn this off so every completion has full length
    compile_backend: Any = None  # None: CUDA graphs on CUDA only; e.g. "aot_eager" to trace on CPU (tests)
    # decode steps between checks of which rows have stopped (one device->host sync each; free on CPU); None: 16 on
    # CUDA, 4 on CPU
    sync_every: int | None = None
    compact: bool = True  # rows that produced EOS leave the batch at the next check (their cost stops)
    # the window a step attends over: "exact" (the written slots; eager steps), "bucketed" (rounded up to
    # WINDOW_BUCKET; captured steps, whose shapes must repeat), "auto": bucketed when captured, "full": the cache
    window: str = "auto"
    train: bool = False  # the GRPO trainer's engine: its optimizer state must fit beside the rollout
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


class RolloutMemoryError(R1liteError):
    """The rollout's buffers do not fit in free device memory."""


@dataclass
class _DecodeState:
    """Buffers reused across rollouts of the same batch size, so a captured decode step stays valid."""

    runner: Any  # the model that decodes: the PEFT model, or the merged dense copy
    merged: bool
    cache: DecodeCache  # [batch, heads, length, dim] per layer, read through `cache.window`
    mask: torch.Tensor  # [batch, length] padding mask over the whole cache
    length: int
    step: Any = None
    compiled: bool = False  # the decode step is captured (and has not fallen back)
    released: bool = False  # the cache's and the merged copy's storage went back to the allocator
    generation: int = 0  # times the buffers were rebuilt: a captured step is checked again after each


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
        self.last_rebuild_s = 0.0  # seconds the last rollout spent restoring buffers and rebuilding the merged copy
        self.compile_failed = False  # a capture failed or disagreed with eager decoding: this engine decodes eagerly
        self.pinned = False  # the GRPO trainer's engine: `release_engines` frees its memory but keeps it
        use_grouped_decode_attention(model)
        contiguous_head(base_model_of(model))  # the prefill keeps one position: no per-row copy of a frozen head
        LIVE.add(self)

    def close(self) -> None:
        """Drop the cache, mask, merged copy and captured step now (the engine stays usable: it rebuilds them)."""
        self._states.clear()
        self._merged = None

    def release(self) -> int:
        """Give the cache's and the merged copy's storage back to the allocator, keeping the objects (and so any
        captured step) for the next rollout, which restores and refills them; returns the bytes freed."""
        freed = 0
        for state in self._states.values():
            freed += buffers.release([*state.cache.tensors(), state.mask])
            state.released = True
        if self._merged is not None:
            freed += buffers.release(weights(self._merged))
        return freed

    def held(self) -> list[torch.Tensor]:
        """The tensors whose storage the engine holds between calls (cache, mask, merged copy)."""
        tensors = [t for s in self._states.values() for t in (*s.cache.tensors(), s.mask)]
        return tensors + (weights(self._merged) if self._merged is not None else [])

    # -- memory policy -------------------------------------------------------------------------
    def reserve(self) -> int:
        """Bytes that must stay free beside the rollout's buffers: the GRPO trainer's optimizer state (adapter
        gradients and AdamW's moments), as the planner counts it. Training's activations are not counted: the
        rollout's buffers are released before they exist."""
        if not self.s.train:
            return 0
        return optimizer_state_bytes(sum(p.numel() for p in self.model.parameters() if p.requires_grad))

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
        """What a rollout allocates: the dense copy if merged, the static cache, one step's logits, and the captured
        step's memory pool when it compiles on `device`."""
        shape = model_shape(self.model)
        copy = param_bytes(self.model, dtype) if merged else 0
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
        reserve = self.reserve()
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
                f"for the optimizer state, {free / GIB:.1f} GiB free"
            )
        if self.s.planned_merge is not None:
            self.last_choice += f" (plan: {'merged' if self.s.planned_merge else 'unmerged'})"
        need = self.rollout_bytes(batch, length, dtype, merged, device)
        if free is not None and not rollout_fits(need, reserve, free, total, headroom=False):
            raise RolloutMemoryError(
                f"the rollout needs {need / GIB:.1f} GiB ({batch} completions x {length} tokens of KV cache"
                f"{' + a merged copy' if merged else ''}) and the optimizer state ~{reserve / GIB:.1f} GiB, but only "
                f"{free / GIB:.1f} GiB is free; lower grpo.prompts_per_step, grpo.num_generations or "
                "grpo.max_completion_length" + (", or set grpo.rollout_merge=unmerged" if merged else "")
            )
        return merged

    @property
    def batch_rows(self) -> int | None:
        """Rows of the decode state this engine holds (None before its first rollout)."""
        return next(iter(self._states), None)

    def _state(self, batch: int, needed: int, dtype: torch.dtype, device: torch.device) -> _DecodeState:
        """Reuse the buffers when the batch size matches and they are long enough (restored and refilled if they
        were released); otherwise rebuild them.

        One state at a time: a second batch size replaces the first (freed before the new one is
        allocated), so an engine never holds two caches. The cache length is rounded up to a multiple
        of 256 so varying prompt lengths reuse one shape.
        """
        start = time.perf_counter()
        state = self._states.get(batch)
        if state is not None and state.length >= needed:
            if state.released:
                buffers.restore([*state.cache.tensors(), state.mask])
                state.released, state.generation = False, state.generation + 1
            if state.merged:
                fill(self._merged, self.model, dtype)  # the adapter changed since the last step
        else:
            state = self._new_state(batch, -(-needed // 256) * 256, dtype, device)
        state.cache.reset()  # zeroes K/V (a restored buffer holds garbage) and the write position
        self.last_rebuild_s = time.perf_counter() - start
        return state

    def _new_state(self, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> _DecodeState:
        self._states.clear()  # the old state's cache and captured step are freed before free memory is read
        if self._merged is not None:
            buffers.release(weights(self._merged))
        merged = self.choose_merge(batch, length, dtype, device)
        if merged and self._merged is None:
            self._merged = merged_copy(self.model, dtype)
            use_grouped_decode_attention(self._merged)
        elif merged:
            fill(self._merged, self.model, dtype)
        else:
            self._merged = None
        runner = self._merged if merged else self.model
        cache = DecodeCache(base_model_of(self.model).config, max_cache_len=length)
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
        sampling: Sampling | None = None,
    ) -> RolloutOutput:
        """Completions for `prompt_ids`, where each run of `num_generations` equal prompts shares a prefill.

        `sampling` overrides the engine's temperature, top-k, top-p and greedy for this call only (a
        greedy eval on the training engine reuses its buffers).
        """
        sampling = sampling or self.s
        groups = [prompt_ids[i] for i in range(0, len(prompt_ids), num_generations)]
        if any(prompt_ids[i] != groups[i // num_generations] for i in range(len(prompt_ids))):
            groups, num_generations = list(prompt_ids), 1  # not grouped: prefill each row
        source = base_model_of(self.model)
        device = next(source.parameters()).device
        dtype = getattr(torch, self.s.dtype) if self.s.dtype else compute_dtype(source)
        lp_max = max(len(p) for p in groups)
        was_training = self.model.training
        self.model.eval()
        try:
            state = self._state(len(prompt_ids), lp_max + self.s.max_new_tokens, dtype, device)
            first_logits, next_pos = self._prefill(state, groups, num_generations, device)
            tokens, logps, steps = self._decode(state, first_logits, next_pos, lp_max, sampling, generator, dtype)
        finally:
            if was_training:
                self.model.train()
        out = self._collect(prompt_ids, tokens[:, :steps], logps[:, :steps], state.merged)
        out.stats.update(compiled=state.compiled, rebuild_s=self.last_rebuild_s)
        return out

    def _prefill(
        self, state: _DecodeState, groups: list[list[int]], repeat: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct prompts (left-padded) prefilled once, their K/V copied into `repeat` rows each of the static
        cache; returns the first logits [B, V] and each row's next position [B]."""
        from transformers import DynamicCache

        source = base_model_of(self.model)
        length = max(len(p) for p in groups)
        ids = torch.full((len(groups), length), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(groups), length), dtype=torch.long, device=device)
        for i, p in enumerate(groups):
            ids[i, length - len(p) :] = torch.tensor(p, device=device)
            mask[i, length - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [P, Lp]
        prefill_cache = DynamicCache(config=source.config)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        kw = cache_kwarg(state.runner)
        logits = last_logits(state.runner, fp32_head(state.runner), **inputs, **{kw: prefill_cache})
        state.cache.window.rows, state.cache.window.length = len(groups) * repeat, length
        for layer, filled in zip(state.cache.layers, prefill_cache.layers, strict=False):
            layer.update(filled.keys.repeat_interleave(repeat, dim=0), filled.values.repeat_interleave(repeat, dim=0))
        state.mask.fill_(1)
        state.mask[:, :length] = mask.repeat_interleave(repeat, dim=0)  # causal masking hides the unwritten tail
        return logits.repeat_interleave(repeat, dim=0), mask.sum(-1).repeat_interleave(repeat, dim=0)

    def _decode(
        self,
        state: _DecodeState,
        logits: torch.Tensor,
        next_pos: torch.Tensor,
        prompt: int,
        sampling: Sampling,
        generator: torch.Generator | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sample and decode until every row has stopped or `max_new_tokens`; returns tokens and log-probs [B, T]
        (pad and 0 after a row's EOS) and the steps taken.

        Rows stop at their EOS. Every `sync_every` tokens the engine looks (one device->host sync) at which rows
        have stopped: the batch ends when all have, and with `compact` the live rows move to the front of the cache
        so the stopped ones cost nothing more (a captured step keeps a bucket's worth of rows). The same sync stops
        the rollout at a non-finite log-prob: the policy overflowed its dtype.
        """
        device, batch, T = logits.device, logits.shape[0], self.s.max_new_tokens
        captured = state.compiled
        sync = self.s.sync_every or (16 if device.type == "cuda" else 4)
        tokens = torch.full((batch, T), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((batch, T), dtype=torch.float32, device=device)
        rows = torch.arange(batch, device=device)  # each live row's place in `tokens`
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_ids or [-1], device=device)
        window, steps = state.cache.window, 0
        for t in range(T):
            tok, lp = sample(logits, sampling, generator)
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            tokens[rows, t], logps[rows, t] = tok, torch.where(done, torch.zeros_like(lp), lp)
            steps = t + 1
            done |= torch.isin(tok, eos)
            if steps == T:
                break
            if steps % sync == 0:
                if all_stopped(done, logps[:, :steps], dtype):
                    break
                keep = self._keep(done.tolist(), captured, batch) if self.s.compact else None
                if keep is not None:  # the slots written so far: the prompt and t tokens
                    index = torch.tensor(keep, device=device)
                    state.cache.compact(index, prompt + t)
                    state.mask[: len(keep)] = state.mask[index]
                    rows, done, tok, next_pos = rows[index], done[index], tok[index], next_pos[index]
            window.rows = len(rows)
            window.length = self._window(prompt + t + 1, state.length, captured)
            logits = state.step(tok[:, None], (next_pos + t)[:, None], state.mask[: len(rows), : window.length])
        all_stopped(done, logps[:, :steps], dtype)  # the tokens since the last check
        return tokens, logps, steps

    def _keep(self, done: list[bool], captured: bool, full: int) -> list[int] | None:
        """The rows to keep decoding, or None to leave the batch as it is.

        Eager: the live rows, once a sixteenth of the batch has stopped (moving a row's K/V costs about a sixteenth
        of a step). Captured: a bucket of the first batch (all, half, a quarter) that holds the live rows, topped up
        with stopped rows, so only a few shapes are ever captured.
        """
        live = [i for i, d in enumerate(done) if not d]
        if not live:
            return None
        if not captured:
            return live if len(done) - len(live) >= max(1, len(done) // 16) else None
        size = min((full // k for k in ROW_BUCKETS if full // k >= len(live)), default=len(done))
        if size >= len(done):
            return None
        stopped = [i for i, d in enumerate(done) if d]
        return sorted(live + stopped[: size - len(live)])

    def _window(self, written: int, length: int, captured: bool) -> int:
        """Slots a step attends over: the written ones, or (bucketed) rounded up so captured shapes repeat, or (full)
        the whole cache, masked beyond what is written (benchmarks and tests compare against it)."""
        if self.s.window == "full":
            return length
        bucketed = self.s.window == "bucketed" or (self.s.window == "auto" and captured)
        return min(length, -(-written // WINDOW_BUCKET) * WINDOW_BUCKET) if bucketed else written

    def _decode_step(self, state: _DecodeState, device: torch.device) -> Any:
        """One decode step over the persistent buffers; captured once per shape where `compiles` says so, and then
        trusted only once it has matched eager decoding (`capture.verified_capture`), again after every rebuild."""
        kw, head = cache_kwarg(state.runner), fp32_head(state.runner)

        def step(tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            inputs = {"input_ids": tok, "attention_mask": mask, "position_ids": pos, "use_cache": True}
            return last_logits(state.runner, head, **inputs, **{kw: state.cache})

        state.compiled = self.compiles(state.merged, device)
        if not state.compiled:
            return step

        def fall_back(why: str) -> None:
            ui.log(f"rollout: captured decode step {why}; decoding eagerly from now on")
            self.compile_failed, state.compiled = True, False

        def shape() -> tuple[int, int, int]:
            return state.cache.window.rows, state.cache.window.length, state.generation

        return verified_capture(step, state.cache, device, self.s.compile_backend, fall_back, shape)

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

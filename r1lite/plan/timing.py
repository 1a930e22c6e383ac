"""Time and cost of a run from physics: bytes a decode step reads over the card's bandwidth, FLOPs over its
throughput, and the host's cost of launching each kernel when the step is not captured.

    >>> t = run_timing(recipe, shape, card, on_cuda=True, rows=64, prompt=160, merged=True)
    >>> t.step_seconds, t.captured_step_seconds, t.run_hours, t.sources
    >>> decode_step_s(shape, card, rows=64, window=700, form="merged", captured=False)    # one decode step

Every constant is a `Figure` that says whether it is calibrated (fitted to a measurement: the H200 stock-TRL runs
of shared/calibration), cited (a published figure) or assumed; `timing_sources` lists them with the plan. On a CPU
the speeds are this machine's own (r1lite.machine.speed), times counted FLOPs and operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from r1lite.machine.precision import cpu_bf16
from r1lite.machine.speed import cpu_speed
from r1lite.plan.hardware import Card
from r1lite.plan.memory import decode_logits_bytes, kv_bytes
from r1lite.plan.shapes import Shape


@dataclass(frozen=True)
class Figure:
    value: float
    kind: str  # calibrated | cited | assumed | measured
    source: str

    def line(self, name: str) -> str:
        return f"{name} = {self.value:g} ({self.kind}: {self.source})"


_CALIBRATION = (
    "fitted to stock TRL 1.16 GRPO on Qwen2.5-3B, HF generate, 64 rows, H200 (shared/calibration, 2026-11-28)"
)
# Host time per operation an eager decode step launches (PyTorch dispatch and transformers' Python around it): HF
# generate's steps took 95.4 ms (bf16 + LoRA) and 129 ms (NF4 + LoRA) for 3,537 and 4,041 counted operations
HOST_OP_US = Figure(29.5, "calibrated", _CALIBRATION)
KERNEL_FLOOR_US = Figure(3.0, "assumed", "the shortest a GPU kernel takes from launch to end")
BANDWIDTH_SHARE = Figure(0.75, "assumed", "share of the card's memory bandwidth a decode step's reads reach")
DECODE_MFU = Figure(0.5, "assumed", "share of the card's bf16 TFLOP/s a decode step's matrix products reach")
TRAIN_MFU = Figure(0.30, "assumed", "share of the card's dense bf16 TFLOP/s reached by LoRA training steps")
# An eager CPU step's operations cost more than a bare tensor add (the measured `op_us`): transformers' modules
# and PEFT's layers around each kernel; training reaches a share of the measured GEMM rate (LoRA's thin products,
# the optimizer, attention's math path)
CPU_OP_FACTOR = Figure(11.0, "calibrated", "make demo's 8-row GRPO rollouts, 2-core AMD EPYC (Zen 1, fp32), 2026-12-07")
CPU_TRAIN_SHARE = Figure(
    0.57, "calibrated", "make demo's SFT and a cpu-rl GRPO update, 2-core AMD EPYC (Zen 1, fp32), 2026-12-07"
)
CPU_SAMPLING_ROUNDS = Figure(2.3, "measured", "rollouts per GRPO batch with dynamic sampling, cpu-rl, 2026-12-06")

GENERATE_OPS = 40  # HF generate's own work per step (logits processors, stopping criteria, cache growth)
SAMPLING_OPS = 12  # the engine's sampling, bookkeeping and the fp32 head per step

# A mean completion length where no run of the recipe has logged one, per task and warm-up style.
CITED_COMPLETION_TOKENS: dict[tuple[str, str], tuple[int, str]] = {
    # minrl trains Qwen3-1.7B-Base with LoRA to ~60 % on Countdown with completions capped at 400 tokens
    # (github.com/janhuenermann/minrl, scripts/train_grpo.py: generation_length=400 in its first version)
    ("countdown", "search"): (400, "cited: minrl's completion cap on Countdown (Qwen3-1.7B-Base, ~60 % in < 3 h)"),
    # the CPU profiles' short traces: SmolLM2-135M answers in ~69 tokens after the warm-up (make demo, 2026-12-07)
    ("countdown", "short"): (69, "measured: make demo's warm-up and final evals, 2026-12-07"),
}


@dataclass
class Timing:
    """Seconds per GRPO step, hours and dollars for a run, and where the figures come from. The step and the run
    are timed eager (`step_seconds`, `run_hours`: what runs today) and with the decode step captured."""

    step_seconds: float
    run_hours: float
    usd: float | None
    sources: list[str]
    captured_step_seconds: float | None = None
    captured_run_hours: float | None = None
    assumed: str = "eager"  # which of the two `step_seconds` and `run_hours` are


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
            "captured_step_seconds": None if t.captured_step_seconds is None else round(t.captured_step_seconds, 1),
            "captured_run_hours": None if t.captured_run_hours is None else round(t.captured_run_hours, 2),
            "usd": None if t.usd is None else round(t.usd, 2),
        }


# ----------------------------------------------------------------------------------------------
# One decode step
# ----------------------------------------------------------------------------------------------


def ops_per_layer(shape: Shape, lora: bool, quantized: bool) -> int:
    """Operations an eager decoder layer launches: norms, projections, rotary, cache update, attention, MLP; PEFT's
    LoRA adds ~6 per adapted linear (dropout, A, B, scale, add, casts), bitsandbytes' 4-bit ~2 (dequantize, matmul)."""
    base = 55 + (16 if shape.qk_norm else 0)
    linears = 7
    return base + (6 * linears if lora else 0) + (2 * linears if quantized else 0)


def decode_step_s(
    shape: Shape, card: Card, rows: int, window: int, form: str, captured: bool, quantized: bool = True
) -> float:
    """Seconds of one decode step of `rows` rows attending over `window` slots on `card`.

    `form`: "merged" (the engine's 16-bit working copy: plain matmuls), "unmerged" (the base, dequantized in every
    step when `quantized`, plus LoRA) or "generate" (HF generate over the unmerged policy, as stock TRL decodes).
    Device time is the larger of bytes read over the bandwidth and FLOPs over the card's throughput, plus a floor
    per kernel; an eager step also waits for the host to launch every operation, a captured one does not.
    """
    lora, quantized = form != "merged", quantized and form != "merged"
    linear, other = shape.linear_params, shape.other_params
    weights = linear * (0.5 + 4) + other * 2 if quantized else shape.params * 2  # 4-bit read, 16-bit temp out and in
    read = weights + kv_bytes(shape, rows, window, 2) + decode_logits_bytes(shape, rows)
    flops = 2 * rows * shape.params + 4 * rows * window * shape.heads * shape.d * shape.layers
    ops = (
        ops_per_layer(shape, lora, quantized) * shape.layers
        + SAMPLING_OPS
        + (GENERATE_OPS if form == "generate" else 0)
    )
    kernels = ops if not captured else shape.layers * 15 + SAMPLING_OPS  # a compiler fuses the elementwise work
    bandwidth = card.bandwidth_gbs * 1e9 * BANDWIDTH_SHARE.value
    device = (
        max(read / bandwidth, flops / (card.tflops * 1e12 * DECODE_MFU.value)) + kernels * KERNEL_FLOOR_US.value / 1e6
    )
    return device if captured else max(device, ops * HOST_OP_US.value / 1e6)


def rebuild_s(shape: Shape, card: Card, quantized: bool) -> float:
    """The merged copy rebuilt before a rollout: the 4-bit base dequantized, the LoRA delta added in fp32, written
    in 16 bits (~27 bytes of traffic per linear weight), plus the other weights copied."""
    if not quantized:
        return shape.params * 8 / (card.bandwidth_gbs * 1e9 * BANDWIDTH_SHARE.value)
    traffic = shape.linear_params * 27 + shape.other_params * 4
    return traffic / (card.bandwidth_gbs * 1e9 * BANDWIDTH_SHARE.value) + 10 * 7 * shape.layers * HOST_OP_US.value / 1e6


# ----------------------------------------------------------------------------------------------
# A run on a GPU
# ----------------------------------------------------------------------------------------------


def _gpu_timing(
    recipe: Any, shape: Shape, card: Card, rows: int, prompt: int, gpus: int, merged: bool | None, backend: str
) -> Timing:
    g, e = recipe.grpo, recipe.eval
    quantized = recipe.quantization.mode != "none"
    form = "generate" if backend != "engine" else "merged" if merged else "unmerged"
    T = g.max_completion_length
    flops_per_token = (8 if recipe.model.gradient_checkpointing else 6) * shape.params
    train = rows * (prompt + T) * flops_per_token / (card.tflops * 1e12 * TRAIN_MFU.value)
    sft_s = 0.0
    if recipe.sft.enabled:
        sft_s = recipe.sft.examples * recipe.sft.epochs * recipe.sft.max_length * flops_per_token
        sft_s /= card.tflops * 1e12 * TRAIN_MFU.value

    def run(captured: bool) -> tuple[float, float]:
        capture = captured and form != "generate"

        def decode(batch: int, tokens: int, how: str) -> float:
            return tokens * decode_step_s(shape, card, batch, prompt + tokens // 2, how, capture, quantized)

        rebuild = rebuild_s(shape, card, quantized) if form == "merged" else 0.0
        step = decode(rows, T, form) + rebuild + train
        eval_form = "generate" if form == "generate" else "merged" if merged or not quantized else "unmerged"
        periodic = (g.max_steps // g.eval_every if g.eval_every else 0) * math.ceil(g.eval_examples / rows)
        evals = periodic * decode(rows, T, form) + eval_count(recipe)[0] * math.ceil(
            e.examples / e.batch_size
        ) * decode(e.batch_size, e.max_new_tokens, eval_form)
        return step, (step * g.max_steps + evals + sft_s) / 3600

    step, hours = run(False)
    captured_step, captured_hours = run(True) if form != "generate" else (None, None)
    hourly = recipe.cost.gpu_hourly_usd if recipe.cost.gpu_hourly_usd is not None else card.usd_per_hour
    sources = [
        f"decode ({form}): bytes read over {card.name}'s {card.bandwidth_gbs:g} GB/s, FLOPs over its "
        f"{card.tflops:g} TFLOP/s, host launches when eager",
        HOST_OP_US.line("host us per launched operation"),
        KERNEL_FLOOR_US.line("kernel floor us"),
        BANDWIDTH_SHARE.line("bandwidth share"),
        DECODE_MFU.line("decode MFU"),
        TRAIN_MFU.line("training MFU"),
        f"card: {card.name} ({card.bandwidth_gbs:g} GB/s, {card.tflops:g} TFLOP/s; cited: r1lite/plan/hardware.py)",
        "assumed eager: no GPU has proven the captured decode step yet (r1lite.plan.memory.COMPILE_PROVEN)",
    ]
    return Timing(
        step, hours, None if hourly is None else hours * hourly * gpus, sources, captured_step, captured_hours
    )


# ----------------------------------------------------------------------------------------------
# A run on this CPU
# ----------------------------------------------------------------------------------------------


def _cpu_timing(recipe: Any, shape: Shape, rows: int, prompt: int, length: int | None) -> Timing:
    """Seconds per GRPO step and hours of a CPU run from this machine's measured GEMM rate and operation cost.

    A rollout of `rows` rows runs as many steps as its longest completion (the cap) while rows that ended leave the
    batch, so its FLOPs follow the mean completion length (`length`; the cap when none is known). A GRPO batch is
    sampled once (more rounds with dynamic sampling), scored once more for the old log-probs when it serves several
    updates (TRL's num_iterations), then trained on once per update; evals decode greedily and, with pass@k, k
    samples per problem.
    """
    g, e, s = recipe.grpo, recipe.eval, recipe.sft
    speed = cpu_speed(cpu_bf16(recipe.model, on_cuda=False))
    head = shape.vocab * shape.hidden
    layer_ops = ops_per_layer(shape, lora=False, quantized=recipe.quantization.mode != "none") * shape.layers

    def rollout_s(batch: int, cap: int, mean: int, distinct: int) -> float:
        """`batch` rows of `distinct` prompts: the prompts prefilled once, then `cap` steps of the live rows."""
        live = max(1, batch * mean // max(cap, 1))  # the batch's mean live rows
        flops = 2 * batch * mean * shape.params + 2 * distinct * prompt * (shape.params - head)
        overhead = cap * (layer_ops + SAMPLING_OPS) * speed.op_us * CPU_OP_FACTOR.value / 1e6
        return flops / (speed.gflops(live) * 1e9) + overhead

    def train_s(sequences: int, tokens: int, scored: int, passes: float = 1.0) -> float:
        """Forward and backward (input gradients) over `tokens` per sequence, the head over `scored` of them."""
        flops = 4 * sequences * (tokens * (shape.params - head) + scored * head) * passes
        return flops / (speed.gflops(4096) * 1e9 * CPU_TRAIN_SHARE.value)

    T = g.max_completion_length
    mean = min(length or T, T)
    iterations = g.trl.get("num_iterations", 1)
    rounds = min(CPU_SAMPLING_ROUNDS.value, 1 + g.dynamic_sampling_rounds) if g.dynamic_sampling else 1
    scoring = train_s(rows, prompt + mean, mean, passes=0.5) if iterations > 1 else 0.0  # a forward only
    distinct = rows // g.num_generations
    step = (rounds * rollout_s(rows, T, mean, distinct) + scoring) / iterations + train_s(rows, prompt + mean, mean)
    completion = 20 if recipe.sft_completions() == "answers" else 60 if s.trace_style == "short" else 150
    sft_tokens = min(prompt + completion, s.max_length)
    sft_s = train_s(s.examples * s.epochs, sft_tokens, sft_tokens) if s.enabled else 0.0
    eval_mean = min(length or e.max_new_tokens, e.max_new_tokens)
    greedy, sampled = eval_count(recipe)
    batches = math.ceil(e.examples / e.batch_size)
    eval_s = greedy * batches * rollout_s(e.batch_size, e.max_new_tokens, eval_mean, e.batch_size)
    if e.pass_k:
        per_batch = max(1, e.batch_size // e.pass_k)  # prompts a sampled batch holds, k rows each
        sampled_batches = math.ceil(e.examples / per_batch)
        eval_s += sampled * sampled_batches * rollout_s(per_batch * e.pass_k, e.max_new_tokens, eval_mean, per_batch)
    hours = (step * g.max_steps + sft_s + eval_s) / 3600
    sources = [
        f"CPU speed ({speed.dtype}): {speed.small:.0f} GFLOP/s at 32 rows, {speed.large:.0f} at 512, "
        f"{speed.op_us:.1f} us an operation ({speed.source})",
        CPU_OP_FACTOR.line("cost of a model's operation over a bare one"),
        CPU_TRAIN_SHARE.line("training's share of the GEMM rate"),
        CPU_SAMPLING_ROUNDS.line("sampling rounds with dynamic sampling"),
    ]
    return Timing(step, hours, 0.0, sources)


def eval_count(recipe: Any) -> tuple[int, int]:
    """(greedy evals, sampled evals) a run makes: base, warm-up (with SFT and GRPO) and final; each samples with
    eval.pass_k, except a base eval that GRPO is not judged against (r1lite.runs.rundir.samples_base)."""
    both = recipe.sft.enabled and recipe.grpo.enabled
    greedy = 3 if both else 2
    return greedy, (greedy - 1 if both else greedy) if recipe.eval.pass_k else 0


def run_timing(
    recipe: Any,
    shape: Shape,
    card: Card | None,
    on_cuda: bool,
    rows: int,
    prompt: int,
    gpus: int = 1,
    merged: bool | None = None,
    backend: str = "engine",
    length: int | None = None,
) -> Timing | None:
    """The run's time and cost on `card` (None on a GPU the table has no speed for); `merged`: the plan's decision
    for GRPO's rollouts; `length`: a mean completion length (CPU: what rows that end early save)."""
    if not on_cuda:
        return _cpu_timing(recipe, shape, rows, prompt, length)
    if card is None or not card.tflops or not card.bandwidth_gbs:
        return None
    return _gpu_timing(recipe, shape, card, rows, prompt, gpus, merged, backend)


def typical_completion(recipe: Any, measured: tuple[int, str] | None = None) -> tuple[int, str, bool] | None:
    """(tokens, source, measured): a run's measured mean completion length when given (`Run.mean_completion_length`),
    else a cited figure for the recipe's task and warm-up; None without either."""
    if measured is not None:
        return (*measured, True)
    cited = CITED_COMPLETION_TOKENS.get((recipe.data.task, recipe.sft.trace_style))
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


def typical_timing(
    recipe: Any,
    episodes: int,
    shape: Shape,
    card: Card | None,
    on_cuda: bool,
    rows: int,
    prompt: int,
    gpus: int,
    merged: bool | None,
    backend: str,
    measured: tuple[int, str] | None = None,
) -> TypicalLength | None:
    """The run timed at the typical completion length, when one is known and below the maximum (on a GPU a batch
    then decodes that many steps; on a CPU the cap's steps, but only the typical share of the rows' FLOPs)."""
    typical = typical_completion(recipe, measured)
    if typical is None or not episodes or typical[0] >= recipe.grpo.max_completion_length:
        return None
    tokens, source, was_measured = typical
    if on_cuda:
        timed = at_completion_length(recipe, tokens)
        timing = run_timing(timed, shape, card, on_cuda, rows, prompt, gpus, merged, backend)
    else:
        timing = run_timing(recipe, shape, card, on_cuda, rows, prompt, gpus, merged, backend, length=tokens)
    return None if timing is None else TypicalLength(tokens, source, was_measured, episodes * tokens, timing)


def with_captured(timing: Timing) -> Timing:
    """The same timing read as the captured one (when a GPU has proven the captured step on this path)."""
    if timing.captured_step_seconds is None:
        return timing
    return replace(
        timing,
        step_seconds=timing.captured_step_seconds,
        run_hours=timing.captured_run_hours,
        assumed="captured",
    )

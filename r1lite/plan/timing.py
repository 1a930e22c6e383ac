"""Time and cost of a run: seconds per GRPO step, hours and dollars, each figure with its source.

    >>> t = run_timing(recipe, shape, card, on_cuda=True, rows=64, prompt=160)
    >>> t.step_seconds, t.run_hours, t.usd, t.sources
    >>> typical_completion(recipe, measured=(312, "measured: ..."))    # the length a run is timed at

A model, not a measurement; `timing_sources` says which of its figures are calibrated, cited or assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from r1lite.machine.precision import cpu_bf16
from r1lite.plan.hardware import Card
from r1lite.plan.memory import weight_bytes
from r1lite.plan.shapes import SHAPES, Shape

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


def typical_completion(recipe: Any, measured: tuple[int, str] | None = None) -> tuple[int, str, bool] | None:
    """(tokens, source, measured): a run's measured mean completion length when given (`Run.mean_completion_length`),
    else a cited figure for the recipe's task; None without either."""
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


def typical_timing(
    recipe: Any,
    episodes: int,
    shape: Shape,
    card: Card | None,
    on_cuda: bool,
    rows: int,
    prompt: int,
    gpus: int,
    measured: tuple[int, str] | None = None,
) -> TypicalLength | None:
    """The run timed at the typical completion length, when one is known and below the maximum."""
    typical = typical_completion(recipe, measured)
    if typical is None or not episodes or typical[0] >= recipe.grpo.max_completion_length:
        return None
    tokens, source, measured = typical
    timing = run_timing(at_completion_length(recipe, tokens), shape, card, on_cuda, rows, prompt, gpus)
    return None if timing is None else TypicalLength(tokens, source, measured, episodes * tokens, timing)

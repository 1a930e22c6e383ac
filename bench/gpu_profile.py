"""One GPU-check profile in a process of its own: r1lite's stages on random weights in the profile's real shape,
under its card's memory, each stage's peak beside the plan's (run by bench/gpu_check.py, one process per profile).

    python bench/gpu_profile.py --profile gpu-16gb --out p.json --work /tmp/w     # on a GPU
    python bench/gpu_profile.py --profile gpu-16gb --out p.json --work /tmp/w --dry-run   # CPU, tiny shapes

The process is capped at the card less the plan's CUDA context (`torch.cuda.set_per_process_memory_fraction`) and
runs base eval, an SFT step and GRPO at the profile's completion length (EOS is never sampled in practice, so
completions run full length). Per stage: the peak allocated bytes (`max_memory_allocated`) beside the plan made for
the same settings; whether it fits the card (peak x the plan's allocator factor + the CUDA context measured in this
process); the engine's merge and capture decisions beside the plan's; seconds per GRPO step beside the plan's for
this GPU. The JSON is rewritten after every stage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from r1lite.fileio import read_json_or_empty, read_jsonl, write_json  # noqa: E402
from r1lite.orchestrate.pipeline import free_memory  # noqa: E402
from r1lite.plan.hardware import card_for_profile, detected_card  # noqa: E402
from r1lite.plan.memory import ALLOCATOR_SLACK, CUDA_CONTEXT_GIB, GIB  # noqa: E402
from r1lite.plan.planner import make_plan, shape_for  # noqa: E402
from r1lite.plan.shapes import Shape  # noqa: E402
from r1lite.recipe.load import load_recipe  # noqa: E402
from r1lite.stages import data, grpo, sft  # noqa: E402
from r1lite.stages import evaluate as evaluate_stage  # noqa: E402
from r1lite.train.models import load_tokenizer  # noqa: E402

TINY = dict(vocab=512, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)  # the dry run's shape


def judge_fit(peak_allocated: int, context: int, card_gib: float) -> bool:
    """A run fits its card when its peak allocated bytes, with the planner's allocator slack, and the CUDA context
    its process holds fit the card's memory (the rule `r1lite plan` applies to its own figures)."""

    return peak_allocated * (1 + ALLOCATOR_SLACK) + context <= card_gib * GIB


class Meter:
    """Peak tensor bytes per phase and the CUDA context, on CUDA (None on CPU: the dry run exercises the harness)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.context = 0

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        """The peak allocated since the last reset; also notes the context as it is now (it grows as modules load)."""
        if not self.cuda:
            return None
        self.torch.cuda.synchronize()
        free, total = self.torch.cuda.mem_get_info()
        self.context = max(self.context, total - free - self.torch.cuda.memory_reserved())
        return self.torch.cuda.max_memory_allocated()


@contextlib.contextmanager
def capped(card: Any) -> Any:
    """The process limited to what the plan gives it on `card`: the card less the plan's CUDA context."""
    import torch

    if not torch.cuda.is_available():
        yield None
        return
    total = torch.cuda.mem_get_info()[1]
    share = min(1.0, (card.gib - CUDA_CONTEXT_GIB) * GIB / total)
    torch.cuda.set_per_process_memory_fraction(share)
    try:
        yield share * total / GIB
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        free_memory()


def build_model(name: str, shape: Any, folder: Path, dry_run: bool) -> Path:
    """Random weights in `shape` and the model's architecture (bf16 on the GPU), with a Countdown-trained tokenizer.

    The tokenizer knows ~400 tokens; ids above them decode to nothing, which is all the rewards need.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    from r1lite.train.tiny import build_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tok = build_tokenizer()
    fields = shape.qwen_config()
    del fields["model_type"]  # the architecture follows the model's name (the dry run's tiny shape has no q/k norms)
    config_class = Qwen3Config if "qwen3" in name.lower() else Qwen2Config
    config = config_class(
        **fields,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.device("cpu" if dry_run else "cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dry_run else torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    free_memory()
    return folder


def profile_recipe(profile: str, model_dir: Path, work: Path, args: argparse.Namespace) -> Any:
    """The profile as a user runs it, at its completion length (or --tokens), cut to one batch of each stage."""

    base = load_recipe("countdown", profile)
    tokens = args.tokens or base.grpo.max_completion_length
    sets = [
        f"model.name={model_dir}",
        f"data.dir={work / 'data'}",
        f"output_dir={work / 'runs'}",
        "data.train_size=64",
        "data.test_size=64",
        f"sft.examples={2 * base.sft.batch_size * base.sft.grad_accum}",
        "sft.max_steps=2",
        f"grpo.max_steps={args.steps}",
        f"grpo.eval_every={args.steps}",  # one periodic eval, after the last step
        "grpo.eval_examples=8",  # few: the engine pads them to its batch, so memory is the profile's
        "grpo.save_every=1000",
        f"grpo.max_completion_length={tokens}",
        "eval.examples=8",
        f"eval.max_new_tokens={tokens}",
        "grpo.rollout=engine",
        "tracking.wandb=disabled",
    ]
    if args.dry_run:  # CPU: fp32 compute (bitsandbytes runs NF4 there too)
        sets += ["model.device=cpu", "model.dtype=float32", "quantization.compute_dtype=float32"]
    return load_recipe("countdown", profile, sets)


class GRPOProbe:
    """Peaks per GRPO phase: rollout (TRL's `_generate`), training step, periodic eval; step seconds."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.peaks: dict[str, int | None] = {}
        self.step_s: list[float] = []
        self._eval_s = 0.0

    def _note(self, phase: str) -> None:
        value = self.meter.peak()
        self.peaks[phase] = None if value is None else max(self.peaks.get(phase) or 0, value)
        self.meter.reset()

    @contextlib.contextmanager
    def installed(self) -> Any:
        from transformers import TrainerCallback

        from r1lite.train import grpo_trainer

        probe = self
        generate, evaluate = grpo_trainer.GRPOTrainer._generate, evaluate_stage.evaluate

        def timed_generate(trainer: Any, prompts: Any) -> Any:
            probe._note("grpo_train")  # what ran before this rollout belongs to the previous step
            out = generate(trainer, prompts)
            probe._note("grpo_rollout")
            return out

        def timed_evaluate(*a: Any, **k: Any) -> Any:
            probe._note("grpo_train")
            start = time.perf_counter()
            out = evaluate(*a, **k)
            probe._eval_s += time.perf_counter() - start
            probe._note("grpo_periodic_eval")
            return out

        class Steps(TrainerCallback):
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                probe._start, probe._eval_s = time.perf_counter(), 0.0

            def on_step_end(self, *a: Any, **k: Any) -> None:
                probe._note("grpo_train")
                probe.step_s.append(time.perf_counter() - probe._start - probe._eval_s)

        grpo_trainer.GRPOTrainer._generate = timed_generate
        evaluate_stage.evaluate = timed_evaluate
        try:
            yield Steps()
        finally:
            grpo_trainer.GRPOTrainer._generate, evaluate_stage.evaluate = generate, evaluate


def measure_stages(recipe: Any, meter: Meter, after: Any) -> tuple[dict[str, int | None], GRPOProbe, Path]:
    """Base eval, SFT and GRPO as `r1lite run` does them; the peak of each stage and GRPO phase, handed to
    `after(measured, probe, root)` as each stage ends (the JSON is rewritten then: a process stopped at the budget
    keeps the stages that finished)."""
    data.run(recipe.data)
    root = Path(recipe.output_dir) / recipe.run_name
    measured: dict[str, int | None] = {}
    probe = GRPOProbe(meter)
    meter.reset()
    evaluate_stage.run(recipe, root, label="base")
    measured["eval"] = meter.peak()
    after(measured, probe, root)
    free_memory()
    meter.reset()
    adapter = sft.run(recipe, root)
    measured["sft_step"] = meter.peak()
    after(measured, probe, root)
    free_memory()
    meter.reset()
    with probe.installed() as steps:
        grpo.run(recipe, root, adapter, callbacks=[steps])
    free_memory()
    measured.update(probe.peaks)
    after(measured, probe, root)
    return measured, probe, root


def run_profile(profile: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One profile through base eval, SFT and GRPO under its card's memory, measured beside the plan; the JSON
    (`args.out`) written after each stage."""
    card = card_for_profile(profile)
    name = load_recipe("countdown", profile).model.name
    shape = Shape(**TINY) if args.dry_run else shape_for(name)
    model_dir = build_model(name, shape, work / "models" / name.replace("/", "_"), args.dry_run)
    recipe = profile_recipe(profile, model_dir, work / profile, args)
    meter, start = Meter(), time.perf_counter()
    prompt = _longest_prompt(recipe, model_dir)
    plan = make_plan(recipe, card, prompt_tokens=prompt, verdicts=False)
    here = _this_gpu_card()
    timing = make_plan(recipe, here, prompt_tokens=prompt, verdicts=False) if here else None
    out: dict[str, Any] = {"profile": profile, "card": card.name, "model": name, "weights": "random (published shape)"}
    out.update(tokens=recipe.grpo.max_completion_length, prompt_tokens=prompt, planned_peak_gib=round(plan.peak_gib, 2))
    out["planned_cuda_context_gib"] = CUDA_CONTEXT_GIB

    def after(measured: dict[str, int | None], probe: GRPOProbe, root: Path) -> None:
        peaks = [v for v in measured.values() if v is not None]
        out["stages"] = {
            stage: {
                "measured_gib": None if value is None else round(value / GIB, 3),
                "planned_gib": round(plan.stages[stage].tensor_bytes / GIB, 3),
                "ratio": None if not value else round(plan.stages[stage].tensor_bytes / value, 3),
            }
            for stage, value in measured.items()
            if stage in plan.stages
        }
        out["peak_allocated_gib"] = round(max(peaks) / GIB, 3) if peaks else None
        out["cuda_context_gib"] = round(meter.context / GIB, 3) if meter.cuda else None
        out["fits_card"] = judge_fit(max(peaks), meter.context, card.gib) if peaks else None
        if probe.step_s:
            out.update(_decisions(root, plan))
            steady = probe.step_s[1:] or probe.step_s
            out["step_s"] = round(sum(steady) / len(steady), 2)
            planned = None if timing is None or timing.step_seconds is None else round(timing.step_seconds)
            out["plan_step_s_this_gpu"] = planned
        out["seconds"] = round(time.perf_counter() - start, 1)
        write_json(args.out, out)

    with capped(card) as cap_gib:
        out["cap_gib"] = None if cap_gib is None else round(cap_gib, 2)
        measure_stages(recipe, meter, after)
    out["finished"] = True
    write_json(args.out, out)
    return out


def _decisions(root: Path, plan: Any) -> dict[str, Any]:
    """The engine's merge and capture decisions for GRPO rollouts (from its logged metrics) beside the plan's."""

    logs = [r for r in read_jsonl(root / "grpo" / "metrics.jsonl") if "rollout_merged" in r]
    return {
        "merge": {"engine": bool(logs and logs[-1]["rollout_merged"]), "plan": plan.merge.get("grpo_rollout")},
        "compiled_decode": {
            "engine": bool(logs and logs[-1].get("rollout_compiled")),
            "plan": plan.compiled.get("grpo_rollout"),
        },
    }


def _longest_prompt(recipe: Any, model_dir: Path) -> int:
    """The longest of the profile's first 64 training prompts, in tokens: what the plan is asked to hold."""
    data.run(recipe.data)  # before the stages: the plan comes first (measure_stages then reuses the files)
    task, tokenizer = recipe.data.make_task(), load_tokenizer(str(model_dir))
    examples = data.load_split(recipe.data, "train")[:64]
    prompts = [task.render_prompt(e, recipe.data.prompt_format, tokenizer) for e in examples]
    return max(len(ids) for ids in tokenizer(text=prompts)["input_ids"])


def _this_gpu_card() -> Any:
    """This GPU from the card table (for step-time plans), or None on CPU."""
    import torch

    return detected_card() if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--tokens", type=int, default=0, help="completion tokens (0: the profile's)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    try:
        return run_profile(args.profile, args.work, args)
    except Exception as e:  # an OOM under the card's cap is a finding, not a crash
        oom = type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
        partial = _read(args.out)
        result = {"profile": args.profile, **partial, "error": f"{type(e).__name__}: {str(e)[:300]}", "oom": oom}
        result["fits_card"] = False if oom else partial.get("fits_card")
        write_json(args.out, result)
        return result


def _read(path: Path) -> dict[str, Any]:
    return read_json_or_empty(path)


if __name__ == "__main__":
    main()

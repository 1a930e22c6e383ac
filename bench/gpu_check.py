"""Everything a GPU can tell us about r1lite, in one command and one table (`make gpu-check`).

    python bench/gpu_check.py                      # on a GPU, offline: <= 9 minutes on one H200
    python bench/gpu_check.py --dry-run            # the same harness on CPU: tiny shapes, a pretend card (CI runs it)
    python bench/gpu_check.py --only profiles --profiles gpu-16gb --tokens 1024

Three sections, most valuable first, each started only while --budget-s lasts:

1. profiles: every GPU profile of recipes/countdown.yaml on random weights in the profile's real shape
   (r1lite.plan.SHAPES; EOS never sampled in practice, so completions run full length), through r1lite's own
   stages, with the process capped at the profile's card (`torch.cuda.set_per_process_memory_fraction`):
   base eval, an SFT step, GRPO steps with one periodic eval. Per stage: peak tensor bytes measured
   (`max_memory_allocated`) vs the plan's for the same settings; whether the run fits the card; the engine's
   merge decision and compiled decode vs the plan's; seconds per GRPO step vs the plan's for this GPU.
   `--tokens` shortens completions to fit the budget (the plan is made for the same settings).
2. tests: the CUDA variants of the tests that matter (`pytest -m cuda`): engine greedy tokens equal
   `generate`'s (merged and unmerged, captured and eager), engine log-probs equal a fresh forward, and the
   toy-reward learning tests (fp32 and NF4, TRL generation and engine) raise the reward.
3. rollout: `bench/rollout.py` side by side in one process: stock TRL generation vs our engine, merged and
   unmerged, captured and eager, on the Qwen2.5-3B shape; the ratios say which compiled paths are proven
   (`r1lite.plan.COMPILE_PROVEN`).

Writes bench/results/gpu-<date>.json (GPU, versions, command, every figure) and prints one table. Carry
the wheels the GPU image lacks (../shared/device/fetch-wheels.sh) and commit the JSON and bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROFILES = ("gpu-16gb", "gpu-24gb", "gpu-12gb", "gpu-80gb")  # the project's target card first
GIB = 2**30


def _bench_rollout() -> Any:
    spec = importlib.util.spec_from_file_location("bench_rollout", ROOT / "bench" / "rollout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rollout"] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Memory: what the process may use (the card's), and what it used
# ----------------------------------------------------------------------------------------------


class Meter:
    """Peak tensor bytes per phase on CUDA (None on CPU, where the dry run only exercises the harness)."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def reserved(self) -> int | None:
        return torch.cuda.max_memory_reserved() if self.cuda else None


@contextlib.contextmanager
def capped(card: Any) -> Any:
    """The process limited to what it gets on `card` once its CUDA context is made (a no-op on CPU)."""
    from r1lite.plan import CUDA_CONTEXT_GIB

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
        _free()


def _free() -> None:
    from r1lite.pipeline import free_memory

    free_memory()


# ----------------------------------------------------------------------------------------------
# 1. Profiles
# ----------------------------------------------------------------------------------------------


def build_model(shape: Any, folder: Path, dry_run: bool) -> Path:
    """Random weights in `shape` (bf16 on the GPU), saved with a Countdown-trained tokenizer.

    The tokenizer knows ~400 tokens; ids above them decode to nothing, which is all the rewards need.
    """
    from transformers import AutoModelForCausalLM, Qwen2Config

    from r1lite.tiny import build_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tok = build_tokenizer()
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied,
        rope_theta=1e6,
        max_position_embeddings=32768,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    device = "cpu" if dry_run else "cuda"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dry_run else torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    _free()
    return folder


TINY = dict(vocab=512, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)


def profile_recipe(profile: str, model_dir: Path, work: Path, args: argparse.Namespace) -> Any:
    """The profile as it runs, made small in everything but its memory-shaping settings (rows, micro-batch)."""
    from r1lite.recipes import load_recipe

    base = load_recipe("countdown", profile)
    g = base.grpo
    rows = g.prompts_per_step * g.num_generations
    tokens = args.tokens or g.max_completion_length
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
        f"grpo.eval_examples={min(rows, 32)}",  # one batch on the training engine (padded to its rows)
        "grpo.save_every=1000",
        f"grpo.max_completion_length={tokens}",
        f"eval.examples={min(base.eval.batch_size, 64)}",  # one batch
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

        from r1lite import grpo_trainer
        from r1lite.stages import eval as eval_stage

        probe = self
        generate, evaluate = grpo_trainer.GRPOTrainer._generate, eval_stage.evaluate

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
        eval_stage.evaluate = timed_evaluate
        try:
            yield Steps()
        finally:
            grpo_trainer.GRPOTrainer._generate, eval_stage.evaluate = generate, evaluate


def run_profile(profile: str, shapes_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One profile through base eval, SFT and GRPO under its card's memory; measured beside the plan."""
    from r1lite.fileio import read_jsonl
    from r1lite.models import load_tokenizer
    from r1lite.plan import CUDA_CONTEXT_GIB, Shape, card_for_profile, make_plan, shape_for
    from r1lite.recipes import load_recipe
    from r1lite.stages import data, grpo, sft
    from r1lite.stages import eval as eval_stage

    card = card_for_profile(profile)
    name = load_recipe("countdown", profile).model.name
    shape = Shape(**TINY) if args.dry_run else shape_for(name)
    model_dir = build_model(shape, shapes_dir / name.replace("/", "_"), args.dry_run)
    recipe = profile_recipe(profile, model_dir, work / profile, args)
    meter = Meter()
    out: dict[str, Any] = {"profile": profile, "card": card.name, "model": name}
    out["tokens"] = recipe.grpo.max_completion_length
    start = time.perf_counter()
    with capped(card) as cap_gib:
        out["cap_gib"] = None if cap_gib is None else round(cap_gib, 2)
        data.run(recipe.data)
        root = Path(recipe.output_dir) / recipe.run_name
        measured: dict[str, int | None] = {}
        meter.reset()
        eval_stage.run(recipe, root, label="base")
        measured["eval"] = meter.peak()
        _free()
        meter.reset()
        adapter = sft.run(recipe, root)
        measured["sft_step"] = meter.peak()
        _free()
        probe = GRPOProbe(meter)
        meter.reset()
        with probe.installed() as steps:
            grpo.run(recipe, root, adapter, callbacks=[steps])
        _free()
        measured.update(probe.peaks)
        reserved = meter.reserved()
    logs = [r for r in read_jsonl(root / "grpo" / "metrics.jsonl") if "rollout_merged" in r]
    prompt = max(len(ids) for ids in load_tokenizer(str(model_dir))(text=_prompts(recipe))["input_ids"])
    plan = make_plan(recipe, card, prompt_tokens=prompt, verdicts=False)
    here = _this_gpu_card()
    timing = make_plan(recipe, here, prompt_tokens=prompt, verdicts=False) if here else None
    out["prompt_tokens"] = prompt
    out["stages"] = {
        stage: {
            "measured_gib": None if value is None else round(value / GIB, 3),
            "planned_gib": round(plan.stages[stage].tensor_bytes / GIB, 3),
            "ratio": None if not value else round(plan.stages[stage].tensor_bytes / value, 3),
        }
        for stage, value in measured.items()
        if stage in plan.stages
    }
    out["max_reserved_gib"] = None if reserved is None else round(reserved / GIB, 2)
    out["fits_card"] = None if reserved is None else reserved / GIB + CUDA_CONTEXT_GIB <= card.gib
    out["merge"] = {"engine": bool(logs and logs[-1]["rollout_merged"]), "plan": plan.merge.get("grpo_rollout")}
    out["compiled_decode"] = {
        "engine": bool(logs and logs[-1].get("rollout_compiled")),
        "plan": plan.compiled.get("grpo_rollout"),
    }
    steady = probe.step_s[1:] or probe.step_s
    out["step_s"] = round(sum(steady) / max(len(steady), 1), 2)
    planned_s = None if timing is None else timing.step_seconds
    out["plan_step_s_this_gpu"] = None if planned_s is None else round(planned_s, 1)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _prompts(recipe: Any) -> list[str]:
    from r1lite.stages import data

    task = recipe.data.make_task()
    return [task.render_prompt(e, recipe.data.prompt_format) for e in data.load_split(recipe.data, "train")[:64]]


def _this_gpu_card() -> Any:
    """This GPU from the card table (for step-time plans), or None on CPU."""
    from r1lite.plan import detected_card

    return detected_card() if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------------------------
# 2. CUDA tests, 3. rollout comparison
# ----------------------------------------------------------------------------------------------


def run_tests(timeout: float) -> dict[str, Any]:
    """`pytest -m cuda`: on CPU every one of them is skipped, which the dry run checks."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command[2:]), "error": f"timed out after {timeout:.0f} s"}
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    counts = {word: int(n) for n, word in (p.split()[:2] for p in tail.split(" in ")[0].split(", ") if p[:1].isdigit())}
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    return {"command": " ".join(command[2:]), "exit_code": done.returncode, "counts": counts, "failed": failures}


def run_rollout(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Stock TRL vs the engine on one case, merged and unmerged, captured and eager (bench/rollout.py)."""
    bench = _bench_rollout()
    case = ("tiny", 2, 2, 8) if args.dry_run else ("qwen2.5-3b", 8, 8, args.rollout_tokens)
    shape, prompts, generations, tokens = case
    results = []
    for merge in ("merged", "unmerged"):
        case = bench.main(
            [
                "--shape", shape, "--prompts", str(prompts), "--generations", str(generations),
                "--tokens", str(tokens), "--steps", "2" if args.dry_run else "3", "--merge", merge,
                "--backends", ("engine,engine-eager" if merge == "unmerged" else "trl,engine,engine-eager"),
            ]
        )  # fmt: skip
        results.extend({**c, "merge": merge} for c in case)
    return results


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    return {
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)",
        "cuda": torch.version.cuda,
        "versions": versions,
        "command": " ".join([Path(sys.argv[0]).name if sys.argv else "gpu_check.py", *(args.argv or [])]),
    }


def table(report: dict[str, Any]) -> str:
    """The one table: a line per profile stage, then the tests and the rollout ratios."""
    lines = [f"r1lite GPU check — {report['env']['gpu']}, {report['env']['date']}"]
    lines.append(f"{'profile':<10} {'stage':<20} {'measured':>9} {'planned':>8} {'plan/meas':>9}  notes")
    for p in report.get("profiles", []):
        if "error" in p:
            lines.append(f"{p['profile']:<10} {'(failed)':<20} {p['error'][:90]}")
            continue
        notes = (
            f"fits {p['card']}: {p['fits_card']}; merged {p['merge']['engine']} (plan {p['merge']['plan']}); "
            f"captured {p['compiled_decode']['engine']}; {p['step_s']} s/step (plan {p['plan_step_s_this_gpu']})"
        )
        for i, (stage, s) in enumerate(p["stages"].items()):
            measured = "-" if s["measured_gib"] is None else f"{s['measured_gib']:.2f}"
            ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
            lines.append(
                f"{p['profile'] if i == 0 else '':<10} {stage:<20} {measured:>9} {s['planned_gib']:>8.2f} {ratio:>9}"
                + (f"  {notes}" if i == 0 else "")
            )
    if "tests" in report:
        t = report["tests"]
        lines.append(f"tests (pytest -m cuda): {t.get('counts') or t.get('error')} {' '.join(t.get('failed', []))}")
    for case in report.get("rollout", []):
        rates = {b: r["completion_tokens_per_s"] for b, r in case["results"].items()}
        lines.append(f"rollout {case['shape']} {case['batch']} {case['merge']}: tok/s {rates}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, a pretend card: checks the harness")
    p.add_argument("--budget-s", type=float, default=540, help="start no section after this many seconds")
    p.add_argument("--only", default="profiles,tests,rollout", help="sections to run, comma-separated")
    p.add_argument("--profiles", default=",".join(PROFILES))
    p.add_argument("--tokens", type=int, default=256, help="completion tokens in the profile runs (0: the profile's)")
    p.add_argument("--steps", type=int, default=2, help="GRPO steps per profile (the first includes warm-up)")
    p.add_argument("--rollout-tokens", type=int, default=256)
    p.add_argument("--out", type=Path, help="default: bench/results/gpu-<date>.json (dry run: a temporary file)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.dry_run:
        args.tokens = min(args.tokens or 16, 16)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    sections = args.only.split(",")
    start = time.perf_counter()
    report: dict[str, Any] = {"env": environment(args), "skipped": {}}
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="r1lite-gpu-check-") as tmp:
        work, shapes = Path(tmp), Path(tmp) / "models"
        if "profiles" in sections:
            report["profiles"] = []
            for profile in args.profiles.split(","):
                if left() < 60:
                    report["skipped"][profile] = "budget"
                    continue
                try:
                    report["profiles"].append(run_profile(profile, shapes, work, args))
                except Exception as e:  # an OOM under the card's cap is a finding, not the end of the check
                    report["profiles"].append({"profile": profile, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                    _free()
                print(json.dumps(report["profiles"][-1]), flush=True)
        if "tests" in sections:
            if left() > 60:
                report["tests"] = run_tests(timeout=max(60.0, left() - 60))
            else:
                report["skipped"]["tests"] = "budget"
        if "rollout" in sections:
            if left() > 90:
                report["rollout"] = run_rollout(args)
            else:
                report["skipped"]["rollout"] = "budget"
    report["seconds"] = round(time.perf_counter() - start, 1)
    out = args.out or (
        Path(tempfile.mkdtemp()) / "gpu-dry-run.json"
        if args.dry_run
        else ROOT / "bench" / "results" / f"gpu-{report['env']['date']}.json"
    )
    from r1lite.fileio import write_json

    write_json(out, report)
    if os.environ.get("OUT"):  # the device machine brings back what is under $OUT
        write_json(Path(os.environ["OUT"]) / out.name, report)
    print(table(report))
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()

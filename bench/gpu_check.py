"""Everything a GPU can tell us about r1lite, in one device call of at most 9 minutes (`make gpu-check`).

    python bench/gpu_check.py                        # on a GPU, offline: results under $OUT when it is set
    python bench/gpu_check.py --dry-run              # the same parts, order, budget and writes on CPU, tiny shapes
    python bench/gpu_check.py --only profiles --profiles gpu-24gb    # a part an earlier call had no time for

Parts, in this order. Each starts only while the time it needs remains of --budget-s, and the JSON is rewritten
(atomically) after every part, so a call cut off at its limit still returns every part that finished:

1. env: versions, `pip list` and `nvidia-smi`.
2. tests, within --tests-s: the CUDA variants of the tests (`pytest -m cuda`): engine greedy tokens equal
   `generate`'s (merged and unmerged, captured and eager), engine log-probs equal a fresh forward, the toy-reward
   learning tests raise the reward. Stopped at the limit with the outcomes so far.
3. rollout, within --rollout-s: `bench/rollout.py` on the Qwen2.5-3B shape, our engine captured and eager on the
   unmerged path (the 16 GB one), then merged beside stock TRL generation; the ratios say which compiled paths
   are proven (`r1lite.analyze.plan.COMPILE_PROVEN`).
4. one part per profile (PROFILES), each in a process of its own capped at its card's memory
   (`torch.cuda.set_per_process_memory_fraction`, the card less the plan's CUDA context): random weights in the
   profile's real shape at its real completion length (EOS never sampled in practice, so completions run full
   length) through r1lite's own stages: base eval, an SFT step, one GRPO step with a periodic eval. Per stage the
   peak allocated bytes (`max_memory_allocated`) beside the plan made for the same settings; whether it fits the
   card (peak allocated x the plan's allocator factor + the CUDA context measured in that process); the engine's
   merge and capture decisions beside the plan's; seconds per GRPO step beside the plan's for this GPU.

A part's need: the tests and the rollout their time limits; env and a profile their time in the CPU dry run
(DRY_RUN_S) times --scale (GPU_SCALE on a GPU, 1 in the dry run). A profile may run past its need, never past the
budget: its process is stopped there. Writes gpu-<date>.json (under $OUT when set, else --out or bench/results/)
and prints one table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from r1lite.fileio import write_json  # noqa: E402
from r1lite.plan.hardware import GIB  # noqa: E402

PROFILES = ("gpu-16gb", "gpu-24gb", "gpu-16gb-qwen2.5-3b")  # the consumer default on 16 and 24 GB; TinyZero's 3B
PARTS = ("env", "tests", "rollout", "profiles")
# Seconds a part took in the CPU dry run (2-core AMD EPYC, 2026-12-06, nothing else running: env 0.4 s, a profile
# 11-12 s in a process of its own, tiny shapes at 16 tokens). On a GPU they are scaled by GPU_SCALE: a profile runs
# the real shape at 1,024 tokens (three decodes of 1,024 steps, three loads of a 3B model, a 64-row GRPO step),
# ~240 s if the engine decodes at ~50 ms a step; an estimate until a GPU run's per-part seconds (in its JSON)
# replace it.
DRY_RUN_S = {"env": 1.0, "profile": 12.0}
GPU_SCALE = 20.0
# One H100 call of <= 9 min: 480 s of parts, beside the wheels' install and start-up (bench/NOTES.md).
GPU_DEFAULTS = dict(budget_s=480, tests_s=90, rollout_s=120, scale=GPU_SCALE)
TINY = dict(vocab=512, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)


# ----------------------------------------------------------------------------------------------
# The report: written after every part, within a budget
# ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    """The report being built, where it is written, and the budget every part must fit in."""

    path: Path
    budget_s: float
    report: dict[str, Any]
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.report["seconds"] = round(time.monotonic() - self.start, 1)
        write_json(self.path, self.report)  # atomic: a reader never sees half a file

    def part(self, name: str, need_s: float, run: Callable[[], Any], key: str | None = None) -> None:
        """Run `run` if `need_s` remains, store what it returns under `key` (appended for profiles), save."""
        if need_s > self.left():
            self.report["skipped"][name] = f"budget: needs {need_s:.0f} s, {max(self.left(), 0):.0f} s left"
            self.save()
            return
        start = time.monotonic()
        try:
            value = run()
        except Exception as e:  # a part that breaks is a finding; the parts after it still run
            value = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if key == "profiles":
            self.report.setdefault("profiles", []).append(value)
        else:
            self.report[key or name] = value
        self.report["parts"].append({"name": name, "seconds": round(time.monotonic() - start, 1)})
        self.save()
        print(f"part {name} done: {json.dumps(value, default=str)[:400]}", flush=True)


def output_path(args: argparse.Namespace, date: str) -> Path:
    """Under $OUT when set (what the device machine brings back), else --out, else bench/results (a temporary
    file in the dry run)."""
    name = args.out.name if args.out else f"gpu-{date}.json"
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / name
    if args.out:
        return args.out
    return Path(tempfile.mkdtemp()) / name if args.dry_run else ROOT / "bench" / "results" / name


def _run(command: list[str], limit_s: float) -> tuple[int | None, str]:
    """A command's exit code and output, stopped at `limit_s` (exit code None) with the output it had written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")  # bytes here, whatever `text` says
        return None, out.decode(errors="replace") if isinstance(out, bytes) else out
    return done.returncode, done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------
# 1. env, 2. tests, 3. rollout
# ----------------------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Versions, `pip list` and `nvidia-smi`, read without touching CUDA (a context here would sit beside every
    profile's process and count in its measurement)."""
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    _, pip = _run([sys.executable, "-m", "pip", "list", "--format=freeze"], 60)
    gpu = _tool(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    return {
        "date": datetime.date.today().isoformat(),
        "gpu": gpu.strip() if gpu and not args.dry_run else "cpu (dry run)",
        "python": sys.version.split()[0],
        "versions": versions,
        "command": " ".join(["gpu_check.py", *args.argv]),
        "pip_list": pip.strip().splitlines(),
        "nvidia_smi": _tool(["nvidia-smi"]) or "not available",
    }


def _tool(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_test_files() -> list[str]:
    """The test files with CUDA variants: only they are collected, which saves a minute of imports."""
    files = sorted((ROOT / "tests").glob("test_*.py"))
    return [str(f.relative_to(ROOT)) for f in files if "mark.cuda" in f.read_text(encoding="utf-8")]


def run_tests(limit_s: float) -> dict[str, Any]:
    """`pytest -m cuda` within `limit_s`: the outcome of every test that finished (on CPU all are skipped)."""
    files = cuda_test_files()
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", *files]
    code, out = _run(command, limit_s)
    outcomes = dict(re.findall(r"^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", out, re.M))
    result = {
        "command": "pytest -m cuda -v " + " ".join(files),
        "limit_s": round(limit_s),
        "exit_code": code,
        "timed_out": code is None,
        "counts": {k.lower(): v for k, v in Counter(outcomes.values()).items()},
        "failed": [test for test, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")],
    }
    if code not in (0, 5):  # 5: nothing collected
        result["tail"] = out[-1500:]
    return result


def run_rollout(args: argparse.Namespace, work: Path, limit_s: float) -> list[dict[str, Any]]:
    """`bench/rollout.py` in processes of its own, within `limit_s`: the unmerged path first (the 16 GB card's),
    then merged beside stock TRL generation."""
    case = ("tiny", 2, 2, 8) if args.dry_run else ("qwen2.5-3b", 8, 8, args.rollout_tokens)
    shape, prompts, generations, tokens = case
    deadline = time.monotonic() + limit_s
    results: list[dict[str, Any]] = []
    for merge, backends in (("unmerged", "engine,engine-eager"), ("merged", "engine,engine-eager,trl")):
        out = work / f"rollout-{merge}.json"
        command = [sys.executable, str(ROOT / "bench" / "rollout.py"), "--shape", shape, "--prompts", str(prompts)]
        command += ["--generations", str(generations), "--tokens", str(tokens), "--steps", "2", "--merge", merge]
        command += ["--backends", backends, "--out", str(out)]
        left = deadline - time.monotonic()
        code, text = _run(command, left) if left > 0 else (None, "")
        if out.is_file():
            results += [{**case, "merge": merge} for case in json.loads(out.read_text())]
        else:
            why = "rollout time limit" if code is None else f"exit {code}: {text[-300:]}"
            results.append({"merge": merge, "error": why})
    return results


# ----------------------------------------------------------------------------------------------
# 4. Profiles: each in a process of its own, under its card's memory
# ----------------------------------------------------------------------------------------------


def run_profile_part(profile: str, args: argparse.Namespace, work: Path, limit_s: float) -> dict[str, Any]:
    """The profile in a child process (this script with --profile-part), stopped at `limit_s`."""
    out = work / f"profile-{profile}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--profile-part", profile, "--part-out", str(out)]
    command += ["--work", str(work), "--steps", str(args.steps), "--tokens", str(args.tokens)]
    command += ["--dry-run"] if args.dry_run else []
    code, text = _run(command, limit_s)
    if out.is_file():
        return json.loads(out.read_text())
    why = f"stopped at the budget after {limit_s:.0f} s" if code is None else f"exit {code}: {text[-500:]}"
    return {"profile": profile, "error": why}


def judge_fit(peak_allocated: int, context: int, card_gib: float) -> bool:
    """A run fits its card when its peak allocated bytes, with the planner's allocator slack, and the CUDA context
    its process holds fit the card's memory (the rule `r1lite plan` applies to its own figures)."""
    from r1lite.plan.memory import ALLOCATOR_SLACK

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

    from r1lite.plan.memory import CUDA_CONTEXT_GIB

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
    from r1lite.orchestrate.pipeline import free_memory

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
    config_class = Qwen3Config if "qwen3" in name.lower() else Qwen2Config
    config = config_class(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.d,
        tie_word_embeddings=shape.tied,
        rope_theta=1e6,
        max_position_embeddings=32768,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.device("cpu" if dry_run else "cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dry_run else torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    _free()
    return folder


def profile_recipe(profile: str, model_dir: Path, work: Path, args: argparse.Namespace) -> Any:
    """The profile as a user runs it, at its completion length (or --tokens), cut to one batch of each stage."""
    from r1lite.recipe.load import load_recipe

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

        from r1lite.stages import evaluate as evaluate_stage
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


def measure_stages(recipe: Any, meter: Meter) -> tuple[dict[str, int | None], GRPOProbe, Path]:
    """Base eval, SFT and GRPO as `r1lite run` does them; the peak of each stage and GRPO phase."""
    from r1lite.stages import data, grpo, sft
    from r1lite.stages import evaluate as evaluate_stage

    data.run(recipe.data)
    root = Path(recipe.output_dir) / recipe.run_name
    measured: dict[str, int | None] = {}
    meter.reset()
    evaluate_stage.run(recipe, root, label="base")
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
    return {**measured, **probe.peaks}, probe, root


def run_profile(profile: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One profile through base eval, SFT and GRPO under its card's memory, measured beside the plan."""
    from r1lite.plan.hardware import card_for_profile
    from r1lite.plan.memory import CUDA_CONTEXT_GIB
    from r1lite.plan.planner import make_plan, shape_for
    from r1lite.plan.shapes import Shape
    from r1lite.recipe.load import load_recipe

    card = card_for_profile(profile)
    name = load_recipe("countdown", profile).model.name
    shape = Shape(**TINY) if args.dry_run else shape_for(name)
    model_dir = build_model(name, shape, work / "models" / name.replace("/", "_"), args.dry_run)
    recipe = profile_recipe(profile, model_dir, work / profile, args)
    meter, start = Meter(), time.perf_counter()
    out: dict[str, Any] = {"profile": profile, "card": card.name, "model": name}
    out["tokens"] = recipe.grpo.max_completion_length
    with capped(card) as cap_gib:
        measured, probe, root = measure_stages(recipe, meter)
    prompt = _longest_prompt(recipe, model_dir)
    plan = make_plan(recipe, card, prompt_tokens=prompt, verdicts=False)
    here = _this_gpu_card()
    timing = make_plan(recipe, here, prompt_tokens=prompt, verdicts=False) if here else None
    peaks = [v for v in measured.values() if v is not None]
    out["cap_gib"] = None if cap_gib is None else round(cap_gib, 2)
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
    out["peak_allocated_gib"] = round(max(peaks) / GIB, 3) if peaks else None
    out["cuda_context_gib"] = round(meter.context / GIB, 3) if meter.cuda else None
    out["planned_cuda_context_gib"] = CUDA_CONTEXT_GIB
    out["planned_peak_gib"] = round(plan.peak_gib, 2)
    out["fits_card"] = judge_fit(max(peaks), meter.context, card.gib) if peaks else None
    out.update(_decisions(root, plan))
    steady = probe.step_s[1:] or probe.step_s
    out["step_s"] = round(sum(steady) / max(len(steady), 1), 2)
    out["plan_step_s_this_gpu"] = None if timing is None or timing.step_seconds is None else round(timing.step_seconds)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _decisions(root: Path, plan: Any) -> dict[str, Any]:
    """The engine's merge and capture decisions for GRPO rollouts (from its logged metrics) beside the plan's."""
    from r1lite.fileio import read_jsonl

    logs = [r for r in read_jsonl(root / "grpo" / "metrics.jsonl") if "rollout_merged" in r]
    return {
        "merge": {"engine": bool(logs and logs[-1]["rollout_merged"]), "plan": plan.merge.get("grpo_rollout")},
        "compiled_decode": {
            "engine": bool(logs and logs[-1].get("rollout_compiled")),
            "plan": plan.compiled.get("grpo_rollout"),
        },
    }


def _longest_prompt(recipe: Any, model_dir: Path) -> int:
    from r1lite.stages import data
    from r1lite.train.models import load_tokenizer

    task = recipe.data.make_task()
    prompts = [task.render_prompt(e, recipe.data.prompt_format) for e in data.load_split(recipe.data, "train")[:64]]
    return max(len(ids) for ids in load_tokenizer(str(model_dir))(text=prompts)["input_ids"])


def _this_gpu_card() -> Any:
    """This GPU from the card table (for step-time plans), or None on CPU."""
    import torch

    from r1lite.plan.hardware import detected_card

    return detected_card() if torch.cuda.is_available() else None


def profile_child(args: argparse.Namespace) -> None:
    """--profile-part: one profile in this process; its result (or why it failed) to --part-out."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    try:
        result = run_profile(args.profile_part, args.work, args)
    except Exception as e:  # an OOM under the card's cap is a finding, not a crash
        oom = type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
        result = {"profile": args.profile_part, "error": f"{type(e).__name__}: {str(e)[:300]}", "oom": oom}
        result["fits_card"] = False if oom else None
    write_json(args.part_out, result)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    """The one table: a line per profile stage, then the tests, the rollout ratios and what was skipped."""
    env = report.get("env", {})
    lines = [f"r1lite GPU check — {env.get('gpu', '?')}, {env.get('date', '?')}"]
    lines.append(f"{'profile':<15} {'stage':<20} {'measured':>9} {'planned':>8} {'plan/meas':>9}  notes")
    for p in report.get("profiles", []):
        if "error" in p:
            lines.append(f"{p['profile']:<15} {'(failed)':<20} {p['error'][:90]}")
            continue
        notes = (
            f"fits {p['card']}: {p['fits_card']} (context {p['cuda_context_gib']} GiB); merged "
            f"{p['merge']['engine']} (plan {p['merge']['plan']}); captured {p['compiled_decode']['engine']}; "
            f"{p['step_s']} s/step (plan {p['plan_step_s_this_gpu']})"
        )
        for i, (stage, s) in enumerate(p["stages"].items()):
            measured = "-" if s["measured_gib"] is None else f"{s['measured_gib']:.2f}"
            ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
            lines.append(
                f"{p['profile'] if i == 0 else '':<15} {stage:<20} {measured:>9} {s['planned_gib']:>8.2f} {ratio:>9}"
                + (f"  {notes}" if i == 0 else "")
            )
    if "tests" in report:
        t = report["tests"]
        lines.append(f"tests (pytest -m cuda): {t.get('counts') or t.get('error')} {' '.join(t.get('failed', []))}")
    for case in report.get("rollout", []):
        if "results" not in case:
            lines.append(f"rollout {case.get('merge')}: {case.get('error')}")
            continue
        rates = {b: r["completion_tokens_per_s"] for b, r in case["results"].items()}
        lines.append(f"rollout {case['shape']} {case['batch']} {case['merge']}: tok/s {rates}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the same parts, budget and writes")
    p.add_argument("--budget-s", type=float, help="no part starts unless its need fits (default 480; dry run 1500)")
    p.add_argument("--only", default=",".join(PARTS), help="parts to run, comma-separated: " + ",".join(PARTS))
    p.add_argument("--profiles", default=",".join(PROFILES))
    p.add_argument("--tokens", type=int, default=0, help="completion tokens in the profile runs (0: the profile's)")
    p.add_argument("--steps", type=int, default=1, help="GRPO steps per profile")
    p.add_argument("--tests-s", type=float, help="time limit of the tests part (default 90; dry run 300)")
    p.add_argument("--rollout-s", type=float, help="time limit of the rollout part (default 120; dry run 300)")
    p.add_argument("--rollout-tokens", type=int, default=128)
    p.add_argument("--scale", type=float, help=f"dry-run seconds x this = a part's need (default {GPU_SCALE:g}; 1)")
    p.add_argument("--out", type=Path, help="default: $OUT/gpu-<date>.json, else bench/results/gpu-<date>.json")
    p.add_argument("--profile-part", help=argparse.SUPPRESS)  # internal: one profile, in a child process
    p.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.dry_run:
        args.tokens = min(args.tokens or 16, 16)
    defaults = dict(budget_s=1500, tests_s=300, rollout_s=300, scale=1.0) if args.dry_run else GPU_DEFAULTS
    for name, value in defaults.items():  # the dry run is slower on 2 cores, but its needs are measured there
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.profile_part:
        profile_child(args)
        return {}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    date = datetime.date.today().isoformat()
    budget = {"budget_s": args.budget_s, "scale": args.scale, "dry_run_s": DRY_RUN_S}
    check = Check(output_path(args, date), args.budget_s, {"budget": budget, "parts": [], "skipped": {}})
    sections = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="r1lite-gpu-check-") as tmp:
        work = Path(tmp)
        check.part("env", DRY_RUN_S["env"] * args.scale, lambda: environment(args))
        if "tests" in sections:
            check.part("tests", args.tests_s, lambda: run_tests(args.tests_s))
        if "rollout" in sections:
            check.part("rollout", args.rollout_s, lambda: run_rollout(args, work, args.rollout_s))
        for profile in args.profiles.split(",") if "profiles" in sections else []:
            run = lambda p=profile: run_profile_part(p, args, work, check.left())  # noqa: E731
            check.part(profile, DRY_RUN_S["profile"] * args.scale, run, key="profiles")
        check.report["finished"] = True
        check.save()
    print(table(check.report))
    print(f"written: {check.path}")
    return check.report


if __name__ == "__main__":
    main()

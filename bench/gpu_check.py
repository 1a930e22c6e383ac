"""Everything a GPU can tell us about r1lite, in one device call of at most 9 minutes (`make gpu-check`).

    python bench/gpu_check.py                        # on a GPU, offline: results under $OUT when it is set
    python bench/gpu_check.py --dry-run              # the same parts, order, budget and writes on CPU, tiny shapes
    python bench/gpu_check.py --only profiles --profiles gpu-24gb    # a part an earlier call had no time for

Parts, in this order. Each starts only while the time it needs remains of --budget-s, and the JSON is rewritten
(atomically) after every part and every piece of a part, so a call cut off at its limit still returns what finished:

1. env: versions, `pip list` and `nvidia-smi`.
2. tests, within --tests-s: the CUDA variants of the tests (`pytest -m "cuda and not slow"`), the engine's file
   first: its greedy tokens equal `generate`'s (merged and unmerged, captured and eager), its log-probs equal a
   fresh forward. Stopped at the limit with the outcomes so far.
3. rollout, within --rollout-s: `bench/rollout.py` on the consumer default's shape (Qwen3-1.7B-Base, random
   weights), each backend in a process of its own and written as it finishes: our engine eager, stock TRL
   generation, then our engine captured; the ratios say whether the captured path is proven
   (`r1lite.plan.memory.COMPILE_PROVEN`) and set the plan's decode model.
4. one part per profile (PROFILES, the consumer default first), each in a process of its own
   (`bench/gpu_profile.py`) capped at its card's memory: random weights in the profile's real shape through
   r1lite's own stages, each stage's peak beside the plan's, written after every stage.

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

PROFILES = ("gpu-16gb", "gpu-24gb", "gpu-16gb-qwen2.5-3b")  # the consumer default on 16 and 24 GB; TinyZero's 3B
PARTS = ("env", "tests", "rollout", "profiles")
# Seconds a part took in the CPU dry run (2-core AMD EPYC, 2026-12-06, nothing else running: env 0.4 s, a profile
# 11-12 s in a process of its own, tiny shapes at 16 tokens). On a GPU they are scaled by GPU_SCALE: a profile runs
# the real shape at 1,024 tokens (three decodes of 1,024 steps, three loads of a 3B model, a 64-row GRPO step),
# ~240 s if the engine decodes at ~50 ms a step; an estimate until a GPU run's per-part seconds (in its JSON)
# replace it.
DRY_RUN_S = {"env": 1.0, "profile": 12.0}
FIRST_PROFILE_MIN_S = 60.0  # the least the first profile starts on (it writes each stage as it ends)
GPU_SCALE = 20.0
# One H100 call of <= 9 min: 480 s of parts, beside the wheels' install and start-up (bench/NOTES.md).
GPU_DEFAULTS = dict(budget_s=480, tests_s=90, rollout_s=150, scale=GPU_SCALE)
ROLLOUT_BACKENDS = "engine-eager,trl,engine"  # eager first: the captured step compiles, and may not finish


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

    def part(
        self, name: str, need_s: float, run: Callable[[Callable[[Any], None]], Any], key: str | None = None
    ) -> None:
        """Run `run(saved)` if `need_s` remains and store what it returns under `key` (appended for profiles);
        `saved(partial)` stores a part's result so far and writes the JSON at once."""
        if need_s > self.left():
            self.report["skipped"][name] = f"budget: needs {need_s:.0f} s, {max(self.left(), 0):.0f} s left"
            self.save()
            return
        start, slot = time.monotonic(), None
        if key == "profiles":
            self.report.setdefault("profiles", []).append({"profile": name, "started": True})
            slot = len(self.report["profiles"]) - 1

        def store(value: Any) -> None:
            if slot is None:
                self.report[key or name] = value
            else:
                self.report["profiles"][slot] = value
            self.save()

        try:
            value = run(store)
        except Exception as e:  # a part that breaks is a finding; the parts after it still run
            value = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        self.report["parts"].append({"name": name, "seconds": round(time.monotonic() - start, 1)})
        store(value)
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


def _run(
    command: list[str], limit_s: float, watch: Path | None = None, on_change: Callable[[], None] | None = None
) -> tuple[int | None, str]:
    """A command's exit code and output, stopped at `limit_s` (exit code None) with the output it had written;
    `on_change()` each time the command rewrites `watch` (its JSON, so a part's pieces reach the report at once)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    deadline, seen = time.monotonic() + max(limit_s, 1), None
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        code: int | None = None
        while code is None and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=1)
            stamp = watch.stat().st_mtime_ns if watch is not None and watch.is_file() else None
            if on_change is not None and stamp is not None and stamp != seen:
                seen = stamp
                on_change()
        if code is None:
            process.kill()
            process.wait()
        log.seek(0)
        return code, log.read()


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
    """The test files with CUDA variants, the rollout engine's first (a limit reached later costs the least), then
    in name order: only they are collected, which saves a minute of imports."""
    files = sorted((ROOT / "tests").glob("test_*.py"), key=lambda f: (f.name != "test_rollout.py", f.name))
    return [str(f.relative_to(ROOT)) for f in files if "mark.cuda" in f.read_text(encoding="utf-8")]


def run_tests(limit_s: float) -> dict[str, Any]:
    """`pytest -m "cuda and not slow"` within `limit_s`: the outcome of every test that finished (on CPU all are
    skipped)."""
    files = cuda_test_files()
    command = [sys.executable, "-m", "pytest", "-m", "cuda and not slow", "-v", "-p", "no:cacheprovider", *files]
    code, out = _run(command, limit_s)
    outcomes = dict(re.findall(r"^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", out, re.M))
    result = {
        "command": 'pytest -m "cuda and not slow" -v ' + " ".join(files),
        "limit_s": round(limit_s),
        "exit_code": code,
        "timed_out": code is None,
        "counts": {k.lower(): v for k, v in Counter(outcomes.values()).items()},
        "failed": [test for test, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")],
    }
    if code not in (0, 5):  # 5: nothing collected
        result["tail"] = out[-1500:]
    return result


def run_rollout(args: argparse.Namespace, work: Path, limit_s: float, saved: Callable[[Any], None]) -> dict[str, Any]:
    """`bench/rollout.py` on the consumer default's shape, each backend in its own process, within `limit_s`;
    `saved(partial)` after each backend (the bench rewrites its JSON then; a watcher here hands it on)."""
    case = ("tiny", 2, 2, 8) if args.dry_run else ("qwen3-1.7b", 8, 8, args.rollout_tokens)
    shape, prompts, generations, tokens = case
    out = work / "rollout.json"
    command = [sys.executable, str(ROOT / "bench" / "rollout.py"), "--shape", shape, "--prompts", str(prompts)]
    command += ["--generations", str(generations), "--tokens", str(tokens), "--steps", "2", "--merge", "auto"]
    command += ["--backends", ROLLOUT_BACKENDS, "--out", str(out), "--backend-timeout", str(max(limit_s, 1))]
    command += ["--in-process"] if args.dry_run else []  # tiny shapes on CPU: three process starts cost more
    code, text = _run(command, limit_s, watch=out, on_change=lambda: saved(_read_case(out)))
    result = _read_case(out)
    if code is None:
        result["stopped"] = f"rollout time limit ({limit_s:.0f} s): backends not listed did not finish"
    elif code:
        result["error"] = f"exit {code}: {text[-300:]}"
    return result


def _read_case(path: Path) -> dict[str, Any]:
    cases = json.loads(path.read_text()) if path.is_file() else []
    return cases[0] if cases else {}


# ----------------------------------------------------------------------------------------------
# 4. Profiles: each in a process of its own, under its card's memory
# ----------------------------------------------------------------------------------------------


def run_profile_part(
    profile: str, args: argparse.Namespace, work: Path, limit_s: float, saved: Callable[[Any], None]
) -> dict[str, Any]:
    """The profile in a process of its own (`bench/gpu_profile.py`), stopped at `limit_s`; each stage it finishes
    reaches the report as it is written."""
    out = work / f"profile-{profile}.json"
    command = [sys.executable, str(ROOT / "bench" / "gpu_profile.py"), "--profile", profile, "--out", str(out)]
    command += ["--work", str(work), "--steps", str(args.steps), "--tokens", str(args.tokens)]
    command += ["--dry-run"] if args.dry_run else []
    code, text = _run(command, limit_s, watch=out, on_change=lambda: saved(json.loads(out.read_text())))
    result = json.loads(out.read_text()) if out.is_file() else {"profile": profile}
    if code is None:
        result["error"] = f"stopped at the budget after {limit_s:.0f} s" + (" (stages above finished)" * out.is_file())
    elif code and "error" not in result:
        result["error"] = f"exit {code}: {text[-500:]}"
    return result


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    """The one table: a line per profile stage, then the tests, the rollout ratios and what was skipped."""
    env = report.get("env", {})
    lines = [f"r1lite GPU check — {env.get('gpu', '?')}, {env.get('date', '?')}"]
    lines.append(f"{'profile':<15} {'stage':<20} {'measured':>9} {'planned':>8} {'plan/meas':>9}  notes")
    for p in report.get("profiles", []):
        if "error" in p and "stages" not in p:
            lines.append(f"{p['profile']:<15} {'(failed)':<20} {p['error'][:90]}")
            continue
        notes = f"fits {p['card']}: {p['fits_card']} (context {p['cuda_context_gib']} GiB)"
        if "merge" in p:  # GRPO finished
            notes += (
                f"; merged {p['merge']['engine']} (plan {p['merge']['plan']}); captured "
                f"{p['compiled_decode']['engine']}; {p['step_s']} s/step (plan {p['plan_step_s_this_gpu']})"
            )
        if "error" in p:
            notes += f"; stopped: {p['error'][:80]}"
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
    case = report.get("rollout") or {}
    if case:
        rates = {b: r.get("completion_tokens_per_s", r.get("error")) for b, r in case.get("results", {}).items()}
        lines.append(f"rollout {case.get('shape')} {case.get('batch')}: tok/s {rates}")
        lines += [f"rollout {note}: {case[note]}" for note in ("stopped", "error") if note in case]
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
    p.add_argument("--rollout-s", type=float, help="time limit of the rollout part (default 150; dry run 300)")
    p.add_argument("--rollout-tokens", type=int, default=128)
    p.add_argument("--scale", type=float, help=f"dry-run seconds x this = a part's need (default {GPU_SCALE:g}; 1)")
    p.add_argument("--out", type=Path, help="default: $OUT/gpu-<date>.json, else bench/results/gpu-<date>.json")
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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    date = datetime.date.today().isoformat()
    budget = {"budget_s": args.budget_s, "scale": args.scale, "dry_run_s": DRY_RUN_S}
    check = Check(output_path(args, date), args.budget_s, {"budget": budget, "parts": [], "skipped": {}})
    sections = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="r1lite-gpu-check-") as tmp:
        work = Path(tmp)
        check.part("env", DRY_RUN_S["env"] * args.scale, lambda saved: environment(args))
        if "tests" in sections:
            check.part("tests", args.tests_s, lambda saved: run_tests(args.tests_s))
        if "rollout" in sections:
            check.part("rollout", args.rollout_s, lambda saved: run_rollout(args, work, args.rollout_s, saved))
        for i, profile in enumerate(args.profiles.split(",") if "profiles" in sections else []):
            run = lambda saved, p=profile: run_profile_part(p, args, work, check.left(), saved)  # noqa: E731
            need = DRY_RUN_S["profile"] * args.scale
            # the first profile (the consumer default) starts on whatever is left above a minute: its stages reach
            # the JSON as each ends, so a profile cut at the budget still returns its eval and SFT peaks
            check.part(profile, min(need, FIRST_PROFILE_MIN_S) if i == 0 else need, run, key="profiles")
        check.report["finished"] = True
        check.save()
    print(table(check.report))
    print(f"written: {check.path}")
    return check.report


if __name__ == "__main__":
    main()

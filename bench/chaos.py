"""Chaos test: the tiny pipeline killed at random moments, continued each time with `r1lite run`.

    python bench/chaos.py                    # 20 kills (SIGTERM and SIGKILL) spread over every stage
    python bench/chaos.py --kills 3 --json   # the short version the test suite runs

An uninterrupted run of a tiny pipeline (a 2-layer model on a small task whose reward moves the
weights, `chaos_task.py`; a few SFT and GRPO steps, checkpoints every step) is the reference. Then, in
passes that each start from nothing, the same run is started again and again in its own process and
killed at a random moment of what is left of it (so every stage is hit in proportion to its length),
with SIGTERM (r1lite stops at a safe point) or SIGKILL (no warning at all); after a few kills a launch
is left to finish. Every file r1lite writes is written atomically and a checkpoint is used only if it
is complete, so every pass must end as the reference: the same SFT and GRPO adapters (equal tensors),
the same eval numbers, and each metrics line once. Prints kills, the stages they hit, and whether
every outcome was identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from r1lite.fileio import read_json, read_json_or_empty  # noqa: E402
from r1lite.runs.tracking import TIMING_METRICS  # noqa: E402

TIMING = TIMING_METRICS
PASS_KILLS = 6  # kills per pass before a launch is left to finish (a pass starts from nothing)


TASK = Path(__file__).resolve().parent / "chaos_task.py"  # a reward a random tiny model earns unevenly
RECIPE = """name: chaos
data: {{task: {task}, train_size: 48, test_size: 8, prompt_format: compact, dir: data/chaos}}
model: {{name: {model}, device: cpu, gradient_checkpointing: false}}
lora: {{r: 8, alpha: 16, dropout: 0.0}}
sft: {{completions: answers, examples: 32, batch_size: 4, max_length: 96, learning_rate: 1.0e-3, save_every: 1}}
grpo:
  max_steps: 6
  save_every: 1
  prompts_per_step: 2
  num_generations: 2
  micro_batch_size: 4
  max_completion_length: 16
  learning_rate: 1.0e-3
  rewards: [{{name: digit_share, weight: 1.0}}]
  eval_every: 0
eval: {{examples: 4, max_new_tokens: 16}}
tracking: {{wandb: disabled}}
"""


def command(recipe: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "r1lite", "run", str(recipe), f"--set=output_dir={out}"]


class Launch:
    """One `r1lite run` in its own process, its output read as it comes (to kill it once its stages begin)."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        quiet = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
        env = {**os.environ, **quiet}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.staged = threading.Event()  # set at its first `== stage ==` line (or when it ends)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if line.startswith("== "):
                self.staged.set()
        self.staged.set()

    def wait(self, timeout: float | None = None) -> str:
        """Its whole output once it has ended (subprocess.TimeoutExpired if it has not within `timeout`)."""
        self.proc.wait(timeout)
        self.reader.join()
        return "".join(self.lines)


def stage_of(output: str) -> str:
    """The stage a killed run was in: the last `== stage ==` line it printed (startup before any)."""
    stages = [line.strip("= \n") for line in output.splitlines() if line.startswith("== ")]
    return stages[-1] if stages else "startup"


def outcome(run: Path) -> dict[str, Any]:
    """What must match the reference: adapters, eval numbers, metrics lines (without timings)."""
    from safetensors.torch import load_file

    from r1lite.fileio import read_jsonl

    result: dict[str, Any] = {}
    for stage in ("sft", "grpo"):
        tensors = load_file(str(run / stage / "adapter" / "adapter_model.safetensors"))
        if not any(t.abs().sum() > 0 for n, t in tensors.items() if "lora_B" in n):
            raise SystemExit(f"the reference {stage} adapter did not move: comparing it would prove nothing")
        result[f"{stage}_adapter"] = {k: v.double().sum().item() for k, v in sorted(tensors.items())}
        result[f"{stage}_tensors"] = tensors
        rows = [r for r in read_jsonl(run / stage / "metrics.jsonl") if not any(k.startswith("train_") for k in r)]
        result[f"{stage}_metrics"] = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    for label in ("base", "warmup", "final"):
        summary = read_json(run / "eval" / f"{label}.json")  # without timings and the adapter's path (its run dir)
        result[f"eval_{label}"] = {k: v for k, v in summary.items() if k not in (*TIMING, "adapter")}
    return result


def identical(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The parts that differ, with the first difference of each (empty when the outcomes are the same)."""
    import torch

    differ = []
    for key in a:
        if key.endswith("_tensors"):
            if a[key].keys() != b[key].keys() or any(not torch.equal(a[key][n], b[key][n]) for n in a[key]):
                differ.append(key)
        elif a[key] != b[key]:
            differ.append(f"{key}: {str(_first_difference(a[key], b[key]))[:400]}")
    return differ


def _first_difference(a: Any, b: Any) -> Any:
    """Both values; for metrics lines, the steps each side logged and the fields of the first line that differs."""
    if not isinstance(a, list):
        return a, b
    steps = [r.get("step") for r in a], [r.get("step") for r in b]
    x, y = next(((x, y) for x, y in zip(a, b, strict=False) if x != y), ({}, {}))
    return steps, {k: (x.get(k), y.get(k)) for k in x if x.get(k) != y.get(k)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (to look at the runs)")
    args = p.parse_args(argv)
    from r1lite.train.tiny import build_tiny_model

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="r1lite-chaos-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_tiny_model(work / "model")
        recipe = work / "chaos.yaml"
        recipe.write_text(RECIPE.format(task=TASK, model=model))
        began = time.monotonic()
        reference_output = (reference := Launch(command(recipe, "reference"), work)).wait()
        if reference.proc.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed:\n{reference_output[-3000:]}")
        duration = time.monotonic() - began
        expected = outcome(work / "reference/chaos")
        stage_s = {k: v["seconds"] for k, v in read_json(work / "reference/chaos/stages.json").items()}
        hits: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        launches, passes, differ = 0, 0, []
        while sum(hits.values()) < args.kills:  # passes: from scratch, killed until a launch runs to its end
            passes += 1
            _reset(work / "chaos")
            for kill in range(PASS_KILLS + 1):
                launches += 1
                run = Launch(command(recipe, "chaos"), work)
                if kill < PASS_KILLS and sum(hits.values()) < args.kills:
                    how = _kill_somewhere(run, rng, stage_s, work / "chaos/chaos", timeout=max(120.0, 2 * duration))
                    if how is not None:
                        output = run.wait()
                        hits[stage_of(output)] += 1
                        codes[f"{signal.Signals(how).name} -> {run.proc.returncode}"] += 1
                        continue
                output = run.wait()  # this pass's last launch (or one that finished before its kill) ends it
                if run.proc.returncode != 0:
                    raise SystemExit(f"a continued run failed:\n{output[-3000:]}")
                differ += [f"pass {passes}: {part}" for part in identical(expected, outcome(work / "chaos/chaos"))]
                break
    report = {
        "kills": sum(hits.values()),
        "stages_hit": dict(hits),
        "exit_codes": dict(codes),
        "launches": launches,
        "passes": passes,
        "identical": not differ,
        "differ": differ,
        "reference_seconds": round(duration, 1),
    }
    print(json.dumps(report, indent=None if args.json else 1))
    return report


def _kill_somewhere(
    run: Launch, rng: random.Random, stage_s: dict[str, float], run_root: Path, timeout: float
) -> signal.Signals | None:
    """SIGTERM or SIGKILL at a moment in what is left of the run's stages (so each is hit in proportion to
    its length; now and then before the first); None when the run had finished its stages before it."""
    run.staged.wait(timeout)
    done = read_json_or_empty(run_root / "stages.json")
    left = sum(v for k, v in stage_s.items() if k not in done)
    time.sleep(max(rng.uniform(-0.1, 1.0) * max(left, 0.5), 0.0))
    if run.proc.poll() is not None or (run_root / "summary.json").exists():  # too late: nothing left to break
        return None
    how = rng.choice([signal.SIGTERM, signal.SIGKILL])
    run.proc.send_signal(how)
    try:
        run.proc.wait(timeout)
    except subprocess.TimeoutExpired:  # a SIGTERM that did not stop it in time is a failure
        run.proc.kill()
        raise SystemExit(f"SIGTERM did not stop the run within {timeout:.0f} s") from None
    return how


def _reset(run_root: Path) -> None:
    import shutil

    shutil.rmtree(run_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if main()["identical"] else 1)

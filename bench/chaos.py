"""Chaos test: the tiny pipeline killed at random moments, continued each time with `r1lite run`.

    python bench/chaos.py                    # 20 kills (SIGTERM and SIGKILL) spread over every stage
    python bench/chaos.py --kills 3 --json   # the short version the test suite runs

An uninterrupted run of the tiny pipeline (2-layer model, a few SFT and GRPO steps, checkpoints every
step) is the reference. Then the same run is started again and again in its own process and killed
at a random moment of its expected duration, with SIGTERM (r1lite stops at a safe point) or SIGKILL
(no warning at all), until `--kills` kills have landed; a last start runs it to the end. Every file
r1lite writes is written atomically and a checkpoint is used only if it is complete, so the end
must be the reference: the same SFT and GRPO adapters (equal tensors), the same eval numbers, and
each metrics line once. Prints kills, the stages they hit, and whether the outcome is identical.
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
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("elapsed_s", "step_time", "tokens_per_s", "rollout_tokens_per_s", "seconds")


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


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    quiet = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    env = {**os.environ, **quiet}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stage_of(output: str) -> str:
    """The stage a killed run was in: the last `== stage ==` line it printed (startup before any)."""
    stages = [line.strip("= \n") for line in output.splitlines() if line.startswith("== ")]
    return stages[-1] if stages else "startup"


def outcome(run: Path) -> dict[str, Any]:
    """What must match the reference: adapters, eval numbers, metrics lines (without timings)."""
    from safetensors.torch import load_file

    from r1lite.fileio import read_json, read_jsonl

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
    """The parts that differ (empty when the outcomes are the same)."""
    import torch

    differ = []
    for key in a:
        if key.endswith("_tensors"):
            if a[key].keys() != b[key].keys() or any(not torch.equal(a[key][n], b[key][n]) for n in a[key]):
                differ.append(key)
        elif a[key] != b[key]:
            differ.append(key)
    return differ


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (to look at the runs)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from r1lite.tiny import build_tiny_model

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="r1lite-chaos-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_tiny_model(work / "model")
        recipe = work / "chaos.yaml"
        recipe.write_text(RECIPE.format(task=TASK, model=model))
        began = time.monotonic()
        reference = start(command(recipe, "reference"), work)
        reference_output, _ = reference.communicate()
        if reference.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed:\n{reference_output[-3000:]}")
        duration = time.monotonic() - began
        hits: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        launches = 0
        while sum(hits.values()) < args.kills:
            launches += 1
            proc = start(command(recipe, "chaos"), work)
            time.sleep(rng.uniform(0.4, 1.0) * duration)  # the first ~40 % is Python starting up
            if proc.poll() is not None:  # it finished before the kill: start over from scratch for more kills
                proc.communicate()
                _reset(work / "chaos")
                continue
            how = rng.choice([signal.SIGTERM, signal.SIGKILL])
            proc.send_signal(how)
            try:
                output, _ = proc.communicate(timeout=max(120.0, 2 * duration))
            except subprocess.TimeoutExpired:  # a SIGTERM that did not stop it in time is a failure
                proc.kill()
                output, _ = proc.communicate()
                codes["hung"] += 1
            hits[stage_of(output)] += 1
            codes[f"{signal.Signals(how).name} -> {proc.returncode}"] += 1
        final = start(command(recipe, "chaos"), work)
        final_output, _ = final.communicate()
        if final.returncode != 0:
            raise SystemExit(f"the continued run failed:\n{final_output[-3000:]}")
        differ = identical(outcome(work / "reference/chaos"), outcome(work / "chaos/chaos"))
    report = {
        "kills": sum(hits.values()),
        "stages_hit": dict(hits),
        "exit_codes": dict(codes),
        "launches": launches + 1,
        "identical": not differ,
        "differ": differ,
        "reference_seconds": round(duration, 1),
    }
    print(json.dumps(report, indent=None if args.json else 1))
    return report


def _reset(run_root: Path) -> None:
    import shutil

    shutil.rmtree(run_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if main()["identical"] else 1)

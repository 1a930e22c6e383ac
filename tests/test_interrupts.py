"""Runs that survive (r1lite.runs.signals): a signal stops a stage at a step's end with a checkpoint, a rerun continues
it to the same weights and metrics as an uninterrupted run, a finished run can be extended, out-of-memory and NaN
stop with what to do, a damaged checkpoint is passed over, a full disk replaces no good file."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.fileio import read_json, read_jsonl
from r1lite.runs import failures, resume, signals
from r1lite.runs.tracking import TIMING_METRICS

runner = CliRunner()
TIMING = TIMING_METRICS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("int") / "m"))


@pytest.fixture(autouse=True)
def length_reward(monkeypatch):
    """A reward that differs between completions of a random tiny model, so every GRPO step moves the adapter
    (Countdown's rewards are 0 for all of them, and a test of exact resume must compare weights that moved)."""
    from r1lite.tasks import rewards

    monkeypatch.setitem(rewards._REGISTRY, "test_length", lambda text, ex: (len(text) / 100, "length"))


def overrides(tiny: str, out: str, *extra: str) -> list[str]:
    from test_pipeline import tiny_overrides  # the pipeline tests' tiny run

    sets = ["grpo.max_steps=4", "grpo.save_every=100", "sft.save_every=100", SIGNAL, "grpo.learning_rate=1e-3"]
    return [*tiny_overrides(tiny, f"output_dir={out}", *sets), *extra]


SIGNAL = 'grpo.rewards=[{"name": "test_length", "weight": 1.0}]'


def moved(root: Path, stage: str) -> bool:
    """The stage's adapter is not its initialisation (LoRA's B starts at zero)."""
    return any(t.abs().sum() > 0 for name, t in adapter(root, stage).items() if "lora_B" in name)


def run(sets: list[str], *flags: str):
    args = ["--quiet", "run", "countdown", "-p", "cpu", *flags, *[x for s in sets for x in ("--set", s)]]
    return runner.invoke(app, args)


def signal_at(monkeypatch, stage: str, step: int, signum: int = signal.SIGTERM) -> None:
    """Send this process `signum` at the end of `stage`'s step `step` (once), as a spot instance's notice would."""
    original, fired = signals.StopAtStepEnd.on_step_end, []

    def on_step_end(self, args, state, control, **kwargs):
        if f"/{stage}/" in args.output_dir and state.global_step == step and not fired:
            fired.append(step)
            os.kill(os.getpid(), signum)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(signals.StopAtStepEnd, "on_step_end", on_step_end)


def adapter(root: Path, stage: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(root / stage / "adapter" / "adapter_model.safetensors"))


def metrics(root: Path, stage: str) -> list[dict]:
    """Each logged step without its timings (the trainer's end-of-run summary covers only the last session)."""
    rows = [r for r in read_jsonl(root / stage / "metrics.jsonl") if not any(k.startswith("train_") for k in r)]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "step"), [("grpo", 2), ("sft", 1)])
def test_a_signal_stops_at_a_step_and_the_rerun_ends_exactly_as_an_uninterrupted_run(tiny, stage, step):
    two = "sft.grad_accum=1"  # two SFT steps of 8, so a stop after the first leaves one to train after the resume
    assert run(overrides(tiny, "whole", two)).exit_code == 0
    with pytest.MonkeyPatch.context() as patch:  # only this run gets the signal
        signal_at(patch, stage, step)
        stopped = run(overrides(tiny, "cut", two))
    assert stopped.exit_code == 143, stopped.output
    assert f"stopped by SIGTERM during {stage} after step {step}" in stopped.output
    assert "Run the same command again to continue" in stopped.output
    root, whole = Path("cut/countdown-cpu"), Path("whole/countdown-cpu")
    assert stage not in read_json(root / "stages.json")  # not recorded as done
    assert (root / stage / "trainer" / f"checkpoint-{step}" / "trainer_state.json").is_file()
    again = run(overrides(tiny, "cut", two))
    assert again.exit_code == 0, again.output
    assert f"continuing from checkpoint-{step}" in again.output
    assert moved(whole, "grpo")  # GRPO trained something, so equal adapters mean an exact resume
    for part in ("sft", "grpo"):
        ours, reference = adapter(root, part), adapter(whole, part)
        assert ours.keys() == reference.keys()
        for name in ours:
            torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0, msg=f"{part} {name}")
        assert metrics(root, part) == metrics(whole, part)  # each step once, none missing, the same numbers
    assert read_json(root / "eval/final.json")["accuracy"] == read_json(whole / "eval/final.json")["accuracy"]


class Killed(BaseException):
    """The process dying where it stands (SIGKILL, a lost instance): nothing in r1lite catches it."""


@pytest.mark.slow
def test_steps_logged_after_the_last_checkpoint_are_logged_once_when_a_killed_run_continues(tiny, monkeypatch):
    """Killed after step 3 was logged but with only checkpoint-2 on disk: the rerun trains step 3 again and logs
    it once, so metrics.jsonl is the uninterrupted run's."""
    from r1lite.runs.tracking import RunMonitor

    sets = ("sft.enabled=false", "grpo.save_every=2")
    assert run(overrides(tiny, "whole", *sets)).exit_code == 0
    log = RunMonitor.on_log

    def killed_after_step_3(self, args, state, control, logs=None, **kwargs):
        log(self, args, state, control, logs=logs, **kwargs)
        if "/grpo/" in args.output_dir and state.global_step == 3:
            raise Killed

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        patch.setattr(RunMonitor, "on_log", killed_after_step_3)
        run(overrides(tiny, "cut", *sets))
    root = Path("cut/countdown-cpu")
    assert 3 in {r["step"] for r in read_jsonl(root / "grpo/metrics.jsonl")}  # logged, but not checkpointed
    assert resume.last_good_checkpoint(root / "grpo/trainer").name == "checkpoint-2"
    again = run(overrides(tiny, "cut", *sets))
    assert again.exit_code == 0 and "continuing from checkpoint-2" in again.output, again.output
    assert metrics(root, "grpo") == metrics(Path("whole/countdown-cpu"), "grpo")  # step 3 once, none missing


@pytest.mark.slow
def test_raising_max_steps_extends_a_finished_run_from_its_last_step(tiny):
    constant = 'grpo.trl={"lr_scheduler_type": "constant"}'
    assert run(overrides(tiny, "four", constant)).exit_code == 0
    assert run(overrides(tiny, "two", constant, "grpo.max_steps=2")).exit_code == 0
    extended = run(overrides(tiny, "two", constant))  # max_steps 2 -> 4
    assert extended.exit_code == 0, extended.output
    assert "grpo: continuing from checkpoint-2" in extended.output
    root = Path("two/countdown-cpu")
    assert [r["step"] for r in read_jsonl(root / "grpo/metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    ours, reference = adapter(root, "grpo"), adapter(Path("four/countdown-cpu"), "grpo")
    for name in ours:  # a constant schedule: the extended run is the 4-step run
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0)
    assert moved(root, "grpo")
    restarted = run([*overrides(tiny, "two", constant), "grpo.learning_rate=2e-5"])  # a real change: start over
    assert "grpo: starting over (its settings changed)" in restarted.output
    four = adapter(Path("four/countdown-cpu"), "grpo")
    shorter = run(overrides(tiny, "four", constant, "grpo.max_steps=2"))  # fewer steps than were trained
    assert "grpo: starting over (no usable checkpoint)" in shorter.output
    two_steps = adapter(Path("four/countdown-cpu"), "grpo")
    assert not all(torch.equal(four[n], two_steps[n]) for n in four)  # not the 4-step adapter relabelled


def test_the_second_signal_stops_at_once(monkeypatch):
    with signals.graceful("grpo") as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # within DUPLICATE_S: the same stop forwarded (torch elastic), not a second
        assert stop.count == 1
        monkeypatch.setattr(signals, "DUPLICATE_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(signals.Interrupted) as stopped:
        stop.check("grpo", 7)
    assert stopped.value.exit_code == 143 and "after step 7" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


@pytest.mark.slow
def test_running_out_of_memory_keeps_the_checkpoint_and_auto_fit_continues(tiny, monkeypatch):
    """The settings named and saved are the real planner's (nothing stubbed but the card): they take 15 % off the
    planned peak of the stage that ran out (GRPO's, though the eval is the run's largest), and --auto-fit writes
    them into config.yaml and continues."""
    from r1lite.plan import hardware
    from r1lite.plan import planner as plan
    from r1lite.plan.hardware import Card
    from r1lite.recipe.load import load_recipe, read_yaml
    from r1lite.train.grpo_trainer import GRPOTrainer

    sets = overrides(tiny, "oom", "grpo.save_every=2", "sft.enabled=false")
    recipe = load_recipe("countdown", "cpu", sets)
    peak = plan.make_plan(recipe, Card("any", 80.0), verdicts=False).peak_gib
    card = Card("test card", peak * 1.2)  # the plan says the run fits it
    before = plan.make_plan(recipe, card, verdicts=False)
    assert plan.stage_peak_gib(before, "grpo") < before.peak_gib  # the eval is the peak: lowering it would not help
    monkeypatch.setattr(hardware, "detected_card", lambda vram_gib=None: card)
    generate, calls = GRPOTrainer._generate, []

    def oom_at_step_3(self, prompts):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return generate(self, prompts)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GRPOTrainer, "_generate", oom_at_step_3)
        result = run(sets)
    assert result.exit_code == 3, result.output
    root = Path("oom/countdown-cpu")
    assert (root / "grpo/trainer/checkpoint-2/trainer_state.json").is_file()
    fix = read_json(root / "oom.json")["settings"]
    assert fix and fix.get("grpo.micro_batch_size", 4) < 4, fix  # a smaller micro-batch: the training step's peak
    named = " ".join(f"--set {k}={v}" for k, v in fix.items())
    assert "out of GPU memory during grpo" in result.output and "the last checkpoint is kept" in result.output
    assert f"these fit with more room: {named} (or rerun with --auto-fit" in result.output
    fitted = load_recipe("countdown", "cpu", [*sets, *(f"{k}={v}" for k, v in fix.items())])
    assert plan.stage_peak_gib(plan.make_plan(fitted, card, verdicts=False), "grpo") <= 0.85 * plan.stage_peak_gib(
        before, "grpo"
    )  # what the plan promised

    args = ["run", "countdown", "-p", "cpu", "--auto-fit", *[x for s in sets for x in ("--set", s)]]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())  # unwrapped
    assert "--auto-fit after running out of memory: " + ", ".join(f"{k}={v}" for k, v in fix.items()) in said
    assert "continuing from checkpoint-2" in again.output and read_json(root / "stages.json")["grpo"]
    config = read_yaml(root / "config.yaml")  # the run records the settings it ran with
    for key, value in fix.items():
        section, name = key.split(".")
        assert config[section][name] == value, key
    assert config["grpo"]["micro_batch_size"] != recipe.grpo.micro_batch_size


@pytest.mark.slow
def test_nonfinite_updates_are_skipped_and_too_many_stop_the_stage(tiny, monkeypatch):
    from r1lite.train.grpo_trainer import GRPOTrainer

    compute, bad_steps = GRPOTrainer._compute_loss, {2}

    def poisoned(self, model, inputs):
        loss = compute(self, model, inputs)
        return loss * float("nan") if self.state.global_step + 1 in bad_steps else loss

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", poisoned)
    snapshots = {}
    original = resume.SaveAtEnd.on_step_end

    def snapshot(self, args, state, control, model=None, **kwargs):
        if "/grpo/" in args.output_dir:
            snapshots[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n}
        return original(self, args, state, control, model=model, **kwargs)

    monkeypatch.setattr(resume.SaveAtEnd, "on_step_end", snapshot)
    one_bad = run(overrides(tiny, "nan1", "sft.enabled=false"))
    assert one_bad.exit_code == 0, one_bad.output
    assert "grpo step 2: NaN or infinite gradients; this update is skipped" in one_bad.output
    assert all(torch.equal(snapshots[1][n], snapshots[2][n]) for n in snapshots[1])  # step 2 changed nothing
    assert not all(torch.equal(snapshots[2][n], snapshots[3][n]) for n in snapshots[2])  # step 3 trained again
    bad_steps.update({3, 4})
    limits = ("grpo.max_nonfinite=2", "grpo.save_every=1")
    stopped = run(overrides(tiny, "nan2", "sft.enabled=false", *limits))
    assert stopped.exit_code == 2, stopped.output
    assert "2 updates in a row had NaN or infinite gradients (first at step 2" in stopped.output
    assert "the last good checkpoint is kept" in stopped.output and "lower grpo.learning_rate" in stopped.output
    assert "grpo" not in read_json(Path("nan2/countdown-cpu/stages.json"))


def fake_checkpoint(path: Path, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file(weights, str(path / "adapter_model.safetensors"))
    torch.save({"state": {}}, path / "optimizer.pt")
    torch.save({}, path / "scheduler.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": int(path.name.split("-")[1])}))


def test_a_damaged_checkpoint_is_reported_and_the_one_before_it_used(tmp_path, capsys):
    weights = {"lora_A": torch.randn(64, 64)}
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path / f"checkpoint-{step}", weights)
    assert resume.last_good_checkpoint(tmp_path).name == "checkpoint-6"
    tensors = tmp_path / "checkpoint-6" / "adapter_model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])  # truncated
    (tmp_path / "checkpoint-4" / "optimizer.pt").unlink()  # an interrupted save
    assert resume.last_good_checkpoint(tmp_path).name == "checkpoint-2"
    said = capsys.readouterr()
    assert "checkpoint-6 is damaged (a file does not load" in said.out + said.err
    assert "checkpoint-4 is damaged (optimizer.pt is missing)" in said.out + said.err


def test_a_full_disk_stops_with_the_path_and_replaces_no_good_file(tmp_path, monkeypatch):
    from r1lite.fileio import write_json

    target = tmp_path / "summary.json"
    write_json(target, {"good": True})

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    why = r"could not write .*summary\.json: the disk is full \(\d+ MiB free"
    with pytest.raises(resume.R1liteError, match=why), failures.guard(None, "eval"):
        write_json(target, {"good": False})
    assert read_json(target) == {"good": True}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.slow
def test_chaos_short():
    """bench/chaos.py in short: the tiny pipeline killed 3 times (SIGTERM or SIGKILL), continued each time, ends
    with the adapters, evals and metrics of the uninterrupted run. The full bench (40 kills) is in docs/runs.md."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"
    spec = importlib.util.spec_from_file_location("bench_chaos", path)
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    report = chaos.main(["--kills", "3", "--seed", "2", "--json"])
    assert report["kills"] == 3 and report["identical"], report


def trained_steps(monkeypatch) -> dict[str, list[int]]:
    """The steps each stage trains from now on, by stage (every step end passes StopAtStepEnd)."""
    seen: dict[str, list[int]] = {}
    original = signals.StopAtStepEnd.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        seen.setdefault(Path(args.output_dir).parent.name, []).append(state.global_step)  # <run>/<stage>/trainer
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(signals.StopAtStepEnd, "on_step_end", on_step_end)
    return seen


@pytest.mark.slow
def test_the_time_budget_holds_across_a_stop_and_restart_starts_the_stage_over(tiny, monkeypatch):
    """grpo.max_minutes=1 on a clock where every GRPO step takes 25 s: training stops after the step that crosses
    60 s, counting the time spent before a stop (saved with each checkpoint); --restart trains from step 1 again."""
    from types import SimpleNamespace

    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(resume, "time", SimpleNamespace(monotonic=lambda: clock.now))
    budget_check = resume.TimeBudget.on_step_end

    def a_step_takes_25_s(self, args, state, control, **kwargs):
        clock.now += 25
        return budget_check(self, args, state, control, **kwargs)

    monkeypatch.setattr(resume.TimeBudget, "on_step_end", a_step_takes_25_s)
    steps = trained_steps(monkeypatch)
    sets = overrides(tiny, "budget", "sft.enabled=false", "grpo.max_steps=8", "grpo.max_minutes=1")
    root = Path("budget/countdown-cpu")

    with pytest.MonkeyPatch.context() as patch:  # 1. stopped after step 1: 25 s spent
        signal_at(patch, "grpo", 1)
        assert run(sets).exit_code == 143
    assert steps.pop("grpo") == [1]
    assert read_json(root / "grpo/trainer/checkpoint-1" / resume.TimeBudget.FILE) == {"spent_s": 25.0}

    with pytest.MonkeyPatch.context() as patch:  # 2. --restart: from step 1 again, not from checkpoint-1
        signal_at(patch, "grpo", 2)
        restarted = run(sets, "--restart")
    assert restarted.exit_code == 143, restarted.output
    assert "grpo: starting over (--restart)" in restarted.output and "continuing from" not in restarted.output
    assert steps.pop("grpo") == [1, 2]
    assert read_json(root / "grpo/trainer/checkpoint-2" / resume.TimeBudget.FILE) == {"spent_s": 50.0}

    # 3. continued: 50 s were spent before, so step 3 (75 s) is the last; a fresh budget would train to step 5
    args = ["run", "countdown", "-p", "cpu", *[x for s in sets for x in ("--set", s)]]
    continued = runner.invoke(app, args)  # not --quiet: the budget's line is a log line
    assert continued.exit_code == 0, continued.output
    assert "grpo: continuing from checkpoint-2" in continued.output
    assert "the 1-minute budget is spent; stopping after step 3" in continued.output
    assert steps.pop("grpo") == [3]
    assert [r["step"] for r in read_jsonl(root / "grpo/metrics.jsonl") if "loss" in r] == [1, 2, 3]
    assert read_json(root / "stages.json")["grpo"] and (root / "eval/final.json").is_file()  # the run finished


@pytest.mark.slow
def test_more_sft_steps_extend_a_finished_warm_up_and_more_examples_start_it_over(tiny, monkeypatch):
    """sft.max_steps 1 -> 2 continues from checkpoint-1 and ends as a 2-step warm-up does (a constant learning
    rate, so the schedules agree); more sft.examples is another dataset and starts over."""
    steps = trained_steps(monkeypatch)
    constant = 'sft.trl={"lr_scheduler_type": "constant"}'

    def sft(out: str, *extra: str):
        sets = overrides(tiny, out, "sft.grad_accum=1", constant, *extra)
        result = runner.invoke(
            app, ["--quiet", "sft", "countdown", "-p", "cpu", *[x for s in sets for x in ("--set", s)]]
        )
        assert result.exit_code == 0, result.output
        return result.output

    sft("two", "sft.max_steps=2")
    assert steps.pop("sft") == [1, 2]
    sft("one", "sft.max_steps=1")
    assert steps.pop("sft") == [1]
    extended = sft("one", "sft.max_steps=2")
    assert "sft: continuing from checkpoint-1" in extended and steps.pop("sft") == [2]
    one, two = Path("one/countdown-cpu"), Path("two/countdown-cpu")
    ours, reference = adapter(one, "sft"), adapter(two, "sft")
    assert ours.keys() == reference.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=0, msg=name)
    assert metrics(one, "sft") == metrics(two, "sft")  # steps 1 and 2, each once
    more = sft("one", "sft.max_steps=2", "sft.examples=24")
    assert "sft: starting over (its settings changed)" in more and steps.pop("sft") == [1, 2]
    assert [r["step"] for r in metrics(one, "sft") if "loss" in r] == [1, 2]


@pytest.mark.slow
def test_ctrl_c_stops_a_real_run_at_a_step_with_exit_code_130_and_one_line(tiny):
    """`r1lite run` in its own process, as a user runs it: Ctrl-C (SIGINT) during GRPO stops it at the end of the
    step with a checkpoint, exit code 130 and one line on stderr saying how to continue."""
    import re
    import subprocess
    import sys
    import threading

    from test_pipeline import tiny_overrides

    sets = tiny_overrides(tiny, "output_dir=cc", "sft.enabled=false", "grpo.max_steps=30", "grpo.save_every=100")
    command = [
        sys.executable,
        "-m",
        "r1lite",
        "run",
        "countdown",
        "-p",
        "cpu",
        *[x for s in sets for x in ("--set", s)],
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(300, process.kill)  # a run that never reaches GRPO fails the test, not the suite
    watchdog.start()
    try:
        lines = []
        for line in process.stdout:  # plain log lines (stdout is not a terminal)
            lines.append(line)
            if line.startswith("grpo step 1/30"):
                process.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail("the run ended before GRPO logged a step:\n" + "".join(lines)[-3000:])
        out, err = process.communicate(timeout=240)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, (process.returncode, out[-2000:], err[-2000:])
    said = [line for line in err.splitlines() if line.strip()]
    assert len(said) == 1, err  # one line, no traceback
    stopped = re.fullmatch(
        r"stopped by SIGINT during grpo after step (\d+); everything finished so far is saved\. Run the same command "
        r"again to continue from there \(--restart starts the stage over\)",
        said[0],
    )
    assert stopped, said[0]
    assert "warning: SIGINT: the run stops after the current step" in "".join(lines) + out  # said when it came
    root = Path("cc/countdown-cpu")
    step = int(stopped.group(1))
    assert 1 <= step < 30 and (root / f"grpo/trainer/checkpoint-{step}/trainer_state.json").is_file()
    assert "grpo" not in read_json(root / "stages.json")  # not recorded as done

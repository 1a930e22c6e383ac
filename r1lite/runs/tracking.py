"""Where metrics go: `metrics.jsonl` per stage, the terminal (live or plain), and W&B.

    >>> tracker = open_tracker(recipe, run_dir)                  # W&B run, or a no-op when disabled
    >>> monitor = RunMonitor("grpo", run_dir / "grpo", tracker, total_steps=200, rewards=reward_funcs)
    >>> trainer.add_callback(monitor)
    >>> tracker.finish()

W&B never prompts and never stops training: without a login, `online` falls back to `offline`
(files under `<run>/wandb/`, upload later with `wandb sync`), and any W&B error disables it for
the rest of the run with one warning. One W&B run per r1lite run (a stable id derived from the run
directory, resumed by later commands), metrics namespaced by stage (`grpo/reward`, `eval/final/accuracy`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from r1lite import ui
from r1lite.fileio import append_jsonl, fingerprint
from r1lite.train.diagnostics import CHECKS

# trainer log keys -> the stable names we record, show and plot
KEY_MAP = {
    "reward": "reward",
    "reward_std": "reward_std",
    "rewards/think_format/mean": "format_rate",
    "rewards/search_behaviour/mean": "search_rate",
    "rewards/self_check/mean": "self_check_rate",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "truncated_rate",  # cut at max_completion_length: scored 0 unless masked
    "kl": "kl",
    "learning_rate": "learning_rate",
    "loss": "loss",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "mean_token_accuracy": "token_accuracy",
    "rollout/tokens_per_s": "rollout_tokens_per_s",
    "rollout/rebuild_s": "rollout_rebuild_s",  # the merged copy and cache rebuilt before a rollout
    "r1lite/groups_no_signal": "groups_no_signal",
    "r1lite/dynamic_sampling/kept": "groups_kept",
    "r1lite/dynamic_sampling/discarded": "groups_discarded",
    "r1lite/dynamic_sampling/rounds": "sampling_rounds",
    "num_tokens": "num_tokens",
}


# Metrics that read the wall clock: a resumed or repeated run logs different values for them and the same for the rest
TIMING_METRICS = frozenset(
    {"elapsed_s", "step_time", "tokens_per_s", "rollout_tokens_per_s", "rollout_rebuild_s", "train_runtime",
     "train_samples_per_second", "train_steps_per_second", "seconds"}
)  # fmt: skip


def normalise(logs: dict[str, Any], correct_reward: str = "countdown_equation") -> dict[str, float]:
    """Numbers only, renamed to our stable metric names (unknown keys keep their name).

    The task's correctness reward (logged at weight 0 when not trained on) becomes `accuracy`.
    """
    names = {**KEY_MAP, f"rewards/{correct_reward}/mean": "accuracy"}
    out = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[names.get(key, key.replace("/", "_"))] = float(value)
    return out


# ----------------------------------------------------------------------------------------------
# W&B
# ----------------------------------------------------------------------------------------------


def _has_wandb_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class Tracker:
    """A W&B run, or nothing. Every call is safe: failures turn tracking off with one warning."""

    def __init__(self, run: Any = None) -> None:
        self.run = run
        self._defined: set[str] = set()

    @property
    def active(self) -> bool:
        return self.run is not None

    def _guard(self, action: str, fn: Any) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # W&B must never stop training
            ui.log(f"[yellow]W&B {action} failed ({type(e).__name__}: {e}); W&B logging is off for this run[/]")
            self.run = None

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        def go() -> None:
            if stage not in self._defined:
                self.run.define_metric(f"{stage}/step")
                self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
                self._defined.add(stage)
            self.run.log({f"{stage}/step": step, **{f"{stage}/{k}": v for k, v in metrics.items()}})

        self._guard("log", go)

    def table(self, stage: str, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        def go() -> None:
            import wandb

            self.run.log({f"{stage}/step": step, f"{stage}/{name}": wandb.Table(columns=columns, data=rows)})

        self._guard("table", go)

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(values))

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


def open_tracker(recipe: Any, run_dir: Path, mode: str | None = None) -> Tracker:
    """Start (or resume) the W&B run of this r1lite run in the recipe's mode."""
    mode = mode or recipe.tracking.wandb
    if mode == "disabled":
        return Tracker()
    try:
        import wandb
    except ImportError:
        ui.log("W&B is not installed; tracking disabled (pip install wandb)")
        return Tracker()
    if mode == "online" and not _has_wandb_login():
        ui.log("no W&B login found: logging offline; run `wandb login` and `wandb sync <run>/wandb` to upload")
        mode = "offline"
    run_dir.mkdir(parents=True, exist_ok=True)
    name = recipe.run_name
    run_id = re.sub(r"[^a-zA-Z0-9_-]", "-", name)[:48] + "-" + fingerprint(str(run_dir.resolve()))[:8]
    try:
        run = wandb.init(
            project=recipe.tracking.project,
            entity=recipe.tracking.entity,
            name=name,
            id=run_id,
            resume="allow",
            group=recipe.tracking.group or recipe.name,
            job_type=recipe.tracking.job_type or "r1lite-run",
            dir=str(run_dir),
            mode=mode,
            config=recipe.model_dump(mode="json"),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
    except Exception as e:
        ui.log(f"[yellow]W&B could not start ({type(e).__name__}: {e}); continuing without it[/]")
        return Tracker()
    return Tracker(run)


# ----------------------------------------------------------------------------------------------
# The trainer callback: files, terminal, W&B
# ----------------------------------------------------------------------------------------------


def gpu_memory_gib() -> float | None:
    try:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    except Exception:
        return None


def format_line(stage: str, step: int, total: int, m: dict[str, float], eta: float | None) -> str:
    """One plain log line: the numbers a person watches, in a fixed order."""
    parts = [f"{stage} step {step}/{total}"]
    if "reward" in m:
        parts.append(f"reward {m['reward']:.3f}±{m.get('reward_std', 0):.3f}")
    for key, label, fmt in [
        ("accuracy", "acc", ".1%"),
        ("format_rate", "format", ".1%"),
        ("completion_length", "len", ".0f"),
        ("truncated_rate", "cut", ".0%"),
        ("kl", "kl", ".4f"),
        ("loss", "loss", ".4f"),
        ("learning_rate", "lr", ".2e"),
        ("tokens_per_s", "tok/s", ".0f"),
        ("gpu_mem_gib", "mem GiB", ".1f"),
    ]:
        if key in m:
            parts.append(f"{label} {format(m[key], fmt)}")
    if eta is not None:
        parts.append(f"eta {eta:.0f}s")
    return " | ".join(parts)


class RunMonitor(TrainerCallback):
    """Appends each log to `<stage dir>/metrics.jsonl`, mirrors it to W&B, and shows it in the terminal.

    On a terminal: a live panel (progress bar with ETA, the latest metrics, the latest sampled
    completion with its reward reason). Elsewhere, or with --quiet: one plain line per log.
    """

    def __init__(
        self,
        stage: str,
        out: Path,
        tracker: Tracker | None,
        total_steps: int,
        rewards: list[Any] | None = None,
        sample_every: int = 10,
        diagnostics: Any = None,
        correct_reward: str = "countdown_equation",
    ) -> None:
        self.correct_reward = correct_reward
        self.stage, self.path, self.tracker = stage, Path(out) / "metrics.jsonl", tracker or Tracker()
        self.total, self.rewards, self.sample_every = total_steps, rewards or [], sample_every
        self.start = time.monotonic()
        self.last_tokens: tuple[float, float] | None = None
        self.latest: dict[str, float] = {}
        self._live: Any = None
        self._bar: Any = None
        self._step0 = 0
        self.diagnostics = diagnostics  # r1lite.train.diagnostics.Diagnostics, for GRPO

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.total = state.max_steps or self.total
        self.start = time.monotonic()
        self._step0 = state.global_step
        if ui.is_live() and state.is_world_process_zero:
            from rich.live import Live

            self._bar = ui.make_progress()
            self._task = self._bar.add_task(self.stage, total=self.total, completed=state.global_step, info="")
            self._live = Live(self._render(), console=ui.console, refresh_per_second=4, transient=False)
            self._live.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._live is not None:
            self._bar.update(self._task, completed=state.global_step)
            self._live.update(self._render())

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:  # logs are gathered already: one process writes them
            return
        m = normalise(logs, self.correct_reward)
        now = time.monotonic()
        if "num_tokens" in m:  # throughput over the interval since the previous log
            if self.last_tokens is not None and now > self.last_tokens[1]:
                m["tokens_per_s"] = (m["num_tokens"] - self.last_tokens[0]) / (now - self.last_tokens[1])
            self.last_tokens = (m["num_tokens"], now)
        mem = gpu_memory_gib()
        if mem is not None:
            m["gpu_mem_gib"] = mem
        step = state.global_step
        summary_line = any(k.startswith("train_") for k in m)  # the Trainer's end-of-run summary
        record: dict[str, Any] = {"stage": self.stage, "step": step, "elapsed_s": round(now - self.start, 2), **m}
        if self.diagnostics is not None and not summary_line:
            for finding in self.diagnostics.update(m):
                ui.warn(f"{self.stage} step {step}: {finding.message} [{finding.name}]")
            if self.diagnostics.active:
                record["diagnostics"] = dict(self.diagnostics.active)
            m = {**m, **{f"diagnostics/{name}": float(name in self.diagnostics.active) for name in CHECKS}}
        append_jsonl(self.path, record)
        self.tracker.log(self.stage, m, step)
        if not summary_line:
            self.latest = m
        sample = self._sample()
        if sample and step % self.sample_every == 0:
            self.tracker.table(
                self.stage,
                "completions",
                ["step", "problem", "completion", "reward", "reason"],
                [
                    [
                        step,
                        sample["problem"],
                        sample["completion"],
                        sample["reward"],
                        sample["reason"],
                    ]
                ],
                step,
            )
        if self._live is not None:
            self._live.update(self._render())
        elif self.latest is m:
            ui.log(format_line(self.stage, step, self.total, m, self._eta(state)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    # -- helpers -------------------------------------------------------------------------------
    def _eta(self, state: Any) -> float | None:
        done = state.global_step - self._step0
        if done <= 0:
            return None
        return (time.monotonic() - self.start) / done * (self.total - state.global_step)

    def _sample(self) -> dict[str, Any] | None:
        return next((r.last_sample for r in self.rewards if getattr(r, "last_sample", None)), None)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        row = format_line(self.stage, 0, 0, self.latest, None).split(" | ")[1:]
        for i in range(0, len(row), 4):
            table.add_row(*row[i : i + 4])
        parts: list[Any] = [self._bar, table]
        if self.diagnostics is not None and self.diagnostics.active:
            lines = "\n".join(f"[bold]{name}[/]: {msg}" for name, msg in self.diagnostics.active.items())
            parts.append(Panel(lines, title="diagnostics", title_align="left", border_style="yellow"))
        sample = self._sample()
        if sample:
            text = sample["completion"][-600:]
            title = f"latest sample: {sample['problem']}"
            subtitle = f"reward {sample['reward']:g}: {sample['reason']}"
            parts.append(Panel(text, title=title, subtitle=subtitle, title_align="left", subtitle_align="left"))
        return Group(*parts)


def quiet_library_output(trainer: Any) -> None:
    """Our monitor replaces the Trainer's own printer and progress bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

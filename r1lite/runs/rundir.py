"""A run directory: the one module that knows what `runs/<name>-<profile>/` holds and how to read it.

    >>> run = Run.of(recipe)                          # runs/countdown-cpu, for a recipe about to run
    >>> run = Run.open("runs/countdown-cpu")          # a folder a user named: one line when it is not a run
    >>> run.recipe(), run.state(), run.eval("final"), run.changes([("final", "warmup")], "sampled")

Layout: `config.yaml` (the resolved recipe), `hardware.json` (machine and versions), `stages.json` (each
finished stage's fingerprint, wall time and peak memory; written only when a stage finishes, so an
interrupted run never looks finished), `summary.json` (the run's result), `sft/` and `grpo/` (trainer
checkpoints, metrics.jsonl, adapter/), `eval/<label>.json` + `.jsonl` (an eval's summary and one row per
problem), `oom.json` (settings an out-of-memory stop left for --auto-fit), `report.md`, `report.html`, `plots/`.

A stage's fingerprint hashes the recipe sections it reads and its upstream stages' fingerprints: a stage whose
fingerprint is unchanged is skipped, and one another run beside it finished with the same fingerprint is
copied from there (the demo's warm-up serves `-p cpu-rl`).
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.fileio import atomic_dir, atomic_path, fingerprint, read_json_or_empty, read_jsonl, write_json, write_text
from r1lite.machine.precision import cpu_bf16, uses_cuda
from r1lite.recipe.config import Recipe
from r1lite.recipe.load import read_yaml, resolve, to_yaml
from r1lite.stats import paired_difference
from r1lite.tasks import Task
from r1lite.train.models import is_adapter

STAGES = ("data", "eval_base", "sft", "eval_warmup", "grpo", "eval_final")
EVALS = {"eval_base": "base", "eval_warmup": "warmup", "eval_final": "final"}  # eval stage -> its files' label
CHANGES = (("final", "base"), ("warmup", "base"), ("final", "warmup"))  # (after, before) pairs in the summary
SWEEP_MANIFEST = "sweep.json"  # marks a sweep's folder: its runs also copy stages from the runs beside it


def enabled_stages(recipe: Any) -> list[str]:
    """The stages this recipe runs, in order (the warm-up eval only when SFT and GRPO both run)."""
    on = {
        "sft": recipe.sft.enabled,
        "eval_warmup": recipe.sft.enabled and recipe.grpo.enabled,
        "grpo": recipe.grpo.enabled,
    }
    return [s for s in STAGES if on.get(s, True)]


def samples_base(recipe: Recipe) -> bool:
    """Whether the base eval takes `eval.pass_k` samples too: only where GRPO's or SFT's effect is judged against
    the base model. With a warm-up before GRPO, GRPO is judged against the warm-up, and sampling a base model
    that cannot yet answer costs as much as the evals that matter (5 minutes of the CPU demo-rl)."""
    return not (recipe.sft.enabled and recipe.grpo.enabled)


def fingerprints(recipe: Recipe) -> dict[str, str]:
    """Per stage: a hash of what it reads, chained through its upstream stages."""
    r = recipe.model_dump(mode="json")
    # `cpu_bf16: auto` means what it resolves to here: a warm-up trained in bf16 is not one trained in fp32
    r["model"]["cpu_bf16"] = cpu_bf16(recipe.model, uses_cuda(recipe.model))
    fp: dict[str, str] = {"data": fingerprint(r["data"])}
    base = {"data": fp["data"], "model": r["model"], "quantization": r["quantization"]}
    sampled = eval_reads(recipe, sampled=bool(recipe.eval.pass_k))
    fp["eval_base"] = fingerprint(
        {**base, "eval": eval_reads(recipe, bool(recipe.eval.pass_k) and samples_base(recipe))}
    )
    fp["sft"] = fingerprint({**base, "lora": r["lora"], "sft": r["sft"], "seed": r["seed"]})
    fp["eval_warmup"] = fingerprint({"trained": fp["sft"], "eval": sampled})
    sft = fp["sft"] if recipe.sft.enabled else None
    fp["grpo"] = fingerprint({**base, "sft": sft, "lora": r["lora"], "grpo": r["grpo"], "seed": r["seed"]})
    last = fp["grpo"] if recipe.grpo.enabled else fp["sft"] if recipe.sft.enabled else fp["eval_base"]
    fp["eval_final"] = fingerprint({"trained": last, "eval": sampled})
    return fp


def eval_reads(recipe: Recipe, sampled: bool) -> dict[str, Any]:
    """What an eval's results depend on: the eval settings it uses (k and the temperature only when it samples; not
    the declared metric, which changes what is claimed, not what is computed) and the backend that generates. So
    `make demo`'s greedy base eval serves `-p cpu-rl`, whose base eval is greedy too."""
    e = recipe.eval.model_dump(mode="json", exclude={"metric"} | (set() if sampled else {"pass_k", "temperature"}))
    return {**e, "backend": recipe.grpo.rollout, "merge": recipe.grpo.rollout_merge}


def problem_score(row: dict[str, Any], metric: str = "greedy") -> float:
    """One eval row's score under a metric: its greedy answer's correctness, or its samples' mean (avg@k)."""
    if metric == "sampled":
        return statistics.fmean(float(s["correct"]) for s in row["samples"])
    return float(row["correct"])


@dataclass(frozen=True)
class Run:
    root: Path

    @classmethod
    def of(cls, recipe: Recipe) -> Run:
        return cls(Path(recipe.output_dir) / recipe.run_name)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """A run directory a user named, or one line saying it is not one."""
        run = cls(Path(path))
        if not run.root.is_dir():
            raise R1liteError(f"run directory {path} does not exist; `r1lite runs list` shows the runs")
        if not run.config_file.is_file():
            raise R1liteError(f"{path} is not an r1lite run directory (no config.yaml); see `r1lite runs list`")
        return run

    # -- where things are ---------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def hardware_file(self) -> Path:
        return self.root / "hardware.json"

    @property
    def state_file(self) -> Path:
        return self.root / "stages.json"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    @property
    def oom_file(self) -> Path:
        return self.root / "oom.json"

    def oom_settings(self) -> dict[str, Any]:
        """The settings an out-of-memory stop of this run said fit (for --auto-fit; none otherwise)."""
        return read_json_or_empty(self.oom_file).get("settings", {})

    def stage_dir(self, stage: str) -> Path:
        """A training stage's folder (sft, grpo): its trainer checkpoints, metrics.jsonl and adapter."""
        return self.root / stage

    def adapter(self, stage: str) -> Path:
        return self.stage_dir(stage) / "adapter"

    def metrics_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / "metrics.jsonl"

    def metrics(self, stage: str) -> list[dict[str, Any]]:
        """A training stage's logged lines (`<stage>/metrics.jsonl`), in order; none before it logged."""
        path = self.metrics_file(stage)
        return read_jsonl(path) if path.is_file() else []

    def series(self, stage: str, key: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric, in logged order (a resumed run keeps its repeated steps)."""
        rows = [r for r in self.metrics(stage) if key in r]
        return [r["step"] for r in rows], [float(r[key]) for r in rows]

    def trained_steps(self, stage: str) -> int:
        """Optimizer steps the stage logged (its last line's step: TRL logs the end of training at the last one)."""
        return max((int(r["step"]) for r in self.metrics(stage) if "step" in r), default=0)

    def mean_completion_length(self) -> tuple[int, str] | None:
        """The mean completion length its GRPO stage logged (TRL's completions/mean_length) with where it comes from,
        for `r1lite plan` to time a run at; None before GRPO logged a step."""
        _, lengths = self.series("grpo", "completion_length")
        if not lengths:
            return None
        mean = round(sum(lengths) / len(lengths))
        return mean, f"measured: mean over {len(lengths)} logged GRPO steps of {self.root}"

    def eval_file(self, label: str, rows: bool = False) -> Path:
        """An eval's summary (`eval/<label>.json`) or its rows, one per problem (`.jsonl`)."""
        return self.root / "eval" / f"{label}.{'jsonl' if rows else 'json'}"

    def artifacts(self, stage: str) -> list[Path]:
        """What a finished stage leaves here (copied when another run finished the same stage)."""
        if stage in EVALS:
            return [self.eval_file(EVALS[stage]), self.eval_file(EVALS[stage], rows=True)]
        if stage in ("sft", "grpo"):
            return [self.adapter(stage), self.metrics_file(stage)]
        return []

    # -- the recipe ---------------------------------------------------------------------------------------------
    def write_config(self, recipe: Recipe) -> None:
        write_text(self.config_file, to_yaml(recipe))

    def recipe(self) -> Recipe:
        """The run's config.yaml, resolved as the run resolved it."""
        return resolve(read_yaml(self.config_file), None, [], str(self.config_file))

    def enabled_stages(self) -> list[str]:
        """The stages the run's own recipe runs. A config.yaml that no longer validates (a task file moved, a key
        renamed since) is read for the two switches that decide it, so an old run still lists with its progress."""
        try:
            return enabled_stages(self.recipe())
        except R1liteError:
            try:
                raw = read_yaml(self.config_file)
            except R1liteError:
                raw = {}
            on = {k: raw[k].get("enabled", True) if isinstance(raw.get(k), dict) else True for k in ("sft", "grpo")}
            return enabled_stages(SimpleNamespace(**{k: SimpleNamespace(enabled=bool(v)) for k, v in on.items()}))

    def trained_adapter(self, recipe: Recipe | None = None) -> Path | None:
        """The run's model: the adapter of the last training stage its recipe runs that has written one, else of
        the last that has (a stage run on its own, `r1lite sft`, under a profile that turns SFT off)."""
        recipe = recipe or self.recipe()
        written = [s for s in ("grpo", "sft") if is_adapter(self.adapter(s))]
        ran = [s for s in written if getattr(recipe, s).enabled]
        return self.adapter((ran or written)[0]) if written else None

    @cached_property
    def task(self) -> Task | None:
        """The run's task (None when its config.yaml no longer loads: a task file moved, a key renamed)."""
        try:
            return self.recipe().data.make_task()
        except (R1liteError, OSError):
            return None

    # -- stage records ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return read_json_or_empty(self.state_file)

    def record(self, state: dict[str, Any]) -> None:
        write_json(self.state_file, state)

    def done(self, stage: str, fp: str, state: dict[str, Any] | None = None) -> bool:
        """Recorded with fingerprint `fp`, and its output (an eval's summary, a stage's adapter) is still here."""
        state = self.state() if state is None else state
        return state.get(stage, {}).get("fingerprint") == fp and all(p.exists() for p in self.artifacts(stage)[:1])

    def finished(self, recipe: Recipe) -> bool:
        """The summary exists and every stage the recipe runs is recorded with its current fingerprint."""
        if not self.summary_file.is_file():
            return False
        state, fps = self.state(), fingerprints(recipe)
        return all(state.get(s, {}).get("fingerprint") == fps[s] for s in enabled_stages(recipe) if s != "data")

    def neighbours(self) -> Iterator[Run]:
        """The runs beside this one (for a sweep's run, also those beside the sweep's folder: `make demo-rl`
        reuses the demo's warm-up)."""
        folders = [self.root.parent]
        if (self.root.parent / SWEEP_MANIFEST).is_file():
            folders.append(self.root.parent.parent)
        for folder in folders:
            for path in sorted(folder.glob("*/stages.json")):
                if path.parent != self.root:
                    yield Run(path.parent)

    def reuse(self, stage: str, fp: str) -> dict[str, Any] | None:
        """Copy `stage`'s outputs from a neighbour that finished it with fingerprint `fp`; its record, or None.

        The fingerprint covers everything the stage read (its recipe sections and, through them, its upstream
        stages), so the copy is what running it here would make.
        """
        for other in self.neighbours():
            record = other.state().get(stage, {})
            if not other.artifacts(stage) or not other.done(stage, fp):
                continue
            if not all(p.exists() for p in other.artifacts(stage)):
                continue
            for source, target in zip(other.artifacts(stage), self.artifacts(stage), strict=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    with atomic_dir(target) as tmp:
                        shutil.copytree(source, tmp, dirs_exist_ok=True)
                else:
                    with atomic_path(target) as tmp:
                        shutil.copyfile(source, tmp)
            ui.say(f"{stage}: {other.root} finished it with the same settings; copied its outputs")
            return {**record, "seconds": 0.0, "reused_from": str(other.root)}
        return None

    # -- evals and what changed ---------------------------------------------------------------------------------
    def eval(self, label: str) -> dict[str, Any]:
        """An eval's summary ({} when it has not run)."""
        return read_json_or_empty(self.eval_file(label))

    def eval_rows(self, label: str) -> list[dict[str, Any]]:
        path = self.eval_file(label, rows=True)
        return read_jsonl(path) if path.is_file() else []

    def paired_rows(self, before: str = "base", after: str = "final") -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(before, after) rows of the same held-out problems; evals score the test split's first problems in order.

        A shorter file pairs with the other's first rows; rows that name different problems (by the task's `key`)
        mean one eval was rerun on other data, and no comparison is better than a wrong one. A run whose recipe no
        longer loads pairs its rows unchecked.
        """
        pairs = list(zip(self.eval_rows(before), self.eval_rows(after), strict=False))
        task = self.task
        for i, (first, second) in enumerate(pairs):
            if _problem_key(first, task) != _problem_key(second, task):
                raise R1liteError(
                    f"{self.root}/eval: {before}.jsonl and {after}.jsonl name different problems at row {i + 1}; "
                    f"rerun both with the run's recipe: `r1lite eval --label base`, `r1lite eval --adapter "
                    f"{self.adapter('grpo')} --label final`"
                )
        return pairs

    def changes(self, pairs: Any = CHANGES, metric: str = "greedy") -> dict[str, dict[str, float]]:
        """Change of each (after, before) pair of evals on the same problems, with a paired 95 % interval: of
        greedy accuracy, or of avg@k (`metric="sampled"`, for the pairs whose evals both sampled)."""
        out = {}
        for after, before in pairs:
            rows = self.paired_rows(before, after)
            if rows and (metric == "greedy" or all(b.get("samples") and a.get("samples") for b, a in rows)):
                ci = paired_difference(
                    [problem_score(b, metric) for b, _ in rows], [problem_score(a, metric) for _, a in rows]
                )
                out[f"{after}_vs_{before}"] = ci.as_dict()
        return out

    # -- the result ---------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return read_json_or_empty(self.summary_file)

    def run_changes(self) -> dict[str, dict[str, float]]:
        """The paired accuracy changes of summary.json, or computed from the evals' rows for a run older than them."""
        summary = self.summary()
        if "changes" in summary:
            return summary["changes"]
        return self.changes([p for p in CHANGES if all(self.eval_file(label, rows=True).is_file() for label in p)])

    def progress(self) -> dict[str, Any]:
        """How far the run got (of the stages its recipe runs) and its final numbers: one line of `runs list`."""
        stages, enabled = self.state(), self.enabled_stages()
        final, base = self.eval("final"), self.eval("base")
        return {
            "name": self.name,
            "path": str(self.root),
            "stages_done": sum(s in stages for s in enabled),
            "stages_total": len(enabled),
            "base_accuracy": base.get("accuracy"),
            "final_accuracy": final.get("accuracy"),
            "final_format_rate": final.get("format_rate"),
            "wall_seconds": sum(v["seconds"] for v in stages.values()),
        }


def of_row(task: Task | None, method: str, row: dict[str, Any]) -> Any:
    """The task's `label` or `key` of an eval row, or None where the task's method cannot read the row (a row
    keeps the example's public fields only; a task's own code may need others)."""
    try:
        return getattr(task, method)(row) if task is not None else None
    except Exception:  # a task file's code: whatever it raises, the row's own fields below still decide
        return None


def _problem_key(row: dict[str, Any], task: Task | None) -> tuple[Any, ...]:
    """What names an eval row's problem: its own fields (in order: the prompt depends on it) and the task's key."""
    return row.get("nums"), row.get("target"), row.get("question"), of_row(task, "key", row)


def list_runs(folder: Path) -> list[Run]:
    """Every run directory in `folder`, by name."""
    return [run for run in map(Run, sorted(Path(folder).glob("*"))) if run.config_file.is_file()]

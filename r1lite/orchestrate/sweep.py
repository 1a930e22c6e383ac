"""Sweeps: a grid of settings x seeds as ordinary runs (its report: r1lite.analyze.sweep_report).

    >>> sweep = Sweep.from_args("countdown", "cpu", ["grpo.learning_rate=1e-5,5e-5"], seeds=2, name="lr")
    >>> sweep.runs()             # 4 runs: runs/lr/learning_rate-1e-05-s42/, ...-s43/, learning_rate-5e-05-s42/, ...
    >>> launch(sweep, parallel=2)  # each run is `r1lite run` in its own process; finished ones are skipped
    >>> Sweep.from_args("countdown", "cpu-rl", [], seeds=2, control=True)   # each config with its control arm

A sweep is many ordinary runs in one output folder, `runs/<sweep>/<config>-s<seed>/`, each one the
recipe with its `--set` overrides: a run continues where it stopped and skips what it finished
(r1lite.orchestrate.pipeline), and the pipeline copies a stage another run of the folder already finished with
the same settings, so the data is prepared once and each distinct SFT warm-up trains once (the sweep
starts one run per warm-up first). Seeds vary the training seed (`seed`: data order, LoRA
initialisation, SFT shuffling, rollout sampling), never the problems, so every config is evaluated
on the same held-out problems and differences can be paired. `control` adds a control arm to every
config (`grpo.reward_control: shuffle`: the same GRPO on each step's rewards shuffled), and the report
pairs each config with its control: a gain over it is what the reward itself taught.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.analyze.sweep_report import ARMS, CONTROL_KEY
from r1lite.errors import RecipeError
from r1lite.fileio import read_json_or_empty, write_json
from r1lite.machine.precision import fit_precision
from r1lite.plan import hardware
from r1lite.plan.hardware import card_for_profile
from r1lite.plan.planner import make_plan
from r1lite.recipe.load import load_recipe, read_yaml
from r1lite.runs.rundir import SWEEP_MANIFEST as MANIFEST
from r1lite.runs.rundir import Run, fingerprints
from r1lite.stages import data


@dataclass(frozen=True)
class SweepRun:
    config: str  # e.g. "learning_rate-1e-05"
    seed: int
    sets: tuple[str, ...]  # every --set of this run, the sweep's own included

    @property
    def name(self) -> str:
        return f"{self.config}-s{self.seed}"


@dataclass
class Sweep:
    name: str
    recipe: str
    profile: str | None
    vary: dict[str, list[str]]  # key -> values, in the grid's order
    seeds: list[int]
    sets: list[str] = field(default_factory=list)  # overrides every run shares
    output_dir: str = "runs"

    # -- building a sweep ----------------------------------------------------------------------
    @classmethod
    def from_args(
        cls,
        recipe: str,
        profile: str | None,
        vary: list[str],
        seeds: int,
        name: str | None = None,
        sets: list[str] | None = None,
        control: bool = False,
    ) -> Sweep:
        """From the command line: `--vary key=v1,v2` (repeatable), `--seeds N` (the recipe's seed and the next),
        `--control` (every config also as its shuffled-reward control arm)."""
        grid: dict[str, list[str]] = {}
        for item in vary:
            key, sep, values = item.partition("=")
            if not sep or not values.strip():
                raise RecipeError(f"--vary '{item}' needs the form key=value1,value2 (grpo.learning_rate=1e-5,5e-5)")
            grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
        if control:
            if CONTROL_KEY in grid:
                raise RecipeError(f"--control adds {CONTROL_KEY}={','.join(ARMS)} itself; drop it from --vary")
            grid[CONTROL_KEY] = list(ARMS)
        base = load_recipe(recipe, profile, sets or [])
        if seeds < 1:
            raise RecipeError("--seeds must be at least 1")
        sweep = cls(
            name or _default_name(base.name, grid),
            recipe,
            profile,
            grid,
            [base.seed + i for i in range(seeds)],
            list(sets or []),
            base.output_dir,
        )
        sweep.check()
        return sweep

    @classmethod
    def from_file(cls, path: Path, name: str | None = None, seeds: int | None = None) -> Sweep:
        """A sweep file (recipes/sweeps/*.yaml): recipe, profile, vary {key: [values]}, seeds, optional set and
        control; `seeds` (the command line's) overrides the file's."""
        raw = read_yaml(path)
        unknown = set(raw) - {"name", "recipe", "profile", "vary", "seeds", "set", "description", "control"}
        if unknown:
            raise RecipeError(f"{path}: unknown key(s) {sorted(unknown)}; a sweep has recipe, profile, vary, seeds")
        if "recipe" not in raw or not isinstance(raw.get("vary", {}), dict):
            raise RecipeError(f"{path}: a sweep needs `recipe:` and `vary:` (a mapping of key to a list of values)")
        if "vary" not in raw and not raw.get("control"):
            raise RecipeError(
                f"{path}: a sweep needs `vary:` (a mapping of key to a list of values) or `control: true`"
            )
        values = {k: vs if isinstance(vs, list) else [vs] for k, vs in raw.get("vary", {}).items()}
        vary = [f"{k}={','.join(str(v) for v in vs)}" for k, vs in values.items()]
        return cls.from_args(
            str(raw["recipe"]),
            raw.get("profile"),
            vary,
            seeds if seeds is not None else int(raw.get("seeds", 1)),
            name or raw.get("name") or path.stem,
            [str(s) for s in raw.get("set", [])],
            control=bool(raw.get("control", False)),
        )

    def check(self) -> None:
        """Every run's recipe resolves (a typo in --vary fails here, before any work, with the closest key)."""
        for run in self.runs():
            if self.recipe_of(run).tracking.push_to_hub:
                raise RecipeError(
                    "tracking.push_to_hub would push every run of a sweep to the same branches of one repo; "
                    "leave it unset and share a run with `r1lite export RUN --push-to-hub REPO`"
                )

    # -- the grid --------------------------------------------------------------------------------
    def configs(self) -> list[tuple[str, tuple[str, ...]]]:
        """(config name, its --set overrides) for every point of the grid."""
        keys = list(self.vary)
        out = []
        for values in itertools.product(*(self.vary[k] for k in keys)) if keys else [()]:
            label = "_".join(f"{k.split('.')[-1]}-{_slug(v)}" for k, v in zip(keys, values, strict=True)) or "base"
            out.append((label, tuple(f"{k}={v}" for k, v in zip(keys, values, strict=True))))
        return out

    def runs(self) -> list[SweepRun]:
        return [
            SweepRun(config, seed, (*self.sets, *overrides, f"seed={seed}"))
            for config, overrides in self.configs()
            for seed in self.seeds
        ]

    @property
    def root(self) -> Path:
        return Path(self.output_dir) / self.name

    def recipe_of(self, run: SweepRun) -> Any:
        """The run's recipe as `r1lite run` resolves it on this machine (fp16 on a card without bf16)."""
        return fit_precision(load_recipe(self.recipe, self.profile, self.run_sets(run)), _hardware(hardware.probe))

    def run_sets(self, run: SweepRun) -> list[str]:
        """The run's overrides plus where it lives and how W&B groups it (the sweep; the config as job type). With a
        control arm, no time guard: a clock that stopped one arm could stop its pair at another step."""
        paired = ["grpo.max_minutes=0"] if CONTROL_KEY in self.vary else []
        return [
            *run.sets,
            *paired,
            f"output_dir={self.root}",
            f"run={run.name}",
            f"tracking.group={self.name}",
            f"tracking.job_type={run.config}",
        ]

    def manifest(self, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the report reads; the runs of an `earlier` manifest of the same grid stay in it, so a sweep run
        in parts (one seed now, another later) reports every seed."""
        runs = {r.name: {"config": r.config, "seed": r.seed, "set": list(r.sets)} for r in self.runs()}
        seeds = list(self.seeds)
        same = earlier and (earlier.get("recipe"), earlier.get("profile"), earlier.get("vary")) == (
            self.recipe,
            self.profile,
            self.vary,
        )
        if same and earlier:
            runs = {**earlier.get("runs", {}), **runs}
            seeds = sorted({*earlier.get("seeds", []), *seeds})
        return {
            "name": self.name,
            "recipe": self.recipe,
            "profile": self.profile,
            "vary": self.vary,
            "seeds": seeds,
            "set": self.sets,
            "configs": [c for c, _ in self.configs()],
            "runs": runs,
        }


_PROBED: list[Any] = []


def _hardware(probe: Any) -> Any:
    """This machine's GPU, probed once per sweep process."""
    if not _PROBED:
        _PROBED.append(probe())
    return _PROBED[0]


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "", value.replace("/", "-")) or "x"


def _default_name(recipe: str, grid: dict[str, list[str]]) -> str:
    return "-".join([recipe, *(k.split(".")[-1] for k in grid)]) or recipe


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def finished(sweep: Sweep, run: SweepRun) -> bool:
    """The run's summary exists and every stage it runs is recorded with its current fingerprint."""
    recipe = sweep.recipe_of(run)
    return Run.of(recipe).finished(recipe)


def plan_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """Per config: the plan's peak, whether it fits the profile's card, hours and dollars for one run."""
    rows = []
    for config, _ in sweep.configs():
        run = next(r for r in sweep.runs() if r.config == config)
        recipe = sweep.recipe_of(run)
        plan = make_plan(recipe, card_for_profile(recipe.profile), verdicts=False)
        rows.append(
            {
                "config": config,
                "runs": len(sweep.seeds),
                "peak_gib": round(plan.peak_gib, 1),
                "fits": plan.fits(),
                "hours": plan.run_hours,
                "usd": plan.usd,
                "card": plan.card.name if plan.card else None,
            }
        )
    return rows


def command(sweep: Sweep, run: SweepRun) -> list[str]:
    """`r1lite run` for one run of the sweep, as its own process."""
    profile = ["--profile", sweep.profile] if sweep.profile else []
    sets = [x for s in sweep.run_sets(run) for x in ("--set", s)]
    return [sys.executable, "-m", "r1lite", "--quiet", "run", sweep.recipe, *profile, *sets]


def order(sweep: Sweep) -> list[list[SweepRun]]:
    """Waves, so that runs running side by side never compute the same stage: one run per distinct base eval,
    then one per distinct warm-up (SFT config and seed) not yet covered, then the rest, which copy both."""
    waves: list[list[SweepRun]] = []
    placed: set[SweepRun] = set()
    for stage in ("eval_base", "sft"):
        first: dict[str, SweepRun] = {}
        for run in sweep.runs():
            first.setdefault(fingerprints(sweep.recipe_of(run))[stage], run)
        wave = [r for r in first.values() if r not in placed]
        covered = {fingerprints(sweep.recipe_of(r))[stage] for r in placed}
        wave = [r for r in wave if fingerprints(sweep.recipe_of(r))[stage] not in covered]
        waves.append(wave)
        placed.update(wave)
    waves.append([r for r in sweep.runs() if r not in placed])
    return [w for w in waves if w]


def run_local(sweep: Sweep, run: SweepRun, env: dict[str, str] | None = None) -> int:
    """One run in its own process, its output in <run>/sweep.log; returns the exit code."""
    root = Run.of(sweep.recipe_of(run)).root
    root.mkdir(parents=True, exist_ok=True)
    with (root / "sweep.log").open("a", encoding="utf-8") as log:
        return subprocess.run(command(sweep, run), stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def launch(
    sweep: Sweep, parallel: int = 1, launcher: str = "local", slurm: dict[str, Any] | None = None
) -> dict[str, int]:
    """Run every unfinished run (data prepared once, warm-ups first); returns each run's exit code (0 if skipped)."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    write_json(sweep.root / MANIFEST, sweep.manifest(read_json_or_empty(sweep.root / MANIFEST)))
    prepared: set[str] = set()
    for run in sweep.runs():  # one data preparation per distinct data section, before any run starts
        cfg = sweep.recipe_of(run).data
        if cfg.model_dump_json() not in prepared:
            data.run(cfg)
            prepared.add(cfg.model_dump_json())
    codes: dict[str, int] = {}
    for wave in order(sweep):
        todo = [r for r in wave if not finished(sweep, r)]
        for r in wave:
            if r not in todo:
                ui.say(f"sweep {sweep.name}: {r.name} finished earlier; skipped")
                codes[r.name] = 0
        if launcher == "slurm":
            codes.update(_launch_slurm(sweep, todo, slurm or {}))
        else:
            codes.update(_launch_local(sweep, todo, parallel))
    return codes


def _slot_env(slot: int, parallel: int) -> dict[str, str]:
    """Process slot `slot` of `parallel`: its own GPU (one of those this process may see) or a share of the cores."""
    import torch

    env = dict(os.environ)
    if torch.cuda.is_available():
        visible = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        visible = visible or [str(i) for i in range(torch.cuda.device_count())]
        if parallel > len(visible):
            raise RecipeError(f"--parallel {parallel} needs {parallel} GPUs and {len(visible)} are visible")
        env["CUDA_VISIBLE_DEVICES"] = visible[slot]
    elif parallel > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def _launch_local(sweep: Sweep, runs: list[SweepRun], parallel: int) -> dict[str, int]:
    if not runs:
        return {}
    slots = list(range(min(parallel, len(runs))))

    def one(indexed: tuple[int, SweepRun]) -> tuple[str, int]:
        i, run = indexed
        slot = slots[i % len(slots)]
        log = sweep.root / run.name / "sweep.log"
        ui.say(f"sweep {sweep.name}: {run.name} started" + (f" (slot {slot})" if parallel > 1 else "") + f"; {log}")
        code = run_local(sweep, run, _slot_env(slot, parallel))
        ui.say(f"sweep {sweep.name}: {run.name} {'finished' if code == 0 else f'stopped with exit code {code}'}")
        return run.name, code

    if len(slots) == 1:
        return dict(map(one, enumerate(runs)))
    results: dict[str, int] = {}
    with ThreadPoolExecutor(len(slots)) as pool:  # slot i runs runs i, i + K, ...: one process per slot at a time
        for wave in (runs[k : k + len(slots)] for k in range(0, len(runs), len(slots))):
            results.update(pool.map(one, enumerate(wave)))
    return results


def _launch_slurm(sweep: Sweep, runs: list[SweepRun], options: dict[str, Any]) -> dict[str, int]:
    """Each run as a SLURM job through submitit, with the GPU and time the plan asks for; waits for all.

    `options`: submitit executor parameters (e.g. slurm_partition); `cluster: local` runs the jobs with
    submitit's local executor, `cluster: debug` in this process (no SLURM needed; the tests use the latter).
    """
    try:
        import submitit
    except ImportError:
        raise RecipeError("--launcher slurm needs submitit: pip install submitit") from None

    if not runs:
        return {}
    options = dict(options)
    cluster = options.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=str(sweep.root / "slurm"), cluster=cluster)
    jobs = []
    for run in runs:
        recipe = sweep.recipe_of(run)
        plan = make_plan(recipe, card_for_profile(recipe.profile), verdicts=False)
        hours = plan.run_hours or 1.0
        gpus = 1 if recipe.model.device != "cpu" else 0
        params = {"timeout_min": int(max(10, hours * 60 * 1.5)), "name": f"r1lite-{sweep.name}-{run.name}"}
        if cluster not in ("local", "debug"):
            params.update({"gpus_per_node": gpus, "tasks_per_node": 1, "cpus_per_task": 4})
        executor.update_parameters(**{**params, **options})
        jobs.append((run, executor.submit(run_local, sweep, run)))
        ui.say(f"sweep {sweep.name}: {run.name} submitted as job {jobs[-1][1].job_id}")
    results = {}
    for run, job in jobs:
        results[run.name] = job.result()
        ui.say(f"sweep {sweep.name}: {run.name} job {job.job_id} ended with exit code {results[run.name]}")
    return results

"""A sweep's report: per config the mean and 95 % interval over seeds and problems, paired differences, real arm
vs control arm, and the smallest difference the sweep could detect.

    >>> manifest, results = collect(Path("runs/demo-rl"))
    >>> headline(manifest, results)               # what the terminal shows: real - control in the declared metric
    >>> build_sweep_report(Path("runs/demo-rl"))  # report.md + report.html beside the runs

Reads what the sweep's runs wrote (`Run`) and the sweep's manifest (`sweep.json`); runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lite.analyze.report import html_page, pyplot
from r1lite.errors import RecipeError
from r1lite.fileio import read_json_or_empty, write_text
from r1lite.runs.rundir import SWEEP_MANIFEST as MANIFEST
from r1lite.runs.rundir import Run, problem_score
from r1lite.runs.summary import sampled_name
from r1lite.stats import Interval, detectable_difference, nested_interval, paired_runs_difference

CONTROL_KEY = "grpo.reward_control"
ARMS = ("none", "shuffle")  # the real arm, the control arm

CURVES = (("reward", "mean reward"), ("validation_accuracy", "validation accuracy"), ("completion_length", "length"))


@dataclass
class ConfigResult:
    config: str
    runs: list[Path]
    correct: list[list[float]]  # runs x problems (the final eval's rows, in order): greedy accuracy
    finals: list[dict[str, Any]]
    seconds: float
    usd: float | None
    sampled: list[list[float]] = field(default_factory=list)  # runs x problems: avg@k, when the evals sampled
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def scores(self, metric: str) -> list[list[float]]:
        return self.sampled if metric == "sampled" else self.correct


def collect(root: Path) -> tuple[dict[str, Any], list[ConfigResult]]:
    """The sweep's manifest and, per config, what its finished runs wrote."""
    manifest = read_json_or_empty(root / MANIFEST)
    if not manifest:
        raise RecipeError(f"{root} is not a sweep folder (no {MANIFEST}); `r1lite sweep RECIPE ...` makes one")
    results = []
    for config in manifest["configs"]:
        names = [n for n, r in manifest["runs"].items() if r["config"] == config]
        done = [Run(root / n) for n in names if Run(root / n).summary_file.is_file()]
        summaries = [d.summary() for d in done]
        rows = [d.eval_rows("final") for d in done]
        sampled = all(r.get("samples") for run in rows for r in run) and bool(rows)
        usd = [s["cost"]["total"]["usd"] for s in summaries]
        results.append(
            ConfigResult(
                config,
                [d.root for d in done],
                [[problem_score(r) for r in run] for run in rows],
                [s["final"] for s in summaries],
                sum(s["cost"]["total"]["seconds"] for s in summaries),
                None if any(u is None for u in usd) else sum(usd),
                [[problem_score(r, "sampled") for r in run] for run in rows] if sampled else [],
                summaries,
            )
        )
    return manifest, results


def all_sampled(results: list[ConfigResult]) -> bool:
    """Every finished run's final eval sampled (so avg@k can be compared across the sweep)."""
    return any(r.correct for r in results) and all(r.sampled for r in results if r.correct)


def declared_metric(results: list[ConfigResult]) -> str:
    """The metric the sweep's recipe declared (eval.metric): greedy, or sampled when every run sampled."""
    names = {s.get("metric", "accuracy") for r in results for s in r.summaries}
    return "sampled" if any(n.startswith("avg@") for n in names) and all_sampled(results) else "greedy"


def metric_label(results: list[ConfigResult], metric: str) -> str:
    return sampled_name(*(f for r in results for f in r.finals)) if metric == "sampled" else "accuracy"


def statistics_table(results: list[ConfigResult], baseline: str | None = None, metric: str = "greedy") -> list[str]:
    """Markdown: mean and 95 % interval per config of `metric` (greedy accuracy or sampled avg@k), the paired
    difference against the baseline, and the smallest difference these seeds and problems could detect."""
    done = [r for r in results if r.scores(metric)]
    if not done:
        return ["No run of this sweep has finished yet."]
    if baseline is not None and baseline not in [r.config for r in results]:
        configs = ", ".join(r.config for r in results)
        raise RecipeError(f"--baseline {baseline} is not a config of this sweep; its configs: {configs}")
    base = next((r for r in done if r.config == baseline), done[0])
    n = min(len(c) for r in done for c in r.scores(metric))
    label = metric_label(results, metric)
    lines = [
        f"| config | seeds | {label} [95 % interval] | vs {base.config} [95 % paired interval] | format | length |",
        "|---|---|---|---|---|---|",
    ]
    for r in done:
        runs = [c[:n] for c in r.scores(metric)]
        acc = nested_interval(runs)
        if r is base:
            diff = "baseline"
        else:
            d = paired_runs_difference(runs, [c[:n] for c in base.scores(metric)])
            diff = f"{d.points()}{' *' if d.excludes_zero else ''}"
        fmt = sum(f["format_rate"] for f in r.finals) / len(r.finals)
        length = sum(f["mean_length"] for f in r.finals) / len(r.finals)
        lines.append(
            f"| {r.config} | {len(runs)} | {acc.estimate:.1%} [{acc.low:.1%}, {acc.high:.1%}] | {diff} | {fmt:.1%} "
            f"| {length:.0f} |"
        )
    seeds = min(len(r.scores(metric)) for r in done)
    p = sum(sum(map(sum, r.scores(metric))) for r in done) / sum(len(c) for r in done for c in r.scores(metric))
    mdd = detectable_difference(n, p)  # seeds re-score the same problems: counted as n problems, not n x seeds
    lines += [
        "",
        f"Intervals: percentile bootstrap over seeds and the {n} held-out problems (every config is evaluated on the "
        "same problems, so differences are paired); * marks an interval that excludes zero.",
        f"The smallest difference this sweep could detect ({n} problems per config, each scored by {seeds} seed(s); "
        f"80 % power, {label} near {p:.0%}): about {mdd * 100:.1f} points. A smaller difference in the table "
        "says nothing."
        + (" (Sampled scores vary less per problem, so this bound is conservative.)" if metric == "sampled" else ""),
    ]
    return lines


def control_pairs(manifest: dict[str, Any], results: list[ConfigResult]) -> list[tuple[ConfigResult, ConfigResult]]:
    """(real arm, control arm) for every config of a sweep run with --control: the same settings but the rewards."""
    if CONTROL_KEY not in manifest.get("vary", {}):
        return []
    by_sets = {}
    for r in results:
        sets = next((v["set"] for v in manifest["runs"].values() if v["config"] == r.config), [])
        arm = next((x.split("=", 1)[1] for x in sets if x.startswith(CONTROL_KEY + "=")), "none")
        rest = tuple(x for x in sets if not x.startswith((CONTROL_KEY + "=", "seed=")))
        by_sets.setdefault(rest, {})[arm] = r
    return [(arms["none"], arms["shuffle"]) for arms in by_sets.values() if set(arms) >= set(ARMS)]


def control_table(manifest: dict[str, Any], results: list[ConfigResult], metric: str) -> list[str]:
    """Markdown: per config, the real arm, its control arm and real - control (paired over problems, nested over
    seeds), for `metric`; and each run's own effect (final vs warm-up)."""
    pairs = [(a, b) for a, b in control_pairs(manifest, results) if a.scores(metric) and b.scores(metric)]
    if not pairs:
        return []
    label = metric_label(results, metric)
    lines = [
        f"| config | seeds (real, control) | GRPO steps trained (real, control) | real arm {label} | control arm "
        f"{label} | real - control [95 % paired interval] |",
        "|---|---|---|---|---|---|",
    ]
    for real, control in pairs:
        n = min(len(c) for c in [*real.scores(metric), *control.scores(metric)])
        a, b = [c[:n] for c in real.scores(metric)], [c[:n] for c in control.scores(metric)]
        ia, ib, d = nested_interval(a), nested_interval(b), paired_runs_difference(a, b)
        config = real.config.replace("_reward_control-none", "").replace("reward_control-none", "base")
        lines.append(
            f"| {config} | {len(a)}, {len(b)} | {_steps(real)}, {_steps(control)} | "
            f"{ia.estimate:.1%} [{ia.low:.1%}, {ia.high:.1%}] | "
            f"{ib.estimate:.1%} [{ib.low:.1%}, {ib.high:.1%}] | {d.points()}{' *' if d.excludes_zero else ''} |"
        )
    return lines


def _steps(result: ConfigResult) -> str:
    """GRPO steps trained of planned, per seed ("12/12 12/12"): arms compared must have trained alike."""
    steps = [s.get("grpo_steps") or {} for s in result.summaries]
    return " ".join(f"{s['trained']}/{s['planned']}" if s else "-" for s in steps)


def split_of(results: list[ConfigResult]) -> str:
    """The split the sweep's final evals scored (test for claims, validation for choices)."""
    splits = {f.get("split", "test") for r in results for f in r.finals}
    return ", ".join(sorted(splits)) or "test"


def headline(manifest: dict[str, Any], results: list[ConfigResult]) -> list[str]:
    """What the terminal shows after `r1lite sweep report` (`collect`'s manifest and results): with a control arm,
    real - control per config in the declared metric; otherwise the declared metric's table."""
    metric = declared_metric(results)
    label = metric_label(results, metric)
    if control_pairs(manifest, results):
        table = control_table(manifest, results, metric)
        split = split_of(results)
        return [
            f"{label} (declared metric) on the {split} split, real arm vs control arm (* : interval excludes 0):",
            *table,
        ]
    return statistics_table(results, None, metric)


def own_effects(results: list[ConfigResult], metric: str) -> dict[str, str]:
    """Per run: GRPO's own effect on `metric` (final vs warm-up, or vs base without a warm-up) from its summary."""
    key = "changes_sampled" if metric == "sampled" else "changes"
    out = {}
    for r in results:
        for d, summary in zip(r.runs, r.summaries, strict=True):
            changes = summary.get(key, {})
            change = changes.get("final_vs_warmup") or changes.get("final_vs_base")
            if change:
                ci = Interval(change["estimate"], change["low"], change["high"], int(change["n"]))
                out[d.name] = f"{ci.points()}{' *' if ci.excludes_zero else ''}"
    return out


def plot_bands(results: list[ConfigResult], out: Path) -> Path | None:
    """Curves per config: the mean over seeds with a band from the lowest to the highest seed."""
    plt = pyplot()

    keys = [(k, t) for k, t in CURVES if any(Run(d).series("grpo", k)[0] for r in results for d in r.runs)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        for r in results:
            curves = [dict(zip(*Run(d).series("grpo", key), strict=True)) for d in r.runs]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            values = [[c[s] for c in curves] for s in steps]
            mean = [sum(v) / len(v) for v in values]
            ax.plot(steps, mean, label=r.config)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("mean over seeds; band: lowest to highest seed", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def build_sweep_report(
    root: Path, baseline: str | None = None, collected: tuple[dict[str, Any], list[ConfigResult]] | None = None
) -> Path:
    """report.md and report.html in the sweep folder (from `collected`, `collect(root)` when not given); returns
    the HTML path."""
    manifest, results = collected or collect(Path(root))
    declared = declared_metric(results)
    others = ("greedy", *(["sampled"] if all_sampled(results) else []))
    metrics = [declared, *(m for m in others if m != declared)]
    plot = plot_bands(results, Path(root) / "plots" / "sweep_curves.png")
    finished_runs = sum(len(r.runs) for r in results)
    seconds = sum(r.seconds for r in results)
    usd = [r.usd for r in results]
    cost = "n/a" if any(u is None for u in usd) else f"${sum(usd):.2f}"
    vary = ", ".join(f"`{k}` in {v}" for k, v in manifest["vary"].items()) or "nothing (seeds only)"
    md = [
        f"# r1lite sweep: {manifest['name']}",
        "",
        f"Recipe `{manifest['recipe']}`, profile `{manifest['profile']}`; varied {vary}; seeds {manifest['seeds']}. "
        f"{finished_runs} of {len(manifest['runs'])} runs finished; {seconds / 60:.1f} min of wall time in all, "
        f"cost {cost}.",
        "",
    ]
    if control_pairs(manifest, results):
        md += [
            "## Real arm vs control arm",
            "",
            "The control arm runs the same GRPO on each group's rewards permuted among that group's own completions: "
            "every group keeps its rewards, its advantages and whether it has any signal, and loses only which "
            "completion earned which. What the real arm gains over it is what the reward taught; what both gain is "
            f"sharpening or noise. Final evals on the {split_of(results)} split.",
            "",
        ]
        for metric in metrics:
            label = metric_label(results, metric)
            md += [f"### {label}{' (declared metric)' if metric == declared else ''}", ""]
            md += [*control_table(manifest, results, metric), ""]
    for metric in metrics:
        label = metric_label(results, metric)
        md += [
            f"## Final held-out {label}{' (declared metric)' if metric == declared and len(metrics) > 1 else ''}",
            "",
            *statistics_table(results, baseline, metric),
            "",
        ]
    if plot:
        md += ["## Curves", "", f"![{plot.stem}](plots/{plot.name})", ""]
    labels = [metric_label(results, m) for m in metrics]
    effects = [own_effects(results, m) for m in metrics]
    heads = [*labels, *(f"GRPO's own effect on {label} [95 %]" for label in labels), "GRPO steps", "wall time"]
    md += ["## Runs", "", f"| run | config | seed | {' | '.join(heads)} |", "|---" * (len(heads) + 3) + "|"]
    for r in results:
        for i, d in enumerate(r.runs):
            seed = manifest["runs"][d.name]["seed"]
            minutes = r.summaries[i]["cost"]["total"]["seconds"] / 60
            values = [sum(r.scores(m)[i]) / len(r.scores(m)[i]) for m in metrics]
            steps = r.summaries[i].get("grpo_steps") or {}
            trained = f"{steps['trained']} of {steps['planned']}" if steps else "-"
            cells = [
                *(f"{v:.1%}" for v in values),
                *(e.get(d.name, "-") for e in effects),
                trained,
                f"{minutes:.1f} min",
            ]
            md.append(f"| {d.name} | {r.config} | {seed} | {' | '.join(cells)} |")
    write_text(Path(root) / "report.md", "\n".join(md) + "\n")
    write_text(Path(root) / "report.html", html_page(manifest["name"], "\n".join(md), [plot] if plot else []))
    return Path(root) / "report.html"

"""Reports: curves and tables from a run directory, as `report.md` + a self-contained `report.html`.

    >>> build_report(Path("runs/countdown-cpu"))      # -> runs/countdown-cpu/report.html
    >>> Run(run_dir).series("grpo", "reward")          # ([1, 2, ...], [0.1, 0.2, ...]) straight from metrics.jsonl

Everything is read from what the run directory holds (`r1lite.runs.rundir.Run`), so a report can be rebuilt
at any time, also for an unfinished run.
"""

from __future__ import annotations

import base64
import html
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lite.analyze.cost import cost_for_run
from r1lite.fileio import read_json_or_empty, write_text
from r1lite.runs.rundir import CHANGES, Run, of_row
from r1lite.runs.summary import METRICS, summary_change_lines
from r1lite.tasks import Task

CURVES = [
    ("reward", "mean reward"),
    ("accuracy", "accuracy (train samples)"),
    ("format_rate", "format rate"),
    ("completion_length", "completion length (tokens)"),
    ("kl", "KL to reference"),
    ("validation_accuracy", "validation accuracy (periodic eval)"),
]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display), imported when a plot is first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dirs: list[Path], out: Path, stage: str = "grpo") -> Path | None:
    """One panel per metric in CURVES that any run logged; runs overlaid. None when nothing to plot."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    keys = [(k, label) for k, label in CURVES if any(Run(d).series(stage, k)[0] for d in run_dirs)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys, strict=False):
        for d in run_dirs:
            steps, values = Run(d).series(stage, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=d.name)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(run_dirs) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{stage.upper()} training curves", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


BEHAVIOUR = [
    ("completion_length", "completion length (tokens)"),
    ("search_rate", "share showing search (tries, back-ups, checks)"),
    ("self_check_rate", "share checking its own result"),
    ("accuracy", "accuracy (train samples)"),
]


def plot_behaviour(run_dir: Path, out: Path) -> Path | None:
    """The "aha" curves: how long the model reasons, and how often it searches and checks, step by step."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    keys = [(k, label) for k, label in BEHAVIOUR if Run(run_dir).series("grpo", k)[0]]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys, strict=True):
        steps, values = Run(run_dir).series("grpo", key)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, color="tab:purple")
        ax.set_title(label, fontsize=9)
        if key != "completion_length":  # shares
            ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("GRPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle("behaviour during GRPO", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def diagnostics_raised(run_dir: Path) -> dict[str, tuple[int, int, str]]:
    """Each diagnostic that held at some GRPO step: (first step, steps held, latest message)."""
    raised: dict[str, tuple[int, int, str]] = {}
    for row in Run(run_dir).metrics("grpo"):
        for name, message in (row.get("diagnostics") or {}).items():
            first, held, _ = raised.get(name, (row["step"], 0, ""))
            raised[name] = (first, held + 1, message)
    return raised


GROUPS = ("fixed", "broken", "still right", "still wrong")  # what training did to a problem: wrong -> right, ...
MUST_SHOW = ("fixed", "broken")  # the changes training made: a sample shows one of each that happened, however rare


@dataclass(frozen=True)
class BeforeAfter:
    """The held-out problems both evals scored, counted by group, and a fair sample of them to show."""

    counts: dict[str, int]  # every group in GROUPS order, over all paired problems
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]]  # (group, base row, trained row), the sample

    def summary(self) -> str:
        """The counts a reader needs before any example: fixed and broken say more than the accuracy delta."""
        total = sum(self.counts.values())
        parts = ", ".join(f"{self.counts[g]} {g}" for g in GROUPS)
        return (
            f"Over all {total} held-out problems both evals scored: {parts} "
            f"(fixed: wrong before, right after; broken: right before, wrong after). "
            f"The {len(self.rows)} rows below are a seeded sample drawn from each group in proportion to its size."
        )


def group_of(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Which of GROUPS a problem falls in, from its base and trained eval rows."""
    if before["correct"]:
        return "still right" if after["correct"] else "broken"
    return "fixed" if after["correct"] else "still wrong"


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Rows per group for a sample of `n`: proportional by largest remainder, one for each non-empty MUST_SHOW group.

    >>> allocate({"fixed": 3, "broken": 1, "still right": 0, "still wrong": 10}, 6)
    {'fixed': 1, 'broken': 1, 'still right': 0, 'still wrong': 4}

    Quotas are n * size / total; exact integer arithmetic, so ties break the same way on every machine
    (larger group first, then GROUPS order). A MUST_SHOW group left at zero takes its row from the group
    furthest above its quota.
    """
    total = sum(sizes.values())
    n = min(n, total)
    if n <= 0:
        return {g: 0 for g in sizes}
    seats = {g: n * size // total for g, size in sizes.items()}
    order = sorted(sizes, key=lambda g: (-(n * sizes[g] % total), -sizes[g], list(sizes).index(g)))
    for g in order[: n - sum(seats.values())]:
        seats[g] += 1
    for g in (g for g in MUST_SHOW if sizes.get(g) and not seats[g]):
        donors = [d for d in sizes if seats[d] > (1 if d in MUST_SHOW else 0)]
        if donors:  # n is smaller than the groups that must show: the earlier MUST_SHOW groups keep theirs
            donor = max(donors, key=lambda d: seats[d] * total - n * sizes[d])
            seats[donor] -= 1
            seats[g] += 1
    return seats


def before_after(run: Run, n: int = 6, seed: int = 0) -> BeforeAfter | None:
    """Counts over every paired problem and a seeded, proportional sample of `n` (None without both evals).

    This is the one place that decides which examples a reader sees: report.md, report.html and
    `runs compare` all call it, so they cannot disagree, and none of them can show only the good rows.
    """
    pairs = run.paired_rows()
    if not pairs:
        return None
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for i, (before, after) in enumerate(pairs):
        groups[group_of(before, after)].append(i)
    counts = {g: len(idx) for g, idx in groups.items()}
    seats, rng = allocate(counts, n), random.Random(seed)
    rows = [(g, *pairs[i]) for g in GROUPS for i in sorted(rng.sample(groups[g], seats[g]))]
    return BeforeAfter(counts, rows)


def problem_label(row: dict[str, Any], task: Task) -> str:
    """An eval row's problem in a markdown cell: the task's own label or, for a task with the default one (the question
    cut at 100 characters, for live views), the question to 160, which gets a reasoning-gym puzzle past its preamble."""
    if type(task).label is not Task.label:
        label = of_row(task, "label", row)
        if label is not None:
            return str(label).replace("|", "¦")
    text = " ".join(str(row.get("question", "")).split()).replace("|", "¦")
    return text if len(text) <= 160 else text[:159] + "…"


def side_by_side(result: BeforeAfter, task: Task, width: int = 400) -> list[str]:
    """Markdown: the counts, then the sampled problems, base vs trained completion, each with its group and reason."""

    def cell(row: dict[str, Any]) -> str:
        text = row["completion"].strip().replace("|", "¦").replace("\n", " ⏎ ")
        text = text if len(text) <= width else text[: width // 2] + " … " + text[-width // 2 :]
        mark = "✓" if row["correct"] else "✗"
        return f"{mark} {row['reason']}: `{text}`"

    out = [result.summary(), "", "| group | problem | base | trained |", "|---|---|---|---|"]
    out += [f"| {g} | {problem_label(b, task)} | {cell(b)} | {cell(a)} |" for g, b, a in result.rows]
    return out


def plot_sft(run_dir: Path, out: Path) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    steps, loss = Run(run_dir).series("sft", "loss")
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, loss, marker="o", markersize=3)
    ax.set_title("SFT loss (completion tokens)")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_eval(before: dict[str, Any], after: dict[str, Any], out: Path) -> Path | None:
    plt = pyplot()

    keys = [k for k in METRICS if not k.startswith("mean_") and k in before and k in after]  # the rates
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], [before[k] for k in keys], width=0.4, label="base")
    ax.bar([i + 0.2 for i in x], [after[k] for k in keys], width=0.4, label="trained")
    for i, k in enumerate(keys):
        ax.text(i - 0.2, before[k], f"{before[k]:.0%}", ha="center", va="bottom", fontsize=8)
        ax.text(i + 0.2, after[k], f"{after[k]:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), keys)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"held-out eval ({after.get('examples', '?')} problems)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def format_metric(key: str, value: Any) -> str:
    """An eval metric as the report shows it: shares in %, reward to 3 places, counts and lengths whole."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    if key in ("mean_length", "examples", "seconds"):
        return f"{value:.0f}"
    if key == "mean_reward":
        return f"{value:.3f}"
    return f"{value:.1%}"


def build_report(run_dir: Path) -> Path:
    """Write plots/, report.md and report.html into the run directory; returns the HTML path."""
    run = Run.open(run_dir)
    run_dir, recipe = run.root, run.recipe()
    recipe_text = run.config_file.read_text()
    stages, hardware = run.state(), read_json_or_empty(run.hardware_file)
    before, after = run.eval("base"), run.eval("final")
    cost = cost_for_run(recipe, {k: v["seconds"] for k, v in stages.items()}, hardware)
    plots_dir = run_dir / "plots"
    plots = [
        p
        for p in (
            plot_curves([run_dir], plots_dir / "grpo_curves.png"),
            plot_behaviour(run_dir, plots_dir / "grpo_behaviour.png"),
            plot_sft(run_dir, plots_dir / "sft_loss.png"),
            plot_eval(before, after, plots_dir / "eval_before_after.png") if before and after else None,
        )
        if p
    ]

    md = [
        f"# r1lite report: {run_dir.name}",
        "",
        f"Recipe `{recipe.name}`, profile `{recipe.profile}`, model "
        f"`{recipe.model.name}` ({recipe.quantization.mode}), LoRA r={recipe.lora.r}.",
        "",
    ]
    if before and after:
        warmup = run.eval("warmup") if "eval_warmup" in stages else {}
        heads = ["base", *(["warm-up (SFT)"] if warmup else []), "trained"]
        md += ["## Held-out eval", "", f"| metric | {' | '.join(heads)} |", "|---" * (len(heads) + 1) + "|"]
        sampled = [k for k in after if k.startswith(("avg@", "pass@"))]
        for key in (METRICS[0], *sampled, *METRICS[1:], "examples"):  # avg@k and pass@k beside accuracy
            if key in before and key in after:
                cells = [before, *([warmup] if warmup else []), after]
                md.append(f"| {key} | " + " | ".join(format_metric(key, c.get(key, "-")) for c in cells) + " |")
        pairs = [c for c in CHANGES if "warmup" not in c or warmup]
        changes = {
            "metric": recipe.eval.metric_name(),
            "final": after,
            "changes": run.changes(pairs),
            "changes_sampled": run.changes(pairs, "sampled"),
        }
        md += ["", *summary_change_lines(changes), ""]
        if recipe.grpo.enabled and recipe.grpo.reward_control == "shuffle":
            md += ["**Control arm**: GRPO trained on each step's rewards shuffled across its completions.", ""]
    task = recipe.data.make_task()
    paired = before_after(run, seed=recipe.seed)
    if paired:
        md += ["## Before and after, same problems", "", *side_by_side(paired, task), ""]
    raised = diagnostics_raised(run_dir)
    md += ["## Diagnostics", ""]
    if raised:
        md += ["| diagnostic | first step | steps | latest message |", "|---|---|---|---|"]
        md += [f"| {name} | {first} | {held} | {msg} |" for name, (first, held, msg) in raised.items()]
    else:
        md.append("No GRPO diagnostic was raised." if Run(run_dir).metrics("grpo") else "No GRPO metrics yet.")
    md.append("")
    md += ["## Cost", "", "| stage | wall time | GPU-hours | USD |", "|---|---|---|---|"]
    for stage, row in [*cost["stages"].items(), ("**total**", cost["total"])]:
        usd = "n/a" if row["usd"] is None else f"${row['usd']:.2f}"
        md.append(f"| {stage} | {row['seconds'] / 60:.1f} min | {row['gpu_hours']:.3f} | {usd} |")
    md += [
        "",
        f"GPU: {cost['gpu']}; price: {cost['price_source']}. TinyZero reported its run for under "
        f"${cost['tinyzero_claim_usd']:.0f} of GPU rent.",
        "",
    ]
    if plots:
        md += ["## Curves", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    md += [
        "## Hardware and versions",
        "",
        "```json",
        json.dumps(hardware, indent=2),
        "```",
        "",
        "## Resolved recipe",
        "",
        "```yaml",
        recipe_text.rstrip(),
        "```",
        "",
    ]
    write_text(run_dir / "report.md", "\n".join(md))
    write_text(run_dir / "report.html", html_page(run_dir.name, "\n".join(md), plots))
    return run_dir / "report.html"


def html_page(title: str, markdown: str, plots: list[Path]) -> str:
    """A small markdown subset to HTML, with the PNGs embedded so the file stands alone."""
    images = {f"plots/{p.name}": base64.b64encode(p.read_bytes()).decode() for p in plots}
    out, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            out.append(
                ("<table>" if not in_table else "")
                + "<tr>"
                + "".join(f"<{tag}>{html.escape(c).replace('**', '')}</{tag}>" for c in cells)
                + "</tr>"
            )
            in_table = True
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            out.append(f'<img src="data:image/png;base64,{images[src]}" alt="{html.escape(src)}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line:
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    if in_table:
        out.append("</table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}"
        "th{background:#f3f3f3}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>r1lite: {html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )

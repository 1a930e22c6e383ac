"""`r1lite plan`: predicted peak memory per stage, step time, run time and cost, offline and instantly."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from r1lite.cli.common import ProfileOpt, RecipeArg, SetOpt


def plan(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="a card: 8, 12, 16, 24, 48, 80 (GB), H200, 4090")] = None,
    vram: Annotated[float | None, typer.Option("--vram", help="the card's memory in GiB (no timing)")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="GPUs the rollout batch is split over")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Will the recipe fit, how long will it take, what will it cost: before any model is downloaded or loaded."""
    from r1lite.cli.common import resolve_recipe
    from r1lite.errors import R1liteError
    from r1lite.plan.hardware import Card, Hardware, card_by_name, card_for_profile, pick_profile
    from r1lite.plan.planner import make_plan
    from r1lite.recipe.load import profiles_of
    from r1lite.runs.rundir import Run

    if gpu and vram is not None:
        raise R1liteError("give --gpu or --vram, not both")
    card = card_by_name(gpu) if gpu else Card(f"{vram:g} GiB card", vram) if vram is not None else None
    if profile is None and card is not None:  # the profile `r1lite run` picks on that card
        profile = pick_profile(profiles_of(recipe), Hardware(True, card.name, card.gib, card.gib))
    r = resolve_recipe(recipe, profile, set_, detect=card is None)
    card = card or card_for_profile(r.profile)
    p = make_plan(r, card, gpus, measured_length=Run.of(r).mean_completion_length())
    if as_json:
        print(json.dumps(p.as_dict()))
        return
    _print(p)


def _print(p) -> None:
    from rich.table import Table

    from r1lite.plan.memory import ALLOCATOR_SLACK, CUDA_CONTEXT_GIB, HEADROOM
    from r1lite.ui import console

    d = p.as_dict()
    title = f"{p.model} ({d['profile'] or 'no profile'}), {d['device']}, rollouts by {p.rollout}"
    table = Table("stage", "peak GiB", "LoRA for decoding", "largest parts (GiB)", title=title)
    for name, stage in d["stages"].items():
        parts = sorted(stage["parts"].items(), key=lambda kv: -kv[1])
        engine_stage = "eval" if name == "eval" else "grpo_rollout" if name.startswith("grpo") else None
        merged = p.merge.get(engine_stage) if engine_stage else None
        decoding = "" if merged is None else "merged" if merged else "unmerged"
        if decoding and p.compiled.get(engine_stage):
            decoding += ", captured"
        table.add_row(name, f"{stage['peak_gib']:.2f}", decoding, ", ".join(f"{k} {v:.2f}" for k, v in parts[:4]))
    console.print(table)
    if p.episodes:
        typical = f" (~{p.typical.generated_tokens / 1e6:.1f}M at the mean below)" if p.typical else ""
        console.print(
            f"sample budget: {p.episodes:,} episodes (prompts x generations x steps), "
            f"at most {p.generated_tokens / 1e6:.1f}M generated tokens{typical}"
        )
    extra = f"tensors x {1 + ALLOCATOR_SLACK:g} for the allocator"
    extra += f" + {CUDA_CONTEXT_GIB:g} GiB CUDA context" if p.on_cuda else ""
    console.print(f"peak: [bold]{d['peak_gib']:.2f} GiB[/] in {d['peak_stage']} ({extra})")
    if p.card is not None:
        verdict = "fits" if d["fits_with_headroom"] else "fits, with < 10 % to spare" if d["fits"] else "does NOT fit"
        console.print(f"{p.card.name} ({p.card.gib:.1f} GiB): [bold]{verdict}[/]")
        if not p.card.bf16:
            console.print("  no bf16 on this card: r1lite trains in fp16 with loss scaling (same memory)")
    if p.verdicts:
        cards = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in p.verdicts.items())
        console.print(f"fits with {HEADROOM:.0%} headroom: {cards}")
    if p.step_seconds is not None:
        usd = "n/a (set cost.gpu_hourly_usd)" if p.usd is None else f"${p.usd:.2f}"
        console.print(
            f"time: ~{p.step_seconds:.0f} s per GRPO step, ~{p.run_hours:.1f} h for the run; cost {usd} "
            "(every completion at its maximum length)"
        )
        if p.typical:
            _print_typical(p)
        for source in p.timing_sources:
            console.print(f"  [dim]{source}[/]")
    elif p.on_cuda:
        console.print("time: give --gpu NAME for a step-time and cost estimate")


def _print_typical(p) -> None:
    """The run's time at a measured or cited mean completion length, labelled with where the mean comes from."""
    from r1lite.ui import console

    t = p.typical
    usd = "n/a" if t.timing.usd is None else f"${t.timing.usd:.2f}"
    console.print(
        f"      ~{t.timing.step_seconds:.0f} s per GRPO step, ~{t.timing.run_hours:.1f} h, {usd} at a mean of "
        f"{t.completion_tokens} tokens per completion ({t.source})"
    )
    console.print(
        "  [dim]every completion taken at the mean; a batch decodes until its longest completion ends, so a run "
        "takes between the two figures[/]"
    )

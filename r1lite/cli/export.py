"""`r1lite export RUN --out DIR`: a run's model as a PEFT adapter or a merged HF model, with a model card.

    r1lite export runs/countdown-cpu --out exports/countdown-cpu                # the adapter (PEFT)
    r1lite export runs/countdown-cpu --out exports/countdown-cpu --merged --check
    r1lite export runs/countdown-cpu --out exports/countdown-cpu --merged --push-to-hub me/countdown-r1

The work lives in `r1lite.share.export`; this module parses options and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r1lite.cli.report import RunArg
from r1lite.cli.try_ import AdapterOpt
from r1lite.errors import R1liteError
from r1lite.fileio import check_writable


def export(
    run: RunArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write: new, empty, or an earlier export")],
    merged: Annotated[
        bool,
        typer.Option("--merged", help="LoRA merged into a copy of the base: a plain HF model for transformers, vLLM"),
    ] = False,
    dtype: Annotated[
        str | None,
        typer.Option(help="with --merged: bfloat16 | float16 | float32 (default: what the model computed in)"),
    ] = None,
    merge_into: Annotated[
        str,
        typer.Option(
            help="with --merged: trained (the weights the adapter was trained against: a 4-bit base dequantized) "
            "| original (the base's own weights)"
        ),
    ] = "trained",
    adapter: AdapterOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="evaluate the export on the run's held-out problems beside the run's eval")
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", metavar="REPO", help="upload to this Hugging Face repo (private)")
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="with --push-to-hub: make a new repo public")] = False,
) -> None:
    """Export the trained model (adapter or merged), with a model card built from the run; check it, share it."""
    from r1lite.runs import hub
    from r1lite.share import export as ex
    from r1lite.share.card import write_card
    from r1lite.share.trained import open_run
    from r1lite.ui import console

    if not merged and (dtype is not None or merge_into != "trained"):
        raise R1liteError("--dtype and --merge-into go with --merged (an adapter keeps its own weights)")
    if public and not push_to_hub:
        raise R1liteError("--public goes with --push-to-hub REPO")
    check_writable(out, "--out")
    trained = open_run(run, adapter)
    if push_to_hub:
        user = hub.hub_ready(push_to_hub)  # before the merge: a push that cannot work fails first
        console.print(f"[dim]Hugging Face Hub: logged in as {user}[/]")
    info = ex.export(trained, out, merged=merged, dtype=dtype, merge_into=merge_into, repo=push_to_hub)
    console.print(f"wrote {out}: {ex.describe(info)}", soft_wrap=True)
    if check:
        result = ex.check(trained, out)
        for line in ex.check_lines(result):
            console.print(line, soft_wrap=True)
        write_card(trained, out, info, result)
    if push_to_hub:
        url = hub.push(out, push_to_hub, private=not public)
        console.print(f"pushed to {url} ({'public' if public else 'private'})")

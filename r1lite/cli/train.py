"""`r1lite sft|grpo|eval|run`: the training pipeline's commands (filled in by the stages)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the stage commands to the root app."""

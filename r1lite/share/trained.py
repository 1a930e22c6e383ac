"""A run's trained model: its resolved recipe and adapter, ready to load on this machine (`try` and `export`).

>>> run = open_run(Path("runs/countdown-cpu"))     # the run's recipe and its final adapter
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.recipe.config import ModelConfig, Recipe
from r1lite.runs.rundir import Run
from r1lite.tasks import Task
from r1lite.train.models import check_adapter


@dataclass(frozen=True)
class TrainedRun:
    root: Path
    recipe: Recipe  # the run's config.yaml, resolved as the run resolved it
    adapter: Path  # the LoRA adapter to try or export

    @property
    def task(self) -> Task:
        return self.recipe.data.make_task()

    @property
    def run_dir(self) -> Run:
        return Run(self.root)


def open_run(root: Path, adapter: str | Path | None = None) -> TrainedRun:
    """A run directory with its recipe and adapter: `adapter`, else grpo/adapter, else sft/adapter."""
    run = Run.open(root)
    recipe = run.recipe()
    found = check_adapter(adapter) if adapter is not None else run.trained_adapter(recipe)
    if found is None:
        raise R1liteError(
            f"{root} has no trained adapter yet (no grpo/adapter or sft/adapter); finish the run with `r1lite run`, "
            "or pass --adapter"
        )
    return TrainedRun(run.root, recipe, found)


def runnable(cfg: ModelConfig) -> ModelConfig:
    """The run's model settings, moved to the CPU when the run trained on a GPU this machine does not have."""
    import torch

    if cfg.device != "cuda" or torch.cuda.is_available():
        return cfg
    ui.log("no CUDA GPU here: the model runs on the CPU (slow for a model of billions of parameters)")
    return cfg.model_copy(update={"device": "cpu", "attn_implementation": None})

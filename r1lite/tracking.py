"""Where metrics go: `metrics.jsonl` per stage (every logged step), the terminal, and W&B.

>>> callback = MetricsCallback(run_dir / "grpo" / "metrics.jsonl", stage="grpo")
>>> trainer.add_callback(callback)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from r1lite.fileio import append_jsonl


class MetricsCallback(TrainerCallback):
    """Append every `Trainer.log` call to a JSONL file, with step and wall time."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path, self.stage, self.start = Path(path), stage, time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            row = {"stage": self.stage, "step": state.global_step, "elapsed_s": round(time.monotonic() - self.start, 2)}
            append_jsonl(self.path, {**row, **{k: v for k, v in logs.items() if isinstance(v, int | float | str)}})

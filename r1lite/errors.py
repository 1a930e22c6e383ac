"""r1lite's own exceptions: raised deep, caught once at the CLI layer and printed as one line.

    >>> closest_name("lr", ["learning_rate", "beta", "trl"])   # 'learning_rate', not difflib's 'trl'

The helpers here build those lines: the first problem of a pydantic error, the key a typo most likely meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class R1liteError(Exception):
    """A problem the user can fix (bad flag, bad recipe, missing file); the CLI exits with code 2."""

    exit_code = 2


class RecipeError(R1liteError):
    """The recipe or an override does not validate."""


class DataError(R1liteError):
    """An input data file is missing or has the wrong layout."""


class ModelError(R1liteError):
    """A model cannot be found, loaded or placed on the requested device."""


class PrecisionError(R1liteError):
    """The model computed NaN or infinite logits (activations overflow its dtype, e.g. fp16); a wider dtype fixes it."""


def first_problem(err: Any) -> tuple[list[str], str, str]:
    """A pydantic ValidationError's first problem: where, its type, and its message with the offending value."""
    first = err.errors()[0]
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) and first["type"] != "missing" else ""
    return [str(p) for p in first["loc"]], first["type"], first["msg"].removeprefix("Value error, ") + shown


# The names people carry over from other trainers, each with the fields it may mean in order of preference;
# the first one the section has wins (`bs` is sft.batch_size but grpo.micro_batch_size). Spelling slips are
# left to difflib, which cannot know that `lr` means learning_rate: it finds `trl` closer.
ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("learning_rate",),
    "bs": ("batch_size", "micro_batch_size", "per_device_train_batch_size"),
    "batch": ("batch_size", "micro_batch_size", "per_device_train_batch_size"),
    "batch_size": ("micro_batch_size", "per_device_train_batch_size"),
    "epoch": ("epochs", "num_train_epochs"),
    "epochs": ("num_train_epochs",),
    "num_epochs": ("epochs", "num_train_epochs"),
    "steps": ("max_steps",),
    "num_steps": ("max_steps",),
    "temp": ("temperature",),
    "rank": ("r",),
    "lora_r": ("r",),
    "lora_alpha": ("alpha",),
    "lora_dropout": ("dropout",),
    "kl": ("beta",),
    "kl_coef": ("beta",),
    "group_size": ("num_generations",),
    "max_tokens": ("max_new_tokens", "max_completion_length", "max_length"),
    "grad_accumulation": ("grad_accum", "gradient_accumulation_steps"),
    "gradient_accumulation_steps": ("grad_accum",),
}


def closest_name(key: str, names: Iterable[str]) -> str | None:
    """The field a mistyped `key` most likely meant: a known alias first, then the closest spelling, else None."""
    names = list(names)
    for candidate in ALIASES.get(key.lower().replace("-", "_"), ()):
        if candidate in names:
            return candidate
    close = difflib.get_close_matches(key, names, n=1)
    return close[0] if close else None

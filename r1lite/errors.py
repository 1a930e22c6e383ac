"""r1lite's own exceptions: raised deep, caught once at the CLI layer and printed as one line."""

from __future__ import annotations

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


def first_problem(err: Any) -> tuple[list[str], str, str]:
    """A pydantic ValidationError's first problem: where, its type, and its message with the offending value."""
    first = err.errors()[0]
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) and first["type"] != "missing" else ""
    return [str(p) for p in first["loc"]], first["type"], first["msg"].removeprefix("Value error, ") + shown

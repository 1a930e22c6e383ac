"""Which task a recipe's `data.task` names: the built-in Countdown, a reasoning-gym generator, or a task of your own.

    >>> load_task("countdown"), load_task("rg:knights_knaves"), load_task("my_task.py"), load_task("pkg.module")
    >>> task_class("my_task.py")          # the class, imported once per version of the file

The interface a task implements is r1lite.tasks.Task; this module only finds and instantiates one.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from r1lite.errors import first_problem
from r1lite.tasks import Task, TaskError
from r1lite.tasks.countdown import Countdown
from r1lite.tasks.rg import reasoning_gym_task

BUILTIN = ("countdown",)


def _from_module(module: Any, origin: str) -> type[Task]:
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Task) and obj is not Task and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        what = (
            "no Task subclass"
            if not found
            else f"{len(found)} Task subclasses ({', '.join(c.__name__ for c in found)})"
        )
        raise TaskError(
            f"{origin} defines {what}; a task file defines exactly one class that subclasses r1lite.tasks.Task"
        )
    cls = found[0]
    if not cls.name:
        raise TaskError(
            f"{origin}: {cls.__name__} needs a `name` (the recipe key of its settings, e.g. name = 'my_task')"
        )
    return cls


def _load_file(path: Path) -> Any:
    name = f"r1lite_task_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic look their module up
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise TaskError(f"{path} failed to import: {type(e).__name__}: {e}") from None
    return module


@functools.lru_cache(maxsize=64)
def _file_task(path: Path, mtime: float, spec: str) -> type[Task]:
    """Imported once per file version (a path relative to another folder is another file)."""
    return _from_module(_load_file(path), spec)


def task_class(spec: str) -> type[Task]:
    """The Task class for `countdown`, `rg:<name>`, `path/to/file.py` (from the working dir) or `package.module`."""
    if spec == "countdown":
        return Countdown
    if spec.startswith("rg:"):
        return reasoning_gym_task(spec[3:])
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        if not path.is_file():
            raise TaskError(f"task file {spec} does not exist (paths are relative to the working directory)")
        return _file_task(path, path.stat().st_mtime, spec)
    return _module_task(spec)


@functools.lru_cache(maxsize=64)
def _module_task(spec: str) -> type[Task]:
    if "." in spec:
        try:
            module = importlib.import_module(spec)
        except ImportError as e:
            raise TaskError(f"cannot import task module {spec}: {e}") from None
        return _from_module(module, spec)
    close = difflib.get_close_matches(spec, BUILTIN, n=1)
    hint = (
        f"did you mean '{close[0]}'?"
        if close
        else "use countdown, rg:<name> (r1lite tasks list), a .py file or a module"
    )
    raise TaskError(f"unknown task '{spec}'; {hint}")


def load_task(spec: str, settings: BaseModel | dict[str, Any] | None = None) -> Task:
    """An instance of the task `spec` with its settings validated."""
    cls = task_class(spec)
    try:
        task = cls(settings)
    except ValidationError as e:  # a recipe validates settings first; this is for code and the CLI
        loc, _, msg = first_problem(e)
        raise TaskError(f"task {spec}: {'.'.join(loc) + ': ' if loc else ''}{msg}") from None
    task.spec = spec
    return task

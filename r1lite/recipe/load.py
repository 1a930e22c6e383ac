"""Recipes: YAML experiments with hardware profiles and `--set` overrides, resolved to a `Recipe`.

    >>> load_recipe("countdown", profile="cpu", overrides=["grpo.max_steps=5"])

Order: the file's base, then the profile deep-merged over it, then each override. Every mistake
(unknown key, wrong type, missing file, unknown profile) becomes one `RecipeError` line that names
the key and, for typos, the closest valid one.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from r1lite.errors import RecipeError, closest_name, first_problem
from r1lite.recipe.config import DataConfig, Recipe

PACKAGE_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: $R1LITE_RECIPES, ./recipes, then the checkout's recipes/."""
    dirs = [Path(p) for p in os.environ.get("R1LITE_RECIPES", "").split(os.pathsep) if p]
    return [*dirs, Path.cwd() / "recipes", PACKAGE_RECIPES]


def list_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found.setdefault(p.stem, p)
    return found


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {name} does not exist")
        return path
    known = list_recipes()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"available: {', '.join(known) or 'none'}"
    raise RecipeError(f"no recipe named '{name}'; {hint} (r1lite recipes list)")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping of sections, not {type(raw).__name__}")
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins; nested mappings merge key by key, lists and scalars are replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _field_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _check_path(path: list[str], full: str) -> None:
    """Raise with the closest key (a known alias, then the closest spelling) when `path` names no recipe field.

    Free-form mappings (grpo.trl) and the data section's task settings are checked where they are read.
    """
    model: type[BaseModel] | None = Recipe
    for depth, key in enumerate(path):
        if model is None:
            return  # inside a free-form mapping such as grpo.trl
        if model is DataConfig and key not in model.model_fields:
            return  # data.<task name>.*: the data section knows its task's settings and names mistakes itself
        if key not in model.model_fields:
            close = closest_name(key, model.model_fields)
            hint = f"; did you mean '{'.'.join([*path[:depth], close])}'?" if close else ""
            raise RecipeError(f"unknown key '{full}'{hint}")
        model = _field_model(model, key)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'grpo.beta=0.04' -> (['grpo', 'beta'], 0.04); the value is read as YAML."""
    if "=" not in item:
        raise RecipeError(f"override '{item}' needs the form key.path=value, e.g. grpo.max_steps=10")
    key, _, raw = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override '{item}' has an empty key")
    _check_path(path, key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _describe(err: ValidationError, source: str) -> str:
    """One line for the first validation error, with the closest key for unknown ones."""
    loc, kind, msg = first_problem(err)
    key = ".".join(loc)
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if kind == "extra_forbidden":
        try:
            _check_path(loc, key)
        except RecipeError as e:
            return f"{source}: {e}{more}"
    if not key or msg.startswith(("unknown key", "data.")):  # the message names its key itself
        return f"{source}: {msg}{more}"
    return f"{source}: {key}: {msg}{more}"


def resolve(raw: dict[str, Any], profile: str | None, overrides: list[str], source: str) -> Recipe:
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise RecipeError(f"{source}: 'profiles' must map profile names to partial recipes")
    if profile is not None:
        if profile not in profiles:
            close = difflib.get_close_matches(profile, profiles, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"available: {', '.join(profiles) or 'none'}"
            raise RecipeError(f"{source} has no profile '{profile}'; {hint}")
        raw = deep_merge(raw, profiles[profile] or {})
        raw["profile"] = profile
    for item in overrides:
        path, value = parse_override(item)
        apply_override(raw, path, value)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_describe(e, source)) from None


def recipe_for_task(spec: str) -> str | None:
    """The first recipe (in lookup order) whose data.task is `spec`, e.g. knights_knaves for rg:knights_knaves."""
    for name, path in list_recipes().items():
        data = read_yaml(path).get("data") or {}
        if isinstance(data, dict) and data.get("task", "countdown") == spec:
            return name
    return None


def task_recipe(spec: str, recipe: str | None, profile: str | None, overrides: list[str]) -> Recipe:
    """The recipe that `r1lite data/tasks TASK` read their data section from.

    `recipe` when given (it must be for `spec`), else the recipe written for the task, else the defaults.
    """
    name = recipe or recipe_for_task(spec)
    if name is None:
        return resolve({"name": spec.replace(":", "-"), "data": {"task": spec}}, None, overrides, f"task {spec}")
    r = load_recipe(name, profile, overrides)
    if r.data.task != spec:
        raise RecipeError(
            f"recipe {name} is for task {r.data.task}, not {spec}; leave out --recipe or pick one for {spec}"
        )
    return r


def profiles_of(name: str) -> list[str]:
    return list((read_yaml(find_recipe(name)).get("profiles") or {}).keys())


def load_recipe(name: str, profile: str | None = None, overrides: list[str] | None = None) -> Recipe:
    path = find_recipe(name)
    return resolve(read_yaml(path), profile, overrides or [], f"recipe {path.name}")


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=100)

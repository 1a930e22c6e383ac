"""Options and helpers shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

from r1lite.recipe.config import Recipe

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", help="hardware profile from the recipe (cpu, gpu-16gb, ...); default: detected"),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a recipe value: key.path=value (repeatable)")
]
RecipeArg = Annotated[str, typer.Argument(help="recipe name in recipes/ or a path to a .yaml file")]


def resolve_recipe(name: str, profile: str | None, overrides: list[str] | None, detect: bool = True) -> Recipe:
    """Load a recipe; with no --profile, pick one from the hardware when the recipe has profiles."""
    from r1lite.recipe.load import load_recipe, profiles_of

    if profile is None and detect:
        from r1lite.plan.hardware import detect_profile

        available = profiles_of(name)
        if available:
            profile = detect_profile(available)
    return load_recipe(name, profile, overrides or [])

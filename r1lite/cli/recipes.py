"""`r1lite recipes list|show`: what experiments exist and what exactly they resolve to."""

from __future__ import annotations

import typer
from rich.table import Table

from r1lite.cli.common import ProfileOpt, RecipeArg, SetOpt
from r1lite.ui import console

app = typer.Typer(help="List recipes and print them fully resolved.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List recipes with their profiles."""
    from r1lite.recipe.load import list_recipes, read_yaml

    table = Table("recipe", "profiles", "description", "file")
    for name, path in list_recipes().items():
        raw = read_yaml(path)
        table.add_row(name, ", ".join(raw.get("profiles") or {}), str(raw.get("description", "")), str(path))
    console.print(table)


@app.command("show")
def show(name: RecipeArg = "countdown", profile: ProfileOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved recipe (base + profile + overrides) as YAML."""
    from r1lite.recipe.load import load_recipe, to_yaml

    console.print(to_yaml(load_recipe(name, profile, set_ or [])), end="", markup=False, soft_wrap=True)

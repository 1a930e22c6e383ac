"""The package's shape: no import circle (counting every import, wherever it is written), packages that import
only downwards, no module over ~500 lines, one module that knows a run directory's file names, and an architecture
page that matches the code."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "r1lite"
RUN_FILES = ("config.yaml", "stages.json", "summary.json", "hardware.json", "oom.json", "sweep.json")
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# The one-way walk: a package imports its own level and the levels below, never above. Within a level, packages
# may import each other as long as no module circle results (the circle test).
LAYERS = (
    ("r1lite", "r1lite.errors", "r1lite.fileio", "r1lite.ui", "r1lite.stats"),  # core: no r1lite imports to speak of
    ("r1lite.tasks", "r1lite.machine"),  # what a problem is; this machine's processes and precision
    ("r1lite.recipe",),  # what a run is asked to do
    ("r1lite.plan",),  # shapes, bytes and seconds, before anything loads
    ("r1lite.train", "r1lite.runs"),  # what the stages train and decode with; a run's directory and its lifecycle
    ("r1lite.stages",),  # one module per pipeline stage
    ("r1lite.analyze", "r1lite.orchestrate", "r1lite.share"),  # what uses the stages: reports, pipeline, export
    ("r1lite.cli", "r1lite.__main__"),  # parses and calls one library function
)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every r1lite module `path` imports, at its top or inside a function: an import is an edge wherever it is
    written (only `if TYPE_CHECKING:` blocks, which never run, are left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for sub in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: imports_of(path, set(modules)) for name, path in modules.items()}
    for name in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[name] |= {p for p in _parents(name) if p in graph and p != name}
    return graph


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int:
    """The level of a module's package in LAYERS (a module of the core is its own package)."""
    for level, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages if p != "r1lite") or module in packages:
            return level
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add its package to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer into a higher one (package __init__ edges excluded: they are the package)."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if b not in _parents(a) and b != "r1lite" and layer_of(b) > layer_of(a)
    )


def test_no_import_circle_between_r1lites_modules():
    assert find_cycle(import_graph()) is None


def test_packages_import_only_their_own_layer_and_the_layers_below():
    assert upward_imports(import_graph()) == []


def test_the_checks_see_a_circle_and_an_upward_import_hidden_in_a_function(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    hidden = tmp_path / "fileio.py"  # fileio with an import of the run directory inside a function
    hidden.write_text((PACKAGE / "fileio.py").read_text() + "\n\ndef f():\n    from r1lite.runs.rundir import Run\n")
    graph = import_graph()
    graph["r1lite.fileio"] = imports_of(hidden, set(graph))
    assert "r1lite.runs.rundir" in graph["r1lite.fileio"]
    assert find_cycle(graph) is not None  # rundir imports fileio
    assert "r1lite.fileio -> r1lite.runs.rundir" in upward_imports(graph)
    typed = tmp_path / "typed.py"  # what only a type checker reads is not an import
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from r1lite.runs.rundir import Run\n")
    assert imports_of(typed, set(graph)) == set()


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_holds_more_than_about_500_lines(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= 520, f"{name} has {lines} lines: split it by idea"


def _path_literals(path: Path) -> list[tuple[int, str]]:
    """String literals that name a run directory's file (not prose that mentions one)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type != tokenize.STRING:
            continue
        try:
            value = ast.literal_eval(tok.string)
        except ValueError:  # an f-string: its literal parts
            value = re.sub(r"\{[^}]*\}", "", tok.string.strip("fFrR\"'"))
        if isinstance(value, str) and any(value == n or value.endswith("/" + n) for n in RUN_FILES):
            out.append((tok.start[0], value))
    return out


def test_a_run_directorys_file_names_live_in_one_module():
    owner = PACKAGE / "runs" / "rundir.py"
    elsewhere = {
        f"{p.relative_to(ROOT)}:{line}": value
        for p in PACKAGE.rglob("*.py")
        if p != owner
        for line, value in _path_literals(p)
    }
    assert elsewhere == {}
    assert {v for _, v in _path_literals(owner)} >= {"config.yaml", "stages.json", "summary.json", "hardware.json"}


def test_the_architecture_page_names_every_module_and_every_layer():
    page = ARCHITECTURE.read_text(encoding="utf-8")
    tree = page[page.index("```") + 3 :]
    tree = tree[: tree.index("```")]
    named = set(re.findall(r"([a-z_]+\.py|[a-z_]+/)", tree))
    packages = {p.parent for p in PACKAGE.rglob("__init__.py")}
    files = {p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    folders = {f"{p.name}/" for p in packages if p != PACKAGE}
    missing = sorted(files - named) + sorted(folders - named)
    assert missing == []
    gone = sorted(n for n in named if n.endswith(".py") and n not in files and n != "__init__.py")
    assert gone == []
    for packages in LAYERS[1:]:  # the page says the order the test enforces
        for package in packages:
            assert f"{package.removeprefix('r1lite.')}/" in page or package == "r1lite.__main__", package

"""The package's shape: no import circle, one module that knows a run directory's file names, a README tree
that matches the code."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "r1lite"
RUN_FILES = ("config.yaml", "stages.json", "summary.json", "hardware.json", "oom.json", "sweep.json")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The r1lite modules a module imports when it is imported (not those its functions import later)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
                found |= {f"{sub.module}.{a.name}" for a in sub.names}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _top_level_imports(path, set(modules)) for name, path in modules.items()}
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


def test_no_import_circle_between_r1lites_modules():
    assert find_cycle(import_graph()) is None


def test_the_circle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = import_graph()
    graph["r1lite.fileio"] = {*graph["r1lite.fileio"], "r1lite.runs.rundir"}  # rundir imports fileio
    assert find_cycle(graph) is not None


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


def test_the_readmes_architecture_tree_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture") :]
    tree = section[section.index("```") + 3 :]
    tree = tree[: tree.index("```")]
    named = set(re.findall(r"([a-z_]+\.py|[a-z_]+/)", tree))
    packages = {p.parent for p in PACKAGE.rglob("__init__.py")}
    files = {p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    folders = {f"{p.name}/" for p in packages if p != PACKAGE}
    missing = sorted(files - named) + sorted(folders - named)
    assert missing == []
    gone = sorted(n for n in named if n.endswith(".py") and n not in files and n != "__init__.py")
    assert gone == []

"""The package's imports run one way: no cycles (lazy imports included) and no floor imports up.

Every ``import`` in ``platform/crashchat`` is read from the source (inside functions too), so a
lazy import that would close a cycle counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "platform"
FOUNDATIONS = ("data", "models", "tracking", "config")
CONSUMERS = ("training", "evaluation", "serving")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted((ROOT / "crashchat").rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            named |= {module} | {f"{module}.{a.name}" for a in node.names}
    found = set()
    for m in named:
        while m and m not in MODULES:
            m = m.rpartition(".")[0]
        if m and m != name:
            found.add(m)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return groups


def test_the_import_walk_sees_lazy_imports() -> None:
    # lifecycle imports the builder only inside serve_up: the walk must still see it.
    assert "crashchat.serving.builder" in GRAPH["crashchat.serving.lifecycle"]
    assert len(MODULES) > 50


def test_no_module_imports_one_that_imports_it_back() -> None:
    cycles = _cycles()
    assert cycles == [], "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(GRAPH[m] & set(c))}" for m in c)
        for c in cycles
    )


@pytest.mark.parametrize("floor", FOUNDATIONS)
def test_foundations_never_import_consumers(floor: str) -> None:
    bad = {
        m: sorted(t for t in targets if _floor(t) in CONSUMERS)
        for m, targets in GRAPH.items()
        if _floor(m) == floor
    }
    assert {m: t for m, t in bad.items() if t} == {}


def test_consumers_never_import_each_other() -> None:
    bad = {
        m: sorted(t for t in targets if _floor(t) in CONSUMERS and _floor(t) != _floor(m))
        for m, targets in GRAPH.items()
        if _floor(m) in CONSUMERS
    }
    assert {m: t for m, t in bad.items() if t} == {}


def _in_cli(module: str) -> bool:
    return module == "crashchat.cli" or module.startswith("crashchat.cli.")


def test_nothing_outside_the_command_layer_imports_it() -> None:
    # The library never calls its own command line; only jobs/*.py and the console script do.
    assert {
        m: sorted(t for t in ts if _in_cli(t)) for m, ts in GRAPH.items() if not _in_cli(m)
    } == {m: [] for m in GRAPH if not _in_cli(m)}


def test_command_modules_share_only_the_common_module() -> None:
    # The package assembles the commands; a command module importing it would close a cycle.
    commands = [
        m for m in GRAPH if _in_cli(m) and m not in ("crashchat.cli", "crashchat.cli.__main__")
    ]
    assert len(commands) >= 10
    bad = {
        m: sorted(t for t in GRAPH[m] if _in_cli(t) and t != "crashchat.cli.common")
        for m in commands
    }
    assert {m: t for m, t in bad.items() if t} == {}

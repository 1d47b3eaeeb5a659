"""The package's import graph, read from the source (every `import preftune…` / `from preftune… import`,
at module level and inside functions): no cycles, so data flows one way; and no `fcntl` anywhere, so
preftune imports on Windows (checked by importing every module with fcntl made unimportable)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "preftune").rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(name: str) -> set[str]:
    """The preftune modules `name` imports anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..data import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


def graph() -> dict[str, set[str]]:
    return {name: imports(name) for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def all_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles until none is left, each reported then broken at its last edge (so all are listed)."""
    edges = {k: set(v) for k, v in edges.items()}
    cycles = []
    while cycle := find_cycle(edges):
        cycles.append(cycle)
        edges[cycle[-2]].discard(cycle[-1])
    return cycles


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "preftune.config" in edges["preftune.cli"]
    assert "preftune.dpo.engines.base" in edges["preftune.dpo.engines.fast"]
    assert "preftune.dpo.refcache" in edges["preftune.dpo.evaluate"]  # an import inside a function counts too


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycles = all_cycles(graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


# What preftune.config may import: the error type, the hub-id rule, and the registries' names as plain
# data (config/registries.py, which imports nothing; the registries are built from it).
CONFIG_IMPORTS = {"preftune.errors", "preftune.hubids", "preftune.config.registries", "preftune.config.fields",
                  "preftune.config.publish"}


def closure(name: str, edges: dict[str, set[str]]) -> set[str]:
    """Every preftune module `name` imports, directly or through others."""
    seen, todo = set(), [name]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_config_imports_only_names():
    """config holds names and ranges: it imports the registries' name tables and nothing that trains."""
    edges = graph()
    assert edges["preftune.config"] <= CONFIG_IMPORTS
    assert edges["preftune.config.registries"] == set()
    assert closure("preftune.config", edges) <= CONFIG_IMPORTS  # errors and hubids import no wing either


def test_the_cli_and_config_load_no_torch():
    """`preftune --help` and config stay fast: importing them loads no torch, transformers or trl."""
    code = ("import sys, preftune.cli, preftune.config.files; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_module_imports_fcntl():
    users = [name for name, path in MODULES.items()
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if (isinstance(node, ast.Import) and any(a.name == "fcntl" for a in node.names))
             or (isinstance(node, ast.ImportFrom) and node.module == "fcntl")]
    assert users == [], "use filelock (cross-platform), not fcntl"


IMPORT_ALL = """
import importlib, sys
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed.append(f"{name}: {e}")
print("\\n".join(failed))
"""


def test_every_module_imports_without_fcntl():
    modules = [m for m in MODULES if not m.endswith("__main__")]  # importing __main__ runs the CLI
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, *modules], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""

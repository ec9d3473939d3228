"""The package's modules import on their own, and their imports of one another point one way (no cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_incr"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _internal_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The hf_incr modules ``name`` imports anywhere in its file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from package import module` depends on that module, not on the package's __init__ (which Python runs
            # first for any of its modules anyway); the package itself only for names that are not modules.
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
            candidates = submodules + ([target] if len(submodules) < len(node.names) else [])
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        imported.update(c for c in candidates if c in modules and c != name)
    return imported


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # The package's __init__ re-exports everything; it is the root, not a part of any cycle.
    return {
        name: _internal_imports(name, path, modules) - {"hf_incr"}
        for name, path in modules.items()
        if name != "hf_incr"
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 15
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_from_a_package_import_a_module_depends_on_the_module(tmp_path):
    modules = {"p": tmp_path / "p" / "__init__.py", "p.a": tmp_path / "p" / "a.py", "p.b": tmp_path / "p" / "b.py"}
    modules["p.a"].parent.mkdir()
    modules["p.a"].write_text("from . import b\nfrom . import b as c, helper\nfrom .b import thing\n")
    assert _internal_imports("p.a", modules["p.a"], modules) == {"p.b", "p"}  # `helper` is a name of p
    modules["p.a"].write_text("from . import b\n")
    assert _internal_imports("p.a", modules["p.a"], modules) == {"p.b"}


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_incr")):
                offenders += [f"{name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert not offenders


def test_each_module_imports_in_isolation():
    # One fresh interpreter; before each module, every hf_incr module is dropped from sys.modules, so an import that
    # only works after another hf_incr module was imported first fails here (torch and transformers stay loaded).
    names = sorted(set(_modules()) - {"hf_incr"})
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'hf_incr' or m.startswith('hf_incr.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "    print('imported', name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("imported") == len(names)

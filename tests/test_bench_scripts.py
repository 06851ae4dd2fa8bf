"""The benchmark scripts are not run by the test suite (they take minutes to hours), so an API change can break
them unnoticed until someone measures. This catches the commonest kind of that rot without running them: every
script compiles, and every name it imports from ``sobre`` (at the top or inside a function) still exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _sobre_imports(tree: ast.AST) -> list[tuple[str, str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "sobre" or node.module.startswith("sobre.")):
            out += [(node.module, a.name, node.lineno) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name == "sobre" or a.name.startswith("sobre.")]
    return out


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 10, SCRIPTS


def _missing(source: str, name: str) -> list[str]:
    tree = ast.parse(source, filename=name)
    compile(tree, name, "exec")
    missing = []
    for module, attr, line in _sobre_imports(tree):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{name}:{line}: import {module}: {e}")
            continue
        if attr and not hasattr(mod, attr):
            try:  # a submodule imported by name (from sobre import image)
                importlib.import_module(f"{module}.{attr}")
            except ImportError:
                missing.append(f"{name}:{line}: {module} has no {attr!r}")
    return missing


def test_the_check_finds_a_vanished_name():
    src = "def f():\n    from sobre.sim import BrainSimulator, no_such_thing\n    import sobre.no_such_module\n"
    found = _missing(src, "x.py")
    assert len(found) == 2 and "no_such_thing" in found[0] and "no_such_module" in found[1], found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_compiles_and_its_sobre_imports_exist(script: Path):
    missing = _missing(script.read_text(), script.name)
    assert not missing, "\n".join(missing)

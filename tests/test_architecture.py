"""The layering of the code, checked on the real import graph (import-linter and grimp).

- Layers (``[tool.importlinter]`` in pyproject.toml): base and errors at the bottom; image (and
  samples); privacy; catalog; pacs; sim, learn, validate; cli at the top. A package imports only
  packages below it.
- No package imports another package's private modules (``sobre.x._y`` from outside ``sobre.x``):
  each package's ``__init__`` says what is public.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e .[dev])")


def test_layers_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken" in run.stdout


def test_no_package_imports_another_packages_private_modules():
    import grimp

    graph = grimp.build_graph("sobre")
    bad = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            parts = imported.split(".")
            private = next((i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None)
            if private is None or private < 2:
                continue
            owner = ".".join(parts[:private])  # the package whose private module this is
            if not (importer == owner or importer.startswith(owner + ".")):
                bad.append(f"{importer} -> {imported}")
    assert bad == [], "imports of another package's private modules:\n" + "\n".join(bad)

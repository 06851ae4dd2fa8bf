"""Helpers shared by CLI commands."""

from __future__ import annotations

import json
import sys


def add_workspace_arg(p) -> None:
    p.add_argument("-w", "--workspace", default=".",
                   help="workspace folder (default: the current folder or the nearest parent holding sobre.toml)")


def add_json_arg(p) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def open_workspace(ns):
    from sobre.catalog import Workspace

    return Workspace.open(ns.workspace)


def emit_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def show_progress(ns) -> bool:
    return not getattr(ns, "json", False) and sys.stderr.isatty()

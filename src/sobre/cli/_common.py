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


class _Bars:
    """Renders library progress callbacks ``progress(stage, done, total)`` as one tqdm bar per stage."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            if not total or total <= 1:
                return
            from tqdm import tqdm

            for other in self.bars.values():  # one stage at a time
                other.close()
            bar = self.bars[stage] = tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True, file=sys.stderr)
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class progress_bars:
    """``with progress_bars(ns) as progress:`` a callback for the library, bars on a terminal, silence otherwise."""

    def __init__(self, ns) -> None:
        self.enabled = show_progress(ns)
        self.bars = _Bars() if self.enabled else None

    def __enter__(self):
        if self.bars is None:
            from sobre.base import no_progress

            return no_progress
        return self.bars

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.close()

"""Helpers shared by CLI commands."""

from __future__ import annotations

import json
import sys


def add_workspace_arg(p) -> None:
    p.add_argument("-w", "--workspace", default=".",
                   help="workspace folder (default: the current folder or the nearest parent holding sobre.toml)")


def add_json_arg(p) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_scheduler_arg(p) -> None:
    p.add_argument("--scheduler", metavar="ADDR", default=None,
                   help='where the work runs: "local" (this machine) or a Dask scheduler, tcp://host:8786 '
                        "(default: [compute] scheduler of the workspace, else local; see docs/cluster.md)")


def open_compute_of(ns, ws=None):
    """The Compute of ``--scheduler`` (else the workspace's ``[compute]``, else local), said on stderr when a cluster."""
    from sobre.base import ComputeSettings, open_compute

    settings = ws.settings.compute if ws is not None else ComputeSettings()
    if getattr(ns, "scheduler", None):
        settings = settings.model_copy(update={"scheduler": ComputeSettings(scheduler=ns.scheduler).scheduler})
    compute = open_compute(settings)
    if compute.distributed and not getattr(ns, "json", False):
        board = f"; dashboard {compute.dashboard}" if compute.dashboard else ""
        print(f"cluster: {compute.scheduler}, {compute.n_workers} worker(s){board}", file=sys.stderr)
    return compute


_OPENED: list = []  # workspaces opened by the running command; closed by ``main`` when it ends


def track(ws):
    """Remember ``ws`` so that :func:`close_opened` closes it when the command ends (in-process callers)."""
    _OPENED.append(ws)
    return ws


def close_opened() -> None:
    while _OPENED:
        try:
            _OPENED.pop().close()
        except Exception:  # noqa: BLE001 - closing after an error must not hide the error
            pass


def open_workspace(ns):
    from sobre.catalog import Workspace

    return track(Workspace.open(ns.workspace))


def emit_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def show_progress(ns) -> bool:
    return not getattr(ns, "json", False) and sys.stderr.isatty()


class _Bars:
    """Renders library progress callbacks ``progress(stage, done, total)`` as one tqdm bar per stage."""

    def __init__(self) -> None:
        self.bars: dict = {}
        self.counts: dict = {}  # stage -> {"retried": n, "failed": n}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        from sobre.base import FAILED, RETRIED

        if stage.endswith((RETRIED, FAILED)):  # tasks of a distributed job: shown on the stage's bar
            base = stage.removesuffix(RETRIED).removesuffix(FAILED)
            self.counts.setdefault(base, {})[stage[len(base) + 2:-1]] = done
            bar = self.bars.get(base)
            if bar is not None:
                bar.set_postfix(self.counts[base], refresh=True)
            return
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

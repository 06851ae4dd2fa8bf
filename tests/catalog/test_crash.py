"""Crash safety: ``sobre ingest`` killed with SIGKILL at several moments leaves a consistent catalog,
and running it again completes it with nothing lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sobre.catalog import Workspace

from .conftest import SEED, write_series

N_SERIES, N_SLICES = 12, 90  # 1,080 small files: several batches of 256, so that a kill can land between two


def _counts(db) -> tuple:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT (SELECT count(*) FROM file), (SELECT count(*) FROM series), "
                               "(SELECT count(*) FROM pending_series)").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return (-1, -1, -1)


def _start(data, ws_dir, log):
    return subprocess.Popen(
        [sys.executable, "-m", "sobre", "ingest", str(data), "-w", str(ws_dir), "--json"],
        stdout=subprocess.PIPE, stderr=log, start_new_session=True, cwd=ws_dir,
    )


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pgid: int, timeout: float = 5.0) -> bool:
    """True once no process of the group is left (the header-reading workers die with the ingest)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigkill_during_ingest_then_resume(tmp_path, consistent, dump):
    if not hasattr(os, "killpg"):
        pytest.skip("needs POSIX process groups")
    data = tmp_path / "data"
    for s in range(N_SERIES):
        write_series(data / f"P{s:02d}" / "series", {"patient_id": f"P{s:02d}", "patient_age": f"{30 + s:03d}Y",
                                                     "institution": ["A", "B", "C"][s % 3]},
                     modality="MR" if s % 2 else "CT", shape=(16, 16, N_SLICES), seed=SEED + s, uid_seed=f"crash{s}")
    n_files = N_SERIES * N_SLICES
    ws_dir = tmp_path / "ws"
    Workspace.init(ws_dir).close()
    db = ws_dir / "catalog.sqlite"
    rng = np.random.default_rng(SEED)
    log = open(tmp_path / "stderr.log", "wb")
    # where each run is killed: while headers are read (worker processes up, nothing written yet), just
    # after the next batch of files is committed, and after some series are assembled -- each then a
    # few random milliseconds later, so that the kill also lands inside transactions
    moments = [("scanning", 0), ("files", 1), ("series", int(rng.integers(1, 5))), ("series", int(rng.integers(2, 6)))]
    kills, states = 0, []
    for what, n in moments:
        before = _counts(db)
        proc = _start(data, ws_dir, log)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 120:
            now = _counts(db)
            if what == "scanning" and (_children(proc.pid) or now != before):
                break
            if what == "files" and now[0] > before[0]:
                break
            if what == "series" and now[1] >= before[1] + n:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.01))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stdout.close()
        assert _gone(proc.pid), "header-reading worker processes outlived the killed ingest"
        state = consistent(db)  # integrity, every file assembled or pending, no series without files
        states.append((what, state))
        if proc.returncode == 0:
            break
    assert kills >= 3, f"only {kills} kills landed before the ingest finished: {states}"
    assert any(0 < s["files"] < n_files for _, s in states), states  # killed between batches of files
    assert any(s["pending"] and s["series"] for _, s in states), states  # killed between series assemblies

    # resume to the end
    proc = _start(data, ws_dir, log)
    out, _ = proc.communicate(timeout=300)
    proc.stdout.close()
    log.close()
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
    report = json.loads(out)
    assert report["skipped"] == [] and report["problems"] == []
    assert report["new"] + report["known"] == n_files
    final = consistent(db)
    assert final == {"files": n_files, "series": N_SERIES, "pending": 0}

    # equal to one clean, uninterrupted run over the same files
    clean = Workspace.init(tmp_path / "clean")
    clean.ingest([data], workers=1)
    resumed = Workspace.open(ws_dir)
    assert dump(resumed, natural=True) == dump(clean, natural=True)
    assert [r["n_files"] for r in resumed.records()] == [N_SLICES] * N_SERIES
    resumed.close()
    clean.close()

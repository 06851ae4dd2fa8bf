"""Annotation versions survive a kill -9 of a real server (uvicorn subprocess) in the middle of saves:
every version is complete (its file there, its hash right) or absent, and every 201 answer is kept."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.server.conftest import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(ws_root, port):
    proc = subprocess.Popen([sys.executable, "-m", "sobre", "serve", "-w", str(ws_root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


def _login(port, user):
    import httpx

    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    r = c.post("/api/auth/login", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def test_saves_survive_kill_9(ws):
    import httpx

    recs = sorted(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])
    shape = recs[0]["shape"]
    root = ws.root
    ws.close()
    port = _port()
    proc = _start(root, port)
    stored: list[tuple[int, str]] = []  # (version id, sha256) of every 201
    answers = {"201": 0, "409": 0, "other": 0}
    stop = threading.Event()

    def saver(n: int) -> None:
        c = _login(port, "annotator" if n % 2 == 0 else "ann2")
        rng = np.random.default_rng(n)
        parent = None
        key = recs[n % len(recs)]["series_uid"]
        try:
            while not stop.is_set():
                mask = (rng.random(shape) < 0.3).astype(np.uint8)
                r = c.post(f"/api/projects/demo/series/{key}/annotations/lesions-{n}", content=mask.tobytes(order="F"),
                           params={"parent": parent} if parent else {},
                           headers={"Content-Type": "application/octet-stream"})
                if r.status_code == 201:
                    stored.append((r.json()["id"], r.json()["sha256"]))
                    parent = r.json()["id"]
                    answers["201"] += 1
                else:
                    answers["409" if r.status_code == 409 else "other"] += 1
        except httpx.HTTPError:
            pass  # the server was killed
        finally:
            c.close()

    threads = [threading.Thread(target=saver, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while answers["201"] < 12 and time.monotonic() < deadline:  # saves are flowing (a loaded machine is slow)
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    stop.set()
    for t in threads:
        t.join(30)
    assert answers["201"] > 10 and answers["other"] == 0, answers

    from sobre.catalog import Workspace

    con = sqlite3.connect(root / "catalog.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with Workspace.open(root) as w:
        versions = {v.id: v for v in w.annotations.versions()}
        for vid, sha in stored:  # every answered save is there, with its content
            assert versions[vid].sha256 == sha
        for v in versions.values():  # and every version is whole: its file exists and hashes right
            assert np.asarray(w.annotations.content(v).array).shape == tuple(shape)
        n_before = len(versions)
    # the restarted server carries on
    proc = _start(root, port)
    try:
        c = _login(port, "annotator")
        r = c.post(f"/api/projects/demo/series/{recs[0]['series_uid']}/annotations/after",
                   content=np.zeros(shape, np.uint8).tobytes(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        assert len(c.get("/api/projects/demo/annotations").json()) == n_before + 1
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        proc.stderr.close()

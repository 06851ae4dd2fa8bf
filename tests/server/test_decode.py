"""Lists and series metadata never wait for pixel decodes; decodes run in a worker process, once per series.

The metadata's geometry comes from the catalog and must be the decoded volume's; a decode that is
slow (here: held) must not hold up lists or metadata; a worker that dies is replaced.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sobre.server import _decode, _routes_voxels

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GEOMETRY = ("dtype", "dimensions", "components", "spacing", "origin", "direction", "affine_lps", "n_bytes",
            "source_dtype", "is_2d")


def _mr(ws) -> list[dict]:
    return sorted(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])


def test_metadata_decodes_nothing_and_is_the_decoded_geometry(app, login, ws, monkeypatch):
    real = _routes_voxels.decode
    calls = []
    monkeypatch.setattr(_routes_voxels, "decode", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    c = login("viewer")
    details = {r["series_uid"]: c.get(f"/api/projects/demo/series/{r['series_uid']}") for r in _mr(ws)}
    assert all(d.status_code == 200 for d in details.values()) and len(details) == 4
    assert calls == []  # no header read, no decode: the catalog answered
    ctx = app.state.ctx
    for rec in _mr(ws):
        vol = _routes_voxels.volume_of(ctx, rec).geometry()
        meta = details[rec["series_uid"]].json()["volume"]
        assert {k: meta[k] for k in GEOMETRY} == {k: vol[k] for k in GEOMETRY}
    assert len(calls) == 4


def test_lists_and_metadata_are_answered_while_a_decode_is_held(app, login, ws, monkeypatch):
    held, entered = threading.Event(), threading.Event()

    def slow_decode(*a, **kw):
        entered.set()
        assert held.wait(60)
        return real(*a, **kw)

    real = _routes_voxels.decode
    monkeypatch.setattr(_routes_voxels, "decode", slow_decode)
    c = login("viewer")
    recs = _mr(ws)
    result = {}
    viewer = threading.Thread(target=lambda: result.setdefault(
        "volume", c.get(f"/api/projects/demo/series/{recs[0]['series_uid']}/volume")))
    viewer.start()
    try:
        assert entered.wait(60)
        t = time.monotonic()
        assert c.get("/api/projects").status_code == 200
        assert c.get("/api/projects/demo/series").json()["total"] == 4
        assert c.get("/api/projects/demo/subjects").status_code == 200
        for rec in recs:  # the held series too
            assert c.get(f"/api/projects/demo/series/{rec['series_uid']}").status_code == 200
        waited = time.monotonic() - t
        assert "volume" not in result  # the decode was still held all that time
    finally:
        held.set()
        viewer.join(60)
    assert result["volume"].status_code == 200 and waited < 30


def test_one_decode_for_many_viewers_of_a_series(app, ws, monkeypatch):
    real = _routes_voxels.decode
    calls = []

    def counted(*a, **kw):
        calls.append(a)
        time.sleep(0.2)  # others arrive while it runs
        return real(*a, **kw)

    monkeypatch.setattr(_routes_voxels, "decode", counted)
    rec = _mr(ws)[1]
    got = []
    threads = [threading.Thread(target=lambda: got.append(_routes_voxels.volume_of(app.state.ctx, rec)))
               for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(got) == 8 and len(calls) == 1 and all(v is got[0] for v in got)


def test_a_decoding_process_that_dies_is_replaced(login, ws):
    c = login("viewer")
    recs = _mr(ws)
    first = c.get(f"/api/projects/demo/series/{recs[0]['series_uid']}/volume")
    assert first.status_code == 200
    pids = list(_decode._pool[1]._processes)  # the worker(s) that decoded it
    assert pids and os.getpid() not in pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    second = c.get(f"/api/projects/demo/series/{recs[1]['series_uid']}/volume")
    assert second.status_code == 200 and len(second.content) == len(first.content)
    assert not set(_decode._pool[1]._processes) & set(pids)


def test_decode_workers_option_is_checked(capsys):
    from sobre.cli import main

    assert main(["serve", "--decode-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--decode-workers: expected a whole number from 1 to 64, found '0'" in err and "Traceback" not in err


def test_server_start_sets_the_request_threads_and_starts_the_decoder(ws):
    import anyio.to_thread
    from fastapi.testclient import TestClient

    from sobre.server import ServerSettings, create_app

    app = create_app(ws, ServerSettings(threads=77))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens) == 77
        assert _decode._pool is not None
    assert _decode._pool is None  # stopped with the app

"""The workstation API end to end (in process): browse, voxels, annotations, audit, and bad input.

Bad input always gets a JSON error ``{what, expected, found}`` with the right status, nothing stored
changes, and the server goes on serving the others.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tests.server.conftest import PASSWORD, Client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def mr(ws):
    rec = min(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])
    return rec["series_uid"]


def _stored(ws) -> tuple[int, list[str]]:
    files = sorted(str(p.relative_to(ws.root)) for p in (ws.root / "annotations").rglob("*") if p.is_file()) \
        if (ws.root / "annotations").exists() else []
    return len(ws.annotations.versions()), files


def _error(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert {"error", "status", "what", "expected", "found", "fix"} <= set(body) and body["what"]
    return body


def test_browse(login, ws, mr):
    c = login("viewer")
    projects = c.get("/api/projects").json()
    assert [p["name"] for p in projects] == ["demo"]  # not "other": no role there
    assert projects[0]["role"] == "viewer" and "annotation.save" not in projects[0]["actions"]
    assert projects[0]["datasets"][0]["ref"] == "mr@v1"
    series = c.get("/api/projects/demo/series").json()
    assert series["total"] == 4 and {s["modality"] for s in series["items"]} == {"MR"}
    assert all(s["simulated"] is False and s["key"] for s in series["items"])
    assert c.get("/api/projects/demo/series", params={"where": "age >= 30"}).json()["total"] == 3
    assert c.get("/api/projects/demo/series", params={"cohort": "mr", "limit": 1}).json()["total"] == 4
    err = _error(c.get("/api/projects/demo/series", params={"where": "agee > 3"}), 400)
    assert err["error"] == "ExpressionError" and "unknown field 'agee'" in err["what"] and "age" in err["expected"]
    _error(c.get("/api/projects/demo/series", params={"cohort": "ct"}), 404)  # not a cohort of this project
    frozen = c.get("/api/projects/demo/series", params={"dataset": "mr@v1"}).json()
    assert frozen["total"] == 4 and all(s["in_catalog"] and s["dataset"] == "mr@v1" for s in frozen["items"])
    subjects = c.get("/api/projects/demo/subjects").json()
    assert subjects["total"] == 4 and subjects["items"][0]["variables"]["diagnosis"] == "healthy"
    s01 = c.get("/api/projects/demo/subjects/S01").json()
    assert s01["studies"][0]["series"][0]["series_uid"] == mr
    _error(c.get("/api/projects/demo/subjects/S03"), 404)  # the CT subject is not in this project
    ct = ws.query('modality == "CT"')[0]["series_uid"]
    _error(c.get(f"/api/projects/demo/series/{ct}"), 404)
    assert {f["name"] for f in c.get("/api/projects/demo/fields").json()} >= {"age", "diagnosis", "modality"}
    assert c.get("/api/projects/demo/cohorts").json()[0]["n_series"] == 4
    assert c.get("/api/projects/demo/datasets").json()[0]["simulated"] is False


def test_voxels_match_the_catalog(login, ws, mr):
    c = login("viewer")
    detail = c.get(f"/api/projects/demo/series/{mr}").json()
    g = detail["volume"]
    img = ws.load(mr)
    ref = np.asarray(img.array)
    assert g["dimensions"] == list(ref.shape) and g["layout"] == "i-fastest" and g["byte_order"] == "little"
    assert np.allclose(np.asarray(g["affine_lps"]), img.affine)
    assert np.allclose(g["origin"], img.affine[:3, 3]) and np.allclose(g["spacing"], img.spacing)
    d = np.asarray(g["direction"]).reshape(3, 3)  # rows: unit vectors of i, j, k
    assert np.allclose(d.T * g["spacing"], img.affine[:3, :3])
    r = c.get(f"/api/projects/demo/series/{mr}/volume")
    assert r.status_code == 200 and int(r.headers["content-length"]) == g["n_bytes"] == len(r.content)
    assert r.headers["cache-control"] == "no-store" and r.headers["x-sobre-dimensions"] == ",".join(map(str, ref.shape))
    vol = np.frombuffer(r.content, dtype=np.dtype(g["dtype"]).newbyteorder("<")).reshape(ref.shape, order="F")
    assert np.array_equal(vol, ref)
    # a Range of whole slices
    plane = ref.shape[0] * ref.shape[1] * vol.itemsize
    part = c.get(f"/api/projects/demo/series/{mr}/volume", headers={"Range": f"bytes={2 * plane}-{4 * plane - 1}"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes {2 * plane}-{4 * plane - 1}/{len(r.content)}"
    assert part.content == r.content[2 * plane:4 * plane]
    _error(c.get(f"/api/projects/demo/series/{mr}/volume", headers={"Range": "bytes=999999-"}), 416)
    # slices along each axis
    for axis, idx, want in (("k", 3, ref[:, :, 3].T), ("j", 5, ref[:, 5, :].T), ("i", 7, ref[7, :, :].T)):
        s = c.get(f"/api/projects/demo/series/{mr}/slices/{idx}", params={"axis": axis})
        got = np.frombuffer(s.content, dtype=np.dtype(g["dtype"])).reshape(int(s.headers["x-sobre-height"]),
                                                                           int(s.headers["x-sobre-width"]))
        assert np.array_equal(got, want), axis
    png = c.get(f"/api/projects/demo/series/{mr}/slices/2", params={"format": "png", "window": "500,1000"})
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    _error(c.get(f"/api/projects/demo/series/{mr}/slices/99"), 404)
    thumb = c.get(f"/api/projects/demo/series/{mr}/thumbnail.png")
    assert thumb.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.get(f"/api/projects/demo/series/{mr}/thumbnail.png").content == thumb.content  # cached
    assert list((ws.layout.cache_for("thumbnails")).glob("*.png"))
    # every view is in the audit log, with who and which series
    entries = [json.loads(line) for line in ws.layout.audit_log.read_text().splitlines()]
    views = [e for e in entries if e["action"].startswith("view.")]
    assert {e["action"] for e in views} >= {"view.series", "view.volume", "view.slice", "view.thumbnail"}
    assert all(e["actor"] == "viewer" and e["data"]["series"] == mr for e in views)


def test_annotation_flow(login, ws, mr):
    a1, a2, rev = login("annotator"), login("ann2"), login("reviewer")
    url = f"/api/projects/demo/series/{mr}/annotations/lesions"
    shape = ws.series(mr)["shape"]
    mask = np.zeros(shape, np.uint8)
    mask[2:6, 3:7, 1:4] = 1
    mask[10, 10, 5] = 2
    # a mask, gzip-compressed, i fastest
    r = a1.post(url, content=gzip.compress(mask.tobytes(order="F")), params={"tool": "brush"},
                headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert (v1["number"], v1["branch"], v1["status"], v1["author"]) == (1, "main", "draft", "annotator")
    assert v1["summary"]["segments"] == {"lesion": 48, "<b>liver</b>": 1} and "path" not in v1
    got = a2.get(f"/api/projects/demo/annotations/{v1['id']}/content")
    assert np.array_equal(np.frombuffer(got.content, np.uint8).reshape(shape, order="F"), mask)
    # two annotators start from v1: the second save is a conflict naming the head, then a branch
    m2 = mask.copy()
    m2[0, 0, 0] = 1
    v2 = a1.post(url, content=m2.tobytes(order="F"), params={"parent": v1["id"]},
                 headers={"Content-Type": "application/octet-stream"}).json()
    r = a2.post(url, content=mask.tobytes(order="F"), params={"parent": v1["id"]},
                headers={"Content-Type": "application/octet-stream"})
    body = _error(r, 409)
    assert body["error"] == "AnnotationConflict" and body["head"]["id"] == v2["id"]
    assert body["head"]["author"] == "annotator"
    v3 = a2.post(url, content=mask.tobytes(order="F"), params={"parent": v1["id"], "new_branch": "true"},
                 headers={"Content-Type": "application/octet-stream"}).json()
    assert (v3["number"], v3["parent"], v3["branch"]) == (3, 1, "ann2-3")
    heads = a1.get(f"/api/projects/demo/series/{mr}/annotations").json()["heads"]
    assert sorted((h["branch"], h["number"]) for h in heads) == [("ann2-3", 3), ("main", 2)]
    # submit (author only) and review (not the author)
    _error(a2.post(f"/api/projects/demo/annotations/{v2['id']}/submit"), 403)
    assert a1.post(f"/api/projects/demo/annotations/{v2['id']}/submit").json()["status"] == "submitted"
    queue = rev.get("/api/projects/demo/review-queue").json()
    assert [v["id"] for v in queue] == [v2["id"]]
    _error(rev.post(f"/api/projects/demo/annotations/{v2['id']}/review", json={"decision": "reject"}), 400)
    done = rev.post(f"/api/projects/demo/annotations/{v2['id']}/review",
                    json={"decision": "accept", "comment": "good"}).json()
    assert done["status"] == "accepted" and done["reviews"][0]["reviewer"] == "reviewer"
    _error(rev.post(f"/api/projects/demo/annotations/{v2['id']}/review", json={"decision": "accept"}), 409)
    # labels, points, boxes as JSON
    lab = a1.post(f"/api/projects/demo/series/{mr}/annotations/labels",
                  json={"kind": "labels", "content": {"pneumonia": 1, "volume_ml": 12.5}, "status": "submitted"})
    assert lab.status_code == 201 and lab.json()["status"] == "submitted"
    pts = a1.post(f"/api/projects/demo/series/{mr}/annotations/landmarks",
                  json={"kind": "points", "content": [{"name": "apex", "position": [1, 2, 3]}]})
    assert a1.get(f"/api/projects/demo/annotations/{pts.json()['id']}/content").json()["content"] == \
        [{"name": "apex", "position": [1.0, 2.0, 3.0]}]
    listed = a1.get("/api/projects/demo/annotations", params={"author": "annotator"}).json()
    assert {v["name"] for v in listed} == {"lesions", "labels", "landmarks"}
    # the filter language sees accepted annotations
    assert a1.get("/api/projects/demo/series", params={"where": 'ann_lesions == "accepted"'}).json()["total"] == 1
    # every change is audited with the version and its hash
    entries = [json.loads(line) for line in ws.layout.audit_log.read_text().splitlines()]
    saves = [e for e in entries if e["action"] == "annotation.save"]
    assert len(saves) == 5 and {e["data"]["sha256"] for e in saves} >= {v1["sha256"], v2["sha256"]}
    assert [e["data"]["decision"] for e in entries if e["action"] == "annotation.review"] == ["accept"]


def test_bad_masks_and_bodies_store_nothing(login, ws, mr, app):
    a1 = login("annotator")
    url = f"/api/projects/demo/series/{mr}/annotations/lesions"
    shape = ws.series(mr)["shape"]
    n = int(np.prod(shape))
    before = _stored(ws)
    octet = {"Content-Type": "application/octet-stream"}
    body = _error(a1.post(url, content=b"\0" * (n - 1), headers=octet), 400)
    assert body["what"] == "mask size does not match the series" and str(n) in body["expected"]
    _error(a1.post(url, content=b"\0" * (n + 1), headers=octet), 413)
    _error(a1.post(url, content=b"\0" * (50 * n), headers=octet), 413)
    _error(a1.post(url, content=b"not gzip at all", headers={**octet, "Content-Encoding": "gzip"}), 400)
    _error(a1.post(url, content=gzip.compress(b"\0" * (100 * n)), headers={**octet, "Content-Encoding": "gzip"}), 413)
    bad = np.zeros(shape, np.uint8)
    bad[0, 0, 0] = 9
    body = _error(a1.post(url, content=bad.tobytes(order="F"), headers=octet), 400)
    assert "not segments of the project's schema" in body["what"] and body["found"] == "9"
    _error(a1.post(url, content=b"{}", headers={"Content-Type": "text/plain"}), 415)
    _error(a1.post(url, content=json.dumps({"kind": "labels", "content": {"x": "y" * (2 << 20)}}),
                   headers={"Content-Type": "application/json"}), 413)
    _error(a1.post(url, content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    _error(a1.post(url, json={"kind": "labels", "content": {"pneumonia": 7}}), 400)
    _error(a1.post(url, json={"kind": "masks", "content": {}}), 400)
    _error(a1.post(url.replace(mr, "1.2.3.4.5"), json={"kind": "labels", "content": {"pneumonia": 1}}), 404)
    _error(a1.post(url, json={"kind": "labels", "content": {"pneumonia": 1}, "parent": 999}), 409)
    # a malformed SEG, a NIfTI on another grid, an RTSTRUCT that is not one
    imp = f"{url}/import"
    for fmt, data in (("seg", b"DICM" * 100), ("seg", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage"),
                      ("rtstruct", b"\0" * 200), ("nifti", gzip.compress(b"\0" * 400))):
        body = _error(a1.post(imp, params={"format": fmt}, content=data, headers=octet), 400)
    assert _stored(ws) == before
    assert a1.get("/api/projects").status_code == 200  # still serving


def test_import_size_limit(ws, mr):
    from sobre.server import ServerSettings, create_app

    a1 = Client(create_app(ws, ServerSettings(max_upload_bytes=4096)), "annotator")
    r = a1.post(f"/api/projects/demo/series/{mr}/annotations/lesions/import", params={"format": "seg"},
                content=b"\0" * 5000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["expected"] == "at most 4096 bytes"


def test_wrong_password_rate_limit_and_expiry(app, ws):
    c = Client(app, None)
    for _ in range(5):
        body = _error(c.http.post("/api/auth/login", json={"username": "viewer", "password": "wrong password!!"}), 401)
    assert body["what"].startswith("wrong user name or password")
    # unknown user: the same answer
    assert c.http.post("/api/auth/login", json={"username": "nobody", "password": "x" * 12}).json()["what"] == body["what"]
    r = c.http.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
    body = _error(r, 429)
    assert int(r.headers["retry-after"]) > 0 and "per user" in body["found"]
    ok = Client(app, "reviewer")  # another user still logs in
    ctx = app.state.ctx
    real = ctx.sessions.clock
    ctx.sessions.clock = lambda: real() + ctx.settings.idle_timeout_s + 1
    body = _error(ok.get("/api/projects"), 401)
    assert body["what"] == "the session expired" and body["found"] == "expired"
    ctx.sessions.clock = real
    entries = [json.loads(line)["action"] for line in ws.layout.audit_log.read_text().splitlines()]
    assert entries.count("auth.login_failed") == 6 and "auth.login_refused" in entries


def test_disabled_account_loses_its_session(app, login, ws):
    v = login("viewer")
    admin = login("admin")
    assert admin.request("PATCH", "/api/users/viewer", json={"disabled": True}).status_code == 200
    _error(v.get("/api/projects"), 401)


def test_undecodable_series_is_refused_and_others_still_served(login, ws):
    recs = sorted(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])
    broken, fine = recs[0]["series_uid"], recs[1]["series_uid"]
    victim = sorted(ws.files_of(broken))[2]
    import os

    # the catalog refers to the template's source files in place (shared by the tests of this worker):
    # the file is restored afterwards so that no later test reads a truncated copy
    original, mode = Path(victim).read_bytes(), os.stat(victim).st_mode
    os.chmod(victim, 0o644)
    try:
        with open(victim, "r+b") as fh:
            fh.truncate(os.path.getsize(victim) - 200)  # pixel data cut short
        c = login("viewer")
        body = _error(c.get(f"/api/projects/demo/series/{broken}/volume"), 422)
        assert body["found"]
        assert c.get(f"/api/projects/demo/series/{fine}/volume").status_code == 200
        _error(c.get("/api/projects/demo/series/1.2.3.999"), 404)
    finally:
        with open(victim, "wb") as fh:
            fh.write(original)
        os.chmod(victim, mode)


def test_changed_annotation_file_is_an_error(login, ws, mr):
    a1 = login("annotator")
    v = a1.post(f"/api/projects/demo/series/{mr}/annotations/labels",
                json={"kind": "labels", "content": {"pneumonia": 0}}).json()
    path = ws.root / ws.annotations.version(v["id"]).path
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"0", b"1"))
    body = _error(a1.get(f"/api/projects/demo/annotations/{v['id']}/content"), 400)
    assert "changed since it was saved" in body["what"]


def test_front_end_files(ws, tmp_path):
    from sobre.server import ServerSettings, create_app

    missing = Client(create_app(ws, ServerSettings(static_dir=tmp_path / "none")), None)
    r = missing.get("/")
    assert r.status_code == 200 and "npm run build" in r.text and "text/html" in r.headers["content-type"]
    static = tmp_path / "static"
    (static / "assets").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><script src='/assets/app-1.js'></script>")
    (static / "assets" / "app-1.js").write_text("console.log(1)")
    c = Client(create_app(ws, ServerSettings(static_dir=static)), None)
    assert c.get("/").text.startswith("<!doctype html>")
    assert c.get("/projects/demo/series/1.2.3").text.startswith("<!doctype html>")  # client-side route
    js = c.get("/assets/app-1.js")
    assert js.text == "console.log(1)" and "immutable" in js.headers["cache-control"]
    assert c.get("/assets/missing.js").status_code == 404


def test_openapi_needs_a_session(app, login):
    assert Client(app, None).get("/api/openapi.json").status_code == 401
    doc = login("viewer").get("/api/openapi.json").json()
    assert "/api/projects/{project}/series/{series}/volume" in doc["paths"]

"""Review of the inference service's results through the workstation API (a thin layer over
``sobre.service.Review``): list, show, accept, reject; roles, CSRF, unknown results, decisions that are final.

The result is a real one: the service tests' tiny CT lesion segmenter run by ``process_files`` on a generated
(SIMULATED) CT phantom study, with ``[review] hold = true``, in the server tests' workspace with its accounts.
"""

from __future__ import annotations

import json

import pytest

from apps.conftest import _torch_threads, seg_run  # noqa: F401  (the app tests' tiny CT lesion segmenter)
from tests.server.conftest import Client
from tests.service.helpers import ct_study

DEST = [{"name": "pacs", "kind": "dicom", "host": "127.0.0.1", "port": 9, "aet": "NOWHERE"}]
PROJECT = "sobre-service"  # the service's default annotation project of AI proposals
BASE = f"/api/projects/{PROJECT}/service-results"


@pytest.fixture
def served(ws, tmp_path, seg_run):  # noqa: F811
    """(app, ws): one CT study processed by the service, its result pending review; roles in its project."""
    from sobre.server import ServerSettings, create_app
    from sobre.service import ServiceConfig, process_files

    cfg = ServiceConfig(apps=[{"name": "ct-lesions", "model": str(seg_run)}], review={"hold": True},
                        destinations=DEST, receive={"port": 0, "quiet_seconds": 0.5})
    ct_study(tmp_path / "ct", seed=21)
    assert process_files(ws, cfg, [tmp_path / "ct"])["jobs"] == {1: "proposed"}
    for user, role in (("reviewer", "reviewer"), ("annotator", "annotator"), ("viewer", "viewer"),
                       ("data-manager", "data_manager")):
        ws.accounts.grant(user, PROJECT, role)
    return create_app(ws, ServerSettings(catalog_ttl_s=0)), ws


def audit(ws) -> list[dict]:
    return [json.loads(x) for x in ws.layout.audit_log.read_text().splitlines()]


def test_list_show_and_accept_as_reviewer(served):
    app, ws = served
    rev = Client(app, "reviewer")
    r = rev.get(BASE)
    assert r.status_code == 200, r.text
    [item] = r.json()
    assert item["job"] == 1 and item["review"] == "pending" and item["app"] == "ct-lesions"
    assert item["project"] == PROJECT and item["held"] is True and "Lesion = Present" in item["findings"]
    assert audit(ws)[-1]["action"] == "view.service_results" and audit(ws)[-1]["data"]["jobs"] == [1]
    assert rev.get(BASE, params={"state": "accepted"}).json() == []
    assert rev.get("/api/projects/demo/service-results").json() == []  # results of another project are not listed

    shown = rev.get(f"{BASE}/1")
    assert shown.status_code == 200, shown.text
    info = shown.json()
    assert info["model"][0]["name"] and info["model"][0]["sha256"]
    assert {o["kind"] for o in info["outputs"]} >= {"SEG", "SR", "SC"}
    assert info["input"]["instances"] and "findings" in info and "folder" not in info
    assert all("path" not in o for o in info["outputs"])  # no server paths go to the browser
    entry = audit(ws)[-1]
    assert entry["action"] == "view.service_result" and entry["actor"] == "reviewer"
    assert entry["data"]["series"] == info["series"] and entry["data"]["job"] == 1 and entry["data"]["client"]

    done = rev.post(f"{BASE}/1/accept", json={"comment": "agree"})
    assert done.status_code == 200, done.text
    out = done.json()
    assert out["review"] == "accepted" and out["reviewer"] == "reviewer" and out["comment"] == "agree"
    assert {d["kind"] for d in out["deliveries"]} == {"SEG", "SR", "SC"}  # held: queued for delivery now
    assert ws.annotations.version(out["annotation_version"]).status == "accepted"
    review, ours = audit(ws)[-2:]
    assert review["action"] == "review" and review["actor"] == "reviewer" and review["data"]["decision"] == "accepted"
    assert ours["action"] == "service.review" and ours["data"]["decision"] == "accepted" and ours["data"]["client"]
    assert rev.get(BASE).json() == [] and rev.get(BASE, params={"state": "accepted"}).json()[0]["job"] == 1

    again = rev.post(f"{BASE}/1/reject", json={"reason": "changed my mind"})
    assert again.status_code == 409
    body = again.json()
    assert "already accepted by reviewer" in body["what"] and body["fix"]


def test_reject_as_reviewer_needs_a_reason(served):
    app, ws = served
    rev = Client(app, "reviewer")
    for bad in ({}, {"reason": "   "}):
        r = rev.post(f"{BASE}/1/reject", json=bad)
        assert r.status_code == 400, r.text
        assert r.json()["what"] and "reason" in (r.json()["what"] + str(r.json()["fix"]))
    assert rev.get(f"{BASE}/1").json()["review"] == "pending"
    r = rev.post(f"{BASE}/1/reject", json={"reason": "motion artefact, not a lesion"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["review"] == "rejected" and out["comment"] == "motion artefact, not a lesion" and out["deliveries"] == []
    assert ws.annotations.version(out["annotation_version"]).status == "rejected"
    entry = [e for e in audit(ws) if e["action"] == "review"][-1]
    assert entry["data"]["decision"] == "rejected" and entry["data"]["comment"] == "motion artefact, not a lesion"
    assert rev.post(f"{BASE}/1/accept", json={}).status_code == 409


@pytest.mark.parametrize("who", ["annotator", "viewer", "outsider"])
def test_other_roles_are_refused(served, who):
    app, ws = served
    c = Client(app, who)
    for method, url, body in (("GET", BASE, None), ("GET", f"{BASE}/1", None),
                              ("POST", f"{BASE}/1/accept", {"comment": "x"}),
                              ("POST", f"{BASE}/1/reject", {"reason": "x"})):
        r = c.request(method, url, json=body)
        assert r.status_code == 403 and r.json()["error"] == "AccessError", (who, method, url, r.text)
    assert Client(app, "reviewer").get(f"{BASE}/1").json()["review"] == "pending"


def test_data_manager_and_admin_may_decide(served):
    app, _ = served
    assert Client(app, "data-manager").get(BASE).json()[0]["job"] == 1
    assert Client(app, "admin").post(f"{BASE}/1/accept", json={}).json()["reviewer"] == "admin"


def test_no_csrf_no_decision(served):
    app, _ = served
    rev = Client(app, "reviewer")
    for url, body in ((f"{BASE}/1/accept", {}), (f"{BASE}/1/reject", {"reason": "x"})):
        r = rev.post(url, json=body, csrf=False)
        assert r.status_code == 403 and r.json()["error"] == "CsrfError"
        r = rev.post(url, json=body, headers={"X-CSRF-Token": "forged"}, csrf=False)
        assert r.status_code == 403 and r.json()["error"] == "CsrfError"
    assert rev.get(f"{BASE}/1").json()["review"] == "pending"


def test_unknown_result_is_a_clear_404(served):
    app, _ = served
    rev = Client(app, "reviewer")
    for method, url in (("GET", f"{BASE}/99"), ("POST", f"{BASE}/99/accept")):
        r = rev.request(method, url, json={} if method == "POST" else None)
        assert r.status_code == 404, r.text
        body = r.json()
        assert body["what"] == "no result 99 in the service queue" and body["found"] == "99"
        assert "service-results" in body["expected"]
    r = rev.get(f"{BASE}/abc")
    assert r.status_code == 400 and r.json()["what"].startswith("invalid")
    # the result exists but belongs to another project: 404 there too (a data manager of 'demo' reviews there)
    dm = Client(app, "data-manager")
    r = dm.get("/api/projects/demo/service-results/1")
    assert r.status_code == 404 and r.json()["what"] == "no result 1 in project 'demo'"


def test_a_workspace_without_a_service_queue(app, login):
    rev = login("reviewer")
    assert rev.get("/api/projects/demo/service-results").json() == []
    r = rev.get("/api/projects/demo/service-results/1")
    assert r.status_code == 404 and "no inference service queue" in r.json()["what"]


def test_the_annotation_review_route_refuses_an_ai_version(served):
    """Issue 11/12: the AI version is reviewed through the service results only; the annotation route says so
    (409 naming the job and the command), changes nothing, and the ordinary queue does not list it."""
    app, ws = served
    rev = Client(app, "reviewer")
    vid = rev.get(f"{BASE}/1").json()["annotation_version"]
    shown = rev.get(f"/api/projects/{PROJECT}/annotations/{vid}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["reviewed_in"]["job"] == 1 and shown.json()["status"] == "submitted"
    assert vid not in {v["id"] for v in rev.get(f"/api/projects/{PROJECT}/review-queue").json()}
    before = len(audit(ws))
    for body in ({"decision": "accept", "comment": "fine"}, {"decision": "reject", "comment": "not a lesion"}):
        r = rev.post(f"/api/projects/{PROJECT}/annotations/{vid}/review", json=body)
        assert r.status_code == 409, r.text
        err = r.json()
        assert err["error"] == "ReviewedElsewhere" and "job 1" in err["what"] and "job 1" in err["found"]
        assert "sobre review accept 1" in err["fix"] and "AI results" in err["fix"]
    assert ws.annotations.version(vid).status == "submitted" and ws.annotations.version(vid).reviews == ()
    assert rev.get(f"{BASE}/1").json()["review"] == "pending"
    assert not [e for e in audit(ws)[before:] if e["action"] == "annotation.review"]

    done = rev.post(f"{BASE}/1/accept", json={"comment": "agree"})
    assert done.status_code == 200, done.text
    after = rev.get(f"/api/projects/{PROJECT}/annotations/{vid}").json()
    assert after["status"] == "accepted" and after["reviews"][0]["reviewer"] == "reviewer"
    r = rev.post(f"/api/projects/{PROJECT}/annotations/{vid}/review", json={"decision": "reject", "comment": "x"})
    assert r.status_code == 409 and r.json()["error"] == "ReviewedElsewhere"
    assert ws.annotations.version(vid).status == "accepted"

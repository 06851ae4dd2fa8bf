"""The human in the loop: proposals are accepted, corrected (the corrected mask is a new annotation version,
and new SEG/SR/SC are made from it) or rejected with a reason; with hold, nothing is sent before acceptance;
who may review is checked; every decision is in the audit log with the outputs it is about."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import sobre
from sobre.errors import InputError

from image.test_dicom_objects import iod_check

from .helpers import ct_study, queue_rows

DEST = [{"name": "pacs", "kind": "dicom", "host": "127.0.0.1", "port": 9, "aet": "NOWHERE"}]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sobre", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def held(tmp_path, ws, config):
    """A workspace whose service holds results: one CT study processed, its result pending review."""
    from sobre.service import process_files

    cfg = config(review={"hold": True}, destinations=DEST)
    ct_study(tmp_path / "ct", seed=21)
    summary = process_files(ws, cfg, [tmp_path / "ct"])
    assert summary["jobs"] == {1: "proposed"}
    return ws, cfg


def audit(ws) -> list[dict]:
    return [json.loads(x) for x in ws.layout.audit_log.read_text().splitlines()]


def test_held_results_are_sent_only_after_acceptance(held):
    from sobre.service import Review, ServiceError

    ws, cfg = held
    assert queue_rows(ws.root, "SELECT id FROM deliveries") == []  # nothing sent, nothing queued
    with Review(ws, cfg) as r:
        [item] = r.list()
        assert item["review"] == "pending" and item["held"] is True and item["seg"].startswith("2.25.")
        assert "Lesion = Present" in item["findings"]
        info = r.accept(1, reviewer="dr.martin", comment="ok")
        assert info["review"] == "accepted" and info["reviewer"] == "dr.martin"
        kinds = sorted({d["kind"] for d in info["deliveries"]})
        assert kinds == ["SC", "SEG", "SR"] and {d["state"] for d in info["deliveries"]} == {"pending"}
        with pytest.raises(ServiceError, match="already accepted by dr.martin"):
            r.reject(1, reviewer="dr.other", reason="too late")
    v = ws.annotations.version(info["annotation_version"])
    assert v.status == "accepted" and v.author == "sobre.service" and v.reviews[0]["reviewer"] == "dr.martin"
    last = audit(ws)[-1]
    assert last["action"] == "review" and last["actor"] == "dr.martin" and last["data"]["decision"] == "accepted"
    assert info["seg"] in {o["uid"] for o in last["data"]["outputs"]}
    assert last["data"]["model"]["sha256"] == info["model"][0]["sha256"]


def test_a_correction_is_a_new_annotation_version_and_new_seg_sr_sc(held, tmp_path):
    import highdicom as hd

    from sobre.service import Review

    ws, cfg = held
    with Review(ws, cfg) as r:
        info = r.show(1)
        mask_rel = next(o["path"] for o in info["outputs"] if o["kind"] == "mask")
        ai = sobre.load(f"{info['folder']}/{mask_rel}")
        arr = np.asarray(ai.array).copy()
        assert arr.any()
        arr[: arr.shape[0] // 2] = 0  # the radiologist removes what the model found on one side
        corrected = tmp_path / "corrected.nii.gz"
        sobre.save(ai.with_array(arr.astype(np.uint8)), corrected)
        out = r.correct(1, corrected, reviewer="dr.martin", comment="left finding is a vessel")
    assert out["review"] == "corrected"
    corr = out["correction"]
    new = ws.annotations.version(corr["annotation_version"])
    old = ws.annotations.version(out["annotation_version"])
    assert new.author == "dr.martin" and new.parent == old.number and new.status == "submitted"
    assert old.status == "rejected" and "corrected in version" in old.reviews[0]["comment"]
    np.testing.assert_array_equal(np.asarray(ws.annotations.content(new).array), arr)
    outs = {o["kind"]: o for o in corr["outputs"]}
    assert set(outs) == {"SEG", "SR", "SC"}
    folder = ws.layout.service / corr["folder"]
    seg = hd.seg.segread(str(folder / outs["SEG"]["path"]))
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL" and seg.ContentCreatorName == "dr.martin^"
    ai_seg = next(o for o in out["outputs"] if o["kind"] == "SEG")
    assert str(seg.SOPInstanceUID) != ai_seg["sop_instance_uid"]
    for o in corr["outputs"]:
        iod_check(folder / o["path"])
    sr = hd.sr.srread(str(folder / outs["SR"]["path"]))
    vol = [m for m in sr.content.get_volumetric_roi_measurement_groups()[0].get_measurements()
           if m.name.meaning == "Volume"][0]
    assert vol.value == pytest.approx(float((arr == 1).sum()) * float(np.prod(ai.spacing)))
    deliveries = queue_rows(ws.root, "SELECT what, kind, state FROM deliveries")
    assert {d["what"] for d in deliveries} == {f"correction-{new.number}"}  # held: the AI proposal never goes out
    entry = audit(ws)[-1]
    assert entry["action"] == "review" and entry["data"]["decision"] == "corrected"
    assert entry["data"]["correction"]["annotation_sha256"] == new.sha256
    assert {o["uid"] for o in entry["data"]["correction"]["outputs"]} == {o["sop_instance_uid"] for o in corr["outputs"]}


def test_a_rejection_needs_a_reason_and_sends_nothing(held):
    from sobre.service import Review

    ws, cfg = held
    with Review(ws, cfg) as r:
        with pytest.raises(InputError, match="a rejection needs a reason"):
            r.reject(1, reviewer="dr.martin", reason="  ")
        info = r.reject(1, reviewer="dr.martin", reason="motion artefact, not a lesion")
    assert info["review"] == "rejected" and info["deliveries"] == []
    assert ws.annotations.version(info["annotation_version"]).status == "rejected"
    entry = audit(ws)[-1]
    assert entry["data"]["decision"] == "rejected" and entry["data"]["comment"] == "motion artefact, not a lesion"


def test_a_mask_off_the_grid_or_with_unknown_values_is_refused_and_nothing_changes(held, tmp_path):
    from sobre.service import Review

    ws, cfg = held
    with Review(ws, cfg) as r:
        shape = tuple(sobre.load([i["path"] for i in r.show(1)["input"]["instances"]]).spatial_shape)
        with pytest.raises(InputError, match="does not have the series' shape"):
            r.correct(1, np.zeros((3, 3, 3), np.uint8), reviewer="dr.martin")
        with pytest.raises(InputError, match="not segments of the project"):
            r.correct(1, np.full(shape, 7, np.uint8), reviewer="dr.martin")
        assert r.show(1)["review"] == "pending"
    assert len(ws.annotations.versions()) == 1


def test_only_reviewers_of_the_project_may_decide_when_the_workspace_has_accounts(held):
    from sobre.service import Review, ServiceError

    ws, cfg = held
    ws.accounts.add_user("alice.reviewer", "a long enough password 1")
    ws.accounts.add_user("bob.viewer", "a long enough password 2")
    ws.accounts.grant("alice.reviewer", "sobre-service", "reviewer")
    ws.accounts.grant("bob.viewer", "sobre-service", "viewer")
    with Review(ws, cfg) as r:
        with pytest.raises(ServiceError, match="bob.viewer may not review results of project sobre-service"):
            r.accept(1, reviewer="bob.viewer")
        with pytest.raises(ServiceError, match="no account 'mallory'"):
            r.accept(1, reviewer="mallory")
        assert r.accept(1, reviewer="alice.reviewer")["review"] == "accepted"


def test_review_cli(held, tmp_path):
    ws, _ = held
    listed = cli("review", "list", "-w", ws.root, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["job"] == 1
    shown = cli("review", "show", "1", "-w", ws.root)
    assert shown.returncode == 0 and "Lesion = Present" in shown.stdout and "model" in shown.stdout
    bad = cli("review", "reject", "1", "--reviewer", "dr.martin", "--reason", "", "-w", ws.root)
    assert bad.returncode == 2 and "a rejection needs a reason" in bad.stderr
    ok = cli("review", "accept", "1", "--reviewer", "dr.martin", "-w", ws.root)
    assert ok.returncode == 0 and "accepted by dr.martin" in ok.stdout and "queued for delivery" in ok.stdout
    again = cli("review", "accept", "1", "--reviewer", "dr.martin", "-w", ws.root)
    assert again.returncode == 2 and "already accepted" in again.stderr


def test_the_ai_version_is_reviewed_only_through_review_and_agrees_with_it(held):
    """Issue 11/12: a direct annotation review of the AI version is refused (nothing changes); Review's decision
    is the annotation version's decision too; ordinary versions of the same project are reviewed as before."""
    from sobre.catalog import ReviewedElsewhere
    from sobre.service import Review

    ws, cfg = held
    with Review(ws, cfg) as r:
        vid = r.show(1)["annotation_version"]
    ai = ws.annotations.version(vid)
    assert ai.status == "submitted" and ai.reviewed_in["owner"] == "sobre.service" and ai.reviewed_in["job"] == 1
    project = ai.project
    assert vid not in {v.id for v in ws.annotations.review_queue(project)}  # not in the ordinary queue
    for decision, comment in (("accept", "looks fine"), ("reject", "not a lesion")):
        with pytest.raises(ReviewedElsewhere) as e:
            ws.annotations.review(vid, reviewer="dr.martin", decision=decision, comment=comment)
        assert "job 1" in e.value.what and "inference service" in e.value.what
        assert "sobre review accept 1" in e.value.fix and "AI results" in e.value.fix
        assert e.value.expected and "job 1" in e.value.found
    after = ws.annotations.version(vid)
    assert after.status == "submitted" and after.reviews == ()  # nothing changed
    assert queue_rows(ws.root, "SELECT review FROM jobs WHERE id = 1") == [{"review": "pending"}]

    # an ordinary version of the same project and series: in the queue, reviewed directly as before
    empty = np.zeros(ws.annotations.content(ai).spatial_shape, np.uint8)
    mine = ws.annotations.save(project, f"{ai.series_uid}#{ai.series_label}" if ai.series_label else ai.series_uid,
                               "manual", "mask", empty, author="dr.annot", status="submitted")
    assert mine.reviewed_in is None and mine.id in {v.id for v in ws.annotations.review_queue(project)}
    assert ws.annotations.review(mine.id, reviewer="dr.martin", decision="accept").status == "accepted"

    with Review(ws, cfg) as r:
        assert r.accept(1, reviewer="dr.martin", comment="ok")["review"] == "accepted"
    done = ws.annotations.version(vid)
    assert done.status == "accepted" and [x["reviewer"] for x in done.reviews] == ["dr.martin"]
    with pytest.raises(ReviewedElsewhere):  # still owned by the service: no second decision in the queue
        ws.annotations.review(vid, reviewer="dr.other", decision="reject", comment="changed my mind")
    assert ws.annotations.version(vid).status == "accepted"

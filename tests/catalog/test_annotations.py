"""Accounts, projects and annotation versions: immutable, concurrent-safe, reviewed, filterable, frozen."""

from __future__ import annotations

import numpy as np
import pytest

from sobre.catalog import AnnotationConflict
from sobre.errors import CatalogError, InputError

SCHEMA = {"segments": [{"name": "lesion", "value": 1, "color": [255, 0, 0],
                        "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"},
                        "type": {"value": "4147007", "scheme": "SCT", "meaning": "Mass"}},
                       {"name": "liver", "value": 2, "color": [0, 200, 0]}],
          "labels": [{"name": "pneumonia", "kind": "binary"},
                     {"name": "quality", "kind": "multiclass", "classes": ["good", "poor"]}],
          "points": ["apex"], "boxes": ["nodule"]}
PASSWORD = "correct horse battery staple"


@pytest.fixture
def project(ingested):
    ws = ingested
    ws.cohort_create("mr", 'modality == "MR"')
    ws.accounts.create_project("demo", cohorts=["mr"], schema=SCHEMA)
    for user, role in (("ann1", "annotator"), ("ann2", "annotator"), ("rev", "reviewer")):
        ws.accounts.add_user(user, PASSWORD)
        ws.accounts.grant(user, "demo", role)
    return ws


def _series(ws):
    rec = sorted(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])[0]
    return rec, f"{rec['series_uid']}#{rec['label']}" if rec["label"] else rec["series_uid"]


def test_accounts_hash_passwords_and_check_roles(project):
    ws = project
    acc = ws.accounts.authenticate("ann1", PASSWORD)
    assert acc is not None and acc.role_in("demo") == "annotator" and acc.role_in("other") is None
    assert ws.accounts.authenticate("ann1", "wrong password here") is None
    assert ws.accounts.authenticate("nobody", PASSWORD) is None
    raw = b"".join(f.read_bytes() for f in ws.root.glob("catalog.sqlite*"))  # the database and its WAL
    assert PASSWORD.encode() not in raw and b"$argon2id$" in raw  # only the Argon2 hash is stored
    ws.accounts.set_disabled("ann1")
    assert ws.accounts.authenticate("ann1", PASSWORD) is None
    with pytest.raises(InputError, match="password too short"):
        ws.accounts.add_user("shorty", "abc")
    with pytest.raises(InputError, match="invalid user name"):
        ws.accounts.add_user("../x", PASSWORD)
    with pytest.raises(InputError, match="unknown role"):
        ws.accounts.grant("ann2", "demo", "owner")


def test_schema_is_typed(project):
    with pytest.raises(Exception, match="unknown key 'segments\\[0\\].colour'; did you mean 'color'"):
        project.accounts.create_project("x", schema={"segments": [{"name": "a", "value": 1, "colour": [1, 2, 3]}]})
    with pytest.raises(Exception, match="needs `classes`"):
        project.accounts.create_project("x", schema={"labels": [{"name": "y", "kind": "multiclass"}]})


def test_mask_versions_conflicts_branches_and_review(project):
    ws = project
    rec, series = _series(ws)
    mask = np.zeros(rec["shape"], np.uint8)
    mask[2:6, 2:6, 1:3] = 1
    v1 = ws.annotations.save("demo", series, "lesions", "mask", mask, author="ann1", tool="brush")
    assert (v1.number, v1.parent, v1.branch, v1.status) == (1, None, "main", "draft")
    assert v1.summary["segments"] == {"lesion": 32}
    back = ws.annotations.content(v1)
    assert np.array_equal(back.array, mask) and np.allclose(back.affine, rec_affine(ws, rec))
    # two annotators start from v1; the second save is refused, then kept as a branch
    mask2 = mask.copy()
    mask2[0, 0, 0] = 2
    v2 = ws.annotations.save("demo", series, "lesions", "mask", mask2, author="ann1", parent=v1.id)
    with pytest.raises(AnnotationConflict, match=r"saved by ann1 \(version 2\) since you opened it") as err:
        ws.annotations.save("demo", series, "lesions", "mask", mask, author="ann2", parent=v1.id)
    assert err.value.head == 2
    v3 = ws.annotations.save("demo", series, "lesions", "mask", mask, author="ann2", parent=v1.id, new_branch=True)
    assert (v3.number, v3.parent, v3.branch) == (3, 1, "ann2-3")
    assert [v.number for v in ws.annotations.versions(series=series)] == [1, 2, 3]  # nothing lost
    # review
    with pytest.raises(CatalogError, match="expected a submitted version"):
        ws.annotations.review(v2.id, reviewer="rev", decision="accept")
    ws.annotations.submit(v2.id, author="ann1")
    assert [v.id for v in ws.annotations.review_queue("demo")] == [v2.id]
    with pytest.raises(InputError, match="a rejection needs a comment"):
        ws.annotations.review(v2.id, reviewer="rev", decision="reject")
    with pytest.raises(CatalogError, match="does not review their own version"):
        ws.annotations.review(v2.id, reviewer="ann1", decision="accept")
    done = ws.annotations.review(v2.id, reviewer="rev", decision="accept", comment="ok")
    assert done.status == "accepted" and done.reviews[0]["reviewer"] == "rev"
    # the accepted version is what filters see
    assert [r["subject_id"] for r in ws.query('ann_lesions == "accepted"')] == [rec["subject_id"]]


def test_bad_masks_are_refused_and_nothing_is_stored(project):
    ws = project
    rec, series = _series(ws)
    before = sorted(p.name for p in (ws.root).rglob("*") if "annotations" in p.parts)
    with pytest.raises(InputError, match=r"mask shape does not match the image \(expected \[16, 16, 6\]"):
        ws.annotations.save("demo", series, "lesions", "mask", np.zeros((4, 4, 4), np.uint8), author="ann1")
    bad = np.zeros(rec["shape"], np.uint8)
    bad[0, 0, 0] = 9
    with pytest.raises(InputError, match="not segments of the project's schema"):
        ws.annotations.save("demo", series, "lesions", "mask", bad, author="ann1")
    with pytest.raises(InputError, match="mask values must be integers"):
        ws.annotations.save("demo", series, "lesions", "mask", np.zeros(rec["shape"], np.float32), author="ann1")
    with pytest.raises(InputError, match="label 'pneumonia' is binary"):
        ws.annotations.save("demo", series, "labels", "labels", {"pneumonia": 7}, author="ann1")
    assert ws.annotations.versions() == []
    assert sorted(p.name for p in (ws.root).rglob("*") if "annotations" in p.parts) == before


def test_labels_points_boxes_filters_and_freeze(project):
    ws = project
    rec, series = _series(ws)
    v = ws.annotations.save("demo", series, "labels", "labels", {"pneumonia": 1, "quality": "good"},
                            author="ann1", status="submitted")
    ws.annotations.review(v.id, reviewer="rev", decision="accept")
    p = ws.annotations.save("demo", series, "landmarks", "points", [{"name": "apex", "position": [1, 2, 3]}],
                            author="ann1")
    assert ws.annotations.content(p) == [{"name": "apex", "position": [1.0, 2.0, 3.0]}]
    with pytest.raises(InputError, match="min must not exceed max"):
        ws.annotations.save("demo", series, "boxes", "boxes", [{"name": "nodule", "min": [5, 5, 5], "max": [1, 1, 1]}],
                            author="ann1")
    assert "label_pneumonia" in ws.fields() and "ann_labels" in ws.fields()
    assert [r["subject_id"] for r in ws.query("label_pneumonia == 1")] == [rec["subject_id"]]
    c = ws.cohort_create("pneu", 'label_pneumonia == 1 and label_quality == "good"')
    assert c["n_series"] == 1
    ref = ws.freeze("pneu")
    ds = ws.dataset(ref.ref)
    (entry,) = ds.series
    assert [(a.name, a.kind, a.version, a.sha256) for a in entry.annotations] == [("labels", "labels", 1, v.sha256)]
    assert ds.annotation(entry, "labels") == {"pneumonia": 1, "quality": "good"}
    assert ds.verify() == []
    # a later accepted change makes another version of the dataset, with another hash
    v2 = ws.annotations.save("demo", series, "labels", "labels", {"pneumonia": 1, "quality": "poor"},
                             author="ann1", parent=v.id, status="submitted")
    ws.annotations.review(v2.id, reviewer="rev", decision="accept")
    assert ws.cohort("pneu")["n_series"] == 0  # quality is now "poor"
    ws.cohort_create("pneu2", "label_pneumonia == 1")
    assert ws.freeze("pneu2").content_hash != ref.content_hash


def test_annotation_file_changed_is_detected(project):
    ws = project
    rec, series = _series(ws)
    v = ws.annotations.save("demo", series, "labels", "labels", {"pneumonia": 0}, author="ann1")
    path = ws.root / v.path
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"0", b"1"))
    with pytest.raises(InputError, match="annotation file changed since it was saved"):
        ws.annotations.content(v)


def rec_affine(ws, rec):
    return np.asarray(ws.series(rec["series_uid"])["shape"] and ws.load(rec["series_uid"]).affine)

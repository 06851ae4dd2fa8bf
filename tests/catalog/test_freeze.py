"""Frozen dataset versions: immutable manifests, one content hash that depends on content only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pydicom
import pytest

from sobre.base import canonical_json
from sobre.catalog import Workspace
from sobre.errors import CatalogError

WHERE = 'modality == "MR" and age >= 20 and age < 40'


def _change_a_pixel(path):
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    arr[1, 1] += 7
    ds.PixelData = arr.tobytes()
    ds.save_as(path)


def test_freeze_writes_an_immutable_hashed_manifest(ingested):
    ingested.cohort_create("young", WHERE)
    ref = ingested.freeze("young")
    assert (ref.name, ref.version, ref.ref, ref.n_series, ref.n_files, ref.n_subjects) == \
        ("young", 1, "young@v1", 3, 18, 3)
    path = ingested.root / "datasets" / "young" / "v1.json"
    assert ref.manifest_path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o444  # read-only on disk
    man = json.loads(ref.manifest_path.read_text())
    assert man["content_hash"] == ref.content_hash == hashlib.sha256(canonical_json(man["content"])).hexdigest()
    assert (man["ref"], man["where"], man["n_files"], man["simulated"]) == ("young@v1", WHERE, 18, False)
    content = man["content"]
    assert content["format"] == "sobre.dataset/1"
    assert [s["metadata"]["subject_id"] for s in sorted(content["series"], key=lambda s: s["metadata"]["subject_id"])] \
        == ["S01", "S02", "S05"]
    one = content["series"][0]
    assert set(one) == {"series_uid", "label", "format", "shape", "spacing", "affine_lps", "orientation", "dtype",
                        "files", "metadata"}
    assert [f["sha256"] for f in one["files"]] == sorted(f["sha256"] for f in one["files"])
    for s in content["series"]:  # every file's hash is recorded and its location known
        for f in s["files"]:
            assert hashlib.sha256(Path(man["locations"][f["sha256"]]).read_bytes()).hexdigest() == f["sha256"]
    assert content["variables"]["score"] == {"kind": "numeric", "unit": "points"}
    assert "path" not in json.dumps(content) and str(ingested.root) not in json.dumps(content)
    # the catalog row
    (d,) = ingested.datasets()
    assert d == ref and ingested.cohort("young")["versions"][0]["content_hash"] == ref.content_hash
    assert ingested.verify("young@v1") == []


def test_freezing_again_unchanged_returns_the_same_version(ingested, dump):
    ingested.cohort_create("young", WHERE)
    first = ingested.freeze("young")
    before = dump(ingested)
    listing = sorted(os.listdir(ingested.root / "datasets" / "young"))
    again = ingested.freeze("young")
    assert again == first
    assert dump(ingested) == before and sorted(os.listdir(ingested.root / "datasets" / "young")) == listing
    assert ingested.dataset("young") == ingested.dataset("young@v1") == ingested.dataset("young@1") == first
    assert ingested.dataset(first.content_hash[:12]) == first
    with pytest.raises(CatalogError, match=r"no dataset version 'young@v7' \(expected NAME@vN, NAME or a hash "
                                           r"prefix; frozen: young@v1\)"):
        ingested.dataset("young@v7")


def test_same_content_same_hash_across_workspaces(ingested, cohort_dir, clinical_csv, tmp_path):
    """Different paths, ingest order, workspace and cohort name: the same content gives the same hash."""
    ingested.cohort_create("young", WHERE)
    h1 = ingested.freeze("young").content_hash
    other = tmp_path / "elsewhere" / "copy"
    shutil.copytree(cohort_dir, other)
    ws2 = Workspace.init(tmp_path / "ws2")
    for sub in sorted(other.iterdir(), reverse=True):  # another order, one folder at a time
        ws2.ingest([sub])
    ws2.add_clinical(clinical_csv)
    ws2.cohort_create("the-same", 'age < 40 and modality in ["MR"]')  # other name, equivalent filter
    ref2 = ws2.freeze("the-same")
    assert ref2.content_hash == h1
    man = json.loads(ref2.manifest_path.read_text())
    assert all(str(other) in p for p in man["locations"].values())  # locations differ, the hash does not
    ws2.close()


def test_changed_file_is_refused_by_freeze_and_reported_by_verify(workspace, cohort_copy, clinical_csv, dump):
    workspace.ingest([cohort_copy], clinical=clinical_csv)
    workspace.cohort_create("young", WHERE)
    v1 = workspace.freeze("young")
    victim = sorted((cohort_copy / "S02_mr").iterdir())[3]
    _change_a_pixel(victim)
    before = dump(workspace)
    with pytest.raises(CatalogError, match=rf"{victim}: file changed since it was ingested \(expected sha256 "
                                           rf"[0-9a-f]{{64}}; found sha256 [0-9a-f]{{64}}\)\. re-run `sobre ingest`"):
        workspace.freeze("young")
    assert dump(workspace) == before
    problems = workspace.verify("young@v1")
    assert [(p.path, p.level, p.code) for p in problems] == [(str(victim), "error", "changed")]
    assert problems[0].message.startswith("content changed (expected sha256 ")
    # after re-ingesting, a new version with another hash; v1 stays as it was
    report = workspace.ingest([cohort_copy])
    assert report.changed == 1
    v2 = workspace.freeze("young")
    assert v2.version == 2 and v2.content_hash != v1.content_hash
    assert workspace.verify("young@v2") == []
    assert json.loads(v1.manifest_path.read_text())["content_hash"] == v1.content_hash
    assert [d.ref for d in workspace.datasets()] == ["young@v1", "young@v2"]


def test_missing_file(workspace, cohort_copy):
    workspace.ingest([cohort_copy])
    workspace.cohort_create("ct", 'modality == "CT"')
    ref = workspace.freeze("ct")
    victim = sorted((cohort_copy / "S03_ct").iterdir())[0]
    victim.unlink()
    with pytest.raises(CatalogError, match=rf"{victim}: file of the cohort cannot be read"):
        workspace.freeze("ct")
    assert [(p.path, p.message) for p in workspace.verify(ref.ref)] == \
        [(str(victim), "cannot read (No such file or directory)")]


def test_clinical_change_makes_a_new_version(ingested, tmp_path):
    ingested.cohort_create("young", WHERE)
    v1 = ingested.freeze("young")
    p = tmp_path / "fix.csv"
    p.write_text("subject_id,score [points]\nS01,99\n")
    ingested.add_clinical(p)
    v2 = ingested.freeze("young")
    assert (v2.version, v2.content_hash != v1.content_hash) == (2, True)


def test_tampered_manifest_is_reported(ingested):
    ingested.cohort_create("young", WHERE)
    ref = ingested.freeze("young")
    man = json.loads(ref.manifest_path.read_text())
    man["content"]["series"][0]["metadata"]["age"] = 99
    os.chmod(ref.manifest_path, 0o644)
    ref.manifest_path.write_text(json.dumps(man))
    (problem,) = ingested.verify(ref.ref)
    assert (problem.path, problem.code) == (str(ref.manifest_path), "manifest")
    assert problem.message.startswith("manifest content does not match the hash recorded in its own content_hash")
    with pytest.raises(CatalogError, match="manifest content does not match"):
        ingested.dataset(ref.ref)  # a tampered version cannot be opened for use


def test_empty_cohort_is_not_frozen(ingested, dump):
    ingested.cohort_create("none", "age > 200")
    before = dump(ingested)
    with pytest.raises(CatalogError, match=r"cohort 'none' is empty \(found age > 200\)"):
        ingested.freeze("none")
    assert dump(ingested) == before


def test_manifest_left_by_an_interrupted_freeze(ingested):
    """A freeze killed after writing its manifest but before recording it: the next freeze completes it."""
    from sqlalchemy import delete

    from sobre.catalog._models import DatasetVersion

    ingested.cohort_create("young", WHERE)
    ref = ingested.freeze("young")
    with ingested.engine.begin() as conn:
        conn.execute(delete(DatasetVersion))  # as if the process died before the commit
    again = ingested.freeze("young")
    assert (again.version, again.content_hash, again.created_at) == (1, ref.content_hash, ref.created_at)
    assert not (ref.manifest_path.parent / "v1.json.orphaned").exists()
    # another content under that name: kept aside, never overwritten, never adopted
    with ingested.engine.begin() as conn:
        conn.execute(delete(DatasetVersion))
    os.chmod(ref.manifest_path, 0o644)
    ref.manifest_path.write_text('{"content_hash": "0000", "content": {}}')
    third = ingested.freeze("young")
    assert third.version == 1 and third.content_hash == ref.content_hash
    assert (ref.manifest_path.parent / "v1.json.orphaned").read_text().startswith('{"content_hash": "0000"')
    assert ingested.verify("young@v1") == []


def test_synthetic_data_marks_the_dataset_simulated(tmp_path):
    """(0008,001C) SyntheticData YES reaches the catalog (`simulated` field) and the frozen manifest."""
    import sobre
    from catalog.conftest import make_image

    real = tmp_path / "real"
    sim = tmp_path / "sim"
    sobre.write_dicom_series(make_image(), real, meta={"patient_id": "R1"}, modality="MR", uid_seed="real")
    sobre.write_dicom_series(make_image(seed=3), sim, meta={"patient_id": "SIM1"}, modality="MR", uid_seed="sim",
                             extra={"SyntheticData": "YES"})
    ws = Workspace.init(tmp_path / "ws")
    try:
        ws.ingest([real, sim])
        by_subject = {r["subject_id"]: r["simulated"] for r in ws.records()}
        assert by_subject == {"R1": False, "SIM1": True}
        ws.cohort_create("real", "simulated == false")
        ws.cohort_create("everything", "n_files > 0")
        assert json.loads(ws.freeze("real").manifest_path.read_text())["simulated"] is False
        assert json.loads(ws.freeze("everything").manifest_path.read_text())["simulated"] is True
    finally:
        ws.close()

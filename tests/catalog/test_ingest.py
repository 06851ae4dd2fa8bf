"""Ingest: walking folders, recognising files by content, headers without pixels, derived fields,
clinical joins, idempotence, changed files, bad files that never stop a batch."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import shutil
from datetime import date

import numpy as np
import pydicom
import pytest

import sobre
from sobre.catalog import Workspace

from .conftest import SEED, build_cohort, make_image, write_series


def by_subject(ws, **kw):
    return {r["subject_id"]: r for r in ws.records(**kw)}


# --------------------------------------------------------------------------- basics
def test_ingest_cohort_derives_age_sex_bmi_site(workspace, cohort_dir):
    report = workspace.ingest([cohort_dir])
    assert (report.new, report.known, report.changed, report.skipped, report.problems) == (30, 0, 0, [], [])
    assert report.series_new == 5
    recs = by_subject(workspace)
    assert sorted(recs) == ["S01", "S02", "S03", "S04", "S05"]
    s1, s2, s3, s5 = recs["S01"], recs["S02"], recs["S03"], recs["S05"]
    assert s1["age"] == 25.0 and s1["sex"] == "F" and s1["site"] == "Hopital Nord"
    assert s1["bmi"] == pytest.approx(60.0 / 1.65**2, abs=0.01)
    assert (s1["height"], s1["weight"]) == (1.65, 60.0)
    assert s1["modality"] == "MR" and s1["manufacturer"] == "SIEMENS" and s1["field_strength"] == 3.0
    assert s1["shape"] == [16, 16, 6] and s1["spacing"] == [0.9, 0.9, 2.0] and s1["orientation"] == "LPS"
    assert s1["n_files"] == 6 and s1["format"] == "dicom" and s1["status"] == "ok"
    # no PatientAge: birth date vs study date
    expected = (date(2023, 3, 15) - date(1988, 3, 1)).days / 365.25
    assert s2["age"] == pytest.approx(expected, abs=1e-3) and s2["sex"] == "M" and s2["site"] == "Clinique Sud"
    assert s2["bmi"] == pytest.approx(81.0 / 1.80**2, abs=0.01)
    assert s3["modality"] == "CT" and s3["bmi"] is None
    assert s5["site"] is None  # no InstitutionName, no --site
    summary = workspace.summary()
    assert (summary["subjects"], summary["studies"], summary["series"], summary["files"], summary["sites"]) == \
        (5, 5, 5, 30, 2)
    assert summary["series_by_modality"] == {"CT": 1, "MR": 4}


def test_birth_date_is_not_kept(ingested, dump):
    """PatientBirthDate serves the age only; it is not stored in the catalog."""
    tables = dump(ingested)
    assert all("patient_birth_date" not in (f["header"] or {}) for f in tables["file"])
    assert not any("19880301" in repr(row) for rows in tables.values() for row in rows)


def test_site_option_overrides_institution(workspace, cohort_dir):
    workspace.ingest([cohort_dir], site="Paris-1")
    assert {r["site"] for r in workspace.records()} == {"Paris-1"}
    assert workspace.summary()["sites"] == 1


def test_headers_are_read_without_pixels(workspace, cohort_dir, monkeypatch):
    """Ingest never decodes pixel data (it would be far too slow for a whole archive)."""
    from sobre.image import _dicom

    def boom(*a, **k):
        raise AssertionError("pixel data decoded during ingest")

    monkeypatch.setattr(_dicom, "load_pixels", boom)
    monkeypatch.setattr(_dicom, "_decode_file", boom)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    report = workspace.ingest([cohort_dir], workers=1)
    assert report.new == 30 and not report.skipped


def test_single_path_string_is_one_path(workspace, cohort_dir):
    report = workspace.ingest(str(cohort_dir / "S01_mr"))
    assert report.new == 6 and report.skipped == []


def test_missing_path_is_reported_the_others_ingested(workspace, cohort_dir, tmp_path):
    report = workspace.ingest([tmp_path / "nope", cohort_dir])
    assert report.skipped == [(str(tmp_path / "nope"), "no such file or folder")] and report.new == 30


def test_load_catalogued_series(ingested):
    rec = by_subject(ingested)["S04"]
    img = ingested.load(rec["series_uid"])
    expected = make_image(seed=SEED + 3)
    np.testing.assert_array_equal(img.array, expected.array)
    np.testing.assert_allclose(img.affine, expected.affine, atol=1e-6)
    assert ingested.series(rec["series_uid"][:30])["subject_id"] == "S04"  # unique prefix


# --------------------------------------------------------------------------- recognised by content
def test_dicom_recognised_by_content_not_extension(workspace, cohort_copy):
    folder = cohort_copy / "S01_mr"
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):
        f.rename(f.with_name(f"slice{i}.xyz" if i % 2 else f"slice{i}"))
    report = workspace.ingest([folder])
    assert report.new == 6 and report.skipped == [] and report.series_new == 1
    assert workspace.records()[0]["shape"] == [16, 16, 6]


def test_dicom_without_preamble_is_read_by_content(workspace, cohort_copy):
    """A dataset without the 128-byte preamble and 'DICM' (old ACR-NEMA style export) is still DICOM."""
    folder = cohort_copy / "S03_ct"
    for f in folder.iterdir():
        raw = f.read_bytes()
        assert raw[128:132] == b"DICM"
        f.write_bytes(raw[132:])  # file meta group and dataset, no preamble, no 'DICM'
        assert b"DICM" not in f.read_bytes()[:200]
    report = workspace.ingest([folder])
    assert report.new == 6 and report.skipped == [], report.skipped


def test_nifti_and_nrrd(workspace, tmp_path):
    img = make_image((10, 12, 7), spacing=(1.0, 1.5, 2.5), origin=(5.0, -3.0, 20.0))
    d = tmp_path / "vols"
    sobre.save(img, d / "brainA.nii.gz")
    sobre.save(img.with_array(img.array + 1), d / "brainB.nii")
    sobre.save(img.with_array(img.array + 2), d / "lungC.nrrd")
    report = workspace.ingest([d])
    assert report.new == 3 and report.skipped == []
    recs = by_subject(workspace)
    assert {k: recs[k]["format"] for k in recs} == {"brainA": "nifti", "brainB": "nifti", "lungC": "nrrd"}
    for r in recs.values():
        assert r["shape"] == [10, 12, 7] and r["spacing"] == pytest.approx([1.0, 1.5, 2.5])
        assert r["orientation"] == "LPS"
        assert r["series_uid"].startswith("2.25.")  # content-derived UID
    loaded = workspace.load(recs["lungC"]["series_uid"])
    np.testing.assert_allclose(loaded.affine, img.affine, atol=1e-5)
    np.testing.assert_array_equal(loaded.array, img.array + 2)


def test_bids_layout_with_participants(workspace, tmp_path):
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\tgroup\nsub-01\t23\tF\tcontrol\nsub-02\t61\tM\tpatient\n")
    img = make_image((8, 9, 10), spacing=(1.0, 1.0, 1.0))
    sobre.save(img, root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    sobre.save(img.with_array(img.array * 2), root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz")
    sobre.save(img.with_array(img.array * 3), root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_FLAIR.nii.gz")
    report = workspace.ingest([root])
    assert report.new == 3 and report.skipped == []  # participants.tsv and the json are not images
    assert report.clinical is not None and report.clinical["subjects"] == 2 and report.clinical_error is None
    recs = sorted(workspace.records(), key=lambda r: (r["subject_id"], r["protocol"]))
    assert [(r["subject_id"], r["protocol"], r["modality"]) for r in recs] == [
        ("sub-01", "T1w", "MR"), ("sub-02", "FLAIR", "MR"), ("sub-02", "T2w", "MR")]
    assert [(r["age"], r["sex"], r["group"]) for r in recs] == [
        (23.0, "F", "control"), (61.0, "M", "patient"), (61.0, "M", "patient")]
    # both sessions of sub-02 are one study (same session), sub-01 has none
    assert recs[1]["study_uid"] == recs[2]["study_uid"] == "bids:sub-02:ses-1"
    assert recs[0]["study_uid"] == "bids:sub-01:nosession"
    assert workspace.variables()["group"] == {"kind": "categorical", "unit": None}


def test_two_bids_datasets_in_one_ingest_report_both_tables(workspace, tmp_path):
    img = make_image((8, 9, 10), spacing=(1.0, 1.0, 1.0))
    for k, (name, sid, extra) in enumerate((("a", "sub-A01", "site"), ("b", "sub-B01", "scanner"))):
        root = tmp_path / name
        root.mkdir()
        (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
        (root / "participants.tsv").write_text(f"participant_id\tage\t{extra}\n{sid}\t30\tx\n")
        sobre.save(img.with_array(img.array + k), root / sid / "anat" / f"{sid}_T1w.nii.gz")
    report = workspace.ingest([tmp_path / "a", tmp_path / "b"])
    assert report.clinical_error is None and report.clinical["subjects"] == 2
    assert [v["name"] for v in report.clinical["variables"]] == ["age", "site", "scanner"]
    assert {r["subject_id"]: r["age"] for r in workspace.records()} == {"sub-A01": 30.0, "sub-B01": 30.0}


def test_clinical_join_by_subject_id(workspace, cohort_dir, clinical_csv):
    report = workspace.ingest([cohort_dir], clinical=clinical_csv)
    assert report.clinical == {
        "path": str(clinical_csv), "subjects": 5,
        "variables": [{"name": "diagnosis", "kind": "categorical", "unit": None},
                      {"name": "score", "kind": "numeric", "unit": "points"},
                      {"name": "visit_date", "kind": "date", "unit": None}]}
    recs = by_subject(workspace)
    assert [recs[s]["diagnosis"] for s in sorted(recs)] == ["healthy", "patient", "healthy", "healthy", "patient"]
    assert [recs[s]["score"] for s in sorted(recs)] == [12.5, 20.0, None, 7.0, 9.25]
    assert recs["S01"]["visit_date"] == "2023-01-10" and recs["S05"]["visit_date"] is None
    assert "diagnosis" in workspace.fields() and "score" in workspace.fields()


# --------------------------------------------------------------------------- idempotence, changes
def test_reingest_changes_nothing(ingested, cohort_dir, clinical_csv, dump):
    before = dump(ingested)
    report = ingested.ingest([cohort_dir], clinical=clinical_csv)
    assert (report.new, report.known, report.changed, report.series_new, report.series_updated) == (0, 30, 0, 0, 0)
    assert dump(ingested) == before  # every row of every table, ids included


def test_touched_file_with_same_content_is_known(ingested, cohort_dir, dump, tmp_path):
    data = tmp_path / "data2"
    shutil.copytree(cohort_dir, data)
    ws = Workspace.init(tmp_path / "ws2")
    ws.ingest([data])
    before = dump(ws)
    f = sorted((data / "S01_mr").iterdir())[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    report = ws.ingest([data])
    assert (report.new, report.known, report.changed) == (0, 30, 0)
    after = dump(ws)
    changed = [r for r in after["file"] if r not in before["file"]]
    assert len(changed) == 1 and changed[0]["mtime_ns"] == st.st_mtime_ns + 10**9
    assert {k: v for k, v in after.items() if k != "file"} == {k: v for k, v in before.items() if k != "file"}
    ws.close()


def test_changed_file_at_same_path_is_recatalogued(workspace, cohort_copy, dump):
    workspace.ingest([cohort_copy])
    before = dump(workspace)
    s1 = next(r for r in workspace.records() if r["subject_id"] == "S01")
    target = sorted((cohort_copy / "S01_mr").iterdir())[2]
    ds = pydicom.dcmread(target)
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(target)
    report = workspace.ingest([cohort_copy])
    assert (report.new, report.known, report.changed, report.series_updated) == (0, 29, 1, 1)
    after = dump(workspace)
    old = next(f for f in before["file"] if f["source_path"] == str(target))
    new = next(f for f in after["file"] if f["source_path"] == str(target))
    assert new["sha256"] != old["sha256"] and new["sha256"] == __import__("hashlib").sha256(
        target.read_bytes()).hexdigest()
    assert len(after["file"]) == 30 and len(after["series"]) == 5 and after["pending_series"] == []
    again = next(r for r in workspace.records() if r["subject_id"] == "S01")
    assert again["n_files"] == 6 and again["series_uid"] == s1["series_uid"]
    assert workspace.load(s1["series_uid"]).array[0, 0, 2] == arr[0, 0]


def test_replaced_by_another_series_file(workspace, cohort_copy):
    """A file overwritten by a slice of another series moves to that series; the old one shrinks."""
    workspace.ingest([cohort_copy])
    other = write_series(cohort_copy.parent / "other", {"patient_id": "S09"}, shape=(16, 16, 3), seed=3,
                         uid_seed="other")
    victim = sorted((cohort_copy / "S04_mr").iterdir())[-1]  # the last slice: no gap left behind
    shutil.copyfile(other[0], victim)
    report = workspace.ingest([cohort_copy])
    assert report.changed == 1
    recs = by_subject(workspace)
    assert recs["S04"]["n_files"] == 5 and recs["S04"]["shape"] == [16, 16, 5]
    assert recs["S09"]["n_files"] == 1


# --------------------------------------------------------------------------- duplicates
def test_duplicate_content_is_catalogued_once(workspace, cohort_copy, tmp_path):
    dup = cohort_copy / "zz_S01_copy"  # walked after S01_mr: the copy is the duplicate
    shutil.copytree(cohort_copy / "S01_mr", dup)  # same bytes, other paths, same batch
    report = workspace.ingest([cohort_copy])
    assert report.new == 30 and report.duplicates == 6
    reasons = {p: r for p, r in report.skipped}
    assert sorted(reasons) == sorted(str(p) for p in dup.iterdir())
    assert all(r.startswith("same content as ") and "S01_mr" in r for r in reasons.values())
    assert by_subject(workspace)["S01"]["n_files"] == 6
    # in a later run, from yet another place
    other = tmp_path / "elsewhere"
    shutil.copytree(cohort_copy / "S02_mr", other)
    report = workspace.ingest([other])
    assert report.new == 0 and report.duplicates == 6


# --------------------------------------------------------------------------- bad files
def _bad_files(folder, good_dicom, good_nifti):
    raw = good_dicom.read_bytes()
    folder.mkdir()
    (folder / "header_cut.dcm").write_bytes(raw[:300])
    (folder / "pixels_cut.dcm").write_bytes(raw[:-100])
    (folder / "garbage.dcm").write_bytes(np.random.default_rng(SEED).integers(0, 256, 4000, np.uint8).tobytes())
    (folder / "empty.dcm").write_bytes(b"")
    # no preamble and no 'DICM', starts like a dataset (group 0008), then noise
    (folder / "fake_dataset").write_bytes(b"\x08\x00\x16\x00UI\x04\x001.2\x00" +
                                          np.random.default_rng(SEED + 1).integers(0, 256, 3000, np.uint8).tobytes())
    (folder / "report.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    ds = pydicom.dcmread(good_dicom)
    del ds.PixelData
    ds.save_as(folder / "no_pixels.dcm")
    ds = pydicom.dcmread(good_dicom)
    ds.ImagePositionPatient = ["1", "2"]
    ds.save_as(folder / "bad_position.dcm")
    nz = good_nifti.read_bytes()
    (folder / "cut.nii.gz").write_bytes(nz[: len(nz) // 2])
    (folder / "cut.nii").write_bytes(gzip.decompress(nz)[:400])
    (folder / "notgzip.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    return {
        "header_cut.dcm": "neither a SOP Class UID nor a Modality",
        "pixels_cut.dcm": "truncated",
        "garbage.dcm": "not an image file",
        "empty.dcm": "empty file (0 bytes)",
        "fake_dataset": "truncated",
        "report.pdf": "not an image file",
        "no_pixels.dcm": "DICOM object holds no pixel data",
        "bad_position.dcm": "ImagePositionPatient: value has the wrong number of items",
        "cut.nii.gz": "",  # wording is the reader's; reported and skipped is what matters
        "cut.nii": "NIfTI voxel data is truncated",
        "notgzip.nii.gz": "",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_are_reported_and_skipped(workspace, cohort_copy, tmp_path, workers):
    good_nifti = tmp_path / "good.nii.gz"
    sobre.save(make_image((8, 8, 4)), good_nifti)
    expected = _bad_files(cohort_copy / "zz_bad", sorted((cohort_copy / "S01_mr").iterdir())[0], good_nifti)
    # enough files for the worker processes to be used when workers=2
    for k in range(3):
        write_series(cohort_copy / f"extra{k}", {"patient_id": f"X{k}"}, shape=(8, 8, 12), seed=k,
                     uid_seed=f"extra{k}")
    report = workspace.ingest([cohort_copy], workers=workers)
    skipped = {os.path.basename(p): r for p, r in report.skipped}
    assert sorted(skipped) == sorted(expected)
    for name, phrase in expected.items():
        assert phrase in skipped[name], (name, skipped[name])
        assert skipped[name]  # never an empty reason
    assert report.new == 30 + 36 and report.series_new == 8 and not report.series_problems
    paths = {f for r in workspace.records() for f in workspace.files_of(r["series_uid"], r["label"])}
    assert not any("zz_bad" in p for p in paths)


def test_uneven_series_is_reported_as_a_problem(workspace, tmp_path):
    files = write_series(tmp_path / "gap", {"patient_id": "G1"}, shape=(8, 8, 6))
    files[2].unlink()
    report = workspace.ingest([tmp_path / "gap"])
    assert report.new == 5 and len(report.series_problems) == 1
    assert "slice spacing is uneven" in report.series_problems[0][1]
    assert workspace.records() == []  # not queryable...
    (rec,) = workspace.records(include_errors=True)  # ...but catalogued, with its problem
    assert rec["status"] == "error" and rec["n_files"] == 5 and "uneven" in rec["problem"]


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="needs fork to patch the workers")
def test_a_file_that_kills_a_worker_costs_that_file_only(workspace, tmp_path, monkeypatch):
    from sobre.catalog import _ingest, _scan

    files = write_series(tmp_path / "many", {"patient_id": "K1"}, shape=(8, 8, 80))
    victim = str(files[37])
    real = _scan.scan_file

    def scan_or_die(path):
        if path == victim:
            os._exit(3)  # what a segfault in a decoder would look like from outside
        return real(path)

    _ingest.shutdown_pool(wait=True)
    monkeypatch.setattr(_scan, "scan_file", scan_or_die)
    try:
        report = workspace.ingest([tmp_path / "many"], workers=2)
    finally:
        _ingest.shutdown_pool(wait=True)
    assert report.skipped == [(victim, "reading this file crashed the header-reading process "
                                       "(corrupted or hostile content); it was left out")]
    assert report.new == 79 and report.series_problems and "uneven" in report.series_problems[0][1]


def test_parallel_and_serial_ingest_give_the_same_catalog(tmp_path, dump):
    data = tmp_path / "data"
    build_cohort(data)
    for k in range(4):
        write_series(data / f"big{k}", {"patient_id": f"B{k}", "institution": f"Site{k % 2}"}, shape=(8, 8, 25),
                     seed=k, uid_seed=f"big{k}")
    dumps = []
    for workers in (1, 2):
        ws = Workspace.init(tmp_path / f"ws{workers}")
        report = ws.ingest([data], workers=workers)
        assert report.new == 130 and report.series_new == 9
        dumps.append(dump(ws))
        ws.close()
    assert dumps[0] == dumps[1]


def test_copy_into_workspace(workspace, cohort_copy):
    report = workspace.ingest([cohort_copy / "S01_mr"], copy=True)
    assert report.new == 6
    rec = workspace.records()[0]
    paths = workspace.files_of(rec["series_uid"])
    assert all(p.startswith(str(workspace.root / "files")) for p in paths)
    assert all(not os.access(p, os.W_OK) or os.geteuid() == 0 for p in paths)
    assert all(oct(os.stat(p).st_mode & 0o777) == "0o444" for p in paths)
    shutil.rmtree(cohort_copy / "S01_mr")  # the catalogued copy is independent of the source
    assert workspace.load(rec["series_uid"]).shape == (16, 16, 6)


# --------------------------------------------------------------------------- header cache guard
def test_header_metadata_ignores_per_slice_elements(cohort_dir):
    """The scan caches header_metadata per series, keyed without per-slice elements: those must not matter."""
    from pydicom.datadict import keyword_for_tag

    from sobre.catalog import _scan
    from sobre.image._dicom import header_metadata, read_header

    path = sorted((cohort_dir / "S01_mr").iterdir())[0]
    base = header_metadata(read_header(path))
    for tag in sorted(_scan._PER_INSTANCE_TAGS):
        kw = keyword_for_tag(tag)
        if kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            continue
        ds = read_header(path)
        vr = pydicom.datadict.dictionary_VR(tag)
        value = {"UI": "1.2.3.4", "IS": "99", "DS": ["9", "9", "9"] if kw == "ImagePositionPatient" else "9",
                 "TM": "101010", "DA": "20000101", "DT": "20000101101010", "FL": 9.0,
                 "US": 9, "SS": 9}.get(vr.split(" or ")[0], "9")
        setattr(ds, kw, value)
        assert header_metadata(ds) == base, kw


def test_scan_cache_gives_the_uncached_metadata(cohort_dir):
    from sobre.catalog import _scan
    from sobre.image._dicom import header_metadata, read_header

    _scan._META_CACHE.clear()
    for folder in sorted(cohort_dir.iterdir()):
        for f in sorted(folder.iterdir()):
            rec = _scan.scan_file(str(f))
            direct = header_metadata(read_header(f))
            direct.pop("patient_birth_date", None)
            got = {k: v for k, v in rec["header"].items() if k != "age_years"}
            assert got == direct
    assert 0 < len(_scan._META_CACHE) <= 5  # one entry per series


def test_bids_participant_without_images(workspace, tmp_path, cohort_dir):
    """All rows or none: a participant without images leaves the table out (reported), not the images;
    and a later ingest of unrelated data is not burdened with that BIDS table again."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t23\nsub-03\t40\n")
    sobre.save(make_image((8, 9, 10)), root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    report = workspace.ingest([root])
    assert report.new == 1 and report.clinical is None
    assert "participants.tsv: 1 subject id(s) in column 'participant_id' are not in the catalog: 'sub-03' (line 3)" \
        in report.clinical_error
    report = workspace.ingest([cohort_dir])
    assert report.new == 30 and report.clinical is None and report.clinical_error is None


def test_workspace_inside_the_ingested_folder_is_not_walked(tmp_path, cohort_dir):
    top = tmp_path / "top"
    shutil.copytree(cohort_dir / "S01_mr", top / "images")
    ws = Workspace.init(top / "ws")
    report = ws.ingest([top], copy=True)
    assert (report.new, report.skipped) == (6, [])
    report = ws.ingest([top])  # neither catalog.sqlite nor the stored copies come back as files
    assert (report.new, report.known, report.skipped, report.duplicates) == (0, 6, [], 0)
    ws.close()


def test_two_files_swapping_contents(workspace, cohort_copy, dump):
    """Each changed file frees its old content for the other: both are re-catalogued, none lost."""
    workspace.ingest([cohort_copy])
    a, b = sorted((cohort_copy / "S01_mr").iterdir())[:2]
    ba, bb = a.read_bytes(), b.read_bytes()
    a.write_bytes(bb)
    b.write_bytes(ba)
    report = workspace.ingest([cohort_copy])
    assert (report.changed, report.duplicates, report.skipped) == (2, 0, [])
    assert len(dump(workspace)["file"]) == 30
    rec = by_subject(workspace)["S01"]
    assert rec["n_files"] == 6 and rec["status"] == "ok"


# --------------------------------------------------------------------------- instance UID conflicts
def test_an_instance_uid_catalogued_with_other_content_is_a_conflict(workspace, cohort_copy, tmp_path, dump):
    """A file claiming a catalogued SOP Instance UID with other bytes never joins the good series."""
    workspace.ingest([cohort_copy])
    good = by_subject(workspace)["S01"]
    victim = sorted((cohort_copy / "S01_mr").iterdir())[2]
    ds = pydicom.dcmread(victim)
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    (tmp_path / "mutant").mkdir()
    ds.save_as(tmp_path / "mutant" / "same_uid.dcm")
    before = dump(workspace)
    report = workspace.ingest([tmp_path / "mutant"])
    (problem,) = report.problems
    assert (problem.code, problem.level, problem.tag) == ("uid-conflict", "error", "(0008,0018) SOPInstanceUID")
    assert problem.details["catalogued_path"] == str(victim)
    assert problem.details["catalogued_sha256"] != problem.details["sha256"]
    assert report.new == 0 and report.skipped == [(str(tmp_path / "mutant" / "same_uid.dcm"), problem.message)]
    assert dump(workspace) == before  # the good series is untouched: same files, same volume
    assert by_subject(workspace)["S01"] == good


# --------------------------------------------------------------------------- non-image objects
def test_rt_structure_sets_plans_and_reports_are_catalogued_as_objects(workspace, tmp_path, pydicom_test_files):
    src = tmp_path / "rt"
    src.mkdir()
    for name in ("rtstruct.dcm", "rtplan.dcm", "test-SR.dcm"):
        shutil.copyfile(pydicom_test_files / name, src / name)
    report = workspace.ingest([src])
    assert (report.new, report.objects, report.skipped) == (3, 3, [])
    objs = {o["kind"]: o for o in workspace.objects()}
    assert set(objs) == {"rtstruct", "rtplan", "sr"}
    st = objs["rtstruct"]
    assert st["label"] == "sep30" and st["modality"] == "RTSTRUCT"
    assert st["references"]["series"] == ["1.2.826.0.1.3680043.8.498.2010020400001.2.1.1"]
    assert workspace.objects(references="1.2.826.0.1.3680043.8.498.2010020400001.2.1.1") == [st]
    assert workspace.records() == []  # objects are not image volumes: cohorts never hold them
    assert workspace.summary()["objects"] == 3
    again = workspace.ingest([src])  # idempotent
    assert (again.new, again.known, len(workspace.objects())) == (0, 3, 3)


# --------------------------------------------------------------------------- cohorts say what they leave out
def test_a_cohort_says_which_matching_volumes_it_leaves_out(workspace, cohort_copy, tmp_path):
    files = write_series(tmp_path / "gap", {"patient_id": "G1"}, shape=(8, 8, 6))
    files[2].unlink()  # a missing slice: catalogued, state error
    workspace.ingest([cohort_copy, tmp_path / "gap"])
    c = workspace.cohort_create("mr", 'modality == "MR"')
    assert c["n_series"] == 4 and list(c["left_out"].values()) == [1]
    assert "slice spacing is uneven" in next(iter(c["left_out"]))
    assert c["note"].startswith("1 catalogued volume(s) matching the filter were left out")
    ct = workspace.cohort_create("ct", 'modality == "CT"')
    assert ct["left_out"] == {} and ct["note"] is None  # the broken MR series does not match: not mentioned
    sel = workspace.select('subject_id == "G1"')
    assert sel.records == [] and sel.n_left_out == 1


# --------------------------------------------------------------------------- series stability (fuzz classes)
def _series(ws) -> dict:
    return {r["series_uid"]: (r["shape"], r["n_files"], r["status"]) for r in ws.records()}


def test_a_newcomer_cannot_extend_a_volume_without_patient_positions(workspace, tmp_path):
    """bench_fuzz.py found header flips that changed only a SOP Instance UID (JPEG-LL.dcm, emri_small.dcm):
    the mutant joined the catalogued series and re-shaped it ([256, 1024, 2] -> 3 files, a 10-frame
    volume -> 20). Frames without positions are stacked in file order only, so a newcomer there is a
    conflict: reported by name, not catalogued, the series kept as it was. Rebuilt from the
    benchmark's seeds, and the same class made here (a second copy of a multi-frame instance, a
    single-frame image under another SOP Instance UID)."""
    from fuzz import mutants as M

    keys = ["pydicom:JPEG2000.dcm", "pydicom-data:JPEG-LL.dcm", "pydicom-data:emri_small.dcm"]
    if any(M.source_path(k) is None for k in keys):
        pytest.skip("sample files are not fetched (sobre samples fetch)")
    workspace.ingest([str(M.source_path(k)) for k in keys])
    before = _series(workspace)
    assert sorted(v[:2] for v in before.values()) == [([64, 64, 10], 1), ([256, 1024, 2], 2)]

    newcomers = []
    for key, seed in (("pydicom-data:JPEG-LL.dcm", 3521407139), ("pydicom-data:emri_small.dcm", 741306933)):
        m = M.make(key, "flip", seed)
        newcomers.append(tmp_path / f"{m.name}.dcm")
        newcomers[-1].write_bytes(m.data)
    for key in ("pydicom-data:emri_small.dcm", "pydicom:JPEG2000.dcm"):
        ds = pydicom.dcmread(M.source_path(key))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(prefix="1.2.826.0.1.3680043.9.7779.")
        newcomers.append(tmp_path / f"copy-{key.rsplit(':', 1)[-1]}")
        ds.save_as(newcomers[-1])
    report = workspace.ingest([str(p) for p in newcomers])
    assert _series(workspace) == before
    conflicts = {p.path for p in report.problems if p.code == "series-conflict"}
    assert conflicts >= {str(p) for p in newcomers[2:]}
    assert "no patient positions" in next(p.message for p in report.problems if p.code == "series-conflict")


def test_a_newcomer_at_new_consistent_positions_extends_a_stack(workspace, tmp_path):
    """The other side of the rule: slices at new positions on the stack's grid join the catalogued
    volume; a slice at a position the volume already has does not change it."""
    files = write_series(tmp_path / "s", {"patient_id": "P1"}, shape=(16, 16, 6), uid_seed="stack")
    workspace.ingest([str(p) for p in files[:4]])
    ((shape, n, status),) = _series(workspace).values()
    assert (shape, n, status) == ([16, 16, 4], 4, "ok")
    workspace.ingest([str(p) for p in files[4:]])
    ((shape, n, status),) = _series(workspace).values()
    assert (shape, n, status) == ([16, 16, 6], 6, "ok")
    ds = pydicom.dcmread(files[2])  # the same position under another SOP Instance UID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(prefix="1.2.826.0.1.3680043.9.7779.")
    ds.save_as(tmp_path / "dup.dcm")
    workspace.ingest([str(tmp_path / "dup.dcm")])
    ((shape, n, status),) = _series(workspace).values()
    assert (shape, n, status) == ([16, 16, 6], 6, "ok")

"""Simulated cohorts on disk: readable by Sobre, dcm2niix and nibabel; ingestible; byte-identical; marked."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import sobre
from sobre.sim import (
    BrainCohortConfig,
    BrainSimulator,
    DiseaseModel,
    write_brain_cohort,
)


def _cfg(**kw):
    base = dict(subjects=3, seed=4, sites=2, disease=DiseaseModel.preset("accelerated-ageing"), patient_fraction=0.5)
    base.update(kw)
    return BrainCohortConfig(**base)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dicom_cohort(brain_template, calib_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "cohort"
    cfg = _cfg()
    write_brain_cohort(cfg, out, format="dicom", cache_dir=calib_cache)
    return cfg, out


def _participants(out: Path) -> list[dict]:
    with open(out / "participants.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _reorient(arr: np.ndarray, aff_from: np.ndarray, aff_to: np.ndarray) -> np.ndarray:
    """Bring an array on grid ``aff_from`` onto grid ``aff_to`` (same voxels up to a signed permutation)."""
    m = np.linalg.inv(aff_to) @ aff_from  # from-voxel -> to-voxel
    perm = np.argmax(np.abs(m[:3, :3]), axis=0)  # from-axis a goes to to-axis perm[a]
    out = np.transpose(arr, np.argsort(perm))
    for t in range(3):
        a = int(np.where(perm == t)[0][0])
        if m[t, a] < 0:
            out = np.flip(out, axis=t)
    return out


def test_reads_back_through_sobre(dicom_cohort, calib_cache):
    cfg, out = dicom_cohort
    sim = BrainSimulator(cfg, cache_dir=calib_cache)
    for i in range(cfg.subjects):
        ref = sim.subject(i).image
        img = sobre.load(out / "dicom" / f"sub-{i + 1:04d}")
        assert img.shape == ref.shape
        assert np.allclose(img.affine, ref.affine, atol=1e-4)
        assert np.array_equal(img.array, ref.array)
        labels = sobre.load(out / "truth" / f"sub-{i + 1:04d}" / f"sub-{i + 1:04d}_dseg.nii.gz")
        assert np.allclose(labels.affine, ref.affine, atol=1e-4) and labels.shape == ref.shape


@pytest.mark.peers
def test_reads_back_through_dcm2niix_and_nibabel(dicom_cohort, tmp_path):
    nib = pytest.importorskip("nibabel")
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    cfg, out = dicom_cohort
    for i in range(cfg.subjects):
        sid = f"sub-{i + 1:04d}"
        ref = sobre.load(out / "dicom" / sid)
        dest = tmp_path / sid
        dest.mkdir()
        run = subprocess.run(["dcm2niix", "-z", "y", "-f", "img", "-o", str(dest), str(out / "dicom" / sid)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        nimg = nib.load(str(dest / "img.nii.gz"))
        data = np.asarray(nimg.dataobj)
        aff_lps = np.diag([-1.0, -1, 1, 1]) @ nimg.affine
        assert np.allclose(np.abs(np.linalg.det(aff_lps[:3, :3])), np.abs(np.linalg.det(ref.affine[:3, :3])))
        moved = _reorient(data, aff_lps, ref.affine)
        assert moved.shape == ref.shape
        assert np.array_equal(moved.astype(np.int64), ref.array.astype(np.int64))
        # same world position of voxel 0 after reorientation: compare centres of the volumes
        c_ref = ref.affine @ np.r_[(np.array(ref.shape) - 1) / 2, 1]
        c_d2n = aff_lps @ np.r_[(np.array(data.shape) - 1) / 2, 1]
        assert np.allclose(c_ref, c_d2n, atol=1e-3)
        # the truth label map written by nibabel-compatible NIfTI has the image's RAS affine
        lab = nib.load(str(out / "truth" / sid / f"{sid}_dseg.nii.gz"))
        assert np.allclose(lab.affine, ref.affine_ras, atol=1e-4)


def test_ingest_recovers_every_field(dicom_cohort, tmp_path):
    from sobre.catalog import Workspace

    cfg, out = dicom_cohort
    ws = Workspace.init(tmp_path / "ws")
    report = ws.ingest([out / "dicom"], clinical=out / "participants.tsv")
    assert report.clinical_error is None, report.clinical_error  # site and simulated columns are accepted
    recs = {r["subject_id"]: r for r in ws.records()}
    assert len(recs) == cfg.subjects
    for row in _participants(out):
        r = recs[row["participant_id"]]
        assert r["modality"] == "MR" and r["format"] == "dicom"
        assert r["age"] == float(row["age"])
        assert r["sex"] == row["sex"]
        assert r["bmi"] == pytest.approx(float(row["bmi"]))
        assert r["height"] == pytest.approx(float(row["height"])) and r["weight"] == pytest.approx(float(row["weight"]))
        assert r["site"] == row["site"]
        assert r["diagnosis"] == row["diagnosis"]
        assert r["simulated"] is True  # from (0008,001C) SyntheticData and the participants.tsv column
        assert r["manufacturer"] and r["model"] and r["field_strength"]
        assert "SIMULATED" in r["series_description"]
    ws.cohort_create("all", 'modality == "MR"')
    ref = ws.freeze("all")
    manifest = json.loads(Path(ref.manifest_path).read_text())
    assert manifest["simulated"] is True


def test_everything_says_simulated(dicom_cohort):
    import pydicom

    cfg, out = dicom_cohort
    f = sorted((out / "dicom" / "sub-0001").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    assert str(ds.PatientName).startswith("SIMULATED^")
    assert ds.PatientIdentityRemoved == "YES" and ds.SyntheticData == "YES"
    for kw in ("ClinicalTrialProtocolName", "SeriesDescription", "ImageComments", "StudyDescription"):
        assert "SIMULATED" in str(ds.get(kw)), kw
    assert ds.InstitutionName in {"site-01", "site-02"} and ds.PatientAge.endswith("Y")
    assert all(r["simulated"] == "yes" for r in _participants(out))
    assert "SIMULATED" in (out / "README.md").read_text()
    sim = json.loads((out / "simulation.json").read_text())
    assert sim["Simulated"] is True and sim["config"]["seed"] == cfg.seed
    truth = json.loads((out / "truth" / "sub-0001" / "sub-0001_truth.json").read_text())
    assert truth["Simulated"] is True and "Hippocampus_L" in truth["volumes_mm3"]
    vol = list(csv.DictReader(Path(out / "truth" / "volumes.tsv").read_text().splitlines(), delimiter="\t"))
    assert len(vol) == cfg.subjects and float(vol[0]["Hippocampus_L"]) > 0


def test_same_seed_same_bytes_whatever_the_jobs(brain_template, calib_cache, tmp_path):
    cfg = _cfg(subjects=2, resolution=4.0)
    a, b = tmp_path / "a", tmp_path / "b"
    write_brain_cohort(cfg, a, format="dicom", cache_dir=calib_cache)
    write_brain_cohort(cfg, b, format="dicom", cache_dir=calib_cache, jobs=2)
    assert _tree_hash(a) == _tree_hash(b)
    c = tmp_path / "c"
    write_brain_cohort(_cfg(subjects=2, resolution=4.0, seed=5), c, format="dicom", cache_dir=calib_cache)
    assert _tree_hash(a) != _tree_hash(c)


def test_bids_and_nifti_layouts(brain_template, calib_cache, tmp_path):
    nib = pytest.importorskip("nibabel")
    cfg = _cfg(subjects=2, resolution=4.0)
    sim = BrainSimulator(cfg, cache_dir=calib_cache)
    write_brain_cohort(cfg, tmp_path / "bids", format="bids", cache_dir=calib_cache, truth=False)
    write_brain_cohort(cfg, tmp_path / "nii", format="nifti", cache_dir=calib_cache)
    for i in range(2):
        sid = f"sub-{i + 1:04d}"
        ref = sim.subject(i).image
        t1 = tmp_path / "bids" / sid / "anat" / f"{sid}_T1w.nii.gz"
        side = json.loads(t1.with_name(f"{sid}_T1w.json").read_text())
        assert side["Simulated"] is True and side["InstitutionName"] == sim.subject(i).metadata["site"]
        for path in (t1, tmp_path / "nii" / "nifti" / f"{sid}.nii.gz"):
            nimg = nib.load(str(path))
            assert np.allclose(nimg.affine, ref.affine_ras, atol=1e-4)
            assert np.array_equal(np.asarray(nimg.dataobj), ref.array)
    desc = json.loads((tmp_path / "bids" / "dataset_description.json").read_text())
    assert desc["Simulated"] is True and "SIMULATED" in desc["Name"]
    assert not (tmp_path / "bids" / "derivatives" / "sobre-sim" / "sub-0001").exists()  # truth=False
    assert (tmp_path / "bids" / "derivatives" / "sobre-sim" / "volumes.tsv").exists()


def test_refuses_a_non_empty_folder(brain_template, tmp_path):
    from sobre.errors import InputError

    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(InputError, match="output folder is not empty"):
        write_brain_cohort(_cfg(subjects=1), tmp_path, format="nifti")


def test_progress_is_reported_and_nothing_printed(brain_template, calib_cache, tmp_path, capsys):
    from sobre.base import ProgressRecorder

    rec = ProgressRecorder()
    write_brain_cohort(_cfg(subjects=2, resolution=4.0), tmp_path / "c", format="nifti", truth=False,
                       cache_dir=calib_cache, progress=rec)
    subjects = [c for c in rec.calls if c[0] == "subjects"]
    assert subjects == [("subjects", 0, 2), ("subjects", 1, 2), ("subjects", 2, 2)]
    assert all(stage in ("calibrating", "subjects") for stage, _, _ in rec.calls)
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # library code reports through progress and logging only

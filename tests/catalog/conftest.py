"""Fixtures for the catalog tests: small generated DICOM/NIfTI data, workspaces, table dumps.

Everything is generated (fixed seeds, deterministic UIDs through ``uid_seed``), so two calls with
the same arguments give byte-identical files.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

SEED = 20241125

# The small cohort used by most tests: (folder, modality, header values). Subjects S01..S05.
SUBJECTS = [
    ("S01_mr", "MR", {"patient_id": "S01", "patient_sex": "F", "patient_age": "025Y", "institution": "Hopital Nord",
                      "patient_size_m": 1.65, "patient_weight_kg": 60.0, "study_date": "20230110",
                      "manufacturer": "SIEMENS", "field_strength": 3.0}),
    ("S02_mr", "MR", {"patient_id": "S02", "patient_sex": "M", "patient_birth_date": "19880301",
                      "study_date": "20230315", "institution": "Clinique Sud",
                      "patient_size_m": 1.80, "patient_weight_kg": 81.0, "manufacturer": "GE", "field_strength": 1.5}),
    ("S03_ct", "CT", {"patient_id": "S03", "patient_sex": "F", "patient_age": "050Y", "institution": "Hopital Nord",
                      "study_date": "20230401"}),
    ("S04_mr", "MR", {"patient_id": "S04", "patient_sex": "M", "patient_age": "045Y", "institution": "Clinique Sud",
                      "study_date": "20230402", "field_strength": 3.0}),
    ("S05_mr", "MR", {"patient_id": "S05", "patient_sex": "F", "patient_age": "030Y", "study_date": "20230403",
                      "field_strength": 3.0}),
]

CLINICAL_CSV = (
    "subject_id,diagnosis,score [points],visit_date\n"
    "S01,healthy,12.5,2023-01-10\n"
    "S02,patient,20,2023-03-15\n"
    "S03,healthy,NA,2023-04-01\n"
    "S04,healthy,7,2023-04-02\n"
    "S05,patient,9.25,\n"
)


def make_image(shape=(16, 16, 6), spacing=(0.9, 0.9, 2.0), origin=(-7.0, -7.0, 10.0), *, seed: int = SEED,
               modality: str = "MR"):
    """A small random int16 volume with a plain axial LPS affine."""
    import sobre

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 1000, size=shape).astype(np.int16)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return sobre.Image(arr, aff, modality=modality)


def write_series(folder: Path, meta: dict, *, modality: str = "MR", shape=(16, 16, 6), seed: int = SEED,
                 uid_seed: str | None = None, filename: str = "IM{index:04d}.dcm") -> list[Path]:
    """One DICOM series (one file per slice) with deterministic UIDs and pixels."""
    import sobre

    img = make_image(shape, seed=seed, modality=modality)
    return sobre.write_dicom_series(img, folder, meta=meta, modality=modality,
                                    uid_seed=uid_seed or f"{meta.get('patient_id')}-{folder.name}",
                                    filename=filename)


def build_cohort(root: Path) -> Path:
    """The five-subject cohort of :data:`SUBJECTS` under ``root`` (6 slices each, 30 files)."""
    for i, (name, modality, meta) in enumerate(SUBJECTS):
        write_series(root / name, meta, modality=modality, seed=SEED + i, uid_seed=f"catalog-{name}")
    return root


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory) -> Path:
    """Read-only use: the generated five-subject cohort (tests that change files copy it first)."""
    return build_cohort(tmp_path_factory.mktemp("cohort") / "data")


@pytest.fixture
def cohort_copy(cohort_dir, tmp_path) -> Path:
    """A private copy of the cohort that a test may change."""
    dst = tmp_path / "data"
    shutil.copytree(cohort_dir, dst)
    return dst


@pytest.fixture
def clinical_csv(tmp_path) -> Path:
    p = tmp_path / "clinical.csv"
    p.write_text(CLINICAL_CSV)
    return p


@pytest.fixture
def workspace(tmp_path):
    """A fresh, empty SQLite workspace."""
    from sobre.catalog import Workspace

    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture
def ingested(workspace, cohort_dir, clinical_csv):
    """The workspace with the cohort and its clinical table ingested."""
    report = workspace.ingest([cohort_dir], clinical=clinical_csv)
    assert report.new == 30 and not report.skipped and report.clinical_error is None
    return workspace


# --------------------------------------------------------------------------- table dumps
def dump_tables(ws, *, natural: bool = False) -> dict[str, list]:
    """Every row of every catalog table, sorted; ``natural=True`` replaces surrogate keys by natural ones.

    Natural keys make two catalogs built by different histories (a crash and a resume vs one clean
    run) comparable: ids differ, content must not.
    """
    from sqlalchemy import select

    from sobre.catalog._models import Base

    with ws.engine.connect() as conn:
        raw = {t.name: [dict(r._mapping) for r in conn.execute(select(t))] for t in Base.metadata.sorted_tables}
    if natural:
        sites = {r["id"]: r["name"] for r in raw["site"]}
        subjects = {r["id"]: r["subject_id"] for r in raw["subject"]}
        studies = {r["id"]: r["study_uid"] for r in raw["study"]}
        series = {r["id"]: (r["series_uid"], r["label"]) for r in raw["series"]}
        variables = {r["id"]: r["name"] for r in raw["variable"]}
        cohorts = {r["id"]: r["name"] for r in raw["cohort"]}
        repl = {"site_id": sites, "site_pk": sites, "subject_pk": subjects, "study_pk": studies,
                "series_pk": series, "variable_pk": variables, "cohort_pk": cohorts}
        for rows in raw.values():
            for r in rows:
                r.pop("id", None)
                for k, m in repl.items():
                    if k in r:
                        r[k] = m.get(r[k]) if r[k] is not None else None
                if isinstance(r.get("header"), dict) and "_study_pk" in r["header"]:
                    r["header"] = dict(r["header"], _study_pk=studies.get(r["header"]["_study_pk"]))
    return {name: sorted(rows, key=repr) for name, rows in raw.items()}


@pytest.fixture(scope="session")
def dump():
    """``dump(ws, natural=False)`` -> every table's rows (see :func:`dump_tables`)."""
    return dump_tables


def check_consistent(db_file: Path) -> dict:
    """Assert the invariants a crash must never break; returns counts (files, series, pending)."""
    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        pending = {u for (u,) in con.execute("SELECT series_uid FROM pending_series")}
        # every file is either assembled into a series of its own UID, or waits in pending_series
        for fid, uid, spk in con.execute("SELECT id, series_uid, series_pk FROM file"):
            if spk is None:
                assert uid in pending, f"file {fid} of series {uid} is neither assembled nor pending"
            else:
                suid = con.execute("SELECT series_uid FROM series WHERE id = ?", (spk,)).fetchone()
                assert suid is not None and suid[0] == uid
        # no series without files, and file counts agree
        for sid, n in con.execute("SELECT id, n_files FROM series"):
            got = con.execute("SELECT count(*) FROM file WHERE series_pk = ?", (sid,)).fetchone()[0]
            assert got == n and n > 0, f"series {sid}: n_files {n}, files {got}"
        # no duplicated file
        assert con.execute("SELECT count(*) - count(DISTINCT source_path) FROM file").fetchone()[0] == 0
        return {
            "files": con.execute("SELECT count(*) FROM file").fetchone()[0],
            "series": con.execute("SELECT count(*) FROM series").fetchone()[0],
            "pending": len(pending),
        }
    finally:
        con.close()


@pytest.fixture(scope="session")
def consistent():
    """``consistent(db_file)``: assert the crash-safety invariants of a SQLite catalog (see check_consistent)."""
    return check_consistent

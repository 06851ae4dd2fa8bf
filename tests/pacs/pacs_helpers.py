"""Helpers for the PACS tests: a small study with fake PHI built from pydicom's CT_small.dcm."""

from __future__ import annotations

from pathlib import Path

PHI = ["Martin^Sophie", "Martin", "Sophie", "PID-778812", "ACC-5521", "Clinique du Parc", "19700412"]


def make_study(folder: Path, n: int = 3, *, tag: str = "1") -> tuple[str, list[Path]]:
    """Write ``n`` CT instances of one study (real CT pixels, fake PHI); returns (study UID, files)."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    root = f"1.2.826.0.1.3680043.9.7779.{tag}"
    files = []
    for i in range(n):
        ds = src.copy()
        ds.StudyInstanceUID = root + ".1"
        ds.SeriesInstanceUID = root + ".2"
        ds.SOPInstanceUID = f"{root}.3.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.PatientName = "Martin^Sophie"
        ds.PatientID = f"PID-77881{tag}" if tag != "1" else "PID-778812"
        ds.PatientBirthDate = "19700412"
        ds.AccessionNumber = "ACC-5521"
        ds.InstitutionName = "Clinique du Parc"
        ds.StudyDate = "20200301"
        path = folder / f"ct{i + 1}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return root + ".1", files

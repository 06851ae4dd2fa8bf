"""Per-file scanning for ingest: content hash + header facts, without reading pixel data.

:func:`scan_file` is a pure function of the file (safe to run in worker processes); its result is
a plain dict that the workspace writes to the catalog.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import date
from pathlib import Path

import numpy as np

from sobre.errors import SobreError

BIDS_SUB = re.compile(r"^sub-[A-Za-z0-9]+$")
BIDS_SES = re.compile(r"^ses-[A-Za-z0-9]+$")
BIDS_MODALITY = {"T1w": "MR", "T2w": "MR", "FLAIR": "MR", "PD": "MR", "bold": "MR", "dwi": "MR", "T2starw": "MR",
                 "ct": "CT", "CT": "CT", "pet": "PT"}
IGNORED_NAMES = {"DICOMDIR", "participants.tsv", "participants.json", "dataset_description.json", "README",
                 "CHANGES", "LICENSE", ".DS_Store", "Thumbs.db"}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def uid_from_hash(sha: str) -> str:
    """A valid DICOM UID derived from content (the 2.25 UUID arc), for files that carry none."""
    return "2.25." + str(int(sha[:32], 16))


def age_from_dicom(age: str | None, birth: str | None, study_date: str | None) -> float | None:
    """Age in years: PatientAge ('045Y', '018M', ...) if present, else birth date vs study date."""
    if age:
        a = age.strip().upper()
        if len(a) >= 2 and a[:-1].isdigit():
            n = int(a[:-1])
            v = {"Y": n, "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}.get(a[-1])
            if v is not None:
                return round(float(v), 3)
    if birth and study_date and len(birth) >= 8 and len(study_date) >= 8:
        try:
            b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
            s = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
        except ValueError:
            return None
        if s >= b:
            return round((s - b).days / 365.25, 3)
    return None


def normalise_sex(value) -> str | None:
    if value is None:
        return None
    v = str(value).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(v)


def _frame_json(f) -> dict:
    d = dict(f.__dict__)
    for k in ("orientation", "position", "pixel_spacing"):
        if d[k] is not None:
            d[k] = [float(v) for v in d[k]]
    soft = dict(d["soft"])
    if "mosaic" in soft:
        m = dict(soft["mosaic"])
        m["affine"] = np.asarray(m["affine"]).tolist()
        m["tile"] = list(m["tile"])
        soft["mosaic"] = m
    d["soft"] = soft
    return d


def frame_from_json(d: dict):
    from sobre.image._dicom import Frame

    d = dict(d)
    for k in ("orientation", "position", "pixel_spacing"):
        if d[k] is not None:
            d[k] = np.asarray(d[k], dtype=np.float64)
    soft = dict(d["soft"])
    if "mosaic" in soft:
        m = dict(soft["mosaic"])
        m["affine"] = np.asarray(m["affine"], dtype=np.float64)
        m["tile"] = tuple(m["tile"])
        soft["mosaic"] = m
    d["soft"] = soft
    return Frame(**d)


def _bids_context(path: Path) -> dict:
    parts = path.parts
    ctx: dict = {}
    for i, p in enumerate(parts):
        if BIDS_SUB.match(p):
            ctx["subject_id"] = p
            ctx["bids_root"] = str(Path(*parts[:i])) if i else "."
        elif BIDS_SES.match(p) and "subject_id" in ctx:
            ctx["session"] = p
    stem = path.name.split(".")[0]
    suffix = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    if "subject_id" in ctx:
        ctx["modality"] = BIDS_MODALITY.get(suffix)
        ctx["protocol"] = suffix or None
    return ctx


def scan_file(path: str) -> dict:
    """Hash and read the header of one file; never raises for bad content (it returns ``error``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom/nibabel chatter; real problems come back as ``error``
        return _scan_file(path)


def _scan_file(path: str) -> dict:
    from sobre.image import _formats
    from sobre.image._dicom import check_image, frames_of, header_metadata, read_header

    p = Path(path)
    rec: dict = {"path": str(p), "error": None}
    try:
        st = p.stat()
        rec["size"] = st.st_size
        rec["mtime_ns"] = st.st_mtime_ns
        if st.st_size == 0:
            rec["error"] = "empty file (0 bytes)"
            return rec
        kind = _formats.sniff(p)
        rec["kind"] = kind
        if kind is None:
            rec["error"] = "not an image file (neither DICOM, NIfTI, NRRD/MetaImage nor PNG/JPEG/TIFF by content)"
            return rec
        rec["sha256"] = sha256_file(p)
        if kind == "dicom":
            ds = read_header(p)
            check_image(ds, p)
            frames = frames_of(ds, p)
            meta = header_metadata(ds)
            meta["age_years"] = age_from_dicom(meta.get("patient_age"), meta.get("patient_birth_date"),
                                               meta.get("study_date"))
            meta.pop("patient_birth_date", None)  # used for age only; not kept in the catalog
            rec["series_uid"] = frames[0].series_uid
            rec["sop_uid"] = str(ds.get("SOPInstanceUID", "")) or None
            rec["frames"] = [_frame_json(f) for f in frames]
            rec["header"] = meta
        else:
            reader = {"nifti": _formats.read_nifti, "itk": _formats.read_itk, "optical": _formats.read_optical}[kind]
            img = reader(p)
            bids = _bids_context(p)
            header = {
                "format": img.metadata.get("format", kind), "shape": list(img.shape),
                "spacing": [float(s) for s in img.spacing], "affine": img.affine.tolist(),
                "orientation": img.orientation, "dtype": str(img.dtype), "coordinate_system": img.coordinate_system,
                "extra_axes": list(img.extra_axes),
                "modality": bids.get("modality") or img.modality,
                "protocol": bids.get("protocol"),
                "patient_id": bids.get("subject_id") or p.name.split(".")[0],
                "session": bids.get("session"),
                "bids_root": bids.get("bids_root"),
            }
            rec["series_uid"] = uid_from_hash(rec["sha256"])
            rec["sop_uid"] = None
            rec["frames"] = None
            rec["header"] = {k: v for k, v in header.items() if v is not None}
    except SobreError as exc:
        rec["error"] = str(exc).removeprefix(f"{p}: ")
    except (OSError, ValueError, RuntimeError) as exc:
        rec["error"] = f"cannot read file ({type(exc).__name__}: {exc})"
    return rec


def walk(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """Files below ``paths`` (sorted, hidden and index files left out) and the paths that do not exist."""
    files: list[str] = []
    missing: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw).absolute()
        if not p.exists():
            missing.append((str(p), "no such file or folder"))
            continue
        if p.is_file():
            files.append(str(p))
            continue
        for root, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in sorted(names):
                if n.startswith(".") or n in IGNORED_NAMES or n.endswith((".json", ".tsv", ".csv", ".txt", ".md")):
                    continue
                files.append(str(Path(root) / n))
    return files, missing

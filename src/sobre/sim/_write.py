"""Write simulated cohorts to disk: images (DICOM, NIfTI or BIDS), participants.tsv and ground truth.

Everything written says it is simulated: DICOM headers (PatientName ``SIMULATED^...``,
PatientIdentityRemoved YES, SyntheticData YES, ClinicalTrialProtocolName / SeriesDescription /
ImageComments "SIMULATED - not patient data"), a ``simulated`` column in participants.tsv, a
``Simulated`` key in every JSON file and a README at the top. Output is byte-identical for the same
configuration and seed: UIDs derive from the configuration digest, no timestamps are written, and
files are produced in subject order whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sobre.base import Progress, no_progress
from sobre.errors import InputError
from sobre.image import Image, save, write_dicom_series

NOTICE = "SIMULATED - not patient data"
FORMATS = ("dicom", "nifti", "bids")


@dataclass
class WriteReport:
    """What a cohort writer produced."""

    out_dir: Path
    format: str
    subjects: int
    files: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    participants: Path | None = None
    truth_dir: Path | None = None
    image_dir: Path | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- small helpers
def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def fmt(v) -> str:
    """Stable text for a TSV cell: integers as integers, floats with up to 6 significant decimals."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return "n/a"
        if float(v).is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{float(v):.6g}" if abs(float(v)) < 1e-3 else f"{float(v):.6f}".rstrip("0").rstrip(".")
    return str(v)


def tsv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written, before anything is simulated or written.

    ``out`` must be a folder (or not exist yet, under a folder) where a file can be created; a
    non-empty folder needs ``overwrite``. Nothing is left behind by the check.
    """
    fix_path = "choose a folder you can write to"
    if out.exists() and not out.is_dir():
        raise InputError("the output path is a file, not a folder", path=out, expected="a new or empty folder",
                         found="an existing file", fix=fix_path)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError("output folder is not empty", path=out, expected="a new or empty folder",
                         found=f"{sum(1 for _ in out.iterdir())} entries",
                         fix="choose another folder, or pass --overwrite (files of the same names are replaced)")
    probe = out
    while not probe.exists() and probe != probe.parent:  # the nearest folder that exists
        probe = probe.parent
    if not probe.is_dir():
        raise InputError("the output folder cannot be created: a parent is a file", path=out,
                         expected="a path under folders", found=f"{probe} is a file", fix=fix_path)
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".sobre-write-check-"):
            pass
    except OSError as exc:
        raise InputError("the output folder is not writable", path=out, expected="a folder where files can be "
                         "created", found=f"{probe}: {exc.strerror or exc}", fix=fix_path) from None


# --------------------------------------------------------------------------- DICOM metadata
def brain_dicom_meta(meta: dict, digest: str) -> tuple[dict, dict]:
    """(meta, extra) for :func:`sobre.write_dicom_series` from a simulated subject's metadata."""
    sid = meta["subject_id"]
    m = {
        "patient_id": sid,
        "patient_name": f"SIMULATED^{sid}",
        "patient_sex": meta["sex"],
        "patient_age": f"{int(meta['age']):03d}Y",
        "patient_size_m": meta["height_m"],
        "patient_weight_kg": meta["weight_kg"],
        "institution": meta["site"],
        "manufacturer": meta["manufacturer"],
        "model": meta["model"],
        "field_strength": meta["field_strength"],
        "series_description": meta.get("series_description", "SIMULATED T1w - not patient data"),
        "study_description": f"SIMULATED brain MRI ({NOTICE})",
        "protocol": f"SIMULATED {meta.get('sequence', 'T1w')}",
        "body_part": "HEAD",
        "study_id": "SIM",
        "series_number": 1,
        "scanning_sequence": "GR\\IR" if meta.get("inversion_time") else "GR",
        "sequence_variant": "SP\\MP" if meta.get("inversion_time") else "SP",
        "echo_time": _ds(meta.get("echo_time")),
        "repetition_time": _ds(meta.get("repetition_time")),
    }
    diagnosis = meta.get("diagnosis", "")
    extra = {
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": f"{NOTICE} (sobre.sim)",
        "SyntheticData": "YES",
        "ClinicalTrialSponsorName": "sobre.sim (SIMULATED)",
        "ClinicalTrialProtocolID": f"SOBRE-SIM-{digest[:8]}",
        "ClinicalTrialProtocolName": NOTICE,
        "ClinicalTrialSiteID": meta["site"],
        "ClinicalTrialSiteName": meta["site"],
        "ClinicalTrialSubjectID": sid,
        "ImageComments": f"{NOTICE}. sobre.sim brain cohort {digest}; diagnosis={diagnosis}",
        "PatientComments": NOTICE,
        "AdmittingDiagnosesDescription": diagnosis,
        "FlipAngle": _ds(meta.get("flip_angle")),
        "SequenceName": str(meta.get("sequence", ""))[:16],
    }
    if meta.get("inversion_time"):
        extra["InversionTime"] = _ds(meta["inversion_time"])
    return m, extra


def _ds(v) -> str:
    if v is None or v == "":
        return ""
    s = f"{float(v):.6g}"
    return s[:16]


def bids_sidecar(meta: dict, image: Image) -> dict:
    return {
        "Simulated": True,
        "Notice": NOTICE,
        "Manufacturer": meta["manufacturer"],
        "ManufacturerModelName": meta["model"],
        "MagneticFieldStrength": meta["field_strength"],
        "InstitutionName": meta["site"],
        "PulseSequenceType": meta.get("sequence"),
        "RepetitionTime": (meta.get("repetition_time") or 0) / 1000.0 or None,
        "EchoTime": (meta.get("echo_time") or 0) / 1000.0 or None,
        "InversionTime": (meta.get("inversion_time") or 0) / 1000.0 or None,
        "FlipAngle": meta.get("flip_angle"),
        "SliceThickness": round(float(image.spacing[2]), 4),
        "GeneratedBy": "sobre.sim",
    }


# --------------------------------------------------------------------------- generic parallel driver
def run_ordered(n: int, work: Callable[[int], dict], jobs: int, progress: Progress = no_progress,
                stage: str = "subjects", compute=None) -> list:
    """Run ``work(i)`` for ``i < n`` on ``jobs`` processes (fork), results in index order.

    ``progress(stage, done, n)`` is called after each item. ``compute``: a cluster
    (:class:`sobre.base.Compute`) runs the items on its workers instead (``work`` and what it holds,
    the simulator, sent once per worker); they write their files, the results come back in order.
    """
    if compute is not None and compute.distributed:
        return list(compute.map(_call_shared, range(n), shared=work, stage=stage, progress=progress))
    results: list = [None] * n
    progress(stage, 0, n)
    if jobs <= 1 or n <= 1:
        for i in range(n):
            results[i] = work(i)
            progress(stage, i + 1, n)
        return results
    import multiprocessing as mp

    global _WORK
    _WORK = work
    ctx = mp.get_context("fork")
    with ctx.Pool(processes=jobs) as pool:
        for done, (i, res) in enumerate(pool.imap_unordered(_call, range(n), chunksize=1), start=1):
            results[i] = res
            progress(stage, done, n)
    return results


_WORK: Callable[[int], dict] | None = None


def _call(i: int):
    return i, _WORK(i)  # type: ignore[misc]


def _call_shared(work: Callable[[int], dict], i: int) -> dict:  # on a cluster's workers
    return work(i)


def save_image(image: Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(image, path)


def write_dicom(image: Image, folder: Path, meta: dict, extra: dict, uid_seed: str) -> list[Path]:
    return write_dicom_series(image, folder, meta=meta, modality=image.modality or "OT", uid_seed=uid_seed,
                              extra=extra)

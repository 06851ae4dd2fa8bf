"""What arrives: instances stored by the workspace's intake, registered in the queue by study.

Both receivers go through ``ws.intake.route(...)`` — the C-STORE listener of :mod:`sobre.pacs`
(route ``"dicom"``) and the STOW-RS endpoint (route ``"dicomweb"``) — so a workspace with
``[privacy] deidentify = true`` de-identifies every instance before it is written, and the queue
only ever sees (and the apps only ever read) what the intake stored. :func:`store_instance` is the
STOW-RS (and ``sobre service process``) path: the same checks and layout as the listener.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sobre.base import sha256_file
from sobre.errors import InputError, SobreError, describe_exception

from ._queue import Queue

__all__ = ["register_instances", "store_instance", "StoreFailure", "Registered"]

log = logging.getLogger("sobre.service")

# PS3.18 Table I.2-1 / PS3.4 GG.4 failure reasons used in STOW-RS answers
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
DEID_REFUSED = 0xC212
STUDY_MISMATCH = 0xC409


class StoreFailure(Exception):
    """An instance that is not stored: ``code`` is the DICOM failure reason, ``message`` why."""

    def __init__(self, code: int, message: str, sop_class: str = "", sop_uid: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sop_class = sop_class
        self.sop_uid = sop_uid


@dataclass
class Registered:
    """What :func:`register_instances` recorded."""

    studies: list[str] = field(default_factory=list)
    instances: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def store_instance(route, data: bytes, *, source: str, study: str | None = None) -> tuple[Path, str, str]:
    """Check one Part 10 instance, de-identify it if the route says so, write it into the route's store.

    Returns ``(written path, SOP class UID, SOP instance UID as received)``; hand the path to
    :func:`register_instances` (and ``route.add``). Raises :class:`StoreFailure` with a DICOM failure
    reason; nothing is written then.
    """
    from sobre.image import check_pixel_length, read_instance, write_atomic

    try:
        ds = read_instance(io.BytesIO(data))
    except SobreError as exc:
        raise StoreFailure(CANNOT_UNDERSTAND, exc.what) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged data
        raise StoreFailure(CANNOT_UNDERSTAND, describe_exception(exc)) from None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    sop = str(ds.get("SOPInstanceUID", "") or "")
    st = str(ds.get("StudyInstanceUID", "") or "")
    se = str(ds.get("SeriesInstanceUID", "") or "")
    if not (sop and sop_class and st and se):
        raise StoreFailure(DATA_SET_MISMATCH, "the instance lacks SOP class, SOP instance, study or series UID",
                           sop_class, sop)
    if study is not None and st != study:
        raise StoreFailure(STUDY_MISMATCH, f"the instance belongs to study {st}, not to {study} (the URL's)",
                           sop_class, sop)
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        check_pixel_length(ds, transfer_syntax=ts)
    except SobreError as exc:
        raise StoreFailure(DATA_SET_MISMATCH, exc.what, sop_class, sop) from None
    if route.deidentifier is not None:
        try:
            data, result = route.deidentifier.deidentify_to_bytes(ds, source=source, copy=False)
        except SobreError as exc:
            raise StoreFailure(DEID_REFUSED, f"de-identification refused the instance: {exc.what}",
                               sop_class, sop) from None
        except Exception as exc:  # noqa: BLE001
            raise StoreFailure(DEID_REFUSED, describe_exception(exc), sop_class, sop) from None
        rel = f"{result.subject}/{result.study_instance_uid}/{result.series_instance_uid}/{result.sop_instance_uid}.dcm"
    else:
        rel = f"{st}/{se}/{sop}.dcm"
    target = Path(route.store) / rel
    try:
        write_atomic(target, data)
    except OSError as exc:
        raise StoreFailure(OUT_OF_RESOURCES, f"cannot write {target}: {exc.strerror}", sop_class, sop) from None
    return target, sop_class, sop


def _facts(path: str) -> dict:
    from sobre.image import read_header

    ds = read_header(path)

    def text(kw):
        v = ds.get(kw, None)
        return str(v).strip() if v not in (None, "") else None

    facts = {k: text(kw) for k, kw in (("sop_uid", "SOPInstanceUID"), ("study_uid", "StudyInstanceUID"),
                                       ("series_uid", "SeriesInstanceUID"), ("sop_class_uid", "SOPClassUID"),
                                       ("patient_id", "PatientID"), ("accession", "AccessionNumber"),
                                       ("modality", "Modality"))}
    if not (facts["sop_uid"] and facts["study_uid"] and facts["series_uid"]):
        raise InputError("the stored instance lacks its SOP instance, study or series UID", path=path)
    return facts


def register_instances(queue: Queue, paths: list[str], *, via: str, peer: str | None = None,
                       now: float | None = None) -> Registered:
    """Record stored instances in the queue (one transaction); their studies start (or restart) receiving.

    An instance received again unchanged (same SOP instance UID, path and SHA-256) changes nothing;
    a changed or new one replaces the earlier record and its study, even if complete, starts
    receiving again: its series are routed anew when it is quiet (jobs whose exact inputs were
    already processed are not made twice).
    """
    now = time.time() if now is None else now
    out = Registered()
    rows = []
    for p in paths:
        try:
            f = _facts(str(p))
            f["sha256"] = sha256_file(p)
        except (SobreError, OSError) as exc:
            out.skipped.append((str(p), str(exc)))
            log.error("received file not registered: %s", exc)
            continue
        f["path"] = str(p)
        rows.append(f)
    if not rows:
        return out
    with queue.tx() as c:
        changed = []
        for f in rows:
            prior = c.execute("SELECT path, sha256 FROM instances WHERE sop_uid = ?", (f["sop_uid"],)).fetchone()
            if prior is not None and (prior["path"], prior["sha256"]) == (f["path"], f["sha256"]):
                continue  # the same instance again (a listener re-ingesting its store after a crash): nothing new
            changed.append(f)
        rows = changed
        for f in rows:
            c.execute("INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, sha256, received_at, "
                      "via, peer, patient_id, accession, modality) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                      "ON CONFLICT (sop_uid) DO UPDATE SET study_uid=excluded.study_uid, series_uid=excluded.series_uid, "
                      "sop_class_uid=excluded.sop_class_uid, path=excluded.path, sha256=excluded.sha256, "
                      "received_at=excluded.received_at, via=excluded.via, peer=excluded.peer, "
                      "patient_id=excluded.patient_id, accession=excluded.accession, modality=excluded.modality, "
                      "audited=CASE WHEN instances.sha256 = excluded.sha256 THEN instances.audited ELSE 0 END",
                      (f["sop_uid"], f["study_uid"], f["series_uid"], f["sop_class_uid"], f["path"], f["sha256"], now,
                       via, peer, f["patient_id"], f["accession"], f["modality"]))
        for study in dict.fromkeys(f["study_uid"] for f in rows):
            n = c.execute("SELECT COUNT(*) FROM instances WHERE study_uid = ?", (study,)).fetchone()[0]
            c.execute("INSERT INTO studies (study_uid, state, first_received, last_received, n_instances) "
                      "VALUES (?, 'receiving', ?, ?, ?) ON CONFLICT (study_uid) DO UPDATE SET state='receiving', "
                      "last_received=excluded.last_received, n_instances=excluded.n_instances",
                      (study, now, now, n))
            out.studies.append(study)
    out.instances = len(rows)
    if out.skipped or len(rows) < len(paths):
        log.debug("%d of %d instance(s) were new or changed", len(rows), len(paths))
    return out

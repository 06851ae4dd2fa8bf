"""Deterministic UIDs for a job's DICOM outputs: a re-run or a re-send is the same instance.

The writers of :mod:`sobre.image` give every SEG, SR and SC new random ``2.25`` UIDs. The service
replaces each UID the writers *generated* (SOP instance, series, tracking and dimension
organisation UIDs) by one derived from the job (``2.25.`` + 128 bits of SHA-256 of the queue's seed,
the job key and the UID's role: file, attribute, occurrence), consistently across the job's files
(the SR's reference to the SEG follows the SEG). UIDs copied from the sources (study, frame of
reference, the referenced instances), well-known DICOM UIDs and the SR's device observer UID
(derived from the model already) are left as they are. A job that runs again after a crash thus
writes instances with the same UIDs, and a PACS that received the first one stores it once.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from sobre.base import sha256_bytes, write_atomic

__all__ = ["derived_uid", "remap_outputs"]

_WELL_KNOWN = "1.2.840.10008."
_DEVICE_OBSERVER_UID = ("121012", "DCM")
_TRACKING_UID = ("112040", "DCM")


def derived_uid(seed: str, role: str) -> str:
    """A ``2.25`` UID from ``seed`` and ``role`` (the same arguments, the same UID).

    >>> derived_uid("s", "a") == derived_uid("s", "a"), derived_uid("s", "a") == derived_uid("s", "b")
    (True, False)
    >>> derived_uid("s", "a").startswith("2.25.") and len(derived_uid("s", "a")) <= 64
    True
    """
    digest = hashlib.sha256(f"sobre-service-uid\0{seed}\0{role}".encode()).digest()
    return "2.25." + str(uuid.UUID(bytes=digest[:16]).int)


def _ui_values(ds, out: set[str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                _ui_values(item, out)
        elif elem.VR == "UI" and elem.value:
            vals = [elem.value] if isinstance(elem.value, str) else list(elem.value)
            out.update(str(v) for v in vals if v)


def source_uids(paths) -> set[str]:
    """Every UID written in the headers of the source instances (nested ones too)."""
    from sobre.image import read_header

    out: set[str] = set()
    for p in paths:
        ds = read_header(p)
        _ui_values(ds, out)
        if getattr(ds, "file_meta", None) is not None:
            _ui_values(ds.file_meta, out)
    return out


def _device_uids(ds, out: set[str]) -> None:
    """UIDREF content items that name a device observer (derived from the model: kept)."""
    for item in ds.get("ContentSequence", None) or ():
        name = item.get("ConceptNameCodeSequence", None)
        if name and (str(name[0].CodeValue), str(name[0].CodingSchemeDesignator)) == _DEVICE_OBSERVER_UID:
            if "UID" in item:
                out.add(str(item.UID))
        _device_uids(item, out)


def remap_outputs(files: list[tuple[str, Path]], seed: str, *, keep: set[str]) -> dict[str, str]:
    """Replace the generated UIDs of ``files`` by derived ones, rewriting each file atomically.

    Parameters
    ----------
    files : list of (role, path)
        The job's DICOM outputs in a stable order; ``role`` names each one (``"SEG/seg.dcm"``).
    seed : str
        The job's seed (queue seed + job key, + correction number for corrected outputs).
    keep : set of str
        UIDs not to touch: those of the source instances (:func:`source_uids`).

    Returns
    -------
    dict
        old UID -> new UID, for every UID replaced.
    """
    import pydicom

    from sobre.image import encode_dataset

    datasets = [(role, path, pydicom.dcmread(path)) for role, path in files]
    keep = set(keep)
    for _, _, ds in datasets:
        _device_uids(ds, keep)
    mapping: dict[str, str] = {}

    def visit(ds, role: str, counts: dict) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value or ():
                    visit(item, role, counts)
                continue
            if elem.VR != "UI" or not elem.value:
                continue
            multi = not isinstance(elem.value, str)
            values = [str(v) for v in (elem.value if multi else [elem.value])]
            new_values = []
            for v in values:
                if v in keep or v.startswith(_WELL_KNOWN):
                    new_values.append(v)
                    continue
                if v not in mapping:
                    key = elem.keyword or f"{elem.tag:08X}"
                    n = counts.get(key, 0)
                    counts[key] = n + 1
                    mapping[v] = derived_uid(seed, f"{role}/{key}/{n}")
                new_values.append(mapping[v])
            if new_values != values:
                elem.value = new_values if multi else new_values[0]

    for role, _, ds in datasets:  # one pass: a UID first met in one file is mapped alike in the others
        visit(ds, role, {})
    for role, path, ds in datasets:
        if getattr(ds, "file_meta", None) is not None:
            ms = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
            if ms in mapping:
                ds.file_meta.MediaStorageSOPInstanceUID = mapping[ms]
        data, _ = encode_dataset(ds)
        write_atomic(path, data)
    return mapping


def remap_records(records: list[dict], mapping: dict[str, str], root: Path) -> list[dict]:
    """Output records (``kind``, ``path`` relative to ``root``, UIDs, ``sha256``, ``references``) after a remap."""
    out = []
    for rec in records:
        rec = dict(rec)
        for key in ("sop_instance_uid", "series_uid", "study_uid"):
            if rec.get(key) in mapping:
                rec[key] = mapping[rec[key]]
        if rec.get("references"):
            rec["references"] = [mapping.get(r, r) for r in rec["references"]]
        p = root / rec["path"]
        if p.is_file():
            rec["sha256"] = sha256_bytes(p.read_bytes())
        out.append(rec)
    return out

"""Per-file scanning for ingest: content hash + header facts, without reading pixel data.

:func:`scan_file` is a pure function of the file (safe to run in worker processes); its result is
a plain dict that the workspace writes to the catalog.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np

from sobre.base import sha256_file
from sobre.errors import SobreError

BIDS_SUB = re.compile(r"^sub-[A-Za-z0-9]+$")
BIDS_SES = re.compile(r"^ses-[A-Za-z0-9]+$")
BIDS_MODALITY = {"T1w": "MR", "T2w": "MR", "FLAIR": "MR", "PD": "MR", "bold": "MR", "dwi": "MR", "T2starw": "MR",
                 "ct": "CT", "CT": "CT", "pet": "PT"}
_DA = re.compile(r"^\d{8}$")




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
        try:
            return _scan_file(path)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad file must never stop a batch
            from sobre.errors import describe_exception

            return {"path": str(path), "error": f"cannot read file ({describe_exception(exc)})"}


def scan_many(paths: list[str]) -> list[dict]:
    """:func:`scan_file` over several files (one task for a worker process)."""
    return [scan_file(p) for p in paths]


def _scan_file(path: str) -> dict:
    from sobre.image import check_image, file_kind, frames_of, header_metadata, load, read_header, verify_pixels

    p = Path(path)
    rec: dict = {"path": str(p), "error": None}
    try:
        st = p.stat()
        rec["size"] = st.st_size
        rec["mtime_ns"] = st.st_mtime_ns
        if st.st_size == 0:
            rec["error"] = "empty file (0 bytes)"
            return rec
        kind = file_kind(p)
        rec["kind"] = kind
        if kind is None:
            rec["error"] = "not an image file (neither DICOM, NIfTI, NRRD/MetaImage nor PNG/JPEG/TIFF by content)"
            return rec
        rec["sha256"] = sha256_file(p)
        if kind == "dicom":
            ds = read_header(p)
            if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                obj = _object_record(ds, p, rec)
                if obj is not None:
                    return obj
            check_image(ds, p)  # read_header already checked completeness and the pixel module
            frames = frames_of(ds, p)
            meta = _header_metadata(ds, header_metadata)
            meta["age_years"] = age_from_dicom(meta.get("patient_age"), meta.get("patient_birth_date"),
                                               meta.get("study_date"))
            meta.pop("patient_birth_date", None)  # used for age only; not kept in the catalog
            if meta.get("study_date") and not _DA.match(meta["study_date"]):
                meta["study_date"] = None  # not a DICOM date (YYYYMMDD)
            if frames[0].series_uid.startswith("file:") or len(frames[0].series_uid) > 64:
                # no (valid) SeriesInstanceUID: a UID derived from the content, like other formats,
                # so that the same file gives the same series wherever it lies
                uid = uid_from_hash(rec["sha256"])
                for f in frames:
                    f.series_uid = uid
            if not frames[0].sop_uid:
                from sobre.image import tag_name

                rec["error"] = (f"{tag_name('SOPInstanceUID')}: the instance has no SOP Instance UID (expected a UID, "
                                "a required attribute of every DICOM instance). the file is damaged or not an "
                                "instance; re-export it")
                rec["code"] = "no-instance-uid"
                return rec
            rec["series_uid"] = frames[0].series_uid
            rec["sop_uid"] = frames[0].sop_uid
            rec["frames"] = [f.to_dict() for f in frames]
            rec["header"] = meta
            _deid_mark(ds, meta)
            if _compressed(meta.get("transfer_syntax")):
                verify_pixels(p)  # compressed pixel data is only known to be good once decoded
        else:
            img = load(p)
            cut = _gzip_intact(p) if p.name.lower().endswith(".gz") else (
                _nifti_truncated(p, img, st.st_size) if kind == "nifti" else None)
            if cut:
                rec["error"] = cut
                return rec
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
        from sobre.errors import describe_exception

        rec["error"] = f"cannot read file ({describe_exception(exc)})"
    return rec


def _compressed(ts: str | None) -> bool:
    if not ts:
        return False
    from pydicom.uid import UID

    try:
        return bool(UID(ts).is_compressed)
    except Exception:  # noqa: BLE001 - a private or garbled syntax: the decoder will tell
        return True


def _deid_mark(ds, meta: dict) -> None:
    """Record the de-identification mark (0012,0062) / (0012,0063) a de-identifying workspace checks."""
    from sobre.image import raw_value

    removed = raw_value(ds, "PatientIdentityRemoved")
    if removed:
        meta["patient_identity_removed"] = str(removed).strip().upper()
        method = ds.get("DeidentificationMethod")
        if method:
            meta["deidentification_method"] = str(method if isinstance(method, str) else method[0])


_OBJECT_KINDS = {"RTSTRUCT": "rtstruct", "RTPLAN": "rtplan", "RTRECORD": "rtrecord", "SR": "sr", "KO": "ko",
                 "PR": "pr", "DOC": "document", "REG": "registration", "PLAN": "plan"}


def _references(ds) -> dict:
    """Series and instances a non-image object refers to (structure sets, plans, reports, ...)."""
    series: list[str] = []
    instances: list[str] = []

    def walk(d, depth: int = 0) -> None:
        if depth > 12:
            return
        for elem in d:
            if elem.VR != "SQ":
                continue
            for item in elem.value or ():
                uid = item.get("SeriesInstanceUID")
                if uid and elem.keyword in ("ReferencedSeriesSequence", "RTReferencedSeriesSequence"):
                    series.append(str(uid))
                sop = item.get("ReferencedSOPInstanceUID")
                if sop:
                    instances.append(str(sop))
                walk(item, depth + 1)

    walk(ds)
    return {"series": sorted(set(series)), "instances": sorted(set(instances))[:10000]}


def _object_record(ds, p: Path, rec: dict) -> dict | None:
    """The scan record of a non-image object (RT structure set, plan, report); None for an image object."""
    from pydicom.uid import UID

    from sobre.errors import InputError
    from sobre.image import MEDIA_STORAGE_DIRECTORY, header_metadata, raw_value, tag_name

    sop_class = str(raw_value(ds, "SOPClassUID") or "")
    name = UID(sop_class).name if sop_class else ""
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise InputError("DICOMDIR is an index of a file set, not an instance", path=p,
                         tag=tag_name("DirectoryRecordSequence"), fix="ingest the folder it indexes")
    if not sop_class or "Image Storage" in name or "Rows" in ds:
        return None  # an image object without pixels: check_image says why
    sop = str(raw_value(ds, "SOPInstanceUID") or "").strip()
    if not sop:
        raise InputError("DICOM object has no SOP Instance UID", path=p, tag=tag_name("SOPInstanceUID"),
                         expected="a UID", found="nothing", fix="the file is damaged or not an instance")
    meta = header_metadata(ds)
    meta["age_years"] = age_from_dicom(meta.get("patient_age"), meta.get("patient_birth_date"), meta.get("study_date"))
    meta.pop("patient_birth_date", None)
    if meta.get("study_date") and not _DA.match(meta["study_date"]):
        meta["study_date"] = None
    _deid_mark(ds, meta)
    modality = str(meta.get("modality") or "").upper()
    series = str(raw_value(ds, "SeriesInstanceUID") or "").strip()
    if not series or len(series) > 64:
        series = uid_from_hash(rec["sha256"])
    label = ds.get("StructureSetLabel") or ds.get("RTPlanLabel") or ds.get("ContentLabel") or None
    meta["object"] = {"sop_uid": sop, "kind": _OBJECT_KINDS.get(modality, "other"), "sop_class_name": name,
                      "references": _references(ds), "label": str(label) if label else None}
    rec.update(kind="dicom-object", series_uid=series, sop_uid=sop, frames=None, header=meta)
    return rec


# Elements that differ from slice to slice of a series and that ``header_metadata`` does not read
# (tests/catalog/test_ingest.py checks that last part): left out of the cache key below.
_PER_INSTANCE_TAGS = frozenset({
    0x00080012, 0x00080013,  # InstanceCreationDate, InstanceCreationTime
    0x00080018,  # SOPInstanceUID
    0x00080032, 0x00080033, 0x0008002A,  # AcquisitionTime, ContentTime, AcquisitionDateTime
    0x00181060,  # TriggerTime
    0x00200013,  # InstanceNumber
    0x00200032,  # ImagePositionPatient
    0x00201041,  # SliceLocation
    0x00280106, 0x00280107,  # Smallest/LargestImagePixelValue
    0x00281050, 0x00281051,  # WindowCenter, WindowWidth
    0x7FE00010, 0x7FE00008, 0x7FE00009,  # PixelData, FloatPixelData, DoubleFloatPixelData
})
_META_CACHE: dict = {}
_META_CACHE_SIZE = 64


def _header_key(ds) -> tuple | None:
    """The raw bytes of every element that may matter to ``header_metadata``; None when some are unread."""
    fm = getattr(ds, "file_meta", None)
    parts: list = [str(fm.get("TransferSyntaxUID", "")) if fm is not None else ""]
    for elem in ds.values():  # raw elements as read: nothing is converted or loaded here
        tag = int(elem.tag)
        if tag in _PER_INSTANCE_TAGS:
            continue
        value = elem.value
        if value is None and getattr(elem, "length", 0):  # deferred (large) element: content unknown here
            return None
        parts.append((tag, elem.VR, value if isinstance(value, (bytes, str)) else repr(value)))
    return tuple(parts)


def _header_metadata(ds, header_metadata) -> dict:
    """``header_metadata(ds)``, remembered for headers that differ only in per-slice elements.

    Converting ~30 elements is most of the cost of reading a small DICOM header; the files of one
    series share all of them except the per-slice ones, whose raw bytes are left out of the key.
    """
    try:
        key = _header_key(ds)
    except Exception:  # noqa: BLE001 - no key, no cache
        key = None
    if key is not None:
        hit = _META_CACHE.get(key)
        if hit is not None:
            return dict(hit)
    meta = header_metadata(ds)
    if key is not None:
        if len(_META_CACHE) >= _META_CACHE_SIZE:
            _META_CACHE.pop(next(iter(_META_CACHE)))
        _META_CACHE[key] = dict(meta)
    return meta


def _nifti_truncated(path: Path, img, size: int) -> str | None:
    """Reason when an uncompressed NIfTI file is shorter than its header says, else None."""
    if path.name.lower().endswith(".gz") or img.metadata.get("format") not in (None, "nifti", "nifti1", "nifti2"):
        return None
    try:
        import nibabel as nib

        hdr = nib.load(str(path)).header
        offset = int(hdr.get_data_offset())
        need = offset + int(np.prod(hdr.get_data_shape())) * np.dtype(hdr.get_data_dtype()).itemsize
    except Exception:  # noqa: BLE001 - the reader already accepted the header; leave it to it
        return None
    if path.suffix.lower() == ".hdr" or need <= size:
        return None
    return (f"NIfTI voxel data is truncated (expected {need} bytes; found {size}). "
            f"the file was cut short; re-export or re-send it")


def _gzip_intact(path: Path) -> str | None:
    """Reason when a gzip stream is cut short or corrupted (checked by decompressing it), else None."""
    import zlib

    d = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as fh:
            while not d.eof and (chunk := fh.read(1 << 20)):
                while chunk and not d.eof:  # bounded output: a mask of zeros inflates ~1000-fold
                    d.decompress(chunk, 1 << 24)
                    chunk = d.unconsumed_tail
    except zlib.error as exc:
        return f"compressed data is corrupted ({exc}); re-export or re-send the file"
    if not d.eof:
        return "compressed data ends early: the file was cut short; re-export or re-send it"
    return None

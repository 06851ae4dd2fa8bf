"""Write an Image as a single-frame DICOM series (CT, MR, or secondary capture)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sobre.errors import InputError
from sobre.image._image import Image

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Sobre's UID prefix is pydicom's generic root unless the caller gives the site's own root.
DEFAULT_UID_PREFIX = pydicom.uid.PYDICOM_ROOT_UID

_META_TO_KEYWORD = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_sex": "PatientSex",
    "patient_age": "PatientAge",
    "patient_birth_date": "PatientBirthDate",
    "patient_size_m": "PatientSize",
    "patient_weight_kg": "PatientWeight",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_id": "StudyID",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "series_number": "SeriesNumber",
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "field_strength": "MagneticFieldStrength",
    "institution": "InstitutionName",
    "protocol": "ProtocolName",
    "body_part": "BodyPartExamined",
    "accession_number": "AccessionNumber",
}


def _encode(arr: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """Pick stored integers and rescale for ``arr``: returns (stored, slope, intercept, signed)."""
    if arr.dtype.kind in "ui":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16), 1.0, 0.0, False
        if lo >= -32768 and hi <= 32767:
            return arr.astype(np.int16), 1.0, 0.0, True
    if arr.dtype.kind == "b":
        return arr.astype(np.uint16), 1.0, 0.0, False
    # floats (or wide integers): quantise linearly into int16 with RescaleSlope/Intercept
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi == lo:
        return np.zeros(a.shape, np.int16), 1.0, lo, True
    slope = (hi - lo) / 65534.0
    intercept = lo + 32767.0 * slope
    stored = np.clip(np.round((a - intercept) / slope), -32767, 32767).astype(np.int16)
    return stored, float(f"{slope:.10g}"), float(f"{intercept:.10g}"), True


def _ds_str(v: float) -> str:
    """A DS (decimal string) of at most 16 characters."""
    s = f"{v:.10g}"
    if len(s) > 16:
        s = f"{v:.6e}"
    return s


def write_dicom_series(
    image: Image,
    out_dir: str | Path,
    *,
    meta: dict | None = None,
    modality: str | None = None,
    uid_prefix: str = DEFAULT_UID_PREFIX,
    uid_seed: str | None = None,
    extra: dict | None = None,
    filename: str = "IM{index:04d}.dcm",
) -> list[Path]:
    """Write a 2D or 3D grey-level Image as single-frame DICOM files, one per slice.

    Parameters
    ----------
    image : Image
        Grey-level image with a patient (LPS) frame. Integer pixels that fit 16 bits are stored
        unchanged; float pixels are quantised linearly to int16 with RescaleSlope/Intercept
        (the step is ``(max - min) / 65534``), which readers undo.
    out_dir : path
        Folder to create; files are written under temporary names and renamed into place.
    meta : dict, optional
        Header values by Sobre metadata name (``patient_id``, ``patient_age``, ``patient_sex``,
        ``manufacturer``, ``field_strength``, ``study_uid``, ``series_uid``, ...).
    modality : str, optional
        ``"CT"`` or ``"MR"`` give CT/MR Image Storage; anything else Secondary Capture.
    uid_seed : str, optional
        Makes every generated UID a deterministic function of this seed (byte-identical output
        for the same input); random UIDs otherwise.
    extra : dict, optional
        More elements by DICOM keyword, e.g. ``{"PatientIdentityRemoved": "YES"}``.

    Returns
    -------
    list of Path
        The files, in slice order.

    Examples
    --------
    >>> import tempfile
    >>> import sobre
    >>> img = sobre.Image(np.arange(60, dtype=np.int16).reshape(4, 5, 3), np.diag([0.5, 0.6, 2.0, 1.0]),
    ...                   modality="CT")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = write_dicom_series(img, tmp, uid_seed="example")
    ...     back = sobre.load(tmp)
    ...     same = bool((back.array == img.array).all())
    >>> [p.name for p in paths]
    ['IM0001.dcm', 'IM0002.dcm', 'IM0003.dcm']
    >>> back.shape, back.spacing, back.orientation, same
    ((4, 5, 3), (0.5, 0.6, 2.0), 'LPS', True)
    """
    if image.coordinate_system != "LPS":
        raise InputError("only images with a patient frame (LPS) can be written as a DICOM series",
                         expected="coordinate_system 'LPS'", found=image.coordinate_system)
    if image.extra_axes:
        raise InputError("only grey-level 2D/3D images can be written as a DICOM series",
                         expected="no channel/time/frame axis", found=str(image.extra_axes))
    meta = dict(image.metadata, **(meta or {}))
    modality = modality or image.modality or meta.get("modality") or "OT"
    sop_class = SOP_CLASSES.get(modality, SECONDARY_CAPTURE)

    def uid(*parts) -> str:
        if uid_seed is None:
            return generate_uid(prefix=uid_prefix)
        return generate_uid(prefix=uid_prefix, entropy_srcs=[uid_seed, *map(str, parts)])

    study_uid = meta.get("study_uid") or uid("study")
    series_uid = meta.get("series_uid") or uid("series")
    for_uid = meta.get("frame_of_reference_uid") or uid("for")

    arr = image.array
    if arr.ndim == 2:
        arr = arr[:, :, None]
    stored, slope, intercept, signed = _encode(arr)
    aff = image.affine
    col_spacing = float(np.linalg.norm(aff[:3, 0]))
    row_spacing = float(np.linalg.norm(aff[:3, 1]))
    row_dir = aff[:3, 0] / col_spacing
    col_dir = aff[:3, 1] / row_spacing
    step = float(np.linalg.norm(aff[:3, 2]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    n = stored.shape[2]
    for k in range(n):
        sop_uid = uid("sop", k)
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = sop_class
        fm.MediaStorageSOPInstanceUID = sop_uid
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=fm, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.Modality = modality
        ds.PatientName = meta.get("patient_name", "")
        ds.PatientID = meta.get("patient_id", "")
        ds.PatientBirthDate = meta.get("patient_birth_date", "")
        ds.PatientSex = meta.get("patient_sex", "")
        ds.StudyDate = meta.get("study_date", "")
        ds.StudyTime = meta.get("study_time", "")
        ds.StudyID = meta.get("study_id", "")
        ds.AccessionNumber = meta.get("accession_number", "")
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = int(meta.get("series_number", 1) or 1)
        ds.InstanceNumber = k + 1
        for key, keyword in _META_TO_KEYWORD.items():
            if key in meta and meta[key] not in (None, "") and keyword not in (
                "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "StudyID", "AccessionNumber", "SeriesNumber",
            ):
                value = meta[key]
                if keyword in ("PatientSize", "PatientWeight", "MagneticFieldStrength"):
                    value = _ds_str(float(value))
                setattr(ds, keyword, value)
        if sop_class == SECONDARY_CAPTURE:
            ds.ConversionType = "WSD"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        pos = aff[:3, 3] + k * aff[:3, 2]
        ds.ImagePositionPatient = [_ds_str(v) for v in pos]
        ds.ImageOrientationPatient = [_ds_str(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds_str(row_spacing), _ds_str(col_spacing)]
        ds.SliceThickness = _ds_str(step)
        if n > 1:
            ds.SpacingBetweenSlices = _ds_str(step)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(stored.shape[1])
        ds.Columns = int(stored.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = _ds_str(slope)
        ds.RescaleIntercept = _ds_str(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = meta.get("kvp", "")
        if modality == "MR":
            ds.ScanningSequence = meta.get("scanning_sequence", "GR")
            ds.SequenceVariant = meta.get("sequence_variant", "NONE")
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = meta.get("echo_time", "")
            ds.RepetitionTime = meta.get("repetition_time", "")
            ds.EchoTrainLength = ""
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        final = out_dir / filename.format(index=k + 1)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".dcm")
        os.close(fd)
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(final)
    return paths

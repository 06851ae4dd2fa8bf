"""DICOM objects for results: Segmentation (SEG), TID 1500 Measurement Report (SR), Secondary Capture (SC).

Everything a model proposes goes back to the PACS as standard objects that reference the images
they were computed on:

- :func:`write_seg` — a **Segmentation** (``BINARY`` by default; ``LABELMAP`` on request), one
  named, coloured, coded segment per label, one frame per source frame that holds a segment,
  each with its own derivation reference to the source instance (and frame) it was computed on.
  The geometry is the source's: the mask must lie on the source grid (checked, see below).
- :func:`write_sr` — a **Comprehensive 3D SR** holding a TID 1500 *Imaging Measurement Report*:
  qualitative findings (coded concept = coded value), measurements (UCUM units), one measurement
  group per segment referencing the SEG, an image library and evidence listing every source
  instance, and an observer context that names the device (model name, version, package hash)
  for AI results, or the person for manual ones.
- :func:`write_secondary_capture` — **Secondary Capture** images (RGB, one per chosen slice): the
  source slice under a window chosen by modality, with each segment's contour and a light fill in
  its colour, for PACS and viewers that cannot display SEG.

Every object gets new UIDs under ``2.25.``, copies the Patient and Study modules of the source
(and its de-identification and ``SyntheticData`` markers, when present), and is written whole or
not at all (:func:`~sobre.base.write_atomic`); each call returns a :class:`DicomOutput` with its
path, UIDs, the instances it references and its SHA-256.

The mask must be on the source grid
-----------------------------------
The mask's affine (voxel → LPS mm) and the sources' ImagePositionPatient, ImageOrientationPatient
and PixelSpacing (per frame for multi-frame sources) must describe the same voxels: for every
source frame, the centres of its four corner pixels must map onto mask voxel centres within
:data:`GRID_TOLERANCE_VOXELS` (0.2 voxel along each mask axis, the tolerance Sobre's series reader
allows for slice positions), and together the frames must cover every slice of the mask. Axes may be
permuted or flipped (the mask of a reoriented image still fits). Anything else is refused with a
:class:`~sobre.errors.GeometryError` naming the first source file that does not fit, before anything
is written. Sources without patient geometry (no position or orientation) are matched by shape only:
the mask must be ``(columns, rows[, frames])``.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sobre.base import sha256_bytes, write_atomic
from sobre.errors import GeometryError, InputError
from sobre.image._dicom import frames_of
from sobre.image._encode import SOBRE_IMPLEMENTATION_UID, SOBRE_IMPLEMENTATION_VERSION, encode_dataset
from sobre.image._image import Image
from sobre.image._part10 import read_header, tag_name

__all__ = [
    "Algorithm", "Segment", "Finding", "Measurement", "DicomOutput", "write_seg", "write_sr",
    "write_secondary_capture", "source_frames", "SourceFrame", "GRID_TOLERANCE_VOXELS", "WINDOWS", "new_uid",
    "render_overlay",
]

log = logging.getLogger("sobre.image")

#: How far (in voxels, along each mask axis) a source pixel centre may lie from a mask voxel centre.
GRID_TOLERANCE_VOXELS = 0.2

#: Window presets (centre, width) in the modality's units; CT uses ``"soft-tissue"`` unless told.
WINDOWS = {"soft-tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0),
           "brain": (40.0, 80.0), "liver": (60.0, 160.0), "mediastinum": (50.0, 350.0)}

#: Segment colours (RGB) used when a segment names none: red, blue, yellow, green, purple, orange, cyan, pink.
PALETTE = ((255, 48, 48), (48, 144, 255), (255, 210, 0), (0, 200, 110), (190, 80, 255), (255, 130, 0),
           (0, 220, 230), (255, 105, 180))

# Patient, Patient Study and General Study attributes copied from the source, and the markers that
# say what the data is (de-identified, simulated) — kept whenever the source has them.
_COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
           "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
           "AccessionNumber", "ReferringPhysicianName", "StudyDescription")
_MARKERS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
            "LongitudinalTemporalInformationModified", "SyntheticData")

_UCUM = {"mm": "millimeter", "cm": "centimeter", "mm2": "square millimeter", "cm2": "square centimeter",
         "mm3": "cubic millimeter", "cm3": "cubic centimeter", "ml": "milliliter", "mL": "milliliter",
         "l": "liter", "1": "no units", "%": "percent", "{ratio}": "ratio", "{count}": "count",
         "[hnsf'U]": "Hounsfield unit", "s": "second", "ms": "millisecond", "a": "year", "mo": "month",
         "d": "day", "g": "gram", "kg": "kilogram", "mm/s": "millimeter per second", "/mm3": "per cubic millimeter",
         "g/ml": "gram per milliliter", "{SUVbw}g/ml": "Standardized Uptake Value body weight"}

_PROCEDURES = {"CT": ("25045-6", "LN", "CT unspecified body region"),
               "MR": ("25056-3", "LN", "MRI unspecified body region"),
               "PT": ("44136-0", "LN", "PET unspecified body region"),
               "NM": ("49118-7", "LN", "NM unspecified body region"),
               "CR": ("43468-8", "LN", "XR unspecified body region"),
               "DX": ("43468-8", "LN", "XR unspecified body region")}
_IMAGING_PROCEDURE = ("363679005", "SCT", "Imaging procedure")

DEFAULT_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
DEFAULT_TYPE = ("52988006", "SCT", "Lesion")


# ----------------------------------------------------------------------------------- the records
@dataclass(frozen=True)
class Algorithm:
    """The device that produced a result: what the SEG's algorithm identification and the SR's
    device observer say.

    Parameters
    ----------
    name : str
        Model (or application) name, e.g. ``"ct-lesions"``.
    version : str
        Its version (a registry version, or the run id of a model loaded from a run).
    sha256 : str
        SHA-256 of the model package (or of the run's checkpoints): identifies the exact weights.
    manufacturer : str
        Who made the model (default ``"Sobre"``).
    family : (value, scheme, meaning)
        Algorithm family code (CID 7162); default DCM 123110 "Artificial Intelligence".

    Examples
    --------
    >>> a = Algorithm("ct-lesions", "1.0", sha256="ab" * 32)
    >>> a.uid.startswith("2.25."), a.uid == Algorithm("ct-lesions", "1.0", sha256="ab" * 32).uid
    (True, True)
    """

    name: str
    version: str
    sha256: str = ""
    manufacturer: str = "Sobre"
    family: tuple = ("123110", "DCM", "Artificial Intelligence")

    @property
    def uid(self) -> str:
        """Device observer UID: a ``2.25`` UID derived from name, version and hash (the same model, the same UID)."""
        digest = hashlib.sha256(f"sobre-device\0{self.name}\0{self.version}\0{self.sha256}".encode()).digest()
        return "2.25." + str(uuid.UUID(bytes=digest[:16]).int)

    @property
    def serial(self) -> str:
        """What goes in DeviceSerialNumber / Device Observer Serial Number: the package hash (64 characters)."""
        return (self.sha256 or "unhashed")[:64]


@dataclass(frozen=True)
class Segment:
    """One segment of a SEG: which mask value (or channel) it is, its name, codes and colour.

    Parameters
    ----------
    label : str
        Segment label shown by viewers (``"lesion"``).
    value : int
        The mask value of this segment (label map), or its channel number counted from 1 (a mask
        with a ``"channel"`` axis, one binary channel per segment, overlaps allowed).
    category, type : (value, scheme, meaning)
        Segmented property category (CID 7150) and type (CID 7151), SNOMED-CT preferably.
        Defaults: SCT 49755003 "Morphologically Abnormal Structure" / SCT 52988006 "Lesion".
    color : (r, g, b), optional
        0–255; a palette colour by default.
    anatomic_region : (value, scheme, meaning), optional
        Where it is (CID 4 / 4031), e.g. ``("39607008", "SCT", "Lung")``.
    """

    label: str
    value: int = 1
    category: tuple | None = None
    type: tuple | None = None
    color: tuple | None = None
    anatomic_region: tuple | None = None


@dataclass(frozen=True)
class Finding:
    """A qualitative evaluation: coded concept ``name`` = coded ``value`` (e.g. Lesion = Present).

    ``segment`` ties it to a segment (its measurement group in the SR); None: the whole study.
    """

    name: tuple
    value: tuple
    segment: int | None = None


@dataclass(frozen=True)
class Measurement:
    """A numeric measurement with a UCUM unit (``"mm3"``, ``"ml"``, ``"1"``, ``"[hnsf'U]"``, or a full code).

    ``segment`` ties it to a segment (its measurement group in the SR); None: the whole study.
    """

    name: tuple
    value: float
    unit: str | tuple = "1"
    segment: int | None = None


@dataclass
class DicomOutput:
    """A DICOM object written by Sobre: where it is, what it is, what it refers to, its hash."""

    kind: str  # "SEG", "SR" or "SC"
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sha256: str
    references: list = field(default_factory=list)  # SOP instance UIDs of the sources it refers to

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sop_class_uid": self.sop_class_uid,
                "sop_instance_uid": self.sop_instance_uid, "series_uid": self.series_uid,
                "study_uid": self.study_uid, "sha256": self.sha256, "references": list(self.references)}


def new_uid() -> str:
    """A new random UID under ``2.25.`` (UUID-derived; no registered root needed).

    >>> u = new_uid(); u.startswith("2.25.") and len(u) <= 64
    True
    """
    return "2.25." + str(uuid.uuid4().int)


# -------------------------------------------------------------------------------- source frames
@dataclass
class SourceFrame:
    """One frame of a source instance, with where it lies on the mask grid (see :func:`source_frames`)."""

    dataset: object  # pydicom Dataset (header)
    path: str | None
    number: int | None  # 1-based frame number in a multi-frame instance, None for single-frame
    rows: int
    cols: int
    index: tuple | None = None  # numpy index into the mask array giving this frame as (rows, cols)
    slice: int = 0  # position along the mask's slice axis

    @property
    def sop_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


def _datasets(sources) -> list[tuple[object, str | None]]:
    """``[(dataset, path or None)]`` from paths, datasets, or an Image (its ``sources``)."""
    from pydicom.dataset import Dataset

    if isinstance(sources, Image):
        if not sources.sources:
            raise InputError("the image has no source files to refer to", expected="an Image read from DICOM files",
                             found="Image.sources is empty",
                             fix="pass the source DICOM files (or their datasets) as sources")
        sources = sources.sources
    if isinstance(sources, (str, Path, Dataset)):
        sources = [sources]
    out = []
    for s in sources:
        if isinstance(s, Dataset):
            out.append((s, None))
        else:
            out.append((read_header(s), str(s)))
    if not out:
        raise InputError("no source instances given", expected="the DICOM instances the result was computed on",
                         found="an empty list", fix="pass the source files or datasets")
    first = out[0][0]
    for ds, p in out[1:]:
        for kw in ("StudyInstanceUID", "FrameOfReferenceUID"):
            a, b = str(first.get(kw, "")), str(ds.get(kw, ""))
            if a != b:
                raise InputError(f"the source instances do not share one {kw}", path=p, tag=tag_name(kw),
                                 expected=f"{a or 'none'} (as in the first source)", found=b or "none",
                                 fix="pass the instances of one series (or of one frame of reference)")
    return out


def _mask_array(mask: Image) -> np.ndarray:
    """The mask as ``(I, J, K)`` or ``(I, J, K, S)`` (segments on the last axis)."""
    if mask.coordinate_system not in ("LPS", "pixel"):
        raise InputError("unknown coordinate system", found=mask.coordinate_system)
    arr = np.asarray(mask.array)
    channel = mask.extra_axes == ("channel",)
    if mask.extra_axes and not channel:
        raise InputError("a mask is a label map or a stack of binary channels",
                         expected="no extra axis, or one 'channel' axis (one binary mask per segment)",
                         found=f"extra axes {mask.extra_axes}", fix="select one time point or frame first")
    if mask.spatial_ndim == 2:
        arr = arr[:, :, None, ...]
    if arr.dtype.kind not in "biu":
        raise InputError("a mask holds integers (labels) or booleans", expected="an integer or boolean array",
                         found=f"dtype {arr.dtype}", fix="threshold probability maps first, e.g. mask > 0.5")
    return arr


def source_frames(mask: Image, sources) -> list[SourceFrame]:
    """Place every frame of ``sources`` on the grid of ``mask``, or refuse (:class:`GeometryError`).

    Parameters
    ----------
    mask : Image
        2D or 3D; a label map or a ``"channel"`` stack.
    sources : list of paths or pydicom Datasets, or an Image read from DICOM (its ``sources``)

    Returns
    -------
    list of SourceFrame
        In source order (instances in the order given, frames in file order), each with the
        numpy index that cuts its ``(rows, columns)`` pixels out of the mask array.
    """
    arr = _mask_array(mask)
    shape = arr.shape[:3]
    out: list[SourceFrame] = []
    geo = []
    for ds, path in _datasets(sources):
        where = path or str(ds.get("SOPInstanceUID", "dataset"))
        frames = frames_of(ds, where)
        multi = len(frames) > 1 or "PerFrameFunctionalGroupsSequence" in ds
        for i, f in enumerate(frames):
            sf = SourceFrame(ds, path, (i + 1) if multi else None, int(f.rows), int(f.cols))
            out.append(sf)
            geo.append(f)
    has_geometry = all(f.position is not None and f.orientation is not None and f.pixel_spacing is not None
                       for f in geo)
    if not has_geometry:
        return _by_shape(out, shape)
    inv = np.linalg.inv(mask.affine)
    covered: dict[int, list] = {}
    axis_used = None
    for sf, f in zip(out, geo):
        where = sf.path or sf.sop_uid
        row_cos, col_cos = np.asarray(f.orientation[:3], float), np.asarray(f.orientation[3:], float)
        row_sp, col_sp = float(f.pixel_spacing[0]), float(f.pixel_spacing[1])
        p0 = (inv @ np.r_[np.asarray(f.position, float), 1.0])[:3]
        dc = inv[:3, :3] @ (row_cos * col_sp)  # mask index step per source column
        dr = inv[:3, :3] @ (col_cos * row_sp)  # ... per source row
        a, b = int(np.argmax(np.abs(dc))), int(np.argmax(np.abs(dr)))
        corners = [p0, p0 + (sf.cols - 1) * dc, p0 + (sf.rows - 1) * dr, p0 + (sf.cols - 1) * dc + (sf.rows - 1) * dr]
        off = max(float(np.max(np.abs(c - np.round(c)))) for c in corners)
        sa, sb = np.sign(dc[a]), np.sign(dr[b])
        steps_ok = a != b and np.allclose(np.abs([dc[a], dr[b]]), 1.0, atol=GRID_TOLERANCE_VOXELS / max(sf.cols, sf.rows, 2))
        if off > GRID_TOLERANCE_VOXELS or not steps_ok:
            raise GeometryError(
                "the mask is not on the grid of the source images", path=where, tag=tag_name("ImagePositionPatient"),
                expected=f"every source pixel centre on a mask voxel centre (within {GRID_TOLERANCE_VOXELS} voxel; "
                         f"mask {shape}, spacing {tuple(round(v, 4) for v in mask.spacing)} mm)",
                found=(f"this frame's corners land {off:.3g} voxel off the mask grid" if steps_ok else
                       "this frame's pixel spacing or orientation differs from the mask's")
                + f" (source {sf.cols}×{sf.rows} pixels, spacing {col_sp:g}×{row_sp:g} mm)",
                fix="resample the mask onto the source image's grid first "
                    "(sobre.image.resample(mask, Grid.of(source_image), order='nearest'))")
        c = 3 - a - b
        i0 = [int(round(v)) for v in p0]
        lo_a, hi_a = sorted((i0[a], i0[a] + int(sa) * (sf.cols - 1)))
        lo_b, hi_b = sorted((i0[b], i0[b] + int(sb) * (sf.rows - 1)))
        if axis_used is not None and c != axis_used:
            raise GeometryError("the source frames are not parallel slices of the mask", path=where,
                                tag=tag_name("ImageOrientationPatient"), expected=f"slices across mask axis {axis_used}",
                                found=f"a slice across mask axis {c}", fix="pass the instances of one series")
        axis_used = c
        if (lo_a, hi_a) != (0, shape[a] - 1) or (lo_b, hi_b) != (0, shape[b] - 1) or not 0 <= i0[c] < shape[c]:
            raise GeometryError(
                "the mask's grid and the source images cover different regions", path=where,
                tag=tag_name("ImagePositionPatient"),
                expected=f"mask axes {a}, {b} spanned by the frame's {sf.cols} columns and {sf.rows} rows, slice "
                         f"within 0..{shape[c] - 1}",
                found=f"columns over mask indices {lo_a}..{hi_a} of 0..{shape[a] - 1}, rows over {lo_b}..{hi_b} "
                      f"of 0..{shape[b] - 1}, slice {i0[c]}",
                fix="resample or crop the mask onto the source image's grid first")
        idx: list = [None, None, None]
        idx[a] = (i0[a] + int(sa) * np.arange(sf.cols))[None, :]
        idx[b] = (i0[b] + int(sb) * np.arange(sf.rows))[:, None]
        idx[c] = i0[c]
        sf.index, sf.slice = tuple(idx), i0[c]
        covered.setdefault(i0[c], []).append(sf)
    missing = sorted(set(range(shape[axis_used])) - set(covered))
    if missing:
        raise GeometryError(
            f"the source images cover {len(covered)} of the mask's {shape[axis_used]} slices",
            expected="one source frame for every mask slice",
            found="no source frame for mask slice(s) " + ", ".join(map(str, missing[:8]))
            + (" ..." if len(missing) > 8 else ""),
            fix="pass every instance of the series the mask was computed on")
    return out


def _by_shape(frames: list[SourceFrame], shape: tuple) -> list[SourceFrame]:
    """Sources without patient geometry: frame ``n`` is mask slice ``n`` (shape must be columns × rows × frames)."""
    want = (frames[0].cols, frames[0].rows, len(frames))
    if tuple(shape) != want or any((f.rows, f.cols) != (frames[0].rows, frames[0].cols) for f in frames):
        raise GeometryError("the mask does not match the source images (which have no patient geometry)",
                            path=frames[0].path, tag=tag_name("ImagePositionPatient"),
                            expected=f"a mask of {want} voxels (columns, rows, frames)", found=f"{tuple(shape)}",
                            fix="compute the mask on the image read from these very files")
    for n, f in enumerate(frames):
        f.index = (np.arange(f.cols)[None, :], np.arange(f.rows)[:, None], n)
        f.slice = n
    return frames


# -------------------------------------------------------------------------------- helpers
def _coded(code, what: str = "code"):
    import highdicom as hd
    from pydicom.sr.coding import Code

    if isinstance(code, hd.sr.CodedConcept):
        return code
    if isinstance(code, Code):
        return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning, code.scheme_version)
    if isinstance(code, (tuple, list)) and len(code) in (3, 4) and all(isinstance(x, str) and x for x in code[:3]):
        return hd.sr.CodedConcept(*code)
    raise InputError(f"{what} is not a code", expected="(value, scheme designator, meaning), e.g. "
                     "('52988006', 'SCT', 'Lesion')", found=repr(code),
                     fix="give codes as triples of strings (or pydicom / highdicom codes)")


def _unit(unit):
    if isinstance(unit, str):
        return _coded((unit, "UCUM", _UCUM.get(unit, unit)), "unit")
    return _coded(unit, "unit")


def _copy_context(ds, source) -> None:
    """Patient and Study of ``source`` on ``ds``, with its de-identification and synthetic-data markers."""
    for kw in _COPIED + _MARKERS:
        if kw in source and source[kw].value not in (None, ""):
            ds[kw] = source[kw]


def _finish(ds, path, kind: str, references: list[str]) -> DicomOutput:
    """File meta, Part 10 bytes through Sobre's encoder, one atomic write; the record of it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = SOBRE_IMPLEMENTATION_UID
    fm.ImplementationVersionName = SOBRE_IMPLEMENTATION_VERSION
    ds.file_meta = fm
    ds.preamble = b"\0" * 128
    data, _ = encode_dataset(ds)
    path = write_atomic(Path(path), data)
    log.info("wrote %s %s to %s", kind, ds.SOPInstanceUID, path)
    return DicomOutput(kind, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                       str(ds.StudyInstanceUID), sha256_bytes(data), list(dict.fromkeys(references)))


def _software_versions(algorithm: Algorithm | None) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sobre")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        v = "0"
    out = [f"sobre {v}"]
    if algorithm is not None:
        out.append(f"{algorithm.name} {algorithm.version}"[:64])
    return out


def _segments(segments, arr: np.ndarray) -> list[Segment]:
    if segments is None:
        if arr.ndim == 4:
            segments = [Segment(f"segment {n}", n) for n in range(1, arr.shape[3] + 1)]
        else:
            values = [int(v) for v in np.unique(arr) if v != 0]
            segments = [Segment(f"segment {v}", v) for v in (values or [1])]
    segments = list(segments)
    if not segments:
        raise InputError("no segments to write", expected="at least one Segment", found="an empty list")
    seen = set()
    for s in segments:
        if not isinstance(s, Segment):
            raise InputError("segments are sobre.image.Segment objects", found=type(s).__name__,
                             fix="Segment('lesion', value=1, category=..., type=...)")
        if s.value in seen or int(s.value) < 1:
            raise InputError("segment values must be distinct positive integers", found=f"value {s.value} of "
                             f"segment {s.label!r}", fix="give each segment its own mask value (1, 2, ...)")
        if arr.ndim == 4 and s.value > arr.shape[3]:
            raise InputError(f"segment {s.label!r} is channel {s.value}, but the mask has {arr.shape[3]} channels",
                             expected=f"values 1..{arr.shape[3]}", found=str(s.value))
        seen.add(s.value)
    return segments


def _color(seg: Segment, n: int) -> tuple[int, int, int]:
    c = seg.color if seg.color is not None else PALETTE[(n - 1) % len(PALETTE)]
    if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
        raise InputError(f"segment {seg.label!r} has an invalid colour", expected="(r, g, b) in 0..255",
                         found=repr(seg.color))
    return tuple(int(v) for v in c)


def _segment_planes(arr: np.ndarray, f: SourceFrame, segments: list[Segment]) -> np.ndarray:
    """``(rows, cols, S)`` booleans of each segment on source frame ``f``."""
    plane = arr[f.index]  # (rows, cols) or (rows, cols, S)
    if arr.ndim == 4:
        return np.stack([plane[..., s.value - 1] != 0 for s in segments], -1)
    return np.stack([plane == s.value for s in segments], -1)


# ------------------------------------------------------------------------------------------- SEG
def write_seg(mask: Image, sources, path, *, segments: Sequence[Segment] | None = None,
              algorithm: Algorithm | None = None, segmentation_type: str = "BINARY",
              series_number: int = 9001, series_description: str = "AI segmentation",
              content_label: str = "SEGMENTATION", content_creator: str | None = None) -> DicomOutput:
    """Write ``mask`` as a DICOM Segmentation of ``sources``.

    Parameters
    ----------
    mask : Image
        On the source grid (checked; see the module docstring). A label map (each
        :class:`Segment` ``value`` is one label) or a ``"channel"`` stack of binary masks.
    sources : list of paths or pydicom Datasets, or the Image read from them
        Every instance of the source series (single-frame or multi-frame).
    path : path
        The file to write.
    segments : list of Segment, optional
        Names, codes, colours; default one "segment N" per label present.
    algorithm : Algorithm, optional
        The model that produced the mask (SegmentAlgorithmType AUTOMATIC, with its algorithm
        identification); None for a manual segmentation (MANUAL).
    segmentation_type : {"BINARY", "LABELMAP"}
        BINARY (default) is what most PACS and viewers accept today; LABELMAP (Label Map
        Segmentation Storage, 2024) only where the receiver supports it.
    content_creator : str, optional
        ContentCreatorName of a manual segmentation (DICOM person name ``Family^Given``).

    Returns
    -------
    DicomOutput

    Raises
    ------
    GeometryError
        The mask is not on the source grid (nothing is written).
    InputError
        Sources that are not image instances of one study and frame of reference; bad segments.
    """
    import highdicom as hd

    stype = str(segmentation_type).upper()
    if stype not in ("BINARY", "LABELMAP"):
        raise InputError("unknown segmentation type", expected="BINARY or LABELMAP", found=repr(segmentation_type))
    arr = _mask_array(mask)
    frames = source_frames(mask, sources)
    segments = _segments(segments, arr)
    if stype == "LABELMAP" and arr.ndim == 4:
        raise InputError("a LABELMAP segmentation cannot hold overlapping segments", found="a channel stack",
                         fix="write BINARY, or pass a label map")
    ds_list = list(dict.fromkeys(id(f.dataset) for f in frames))
    by_id = {id(f.dataset): f.dataset for f in frames}
    datasets = [by_id[i] for i in ds_list]
    pixels = np.stack([_segment_planes(arr, f, segments) for f in frames])  # (frames, rows, cols, S)
    labels = np.zeros(pixels.shape[:3], np.uint16 if len(segments) > 255 else np.uint8)
    for n in range(len(segments)):
        labels[pixels[..., n] & (labels == 0)] = n + 1
    family = _coded(algorithm.family, "algorithm family") if algorithm else None
    descriptions = []
    for n, s in enumerate(segments, start=1):
        ident = None
        if algorithm is not None:
            params = {"sha256": algorithm.sha256} if algorithm.sha256 else None
            ident = hd.AlgorithmIdentificationSequence(algorithm.name[:64], family, algorithm.version[:64],
                                                       source=algorithm.manufacturer, parameters=params)
        descriptions.append(hd.seg.SegmentDescription(
            n, s.label[:64], _coded(s.category or DEFAULT_CATEGORY, "segment category"),
            _coded(s.type or DEFAULT_TYPE, "segment type"), "AUTOMATIC" if algorithm else "MANUAL",
            algorithm_identification=ident, tracking_uid=new_uid(), tracking_id=s.label[:64],
            anatomic_regions=[_coded(s.anatomic_region, "anatomic region")] if s.anatomic_region else None,
            display_color=hd.color.CIELabColor.from_rgb(*_color(s, n))))
    data = pixels if (arr.ndim == 4 and stype == "BINARY") else labels
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=data, segmentation_type=stype, segment_descriptions=descriptions,
            series_instance_uid=new_uid(), series_number=int(series_number), sop_instance_uid=new_uid(),
            instance_number=1, manufacturer=algorithm.manufacturer if algorithm else "Sobre",
            manufacturer_model_name=(algorithm.name if algorithm else "Sobre")[:64],
            software_versions=_software_versions(algorithm), device_serial_number=algorithm.serial if algorithm
            else "manual", content_label=content_label[:16].upper().replace(" ", "_"),
            content_description=series_description[:64], content_creator_name=content_creator,
            omit_empty_frames=bool(pixels.any()))
    except (ValueError, TypeError) as exc:
        raise InputError(f"highdicom refused the segmentation: {exc}", path=frames[0].path,
                         fix="check the source instances (one series, image objects with a frame of reference)") \
            from None
    seg.SeriesDescription = series_description[:64]
    _copy_context(seg, datasets[0])
    return _finish(seg, path, "SEG", [f.sop_uid for f in frames])


# -------------------------------------------------------------------------------------------- SR
def _seg_dataset(seg):
    from pydicom.dataset import Dataset

    if seg is None:
        return None
    if isinstance(seg, DicomOutput):
        seg = seg.path
    if isinstance(seg, Dataset):
        return seg
    return read_header(seg)


def write_sr(sources, path, *, algorithm: Algorithm | None = None, observer: str | None = None,
             findings: Sequence[Finding] = (), measurements: Sequence[Measurement] = (), seg=None,
             segments: Sequence[Segment] | None = None, procedure: tuple | None = None,
             series_number: int = 9002, series_description: str = "AI measurement report") -> DicomOutput:
    """Write a TID 1500 Imaging Measurement Report (Comprehensive 3D SR) about ``sources``.

    Parameters
    ----------
    sources : list of paths or pydicom Datasets, or the Image read from them
        Every source instance; each is listed in the report's image library and evidence.
    path : path
        The file to write.
    algorithm : Algorithm, optional
        For AI results: the observer is this device (UID, name, manufacturer, model name with
        version, serial number = package hash); each measurement group names the algorithm.
    observer : str, optional
        For manual results: the person (``Family^Given``). One of ``algorithm``/``observer`` is needed.
    findings : list of Finding
        Qualitative evaluations (coded name = coded value).
    measurements : list of Measurement
        With UCUM units.
    seg : DicomOutput, path or Dataset, optional
        The SEG these results are about: one measurement group per segment references it (and the
        SEG is listed in the evidence); findings and measurements with ``segment = n`` go in the
        group of segment ``n`` (the segment *number* in the SEG, 1-based).
    segments : list of Segment, optional
        Only to name the groups' finding types; read from the SEG when omitted.
    procedure : (value, scheme, meaning), optional
        Procedure reported; by default from the modality (LOINC "CT unspecified body region", ...).

    Returns
    -------
    DicomOutput
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if algorithm is None and not observer:
        raise InputError("an SR needs an observer", expected="algorithm= (AI result) or observer= (a person)",
                         found="neither", fix="pass the Algorithm that produced the results")
    pairs = _datasets(sources)
    datasets = list({str(d.SOPInstanceUID): d for d, _ in pairs}.values())
    seg_ds = _seg_dataset(seg)
    if algorithm is not None:
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.uid, name=algorithm.name[:64], manufacturer_name=algorithm.manufacturer[:64],
            model_name=f"{algorithm.name} {algorithm.version}"[:64], serial_number=algorithm.serial)
        ctx = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device))
        alg_id = hd.sr.AlgorithmIdentification(algorithm.name[:64], algorithm.version[:64],
                                               parameters=[f"sha256={algorithm.sha256}"] if algorithm.sha256 else None)
    else:
        person = hd.sr.PersonObserverIdentifyingAttributes(name=observer)
        ctx = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(codes.DCM.Person, person))
        alg_id = None

    def items(segment):
        qs = [hd.sr.QualitativeEvaluation(_coded(f.name, "finding name"), _coded(f.value, "finding value"))
              for f in findings if f.segment == segment]
        ms = [hd.sr.Measurement(_coded(m.name, "measurement name"), float(m.value), _unit(m.unit),
                                algorithm_id=alg_id)
              for m in measurements if m.segment == segment]
        return qs, ms

    for x in list(findings) + list(measurements):
        if x.segment is not None and (seg_ds is None or not any(
                int(s.SegmentNumber) == int(x.segment) for s in seg_ds.SegmentSequence)):
            raise InputError(f"a result refers to segment {x.segment}, which the SEG does not hold",
                             expected="segment numbers of the SEG" if seg_ds is not None else "seg= with segments",
                             found=repr(x), fix="pass seg= (the SEG written with write_seg) or segment=None")
    groups = []
    if seg_ds is not None:
        names = {i + 1: s for i, s in enumerate(segments or [])}
        for item in seg_ds.SegmentSequence:
            n = int(item.SegmentNumber)
            qs, ms = items(n)
            spec = names.get(n)
            ftype = _coded(spec.type or DEFAULT_TYPE) if spec else hd.sr.CodedConcept.from_dataset(
                item.SegmentedPropertyTypeCodeSequence[0])
            ref = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg_ds.SOPClassUID), sop_instance_uid=str(seg_ds.SOPInstanceUID),
                segment_number=n, source_series=hd.sr.SourceSeriesForSegmentation(str(datasets[0].SeriesInstanceUID)))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=str(item.SegmentLabel)[:64]),
                referenced_segment=ref, finding_type=ftype, algorithm_id=alg_id,
                measurements=ms or None, qualitative_evaluations=qs or None))
    qs, ms = items(None)
    if qs or ms or not groups:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier="study findings"),
            algorithm_id=alg_id, measurements=ms or None, qualitative_evaluations=qs or None))
    modality = str(datasets[0].get("Modality", "")).upper()
    report = hd.sr.MeasurementReport(
        observation_context=ctx,
        procedure_reported=_coded(procedure or _PROCEDURES.get(modality, _IMAGING_PROCEDURE), "procedure"),
        imaging_measurements=groups, referenced_images=datasets)
    evidence = datasets + ([seg_ds] if seg_ds is not None else [])
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=new_uid(), series_number=int(series_number),
            sop_instance_uid=new_uid(), instance_number=1,
            manufacturer=algorithm.manufacturer if algorithm else "Sobre", is_complete=True, is_final=False,
            is_verified=False)
    except (ValueError, TypeError) as exc:
        raise InputError(f"highdicom refused the report: {exc}", fix="check the sources and codes") from None
    sr.SeriesDescription = series_description[:64]
    _copy_context(sr, datasets[0])
    refs = [str(d.SOPInstanceUID) for d in datasets] + ([str(seg_ds.SOPInstanceUID)] if seg_ds is not None else [])
    return _finish(sr, path, "SR", refs)


# -------------------------------------------------------------------------------------------- SC
def _window(image: Image, window) -> tuple[float, float]:
    """(low, high) display range: a preset name, (centre, width), or by modality (CT soft tissue, else percentiles)."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise InputError("unknown window preset", expected=", ".join(WINDOWS), found=repr(window))
        window = WINDOWS[window]
    if window is None and (image.modality or "").upper() == "CT":
        window = WINDOWS["soft-tissue"]
    if window is not None:
        c, w = (float(v) for v in window)
        if not w > 0:
            raise InputError("window width must be positive", found=repr(window))
        return c - w / 2, c + w / 2
    a = np.asarray(image.array, np.float32)
    fg = a[a > a.min()] if a.size and (a > a.min()).any() else a.ravel()
    lo, hi = (float(v) for v in np.percentile(fg, [1, 99])) if fg.size else (0.0, 1.0)
    return lo, hi if hi > lo else lo + 1.0


def _orientation_letter(v) -> str:
    """Patient orientation letter of a direction (LPS): its dominant axis (``"L"``, ``"P"``, ``"H"`` ...)."""
    ax = int(np.argmax(np.abs(v)))
    return ("L", "P", "H")[ax] if v[ax] > 0 else ("R", "A", "F")[ax]


def render_overlay(plane: np.ndarray, masks: np.ndarray, colors, lo: float, hi: float,
                   alpha: float = 0.3) -> np.ndarray:
    """``(rows, cols, 3)`` uint8: grey ``plane`` windowed to ``[lo, hi]``, each mask filled at ``alpha`` and outlined.

    ``masks`` is ``(rows, cols, S)`` booleans, ``colors`` S RGB triples.
    """
    from scipy import ndimage

    grey = np.clip((np.asarray(plane, np.float64) - lo) / (hi - lo), 0, 1) * 255.0
    rgb = np.repeat(grey[..., None], 3, -1)
    ring = np.ones((3, 3), bool)
    for n in range(masks.shape[-1]):
        m = masks[..., n]
        if not m.any():
            continue
        col = np.asarray(colors[n], np.float64)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * col
        edge = m & ~ndimage.binary_erosion(m, ring, border_value=0)
        rgb[edge] = col
    return np.round(rgb).astype(np.uint8)


def write_secondary_capture(image: Image, mask: Image, sources, out_dir, *,
                            segments: Sequence[Segment] | None = None, algorithm: Algorithm | None = None,
                            slices: str | Sequence[int] = "mask", window=None, alpha: float = 0.3,
                            series_number: int = 9003,
                            series_description: str = "AI overlay (not for diagnosis)") -> list[DicomOutput]:
    """Secondary Capture images of ``mask`` over ``image``, one RGB image per chosen slice.

    Parameters
    ----------
    image : Image
        The source image (same grid as ``mask``), in stored units after rescale (HU for CT).
    mask : Image
        Label map or channel stack on the source grid, as for :func:`write_seg`.
    sources : list of paths or Datasets, or the Image read from them
        Each SC refers to the source instance (and frame) it shows.
    out_dir : path
        Folder for the files (``SC_0001.dcm`` ...); created.
    slices : "mask", "all", "middle", or list of int
        ``"mask"`` (default): the slices holding a segment, or the middle slice when the mask is
        empty; indices count along the mask's slice axis in source order.
    window : str or (centre, width), optional
        A preset of :data:`WINDOWS` or explicit values. Default: CT soft tissue (40/400 HU);
        other modalities the 1st–99th percentiles of the image.
    alpha : float
        Opacity of the fill (contours are opaque).

    Returns
    -------
    list of DicomOutput
    """
    import highdicom as hd

    if image.spatial_shape != mask.spatial_shape or not np.allclose(image.affine, mask.affine, atol=1e-4):
        raise GeometryError("the image and the mask are not on one grid",
                            expected=f"mask {mask.spatial_shape} with the image's affine",
                            found=f"image {image.spatial_shape}",
                            fix="resample the mask onto the image (sobre.image.resample(mask, image, order='nearest'))")
    if image.extra_axes:
        raise InputError("a secondary capture renders a grey-level image", found=f"extra axes {image.extra_axes}")
    arr = _mask_array(mask)
    frames = source_frames(mask, sources)
    segments = _segments(segments, arr)
    colors = [_color(s, n) for n, s in enumerate(segments, start=1)]
    lo, hi = _window(image, window)
    pix = np.asarray(image.array)
    if image.spatial_ndim == 2:
        pix = pix[:, :, None]
    by_slice: dict[int, SourceFrame] = {}
    for f in frames:
        by_slice.setdefault(f.slice, f)
    order = sorted(by_slice)
    if slices == "all":
        chosen = order
    elif slices == "middle":
        chosen = [order[len(order) // 2]]
    elif slices == "mask":
        chosen = [k for k in order if _segment_planes(arr, by_slice[k], segments).any()] or [order[len(order) // 2]]
    else:
        chosen = [int(k) for k in slices]
        bad = [k for k in chosen if k not in by_slice]
        if bad:
            raise InputError("slice index outside the image", expected=f"0..{len(order) - 1}", found=str(bad))
    series_uid = new_uid()
    out_dir = Path(out_dir)
    written = []
    for n, k in enumerate(chosen, start=1):
        f = by_slice[k]
        rgb = render_overlay(pix[f.index], _segment_planes(arr, f, segments), colors, lo, hi, alpha)
        src = f.dataset
        g = frames_of(src, f.path or f.sop_uid)[(f.number or 1) - 1]
        kwargs = {}
        if g.orientation is not None:  # the patient orientation of the rows and columns shown, as in the source
            kwargs["patient_orientation"] = (_orientation_letter(np.asarray(g.orientation[:3])),
                                             _orientation_letter(np.asarray(g.orientation[3:])))
        else:
            kwargs["patient_orientation"] = ("L", "P")  # replaced below: the source's own, or empty (unknown)
        if g.pixel_spacing is not None:
            kwargs["pixel_spacing"] = tuple(float(v) for v in g.pixel_spacing)
        sc = hd.sc.SCImage(
            pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            study_instance_uid=str(src.StudyInstanceUID), series_instance_uid=series_uid,
            series_number=int(series_number), sop_instance_uid=new_uid(), instance_number=n,
            manufacturer=algorithm.manufacturer if algorithm else "Sobre",
            patient_id=str(src.get("PatientID", "")) or None, patient_name=src.get("PatientName") or None,
            patient_birth_date=str(src.get("PatientBirthDate", "")) or None,
            patient_sex=str(src.get("PatientSex", "")) or None, accession_number=src.get("AccessionNumber") or None,
            study_id=src.get("StudyID") or None, study_date=src.get("StudyDate") or None,
            study_time=src.get("StudyTime") or None, referring_physician_name=src.get("ReferringPhysicianName") or None,
            **kwargs)
        if g.orientation is None:
            sc.PatientOrientation = src.get("PatientOrientation") or ""
        if src.get("BodyPartExamined"):
            sc.BodyPartExamined = src.BodyPartExamined
        if src.get("Laterality") or not src.get("BodyPartExamined"):  # General Series, type 2C: the source's,
            sc.Laterality = src.get("Laterality") or ""  # or empty (unknown) when the body part is not stated
        sc.SeriesDescription = series_description[:64]
        sc.ConversionType = "WSD"  # rendered on a workstation
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "NO"
        sc.DerivationDescription = ("Contours and fill of " + ", ".join(s.label for s in segments)
                                    + (f" by {algorithm.name} {algorithm.version}" if algorithm else "")
                                    + f"; window {lo:g} to {hi:g}")[:1024]
        if algorithm is not None:
            sc.ManufacturerModelName = algorithm.name[:64]
            sc.SoftwareVersions = _software_versions(algorithm)
            sc.DeviceSerialNumber = algorithm.serial
        ref = _source_image_item(f)
        sc.SourceImageSequence = [ref]
        _copy_context(sc, src)
        written.append(_finish(sc, out_dir / f"SC_{n:04d}.dcm", "SC", [f.sop_uid]))
    return written


def _source_image_item(f: SourceFrame):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = f.sop_class_uid
    item.ReferencedSOPInstanceUID = f.sop_uid
    if f.number is not None:
        item.ReferencedFrameNumber = f.number
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item

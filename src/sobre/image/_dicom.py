"""DICOM reading: headers → frames → consistent volumes → lazily loaded Images.

The path of a DICOM file through this module:

1. :func:`read_header` parses a file without its pixel data (content-sniffed, not by extension).
2. :func:`frames_of` turns a dataset into :class:`Frame` records, one per 2D frame, each with its
   own geometry (single-frame files give one; enhanced multi-frame files give one per frame from
   the functional groups).
3. :func:`assemble` groups frames into :class:`VolumePlan` s: one per consistent volume. Frames are
   grouped by series, split by size / orientation / pixel spacing, split again by echo, temporal
   position or acquisition when slice positions repeat, and sorted along the slice normal. Slice
   spacing comes from ImagePositionPatient, never from SliceThickness or SpacingBetweenSlices;
   uneven spacing (missing slices) raises :class:`~sobre.errors.GeometryError`.
4. :meth:`VolumePlan.image` returns an :class:`~sobre.image.Image` whose loader decodes pixels
   (any transfer syntax pydicom's plugins handle: JPEG, JPEG 2000, JPEG-LS, RLE, deflate) and
   applies RescaleSlope / RescaleIntercept. Uncompressed grey-level frames are read straight from
   the file at the offset :func:`read_header` found (no second parse), exactly as pydicom would
   decode them; the array is Fortran-ordered so that each frame is one contiguous block.

Files cut short are reported as such (:class:`~sobre.errors.InputError` naming the file and the
element), not as a missing attribute: pydicom itself stops silently at the end of a file.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sobre.errors import GeometryError, InputError, SobreError, describe_exception
from sobre.image._image import Image
from sobre.image._lite import LiteDataset, NeedPydicom
from sobre.image._part10 import (decoder_options, header_int, header_value, raw_value, read_header, read_header_lite,
                                 tag_name)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom is imported where it is used: a series of simple uncompressed files (the lite path of
# :func:`read_dicom`) is read, checked and loaded without it.

# Geometry tolerances (mm, unitless cosines, or fractions of a voxel); docs/ARCHITECTURE.md explains them.
ORIENTATION_TOL = 1e-4  # cosines that differ by less are the same orientation (grouping frames)
ORIENTATION_VALID_TOL = 1e-2  # direction cosines must be unit (±1 %) and orthogonal (|cos| <= 0.01, ~0.6°)
SPACING_ABS_TOL = 1e-3  # mm: slices closer than this share a position (duplicates / several acquisitions)
SLICE_POSITION_TOL = 0.2  # each slice origin within 0.2 voxel of the least-squares uniform grid:
#                           0.2 × the slice step along the normal, 0.2 × the pixel spacing in the slice plane
SLICE_GAP_RATIO = 1.5  # a step this many times the median leaves room for a missing slice (a gap) ...
SLICE_EXTRA_RATIO = 0.5  # ... one this small puts an extra (or misplaced) slice between two regular ones

# Functional-group macros whose sequences hold per-frame geometry in enhanced multi-frame objects.
_FG_KEYS = (
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "PixelMeasuresSequence",
    "PixelValueTransformationSequence",
    "FrameContentSequence",
    "MREchoSequence",
)


class SeriesWarning(UserWarning):
    """A series was split or cleaned up on reading (e.g. several acquisitions in one SeriesInstanceUID)."""


# --------------------------------------------------------------------------- frames
def _floats(value: Any, n: int, path: Path, keyword: str) -> np.ndarray | None:
    if value is None or value == "":
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]  # a single value where several are due: reported below as the wrong count
    try:
        floats = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(
            "value is not numeric", path=path, tag=tag_name(keyword), expected=f"{n} numbers", found=repr(value)
        ) from None
    if len(floats) != n or not all(map(math.isfinite, floats)):  # (plain floats: this runs for every file)
        raise InputError(
            "value has the wrong number of items", path=path, tag=tag_name(keyword),
            expected=f"{n} finite numbers", found=repr(list(value)),
        )
    arr = np.array(floats, dtype=np.float64)
    return arr


def _int(value: Any, default: int, path: Path, keyword: str) -> int:
    """An integer header value (IS/US), or ``default`` when absent; InputError naming the tag if garbled."""
    return header_int(value, default, path, keyword)


def _text(value: Any, sep: str | None = None) -> str:
    """A header value as text for grouping frames: ``""`` when absent; several values joined by ``sep``
    (``str(list)`` when ``sep`` is None, as ``str`` of pydicom's multi-values gives)."""
    if value is None:
        return ""
    if isinstance(value, (str, bytes)):
        return value.decode("latin-1") if isinstance(value, bytes) else value
    if hasattr(value, "__iter__"):
        items = [str(v) for v in value]
        return sep.join(items) if sep is not None else "[" + ", ".join(items) + "]"
    return str(value)


def _lenient_int(value: Any, default: int = 0) -> int:
    """An integer used only for ordering (InstanceNumber): garbage gives ``default``, never an error."""
    f = _float(value, default)
    return int(f) if np.isfinite(f) else default


def _float(value: Any, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


@dataclass
class Frame:
    """One 2D frame with its geometry, enough to place it in a volume without reading pixels."""

    path: str
    index: int | None  # frame number inside a multi-frame file, None for single-frame files
    n_frames_in_file: int
    series_uid: str
    sop_uid: str
    rows: int
    cols: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    orientation: np.ndarray | None  # (6,) row then column direction cosines, LPS
    position: np.ndarray | None  # (3,) LPS mm of the centre of the first pixel
    pixel_spacing: np.ndarray | None  # (2,) row spacing (between rows), column spacing, mm
    slope: float = 1.0
    intercept: float = 0.0
    instance_number: int = 0
    soft: dict = field(default_factory=dict)  # echo, temporal position, acquisition, stack, image type
    # uncompressed pixel data that can be read straight from the file, without pydicom:
    # (offset of the (7FE0,0010) tag, offset of this frame's first byte, numpy dtype string); else None
    native: tuple | None = None
    # why this frame has no patient geometry although its header has some (a damaged
    # ImageOrientationPatient, or only one of orientation / position); None when fine or simply absent
    geometry_problem: str | None = None

    def to_dict(self) -> dict:
        """JSON-able form (what the catalog stores per file); :meth:`from_dict` reverses it."""
        d = dict(self.__dict__)
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
        if d["native"] is not None:
            d["native"] = list(d["native"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Frame:
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
        if d.get("native") is not None:
            d["native"] = tuple(d["native"])
        return cls(**d)

    def hard_key(self) -> tuple:
        o = None if self.orientation is None else tuple(np.round(self.orientation, 4))
        s = None if self.pixel_spacing is None else tuple(np.round(self.pixel_spacing, 4))
        m = self.soft.get("mosaic")
        mk = None if m is None else (m["n"], m["tile"], tuple(np.round(m["affine"], 3).ravel()))
        return (self.series_uid, self.rows, self.cols, self.samples, self.photometric,
                self.bits_allocated, o, s, self.soft.get("stack"), mk)


_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": True,  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": True,  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": False,  # Explicit VR Big Endian
}
_PIXEL_TAG_BYTES = {True: b"\xe0\x7f\x10\x00", False: b"\x7f\xe0\x00\x10"}


def _native_layout(ds: Dataset, path: Path, base: dict) -> tuple[int, int, str, int] | None:
    """Where uncompressed grey-level pixel data lies in the file, to read it without pydicom.

    Returns ``(tag offset, value offset, numpy dtype, bytes per frame)``, or None when pydicom must
    decode (compressed or deflated data, colour, 1-bit, values not deferred by :func:`read_header`).
    """

    if base["samples"] != 1 or base["bits_allocated"] not in (8, 16, 32) \
            or base["photometric"] not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    fm = getattr(ds, "file_meta", None)
    ts = str(fm.get("TransferSyntaxUID", "")) if fm is not None else ""
    if ts not in _NATIVE_SYNTAXES or "PixelData" not in ds:
        return None
    fn = getattr(ds, "filename", None)
    if not isinstance(fn, (str, os.PathLike)) or os.fspath(fn) != os.fspath(path):
        return None
    raw = ds.get_item("PixelData", keep_deferred=True)
    if not isinstance(raw, tuple) or raw.value_tell is None:  # a raw element (pydicom's, or the lite reader's)
        return None
    little = bool(raw.is_little_endian)
    if little != _NATIVE_SYNTAXES[ts] or (not little and base["bits_allocated"] == 8):
        return None  # big-endian 8-bit data may be byte-swapped as OW: leave it to pydicom
    itemsize = base["bits_allocated"] // 8
    frame_bytes = base["rows"] * base["cols"] * itemsize
    n = base["n_frames_in_file"]
    if raw.length == 0xFFFFFFFF or raw.length < n * frame_bytes:
        return None  # pydicom explains what is wrong
    dtype = ("<" if little else ">") + ("i" if base["signed"] else "u") + str(itemsize)
    header = 8 if raw.is_implicit_VR else 12
    return raw.value_tell - header, raw.value_tell, dtype, frame_bytes


def _frame_native(layout: tuple | None, i: int) -> tuple | None:
    if layout is None:
        return None
    tag_offset, value_offset, dtype, frame_bytes = layout
    return (tag_offset, value_offset + i * frame_bytes, dtype)


def _fg(ds: Dataset, i: int, name: str, path: Path):
    """Item 0 of functional-group sequence ``name`` for frame ``i`` (per-frame first, then shared)."""
    for kw in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = header_value(ds, kw, path)
        if not groups:
            continue
        try:
            item = groups[i] if kw == "PerFrameFunctionalGroupsSequence" else groups[0]
        except IndexError:
            raise InputError("fewer functional groups than frames", path=path, tag=tag_name(kw),
                             expected=f"an item for frame {i + 1}", found=f"{len(groups)} item(s)",
                             fix="the header is corrupted; re-export the file") from None
        seq = header_value(item, name, path)
        if seq:
            return seq[0]
    return None


def _orientation(value: Any, path: Path) -> tuple[np.ndarray | None, str | None]:
    """``(direction cosines (6,), None)``, or ``(None, what is wrong)`` for a damaged value.

    Absent is not damaged (secondary captures, photographs have no patient frame). Damaged: not six
    finite numbers, or row / column cosines that are not unit vectors or not orthogonal (within
    :data:`ORIENTATION_VALID_TOL`): an affine built from them would place voxels nowhere real.
    """
    if value is None or value == "":
        return None, None
    tag = tag_name("ImageOrientationPatient")
    try:
        arr = _floats(value, 6, path, "ImageOrientationPatient")
    except InputError as exc:
        return None, f"{tag}: {exc.what} (expected {exc.expected}; found {exc.found})"
    a, b, c, d, e, f = arr.tolist()  # plain floats: this runs for every file of an ingest
    nr, nc = math.sqrt(a * a + b * b + c * c), math.sqrt(d * d + e * e + f * f)
    if abs(nr - 1) > ORIENTATION_VALID_TOL or abs(nc - 1) > ORIENTATION_VALID_TOL:
        return None, (f"{tag}: direction cosines are not unit vectors (row length {nr:.4g}, column length "
                      f"{nc:.4g}; expected 1 ± {ORIENTATION_VALID_TOL:g})")
    cos = (a * d + b * e + c * f) / (nr * nc)
    if abs(cos) > ORIENTATION_VALID_TOL:
        return None, (f"{tag}: row and column directions are not orthogonal (angle "
                      f"{np.degrees(np.arccos(cos)):.4g}°; expected 90 ± {np.degrees(np.arcsin(ORIENTATION_VALID_TOL)):.2g}°)")
    return arr, None


def _rescale(slope_value: Any, intercept_value: Any, base: dict, path: Path) -> tuple[float, float]:
    """RescaleSlope / RescaleIntercept of grey-level pixels; (1, 0) for colour, palette and 1-bit
    pixels, which a modality rescale does not apply to (PS3.3 C.11.1); InputError naming the tag
    when a value is not a finite number."""
    if base["samples"] != 1 or base["photometric"] == "PALETTE COLOR" or base["bits_allocated"] == 1:
        return 1.0, 0.0
    slope, intercept = _float(slope_value, 1.0), _float(intercept_value, 0.0)
    for keyword, value, raw in (("RescaleSlope", slope, slope_value), ("RescaleIntercept", intercept, intercept_value)):
        if not math.isfinite(value) or keyword == "RescaleSlope" and value == 0:
            raise InputError("rescale value is not usable", path=path, tag=tag_name(keyword),
                             expected="a finite number" + (", not 0" if keyword == "RescaleSlope" else ""),
                             found=repr(str(raw)), fix="the header is corrupted; re-export the file")
    return slope, intercept


def _half_frame(orientation: np.ndarray | None, position: np.ndarray | None) -> str | None:
    """What is wrong when a header gives one of ImageOrientationPatient / ImagePositionPatient only."""
    if orientation is None and position is not None:
        return (f"{tag_name('ImageOrientationPatient')}: missing although {tag_name('ImagePositionPatient')} is "
                "present (a damaged or removed element)")
    if orientation is not None and position is None:
        return (f"{tag_name('ImagePositionPatient')}: missing although {tag_name('ImageOrientationPatient')} is "
                "present (a damaged or removed element)")
    return None


RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"


def _dose_scaling(ds: Dataset, path: Path) -> float:
    """DoseGridScaling (3004,000E) of an RT Dose object (stored value × scaling = dose), else 1."""
    modality = raw_value(ds, "Modality")
    if modality is not None and modality != "RTDOSE" or modality is None and str(raw_value(ds, "SOPClassUID")
                                                                                  or "") != RT_DOSE_STORAGE:
        return 1.0
    value = header_value(ds, "DoseGridScaling", path)
    if value is None or value == "":
        return 1.0
    try:
        scaling = float(value)
    except (TypeError, ValueError):
        scaling = float("nan")
    if not np.isfinite(scaling) or scaling <= 0:
        raise InputError("dose grid scaling is not a positive number", path=path, tag=tag_name("DoseGridScaling"),
                         expected="a positive decimal (Gy per stored unit)", found=repr(str(value)),
                         fix="the header is corrupted; re-export the dose from the planning system")
    return scaling


def frames_of(ds: Dataset, path: str | Path) -> list[Frame]:
    """Split a dataset into frames with per-frame geometry (no pixel data is read).

    Header values pydicom cannot convert (an unknown VR, damaged bytes, a broken sequence) raise
    :class:`~sobre.errors.InputError` naming the file and, where known, the tag. A damaged
    ImageOrientationPatient does not: the frames get no orientation and say why in
    ``Frame.geometry_problem`` (:func:`assemble` then warns and reads them in pixel coordinates).
    """
    path = Path(path)
    try:
        return _frames_of(ds, path)
    except SobreError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged values and sequences
        raise InputError(f"header cannot be read ({describe_exception(exc)})", path=path,
                         fix="the header is corrupted; re-export the file") from None


def _frames_of(ds: Dataset, path: Path) -> list[Frame]:
    for kw in ("Rows", "Columns"):
        if kw not in ds:
            raise InputError("image attribute missing", path=path, tag=tag_name(kw),
                             expected="an image object", found="no such element",
                             fix="this object holds no image (report, structure set, ...)")
    n = _int(raw_value(ds, "NumberOfFrames"), 1, path, "NumberOfFrames") or 1
    if n < 0:
        raise InputError("negative number of frames", path=path, tag=tag_name("NumberOfFrames"),
                         expected="a positive integer", found=str(n), fix="the header is corrupted; re-export the file")
    rows = _int(raw_value(ds, "Rows"), 0, path, "Rows")
    cols = _int(raw_value(ds, "Columns"), 0, path, "Columns")
    if rows <= 0 or cols <= 0:
        raise InputError("image has no pixels", path=path, tag=f"{tag_name('Rows')} / {tag_name('Columns')}",
                         expected="positive Rows and Columns", found=f"{rows}×{cols}",
                         fix="the header is corrupted; re-export the file")
    bits_allocated = _int(raw_value(ds, "BitsAllocated"), 16, path, "BitsAllocated") or 16
    samples = _int(raw_value(ds, "SamplesPerPixel"), 1, path, "SamplesPerPixel") or 1
    base = dict(
        path=str(path),
        n_frames_in_file=n,
        series_uid=str(raw_value(ds, "SeriesInstanceUID") or "") or f"file:{path}",
        sop_uid=str(raw_value(ds, "SOPInstanceUID") or ""),
        rows=rows,
        cols=cols,
        samples=samples,
        photometric=_text(raw_value(ds, "PhotometricInterpretation"), "\\").strip().upper()
        or ("RGB" if samples == 3 else "MONOCHROME2"),
        bits_allocated=bits_allocated,
        bits_stored=_int(raw_value(ds, "BitsStored"), bits_allocated, path, "BitsStored") or bits_allocated,
        signed=bool(_int(raw_value(ds, "PixelRepresentation"), 0, path, "PixelRepresentation")),
        instance_number=_lenient_int(raw_value(ds, "InstanceNumber")),
    )
    native = _native_layout(ds, path, base)
    soft_common = {
        "echo": _text(raw_value(ds, "EchoNumbers")),
        "temporal": _text(raw_value(ds, "TemporalPositionIdentifier")),
        "acquisition": _text(raw_value(ds, "AcquisitionNumber")),
        "image_type": _text(raw_value(ds, "ImageType"), "\\"),
        "trigger": _text(raw_value(ds, "TriggerTime")),
    }
    is_enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frames: list[Frame] = []
    if "MOSAIC" in soft_common["image_type"].upper() and n == 1:
        mosaic = _mosaic_geometry(ds, path)
        if mosaic is not None:
            soft = dict(soft_common, mosaic=mosaic)
            return [Frame(index=None, orientation=None, position=None, pixel_spacing=None,
                          **dict(zip(("slope", "intercept"), _rescale(
                              raw_value(ds, "RescaleSlope"), raw_value(ds, "RescaleIntercept"), base, path))),
                          soft=soft, native=_frame_native(native, 0), **base)]
    if not is_enhanced:
        orientation, problem = _orientation(raw_value(ds, "ImageOrientationPatient"), path)
        position = _floats(raw_value(ds, "ImagePositionPatient"), 3, path, "ImagePositionPatient")
        problem = problem or _half_frame(orientation, position)
        spacing = _floats(raw_value(ds, "PixelSpacing"), 2, path, "PixelSpacing")
        if spacing is None:
            spacing = _floats(raw_value(ds, "ImagerPixelSpacing"), 2, path, "ImagerPixelSpacing")
        if spacing is not None and np.any(spacing <= 0):
            spacing = None  # e.g. '0\\0' written by some exporters: no usable physical size
        slope, intercept = _rescale(raw_value(ds, "RescaleSlope"), raw_value(ds, "RescaleIntercept"), base, path)
        slope *= _dose_scaling(ds, path)
        offsets = raw_value(ds, "GridFrameOffsetVector")  # RT dose: frames are parallel planes
        if n > 1 and offsets is not None:
            offsets = _floats(offsets, n, path, "GridFrameOffsetVector")
            offsets = offsets - offsets[0]  # relative (type A, first 0) or absolute z (type B)
        for i in range(n):
            pos = position
            if n > 1 and offsets is not None and position is not None and orientation is not None:
                normal = np.cross(orientation[:3], orientation[3:])
                pos = position + float(offsets[i]) * normal
            elif n > 1:
                pos = None  # cine / NM frames share one plane: not a spatial stack
            frames.append(Frame(index=i if n > 1 else None, orientation=orientation, position=pos,
                                pixel_spacing=spacing, slope=slope, intercept=intercept,
                                soft=dict(soft_common), native=_frame_native(native, i),
                                geometry_problem=problem, **base))
        return frames
    for i in range(n):
        po = _fg(ds, i, "PlaneOrientationSequence", path)
        pp = _fg(ds, i, "PlanePositionSequence", path)
        pm = _fg(ds, i, "PixelMeasuresSequence", path)
        pv = _fg(ds, i, "PixelValueTransformationSequence", path)
        fc = _fg(ds, i, "FrameContentSequence", path)
        me = _fg(ds, i, "MREchoSequence", path)
        orientation, problem = _orientation(
            header_value(po, "ImageOrientationPatient", path) if po else None, path)
        position = _floats(header_value(pp, "ImagePositionPatient", path) if pp else None, 3, path,
                           "ImagePositionPatient")
        problem = problem or _half_frame(orientation, position)
        spacing = _floats(header_value(pm, "PixelSpacing", path) if pm else None, 2, path, "PixelSpacing")
        if spacing is not None and np.any(spacing <= 0):
            spacing = None
        soft = dict(soft_common)
        if fc is not None:
            soft["temporal"] = str(header_value(fc, "TemporalPositionIndex", path, soft["temporal"]))
            soft["stack"] = str(header_value(fc, "StackID", path, "")) or None
            dims = header_value(fc, "DimensionIndexValues", path)
            soft["dimension"] = str(list(dims)) if dims is not None else ""
        if me is not None:
            soft["echo"] = str(header_value(me, "EffectiveEchoTime", path, soft["echo"]))
        frames.append(Frame(
            index=i, orientation=orientation, position=position, pixel_spacing=spacing,
            **dict(zip(("slope", "intercept"), _rescale(
                header_value(pv, "RescaleSlope", path) if pv else raw_value(ds, "RescaleSlope"),
                header_value(pv, "RescaleIntercept", path) if pv else raw_value(ds, "RescaleIntercept"), base, path))),
            soft=soft, native=_frame_native(native, i), geometry_problem=problem, **base,
        ))
    return frames


def _mosaic_geometry(ds: Dataset, path: Path) -> dict | None:
    """Geometry of a Siemens mosaic (several slices tiled in one image), via nibabel's CSA reader.

    Returns ``{"n": slices, "tile": (rows, cols), "affine": 4×4 LPS in Sobre's (i=col, j=row, k) order}``
    or None when the CSA header does not describe a mosaic.
    """
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        try:
            wrapper = dicomwrappers.wrapper_from_data(ds)
            if type(wrapper).__name__ != "MosaicWrapper":
                return None
            rows, cols, n = (int(v) for v in wrapper.image_shape)
            per_row = int(np.ceil(np.sqrt(n)))
            aff = np.array(wrapper.affine, dtype=np.float64)  # voxel order (row, col, slice)
        except Exception:
            return None
    if int(ds.Rows) != per_row * rows or int(ds.Columns) != per_row * cols:
        raise GeometryError(
            "Siemens mosaic layout is irregular", path=path, tag=tag_name("Rows"),
            expected=f"a {per_row}×{per_row} grid of {rows}×{cols} tiles = {per_row * rows}×{per_row * cols} pixels",
            found=f"{int(ds.Rows)}×{int(ds.Columns)} pixels",
            fix="the tile layout is ambiguous; convert this file with the scanner's own export",
        )
    ours = aff.copy()
    ours[:, 0], ours[:, 1] = aff[:, 1], aff[:, 0]
    ps = _floats(ds.get("PixelSpacing"), 2, path, "PixelSpacing")
    if ps is not None:  # unit direction cosines times the exact spacing (headers store cosines to ~1e-5)
        for ax, sp in ((0, ps[1]), (1, ps[0])):
            ours[:3, ax] = ours[:3, ax] / np.linalg.norm(ours[:3, ax]) * sp
    return {"n": n, "tile": (rows, cols), "affine": ours}


def _plan_mosaic(frames: list[Frame], label: str, header: Dataset | None,
                 warn) -> VolumePlan:
    """A series of mosaics: one 3D volume, or 4D (extra axis ``time``) ordered by instance number."""
    frames = sorted(frames, key=lambda f: (f.instance_number, f.path))
    m = frames[0].soft["mosaic"]
    n_rows, n_cols = m["tile"]
    shape: tuple[int, ...] = (n_cols, n_rows, m["n"])
    extra: tuple[str, ...] = ()
    if len(frames) > 1:
        shape += (len(frames),)
        extra = ("time",)
        warn(f"series {frames[0].series_uid} holds {len(frames)} mosaic volumes; "
             "they form one 4D image (extra axis 'time') in instance-number order")
    return VolumePlan(frames=frames, affine=m["affine"], shape=shape, dtype=_output_dtype(frames),
                      spatial_ndim=3, extra_axes=extra, coordinate_system="LPS", label=label, header=header)


def demosaic(tiled: np.ndarray, n: int, tile: tuple[int, int]) -> np.ndarray:
    """Cut a (rows, cols) mosaic into a (tile_rows, tile_cols, n) stack, tiles in row-major order."""
    tr, tc = tile
    per_row = int(np.ceil(np.sqrt(n)))
    out = np.empty((tr, tc, n), dtype=tiled.dtype)
    for s in range(n):
        r, c = divmod(s, per_row)
        out[:, :, s] = tiled[r * tr:(r + 1) * tr, c * tc:(c + 1) * tc]
    return out


# --------------------------------------------------------------------------- assembly
@dataclass
class VolumePlan:
    """A consistent set of frames, sorted, with the affine and shape of the volume they form."""

    frames: list[Frame]
    affine: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    spatial_ndim: int
    extra_axes: tuple[str, ...]
    coordinate_system: str
    label: str  # what distinguishes this volume inside its series ("", "echo=2", ...)
    header: Dataset | None = None
    warnings: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # JSON-able facts for the image's metadata (geometry checks)

    @property
    def series_uid(self) -> str:
        return self.frames[0].series_uid

    @property
    def paths(self) -> list[str]:
        seen: dict[str, None] = {}
        for f in self.frames:
            seen.setdefault(f.path, None)
        return list(seen)

    def image(self, metadata: dict | None = None) -> Image:
        """A lazily loaded :class:`Image` for this plan."""
        meta = dict(metadata or {})
        meta.update(self.meta)
        if self.label:
            meta.setdefault("volume_label", self.label)
        modality = meta.get("modality")
        try:
            return Image(
                loader=lambda: load_pixels(self), shape=self.shape, dtype=self.dtype, affine=self.affine,
                spatial_ndim=self.spatial_ndim, extra_axes=self.extra_axes, modality=modality,
                metadata=meta, sources=self.paths, coordinate_system=self.coordinate_system,
            )
        except SobreError as exc:
            if exc.path is not None:
                raise
            raise type(exc)(exc.what, path=self.frames[0].path, expected=exc.expected, found=exc.found,
                            tag=exc.tag or f"{tag_name('PixelSpacing')} / {tag_name('ImagePositionPatient')}",
                            fix=exc.fix or "the geometry in the header is damaged; re-export the file") from None


def _output_dtype(frames: list[Frame]) -> np.dtype:
    """Smallest dtype holding stored values after rescale; never silently loses information."""
    f0 = frames[0]
    if f0.photometric == "PALETTE COLOR":
        return np.dtype(np.uint16)  # LUT entries are 16-bit whatever the index depth
    if f0.bits_allocated == 1:
        return np.dtype(np.uint8)
    if f0.samples > 1:
        return np.dtype(np.uint8 if f0.bits_allocated <= 8 else np.uint16 if f0.bits_allocated <= 16 else np.uint32)
    slopes = {f.slope for f in frames}
    intercepts = {f.intercept for f in frames}
    bs = max(1, min(f0.bits_stored, f0.bits_allocated))
    if f0.signed:
        lo, hi = -(2 ** (bs - 1)), 2 ** (bs - 1) - 1
    else:
        lo, hi = 0, 2**bs - 1
    if slopes == {1.0} and intercepts == {0.0}:
        stored = {8: "int8" if f0.signed else "uint8", 16: "int16" if f0.signed else "uint16",
                  32: "int32" if f0.signed else "uint32"}.get(f0.bits_allocated, "float32")
        return np.dtype(stored)
    if all(float(s).is_integer() for s in slopes) and all(float(c).is_integer() for c in intercepts):
        ends = [s * v + c for s in slopes for c in intercepts for v in (lo, hi)]
        mn, mx = min(ends), max(ends)
        for cand in (np.int16, np.int32):
            info = np.iinfo(cand)
            if info.min <= mn and mx <= info.max:
                return np.dtype(cand)
    return np.dtype(np.float32)


def _channels(f: Frame) -> int:
    """Channels in the decoded image: palette colour is expanded to RGB."""
    return 3 if f.photometric == "PALETTE COLOR" else f.samples


def _dedupe(frames: list[Frame]) -> list[Frame]:
    """Identical instances (same SOP Instance UID, or same file, and frame) read twice: keep one."""
    seen: dict[tuple, Frame] = {}
    for f in frames:
        seen.setdefault((f.sop_uid or f"file:{f.path}", f.index), f)
    return list(seen.values())


def _split_duplicates(frames: list[Frame], normal: np.ndarray) -> list[tuple[str, list[Frame]]]:
    """Split frames sharing slice positions by echo / temporal / acquisition / ...; dedupe copies."""
    frames = _dedupe(frames)

    def has_dups(fr: list[Frame]) -> bool:
        d = np.array([float(np.dot(f.position, normal)) for f in fr])
        d.sort()
        return bool(np.any(np.diff(d) < SPACING_ABS_TOL))

    if not has_dups(frames):
        return [("", frames)]
    for key in ("echo", "temporal", "dimension", "acquisition", "image_type", "trigger"):
        groups: dict[str, list[Frame]] = defaultdict(list)
        for f in frames:
            groups[f.soft.get(key, "")].append(f)
        if len(groups) > 1 and not any(has_dups(g) for g in groups.values()):
            return [(f"{key}={k}", g) for k, g in sorted(groups.items())]
    raise GeometryError(
        "several frames share the same slice position and no header field tells them apart",
        path=frames[0].path, tag=tag_name("ImagePositionPatient"),
        expected="one frame per position per echo/temporal position/acquisition",
        found=f"{len(frames)} frames in series {frames[0].series_uid}",
        fix="the series mixes acquisitions that cannot be separated; export them as separate series",
    )


def _plan_stack(frames: list[Frame], label: str, header: Dataset | None) -> VolumePlan:
    """One 3D volume from frames sharing an orientation, sorted along the slice normal.

    Slice regularity is judged on the whole series, not step by step: positions are fitted by least
    squares with a uniform grid ``origin + k × step`` (k = 0 … n-1 in sorted order), and every slice
    origin must lie within :data:`SLICE_POSITION_TOL` of a voxel of that grid — 0.2 × the step along
    the slice normal and 0.2 × the pixel spacing in the slice plane — so positions stored to 0.1 mm
    (single steps off by a few %) read, while a missing slice (a step of about twice the others,
    :data:`SLICE_GAP_RATIO`), an extra or misplaced slice (:data:`SLICE_EXTRA_RATIO`), drifting
    spacing or several stacks in one series are refused with :class:`~sobre.errors.GeometryError`.
    The affine's third column is the fitted step and its origin the fitted first position; the
    largest distance of a slice origin from the grid is ``meta["slice_position_deviation_mm"]``.
    """
    f0 = frames[0]
    row_dir = f0.orientation[:3] / np.linalg.norm(f0.orientation[:3])
    col_dir = f0.orientation[3:] / np.linalg.norm(f0.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    dist = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    col_spacing = float(f0.pixel_spacing[1]) if f0.pixel_spacing is not None else 1.0
    row_spacing = float(f0.pixel_spacing[0]) if f0.pixel_spacing is not None else 1.0
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # i runs along a row: the column index
    affine[:3, 1] = col_dir * row_spacing  # j runs down a column: the row index
    affine[:3, 3] = frames[0].position
    n = len(frames)
    meta: dict = {}
    if n == 1:
        try:
            thickness = _float(raw_value(header, "SliceThickness") if header is not None else None, 1.0) or 1.0
        except InputError:
            thickness = 1.0  # only used to give a single slice a third axis
        affine[:3, 2] = normal * thickness
    else:
        _check_steps(frames, np.diff(dist))
        positions = np.array([f.position for f in frames])
        k = np.arange(n, dtype=np.float64)
        kc = k - k.mean()
        step = (kc[:, None] * (positions - positions.mean(axis=0))).sum(axis=0) / float((kc * kc).sum())
        origin = positions.mean(axis=0) - k.mean() * step
        residual = positions - (origin[None, :] + k[:, None] * step[None, :])
        along = np.abs(residual @ normal)
        across = np.linalg.norm(residual - np.outer(residual @ normal, normal), axis=1)
        step_n = abs(float(step @ normal))
        tol_along = max(SLICE_POSITION_TOL * step_n, SPACING_ABS_TOL)
        tol_across = max(SLICE_POSITION_TOL * min(row_spacing, col_spacing), SPACING_ABS_TOL)
        worst = int(np.argmax(np.maximum(along / tol_along, across / tol_across)))
        if along[worst] > tol_along or across[worst] > tol_across:
            off_plane = across[worst] / tol_across > along[worst] / tol_along
            raise GeometryError(
                "slice positions do not lie on a straight line (several stacks in one series?)" if off_plane
                else "slice spacing is uneven: the slices do not follow a regular grid",
                path=frames[worst].path, tag=tag_name("ImagePositionPatient"),
                expected=f"every slice origin within {tol_along:.3g} mm of a uniform {step_n:.4g} mm grid along the "
                         f"slice normal and within {tol_across:.3g} mm of it across ({SLICE_POSITION_TOL:g} voxel)",
                found=f"{Path(frames[worst].path).name} {along[worst]:.3g} mm off along the normal and "
                      f"{across[worst]:.3g} mm across",
                fix="the series mixes stacks or acquisitions, or its positions are damaged; export them as "
                    "separate series" if off_plane else
                    "check the export for missing or misplaced slices; Sobre does not interpolate",
            )
        affine[:3, 2] = step
        affine[:3, 3] = origin
        meta["slice_position_deviation_mm"] = round(float(np.max(np.linalg.norm(residual, axis=1))), 6)
    channels = _channels(f0)
    extra = ("channel",) if channels > 1 else ()
    spatial = (f0.cols, f0.rows) if n == 1 else (f0.cols, f0.rows, n)
    shape = spatial + ((channels,) if channels > 1 else ())
    return VolumePlan(frames=frames, affine=affine, shape=shape, dtype=_output_dtype(frames),
                      spatial_ndim=2 if n == 1 else 3, extra_axes=extra, coordinate_system="LPS",
                      label=label, header=header, meta=meta)


def _check_steps(frames: list[Frame], steps: np.ndarray) -> None:
    """Refuse gaps (missing slices), extra slices and duplicates, judged against the (lower) median
    step: with three slices and one missing, the steps are 1 and 2 and the reference is 1."""
    med = float(np.sort(steps)[(len(steps) - 1) // 2])
    for k in range(len(steps)):
        if steps[k] < SPACING_ABS_TOL:
            what, fix = ("two slices at the same position", "the series holds duplicate or overlapping slices; "
                         "export each acquisition as its own series")
        elif steps[k] > SLICE_GAP_RATIO * med:
            what, fix = ("slice spacing is uneven: a gap where slices are missing",
                         "check the export for missing slices; Sobre does not interpolate across gaps")
        elif steps[k] < SLICE_EXTRA_RATIO * med:
            what, fix = ("slice spacing is uneven: an extra or misplaced slice between two regular ones",
                         "check the export for stray slices (another acquisition, a localizer)")
        else:
            continue
        more = int(np.sum((steps > SLICE_GAP_RATIO * med) | (steps < SLICE_EXTRA_RATIO * med))) - 1
        raise GeometryError(
            what, path=frames[k + 1].path, tag=tag_name("ImagePositionPatient"),
            expected=f"a step of {med:.4g} mm between slices",
            found=f"{steps[k]:.4g} mm between {Path(frames[k].path).name} and {Path(frames[k + 1].path).name}"
            + (f" and {more} more uneven step(s)" if more > 0 else ""),
            fix=fix,
        )


def _plan_stack_or_split(frames: list[Frame], label: str, header: Dataset | None, warn) -> list[VolumePlan]:
    """One stack; or, when the frames are unevenly spaced as one stack but fall into groups by
    acquisition / temporal position / echo that are each evenly spaced (e.g. two acquisitions
    at different table positions in one series), one stack per group, with a warning."""
    try:
        return [_plan_stack(frames, label, header)]
    except GeometryError as exc:
        error = exc
    for key in ("acquisition", "temporal", "echo", "dimension", "image_type", "trigger"):
        groups: dict[str, list[Frame]] = defaultdict(list)
        for f in frames:
            groups[f.soft.get(key, "")].append(f)
        if len(groups) < 2 or any(len(g) < 2 for g in groups.values()):
            continue
        try:
            plans = [_plan_stack(g, ",".join(x for x in (label, f"{key}={k}") if x), header)
                     for k, g in sorted(groups.items())]
        except GeometryError:
            continue
        warn(f"series {frames[0].series_uid} is unevenly spaced as one stack but holds {len(groups)} "
             f"evenly spaced stacks ({', '.join(f'{key}={k}' for k in sorted(groups))}); "
             "each becomes its own volume")
        return plans
    raise error


def _plan_flat(frames: list[Frame], label: str, header: Dataset | None) -> VolumePlan:
    """Frames without a patient position (radiographs, cine loops, NM, photographs)."""
    frames = sorted(_dedupe(frames), key=lambda f: (f.instance_number, f.path, f.index or 0))
    f0 = frames[0]
    affine = np.eye(4)
    coord = "pixel"
    if f0.pixel_spacing is not None:
        affine[0, 0] = float(f0.pixel_spacing[1])
        affine[1, 1] = float(f0.pixel_spacing[0])
    if f0.orientation is not None and f0.position is not None:
        row_dir, col_dir = f0.orientation[:3], f0.orientation[3:]
        affine[:3, 0] = row_dir * affine[0, 0]
        affine[:3, 1] = col_dir * affine[1, 1]
        affine[:3, 2] = np.cross(row_dir, col_dir)
        affine[:3, 3] = f0.position
        coord = "LPS"
    extra: tuple[str, ...] = ()
    shape: tuple[int, ...] = (f0.cols, f0.rows)
    if len(frames) > 1:
        extra += ("frame",)
        shape += (len(frames),)
    if _channels(f0) > 1:
        extra += ("channel",)
        shape += (_channels(f0),)
    return VolumePlan(frames=frames, affine=affine, shape=shape, dtype=_output_dtype(frames), spatial_ndim=2,
                      extra_axes=extra, coordinate_system=coord, label=label, header=header)


def assemble(frames: Iterable[Frame], headers: dict[str, Dataset] | None = None,
             *, on_warning=None) -> list[VolumePlan]:
    """Group frames into consistent volumes.

    Frames of one series that differ in size, orientation, pixel spacing or stack are split into
    separate volumes, and a :class:`SeriesWarning` says so. Frames with no position (cine loops,
    radiographs) become 2D images, with a ``frame`` axis when there are several. Uneven slice
    spacing raises :class:`~sobre.errors.GeometryError` (see :func:`_plan_stack` for the
    tolerance). Frames whose ImageOrientationPatient is damaged are read in pixel coordinates: a
    warning says so, and so does ``metadata["geometry_problem"]`` of the image.
    """
    headers = headers or {}
    warn = on_warning or (lambda msg: warnings.warn(msg, SeriesWarning, stacklevel=3))
    by_series: dict[str, list[Frame]] = defaultdict(list)
    for f in frames:
        by_series[f.series_uid].append(f)
    plans: list[VolumePlan] = []
    for uid, fr in by_series.items():
        groups: dict[tuple, list[Frame]] = defaultdict(list)
        for f in fr:
            groups[f.hard_key()].append(f)
        if len(groups) > 1:
            warn(f"series {uid} mixes {len(groups)} different image sizes/orientations/spacings; "
                 f"it is split into {len(groups)} volumes")
        for gi, (key, g) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1]))):
            base_label = f"part={gi + 1}" if len(groups) > 1 else ""
            header = headers.get(g[0].path)
            if "mosaic" in g[0].soft:
                plans.append(_plan_mosaic(g, base_label, header, warn))
                continue
            positioned = all(f.position is not None and f.orientation is not None for f in g)
            if positioned and not (len(g) > 1 and len({f.path for f in g}) == 1 and g[0].n_frames_in_file > 1
                                   and len({tuple(f.position) for f in g}) == 1):
                f0 = g[0]
                normal = np.cross(f0.orientation[:3], f0.orientation[3:])
                parts = _split_duplicates(g, normal)
                if len(parts) > 1:
                    warn(f"series {uid} holds {len(parts)} acquisitions at the same slice positions "
                         f"({', '.join(p for p, _ in parts)}); each becomes its own volume")
                for plabel, pf in parts:
                    label = ",".join(x for x in (base_label, plabel) if x)
                    plans.extend(_plan_stack_or_split(pf, label, header, warn))
            else:
                plan = _plan_flat(g, base_label, header)
                damaged = [f for f in g if f.geometry_problem]
                if damaged:
                    problem = f"{damaged[0].geometry_problem}; read in pixel coordinates, without a patient frame"
                    plan.meta["geometry_problem"] = problem
                    files = len({f.path for f in damaged})
                    warn(f"{damaged[0].path}{f' and {files - 1} more file(s)' if files > 1 else ''} "
                         f"(series {uid}): {problem}")
                plans.append(plan)
    return plans


# --------------------------------------------------------------------------- pixels
def _little_endian_luts(ds: Dataset) -> None:
    """Re-encode 16-bit palette LUT data of a big-endian file as little endian, in place.

    pydicom 3.0's ``apply_color_lut`` reads (non-segmented) LUT data in the machine's byte order,
    so the colours of an Explicit VR Big Endian palette image come out byte-swapped (e.g.
    ``OBXXXX1A_expb.dcm``: 37 becomes 9472).
    """
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    little = ts.is_little_endian if ts is not None and ts.is_transfer_syntax else ds.original_encoding[1]
    if little is not False or np.little_endian is False:
        return
    for colour in ("Red", "Green", "Blue", "Alpha"):
        desc = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
        kw = f"{colour}PaletteColorLookupTableData"
        if desc is None or kw not in ds:
            continue
        data = ds[kw].value
        if len(data) == 2 * (int(desc[0]) or 2**16):
            ds[kw].value = np.frombuffer(data, ">u2").astype("<u2").tobytes()


def _full_dataset(path: str) -> Dataset:
    """The whole file through ``pydicom.dcmread``, made decodable where pydicom's pixel reader is
    stricter than its file reader: a transfer syntax for files without file meta, and the image
    pixel module defaults Sobre's header reading assumes (so that what ``info`` shows, ``export``
    decodes)."""
    import pydicom

    ds = pydicom.dcmread(path, force=True)
    if not str(ds.file_meta.get("TransferSyntaxUID") or "").strip():
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if ds.original_encoding[0] else pydicom.uid.ExplicitVRLittleEndian)
    samples = int(ds.get("SamplesPerPixel") or 1)
    for keyword, value in (("SamplesPerPixel", 1), ("PixelRepresentation", 0),
                           ("BitsStored", int(ds.get("BitsAllocated") or 16)),
                           ("PhotometricInterpretation", "RGB" if samples == 3 else "MONOCHROME2")):
        if keyword not in ds or ds[keyword].value in (None, ""):
            setattr(ds, keyword, value)
    if samples > 1 and "PlanarConfiguration" not in ds:
        ds.PlanarConfiguration = 0
    return ds


def _decode_file(path: str, indices: list[int | None], palette: bool = False) -> dict[int | None, np.ndarray]:
    """Decode the requested frames of one file; returns {index: array (rows, cols[, samples])}."""
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        try:
            opts = decoder_options(path)
            if indices == [None]:
                arr = pixel_array(path, **opts)
            elif len(indices) == 1:
                arr = pixel_array(path, index=indices[0], **opts)
            else:
                arr = pixel_array(path, **opts)
            ds = None
        except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
            raise
        except BaseException:  # noqa: BLE001 - pydicom's file-based decoder is the strict one: try the dataset
            # no file meta (pre-Part-10 file), a dataset in another VR than its transfer syntax says,
            # a missing pixel-module default: decode through a full dataset read
            ds = _full_dataset(path)
            arr = ds.pixel_array
            if len(indices) == 1 and indices[0] is not None:
                arr = arr[indices[0]]
        if palette:
            hdr = pydicom.dcmread(path, force=True) if ds is None else ds
            _little_endian_luts(hdr)
            arr = apply_color_lut(arr, hdr)
        if indices == [None] or len(indices) == 1:
            return {indices[0]: arr}
        return {i: arr[i] for i in indices}
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise many types (Rust decoders a PanicException,
        # a BaseException); all mean "cannot decode this file"
        raise InputError(
            f"pixel data cannot be decoded ({describe_exception(exc)})", path=path,
            tag=tag_name("PixelData"),
            fix="the file may be truncated, or its transfer syntax needs a decoder plugin that is not installed",
        ) from None


_SCRATCH = threading.local()


def _scratch_frame(shape: tuple[int, int], dtype) -> np.ndarray:
    """This thread's reusable frame buffer of ``shape`` and ``dtype`` (one allocation per thread, not per file)."""
    key = (shape, np.dtype(dtype).str)
    held = getattr(_SCRATCH, "frame", None)
    if held is None or held[0] != key:
        held = (key, np.empty(shape, dtype=dtype))
        _SCRATCH.frame = held
    return held[1]


def _read_native(path: str, entries: list[tuple[int, Frame]], *, scratch: bool = False,
                 into: np.ndarray | None = None) -> dict[int | None, np.ndarray]:
    """Read uncompressed frames straight from the file: {index: array (rows, cols)} in native byte order.

    Applies what pydicom would: values beyond BitsStored are masked (unsigned) or sign-extended (signed).
    With ``scratch`` (one frame, copied by the caller before its next read in this thread), the frame is
    read into this thread's reusable buffer instead of a new array; with ``into`` (one frame: a
    C-contiguous (rows, cols) array of the stored values' item size, see :func:`_direct`), into that.
    """
    f0 = entries[0][1]
    tag_offset, _, _ = f0.native
    out: dict[int | None, np.ndarray] = {}
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(tag_offset)
            dtype = np.dtype(f0.native[2])
            if fh.read(4) != _PIXEL_TAG_BYTES[dtype.byteorder != ">"]:
                raise InputError(
                    "file has changed since its header was read", path=path, tag=tag_name("PixelData"),
                    expected=f"the pixel data element at byte {tag_offset}", found="something else",
                    fix="read the file again",
                )
            for _, f in entries:
                if f.index in out:
                    continue
                _, offset, dt = f.native
                if into is not None and len(entries) == 1:
                    a = into.view(dt)
                elif scratch and len(entries) == 1:
                    a = _scratch_frame((f.rows, f.cols), dt)
                else:
                    a = np.empty((f.rows, f.cols), dtype=dt)
                fh.seek(offset)
                got = fh.readinto(memoryview(a).cast("B"))
                if got != a.nbytes:
                    raise InputError(
                        "pixel data is truncated", path=path, tag=tag_name("PixelData"),
                        expected=f"{a.nbytes} bytes for frame {(f.index or 0) + 1} at byte {offset}",
                        found=f"{got} bytes before the end of the file",
                        fix="the file was cut short (interrupted transfer or export); re-export or re-send it",
                    )
                if not a.dtype.isnative:
                    a = a.byteswap().view(a.dtype.newbyteorder())
                shift = f.bits_allocated - f.bits_stored
                if 0 < shift < f.bits_allocated and a.dtype.kind == "u":
                    np.bitwise_and(a, (1 << f.bits_stored) - 1, out=a)  # what the two shifts below do, in one pass
                elif 0 < shift < f.bits_allocated:
                    np.left_shift(a, shift, out=a)  # sign extension
                    np.right_shift(a, shift, out=a)
                out[f.index] = a
    except OSError as exc:
        raise InputError(f"cannot read pixel data: {exc.strerror}", path=path, tag=tag_name("PixelData")) from None
    return out


def _direct(f: Frame, dtype: np.dtype) -> bool:
    """Whether frame ``f`` can be read straight into its place in an output array of ``dtype``: native
    pixels of the same item size in this machine's byte order, slope 1, an integer intercept, and every
    stored value plus the intercept representable (so that the stored bits, masked, read as ``dtype``
    are the stored values, and adding the intercept in place gives what :func:`_store` gives)."""
    if f.native is None or f.slope != 1.0 or not float(f.intercept).is_integer() or dtype.kind not in "iu" \
            or "mosaic" in f.soft:
        return False
    stored = np.dtype(f.native[2])
    if not stored.isnative or stored.itemsize != dtype.itemsize or f.samples != 1:
        return False
    bs = max(1, min(f.bits_stored, f.bits_allocated))
    lo, hi = (-(2 ** (bs - 1)), 2 ** (bs - 1) - 1) if f.signed else (0, 2**bs - 1)
    info, c = np.iinfo(dtype), int(f.intercept)
    return all(info.min <= v <= info.max for v in (lo, hi, lo + c, hi + c))


def _store(dst: np.ndarray, a: np.ndarray, f: Frame) -> None:
    """``dst[...] = a * slope + intercept`` without an int64/float64 copy of the whole frame when it can."""
    slope, intercept = f.slope, f.intercept
    if slope == 1.0 and intercept == 0.0:
        dst[...] = a
        return
    if dst.dtype.kind == "f":
        dst[...] = a.astype(np.float64) * slope + intercept
        return
    s, c = int(slope), int(intercept)
    bs = max(1, min(f.bits_stored, f.bits_allocated))
    lo, hi = (-(2 ** (bs - 1)), 2 ** (bs - 1) - 1) if f.signed else (0, 2**bs - 1)
    info = np.iinfo(dst.dtype)
    if a.dtype.kind in "iu" and all(info.min <= v <= info.max for v in (lo, hi, s * lo, s * hi, c)):
        dst[...] = a  # stored values fit the output type, and so does every intermediate
        if s != 1:
            dst *= dst.dtype.type(s)
        if c != 0:
            dst += dst.dtype.type(c)
    else:
        dst[...] = a.astype(np.int64) * s + c


def _available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; else the physical memory; 0 if unknown)."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def _check_memory(plan: VolumePlan) -> None:
    """Refuse, before allocating, a volume (plus the largest file pydicom decodes whole) that does
    not fit in the memory available now."""
    need = int(np.prod(plan.shape, dtype=np.float64)) * plan.dtype.itemsize
    decoded = [f for f in plan.frames if f.native is None]
    if decoded:
        f = max(decoded, key=lambda f: f.rows * f.cols * f.n_frames_in_file * f.samples)
        need += f.rows * f.cols * f.n_frames_in_file * f.samples * max(1, f.bits_allocated // 8)
    available = _available_memory()
    if available and need > available:
        raise InputError(
            "image does not fit in the memory available", path=plan.frames[0].path, tag=tag_name("PixelData"),
            expected=f"at most {available / 2**30:.3g} GiB (available now)",
            found=f"{need / 2**30:.3g} GiB for shape {plan.shape} {plan.dtype}",
            fix="free memory, or check (0028,0010) Rows, (0028,0011) Columns and (0028,0008) NumberOfFrames "
                "(a corrupted header)",
        )


def load_pixels(plan: VolumePlan) -> np.ndarray:
    """Decode and rescale the pixels of a plan into one array of ``plan.shape`` and ``plan.dtype``.

    The array is Fortran-ordered: the pixels of one frame (``[:, :, k]``) are contiguous, in the
    order DICOM stores them, so frames are copied in one block each. Uncompressed grey-level frames
    are read straight from the files (no pydicom decode, no second header parse); everything else
    goes through pydicom's decoders.
    """
    _check_memory(plan)
    out = np.empty(plan.shape, dtype=plan.dtype, order="F")
    by_file: dict[str, list[tuple[int, Frame]]] = defaultdict(list)
    for k, f in enumerate(plan.frames):
        by_file[f.path].append((k, f))
    stack = plan.spatial_ndim == 3
    framed = "frame" in plan.extra_axes
    n_frames = len(plan.frames)
    direct = out.ndim == (3 if stack or framed or n_frames > 1 else 2) and all(_direct(f, out.dtype) for f in plan.frames)

    def put(item):
        path, entries = item
        if not os.path.exists(path):
            raise InputError("file has disappeared since it was read", path=path)
        if direct and len(entries) == 1:  # one frame, read into its place in ``out``: no copy, no conversion
            k, f = entries[0]
            slot = (out[:, :, k] if stack or framed or n_frames > 1 else out).T  # (rows, cols), C-contiguous
            if slot.flags.c_contiguous and slot.shape == (f.rows, f.cols):
                _read_native(path, entries, into=slot)
                if f.intercept:
                    slot += slot.dtype.type(int(f.intercept))
                return
        if all(f.native is not None for _, f in entries):
            decoded = _read_native(path, entries, scratch=True)  # stored into ``out`` below, before the next read
        else:
            decoded = _decode_file(path, [f.index for _, f in entries],
                                   palette=entries[0][1].photometric == "PALETTE COLOR")
        for k, f in entries:
            a = decoded[f.index]
            if "mosaic" in f.soft:
                m = f.soft["mosaic"]
                a = np.swapaxes(demosaic(a, m["n"], m["tile"]), 0, 1)
                if f.slope != 1.0 or f.intercept != 0.0:
                    a = a.astype(np.float64) * f.slope + f.intercept
                if len(plan.frames) > 1:
                    out[..., k] = a
                else:
                    out[...] = a
                continue
            if a.shape[:2] != (f.rows, f.cols):
                raise InputError("decoded frame has the wrong size", path=path, tag=tag_name("PixelData"),
                                 expected=f"{f.rows}×{f.cols}", found=f"{a.shape[:2]}")
            a = np.swapaxes(a, 0, 1)  # (rows, cols[, s]) -> (cols, rows[, s]) = (i, j[, s])
            if stack or framed or n_frames > 1:
                _store(out[:, :, k, ...], a, f)
            else:
                _store(out, a, f)

    items = list(by_file.items())
    if len(items) > 4:
        _in_threads(put, items, min(4, os.cpu_count() or 1))
    else:
        for it in items:
            put(it)
    return out


def _in_threads(fn, items: list, workers: int) -> None:
    """``fn(item)`` for every item, in ``workers`` threads (file reads and numpy release the GIL). As
    ``ThreadPoolExecutor.map`` (whose import, with the logging it pulls in, costs more than reading a
    series' pixels would gain): every item runs, then the error of the first failing item, in order,
    is raised."""
    lock = threading.Lock()
    todo = iter(range(len(items)))
    errors: dict[int, BaseException] = {}

    def work() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                fn(items[i])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                with lock:
                    errors[i] = exc

    threads = [threading.Thread(target=work, name=f"sobre-pixels-{k}", daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[min(errors)]


# --------------------------------------------------------------------------- metadata
def _age_years(value: str) -> float | None:
    """DICOM AS value ('045Y', '006M', '003W', '010D') to years."""
    value = (value or "").strip().upper()
    if len(value) < 2 or not value[:-1].isdigit():
        return None
    n = int(value[:-1])
    return {"Y": n, "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}.get(value[-1])


def header_metadata(ds: Dataset) -> dict:
    """JSON-able facts from a header that Sobre catalogues (no pixel data, no direct identifiers).

    A value pydicom cannot convert raises :class:`~sobre.errors.InputError` naming the file and tag.
    RT Dose objects also give ``dose_units`` (DoseUnits, e.g. ``GY``), ``units`` (``Gy`` or
    ``relative``), ``dose_type``, ``dose_summation_type`` and ``dose_grid_scaling`` (already applied
    to the values).
    """

    try:
        return _header_metadata(ds, ds.get)
    except SobreError:
        raise
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert: again, naming the tag this time
        return _header_metadata(ds, lambda kw: header_value(ds, kw))


def _header_metadata(ds: Dataset, get) -> dict:
    def s(kw: str) -> str | None:
        v = get(kw)
        if v is None or v == "":
            return None
        if isinstance(v, MutableSequence):  # pydicom's MultiValue (or the lite reader's list) of several values
            return "\\".join(str(x) for x in v)
        return str(v)

    def f(kw: str) -> float | None:
        return _float(get(kw), None) if kw in ds else None

    fm = getattr(ds, "file_meta", None)
    ts = raw_value(fm, "TransferSyntaxUID", getattr(ds, "filename", None)) if fm is not None else None
    meta = {
        "modality": s("Modality"),
        "sop_class_uid": s("SOPClassUID"),
        "study_uid": s("StudyInstanceUID"),
        "series_uid": s("SeriesInstanceUID"),
        "frame_of_reference_uid": s("FrameOfReferenceUID"),
        "series_number": s("SeriesNumber"),
        "series_description": s("SeriesDescription"),
        "protocol": s("ProtocolName"),
        "body_part": s("BodyPartExamined"),
        "manufacturer": s("Manufacturer"),
        "model": s("ManufacturerModelName"),
        "field_strength": f("MagneticFieldStrength"),
        "institution": s("InstitutionName"),
        "study_date": s("StudyDate") or s("SeriesDate") or s("AcquisitionDate"),
        "patient_id": s("PatientID"),
        "patient_sex": s("PatientSex"),
        "patient_age": s("PatientAge"),
        "patient_birth_date": s("PatientBirthDate"),
        "patient_size_m": f("PatientSize"),
        "patient_weight_kg": f("PatientWeight"),
        "photometric": s("PhotometricInterpretation"),
        "transfer_syntax": str(ts) if ts else None,
        "burned_in_annotation": s("BurnedInAnnotation"),
        "synthetic_data": s("SyntheticData"),  # (0008,001C): YES for simulated / synthetic images
        "image_type": s("ImageType"),
        "slice_thickness": f("SliceThickness"),
    }
    if (meta["modality"] or "").upper() == "RTDOSE" or meta["sop_class_uid"] == RT_DOSE_STORAGE:
        units = (s("DoseUnits") or "").strip().upper()
        meta.update({
            "dose_units": units or None,
            "units": {"GY": "Gy", "RELATIVE": "relative"}.get(units, units or None),
            "dose_type": s("DoseType"),
            "dose_summation_type": s("DoseSummationType"),
            "dose_grid_scaling": f("DoseGridScaling"),
        })
    return {k: v for k, v in meta.items() if v is not None}


def check_image(ds: Dataset, path: str | Path) -> None:
    """Raise :class:`InputError` unless ``ds`` holds pixel data."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = raw_value(ds, "SOPClassUID")
        import pydicom.uid

        sop = pydicom.uid.UID(str(sop)) if sop else None
        name = getattr(sop, "name", None) or str(sop or "?")
        fix = "reports, structure sets and plans are not images"
        if "Image Storage" in name:
            fix = "an image object without pixel data is usually a file cut short; re-export or re-send it"
        raise InputError("DICOM object holds no pixel data", path=path, tag=tag_name("PixelData"),
                         expected="an image", found=f"SOP class {name}", fix=fix)


def _read_simple(path: str | Path) -> tuple[LiteDataset, list[Frame]] | None:
    """Header and frames of a simple file read without pydicom: one whose header
    :func:`~sobre.image._part10.read_header_lite` reads and checks, and whose frames are all read
    straight from the file (grey levels, 8/16/32 bits, not a mosaic). None for any other file, and
    wherever a value needs pydicom: the caller reads it the usual way (the same frames, or its error)."""
    ds = read_header_lite(path)
    if ds is None:
        return None
    try:
        if "MOSAIC" in _text(raw_value(ds, "ImageType"), "\\").upper():
            return None  # nibabel's CSA reader wants a pydicom dataset
        check_image(ds, path)
        found = frames_of(ds, Path(path))
        raw_value(ds, "SliceThickness")  # what assemble reads of the header (one slice): answered here, or not at all
    except (NeedPydicom, Exception):  # noqa: BLE001 - the usual reading says what is wrong, as usual
        return None
    if not found or any(f.native is None for f in found):
        return None  # pixels that pydicom decodes: its reading of the header too
    return ds, found


def _metadata(headers: dict, path: str) -> dict:
    """:func:`header_metadata` of the header read from ``path``; a value the lite reader does not
    convert as pydicom would has the file read again with pydicom (kept in ``headers``)."""
    ds = headers[path]
    if isinstance(ds, LiteDataset):
        try:
            return header_metadata(ds)
        except NeedPydicom:
            ds = headers[path] = read_header(path)
    return header_metadata(ds)


def read_dicom(paths: Iterable[str | Path], *, on_warning=None, problems=None) -> list[Image]:
    """Read DICOM files into lazily loaded Images, one per consistent volume.

    Strict by default: the first file that is not a readable DICOM image, or the first series that
    cannot be assembled, raises its :class:`~sobre.errors.SobreError`. With ``problems`` (a
    :class:`~sobre.errors.Problems`), each such file or series becomes an ``error`` problem there
    and is left out, series warnings become ``warning`` problems (and still go to ``on_warning``
    when one is given), and every readable volume is returned.
    """
    from sobre.errors import Problem

    lenient = problems is not None
    if lenient:
        def warn(msg: str) -> None:
            problems.add(Problem("warning", msg, code="series-warning"))
            if on_warning is not None:
                on_warning(msg)
    else:
        warn = on_warning
    frames: list[Frame] = []
    headers: dict[str, Dataset | LiteDataset] = {}
    for p in paths:
        simple = _read_simple(p)
        if simple is not None:
            headers[str(Path(p))], found = simple
            frames.extend(found)
            continue
        try:
            ds = read_header(p)
            check_image(ds, p)
            found = frames_of(ds, Path(p))
        except SobreError as exc:
            if not lenient:
                raise
            problems.add(Problem.from_error(exc, path=str(p)))
            continue
        headers[str(Path(p))] = ds
        frames.extend(found)
    if not lenient:
        plans = assemble(frames, headers, on_warning=warn)
        return [plan.image(_metadata(headers, plan.frames[0].path)) for plan in plans]
    by_series: dict[str, list[Frame]] = defaultdict(list)
    for f in frames:
        by_series[f.series_uid].append(f)
    images = []
    for uid, fr in by_series.items():
        try:
            for plan in assemble(fr, headers, on_warning=warn):
                images.append(plan.image(_metadata(headers, plan.frames[0].path)))
        except SobreError as exc:
            problem = Problem.from_error(exc)
            problems.add(Problem(problem.level, f"series {uid} cannot be shown: {problem.message}", path=problem.path,
                                 tag=problem.tag, fix=problem.fix, code=problem.code,
                                 details={"series_uid": uid, "files": len({f.path for f in fr})}))
    return images

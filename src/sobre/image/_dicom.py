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

import os
import warnings
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from sobre.errors import GeometryError, InputError
from sobre.image._image import Image
from sobre.image._part10 import raw_value, read_header, tag_name

# Geometry tolerances (mm or unitless cosines). Positions from real scanners jitter by ~1e-4 mm.
ORIENTATION_TOL = 1e-4
SPACING_REL_TOL = 0.01  # slice steps may differ from their median by 1 % ...
SPACING_ABS_TOL = 1e-3  # ... plus this many mm, before a series counts as uneven

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
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            "value is not numeric", path=path, tag=tag_name(keyword), expected=f"{n} numbers", found=repr(value)
        ) from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(
            "value has the wrong number of items", path=path, tag=tag_name(keyword),
            expected=f"{n} finite numbers", found=repr(list(value)),
        )
    return arr


def _int(value: Any, default: int, path: Path, keyword: str) -> int:
    """An integer header value (IS/US), or ``default`` when absent; InputError naming the tag if garbled."""
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if f.is_integer():
        return int(f)
    raise InputError("value is not an integer", path=path, tag=tag_name(keyword), expected="an integer",
                     found=repr(str(value)), fix="the header is corrupted; re-export the file")


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
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
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


def _fg(ds: Dataset, i: int, name: str):
    """Item 0 of functional-group sequence ``name`` for frame ``i`` (per-frame first, then shared)."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if not groups:
            continue
        item = groups[i] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
        seq = item.get(name)
        if seq:
            return seq[0]
    return None


def frames_of(ds: Dataset, path: str | Path) -> list[Frame]:
    """Split a dataset into frames with per-frame geometry (no pixel data is read)."""
    path = Path(path)
    for kw in ("Rows", "Columns"):
        if kw not in ds:
            raise InputError("image attribute missing", path=path, tag=tag_name(kw),
                             expected="an image object", found="no such element",
                             fix="this object holds no image (report, structure set, ...)")
    n = _int(raw_value(ds, "NumberOfFrames"), 1, path, "NumberOfFrames") or 1
    rows = _int(raw_value(ds, "Rows"), 0, path, "Rows")
    cols = _int(raw_value(ds, "Columns"), 0, path, "Columns")
    if rows <= 0 or cols <= 0:
        raise InputError("image has no pixels", path=path, tag=f"{tag_name('Rows')} / {tag_name('Columns')}",
                         expected="positive Rows and Columns", found=f"{rows}×{cols}",
                         fix="the header is corrupted; re-export the file")
    bits_allocated = _int(raw_value(ds, "BitsAllocated"), 16, path, "BitsAllocated") or 16
    base = dict(
        path=str(path),
        n_frames_in_file=n,
        series_uid=str(raw_value(ds, "SeriesInstanceUID") or "") or f"file:{path}",
        sop_uid=str(raw_value(ds, "SOPInstanceUID") or ""),
        rows=rows,
        cols=cols,
        samples=_int(raw_value(ds, "SamplesPerPixel"), 1, path, "SamplesPerPixel") or 1,
        photometric=str(raw_value(ds, "PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
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
                          slope=_float(ds.get("RescaleSlope"), 1.0), intercept=_float(ds.get("RescaleIntercept"), 0.0),
                          soft=soft, native=_frame_native(native, 0), **base)]
    if not is_enhanced:
        orientation = _floats(raw_value(ds, "ImageOrientationPatient"), 6, path, "ImageOrientationPatient")
        position = _floats(raw_value(ds, "ImagePositionPatient"), 3, path, "ImagePositionPatient")
        spacing = _floats(raw_value(ds, "PixelSpacing"), 2, path, "PixelSpacing")
        if spacing is None:
            spacing = _floats(raw_value(ds, "ImagerPixelSpacing"), 2, path, "ImagerPixelSpacing")
        if spacing is not None and np.any(spacing <= 0):
            spacing = None  # e.g. '0\\0' written by some exporters: no usable physical size
        slope = _float(raw_value(ds, "RescaleSlope"), 1.0)
        intercept = _float(raw_value(ds, "RescaleIntercept"), 0.0)
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
                                soft=dict(soft_common), native=_frame_native(native, i), **base))
        return frames
    for i in range(n):
        po = _fg(ds, i, "PlaneOrientationSequence")
        pp = _fg(ds, i, "PlanePositionSequence")
        pm = _fg(ds, i, "PixelMeasuresSequence")
        pv = _fg(ds, i, "PixelValueTransformationSequence")
        fc = _fg(ds, i, "FrameContentSequence")
        me = _fg(ds, i, "MREchoSequence")
        orientation = _floats(po.get("ImageOrientationPatient") if po else None, 6, path, "ImageOrientationPatient")
        position = _floats(pp.get("ImagePositionPatient") if pp else None, 3, path, "ImagePositionPatient")
        spacing = _floats(pm.get("PixelSpacing") if pm else None, 2, path, "PixelSpacing")
        if spacing is not None and np.any(spacing <= 0):
            spacing = None
        soft = dict(soft_common)
        if fc is not None:
            soft["temporal"] = str(fc.get("TemporalPositionIndex", soft["temporal"]))
            soft["stack"] = str(fc.get("StackID", "")) or None
            dims = fc.get("DimensionIndexValues")
            soft["dimension"] = str(list(dims)) if dims is not None else ""
        if me is not None:
            soft["echo"] = str(me.get("EffectiveEchoTime", soft["echo"]))
        frames.append(Frame(
            index=i, orientation=orientation, position=position, pixel_spacing=spacing,
            slope=_float(pv.get("RescaleSlope") if pv else ds.get("RescaleSlope"), 1.0),
            intercept=_float(pv.get("RescaleIntercept") if pv else ds.get("RescaleIntercept"), 0.0),
            soft=soft, native=_frame_native(native, i), **base,
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
        if self.label:
            meta.setdefault("volume_label", self.label)
        modality = meta.get("modality")
        return Image(
            loader=lambda: load_pixels(self), shape=self.shape, dtype=self.dtype, affine=self.affine,
            spatial_ndim=self.spatial_ndim, extra_axes=self.extra_axes, modality=modality,
            metadata=meta, sources=self.paths, coordinate_system=self.coordinate_system,
        )


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
    f0 = frames[0]
    row_dir = f0.orientation[:3] / np.linalg.norm(f0.orientation[:3])
    col_dir = f0.orientation[3:] / np.linalg.norm(f0.orientation[3:])
    normal = np.cross(row_dir, col_dir)
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
    if n == 1:
        thickness = _float(header.get("SliceThickness") if header is not None else None, 1.0) or 1.0
        affine[:3, 2] = normal * thickness
    else:
        steps = np.diff(dist)
        med = float(np.median(steps))
        bad = np.nonzero(np.abs(steps - med) > SPACING_REL_TOL * abs(med) + SPACING_ABS_TOL)[0]
        if bad.size:
            k = int(bad[0])
            raise GeometryError(
                "slice spacing is uneven (missing or extra slices?)",
                path=frames[k + 1].path, tag=tag_name("ImagePositionPatient"),
                expected=f"a step of {med:.4g} mm between slices",
                found=f"{steps[k]:.4g} mm between {Path(frames[k].path).name} and {Path(frames[k + 1].path).name}"
                + (f" and {bad.size - 1} more uneven step(s)" if bad.size > 1 else ""),
                fix="check the export for missing slices; Sobre does not interpolate across gaps",
            )
        step = (frames[-1].position - frames[0].position) / (n - 1)
        # every slice must lie on the line p0 + k*step (catches stacks that are not collinear)
        expected = frames[0].position[None, :] + np.arange(n)[:, None] * step[None, :]
        actual = np.array([f.position for f in frames])
        dev = float(np.max(np.linalg.norm(actual - expected, axis=1)))
        if dev > SPACING_REL_TOL * abs(med) + SPACING_ABS_TOL + 1e-2:
            raise GeometryError(
                "slice positions do not lie on a straight line", path=frames[0].path,
                tag=tag_name("ImagePositionPatient"), expected="collinear slice origins",
                found=f"a deviation of {dev:.3g} mm", fix="the series mixes several stacks; split it",
            )
        affine[:3, 2] = step
    channels = _channels(f0)
    extra = ("channel",) if channels > 1 else ()
    spatial = (f0.cols, f0.rows) if n == 1 else (f0.cols, f0.rows, n)
    shape = spatial + ((channels,) if channels > 1 else ())
    return VolumePlan(frames=frames, affine=affine, shape=shape, dtype=_output_dtype(frames),
                      spatial_ndim=2 if n == 1 else 3, extra_axes=extra, coordinate_system="LPS",
                      label=label, header=header)


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
    spacing raises :class:`~sobre.errors.GeometryError`.
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
                plans.append(_plan_flat(g, base_label, header))
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


def _decode_file(path: str, indices: list[int | None], palette: bool = False) -> dict[int | None, np.ndarray]:
    """Decode the requested frames of one file; returns {index: array (rows, cols[, samples])}."""
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        try:
            if indices == [None]:
                arr = pixel_array(path)
            elif len(indices) == 1:
                arr = pixel_array(path, index=indices[0])
            else:
                arr = pixel_array(path)
            ds = None
        except AttributeError:
            # no file meta (pre-Part-10 file): decode through a full dataset read
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta.TransferSyntaxUID = (
                    pydicom.uid.ImplicitVRLittleEndian if ds.original_encoding[0]
                    else pydicom.uid.ExplicitVRLittleEndian)
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
    except Exception as exc:  # decoders raise many types; all mean "cannot decode this file"
        raise InputError(
            f"pixel data cannot be decoded ({type(exc).__name__}: {exc})", path=path,
            tag=tag_name("PixelData"),
            fix="the file may be truncated, or its transfer syntax needs a decoder plugin that is not installed",
        ) from None


def _read_native(path: str, entries: list[tuple[int, Frame]]) -> dict[int | None, np.ndarray]:
    """Read uncompressed frames straight from the file: {index: array (rows, cols)} in native byte order.

    Applies what pydicom would: values beyond BitsStored are masked (unsigned) or sign-extended (signed).
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
                if 0 < shift < f.bits_allocated:
                    np.left_shift(a, shift, out=a)
                    np.right_shift(a, shift, out=a)
                out[f.index] = a
    except OSError as exc:
        raise InputError(f"cannot read pixel data: {exc.strerror}", path=path, tag=tag_name("PixelData")) from None
    return out


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


def load_pixels(plan: VolumePlan) -> np.ndarray:
    """Decode and rescale the pixels of a plan into one array of ``plan.shape`` and ``plan.dtype``.

    The array is Fortran-ordered: the pixels of one frame (``[:, :, k]``) are contiguous, in the
    order DICOM stores them, so frames are copied in one block each. Uncompressed grey-level frames
    are read straight from the files (no pydicom decode, no second header parse); everything else
    goes through pydicom's decoders.
    """
    out = np.empty(plan.shape, dtype=plan.dtype, order="F")
    by_file: dict[str, list[tuple[int, Frame]]] = defaultdict(list)
    for k, f in enumerate(plan.frames):
        by_file[f.path].append((k, f))
    stack = plan.spatial_ndim == 3
    framed = "frame" in plan.extra_axes
    n_frames = len(plan.frames)

    def put(item):
        path, entries = item
        if not os.path.exists(path):
            raise InputError("file has disappeared since it was read", path=path)
        if all(f.native is not None for _, f in entries):
            decoded = _read_native(path, entries)
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
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(put, items))
    else:
        for it in items:
            put(it)
    return out


# --------------------------------------------------------------------------- metadata
def _age_years(value: str) -> float | None:
    """DICOM AS value ('045Y', '006M', '003W', '010D') to years."""
    value = (value or "").strip().upper()
    if len(value) < 2 or not value[:-1].isdigit():
        return None
    n = int(value[:-1])
    return {"Y": n, "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}.get(value[-1])


def header_metadata(ds: Dataset) -> dict:
    """JSON-able facts from a header that Sobre catalogues (no pixel data, no direct identifiers)."""

    def s(kw: str) -> str | None:
        v = ds.get(kw)
        if v is None or v == "":
            return None
        if isinstance(v, pydicom.multival.MultiValue):
            return "\\".join(str(x) for x in v)
        return str(v)

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
        "field_strength": _float(ds.get("MagneticFieldStrength"), None) if "MagneticFieldStrength" in ds else None,
        "institution": s("InstitutionName"),
        "study_date": s("StudyDate") or s("SeriesDate") or s("AcquisitionDate"),
        "patient_id": s("PatientID"),
        "patient_sex": s("PatientSex"),
        "patient_age": s("PatientAge"),
        "patient_birth_date": s("PatientBirthDate"),
        "patient_size_m": _float(ds.get("PatientSize"), None) if "PatientSize" in ds else None,
        "patient_weight_kg": _float(ds.get("PatientWeight"), None) if "PatientWeight" in ds else None,
        "photometric": s("PhotometricInterpretation"),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.get("file_meta", {}) else None,
        "burned_in_annotation": s("BurnedInAnnotation"),
        "synthetic_data": s("SyntheticData"),  # (0008,001C): YES for simulated / synthetic images
        "image_type": s("ImageType"),
        "slice_thickness": _float(ds.get("SliceThickness"), None) if "SliceThickness" in ds else None,
    }
    return {k: v for k, v in meta.items() if v is not None}


def check_image(ds: Dataset, path: str | Path) -> None:
    """Raise :class:`InputError` unless ``ds`` holds pixel data."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", None) or str(sop or "?")
        fix = "reports, structure sets and plans are not images"
        if "Image Storage" in name:
            fix = "an image object without pixel data is usually a file cut short; re-export or re-send it"
        raise InputError("DICOM object holds no pixel data", path=path, tag=tag_name("PixelData"),
                         expected="an image", found=f"SOP class {name}", fix=fix)


def read_dicom(paths: Iterable[str | Path], *, on_warning=None) -> list[Image]:
    """Read DICOM files into lazily loaded Images, one per consistent volume.

    Files that are not DICOM raise :class:`InputError`; use the catalog's ingest for lenient
    batch reading that skips bad files with a reason.
    """
    frames: list[Frame] = []
    headers: dict[str, Dataset] = {}
    for p in paths:
        ds = read_header(p)
        check_image(ds, p)
        headers[str(Path(p))] = ds
        frames.extend(frames_of(ds, Path(p)))
    plans = assemble(frames, headers, on_warning=on_warning)
    images = []
    for plan in plans:
        meta = header_metadata(headers[plan.frames[0].path])
        images.append(plan.image(meta))
    return images

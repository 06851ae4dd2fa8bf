"""Import annotation files as label maps on a series' grid: DICOM SEG, RTSTRUCT, NIfTI masks.

RTSTRUCT contours are rasterised with scikit-image's ``skimage.draw.polygon`` (maintained, exact
point-in-polygon test of each voxel centre, no OpenCV): every CLOSED_PLANAR contour must lie in one
slice plane of the series (within 0.25 voxel along the slice axis); contours of one ROI in one plane
are combined by exclusive or, so a contour inside another is a hole (the convention of treatment
planning systems, and DICOM's CLOSEDPLANAR_XOR). POINT and OPEN contours enclose no area and are
skipped. ROIs map to the schema's segments by name; two ROIs claiming one voxel are refused (a label
map holds one segment per voxel): import them into separate annotations (``rois=``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sobre.errors import GeometryError, InputError, describe_exception

from ._common import as_grid, dicom_sources, schema_of, series_image, spatial_shape

__all__ = ["IMPORT_FORMATS", "import_file", "read_import", "read_nifti", "read_rtstruct", "read_seg"]

IMPORT_FORMATS = ("seg", "rtstruct", "nifti")
SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "Segmentation", "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation"}
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
PLANE_TOLERANCE = 0.25  # voxel, along the slice axis


def _segment_value(schema, name: str, path) -> int:
    names = {s.name: s.value for s in schema.segments}
    if name in names:
        return names[name]
    folded = {s.name.casefold(): s.value for s in schema.segments}
    if name.casefold() in folded:
        return folded[name.casefold()]
    raise InputError(f"segment '{name}' of the file is not in the project's schema", path=path,
                     expected="one of: " + (", ".join(names) or "(no segment defined)"), found=name,
                     fix="rename it in the file, or add it to the project's schema")


def read_seg(ws, project: str, series: str, path, *, rois=None):
    """A DICOM SEG of ``series`` → label map Image on its grid (segments by SegmentLabel → schema values)."""
    import highdicom as hd
    from pydicom.errors import InvalidDicomError

    from sobre.image import source_frames

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, EOFError, OSError) as exc:
        raise InputError("not a readable DICOM Segmentation", path=path, expected="a DICOM SEG (Part 10 file)",
                         found=describe_exception(exc)) from None
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom on damaged bytes
        raise InputError("not a readable DICOM Segmentation", path=path, expected="a DICOM SEG (Part 10 file)",
                         found=describe_exception(exc)) from None
    image = series_image(ws, series)
    sources = dicom_sources(image, "a SEG import")
    uid = str(image.metadata.get("series_uid") or series.partition("#")[0])
    refs = [str(r.SeriesInstanceUID) for r in getattr(seg, "ReferencedSeriesSequence", [])]
    if refs and uid not in refs:
        raise InputError("the SEG refers to another series", path=path, tag="(0008,1115) ReferencedSeriesSequence",
                         expected=uid, found=", ".join(refs), fix="import it on the series it was drawn on")
    schema = schema_of(ws, project)
    numbers, values = [], []
    for item in seg.SegmentSequence:
        label = str(item.SegmentLabel)
        if rois and label not in rois:
            continue
        numbers.append(int(item.SegmentNumber))
        values.append(_segment_value(schema, label, path))
    if not numbers:
        raise InputError("no segment of the SEG to import", path=path, expected=", ".join(rois or []) or "a segment",
                         found=", ".join(str(i.SegmentLabel) for i in seg.SegmentSequence) or "none")
    shape = spatial_shape(image)
    grid = as_grid(image, np.zeros(shape, np.uint8))
    frames = source_frames(grid, sources)  # where each source frame lies on the grid
    arr = np.zeros(shape, np.uint8)
    covered = np.zeros(shape, np.uint16)
    try:
        single = [f for f in frames if f.number is None]
        planes = {}
        if single:
            px = seg.get_pixels_by_source_instance([f.sop_uid for f in single], segment_numbers=numbers,
                                                   combine_segments=False, assert_missing_frames_are_empty=False,
                                                   skip_overlap_checks=True, dtype=np.uint8)
            planes.update({id(f): px[n] for n, f in enumerate(single)})
        multi = [f for f in frames if f.number is not None]
        for sop in dict.fromkeys(f.sop_uid for f in multi):
            fs = [f for f in multi if f.sop_uid == sop]
            px = seg.get_pixels_by_source_frame(sop, [f.number for f in fs], segment_numbers=numbers,
                                                combine_segments=False, assert_missing_frames_are_empty=False,
                                                skip_overlap_checks=True, dtype=np.uint8)
            planes.update({id(f): px[n] for n, f in enumerate(fs)})
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
        raise InputError("the SEG's frames cannot be placed on the series", path=path,
                         expected="frames derived from this series' instances", found=describe_exception(exc)) from None
    g = arr.reshape(image.shape[: image.spatial_ndim])
    c = covered.reshape(g.shape)
    for f in frames:
        px = planes[id(f)]  # (rows, cols, segments)
        lab, cnt = g[f.index], c[f.index]  # f.index is an advanced index: copies, written back below
        for s, value in enumerate(values):
            on = px[..., s] > 0
            lab[on] = value
            cnt[on] += 1
        g[f.index] = lab
        c[f.index] = cnt
    if (covered > 1).any():
        raise InputError("segments of the SEG overlap", path=path, expected="one segment per voxel (a label map)",
                         found=f"{int((covered > 1).sum())} voxels in two or more segments",
                         fix="import overlapping segments into separate annotations (rois=NAME)")
    return as_grid(image, arr)


def read_rtstruct(ws, project: str, series: str, path, *, rois=None):
    """An RTSTRUCT drawn on ``series`` → label map Image on its grid (ROIs by name → schema values)."""
    from skimage.draw import polygon

    from sobre.image import read_instance

    path = Path(path)
    try:
        ds = read_instance(path)
    except Exception as exc:  # noqa: BLE001 - pydicom on damaged bytes; sobre's own errors keep their text
        raise InputError("not a readable DICOM file", path=path, expected="an RTSTRUCT (Part 10 file)",
                         found=describe_exception(exc)) from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_CLASS:
        raise InputError("not an RT Structure Set", path=path, tag="(0008,0016) SOPClassUID",
                         expected=RTSTRUCT_CLASS, found=str(ds.get("SOPClassUID", "none")))
    image = series_image(ws, series)
    dicom_sources(image, "an RTSTRUCT import")
    frame = str(image.metadata.get("frame_of_reference_uid") or "")
    refs = [str(r.get("FrameOfReferenceUID", "")) for r in ds.get("ReferencedFrameOfReferenceSequence", [])]
    roi_frames = {int(r.ROINumber): str(r.get("ReferencedFrameOfReferenceUID", ""))
                  for r in ds.get("StructureSetROISequence", [])}
    if frame and refs and frame not in refs:
        raise InputError("the RTSTRUCT refers to another frame of reference", path=path,
                         tag="(3006,0010) ReferencedFrameOfReferenceSequence", expected=frame, found=", ".join(refs),
                         fix="import it on the series it was drawn on")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    schema = schema_of(ws, project)
    known = {s.name.casefold() for s in schema.segments}
    if rois:
        missing = [r for r in rois if r not in names.values()]
        if missing:
            raise InputError("ROI(s) not in the RTSTRUCT", path=path, expected=", ".join(names.values()),
                             found=", ".join(missing))
        wanted = {n: nm for n, nm in names.items() if nm in rois}
    else:
        wanted = {n: nm for n, nm in names.items() if nm.casefold() in known}
    if not wanted:
        raise InputError("no ROI of the RTSTRUCT is a segment of the project's schema", path=path,
                         expected="ROI names among: " + (", ".join(s.name for s in schema.segments) or "(none)"),
                         found=", ".join(names.values()) or "no ROI", fix="name the segments like the ROIs, or pass rois=")
    shape = spatial_shape(image)
    inv = np.linalg.inv(np.asarray(image.affine, dtype=float))
    arr = np.zeros(shape, np.uint8)
    for rc in ds.get("ROIContourSequence", []):
        number = int(rc.ReferencedROINumber)
        if number not in wanted:
            continue
        if frame and roi_frames.get(number) and roi_frames[number] != frame:
            raise InputError(f"ROI '{wanted[number]}' lies in another frame of reference", path=path,
                             expected=frame, found=roi_frames[number])
        value = _segment_value(schema, wanted[number], path)
        roi = np.zeros(shape, bool)
        for n, contour in enumerate(rc.get("ContourSequence", [])):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() not in ("CLOSED_PLANAR",
                                                                                         "CLOSEDPLANAR_XOR"):
                continue
            try:
                pts = np.asarray([float(x) for x in contour.ContourData], dtype=float).reshape(-1, 3)
            except (ValueError, AttributeError) as exc:
                raise InputError(f"ROI '{wanted[number]}', contour {n + 1}: unreadable points", path=path,
                                 tag="(3006,0050) ContourData", expected="x\\y\\z triples in mm",
                                 found=describe_exception(exc)) from None
            if len(pts) < 3 or not np.isfinite(pts).all():
                raise InputError(f"ROI '{wanted[number]}', contour {n + 1}: not a polygon", path=path,
                                 tag="(3006,0050) ContourData", expected="3 or more finite points",
                                 found=f"{len(pts)} point(s)")
            ijk = pts @ inv[:3, :3].T + inv[:3, 3]
            k = float(np.round(ijk[:, 2].mean()))
            off = float(np.abs(ijk[:, 2] - k).max())
            if off > PLANE_TOLERANCE:
                raise GeometryError(f"ROI '{wanted[number]}', contour {n + 1} does not lie in a slice of the series",
                                    path=path, expected=f"every point within {PLANE_TOLERANCE} voxel of one slice",
                                    found=f"{off:.2f} voxel off slice {int(k)}",
                                    fix="import it on the series it was drawn on (same orientation and slices)")
            if not 0 <= k < shape[2]:
                raise GeometryError(f"ROI '{wanted[number]}', contour {n + 1} lies outside the series", path=path,
                                    expected=f"slices 0 to {shape[2] - 1}", found=f"slice {int(k)}")
            rr, cc = polygon(ijk[:, 0], ijk[:, 1], shape=shape[:2])  # (i, j) of voxel centres inside
            plane = np.zeros(shape[:2], bool)
            plane[rr, cc] = True
            roi[:, :, int(k)] ^= plane
        clash = roi & (arr > 0)
        if clash.any():
            raise InputError(f"ROI '{wanted[number]}' overlaps another imported ROI", path=path,
                             expected="one segment per voxel (a label map)", found=f"{int(clash.sum())} voxels in both",
                             fix="import overlapping ROIs into separate annotations (rois=NAME)")
        arr[roi] = value
    return as_grid(image, arr)


def read_nifti(ws, project: str, series: str, path, *, rois=None):
    """A NIfTI (or NRRD/MHA) mask → label map Image, refused unless it lies on the series' grid."""
    import sobre

    path = Path(path)
    try:
        mask = sobre.load(path)
        arr = np.asarray(mask.array)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel on damaged bytes
        raise InputError("not a readable NIfTI mask", path=path, expected="a .nii or .nii.gz file",
                         found=describe_exception(exc)) from None
    image = series_image(ws, series)
    want = tuple(int(s) for s in image.shape[: image.spatial_ndim])
    got = tuple(int(s) for s in arr.shape)
    if mask.extra_axes or got[: len(want)] != want or len(got) > len(want) and any(s != 1 for s in got[len(want):]):
        raise InputError("mask shape does not match the series", path=path, expected=str(list(want)),
                         found=str(list(got)), fix="resample the mask onto the series first")
    a, b = np.asarray(mask.affine, float), np.asarray(image.affine, float)
    spacing = np.linalg.norm(b[:3, :3], axis=0)
    corners = np.array([[i, j, k, 1.0] for i in (0, want[0] - 1) for j in (0, want[1] - 1)
                        for k in (0, (want[2] - 1) if len(want) > 2 else 0)])
    off_vox = np.abs(((corners @ a.T)[:, :3] - (corners @ b.T)[:, :3]) / spacing).max()
    if off_vox > 0.2:
        raise GeometryError("mask is not on the series' grid", path=path,
                            expected="the series' voxels (within 0.2 voxel)", found=f"corners {off_vox:.2f} voxel away",
                            fix="resample the mask onto the series first")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InputError("mask values must be whole numbers", path=path, expected="segment values (0 = background)",
                             found=f"non-integer {arr.dtype} values")
    elif arr.dtype.kind not in "iub":
        raise InputError("mask values must be integers", path=path, found=str(arr.dtype))
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise InputError("mask values out of range", path=path, expected="0..255 (segment values)",
                         found=f"{arr.min()}..{arr.max()}")
    return as_grid(image, arr.reshape(spatial_shape(image)).astype(np.uint8))


def read_import(ws, project: str, series: str, path, fmt: str, *, rois=None):
    """Read a file of format ``fmt`` (seg, rtstruct, nifti) into a label map on ``series``' grid."""
    readers = {"seg": read_seg, "rtstruct": read_rtstruct, "nifti": read_nifti}
    if fmt not in readers:
        raise InputError("unknown import format", expected=", ".join(IMPORT_FORMATS), found=repr(fmt))
    return readers[fmt](ws, project, series, path, rois=rois)


def import_file(ws, project: str, series: str, name: str, path, fmt: str, *, author: str, parent: int | None = None,
                new_branch: bool = False, rois=None):
    """Import ``path`` as a new version of annotation ``name`` (a mask) of ``series``; nothing stored on error."""
    mask = read_import(ws, project, series, path, fmt, rois=rois)
    return ws.annotations.save(project, series, name, "mask", mask, author=author, parent=parent,
                               new_branch=new_branch, tool=f"import:{fmt}")

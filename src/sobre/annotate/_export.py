"""Export annotation versions: DICOM SEG, TID 1500 SR, NIfTI, CSV; push SEG/SR to a DICOMweb PACS."""

from __future__ import annotations

import csv
import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np

from sobre.base import sha256_bytes, sha256_file, write_atomic
from sobre.errors import InputError

from ._common import (
    as_grid,
    dicom_sources,
    schema_of,
    series_image,
    series_key_of,
    version_info,
)

__all__ = ["FORMATS", "export_csv", "export_nifti", "export_seg", "export_sr", "export_version", "push_version"]

#: Export formats and the kinds of annotation each takes.
FORMATS = {"seg": ("mask",), "sr": ("labels", "points", "mask"), "nifti": ("mask",),
           "csv": ("labels", "points", "boxes", "mask")}

LOCAL_SCHEME = "99SOBRE"  # private coding scheme of project-defined label names (PS3.16 8.2: 99 prefix)
YES = ("373066001", "SCT", "Yes")
NO = ("373067005", "SCT", "No")
VOLUME = ("118565006", "SCT", "Volume")


def _need(info, fmt: str) -> None:
    if info.kind not in FORMATS[fmt]:
        raise InputError(f"a {info.kind} version cannot be exported as {fmt}",
                         expected=f"a version of kind {' or '.join(FORMATS[fmt])}", found=info.kind,
                         fix="choose csv" if info.kind != "mask" else "choose seg or nifti")


def _code(name: str) -> tuple[str, str, str]:
    """A coded concept for a project-defined name: the name itself when it fits a CodeValue (16), else a hash."""
    text = str(name)
    value = text if len(text) <= 16 and text.isascii() and "\\" not in text else \
        "H" + hashlib.sha256(text.encode()).hexdigest()[:15]
    return value, LOCAL_SCHEME, text[:64]


def _person(author: str) -> str:
    return (author or "unknown").replace("^", "_")[:62] + "^"  # Family^ (a name without ^ is the retired form)


def export_seg(ws, version, path, *, segmentation_type: str = "BINARY"):
    """Write a mask version as a DICOM Segmentation of its series; returns :class:`sobre.image.DicomOutput`.

    Segments are the schema's (name, value, colour, SNOMED codes), those present in the mask (all of
    them when it is empty). The mask must lie on the source DICOM series' grid (it does: masks are saved
    on it).
    """
    from sobre.image import Segment, write_seg

    info = version_info(ws, version)
    _need(info, "seg")
    mask = ws.annotations.content(info)  # hash-checked
    image = series_image(ws, series_key_of(info))
    sources = dicom_sources(image, "a DICOM SEG")
    schema = schema_of(ws, info.project)
    arr = np.asarray(mask.array)
    present = {int(v) for v in np.unique(arr) if v}
    defs = [s for s in schema.segments if s.value in present] or list(schema.segments)
    if not defs:
        raise InputError("the project's schema defines no segment", expected="at least one segment",
                         found="none", fix="add segments to the project's schema")
    segments = [Segment(label=s.name[:64], value=s.value, color=tuple(s.color),
                        category=(s.category.value, s.category.scheme, s.category.meaning) if s.category else None,
                        type=(s.type.value, s.type.scheme, s.type.meaning) if s.type else None) for s in defs]
    grid = as_grid(image, arr.reshape(mask.shape[: image.spatial_ndim]) if arr.size == np.prod(
        image.shape[: image.spatial_ndim]) else arr)
    return write_seg(grid, sources, path, segments=segments, segmentation_type=segmentation_type,
                     series_description=f"{info.name} v{info.number} ({info.status})"[:64],
                     content_label=info.name, content_creator=_person(info.author))


def _label_items(ws, info) -> tuple[list, list, list[str]]:
    from sobre.image import Finding, Measurement

    schema = schema_of(ws, info.project)
    labels = ws.annotations.content(info)
    findings, measurements, left = [], [], []
    for name, value in labels.items():
        ldef = schema.label(name)
        kind = ldef.kind if ldef else "text"
        concept = _code(name)
        if kind == "binary":
            findings.append(Finding(concept, YES if int(value) else NO))
        elif kind == "multiclass":
            findings.append(Finding(concept, _code(value)))
        elif kind == "multilabel":
            findings.extend(Finding(concept, _code(v)) for v in value)
        elif kind == "numeric":
            unit = (ldef.unit or "1") if ldef else "1"
            measurements.append(Measurement(concept, float(value), unit))
        else:
            left.append(name)
    return findings, measurements, left


def export_sr(ws, version, path, *, seg=None):
    """Write a TID 1500 Imaging Measurement Report (Comprehensive 3D SR) of a version.

    - labels: binary → finding *label* = Yes/No (SCT), multiclass/multilabel → finding = the class,
      numeric → measurement with the label's UCUM unit; label names are coded in the private scheme
      ``99SOBRE`` (their name as CodeMeaning). Text labels have no coded form and are left out.
    - points: one 3D point region (SCOORD3D POINT, LPS mm, the series' frame of reference) per point.
    - mask: one measurement group per segment of ``seg`` (the SEG exported from this version, required)
      with its volume in mm³.

    The observer is the annotation's author (a person). Returns :class:`sobre.image.DicomOutput`.
    """
    from sobre.image import Measurement, write_sr

    info = version_info(ws, version)
    _need(info, "sr")
    image = series_image(ws, series_key_of(info))
    sources = dicom_sources(image, "a TID 1500 SR")
    desc = f"{info.name} v{info.number} ({info.status})"[:64]
    if info.kind == "points":
        return _points_sr(ws, info, image, sources, path, desc)
    if info.kind == "mask":
        if seg is None:
            raise InputError("an SR of a mask refers to its SEG", expected="seg= the SEG exported from this version",
                             found="none", fix="export the SEG first (export_seg), or push the version (SEG + SR)")
        from sobre.image import read_header

        seg_ds = read_header(seg.path if hasattr(seg, "path") else seg)
        arr = np.asarray(ws.annotations.content(info).array)
        voxel = float(abs(np.linalg.det(np.asarray(image.affine)[:3, :3])))
        schema = schema_of(ws, info.project)
        measurements = []
        for item in seg_ds.SegmentSequence:
            sdef = next((s for s in schema.segments if s.name[:64] == str(item.SegmentLabel)), None)
            if sdef is not None:
                measurements.append(Measurement(VOLUME, float((arr == sdef.value).sum()) * voxel, "mm3",
                                                segment=int(item.SegmentNumber)))
        return write_sr(sources, path, observer=_person(info.author), measurements=measurements, seg=seg,
                        series_description=desc)
    findings, measurements, left = _label_items(ws, info)
    if not findings and not measurements:
        raise InputError("nothing of this version has a coded form for an SR", expected="binary, multiclass, "
                         "multilabel or numeric labels", found="only text labels: " + ", ".join(left),
                         fix="export it as CSV")
    try:
        return write_sr(sources, path, observer=_person(info.author), findings=findings, measurements=measurements,
                        series_description=desc)
    except InputError:
        # a unit that write_sr does not know by name: give it as a full UCUM code
        measurements = [Measurement(m.name, m.value, (m.unit, "UCUM", m.unit) if isinstance(m.unit, str) else m.unit)
                        for m in measurements]
        return write_sr(sources, path, observer=_person(info.author), findings=findings, measurements=measurements,
                        series_description=desc)


def _points_sr(ws, info, image, sources, path, desc):
    """TID 1500 with one planar-ROI group per point (SCOORD3D POINT in the series' frame of reference)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from sobre.image import DicomOutput, encode_dataset, new_uid, read_header

    points = ws.annotations.content(info)
    datasets = [read_header(s) for s in sources]
    datasets = list({str(d.SOPInstanceUID): d for d in datasets}.values())
    frame = str(datasets[0].get("FrameOfReferenceUID", ""))
    if not frame:
        raise InputError("the series has no frame of reference", expected="(0020,0052) FrameOfReferenceUID",
                         found="none", fix="points need patient coordinates; export them as CSV")
    person = hd.sr.PersonObserverIdentifyingAttributes(name=_person(info.author))
    ctx = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(codes.DCM.Person, person))
    groups = []
    for n, p in enumerate(points, start=1):
        region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                     graphic_data=np.asarray([p["position"]], dtype=float),
                                     frame_of_reference_uid=frame)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=f"{p['name']} {n}"[:64]),
            referenced_region=region, finding_type=hd.sr.CodedConcept(*_code(p["name"]))))
    modality = str(datasets[0].get("Modality", "")).upper()
    procedure = {"CT": ("25045-6", "LN", "CT unspecified body region"),
                 "MR": ("25056-3", "LN", "MRI unspecified body region")}.get(
        modality, ("363679005", "SCT", "Imaging procedure"))
    report = hd.sr.MeasurementReport(observation_context=ctx, procedure_reported=hd.sr.CodedConcept(*procedure),
                                     imaging_measurements=groups, referenced_images=datasets)
    try:
        sr = hd.sr.Comprehensive3DSR(evidence=datasets, content=report, series_instance_uid=new_uid(),
                                     series_number=9003, sop_instance_uid=new_uid(), instance_number=1,
                                     manufacturer="Sobre", is_complete=True, is_final=False, is_verified=False)
    except (ValueError, TypeError) as exc:
        raise InputError(f"highdicom refused the report: {exc}") from None
    sr.SeriesDescription = desc
    for kw in ("PatientIdentityRemoved", "DeidentificationMethod", "SyntheticData"):
        if kw in datasets[0]:
            setattr(sr, kw, datasets[0].get(kw))
    data = encode_dataset(sr)[0]
    write_atomic(Path(path), data)
    return DicomOutput(kind="SR", path=Path(path), sop_class_uid=str(sr.SOPClassUID),
                       sop_instance_uid=str(sr.SOPInstanceUID), series_uid=str(sr.SeriesInstanceUID),
                       study_uid=str(sr.StudyInstanceUID), sha256=sha256_bytes(data),
                       references=[str(d.SOPInstanceUID) for d in datasets])


def export_nifti(ws, version, path) -> Path:
    """Write a mask version as NIfTI (RAS on disk, the very bytes stored, hash checked)."""
    info = version_info(ws, version)
    _need(info, "nifti")
    src = Path(ws.root) / info.path
    data = src.read_bytes()
    if sha256_bytes(data) != info.sha256:
        raise InputError("an annotation file changed since it was saved", path=src, expected=f"sha256 {info.sha256}",
                         found=f"sha256 {sha256_bytes(data)}", fix="restore it; annotation versions are immutable")
    path = Path(path)
    write_atomic(path, data)
    return path


def _cell(value) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    text = ";".join(str(v) for v in value) if isinstance(value, (list, tuple)) else ("" if value is None else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def export_csv(ws, versions, path) -> Path:
    """One row per item of each version: labels (label, value), points (name, x, y, z), boxes, mask segments.

    Columns: ``project, series_uid, series_label, annotation, kind, version, number, author, status,
    created_at, item, value, x, y, z, x2, y2, z2``. Cells a spreadsheet would run as a formula are
    prefixed with ``'``.
    """
    infos = [version_info(ws, v) for v in (versions if isinstance(versions, (list, tuple)) else [versions])]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["project", "series_uid", "series_label", "annotation", "kind", "version", "number", "author", "status",
                "created_at", "item", "value", "x", "y", "z", "x2", "y2", "z2"])
    for info in infos:
        head = [info.project, info.series_uid, info.series_label, info.name, info.kind, info.id, info.number,
                info.author, info.status, info.created_at]
        content = ws.annotations.content(info)
        if info.kind == "labels":
            rows = [[k, v, "", "", "", "", "", ""] for k, v in content.items()]
        elif info.kind == "points":
            rows = [[p["name"], "", *p["position"], "", "", ""] for p in content]
        elif info.kind == "boxes":
            rows = [[b["name"], "", *b["min"], *b["max"]] for b in content]
        else:
            rows = [[name, count, "", "", "", "", "", ""] for name, count in sorted(info.summary.get("segments", {}).items())]
        for r in rows:
            w.writerow([_cell(x) for x in head + r])
    path = Path(path)
    write_atomic(path, out.getvalue().encode())
    return path


def export_version(ws, version, fmt: str, path) -> dict:
    """Export in format ``fmt`` (seg, sr, nifti, csv); ``{"path", "sha256", "format", ...}``."""
    if fmt not in FORMATS:
        raise InputError("unknown export format", expected=", ".join(FORMATS), found=repr(fmt))
    info = version_info(ws, version)
    if fmt == "seg":
        out = export_seg(ws, info, path).to_dict()
    elif fmt == "sr":
        if info.kind == "mask":
            raise InputError("an SR of a mask refers to its SEG", expected="format=seg for the mask",
                             found="format=sr", fix="export the SEG; `push` sends the SEG and its SR together")
        out = export_sr(ws, info, path).to_dict()
    elif fmt == "nifti":
        out = {"path": str(export_nifti(ws, info, path))}
    else:
        out = {"path": str(export_csv(ws, info, path))}
    out["sha256"] = out.get("sha256") or sha256_file(out["path"])
    out["format"] = fmt
    return out


def push_version(ws, version, url: str, fmt: str = "seg") -> dict:
    """Export and send to a DICOMweb PACS (STOW-RS): a mask as its SEG (and with ``fmt="sr"`` the SEG and its
    SR of volumes), labels and points as an SR. Returns what was sent."""
    from sobre.pacs import DicomWebPacs

    info = version_info(ws, version)
    with tempfile.TemporaryDirectory(prefix="sobre-push-") as tmp:
        outputs = []
        if info.kind == "mask":
            seg = export_seg(ws, info, Path(tmp) / "seg.dcm")
            outputs.append(seg)
            if fmt == "sr":
                outputs.append(export_sr(ws, info, Path(tmp) / "sr.dcm", seg=seg))
        elif fmt == "sr":
            outputs.append(export_sr(ws, info, Path(tmp) / "sr.dcm"))
        else:
            raise InputError(f"a {info.kind} version is pushed as an SR", expected="format sr", found=fmt)
        report = DicomWebPacs(url).push([o.path for o in outputs])
    sent = [o.to_dict() for o in outputs]
    for d in sent:
        d.pop("path", None)
    return {"pacs": url, "objects": sent, "sop_instance_uid": sent[-1]["sop_instance_uid"],
            "sha256": sent[-1]["sha256"], "report": report.to_dict()}

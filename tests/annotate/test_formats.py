"""Annotation versions to and from files: SEG (highdicom read-back, dciodvfy), SR, RTSTRUCT, NIfTI, CSV;
a real Orthanc accepts what is pushed."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

import sobre
from sobre.annotate import (
    export_csv,
    export_nifti,
    export_seg,
    export_sr,
    import_file,
    push_version,
    read_nifti,
    read_rtstruct,
)
from sobre.errors import GeometryError, InputError
from tests.image import test_dicom_objects as objects
from tests.pacs.conftest import orthanc, orthanc_empty  # noqa: F401 - fixtures
from tests.server.conftest import server_template, ws  # noqa: F401 - fixtures

#: dciodvfy messages accepted here besides tests/image's, and why.
ACCEPTED = [
    # project-defined label names are coded in a private scheme (PS3.16 §8: local designators start with 99)
    (r"^Warning - Unrecognized defined term <99SOBRE> for value 1 of attribute <Coding Scheme Designator>",
     "private coding scheme of project labels"),
]


def iod_check(path) -> list[str]:
    old = objects.ACCEPTED
    objects.ACCEPTED = old + ACCEPTED
    try:
        return objects.iod_check(path)
    finally:
        objects.ACCEPTED = old


@pytest.fixture
def mr(ws):  # noqa: F811 - the imported fixture
    rec = min(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])
    return rec["series_uid"]


def _mask(ws, key):  # noqa: F811 - a workspace argument
    shape = ws.series(key)["shape"]
    m = np.zeros(shape, np.uint8)
    m[2:6, 3:9, 1:4] = 1
    m[10:12, 10:13, 4] = 2
    return m


def test_seg_export_reads_back_passes_dciodvfy_and_imports(ws, mr, tmp_path):  # noqa: F811
    import highdicom as hd

    mask = _mask(ws, mr)
    v = ws.annotations.save("demo", mr, "lesions", "mask", mask, author="annotator")
    out = export_seg(ws, v, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out.path)
    assert seg.SegmentationType == "BINARY" and [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion",
                                                                                                   "<b>liver</b>"]
    assert str(seg.ContentCreatorName) == "annotator^"
    img = ws.load(mr)
    by_uid = {}
    for k, f in enumerate(sorted(img.sources)):
        from sobre.image import read_header

        by_uid[str(read_header(f).SOPInstanceUID)] = f
    px = seg.get_pixels_by_source_instance(list(by_uid), segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
    assert int(px[..., 0].sum()) == int((mask == 1).sum()) and int(px[..., 1].sum()) == int((mask == 2).sum())
    iod_check(out.path)
    # and back: a new version equal to the first
    back = import_file(ws, "demo", mr, "lesions", out.path, "seg", author="ann2", parent=v.id)
    assert back.tool == "import:seg" and back.number == 2
    assert np.array_equal(np.asarray(ws.annotations.content(back).array), mask)
    # a SEG of another series is refused
    other = sorted(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])[1]["series_uid"]
    with pytest.raises(InputError, match="the SEG refers to another series"):
        import_file(ws, "demo", other, "lesions", out.path, "seg", author="ann2")


def test_sr_of_labels_and_points(ws, mr, tmp_path):  # noqa: F811
    from pydicom import dcmread

    lab = ws.annotations.save("demo", mr, "labels", "labels",
                              {"pneumonia": 1, "quality": "good", "volume_ml": 12.5, "note": "text is left out"},
                              author="annotator")
    out = export_sr(ws, lab, tmp_path / "labels.dcm")
    ds = dcmread(out.path)
    meanings = {str(x.value) for x in ds.iterall() if x.keyword == "CodeMeaning"}
    assert {"pneumonia", "Yes", "quality", "good", "volume_ml"} <= meanings
    iod_check(out.path)
    pts = ws.annotations.save("demo", mr, "landmarks", "points", [{"name": "apex", "position": [1.5, -2.0, 14.0]}],
                              author="annotator")
    out = export_sr(ws, pts, tmp_path / "points.dcm")
    ds = dcmread(out.path)
    coords = [list(map(float, x.value)) for x in ds.iterall() if x.keyword == "GraphicData"]
    assert coords == [[1.5, -2.0, 14.0]]
    assert str(ds.PatientID) == "S01"
    iod_check(out.path)
    with pytest.raises(InputError, match="an SR of a mask refers to its SEG"):
        export_sr(ws, ws.annotations.save("demo", mr, "lesions", "mask", _mask(ws, mr), author="annotator"),
                  tmp_path / "x.dcm")


def _rtstruct(img, path, rois: dict, frame_uid=None):
    """An RTSTRUCT with ROIs {name: [contour (n, 3) in voxel coordinates]} drawn on ``img``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "S01"
    ds.StudyInstanceUID = img.metadata["study_uid"]
    ds.SeriesInstanceUID = generate_uid()
    frame = frame_uid or img.metadata["frame_of_reference_uid"]
    ref = Dataset()
    ref.FrameOfReferenceUID = frame
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for n, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = n
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = frame
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ContourSequence = Sequence()
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            ijk = np.c_[np.asarray(pts, float), np.ones(len(pts))]
            lps = (ijk @ np.asarray(img.affine).T)[:, :3]
            c.NumberOfContourPoints = len(lps)
            c.ContourData = [f"{x:.4f}" for x in lps.reshape(-1)]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return path


def _box(i0, i1, j0, j1, k):
    return [(i0, j0, k), (i1, j0, k), (i1, j1, k), (i0, j1, k)]


def test_rtstruct_is_rasterised_on_the_series_grid(ws, mr, tmp_path):  # noqa: F811
    img = ws.load(mr)
    # a rectangle whose edges lie half-way between voxel centres (no centre on an edge), with a hole
    path = _rtstruct(img, tmp_path / "rs.dcm", {"lesion": [_box(1.5, 6.5, 2.5, 8.5, 2), _box(2.5, 3.5, 3.5, 4.5, 2)],
                                                "LIVER": [], "couch": [_box(0.5, 2.5, 10.5, 12.5, 3)]})
    mask = read_rtstruct(ws, "demo", mr, path)
    want = np.zeros(img.shape, np.uint8)
    want[2:7, 3:9, 2] = 1
    want[3, 4, 2] = 0  # the hole (exclusive or of nested contours)
    assert np.array_equal(np.asarray(mask.array), want)  # "couch" is not in the schema: left out
    assert np.allclose(mask.affine, img.affine)
    v = import_file(ws, "demo", mr, "lesions", path, "rtstruct", author="annotator")
    assert v.summary["segments"] == {"lesion": int(want.sum())}
    with pytest.raises(InputError, match="'couch' of the file is not in the project's schema"):
        read_rtstruct(ws, "demo", mr, path, rois=["couch"])
    off = _rtstruct(img, tmp_path / "off.dcm", {"lesion": [[(1, 1, 2), (5, 1, 2.6), (5, 5, 2)]]})
    with pytest.raises(GeometryError, match="does not lie in a slice of the series"):
        read_rtstruct(ws, "demo", mr, off)
    other = _rtstruct(img, tmp_path / "for.dcm", {"lesion": [_box(1.5, 6.5, 2.5, 8.5, 2)]}, frame_uid="1.2.3.4")
    with pytest.raises(InputError, match="another frame of reference"):
        read_rtstruct(ws, "demo", mr, other)
    clash = _rtstruct(img, tmp_path / "clash.dcm", {"lesion": [_box(1.5, 6.5, 2.5, 8.5, 2)],
                                                    "<b>liver</b>": [_box(4.5, 9.5, 2.5, 8.5, 2)]})
    with pytest.raises(InputError, match="overlaps another imported ROI"):
        read_rtstruct(ws, "demo", mr, clash)


def test_nifti_import_checks_the_grid(ws, mr, tmp_path):  # noqa: F811
    img = ws.load(mr)
    mask = _mask(ws, mr)
    sobre.save(sobre.Image(mask, img.affine), tmp_path / "m.nii.gz")
    assert np.array_equal(np.asarray(read_nifti(ws, "demo", mr, tmp_path / "m.nii.gz").array), mask)
    shifted = np.array(img.affine)
    shifted[:3, 3] += 5.0
    sobre.save(sobre.Image(mask, shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(GeometryError, match="mask is not on the series' grid"):
        read_nifti(ws, "demo", mr, tmp_path / "shifted.nii.gz")
    sobre.save(sobre.Image(mask[:-1], img.affine), tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match="mask shape does not match the series"):
        read_nifti(ws, "demo", mr, tmp_path / "small.nii.gz")
    sobre.save(sobre.Image(mask.astype(np.float32) * 0.5, img.affine), tmp_path / "frac.nii.gz")
    with pytest.raises(InputError, match="whole numbers"):
        read_nifti(ws, "demo", mr, tmp_path / "frac.nii.gz")
    v = ws.annotations.save("demo", mr, "lesions", "mask", mask, author="annotator")
    out = export_nifti(ws, v, tmp_path / "out.nii.gz")
    assert np.array_equal(np.asarray(sobre.load(out).array), mask) and np.allclose(sobre.load(out).affine, img.affine,
                                                                                  atol=1e-4)


def test_csv_export(ws, mr, tmp_path):  # noqa: F811
    lab = ws.annotations.save("demo", mr, "labels", "labels", {"pneumonia": 1, "note": "=cmd|' /C calc'!A0"},
                              author="annotator")
    pts = ws.annotations.save("demo", mr, "landmarks", "points", [{"name": "apex", "position": [1, 2, 3]}],
                              author="annotator")
    rows = list(csv.DictReader(io.StringIO(export_csv(ws, [lab, pts], tmp_path / "x.csv").read_text())))
    assert [(r["item"], r["value"]) for r in rows[:2]] == [("note", "'=cmd|' /C calc'!A0"), ("pneumonia", "1")]
    assert (rows[2]["item"], rows[2]["x"], rows[2]["z"]) == ("apex", "1.0", "3.0")


def test_server_export_and_import_routes(ws, mr, tmp_path):  # noqa: F811
    import highdicom as hd

    from sobre.server import ServerSettings, create_app
    from tests.server.conftest import Client

    app = create_app(ws, ServerSettings())
    a = Client(app, "annotator")
    mask = _mask(ws, mr)
    v = a.post(f"/api/projects/demo/series/{mr}/annotations/lesions", content=mask.tobytes(order="F"),
               headers={"Content-Type": "application/octet-stream"}).json()
    r = a.get(f"/api/projects/demo/annotations/{v['id']}/export", params={"format": "seg"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert 'filename="lesions-v1.dcm"' in r.headers["content-disposition"]
    (tmp_path / "seg.dcm").write_bytes(r.content)
    assert hd.seg.segread(tmp_path / "seg.dcm").SegmentationType == "BINARY"
    r = a.post(f"/api/projects/demo/series/{mr}/annotations/lesions/import", params={"format": "seg", "parent": v["id"]},
               content=r.content, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == v["sha256"]  # the same mask, so the same content hash
    nii = a.get(f"/api/projects/demo/annotations/{v['id']}/export", params={"format": "nifti"})
    assert nii.content[:2] == b"\x1f\x8b"
    bad = a.get(f"/api/projects/demo/annotations/{v['id']}/export", params={"format": "sr"})
    assert bad.status_code == 400 and bad.json()["what"] == "an SR of a mask refers to its SEG"
    actions = [e for e in ws.layout.audit_log.read_text().splitlines() if "annotation.export" in e
               or "annotation.import" in e]
    assert len(actions) == 3


@pytest.mark.peers
def test_orthanc_accepts_seg_and_sr(ws, mr, orthanc_empty):  # noqa: F811
    mask = _mask(ws, mr)
    v = ws.annotations.save("demo", mr, "lesions", "mask", mask, author="annotator")
    sent = push_version(ws, v, orthanc_empty.dicomweb, "sr")  # the SEG and its SR of volumes
    assert [o["kind"] for o in sent["objects"]] == ["SEG", "SR"] and sent["report"]["stored"] == 2
    lab = ws.annotations.save("demo", mr, "labels", "labels", {"pneumonia": 0}, author="annotator")
    assert push_version(ws, lab, orthanc_empty.dicomweb, "sr")["report"]["stored"] == 1
    found = {orthanc_empty.rest("GET", f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
             for i in orthanc_empty.rest("GET", "/instances")}
    assert {o["sop_instance_uid"] for o in sent["objects"]} <= found and len(found) == 3

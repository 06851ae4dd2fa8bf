"""De-identification behaviour on generated data: profile actions, options, private tags, UIDs and
references, pseudonyms, date shifts, pixel review and blanking, verification, bad input."""

from __future__ import annotations

import copy
import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sobre.errors import ConfigError, InputError
from sobre.privacy import (
    BlankRegion,
    Deidentifier,
    DeidProfile,
    ProjectKey,
    PseudonymStore,
    SafePrivateTag,
    VerificationError,
)

from .deid_helpers import make_phi_dataset, write_phi_file

PHI = ["Dupont-Leclerc", "Jeanne", "IPP0042137", "19580211", "Saint Quentin General Hospital",
       "12 Rue des Lilas", "Moreau", "Claire", "Bernard^Luc", "Petit^Anne", "ACC99812", "Lambert^Hugo",
       "4 Avenue Victor Hugo", "+33 476001122", "NIR2580238", "RP55123", "ST7781", "CHU-GRENOBLE", "HOSPITAL_PACS"]


def _deid(key, ds, profile=None):
    d = Deidentifier(key, profile or DeidProfile())
    data, result = d.deidentify_to_bytes(ds)
    return pydicom.dcmread(io.BytesIO(data)), data, result


def test_identifying_values_are_gone(key, phi_dataset):
    out, data, result = _deid(key, phi_dataset)
    scanned = data.replace(out.PixelData, b"")
    for value in PHI:
        assert value.lower().encode() not in scanned.lower(), value
    assert out.PatientName == out.PatientID == result.subject
    assert re.fullmatch(r"SUBJ-[A-Z2-7]{10}", result.subject)
    assert out.PatientBirthDate == ""
    assert out.AccessionNumber == ""
    assert "PatientAddress" not in out and "OtherPatientIDs" not in out
    assert "InstitutionAddress" not in out
    assert out.PatientIdentityRemoved == "YES"
    codes = {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113104", "113105", "113107", "113108", "113111"}
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    # overlays (may hold text) removed entirely
    assert not any(0x6000 <= e.tag.group <= 0x601E for e in out)


def test_research_options_keep_characteristics_dates_and_clean_descriptions(key, phi_dataset):
    out, _, result = _deid(key, phi_dataset)
    assert (out.PatientSex, out.PatientAge, out.PatientWeight, out.PatientSize) == ("F", "063Y", 61.5, 1.64)
    shift = result.date_shift_days
    want = (dt.date(2021, 3, 14) + dt.timedelta(days=shift)).strftime("%Y%m%d")
    assert out.StudyDate == out.SeriesDate == want
    assert out.AcquisitionDateTime == want + "101732.5"
    assert out.StudyTime == "101500"  # times of day kept
    # descriptions kept, identifying parts removed
    assert out.StudyDescription == "CT thorax for follow-up"
    assert out.SeriesDescription == "Axial 1mm"
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Chest"


def test_basic_profile_without_options(key, phi_dataset):
    out, _, result = _deid(key, phi_dataset, DeidProfile.basic())
    assert result.date_shift_days is None
    assert out.PatientSex == ""  # Z
    assert "PatientAge" not in out and "PatientWeight" not in out  # X
    assert out.StudyDate == ""  # Z
    assert "StudyDescription" not in out and "SeriesDescription" not in out  # X
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert not any(e.tag.is_private for e in out)
    assert {c.CodeValue for c in out.DeidentificationMethodCodeSequence} == {"113100"}


def test_institution_becomes_a_keyed_site_pseudonym(key, phi_dataset):
    """Sites stay apart after de-identification (site effects stay measurable); the name itself is gone."""
    out, data, _ = _deid(key, phi_dataset)
    assert re.fullmatch(r"SITE-[A-Z2-7]{6}", out.InstitutionName)
    assert b"saint quentin" not in data.lower()
    same = copy.deepcopy(phi_dataset)
    same.InstitutionName = "  SAINT quentin   General hospital "  # case and spacing do not matter
    other = copy.deepcopy(phi_dataset)
    other.InstitutionName = "Clinique du Parc"
    assert _deid(key, same)[0].InstitutionName == out.InstitutionName
    assert _deid(key, other)[0].InstitutionName not in (out.InstitutionName, "")
    assert _deid(ProjectKey(bytes(32)), phi_dataset)[0].InstitutionName != out.InstitutionName  # keyed
    # the Basic Profile without options, or site_pseudonyms = false: the Basic Profile's own action
    basic = _deid(key, phi_dataset, DeidProfile.basic())[0]
    assert str(basic.get("InstitutionName", "")) in ("", "ANONYMIZED")
    off = _deid(key, phi_dataset, DeidProfile(site_pseudonyms=False))[0]
    assert str(off.get("InstitutionName", "")) in ("", "ANONYMIZED")
    assert DeidProfile.from_mapping({"site_pseudonyms": False}).site_pseudonyms is False
    with pytest.raises(ConfigError, match="wrong value for 'privacy.site_pseudonyms'.*expected a valid boolean"):
        DeidProfile.from_mapping({"site_pseudonyms": "yes"})


def test_age_computed_from_birth_date_when_missing(key):
    ds = make_phi_dataset()
    del ds.PatientAge
    out, _, _ = _deid(key, ds)
    assert out.PatientAge == "063Y"  # 1958-02-11 -> 2021-03-14
    assert out.PatientBirthDate == ""


def test_private_tags_only_safe_ones_survive(key, phi_dataset):
    out, _, _ = _deid(key, phi_dataset)
    block = out.private_block(0x0019, "SIEMENS MR HEADER")
    assert block[0x0C].value == "1000"  # b-value: on the safe list
    with pytest.raises(KeyError):
        block[0x20]  # a name in the same block: removed
    with pytest.raises(KeyError):
        out.private_block(0x0029, "ACME PRIVATE")  # block and its creator removed
    # a project can extend the safe list
    profile = DeidProfile(safe_private=(SafePrivateTag("ACME PRIVATE", 0x0029, 0x10),))
    with pytest.raises(VerificationError):  # ... but the verification still refuses a leaked ID
        _deid(key, make_phi_dataset(), profile)


def test_uids_consistent_across_runs_and_references_remapped(key, tmp_path):
    a = make_phi_dataset()
    out1, bytes1, _ = _deid(key, a)
    out2, bytes2, _ = _deid(ProjectKey(key._secret), make_phi_dataset())  # another "machine", same key
    assert bytes1 == bytes2  # fully deterministic
    assert out1.SOPInstanceUID == key.uid("1.2.826.0.1.3680043.9.7777.1.1")
    assert out1.ReferencedImageSequence[0].ReferencedSOPInstanceUID == key.uid("1.2.826.0.1.3680043.9.7777.1.999")
    assert out1.FrameOfReferenceUID == key.uid("1.2.826.0.1.3680043.9.7777.4")
    assert out1.SOPClassUID == a.SOPClassUID  # class UIDs are not identifying
    assert len(out1.SOPInstanceUID) <= 64 and out1.SOPInstanceUID.startswith("2.25.")
    other, _, _ = _deid(ProjectKey(b"\x01" * 32), make_phi_dataset())
    assert other.SOPInstanceUID != out1.SOPInstanceUID and other.PatientID != out1.PatientID


def test_date_shift_one_per_subject(key):
    first, _, r1 = _deid(key, make_phi_dataset(sop="1.2.3.4.5.6.7.1", study_date="20210314"))
    second, _, r2 = _deid(key, make_phi_dataset(sop="1.2.3.4.5.6.7.2", study="1.2.3.4.5.6.8",
                                                study_date="20210920"))
    assert r1.date_shift_days == r2.date_shift_days
    assert r1.subject == r2.subject
    d1 = dt.datetime.strptime(first.StudyDate, "%Y%m%d")
    d2 = dt.datetime.strptime(second.StudyDate, "%Y%m%d")
    assert (d2 - d1).days == (dt.date(2021, 9, 20) - dt.date(2021, 3, 14)).days  # interval survives
    other, _, r3 = _deid(key, make_phi_dataset(pid="IPP0000001", name="Martin^Paul", sop="1.2.3.4.5.6.7.3"))
    assert r3.subject != r1.subject and r3.date_shift_days != r1.date_shift_days


def test_seg_and_sr_still_point_at_their_remapped_images(key, tmp_path):
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    images = []
    for i in range(3):
        ds = make_phi_dataset(sop=f"1.2.826.0.1.3680043.9.7777.1.{10 + i}")
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.InstanceNumber = i + 1
        ds.PatientOrientation = ""
        for kw in ("ReferencedImageSequence",):
            del ds[kw]
        images.append(ds)
    mask = np.zeros((3, 16, 16), dtype=bool)
    mask[1, 4:8, 4:8] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=2,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Sobre", manufacturer_model_name="test",
        software_versions="0", device_serial_number="SN-1")
    # a small SR: one IMAGE content item plus the evidence sequence
    sr = make_phi_dataset(sop="1.2.826.0.1.3680043.9.7777.9.1", series="1.2.826.0.1.3680043.9.7777.9")
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    sr.Modality = "SR"
    for kw in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "SamplesPerPixel", "PhotometricInterpretation"):
        del sr[kw]
    ref = Dataset()
    ref.ReferencedSOPClassUID = images[1].SOPClassUID
    ref.ReferencedSOPInstanceUID = images[1].SOPInstanceUID
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "IMAGE"
    item.ReferencedSOPSequence = Sequence([ref])
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.TextValue = "Lesion seen by Dr Moreau^Claire^^Dr. on 2021-03-14 in IPP0042137"
    sr.ValueType = "CONTAINER"
    sr.ContentSequence = Sequence([item, text])
    ev_series = Dataset()
    ev_series.SeriesInstanceUID = images[0].SeriesInstanceUID
    ev_series.ReferencedSOPSequence = Sequence([ref])
    ev = Dataset()
    ev.StudyInstanceUID = images[0].StudyInstanceUID
    ev.ReferencedSeriesSequence = Sequence([ev_series])
    sr.CurrentRequestedProcedureEvidenceSequence = Sequence([ev])

    d = Deidentifier(key, DeidProfile())
    outs = [pydicom.dcmread(io.BytesIO(d.deidentify_to_bytes(x)[0])) for x in images]
    seg_out = pydicom.dcmread(io.BytesIO(d.deidentify_to_bytes(seg)[0]))
    sr_out = pydicom.dcmread(io.BytesIO(d.deidentify_to_bytes(sr)[0]))
    new_uids = {o.SOPInstanceUID for o in outs}
    refs = {r.ReferencedSOPInstanceUID for r in seg_out.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == new_uids
    assert seg_out.ReferencedSeriesSequence[0].SeriesInstanceUID == outs[0].SeriesInstanceUID
    assert seg_out.FrameOfReferenceUID == outs[0].FrameOfReferenceUID
    assert seg_out.StudyInstanceUID == outs[0].StudyInstanceUID
    src_ref = seg_out.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert src_ref.ReferencedSOPInstanceUID in new_uids
    assert sr_out.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == outs[1].SOPInstanceUID
    ev_out = sr_out.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev_out.StudyInstanceUID == outs[0].StudyInstanceUID
    assert ev_out.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        outs[1].SOPInstanceUID
    # the SR's free text is cleaned, not dropped
    assert sr_out.ContentSequence[1].TextValue == "Lesion seen by Dr on in"


def test_pseudonym_map_records_subjects(key, tmp_path):
    with PseudonymStore(tmp_path / "map.sqlite", key) as store:
        Deidentifier(key, DeidProfile(), store).deidentify_to_bytes(make_phi_dataset())
        rows = store.rows()
    assert (tmp_path / "map.sqlite").stat().st_mode & 0o777 == 0o600
    assert len(rows) == 1 and rows[0]["patient_id"] == "IPP0042137"
    assert rows[0]["pseudonym"] == key.pseudonym("id:IPP0042137")
    # the identities are sealed: no byte of the map (nor its WAL) holds them
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("map.sqlite*"))
    assert b"IPP0042137" not in raw and b"DOE" not in raw.upper()
    # another key cannot open them
    from sobre.privacy import ProjectKey

    with PseudonymStore(tmp_path / "map.sqlite", ProjectKey(bytes(range(32)))) as other:
        with pytest.raises(ConfigError, match="cannot be opened with this project key"):
            other.rows()


def test_a_map_written_before_sealing_is_sealed_on_open(key, tmp_path):
    import sqlite3

    path = tmp_path / "old.pseudonyms.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE subjects (pseudonym TEXT PRIMARY KEY, identity TEXT UNIQUE NOT NULL, patient_id TEXT,"
               " patient_name TEXT, issuer TEXT, date_shift_days INTEGER, first_seen TEXT)")
    db.execute("INSERT INTO subjects VALUES ('SUBJ-A', 'id:IPP777', 'IPP777', 'Doe^Jane', '', -400, '2026-01-01')")
    db.commit()
    db.close()
    with PseudonymStore(path, key) as store:
        assert store.rows()[0]["patient_name"] == "Doe^Jane"
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("old.pseudonyms.sqlite*"))
    assert b"IPP777" not in raw and b"Doe^Jane" not in raw


def test_burned_in_candidates_are_flagged(key):
    ct, _, r = _deid(key, make_phi_dataset())
    assert r.pixel_review == []
    us = make_phi_dataset()
    us.Modality = "US"
    us.BurnedInAnnotation = "YES"
    _, _, r = _deid(key, us)
    assert any("BurnedInAnnotation is YES" in x for x in r.pixel_review)
    sc = make_phi_dataset()
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    del sc.BurnedInAnnotation
    _, _, r = _deid(key, sc)
    assert any("Secondary Capture" in x for x in r.pixel_review)


def test_blank_regions_on_real_ultrasound(key, sample, tmp_path):
    path = sample("deid-data") / "deid-data-0.0.20/deid_data/data/ultrasounds/GREYSCALE_IMAGE.dcm"
    src = pydicom.dcmread(path)
    before = src.pixel_array.copy()
    region = BlankRegion(0, 0, 200, 40, modality="US")
    result = Deidentifier(key, DeidProfile(blank_regions=(region,))).deidentify_file(path, tmp_path / "o.dcm")
    out = pydicom.dcmread(result.output)
    after = out.pixel_array
    assert after.shape == before.shape and after.ndim == 2  # one greyscale frame
    assert result.regions_blanked == 1 and result.pixel_review  # still flagged for a human look
    assert (after[0:40, 0:200] == 0).all() and (before[0:40, 0:200] != 0).any()
    assert np.array_equal(after[40:, :], before[40:, :])
    assert np.array_equal(after[:40, 200:], before[:40, 200:])
    assert "113101" in {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    # a region for another modality leaves the pixels alone
    other = Deidentifier(key, DeidProfile(blank_regions=(BlankRegion(0, 0, 10, 10, modality="CT"),)))
    r2 = other.deidentify_file(path, tmp_path / "p.dcm")
    assert r2.regions_blanked == 0
    assert pydicom.dcmread(r2.output).PixelData == src.PixelData


def test_verification_failure_writes_nothing(key, tmp_path):
    src = write_phi_file(tmp_path / "in" / "a.dcm")
    profile = DeidProfile(safe_private=(SafePrivateTag("ACME PRIVATE", 0x0029, 0x10),))
    with pytest.raises(VerificationError, match=r"identifying value of the source remains") as info:
        Deidentifier(key, profile).deidentify_file(src, tmp_path / "out")
    assert "IPP0042137" not in str(info.value)  # the message never repeats the value
    assert "(0010,0020) PatientID" in str(info.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_output_names_and_key_never_leak(key, tmp_path):
    write_phi_file(tmp_path / "in" / "Dupont-Leclerc_IPP0042137" / "a.dcm")
    report = Deidentifier(key, DeidProfile()).deidentify_tree(tmp_path / "in", tmp_path / "out")
    (out,) = report.outputs
    rel = str(out)[len(str(tmp_path / "out")):]
    assert "Dupont" not in rel and "IPP0042137" not in rel
    data = Path(out).read_bytes()
    assert key._secret not in data and key._secret.hex().encode() not in data
    assert "IPP0042137" not in str(report.to_dict())  # no source path unless asked


# -- bad input -------------------------------------------------------------------------------------
def _valid_bytes() -> bytes:
    buf = io.BytesIO()
    make_phi_dataset().save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_non_dicom_bytes_are_refused(key, tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_bytes(b"Patient Dupont, see attached scan\n" * 10)
    with pytest.raises(InputError, match=r"not a DICOM file") as info:
        Deidentifier(key).deidentify_file(p, tmp_path / "out")
    assert str(p) in str(info.value)


@pytest.mark.parametrize("cut", [200, 600])
def test_truncated_header_is_refused(key, tmp_path, cut):
    p = tmp_path / "cut.dcm"
    p.write_bytes(_valid_bytes()[:cut])
    with pytest.raises(InputError, match=r"truncated"):
        Deidentifier(key).deidentify_file(p, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_pixel_data_is_refused(key, tmp_path):
    data = _valid_bytes()
    p = tmp_path / "short.dcm"
    p.write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"\(7FE0,0010\) PixelData: truncated"):
        Deidentifier(key).deidentify_file(p, tmp_path / "out")


def test_tree_skips_bad_files_and_duplicates_with_reasons(key, tmp_path):
    write_phi_file(tmp_path / "in" / "a.dcm")
    write_phi_file(tmp_path / "in" / "copy.dcm")
    (tmp_path / "in" / "readme.txt").write_text("a sidecar: left out by file discovery, as everywhere")
    (tmp_path / "in" / "scan.bin").write_bytes(b"not dicom at all" * 20)
    got = []
    report = Deidentifier(key).deidentify_tree(tmp_path / "in", tmp_path / "out", on_files=got.extend)
    assert len(report.outputs) == 1 and got == report.outputs
    reasons = dict(report.skipped)
    assert "duplicate instance" in reasons[str(tmp_path / "in" / "copy.dcm")]
    assert "not a DICOM file" in reasons[str(tmp_path / "in" / "scan.bin")]
    assert str(tmp_path / "in" / "readme.txt") not in reasons


def test_profile_config_errors():
    with pytest.raises(ConfigError, match=r"unknown key 'privacy.retain_age'"):
        DeidProfile.from_mapping({"retain_age": True})
    with pytest.raises(ConfigError, match=r"clean_descriptions.*expected a valid boolean"):
        DeidProfile.from_mapping({"clean_descriptions": "yes"})
    with pytest.raises(ConfigError, match=r"not a private element"):
        DeidProfile.from_mapping({"safe_private": [["X", "0018", "10"]]})
    with pytest.raises(ConfigError, match=r"cannot read blank region"):
        BlankRegion.parse("1,2,3")
    p = DeidProfile.from_mapping({"retain_modified_dates": False, "date_shift_days": [-30, -10],
                                  "blank": [{"x": 0, "y": 0, "width": 10, "height": 5, "modality": "US"}],
                                  "safe_private": [["ACME", "0029", "10"]]})
    assert not p.retain_modified_dates and p.date_shift_days == (-30, -10)
    assert p.blank_regions == (BlankRegion(0, 0, 10, 5, modality="US"),)
    assert SafePrivateTag("ACME", 0x29, 0x10) in p.safe_private and len(p.safe_private) > 1
    assert DeidProfile.from_mapping(p.to_dict()) == p  # to_dict round-trips

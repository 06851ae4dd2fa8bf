"""Helpers shared by the privacy tests (a dataset full of fake PHI, sample folders)."""

from __future__ import annotations

from pathlib import Path

KEY_HEX = "5b" * 8 + "a1" * 8 + "07" * 16  # fixed test key (never a real one)


def sample_dir(name: str, sub: str) -> Path | None:
    from sobre import samples

    if not samples.is_available(name):
        return None
    return samples.path(name) / sub


def make_phi_dataset(**over):
    """A small CT-like instance full of fake PHI, nested sequences and private tags (in memory)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = over.get("sop", "1.2.826.0.1.3680043.9.7777.1.1")
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = over.get("sop", "1.2.826.0.1.3680043.9.7777.1.1")
    ds.StudyInstanceUID = over.get("study", "1.2.826.0.1.3680043.9.7777.2")
    ds.SeriesInstanceUID = over.get("series", "1.2.826.0.1.3680043.9.7777.3")
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.9.7777.4"
    ds.StudyDate = over.get("study_date", "20210314")
    ds.SeriesDate = over.get("study_date", "20210314")
    ds.StudyTime = "101500"
    ds.AcquisitionDateTime = over.get("study_date", "20210314") + "101732.5"
    ds.AccessionNumber = "ACC99812"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "Saint Quentin General Hospital"
    ds.InstitutionAddress = "12 Rue des Lilas, Grenoble"
    ds.ReferringPhysicianName = "Moreau^Claire^^Dr."
    ds.PerformingPhysicianName = "Bernard^Luc"
    ds.OperatorsName = "Petit^Anne"
    ds.StudyDescription = "CT thorax for Dupont-Leclerc follow-up"
    ds.SeriesDescription = "Axial 1mm 2021-03-14 ACC99812"
    ds.ProtocolName = "CHEST_LOWDOSE"
    ds.StudyID = "ST7781"
    ds.PatientName = over.get("name", "Dupont-Leclerc^Jeanne^Marie")
    ds.PatientID = over.get("pid", "IPP0042137")
    ds.IssuerOfPatientID = "CHU-GRENOBLE"
    ds.PatientBirthDate = "19580211"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.PatientWeight = "61.5"
    ds.PatientSize = "1.64"
    ds.PatientAddress = "4 Avenue Victor Hugo, Lyon"
    ds.PatientTelephoneNumbers = "+33 476001122"
    ds.OtherPatientIDs = "NIR2580238"
    ds.ImageComments = "Patient Dupont-Leclerc^Jeanne^Marie, IPP0042137"
    ds.BurnedInAnnotation = "NO"
    # nested: referenced image (UIDs to remap) and a request with names/IDs
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.1.999"
    ds.ReferencedImageSequence = Sequence([ref])
    req = Dataset()
    req.RequestingPhysician = "Lambert^Hugo"
    req.RequestedProcedureID = "RP55123"
    req.AccessionNumber = "ACC99812"
    ds.RequestAttributesSequence = Sequence([req])
    code = Dataset()
    code.CodeValue = "T-D3000"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([code])
    # private: one safe element (Siemens b-value), one unsafe copy of the name
    blk = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    blk.add_new(0x0C, "IS", "1000")
    blk.add_new(0x20, "LO", "Dupont-Leclerc Jeanne")
    blk2 = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    blk2.add_new(0x10, "LO", "IPP0042137")
    # overlay with text
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 4)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, size=(16, 16), dtype=np.uint16)
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def write_phi_file(path: Path, **over) -> Path:
    ds = make_phi_dataset(**over)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path

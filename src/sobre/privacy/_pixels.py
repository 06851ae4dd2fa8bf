"""Pixel data: flag images that may carry burned-in text, and blank configured rectangles."""

from __future__ import annotations

from sobre.errors import InputError

__all__ = ["pixel_review_reasons", "blank_regions"]

# Secondary Capture family, screenshots and documents: text is often part of the image.
_SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_DOCUMENT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "encapsulated CDA",
}
_RISKY_MODALITIES = {
    "US": "ultrasound (vendors burn patient data into the image)",
    "IVUS": "intravascular ultrasound",
    "ES": "endoscopy (video frames may show patient data)",
    "XC": "external-camera photograph",
    "OT": "modality OT (other), often a screenshot",
    "DOC": "scanned document",
    "GM": "general microscopy photograph",
}
_SCREEN_CONVERSIONS = {"WSD": "workstation capture", "SI": "scanned image", "SD": "scanned document",
                       "DRW": "drawing"}


def pixel_review_reasons(ds) -> list[str]:
    """Why the pixels of ``ds`` may show identifying text (empty list: no known reason).

    Flags: Burned In Annotation (0028,0301) = YES; Recognizable Visual Features (0028,0302) = YES;
    Secondary Capture SOP classes (screenshots); encapsulated documents; Conversion Type
    (0008,0064) of a screen or scan; and modalities whose devices commonly burn in patient data
    (US, ES, XC, OT, ...) unless the file states Burned In Annotation = NO.
    """
    reasons: list[str] = []
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        reasons.append("(0028,0301) BurnedInAnnotation is YES")
    if str(ds.get("RecognizableVisualFeatures", "") or "").strip().upper() == "YES":
        reasons.append("(0028,0302) RecognizableVisualFeatures is YES (face or other features)")
    sop = str(ds.get("SOPClassUID", "") or "")
    if sop.startswith(_SC_PREFIX):
        reasons.append("Secondary Capture image (screenshots and scans carry text)")
    if sop in _DOCUMENT_CLASSES:
        reasons.append(f"{_DOCUMENT_CLASSES[sop]} (document content is not de-identified)")
    conv = str(ds.get("ConversionType", "") or "").strip().upper()
    if conv in _SCREEN_CONVERSIONS:
        reasons.append(f"(0008,0064) ConversionType {conv}: {_SCREEN_CONVERSIONS[conv]}")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _RISKY_MODALITIES and burned != "NO":
        reasons.append(f"(0008,0060) Modality {modality}: {_RISKY_MODALITIES[modality]}")
    return reasons


def blank_regions(ds, regions, *, path=None) -> int:
    """Set the pixels inside each matching :class:`~sobre.privacy.BlankRegion` to 0, in every frame.

    Compressed pixel data is decoded first and written back uncompressed (Explicit VR Little
    Endian; colour converted to RGB). Returns the number of rectangles applied (0: untouched).

    Raises
    ------
    InputError
        The pixel data cannot be decoded (unsupported transfer syntax, missing decoder) or is not
        an integer image.
    """
    todo = [r for r in regions if r.matches(ds)]
    if not todo or "PixelData" not in ds:
        return 0
    if int(ds.get("BitsAllocated", 0) or 0) == 1:
        raise InputError("cannot blank rectangles in 1-bit (binary) pixel data", path=path,
                         tag="(0028,0100) BitsAllocated", expected="8, 16 or 32", found="1",
                         fix="remove the blank region for this kind of object")
    ts = ds.file_meta.TransferSyntaxUID
    try:
        from pydicom.pixels import pixel_array

        if ts.is_compressed:
            ds.decompress(as_rgb=True, generate_instance_uid=False)
        arr = pixel_array(ds, raw=True).copy()  # raw: no colour conversion of native YBR data
    except Exception as exc:
        raise InputError(
            "cannot decode the pixel data to blank it", path=path, tag="(7FE0,0010) PixelData",
            expected="a transfer syntax pydicom can decode", found=f"{ts.name}: {exc}",
            fix="install the matching pylibjpeg/pyjpegls plugin, or remove the blank region",
        ) from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    rows_axis = -3 if samples > 1 else -2
    nrows, ncols = arr.shape[rows_axis], arr.shape[rows_axis + 1]
    for r in todo:
        y0, y1 = min(r.y, nrows), min(r.y + r.height, nrows)
        x0, x1 = min(r.x, ncols), min(r.x + r.width, ncols)
        if samples > 1:
            arr[..., y0:y1, x0:x1, :] = 0
        else:
            arr[..., y0:y1, x0:x1] = 0
    if samples > 1 and int(ds.get("PlanarConfiguration", 0) or 0) == 1:
        import numpy as np

        arr = np.moveaxis(arr, -1, -3)  # back to colour-by-plane layout
    from pydicom.uid import ExplicitVRLittleEndian

    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return len(todo)

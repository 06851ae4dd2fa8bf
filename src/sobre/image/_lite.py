"""Simple DICOM headers without pydicom: what ``sobre export`` of an uncompressed series needs, and nothing more.

Importing pydicom costs more than reading 300 headers (its import pulls in its pixel decoders,
``requests`` and Pillow's colour management). :class:`LiteDataset` holds the raw elements of a
little-endian Part 10 file (:func:`sobre.image._dicom_fast.read_raw_elements`, the walk that also
feeds pydicom) and answers the few questions Sobre's header checks and frame reading ask of a
pydicom dataset: membership, the raw element, and ``get`` for the plain values catalogued as
metadata. Whatever it cannot answer exactly as pydicom would — a keyword outside :data:`KEYWORDS`,
a deferred or non-ASCII value, a value pydicom would warn about, a sequence — raises
:class:`NeedPydicom`, a ``BaseException`` so that no ``except Exception`` on the way swallows it:
the caller then reads the file the usual way, with pydicom, and the answer (or the error) is the
usual one. ``tests/image/test_lite.py`` compares both on the sample files.
"""

from __future__ import annotations

import os
import re

from sobre.image._dicom_fast import read_raw_elements

__all__ = ["KEYWORDS", "LiteDataset", "NeedPydicom", "read_lite"]

# keyword -> (tag, dictionary VR) of every element the lite path looks at (pydicom's data dictionary;
# tests/image/test_lite.py checks each entry against it)
KEYWORDS: dict[str, tuple[int, str]] = {
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "BitsAllocated": (0x00280100, "US"),
    "SamplesPerPixel": (0x00280002, "US"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "InstanceNumber": (0x00200013, "IS"),
    "EchoNumbers": (0x00180086, "IS"),
    "TemporalPositionIdentifier": (0x00200100, "IS"),
    "AcquisitionNumber": (0x00200012, "IS"),
    "ImageType": (0x00080008, "CS"),
    "TriggerTime": (0x00181060, "DS"),
    "PerFrameFunctionalGroupsSequence": (0x52009230, "SQ"),
    "SharedFunctionalGroupsSequence": (0x52009229, "SQ"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "PixelSpacing": (0x00280030, "DS"),
    "ImagerPixelSpacing": (0x00181164, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
    "RescaleIntercept": (0x00281052, "DS"),
    "Modality": (0x00080060, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "GridFrameOffsetVector": (0x3004000C, "DS"),
    "TransferSyntaxUID": (0x00020010, "UI"),
    "PixelData": (0x7FE00010, "OB or OW"),
    "FloatPixelData": (0x7FE00008, "OF"),
    "DoubleFloatPixelData": (0x7FE00009, "OD"),
    "PlanarConfiguration": (0x00280006, "US"),
    "SliceThickness": (0x00180050, "DS"),
    "SpecificCharacterSet": (0x00080005, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "FrameOfReferenceUID": (0x00200052, "UI"),
    "SeriesNumber": (0x00200011, "IS"),
    "SeriesDescription": (0x0008103E, "LO"),
    "ProtocolName": (0x00181030, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "ManufacturerModelName": (0x00081090, "LO"),
    "MagneticFieldStrength": (0x00180087, "DS"),
    "InstitutionName": (0x00080080, "LO"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "AcquisitionDate": (0x00080022, "DA"),
    "PatientID": (0x00100020, "LO"),
    "PatientSex": (0x00100040, "CS"),
    "PatientAge": (0x00101010, "AS"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSize": (0x00101020, "DS"),
    "PatientWeight": (0x00101030, "DS"),
    "BurnedInAnnotation": (0x00280301, "CS"),
    "SyntheticData": (0x0008001C, "CS"),
    "DoseGridScaling": (0x3004000E, "DS"),
    "RedPaletteColorLookupTableDescriptor": (0x00281101, "US or SS"),
}
_VR_OF_TAG = {tag: vr for tag, vr in KEYWORDS.values()}

# Values ``get`` converts itself: each item of a VR's value, written as the standard says, so that pydicom
# converts it without a warning and ``str`` of pydicom's value gives the item back unchanged (IS and DS
# keep the text they were read from). Anything else is pydicom's to convert.
_ITEM = {
    "CS": re.compile(r"[A-Z0-9_]+( [A-Z0-9_]+)*"),  # no leading or trailing space (pydicom strips them)
    "UI": re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"),
    "DA": re.compile(r"[0-9]{8}"),
    "AS": re.compile(r"[0-9]{3}[DWMY]"),
    "IS": re.compile(r"[+-]?[0-9]{1,9}"),  # within IS's range (-2**31 .. 2**31-1) by its length
    "DS": re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?"),
    "LO": re.compile(r"[!-\[\]-~]([ -\[\]-~]*[!-\[\]-~])?"),  # printable ASCII but backslash, no edge spaces
}
_ITEM["SH"] = _ITEM["LO"]
_MAX_LEN = {"CS": 16, "UI": 64, "DA": 8, "AS": 4, "IS": 12, "DS": 16, "LO": 64, "SH": 16}
# character sets under which printable ASCII reads as itself and pydicom does not warn
_PLAIN_CHARSETS = frozenset(("", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6"))


class NeedPydicom(BaseException):  # noqa: N818 - a signal, not an error: the file is read with pydicom instead
    """The lite reader cannot answer this as pydicom would: read the file with pydicom."""


class LiteDataset:
    """The raw elements of one file (or its file meta), with the part of pydicom's ``Dataset`` API that
    Sobre's header checks use on a simple file. Not a general dataset: see the module's docstring."""

    __slots__ = ("_dict", "file_meta", "filename", "_plain")

    def __init__(self, elements: dict, filename: str | None = None, file_meta: LiteDataset | None = None):
        self._dict = elements
        self.filename = filename
        self.file_meta = file_meta
        self._plain: bool | None = None

    def __len__(self) -> int:
        return len(self._dict)

    def __contains__(self, key) -> bool:
        return _tag(key) in self._dict

    def keys(self):
        return self._dict.keys()

    def get_item(self, key, *, keep_deferred: bool = False):
        return self._dict.get(_tag(key))

    def get(self, key, default=None):
        """pydicom's converted value for the plain VRs of :data:`_ITEM`, else :class:`NeedPydicom`."""
        tag = _tag(key)
        elem = self._dict.get(tag)
        if elem is None:
            return default
        vr = elem.VR or _VR_OF_TAG.get(tag)
        pattern = _ITEM.get(vr)
        if pattern is None or elem.value is None or vr != _VR_OF_TAG.get(tag):
            raise NeedPydicom(key)
        if not self._plain_charset():  # (read_lite declines such files already)
            raise NeedPydicom("SpecificCharacterSet")
        raw = elem.value
        if not raw:
            return "" if vr not in ("IS", "DS") else None
        try:
            text = raw.decode("ascii").rstrip(" \x00")  # the padding pydicom strips
        except UnicodeDecodeError:
            raise NeedPydicom(key) from None
        items = text.split("\\")
        for item in items:
            if len(item) > _MAX_LEN[vr] or not pattern.fullmatch(item):
                raise NeedPydicom(key)  # empty items and padding-only values included
        # one value: its text (for IS and DS, the text pydicom's IS / DSfloat print as); several: a list
        return items if len(items) > 1 else items[0]

    def _plain_charset(self) -> bool:
        if self._plain is None:
            elem = self._dict.get(0x00080005)
            value = b"" if elem is None else elem.value
            self._plain = value is not None and value.decode("latin-1").strip(" \x00") in _PLAIN_CHARSETS
        return self._plain


def _tag(key) -> int:
    if isinstance(key, int):
        return key
    known = KEYWORDS.get(key)
    if known is None:
        raise NeedPydicom(key)
    return known[0]


def read_lite(path: str | os.PathLike) -> LiteDataset | None:
    """A little-endian Part 10 file's header as a :class:`LiteDataset` (values over 1 KiB deferred, as
    ``read_header`` defers them); None where only pydicom reads it."""
    read = read_raw_elements(path, defer_size=1024)
    if read is None:
        return None
    meta, elements, implicit = read
    charset = elements.get(0x00080005)
    if charset is not None and (charset.value is None or charset.value.decode("latin-1").strip(" \x00")
                                not in _PLAIN_CHARSETS):
        return None  # pydicom reads (and warns about) other character sets
    if implicit:  # implicit VR: the dictionary's VR, where the lite path knows it
        elements = {t: e._replace(VR=_VR_OF_TAG.get(t)) if t in _VR_OF_TAG and e.VR is None else e
                    for t, e in elements.items()}
    return LiteDataset(elements, os.fspath(path), LiteDataset(meta))

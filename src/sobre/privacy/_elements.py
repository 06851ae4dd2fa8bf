"""Element-level pieces of de-identification: VR classes, value access, dummies, date shifts.

Plain functions over pydicom datasets and raw elements, shared by the engine and the verification
scan; nothing here decides what to do with an element (the engine applies the profile).
"""

from __future__ import annotations

import datetime as _dt
import re

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DS", "IS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMERIC_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "AT"})

# UID attributes naming classes, syntaxes and schemes: never remapped (they identify no one).
_CLASS_UID_TAGS = frozenset({
    0x00020002, 0x00020010, 0x00020012, 0x00080016, 0x0008001A, 0x0008001B, 0x00080062, 0x0008010C,
    0x00080118, 0x00081150, 0x00041510, 0x00041512, 0x00000002, 0x00000003, 0x04000010, 0x04000510,
})
_DUMMY = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED", "UT": "ANONYMIZED",
    "UR": "", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0,
}
# Patterns removed from descriptions and other kept free text (dates, long numbers, e-mail, phone).
_FREE_TEXT_PATTERNS = re.compile(
    r"\b(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])\b"
    r"|\b(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)?\d{2}\b"
    r"|\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"
    r"|\b\d{6,}\b"
    r"|[\w.+-]+@[\w-]+\.[\w.-]+"
    r"|\+?\d[\d ()-]{7,}\d"
)


def _values(value) -> list:
    if value is None:
        return []
    if type(value).__name__ == "MultiValue" or isinstance(value, list):
        return list(value)
    return [value]


_SCRUB_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})


def _encodings_of(ds) -> list[str] | None:
    """Python codecs of the dataset's character set if it is ASCII-compatible single-byte or UTF-8."""
    from pydicom.charset import convert_encodings

    try:
        charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
        encodings = convert_encodings(list(charset) if type(charset).__name__ == "MultiValue" else [charset])
    except Exception:
        return None
    single = ("iso8859", "iso_8859", "iso_ir_1", "latin", "utf_8", "utf8", "ascii", "tis_620", "cp", "koi8")
    if all(str(e).lower().replace("-", "_").startswith(single) for e in encodings):
        return list(encodings)
    return None


def _vr_of(raw, tag: int) -> str:
    """VR of a (possibly raw, possibly implicit-VR) element, as pydicom will decode it."""
    vr = raw.VR
    if vr and vr != "UN" and " or " not in vr:
        return vr
    from pydicom.datadict import dictionary_VR

    try:
        known = dictionary_VR(tag)
    except KeyError:
        return vr or "UN"
    return known.split(" or ")[0] if " or " in known else known


def _is_empty(raw) -> bool:
    length = getattr(raw, "length", None)
    if getattr(raw, "is_raw", False):
        return not length
    return raw.is_empty


def _empty(vr: str):
    return None if vr in _BINARY_VRS | _NUMERIC_VRS else ""


def _dummy(vr: str):
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    return _DUMMY.get(vr, "")


def _set(ds, tag, vr: str, value) -> None:
    """Replace an element's value without decoding the old one."""
    from pydicom.dataelem import DataElement

    ds[tag] = DataElement(tag, vr, value)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return str(value)


def _shift_da(value: str, days: int) -> str | None:
    s = str(value).strip()
    if not s:
        return ""
    try:
        d = _dt.datetime.strptime(s[:8], "%Y%m%d").date() if len(s) >= 8 else None
    except ValueError:
        try:  # ACR-NEMA style YYYY.MM.DD
            d = _dt.datetime.strptime(s[:10], "%Y.%m.%d").date()
        except ValueError:
            return None
    if d is None:
        return None
    try:
        return (d + _dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def _shift_dt(value: str, days: int) -> str | None:
    s = str(value).strip()
    if not s:
        return ""
    if len(s) < 8:
        return None
    head = _shift_da(s[:8], days)
    return None if head is None else head + s[8:]


def _age(birth: str, ref: str) -> str | None:
    try:
        b = _dt.datetime.strptime(str(birth).strip()[:8], "%Y%m%d").date()
        r = _dt.datetime.strptime(str(ref).strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
    days = (r - b).days
    if days < 0:
        return None
    if days < 31:
        return f"{days:03d}D"
    years = r.year - b.year - ((r.month, r.day) < (b.month, b.day))
    if years < 2:
        months = (r.year - b.year) * 12 + r.month - b.month - (r.day < b.day)
        return f"{months:03d}M"
    return f"{min(years, 999):03d}Y"

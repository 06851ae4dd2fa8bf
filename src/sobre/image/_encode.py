"""Encoding datasets as DICOM Part 10 bytes (the one encoder of Sobre).

pydicom re-encodes every element through its generic writer (tens of microseconds each). Elements
left raw since reading need only a header and their original bytes; decoded text, UIDs, dates and
sequences are encoded here directly; anything else goes through pydicom. Used by de-identification,
the C-STORE listener and the DICOM writers.
"""

from __future__ import annotations

import uuid
from io import BytesIO

__all__ = ["encode_dataset", "file_meta_bytes", "SOBRE_IMPLEMENTATION_UID", "SOBRE_IMPLEMENTATION_VERSION"]

# Implementation Class UID of Sobre-written files (a fixed 2.25 UID derived from the name).
SOBRE_IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "https://sobre.invalid/implementation").int)
SOBRE_IMPLEMENTATION_VERSION = "SOBRE_0"

def encode_dataset(ds) -> tuple[bytes, int]:
    """Encode ``ds`` as a Part 10 file; returns ``(bytes, number of bytes before Pixel Data)``.

    The same bytes as ``pydicom.dcmwrite(..., enforce_file_format=True)``. Elements still raw (as read)
    are copied with a new header; decoded text, UIDs, dates and sequences are encoded directly; anything
    else goes through pydicom's own writer. The offset of Pixel Data lets a verification scan skip the
    pixels. ``tests/image/test_part10.py`` checks byte identity with pydicom on every sample.
    """
    fast = _fast_encode(ds)
    if fast is not None:
        return fast
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    if "PixelData" not in ds or any(int(t) > 0x7FE00010 for t in ds.keys()):
        buf = BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        data = buf.getvalue()
        if "PixelData" not in ds:
            return data, len(data)
        return data, data.rfind(b"\xe0\x7f\x10\x00") if ds.file_meta.TransferSyntaxUID.is_little_endian \
            else data.rfind(b"\x7f\xe0\x00\x10")
    # Pixel Data is the last element: encode the rest, then append it (the header length is exact).
    pixel = ds["PixelData"]
    del ds["PixelData"]
    try:
        head = BytesIO()
        pydicom.dcmwrite(head, ds, enforce_file_format=True)
    finally:
        ds["PixelData"] = pixel
    ts = ds.file_meta.TransferSyntaxUID
    fp = DicomBytesIO()
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    elem = ds["PixelData"]
    if "or" in elem.VR:  # built in memory with an ambiguous VR: resolve it as dcmwrite would
        from pydicom.filewriter import correct_ambiguous_vr_element

        elem = correct_ambiguous_vr_element(elem, ds, ts.is_little_endian)
    write_data_element(fp, elem)
    header = head.getvalue()
    return header + fp.getvalue(), len(header)


_ASCII_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM"})  # pydicom writes them as Latin-1 strings
_CHARSET_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT"})  # encoded with the character set
_SAFE_CODEC_PREFIXES = ("iso8859", "iso_8859", "latin", "utf_8", "utf8", "ascii")
_META_ORDER = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013)


def _ascii_codecs(encodings) -> bool:
    """True when ``encodings`` is one codec that writes ASCII text as the same ASCII bytes."""
    return len(encodings) == 1 and str(encodings[0]).lower().replace("-", "_").startswith(_SAFE_CODEC_PREFIXES)


def _fast_meta(meta) -> bytes | None:
    """File Meta Information bytes (after 'DICM') as ``write_file_meta_info(enforce_standard=True)``
    writes them, for the usual group of UIDs and names; ``None`` for anything else."""
    values = {}
    for tag in meta.keys():
        itag = int(tag)
        if itag == 0x00020000:
            continue
        if itag not in _META_ORDER:
            return None
        raw = meta.get_item(tag)
        if raw.is_raw:
            return None
        values[itag] = raw.value
    if any(t not in values for t in _META_ORDER[1:]):
        return None
    version = values.get(0x00020001) or b"\x00\x01"
    if not isinstance(version, bytes):
        return None
    return file_meta_bytes(*(values[t] for t in _META_ORDER[1:]), version=version)


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, implementation_uid: str,
                    implementation_version: str, *, version: bytes = b"\x00\x01") -> bytes | None:
    """Encoded File Meta Information group (what follows the preamble and 'DICM').

    The same bytes as pydicom's ``write_file_meta_info`` for these six elements, without building a
    dataset; ``None`` if a value is empty or not ASCII (let pydicom decide then).
    """
    import struct

    out = []
    if len(version) % 2:
        version += b"\x00"
    out.append(struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, len(version)) + version)
    for element, vr, value in ((0x0002, b"UI", sop_class), (0x0003, b"UI", sop_instance),
                               (0x0010, b"UI", transfer_syntax), (0x0012, b"UI", implementation_uid),
                               (0x0013, b"SH", implementation_version)):
        if not isinstance(value, str) or not value or not value.isascii():
            return None
        b = value.encode()
        if len(b) % 2:
            b += b"\x00" if vr == b"UI" else b" "
        if len(b) > 0xFFFF:
            return None
        out.append(struct.pack("<HH2sH", 0x0002, element, vr, len(b)) + b)
    body = b"".join(out)
    return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + body


class _Slow(Exception):
    """An element the fast encoder leaves to pydicom."""


def _fast_encode(ds) -> tuple[bytes, int] | None:
    """Encode like ``pydicom.dcmwrite``, without pydicom's generic writer for the common elements.

    pydicom re-encodes every element through its generic writer (tens of microseconds each).
    Elements that de-identification left raw need only a header and their original bytes; decoded
    text, UIDs, dates and sequences are encoded here directly; anything else goes through pydicom's
    own ``write_data_element``. Used when the output keeps the source's little-endian encoding and
    character set; ``None`` otherwise (the caller falls back to ``dcmwrite``).
    ``tests/privacy/test_deid_samples.py`` checks that both give identical bytes on every sample.
    """
    from pydicom.charset import convert_encodings, default_encoding
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_little_endian or ts.is_deflated:
        return None
    implicit = ts.is_implicit_VR
    if ds.original_encoding != (implicit, True):
        return None
    if getattr(ds, "original_character_set", None) != getattr(ds, "_character_set", None):
        return None
    meta = _fast_meta(ds.file_meta)
    if meta is None:
        head = DicomBytesIO()
        head.is_little_endian, head.is_implicit_VR = True, False
        write_file_meta_info(head, ds.file_meta, enforce_standard=True)
        meta = head.getvalue()
    meta = (ds.preamble or b"\x00" * 128) + b"DICM" + meta
    encodings = convert_encodings(ds.get("SpecificCharacterSet", default_encoding))
    parts: list[bytes] = []
    pixel_at = _encode_items(ds, implicit, encodings, parts, top=True)
    body = b"".join(parts)
    return meta + body, len(meta) + (pixel_at if pixel_at is not None else len(body))


def _encode_items(ds, implicit: bool, encodings, out: list, *, top: bool = False) -> int | None:
    """Append the encoded elements of ``ds`` to ``out``; returns the offset of Pixel Data (top level)."""
    import struct

    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    pack = struct.pack
    append = out.append
    pixel_at = None
    size = 0 if top else None
    ascii_ok = _ascii_codecs(encodings)
    get_item = ds.get_item
    for tag in sorted(ds.keys()):
        g, e = tag.group, tag.element
        if e == 0 and g > 6:
            continue  # retired group lengths are not written (as pydicom)
        if top and tag == 0x7FE00010:
            pixel_at = size
        raw = get_item(tag)
        chunk = None
        if raw.is_raw:
            value = raw.value
            if value is not None and raw.length != 0xFFFFFFFF and len(value) == raw.length:
                n = len(value)
                if implicit:
                    chunk = pack("<HHL", g, e, n) + value
                else:
                    vr = raw.VR
                    if vr and len(vr) == 2:
                        if vr in EXPLICIT_VR_LENGTH_32:
                            chunk = pack("<HH2sHL", g, e, vr.encode(), 0, n) + value
                        elif n <= 0xFFFF:
                            chunk = pack("<HH2sH", g, e, vr.encode(), n) + value
            if chunk is None:
                chunk = _slow_element(ds[tag], implicit, encodings)  # unusual raw element: pydicom decides
        else:
            try:
                chunk = _encode_decoded(raw, g, e, implicit, encodings, ascii_ok)
            except _Slow:
                chunk = _slow_element(raw, implicit, encodings)
        append(chunk)
        if top:
            size += len(chunk)
    return pixel_at


def _encode_decoded(elem, g: int, e: int, implicit: bool, encodings, ascii_ok: bool) -> bytes:
    """One decoded element as pydicom writes it, or :class:`_Slow`."""
    import struct

    vr = elem.VR
    value = elem.value
    if vr == "SQ":
        parts: list[bytes] = []
        for item in value or ():
            parts.append(_encode_item(item, implicit, encodings))
        body = b"".join(parts)
        undefined = elem.is_undefined_length
        n = 0xFFFFFFFF if undefined else len(body)
        head = struct.pack("<HHL", g, e, n) if implicit else struct.pack("<HH2sHL", g, e, b"SQ", 0, n)
        if undefined:
            return head + body + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        return head + body
    if elem.is_undefined_length:
        raise _Slow
    if vr in _ASCII_TEXT_VRS or vr == "UI" or (vr in _CHARSET_TEXT_VRS and ascii_ok):
        if value is None or value == "":
            data = b""
        else:
            if isinstance(value, str):
                text = value
            elif type(value).__name__ == "MultiValue" or isinstance(value, list):
                if not value:
                    text = ""
                elif all(isinstance(v, str) for v in value):
                    text = "\\".join(value)
                else:
                    raise _Slow
            else:
                raise _Slow
            if not text.isascii():
                raise _Slow
            data = text.encode()
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
    elif vr == "PN" and not value:  # empty name (pydicom writes no value)
        data = b""
    else:
        raise _Slow
    n = len(data)
    if implicit:
        return struct.pack("<HHL", g, e, n) + data
    if vr in ("UC", "UT"):
        return struct.pack("<HH2sHL", g, e, vr.encode(), 0, n) + data
    if n > 0xFFFF:
        raise _Slow
    return struct.pack("<HH2sH", g, e, vr.encode(), n) + data


def _encode_item(item, implicit: bool, encodings) -> bytes:
    """One sequence item (tag, length or delimiter, elements) as pydicom's ``write_sequence_item``."""
    import struct

    from pydicom.charset import convert_encodings

    if item.original_encoding == (None, None):  # built in memory
        # pydicom corrects ambiguous VRs and decodes raw elements of such items: leave those to it
        for tag in item.keys():
            raw = item.get_item(tag)
            if raw.is_raw or " or " in (raw.VR or ""):
                return _slow_item(item, implicit, encodings)
    elif item.original_encoding != (implicit, True) or \
            getattr(item, "original_character_set", None) != getattr(item, "_character_set", None):
        return _slow_item(item, implicit, encodings)
    inner = encodings
    if "SpecificCharacterSet" in item:
        inner = convert_encodings(item.SpecificCharacterSet)
    parts: list[bytes] = []
    _encode_items(item, implicit, inner, parts)
    body = b"".join(parts)
    if getattr(item, "is_undefined_length_sequence_item", False):
        return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body


def _slow_element(elem, implicit: bool, encodings) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _slow_item(item, implicit: bool, encodings) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_sequence_item

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_sequence_item(fp, item, encodings)
    return fp.getvalue()



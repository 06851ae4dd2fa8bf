"""A fast DICOM header reader for cataloguing: the same dataset as pydicom's, built in a fraction of the time.

Indexing thousands of files spends most of its time in ``pydicom.dcmread``: per element it creates
tag objects, calls ``tell()`` on the file and sets attributes. For the common case — a Part 10 file
in little-endian explicit or implicit VR — this module walks the element headers over one ``bytes``
buffer with ``struct`` and hands pydicom the very same ``RawDataElement`` tuples its own reader would
produce (same tags, VRs, lengths, raw values, value offsets, deferral of values over ``defer_size``).
Values are still converted by pydicom, lazily, exactly as after ``dcmread``.

Anything else returns None and the caller uses ``pydicom.dcmread``: no preamble, big endian, deflated
data, undefined-length elements other than sequences, implicit-VR switches, a header longer than the
buffer, odd lengths that run past the end. ``tests/image/test_dicom_fast.py`` checks, on every real
sample file, that the dataset equals pydicom's element by element.

The walk itself does not use pydicom (it is imported only by :func:`read_header_fast`):
:func:`read_raw_elements` gives the same elements as plain :class:`RawElement` tuples, which is what
``sobre.image._lite`` reads simple series from without importing pydicom at all.
"""

from __future__ import annotations

import os
from struct import Struct
from typing import NamedTuple

__all__ = ["read_header_fast", "read_raw_elements", "RawElement"]


class RawElement(NamedTuple):
    """An element as read from the bytes: the fields (and order) of pydicom's ``RawDataElement``."""

    tag: int
    VR: str | None
    length: int
    value: bytes | None
    value_tell: int
    is_implicit_VR: bool
    is_little_endian: bool
    is_raw: bool = True
    is_buffered: bool = False

_HEAD = 1 << 16  # bytes read first; more only when the header is longer
_MAX_HEAD = 1 << 22
_LE_EXPLICIT = Struct("<HH2sH")
_LE_IMPLICIT = Struct("<HHL")
_U32 = Struct("<L")
# pydicom.valuerep.EXPLICIT_VR_LENGTH_32 (tests/image/test_dicom_fast.py checks that they agree)
_EXPLICIT_32 = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
# VRs whose empty raw value is b"" (pydicom's ``empty_value_for_VR(vr, raw=True)`` with its default settings:
# SQ, PN and the text VRs but DS and IS); every other VR gives None
_EMPTY_BYTES_VRS = frozenset(("SQ", "PN", "AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI",
                              "UR", "UT"))
_IMPLICIT_LE = "1.2.840.10008.1.2"  # every other standard transfer syntax but two is explicit VR little endian
_NOT_HANDLED_TS = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated
_VR_STR = {v.encode(): v for v in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
                                    "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
                                    "UL", "UN", "UR", "US", "UT", "UV")}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class _Fallback(Exception):
    """Something this reader does not handle: use pydicom."""


class _NeedMore(Exception):
    """The buffer ended inside the header: read more of the file (or let pydicom explain a truncated file)."""


def _skip_sequence(buf: bytes, pos: int, implicit: bool, ops: tuple) -> int:
    """Position just after the sequence delimiter of an undefined-length sequence starting at ``pos``."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _NeedMore
        group, elem, length = _LE_IMPLICIT.unpack_from(buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Fallback
        if length != 0xFFFFFFFF:
            pos += length
            continue
        pos = _walk(buf, pos, implicit, None, 0, ops, nested=True)  # an item of undefined length


def _skip_encapsulated(buf: bytes, pos: int, size: int, fh) -> tuple[int, int]:
    """End of encapsulated pixel data starting at ``pos`` (after its delimiter) and pydicom's byte count.

    Walks the items by their lengths as pydicom does first; item headers past the buffer are read
    from the file. Anything else (a missing delimiter, a stray tag) is pydicom's to handle.
    """
    start, n = pos, len(buf)
    while True:
        if pos + 8 <= n:
            head = buf[pos:pos + 8]
        elif fh is not None and pos + 8 <= size:
            fh.seek(pos)
            head = fh.read(8)
        else:
            raise _Fallback
        group, elem, length = _LE_IMPLICIT.unpack(head)
        tag = group << 16 | elem
        if tag == _SEQ_END:
            return pos + 8, pos + 4 - start
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise _Fallback
        pos += 8 + length


def _walk(buf: bytes, pos: int, implicit: bool, out: dict | None, defer: int, ops: tuple, size: int = 0, fh=None,
          *, nested: bool = False) -> int:
    """Read elements from ``pos``; store top-level ones in ``out``; return the position reached.

    Nested (inside an undefined-length item): stops after the item delimiter. ``ops`` is
    ``(make, empty, dictionary_vr)``: the element factory ``make(tag, vr, length, value, value_tell,
    implicit)``, the raw value of an empty element of a VR, and a tag's VR from the dictionary
    (KeyError when unknown; :class:`_Fallback` where the dictionary is not at hand).
    """
    make, empty, dictionary_vr = ops
    n = len(buf)
    while pos < n:
        if pos + 8 > n:
            raise _NeedMore
        if implicit:
            group, elem, length = _LE_IMPLICIT.unpack_from(buf, pos)
            vr = None
            pos += 8
        else:
            group, elem, vrb, length = _LE_EXPLICIT.unpack_from(buf, pos)
            pos += 8
            if group == 0xFFFE:
                vr = None
                length = _U32.unpack_from(buf, pos - 4)[0]
            else:
                if not (b"AA" <= vrb <= b"ZZ"):
                    raise _Fallback  # an implicit VR switch: leave it to pydicom's heuristics
                if vrb in _EXPLICIT_32:
                    if pos + 4 > n:
                        raise _NeedMore
                    length = _U32.unpack_from(buf, pos)[0]
                    pos += 4
                vr = _VR_STR.get(vrb) or vrb.decode("ascii")
        tag = group << 16 | elem
        if tag == _ITEM_END:
            if nested:
                return pos
            raise _Fallback
        if length == 0xFFFFFFFF:
            if vr is None and group != 0xFFFE:
                try:
                    vr = dictionary_vr(tag)
                except KeyError:
                    vr = None
            if vr != "SQ":
                if out is None or nested or tag != 0x7FE00010:
                    raise _Fallback  # undefined-length UN, private sequences, ...
                # encapsulated (compressed) pixel data: items of defined length up to the delimiter
                end, count = _skip_encapsulated(buf, pos, size, fh)
                if defer > count and pos + count - 4 > n:
                    raise _NeedMore
                value = None if defer <= count else buf[pos:pos + count - 4]
                out[tag] = make(tag, vr, length, value, pos, implicit)
                if end >= size:
                    return end
                if end > n:
                    raise _Fallback  # elements after the pixel data, beyond what was read
                pos = end
                continue
            start = pos
            pos = _skip_sequence(buf, pos, implicit, ops)
            if out is not None:
                # the sequence's bytes without its delimiter: pydicom parses them when the value is used
                out[tag] = make(tag, vr, 0xFFFFFFFF, buf[start:pos - 8], start, implicit)
            continue
        if pos + length > n:
            if out is not None and tag in _PIXEL_TAGS and not nested and length > defer and pos + length >= size:
                # pixel data runs to (or past) the end of the file: deferred, as pydicom defers it
                out[tag] = make(tag, vr, length, None, pos, implicit)
                return n
            raise _NeedMore
        if out is not None:
            if length > defer and tag != 0x00080005:
                value = None
            elif length:
                value = buf[pos:pos + length]
            else:
                value = empty(vr)
            out[tag] = make(tag, vr, length, value, pos, implicit)
        pos += length
    if nested or n < size:
        raise _NeedMore  # the buffer ended, not the item or the file
    return pos


def read_header_fast(path: str | os.PathLike, *, defer_size: int = 1024):
    """The header of a little-endian Part 10 file as pydicom would read it (a ``FileDataset``); None when
    pydicom must read it."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement, empty_value_for_VR
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.tag import BaseTag

    def make(tag, vr, length, value, tell, implicit):
        return RawDataElement(BaseTag(tag), vr, length, value, tell, implicit, True)

    read = _read(path, defer_size, (make, lambda vr: empty_value_for_VR(vr, raw=True), dictionary_VR))
    if read is None:
        return None
    fn, preamble, meta, elements, implicit = read
    ds = FileDataset(fn, elements, preamble=preamble, file_meta=FileMetaDataset(meta),
                     is_implicit_VR=implicit, is_little_endian=True)
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds


def _lite_make(tag, vr, length, value, tell, implicit):
    return RawElement(tag, vr, length, value, tell, implicit, True)


def _lite_empty(vr):
    return b"" if vr in _EMPTY_BYTES_VRS else None


def _no_dictionary(tag):
    raise _Fallback  # an undefined length in implicit VR: only the dictionary tells a sequence


_LITE_OPS = (_lite_make, _lite_empty, _no_dictionary)
_LITE_HEAD = 1 << 14  # a simple file's header is a few KiB: read less first (more is read when needed)


def read_raw_elements(path: str | os.PathLike, *, defer_size: int = 1024) -> tuple[dict, dict, bool] | None:
    """``(file meta elements, dataset elements, implicit VR)`` of a little-endian Part 10 file, as
    :class:`RawElement` s keyed by tag, without pydicom: the elements :func:`read_header_fast` gives
    pydicom. None where pydicom must read the file, and also for an element of undefined length
    other than pixel data in an implicit-VR dataset (whether it is a sequence is the dictionary's say)."""
    read = _read(path, defer_size, _LITE_OPS, _LITE_HEAD)
    if read is None:
        return None
    _, _, meta, elements, implicit = read
    return meta, elements, implicit


def _read(path: str | os.PathLike, defer_size: int, ops: tuple, head: int = _HEAD):
    fn = os.fspath(path)
    try:
        with open(fn, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            buf = fh.read(head)
            while True:
                try:
                    return _parse(fn, buf, size, defer_size, fh, ops)
                except _NeedMore:
                    if len(buf) >= size or len(buf) >= _MAX_HEAD:
                        return None  # truncated (pydicom explains), or a huge header
                    fh.seek(len(buf))
                    buf += fh.read(len(buf))
                except _Fallback:
                    return None
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return None


def _parse(fn: str, buf: bytes, size: int, defer: int, fh, ops: tuple) -> tuple:
    make, empty, _ = ops
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise _Fallback  # no Part 10 preamble: pydicom guesses the encoding
    meta: dict = {}
    pos = 132
    while True:  # file meta information: explicit VR little endian, group 0002
        if pos + 8 > len(buf):
            raise _NeedMore
        if buf[pos] | buf[pos + 1] << 8 != 0x0002:
            break
        group, elem, vrb, length = _LE_EXPLICIT.unpack_from(buf, pos)
        p = pos + 8
        if not (b"AA" <= vrb <= b"ZZ") or length == 0xFFFFFFFF:
            raise _Fallback
        if vrb in _EXPLICIT_32:
            if p + 4 > len(buf):
                raise _NeedMore
            length = _U32.unpack_from(buf, p)[0]
            p += 4
        if p + length > len(buf):
            raise _NeedMore
        tag = group << 16 | elem
        vr = vrb.decode("ascii")
        meta[tag] = make(tag, vr, length, buf[p:p + length] if length else empty(vr), p, False)
        pos = p + length
    ts_raw = meta.get(0x00020010)
    if ts_raw is None or not ts_raw.value:
        raise _Fallback
    ts = ts_raw.value.decode("ascii").strip(" \x00")
    if ts in _NOT_HANDLED_TS or not ts.startswith("1.2.840.10008."):
        raise _Fallback
    implicit = ts == _IMPLICIT_LE
    elements: dict = {}
    _walk(buf, pos, implicit, elements, defer, ops, size, fh)
    return fn, buf[:128], meta, elements, implicit

"""Deterministic mutants of real DICOM sample files, for fuzzing Sobre's readers, ingest, deid and listener.

Every mutant is fully described by ``(source key, mutation kind, seed)``: :func:`make` rebuilds the
same bytes from the same real sample file on any machine with the same sample data. :func:`plan`
draws the ``i``-th mutant of a campaign from ``(master seed, i)`` alone, so a campaign of 10,000 and
its first 500 share their first 500 mutants.

The mutations work on the file's bytes with an element walker of its own (independent of the code
under test): the Part 10 meta group, explicit/implicit VR, little/big endian, sequences and items of
defined and undefined length, encapsulated pixel data fragments, and deflated datasets (inflated,
mutated, deflated again for targeted mutations; damaged as a stream for byte-level ones). A value
that changes length fixes the element's length field and every enclosing sequence/item of defined
length (and the meta group length), so the file stays well-formed except for the intended damage.

Kinds (see :data:`KINDS`): truncations (random, inside the meta group, the header, the pixel data),
flipped bytes (anywhere, header only, pixel data only), invalid VRs (``ZZ`` ...), corrupted element
lengths, targeted values of image-module tags (Rows, Columns, BitsAllocated, BitsStored, HighBit,
PixelRepresentation, SamplesPerPixel, NumberOfFrames, PhotometricInterpretation, PlanarConfiguration,
ImageOrientationPatient, ImagePositionPatient, PixelSpacing, TransferSyntaxUID, RescaleSlope,
RescaleIntercept; nested occurrences in functional groups too; inserted when absent), deleted
elements, damaged encapsulated fragments, swapped elements, trailing garbage, deflate stream damage,
and UIDs borrowed from another sample (same SOP Instance UID, other bytes).

Regenerate one mutant::

    .venv/bin/python tests/fuzz/mutants.py regen --source pydicom:CT_small.dcm --kind set_value \\
        --seed 123456 --out /tmp/m.dcm
    .venv/bin/python tests/fuzz/mutants.py show --seed 20241125 --index 17     # what plan() draws
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = [
    "KINDS",
    "SOURCES",
    "Layout",
    "Mutant",
    "Source",
    "load_source",
    "main",
    "make",
    "parse",
    "plan",
    "sources_available",
    "spec",
]

# ------------------------------------------------------------------------------------------ sources

@dataclass(frozen=True)
class Source:
    """One real sample file: ``key`` is ``<collection>:<relative path>`` (stable across machines)."""

    key: str
    note: str
    weight: float = 1.0
    derive: str | None = None  # "deflate": re-encoded by pydicom as Deflated Explicit VR Little Endian


# Varied on purpose: CT, MR, CR, NM, US (multi-frame, palette, RGB, YBR), SEG, RT dose, enhanced
# MR/CT, secondary capture; explicit/implicit VR, big endian, deflate, RLE, JPEG baseline/extended/
# lossless, JPEG-LS, JPEG 2000. Several share a SOP Instance UID (the same image in other transfer
# syntaxes): the workspace holds the first of each, the others are "same UID, other bytes" already.
SOURCES: tuple[Source, ...] = (
    Source("pydicom:CT_small.dcm", "CT, explicit LE, 128x128"),
    Source("pydicom:MR_small.dcm", "MR, explicit LE, 64x64"),
    Source("pydicom:MR_small_implicit.dcm", "MR, implicit LE"),
    Source("pydicom:MR_small_bigendian.dcm", "MR, explicit BE"),
    Source("pydicom:MR_small_RLE.dcm", "MR, RLE lossless"),
    Source("pydicom:MR_small_jp2klossless.dcm", "MR, JPEG 2000 lossless"),
    Source("pydicom:MR_small_jpeg_ls_lossless.dcm", "MR, JPEG-LS lossless"),
    Source("pydicom:MR_truncated.dcm", "MR, a real truncated file"),
    Source("pydicom:JPEG-lossy.dcm", "NM, JPEG extended 12-bit"),
    Source("pydicom:JPEG2000.dcm", "NM, JPEG 2000"),
    Source("pydicom:ExplVR_BigEnd.dcm", "US, explicit BE"),
    Source("pydicom:SC_rgb_rle_2frame.dcm", "SC RGB, RLE, 2 frames"),
    Source("pydicom:SC_rgb_jpeg_dcmtk.dcm", "SC RGB, JPEG baseline"),
    Source("pydicom:SC_rgb_small_odd.dcm", "SC RGB 3x3, odd length"),
    Source("pydicom:SC_ybr_full_422_uncompressed.dcm", "SC YBR_FULL_422 uncompressed"),
    Source("pydicom:image_dfl.dcm", "OT, deflated explicit LE"),
    Source("pydicom:rtdose.dcm", "RT dose, implicit LE, 15 frames"),
    Source("pydicom:rtdose_expb.dcm", "RT dose, explicit BE"),
    Source("pydicom:rtdose_rle.dcm", "RT dose, RLE"),
    Source("pydicom:examples_ybr_color.dcm", "US multi-frame (30), JPEG YBR"),
    Source("pydicom:examples_palette.dcm", "US palette colour"),
    Source("pydicom:examples_rgb_color.dcm", "US RGB"),
    Source("pydicom:examples_overlay.dcm", "MR with overlay"),
    Source("pydicom:693_J2KI.dcm", "CT, JPEG 2000 lossy"),
    Source("pydicom:J2K_pixelrep_mismatch.dcm", "CT, JPEG 2000, pixel representation mismatch"),
    Source("pydicom:JPEGLSNearLossless_16.dcm", "JPEG-LS near-lossless 16-bit"),
    Source("pydicom:SC_rgb_jpeg_gdcm.dcm", "SC RGB, JPEG lossless"),
    Source("pydicom-data:emri_small.dcm", "enhanced MR, 10 frames"),
    Source("pydicom-data:emri_small_big_endian.dcm", "enhanced MR, explicit BE"),
    Source("pydicom-data:emri_small_RLE.dcm", "enhanced MR, RLE"),
    Source("pydicom-data:emri_small_jpeg_2k_lossless.dcm", "enhanced MR, JPEG 2000"),
    Source("pydicom-data:eCT_Supplemental.dcm", "enhanced CT, 2 frames 512x512"),
    Source("pydicom-data:liver.dcm", "SEG, 3 frames, 1 bit"),
    Source("pydicom-data:liver_expb.dcm", "SEG, explicit BE"),
    Source("pydicom-data:OBXXXX1A_2frame.dcm", "US multi-frame, 2 frames 800x600"),
    Source("pydicom-data:OBXXXX1A_rle_2frame.dcm", "US multi-frame, RLE"),
    Source("pydicom-data:US1_J2KR.dcm", "US RGB, JPEG 2000 lossless"),
    Source("pydicom-data:RG3_J2KI.dcm", "CR 1760x1760, JPEG 2000 lossy"),
    Source("pydicom-data:RG3_UNCR.dcm", "CR 1760x1760, uncompressed (6 MB)", weight=0.25),
    Source("pydicom-data:JPEG-LL.dcm", "NM, JPEG lossless"),
    Source("pydicom-data:JPGLosslessP14SV1_1s_1f_8b.dcm", "US, JPEG lossless 8-bit"),
    Source("pydicom-data:MR-SIEMENS-DICOM-WithOverlays.dcm", "MR 484x484, Siemens, overlays"),
    Source("pydicom-data:color-pl.dcm", "US RGB, planar configuration 1"),
    Source("pydicom-data:gdcm-US-ALOKA-16.dcm", "US, implicit LE, 16-bit"),
    Source("pydicom-data:SC_rgb_expb_16bit_2frame.dcm", "SC RGB 16-bit, BE, 2 frames"),
    Source("pydicom-data:mlut_18.dcm", "OT with modality LUT"),
    Source("pydicom-data:MR2_J2KI.dcm", "MR 1024x1024, JPEG 2000 lossy", weight=0.5),
    Source("pydicom-data:693_UNCI.dcm", "CT 512x512, explicit LE"),
    Source("deid-data:humans/ctbrain1.dcm", "CT, JPEG baseline (fake PHI)"),
    Source("deid-data:ultrasounds/GREYSCALE_IMAGE.dcm", "US 1024x768 (fake PHI)"),
    Source("deid-data:dicom-cookies/image1.dcm", "SC 2048x1536, JPEG baseline (fake PHI)", weight=0.5),
    Source("derived-deflate:pydicom:CT_small.dcm", "CT_small re-encoded as deflated explicit LE by pydicom",
           derive="deflate"),
    Source("derived-deflate:pydicom-data:emri_small.dcm",
           "emri_small re-encoded as deflated explicit LE by pydicom", derive="deflate"),
)


def _collection_root(name: str) -> Path | None:
    if name == "pydicom":
        import pydicom

        p = Path(pydicom.__file__).parent / "data" / "test_files"
        return p if p.is_dir() else None
    from sobre import samples

    sample = {"pydicom-data": "pydicom-data", "deid-data": "deid-data"}[name]
    if not samples.is_available(sample):
        return None
    root = samples.path(sample)
    return root / "data_store" / "data" if name == "pydicom-data" else root / "deid-data-0.0.20" / "deid_data" / "data"


def source_path(key: str) -> Path | None:
    """The file behind ``key`` (for derived sources: the file it is derived from), or None if absent."""
    if key.startswith("derived-"):
        key = key.split(":", 1)[1]
    coll, rel = key.split(":", 1)
    root = _collection_root(coll)
    if root is None:
        return None
    p = root / rel
    return p if p.is_file() else None


def sources_available() -> list[Source]:
    """The sources whose files are on this machine (in :data:`SOURCES` order)."""
    return [s for s in SOURCES if source_path(s.key) is not None]


@cache
def load_source(key: str) -> bytes:
    """Bytes of a source (derived sources are built deterministically from their real file)."""
    src = next((s for s in SOURCES if s.key == key), None)
    path = source_path(key)
    if path is None:
        raise FileNotFoundError(f"sample file for {key} is not available")
    data = path.read_bytes()
    if src is not None and src.derive == "deflate":
        data = _deflate_reencode(data)
    return data


def _deflate_reencode(data: bytes) -> bytes:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ walker

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_DELIM, SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
TS_IMPLICIT_LE, TS_EXPLICIT_LE, TS_EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
TS_DEFLATE = "1.2.840.10008.1.2.1.99"


class WalkError(ValueError):
    pass


@dataclass
class Elem:
    """One data element (or item) found by the walker; offsets are in the buffer it was walked in."""

    tag: int
    start: int
    vr: bytes | None  # explicit VR as found (None: implicit, or an item)
    len_off: int
    len_size: int
    value_off: int
    length: int  # as declared (UNDEFINED possible)
    end: int  # first byte after the element (delimiters included)
    depth: int
    ancestors: tuple[int, ...]  # indices (in Layout.elems) of enclosing SQ elements and items
    meta: bool  # in the file meta group (always explicit LE)
    item: bool = False
    fragment: bool = False  # an item of encapsulated pixel data


@dataclass
class Layout:
    """Where things are in a Part 10 file. For a deflated file ``body`` is the inflated dataset."""

    data: bytes
    meta_end: int  # offset of the first dataset byte in ``data``
    ts: str
    explicit: bool
    little: bool
    deflated: bool
    body: bytes  # the dataset bytes the dataset elements refer to (data[meta_end:] unless deflated)
    elems: list[Elem] = field(default_factory=list)

    def find(self, tag: int, *, meta: bool | None = None) -> list[int]:
        return [i for i, e in enumerate(self.elems) if e.tag == tag and not e.item
                and (meta is None or e.meta == meta)]

    def pixel(self) -> Elem | None:
        idx = [i for i in self.find(PIXEL_DATA, meta=False) if self.elems[i].depth == 0]
        return self.elems[idx[-1]] if idx else None

    def value(self, i: int) -> bytes:
        e = self.elems[i]
        buf = self.data if e.meta else self.body
        if e.length == UNDEFINED:
            return b""
        return buf[e.value_off:e.value_off + e.length]


def _dict_vr(tag: int) -> str:
    try:
        from pydicom.datadict import dictionary_VR

        return dictionary_VR(tag)
    except Exception:  # noqa: BLE001 - private or unknown tag
        return "UN"


def parse(data: bytes, *, lenient: bool = False) -> Layout:
    """Walk a Part 10 file (preamble + DICM + meta group + dataset); raises :class:`WalkError` if odd.

    ``lenient``: a dataset cut short ends at its last element (clipped) instead of raising.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise WalkError("no DICM prefix")
    elems: list[Elem] = []
    pos = 132
    ts = ""
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        pos = _element(data, pos, len(data), True, True, 0, (), elems, meta=True)
        e = elems[-1]
        if e.tag == 0x00020010:
            ts = data[e.value_off:e.value_off + e.length].rstrip(b"\0 ").decode("ascii", "replace")
    meta_end = pos
    deflated = ts == TS_DEFLATE
    explicit = ts != TS_IMPLICIT_LE
    little = ts != TS_EXPLICIT_BE
    if deflated:
        body = zlib.decompressobj(-15).decompress(data[meta_end:])
    else:
        body = data[meta_end:]
    lay = Layout(data, meta_end, ts, explicit, little, deflated, body, elems)
    p, end = 0, len(body)
    while p < end:
        try:
            p = _element(body, p, end, explicit, little, 0, (), elems, meta=False)
        except WalkError:
            if not lenient:
                raise
            # a source that is itself cut short (MR_truncated.dcm): keep what was walked, clip the last
            # top-level element to the end of the file, drop anything walked inside it
            last = max((i for i, e in enumerate(elems) if e.depth == 0 and not e.meta and e.start <= p),
                       default=None)
            if last is None:
                raise
            del elems[last + 1:]
            elems[last].end = end
            break
    return lay


def _unpack(fmt: str, buf: bytes, pos: int, little: bool):
    if pos + struct.calcsize(fmt) > len(buf):
        raise WalkError(f"short read at {pos}")
    return struct.unpack_from(("<" if little else ">") + fmt, buf, pos)


def _element(buf: bytes, pos: int, end: int, explicit: bool, little: bool, depth: int, anc: tuple[int, ...],
             out: list[Elem], *, meta: bool) -> int:
    g, el = _unpack("HH", buf, pos, little)
    tag = (g << 16) | el
    if g == 0xFFFE:
        raise WalkError(f"unexpected delimiter/item {tag:08X} at {pos}")
    if explicit:
        vr = buf[pos + 4:pos + 6]
        if vr in LONG_VRS:
            len_off, size = pos + 8, 4
            (length,) = _unpack("I", buf, len_off, little)
        else:
            len_off, size = pos + 6, 2
            (length,) = _unpack("H", buf, len_off, little)
        value_off = len_off + size
    else:
        vr = None
        len_off, size = pos + 4, 4
        (length,) = _unpack("I", buf, len_off, little)
        value_off = pos + 8
    idx = len(out)
    e = Elem(tag, pos, vr, len_off, size, value_off, length, 0, depth, anc, meta)
    out.append(e)
    is_sq = vr == b"SQ" or (vr is None and _dict_vr(tag) == "SQ")
    if length == UNDEFINED:
        if tag == PIXEL_DATA and depth == 0:
            e.end = _items(buf, value_off, None, explicit, little, depth + 1, anc + (idx,), out, fragments=True)
        else:  # SQ, or UN/implicit sequence of undefined length (contents implicit VR LE for UN)
            inner_explicit = explicit and vr != b"UN"
            inner_little = little if vr != b"UN" else True
            e.end = _items(buf, value_off, None, inner_explicit, inner_little, depth + 1, anc + (idx,), out,
                           fragments=False)
        return e.end
    e.end = value_off + length
    if e.end > end:
        raise WalkError(f"element {tag:08X} runs past its container ({e.end} > {end})")
    if is_sq and length:
        _items(buf, value_off, e.end, explicit, little, depth + 1, anc + (idx,), out, fragments=False)
    return e.end


def _items(buf: bytes, pos: int, stop: int | None, explicit: bool, little: bool, depth: int,
           anc: tuple[int, ...], out: list[Elem], *, fragments: bool) -> int:
    """Items of a sequence (or fragments) from ``pos`` to ``stop`` (None: up to the sequence delimiter)."""
    while stop is None or pos < stop:
        g, el = _unpack("HH", buf, pos, little)
        tag = (g << 16) | el
        (length,) = _unpack("I", buf, pos + 4, little)
        if tag == SEQ_DELIM:
            if stop is not None:
                raise WalkError("sequence delimiter inside a defined-length sequence")
            return pos + 8
        if tag != ITEM:
            raise WalkError(f"expected an item at {pos}, found {tag:08X}")
        idx = len(out)
        it = Elem(tag, pos, None, pos + 4, 4, pos + 8, length, 0, depth, anc, False, item=True, fragment=fragments)
        out.append(it)
        if fragments:
            if length == UNDEFINED:
                raise WalkError("fragment of undefined length")
            it.end = pos + 8 + length
        elif length == UNDEFINED:
            p = pos + 8
            while True:
                g2, e2 = _unpack("HH", buf, p, little)
                if (g2 << 16 | e2) == ITEM_DELIM:
                    it.end = p + 8
                    break
                p = _element(buf, p, len(buf), explicit, little, depth + 1, anc + (idx,), out, meta=False)
        else:
            it.end = pos + 8 + length
            p = pos + 8
            while p < it.end:
                p = _element(buf, p, it.end, explicit, little, depth + 1, anc + (idx,), out, meta=False)
        if it.end > len(buf):
            raise WalkError("item runs past the end")
        pos = it.end
    return pos


# ------------------------------------------------------------------------------------------ editing

def _pack_len(value: int, size: int, little: bool) -> bytes:
    return struct.pack(("<" if little else ">") + ("I" if size == 4 else "H"), value)


def _rebuild(lay: Layout, body: bytes, meta: bytes | None = None) -> bytes:
    """A new file from (possibly edited) meta bytes ``data[:meta_end]`` and dataset bytes."""
    head = lay.data[:lay.meta_end] if meta is None else meta
    if lay.deflated:
        co = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = co.compress(body) + co.flush()
    return head + body


def replace_span(lay: Layout, i: int, new_value: bytes | None, *, new_vr: bytes | None = None,
                 delete: bool = False) -> bytes:
    """The file with element ``i``'s value replaced (lengths fixed up), or the element deleted."""
    e = lay.elems[i]
    little = True if e.meta else lay.little
    buf = bytearray(lay.data[:lay.meta_end] if e.meta else lay.body)
    if delete:
        delta = -(e.end - e.start)
        buf[e.start:e.end] = b""
    else:
        assert new_value is not None
        if e.length == UNDEFINED:
            raise WalkError("cannot replace an undefined-length value")
        old_len = e.length
        if e.len_size == 2 and len(new_value) > 0xFFFF:
            new_value = new_value[:0xFFFE]
        delta = len(new_value) - old_len
        buf[e.value_off:e.value_off + old_len] = new_value
        buf[e.len_off:e.len_off + e.len_size] = _pack_len(len(new_value), e.len_size, little)
        if new_vr is not None and e.vr is not None:
            buf[e.start + 4:e.start + 6] = new_vr
    if delta:
        for a in e.ancestors:  # enclosing items and sequences of defined length
            anc = lay.elems[a]
            if anc.length != UNDEFINED:
                buf[anc.len_off:anc.len_off + anc.len_size] = _pack_len(anc.length + delta, anc.len_size, little)
    if e.meta:
        meta = bytes(_fix_group_length(lay, bytearray(buf), delta))
        return _rebuild(lay, lay.body, meta) if lay.deflated else meta + lay.data[lay.meta_end:]
    return _rebuild(lay, bytes(buf))


def _fix_group_length(lay: Layout, meta: bytearray, delta: int) -> bytearray:
    for i in lay.find(0x00020000, meta=True):
        e = lay.elems[i]
        if e.length == 4:
            old = struct.unpack_from("<I", lay.data, e.value_off)[0]
            struct.pack_into("<I", meta, e.value_off, (old + delta) & 0xFFFFFFFF)
    return meta


def insert_element(lay: Layout, tag: int, vr: str, value: bytes) -> bytes:
    """The file with a new top-level dataset element (in tag order)."""
    little = lay.little
    e = _encode_element(tag, vr, value, lay.explicit, little)
    top = [x for x in lay.elems if not x.meta and x.depth == 0]
    at = next((x.start for x in top if x.tag > tag), len(lay.body))
    body = lay.body[:at] + e + lay.body[at:]
    return _rebuild(lay, body)


def _encode_element(tag: int, vr: str, value: bytes, explicit: bool, little: bool) -> bytes:
    o = "<" if little else ">"
    head = struct.pack(o + "HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack(o + "I", len(value)) + value
    if vr.encode() in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(o + "I", len(value)) + value
    return head + vr.encode() + struct.pack(o + "H", len(value)) + value


# ------------------------------------------------------------------------------------------ values

KW = {
    "Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100, "BitsStored": 0x00280101,
    "HighBit": 0x00280102, "PixelRepresentation": 0x00280103, "SamplesPerPixel": 0x00280002,
    "PlanarConfiguration": 0x00280006, "NumberOfFrames": 0x00280008, "PhotometricInterpretation": 0x00280004,
    "ImageOrientationPatient": 0x00200037, "ImagePositionPatient": 0x00200032, "PixelSpacing": 0x00280030,
    "TransferSyntaxUID": 0x00020010, "RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052,
    "SOPInstanceUID": 0x00080018, "SeriesInstanceUID": 0x0020000E, "StudyInstanceUID": 0x0020000D,
    "MediaStorageSOPInstanceUID": 0x00020003, "SOPClassUID": 0x00080016, "SliceThickness": 0x00180050,
}
VR_OF = {
    "Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US", "HighBit": "US",
    "PixelRepresentation": "US", "SamplesPerPixel": "US", "PlanarConfiguration": "US", "NumberOfFrames": "IS",
    "PhotometricInterpretation": "CS", "ImageOrientationPatient": "DS", "ImagePositionPatient": "DS",
    "PixelSpacing": "DS", "TransferSyntaxUID": "UI", "RescaleSlope": "DS", "RescaleIntercept": "DS",
    "SOPInstanceUID": "UI", "SeriesInstanceUID": "UI", "StudyInstanceUID": "UI", "SliceThickness": "DS",
}
TARGETS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
           "PlanarConfiguration", "NumberOfFrames", "PhotometricInterpretation", "ImageOrientationPatient",
           "ImagePositionPatient", "PixelSpacing", "TransferSyntaxUID", "RescaleSlope", "RescaleIntercept"]
TARGET_WEIGHTS = {"Rows": 3, "Columns": 3, "BitsAllocated": 3, "NumberOfFrames": 2, "ImageOrientationPatient": 2,
                  "TransferSyntaxUID": 2, "SamplesPerPixel": 2, "PhotometricInterpretation": 2}
TRANSFER_SYNTAXES = [TS_IMPLICIT_LE, TS_EXPLICIT_LE, TS_EXPLICIT_BE, TS_DEFLATE, "1.2.840.10008.1.2.4.50",
                     "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                     "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100",
                     "1.2.840.10008.1.2.4.201", "1.2.3.4.5", "", "1.2.840.10008.1.2.1.98", "not a uid"]
STRING_VALUES = {
    "NumberOfFrames": ["0", "-1", "2", "3", "1A", "", "2147483648", "999999999", "3.5", "1e9", "65536", "nan"],
    "PhotometricInterpretation": ["RGB", "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "YBR_FULL_422",
                                  "YBR_FULL", "YBR_RCT", "", "XYZ", "ARGB", "rgb"],
    "ImageOrientationPatient": ["", "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "nan\\nan\\nan\\nan\\nan\\nan",
                                "1\\0\\0", "abc\\def", "1e308\\0\\0\\0\\1e308\\0", "inf\\0\\0\\0\\1\\0",
                                "1\\0\\0\\0\\1\\0\\0", "0.5\\0\\0\\0\\0.5\\0", "1\\0\\0\\0\\-1\\0",
                                "0\\1\\0\\1\\0\\0", "1\\\\0\\0\\1\\0", "1e-300\\0\\0\\0\\1e-300\\0"],
    "ImagePositionPatient": ["", "nan\\0\\0", "1\\2", "abc\\1\\2", "1e308\\1e308\\1e308", "inf\\-inf\\0",
                             "-1e20\\0\\0", "1\\2\\3\\4", "1,5\\2\\3"],
    "PixelSpacing": ["0\\0", "-1\\-1", "", "nan\\nan", "1", "1e-30\\1e-30", "abc\\1", "1e308\\1e308", "0\\1",
                     "inf\\1", "1\\2\\3"],
    "RescaleSlope": ["0", "nan", "inf", "-1e308", "abc", "", "1e308", "-1", "1e-308"],
    "RescaleIntercept": ["nan", "inf", "-1e308", "abc", "", "1e308", "-32768"],
    "SliceThickness": ["0", "-1", "nan", ""],
}


def _us_values(name: str, old: int | None, rng: random.Random) -> list[int]:
    o = old if old is not None else 1
    common = [0, 1, 65535, 32768]
    per = {
        "Rows": [o * 2, o + 1, max(o - 1, 0), o // 2, 2, 3],
        "Columns": [o * 2, o + 1, max(o - 1, 0), o // 2, 2, 3],
        "BitsAllocated": [7, 8, 12, 16, 24, 32, 64, 2, 17, 48],
        "BitsStored": [17, 33, 7, 8, 12, 16, 64],
        "HighBit": [15, 7, 31, 16, 64],
        "PixelRepresentation": [2, 0, 1, 255],
        "SamplesPerPixel": [2, 3, 4, 5],
        "PlanarConfiguration": [0, 1, 2],
    }[name]
    return [v for v in common + per if v != old]


def _encode_value(name: str, vr: str, value, little: bool) -> bytes:
    if vr == "US":
        return struct.pack(("<" if little else ">") + "H", int(value) & 0xFFFF)
    raw = str(value).encode("latin-1")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def _read_value(lay: Layout, i: int, vr: str):
    v = lay.value(i)
    e = lay.elems[i]
    if vr == "US":
        if len(v) < 2:
            return None
        return struct.unpack_from(("<" if (e.meta or lay.little) else ">") + "H", v)[0]
    return v.rstrip(b"\0 ").decode("latin-1")


# ------------------------------------------------------------------------------------------ mutations

class NotApplicable(Exception):
    """This mutation does not apply to this source (e.g. no pixel data, not deflated)."""


def _rand_offset(rng: random.Random, lo: int, hi: int) -> int:
    if hi <= lo:
        raise NotApplicable("empty range")
    return rng.randrange(lo, hi)


def _pixel_span(lay: Layout) -> tuple[int, int]:
    """(start, end) of the pixel data value in *file* offsets (not for deflated files)."""
    px = lay.pixel()
    if px is None or lay.deflated:
        raise NotApplicable("no pixel data in the file's own bytes")
    return lay.meta_end + px.value_off, lay.meta_end + px.end


def m_truncate(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    where = rng.choice(["random", "meta", "header", "pixels", "pixels", "element_boundary", "last_bytes"])
    data = lay.data
    if where == "random":
        off = _rand_offset(rng, 1, len(data))
    elif where == "meta":
        off = _rand_offset(rng, 128, lay.meta_end)
    elif where == "header":
        px = lay.pixel()
        hi = lay.meta_end + (px.start if px is not None and not lay.deflated else len(lay.body))
        if lay.deflated:
            hi = len(data)
        off = _rand_offset(rng, lay.meta_end, hi)
    elif where == "pixels":
        lo, hi = _pixel_span(lay)
        off = _rand_offset(rng, lo, hi)
    elif where == "element_boundary":
        if lay.deflated:
            raise NotApplicable("deflated")
        tops = [e for e in lay.elems if not e.meta and e.depth == 0]
        e = rng.choice(tops)
        off = lay.meta_end + rng.choice([e.start, e.value_off, e.end]) + rng.choice([0, 0, -1, 1, 2])
        if not 0 < off < len(data):
            raise NotApplicable("boundary outside file")
    else:
        off = len(data) - rng.randint(1, min(16, len(data) - 1))
    return data[:off], {"where": where, "offset": off, "size": len(data)}


def m_flip(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    region = rng.choice(["any", "header", "header", "pixels"])
    data = bytearray(lay.data)
    if region == "any":
        lo, hi = 0, len(data)
    elif region == "header":
        px = lay.pixel()
        lo = 128
        hi = lay.meta_end + px.start if px is not None and not lay.deflated else len(data)
    else:
        lo, hi = _pixel_span(lay)
    n = rng.choice([1, 1, 2, 3, 4, 8, 16])
    flips = []
    for _ in range(n):
        off = _rand_offset(rng, lo, hi)
        mask = rng.choice([0x01, 0x80, 0xFF, rng.randint(1, 255)])
        data[off] ^= mask
        flips.append([off, mask])
    return bytes(data), {"region": region, "flips": flips}


BAD_VRS = [b"ZZ", b"ZZ", b"??", b"\0\0", b"ab", b"XX", b"  ", b"\xff\xff"]
WRONG_VRS = [b"SQ", b"OB", b"UN", b"US", b"DS", b"UT", b"FD", b"AT", b"OW", b"UI"]


def m_bad_vr(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    cands = [i for i, e in enumerate(lay.elems) if e.vr is not None and not e.item]
    if not lay.explicit:
        cands = [i for i in cands if lay.elems[i].meta]
    if not cands:
        raise NotApplicable("no explicit VR")
    # favour the image module and dataset top level
    top = [i for i in cands if not lay.elems[i].meta and lay.elems[i].tag >> 16 in (0x0028, 0x0020, 0x7FE0)]
    i = rng.choice(top) if top and rng.random() < 0.5 else rng.choice(cands)
    e = lay.elems[i]
    new = rng.choice(BAD_VRS) if rng.random() < 0.7 else rng.choice([v for v in WRONG_VRS if v != e.vr])
    buf = bytearray(lay.data[:lay.meta_end] if e.meta else lay.body)
    buf[e.start + 4:e.start + 6] = new
    if e.meta:
        out = bytes(buf) + lay.data[lay.meta_end:]
    else:
        out = _rebuild(lay, bytes(buf))
    return out, {"tag": f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X})", "old_vr": e.vr.decode("latin-1"),
                 "new_vr": new.decode("latin-1"), "depth": e.depth}


def m_bad_length(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    cands = [i for i, e in enumerate(lay.elems)]
    pref = [i for i in cands if lay.elems[i].tag in (PIXEL_DATA, ITEM) or lay.elems[i].tag >> 16 == 0x0028]
    i = rng.choice(pref) if pref and rng.random() < 0.5 else rng.choice(cands)
    e = lay.elems[i]
    old = e.length
    maxv = 0xFFFF if e.len_size == 2 else 0xFFFFFFFF
    choices = [0, 1, 2, 3, maxv, maxv - 1, old + 1, old + 2, max(old - 1, 0), max(old - 2, 0), old * 2,
               old + 0x10000, 0x7FFFFFFF, 0x80000000, rng.randint(0, maxv)]
    new = rng.choice([c for c in choices if c <= maxv and c != old] or [0])
    little = True if e.meta else lay.little
    buf = bytearray(lay.data[:lay.meta_end] if e.meta else lay.body)
    buf[e.len_off:e.len_off + e.len_size] = _pack_len(new, e.len_size, little)
    out = bytes(buf) + lay.data[lay.meta_end:] if e.meta else _rebuild(lay, bytes(buf))
    return out, {"tag": f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X})", "item": e.item, "old_length": old,
                 "new_length": new, "depth": e.depth}


def m_set_value(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    names = TARGETS
    name = rng.choices(names, weights=[TARGET_WEIGHTS.get(n, 1) for n in names])[0]
    tag = KW[name]
    vr = VR_OF[name]
    is_meta = name == "TransferSyntaxUID"
    occ = lay.find(tag, meta=is_meta)
    if occ:
        i = rng.choice(occ)
        old = _read_value(lay, i, vr)
        if vr == "US":
            new = rng.choice(_us_values(name, old, rng))
        elif name == "TransferSyntaxUID":
            new = rng.choice([t for t in TRANSFER_SYNTAXES if t != old])
        else:
            new = rng.choice([v for v in STRING_VALUES[name] if v != old])
        little = True if lay.elems[i].meta else lay.little
        out = replace_span(lay, i, _encode_value(name, vr, new, little))
        return out, {"tag": name, "old": old, "new": new, "depth": lay.elems[i].depth, "inserted": False}
    if is_meta:
        raise NotApplicable("no transfer syntax element")
    # absent: insert it at the top level
    if vr == "US":
        new = rng.choice(_us_values(name, None, rng))
    else:
        new = rng.choice([v for v in STRING_VALUES[name] if v])
    out = insert_element(lay, tag, vr, _encode_value(name, vr, new, lay.little))
    return out, {"tag": name, "old": None, "new": new, "depth": 0, "inserted": True}


DELETABLE = ["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PhotometricInterpretation",
             "NumberOfFrames", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SOPInstanceUID",
             "SeriesInstanceUID", "SOPClassUID", "TransferSyntaxUID", "MediaStorageSOPInstanceUID"]


def m_delete(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    opts = [(n, i) for n in DELETABLE for i in lay.find(KW[n])]
    px = [i for i in lay.find(PIXEL_DATA, meta=False) if lay.elems[i].depth == 0]
    opts += [("PixelData", i) for i in px]
    if not opts:
        raise NotApplicable("nothing to delete")
    name, i = rng.choice(opts)
    return replace_span(lay, i, None, delete=True), {"tag": name, "depth": lay.elems[i].depth}


def m_fragments(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    frags = [i for i, e in enumerate(lay.elems) if e.fragment]
    if not frags:
        raise NotApplicable("not encapsulated")
    how = rng.choice(["length", "length", "drop_delimiter", "offset_table", "zero_fragment", "drop_fragment",
                      "flip_codestream"])
    i = rng.choice(frags)
    e = lay.elems[i]
    buf = bytearray(lay.body)
    info: dict = {"how": how, "fragment": frags.index(i), "fragments": len(frags)}
    if how == "length":
        new = rng.choice([0, 1, UNDEFINED, e.length + 2, max(e.length - 2, 0), e.length * 2, 0x7FFFFFFF])
        buf[e.len_off:e.len_off + 4] = _pack_len(new, 4, lay.little)
        info.update(old_length=e.length, new_length=new)
    elif how == "drop_delimiter":
        px = lay.pixel()
        if px is None or px.end - px.start < 8:
            raise NotApplicable("no delimiter")
        del buf[px.end - 8:px.end]
    elif how == "offset_table":
        first = lay.elems[frags[0]]
        n = rng.choice([1, 2, 4, 8])
        table = struct.pack(("<" if lay.little else ">") + "I" * n, *[rng.randint(0, 2**32 - 1) for _ in range(n)])
        buf[first.value_off - 4:first.value_off - 4 + 4 + first.length] = _pack_len(len(table), 4, lay.little) + table
        info.update(entries=n)
    elif how == "zero_fragment":
        buf[e.value_off:e.end] = b"\0" * e.length
    elif how == "drop_fragment":
        del buf[e.start:e.end]
    else:
        if e.length < 4:
            raise NotApplicable("tiny fragment")
        for _ in range(rng.choice([1, 4, 16])):
            off = rng.randrange(e.value_off, e.end)
            buf[off] ^= rng.randint(1, 255)
    return _rebuild(lay, bytes(buf)), info


def m_swap(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    tops = [e for e in lay.elems if not e.meta and e.depth == 0]
    if len(tops) < 3:
        raise NotApplicable("too few elements")
    k = rng.randrange(0, len(tops) - 1)
    a, b = tops[k], tops[k + 1]
    body = lay.body[:a.start] + lay.body[b.start:b.end] + lay.body[a.start:a.end] + lay.body[b.end:]
    return _rebuild(lay, body), {"swapped": [f"{a.tag:08X}", f"{b.tag:08X}"]}


def m_garbage(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    how = rng.choice(["append", "append", "insert_top", "zeros"])
    n = rng.choice([1, 2, 7, 64, 1000])
    junk = bytes(rng.getrandbits(8) for _ in range(n)) if how != "zeros" else b"\0" * n
    if how in ("append", "zeros"):
        return lay.data + junk, {"how": how, "bytes": n}
    if lay.deflated:
        raise NotApplicable("deflated")
    tops = [e for e in lay.elems if not e.meta and e.depth == 0]
    at = rng.choice(tops).start
    body = lay.body[:at] + junk + lay.body[at:]
    return _rebuild(lay, body), {"how": how, "bytes": n, "at": at}


def m_deflate(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    if not lay.deflated:
        raise NotApplicable("not deflated")
    stream = lay.data[lay.meta_end:]
    head = lay.data[:lay.meta_end]
    how = rng.choice(["truncate_stream", "truncate_stream", "flip_stream", "flip_stream", "zlib_header",
                      "empty_stream", "garbage_stream", "truncate_inflated", "stored_uncompressed"])
    info: dict = {"how": how, "stream_bytes": len(stream)}
    if how == "truncate_stream":
        cut = _rand_offset(rng, 0, len(stream))
        info["cut"] = cut
        return head + stream[:cut], info
    if how == "flip_stream":
        s = bytearray(stream)
        offs = [rng.randrange(len(s)) for _ in range(rng.choice([1, 2, 8]))]
        for o in offs:
            s[o] ^= rng.randint(1, 255)
        info["offsets"] = offs
        return head + bytes(s), info
    if how == "zlib_header":  # zlib-wrapped instead of raw deflate
        return head + zlib.compress(lay.body), info
    if how == "empty_stream":
        return head, info
    if how == "garbage_stream":
        return head + bytes(rng.getrandbits(8) for _ in range(rng.choice([4, 100, 1000]))), info
    if how == "truncate_inflated":  # a valid stream holding a cut dataset
        cut = _rand_offset(rng, 1, len(lay.body))
        co = zlib.compressobj(6, zlib.DEFLATED, -15)
        info["cut"] = cut
        return head + co.compress(lay.body[:cut]) + co.flush(), info
    # the dataset stored without deflating under the deflate transfer syntax
    return head + lay.body, info


def m_dup_uid(lay: Layout, rng: random.Random, ctx) -> tuple[bytes, dict]:
    """Borrow another (workspace) sample's UIDs: same SOP Instance UID with other bytes, or joining its series."""
    donors = [k for k in ctx.donor_keys if k != ctx.key]
    if not donors:
        raise NotApplicable("no donor")
    donor = rng.choice(donors)
    dlay = _layout(donor)
    how = rng.choice(["same_sop", "same_sop", "same_series_new_sop"])
    names = ["StudyInstanceUID", "SeriesInstanceUID"] + (["SOPInstanceUID"] if how == "same_sop" else [])
    vals = {}
    for n in names:
        occ = [i for i in dlay.find(KW[n], meta=False) if dlay.elems[i].depth == 0]
        if not occ:
            raise NotApplicable(f"donor lacks {n}")
        vals[n] = _read_value(dlay, occ[0], "UI")
    if how == "same_series_new_sop":
        vals["SOPInstanceUID"] = "2.25." + str(int(hashlib.sha256(f"{ctx.key}:{rng.random()}".encode())
                                                    .hexdigest()[:30], 16))
    data = lay.data
    for n, v in [("StudyInstanceUID", vals["StudyInstanceUID"]), ("SeriesInstanceUID", vals["SeriesInstanceUID"]),
                 ("SOPInstanceUID", vals["SOPInstanceUID"]), ("MediaStorageSOPInstanceUID", vals["SOPInstanceUID"])]:
        cur = parse(data)
        meta = n.startswith("MediaStorage")
        occ = [i for i in cur.find(KW[n], meta=meta) if cur.elems[i].depth == 0]
        if not occ:
            if meta:
                continue
            raise NotApplicable(f"source lacks {n}")
        data = replace_span(cur, occ[0], _encode_value(n, "UI", v, cur.little))
    return data, {"how": how, "donor": donor, **{k: v for k, v in vals.items()}}


KINDS = {
    "truncate": (m_truncate, 3.0),
    "flip": (m_flip, 3.0),
    "bad_vr": (m_bad_vr, 1.5),
    "bad_length": (m_bad_length, 2.0),
    "set_value": (m_set_value, 6.0),
    "delete": (m_delete, 1.0),
    "fragments": (m_fragments, 1.0),
    "swap": (m_swap, 0.5),
    "garbage": (m_garbage, 0.5),
    "deflate": (m_deflate, 4.0),  # only deflated sources (applicability filters it)
    "dup_uid": (m_dup_uid, 1.0),
}


# ------------------------------------------------------------------------------------------ mutants

@dataclass
class Mutant:
    index: int  # position in the campaign (-1: made directly)
    source: str
    kind: str
    seed: int
    params: dict
    data: bytes

    @property
    def name(self) -> str:
        short = self.source.rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".dcm")
        return f"m{self.index:05d}-{self.kind}-{short}" if self.index >= 0 else f"m-{self.kind}-{short}-{self.seed}"

    def describe(self) -> dict:
        return {"index": self.index, "source": self.source, "kind": self.kind, "seed": self.seed,
                "params": self.params, "size": len(self.data),
                "sha256": hashlib.sha256(self.data).hexdigest()}


@dataclass
class _Ctx:
    key: str
    donor_keys: tuple[str, ...]


@cache
def _layout(key: str) -> Layout:
    return parse(load_source(key), lenient=True)


@cache
def sop_uid(key: str) -> str | None:
    lay = _layout(key)
    occ = [i for i in lay.find(KW["SOPInstanceUID"], meta=False) if lay.elems[i].depth == 0]
    return _read_value(lay, occ[0], "UI") if occ else None


def originals(keys: list[str]) -> list[str]:
    """The sources a workspace holds before fuzzing: the first source of each SOP Instance UID, no derived ones."""
    seen: set[str] = set()
    out = []
    for k in keys:
        if k.startswith("derived-"):
            continue
        uid = sop_uid(k)
        if uid in seen:
            continue
        seen.add(uid)
        out.append(k)
    return out


def make(source: str, kind: str, seed: int, *, index: int = -1, donors: list[str] | None = None) -> Mutant:
    """Build one mutant. Raises :class:`NotApplicable` when ``kind`` cannot apply to ``source``."""
    lay = _layout(source)
    fn, _ = KINDS[kind]
    rng = random.Random(f"{source}|{kind}|{seed}")
    ctx = _Ctx(source, tuple(donors if donors is not None else originals([s.key for s in sources_available()])))
    data, params = fn(lay, rng, ctx)
    if data == lay.data:
        raise NotApplicable("mutation left the bytes unchanged")
    return Mutant(index, source, kind, seed, params, data)


def spec(master_seed: int, index: int, sources: list[Source], attempt: int = 0) -> tuple[str, str, int]:
    """(source, kind, seed) drawn for mutant ``index`` of a campaign (deterministic; ``attempt`` > 0 redraws)."""
    rng = random.Random(f"sobre-fuzz|{master_seed}|{index}|{attempt}")
    src = rng.choices(sources, weights=[s.weight for s in sources])[0]
    kinds = [k for k in KINDS if k != "deflate" or _layout(src.key).deflated]
    weights = [KINDS[k][1] * (4.0 if k == "deflate" else 1.0) for k in kinds]
    kind = rng.choices(kinds, weights=weights)[0]
    return src.key, kind, rng.getrandbits(32)


def plan(master_seed: int, index: int, sources: list[Source] | None = None) -> Mutant:
    """The ``index``-th mutant of the campaign ``master_seed`` (retries inapplicable draws deterministically)."""
    sources = sources if sources is not None else sources_available()
    donors = originals([s.key for s in sources])
    for attempt in range(50):
        source, kind, seed = spec(master_seed, index, sources, attempt)
        try:
            return make(source, kind, seed, index=index, donors=donors)
        except (NotApplicable, WalkError):
            continue
    raise RuntimeError(f"no applicable mutation for index {index}")


# ------------------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="mutants.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("regen", help="rebuild one mutant from source, kind and seed")
    r.add_argument("--source", required=True)
    r.add_argument("--kind", required=True, choices=sorted(KINDS))
    r.add_argument("--seed", required=True, type=int)
    r.add_argument("--out", required=True)
    s = sub.add_parser("show", help="what plan() draws for a campaign index")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--index", type=int, required=True)
    s.add_argument("--out")
    sub.add_parser("sources", help="list the sources found on this machine")
    ns = ap.parse_args(argv)
    if ns.cmd == "sources":
        for src in sources_available():
            print(f"{src.key:55s} {src.note}")
        return 0
    m = make(ns.source, ns.kind, ns.seed) if ns.cmd == "regen" else plan(ns.seed, ns.index)
    if getattr(ns, "out", None):
        Path(ns.out).write_bytes(m.data)
    print(json.dumps(m.describe(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

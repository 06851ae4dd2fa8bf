"""The one DICOM Part 10 layer of Sobre: read, check and walk DICOM files and received datasets.

Every package that touches DICOM bytes goes through here (``sobre.image`` public names):

- :func:`read_header`: a file's header without its pixel data (a fast little-endian reader that
  gives pydicom the very same raw elements, with ``pydicom.dcmread`` for everything else), checked
  for completeness (:func:`check_complete`) and for consistency of the image module with the
  pixel data's length (:func:`check_pixel_length`) before any pixel is decoded.
- :func:`read_instance`: a whole instance, every value decoded (de-identification, DICOMweb push).
- :func:`received_facts`: the structural check of a dataset received over the network, from its
  bytes (the C-STORE listener).
- :func:`raw_value`: a number, code string or UID straight from the raw bytes of an element.

Errors are :class:`~sobre.errors.InputError` s naming the file, the tag, what was expected and what
was found: pydicom itself stops silently at the end of a file and decodes lazily, so a file cut
short or a header that contradicts its pixel data would otherwise surface later as a confusing
error (or a huge allocation).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sobre.errors import InputError, SobreError, describe_exception
from sobre.image._dicom_fast import read_header_fast
from sobre.image._lite import KEYWORDS, LiteDataset, NeedPydicom, read_lite

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom is imported where it is used (its import costs more than reading a series of 300 headers):
# a simple uncompressed file goes through :func:`read_header_lite` and never needs it.

__all__ = [
    "tag_name", "looks_like_dicom", "read_header", "read_instance", "check_complete", "check_raw_lengths",
    "check_pixel_length", "received_facts", "raw_value", "MEDIA_STORAGE_DIRECTORY", "verify_pixels", "DEFLATED",
    "expected_pixel_bytes", "pixel_module_problem", "header_int", "header_value", "codestream_problem",
]

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR's SOP class
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _tag_for_keyword(keyword: str) -> int | None:
    known = KEYWORDS.get(keyword)
    if known is not None:
        return known[0]
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword)


def _dictionary_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    return dictionary_VR(tag)


def tag_name(keyword: str) -> str:
    """``"ImagePositionPatient"`` → ``"(0020,0032) ImagePositionPatient"``."""
    t = _tag_for_keyword(keyword)
    if t is None:
        return keyword
    return f"({t >> 16:04X},{t & 0xFFFF:04X}) {keyword}"


# --------------------------------------------------------------------------- headers
def looks_like_dicom(path: str | Path) -> bool:
    """Cheap content sniff: 'DICM' at byte 128, or a plausible first group-0008/0002 tag."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) >= 8:
        for order in ("little", "big"):  # pre-Part-10 files: little- or big-endian group 0002/0008 first
            group = int.from_bytes(head[0:2], order)
            elem = int.from_bytes(head[2:4], order)
            if group in (0x0002, 0x0008) and elem < 0x0100:
                return True
    return False


def read_header(path: str | Path) -> Dataset:
    """Read a DICOM file's header, raising :class:`InputError` on bad input.

    Large values (pixel data) are not read: pydicom defers them, so ``"PixelData" in ds`` still
    tells whether the object holds pixels.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", path=path) from None
    if size == 0:
        raise InputError("file is empty (0 bytes)", path=path, expected="a DICOM file", found="0 bytes",
                         fix="re-export or re-transfer the file")
    ds = read_header_fast(path, defer_size=1024)  # the same dataset, faster; None where pydicom must read
    if ds is None and not looks_like_dicom(path):  # (the fast reader only reads files with the DICM prefix)
        raise InputError(
            "not a DICOM file", path=path,
            expected="'DICM' at byte 128 (DICOM Part 10) or a dataset starting with group 0008",
            found="neither", fix="check the file type; only DICOM, NIfTI, NRRD and PNG/JPEG/TIFF are read",
        )
    extent = size  # the byte count element offsets refer to (inflated bytes for a deflated file)
    if ds is None:
        ds, extent = _read_with_pydicom(path, size)
    if len(ds) == 0:
        # pydicom returns an empty dataset (and warns) when an element of undefined length runs to
        # the end of the file; that element is nearly always encapsulated (compressed) pixel data
        import pydicom

        try:
            head = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - any failure here means "no usable header" below
            head = None
        if head is not None and len(head) > 0:
            raise InputError(
                "pixel data is truncated: the compressed frames run past the end of the file",
                path=path, tag=tag_name("PixelData"),
                expected="a sequence delimiter (FFFE,E0DD) after the last fragment",
                found=f"the end of the file after {size} bytes",
                fix="the file was cut short (interrupted transfer or export); re-export or re-send it",
            )
    check_complete(ds, path, extent)
    fm = getattr(ds, "file_meta", None)
    if fm is not None:  # every later use of the transfer syntax may rely on it: a damaged one is refused here
        raw_value(fm, "TransferSyntaxUID", path)
    if len(ds) == 0 or "SOPClassUID" not in ds and "Modality" not in ds:
        raise InputError("DICOM dataset has neither a SOP Class UID nor a Modality: not an image object",
                         path=path, tag=tag_name("SOPClassUID"), expected="a DICOM image object",
                         found=f"{len(ds)} elements", fix="the file may be truncated or only a fragment")
    elements = getattr(ds, "_dict", None)
    if any(t in (elements if isinstance(elements, dict) else ds) for t in _PIXEL_TAGS):
        check_pixel_length(ds, path, strict=True)  # the image module against the pixel data, before decoding
    return ds


def read_header_lite(path: str | Path) -> LiteDataset | None:
    """:func:`read_header` without pydicom, for a simple file: a little-endian Part 10 file in a native
    (uncompressed) transfer syntax whose elements the fast reader walks. The same checks run on the
    same raw elements (:func:`check_complete`, the transfer syntax, :func:`check_pixel_length`);
    returns None where the file is not that simple, or where any check fails or needs a value only
    pydicom converts: :func:`read_header` then reads the file and raises its usual error."""
    path = Path(path)
    try:
        size = path.stat().st_size
        ds = read_lite(path) if size else None
        if ds is None or str(raw_value(ds.file_meta, "TransferSyntaxUID", path) or "") not in _NATIVE_LITTLE_ENDIAN:
            return None
        check_complete(ds, path, size)
        if len(ds) == 0 or "SOPClassUID" not in ds and "Modality" not in ds:
            return None
        if any(t in ds for t in _PIXEL_TAGS):
            check_pixel_length(ds, path, strict=True)
        return ds
    except (NeedPydicom, Exception):  # noqa: BLE001 - whatever it is, read_header says it as usual
        return None


DEFLATED = "1.2.840.10008.1.2.1.99"


def _read_with_pydicom(path: Path, size: int) -> tuple[Dataset, int]:
    """``pydicom.dcmread`` with its failures as :class:`InputError`; returns the dataset and the byte
    count its element offsets refer to (for a deflated file: the inflated dataset's length)."""
    import zlib

    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=1024, force=True)
    except zlib.error as exc:  # deflated transfer syntax: pydicom inflates the whole dataset first
        raise InputError(
            "deflated dataset cannot be inflated: the compressed stream is truncated or damaged", path=path,
            tag=tag_name("TransferSyntaxUID"), expected="a complete deflate stream (PS3.5 A.5)",
            found=f"zlib: {exc}", fix="the file was cut short or corrupted; re-export or re-send it",
        ) from None
    except SobreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes is bad input
        raise InputError(
            f"DICOM header cannot be parsed ({describe_exception(exc)})", path=path,
            fix="the file is probably truncated or corrupted; re-export it from the source",
        ) from None
    fm = getattr(ds, "file_meta", None)
    buffer = getattr(ds, "buffer", None)
    if fm is not None and str(raw_value(fm, "TransferSyntaxUID", path) or "") == DEFLATED and buffer is not None:
        here = buffer.tell()
        extent = buffer.seek(0, 2)  # pydicom read the inflated dataset from this in-memory buffer
        buffer.seek(here)
        return ds, extent
    return ds, size


def check_complete(ds: Dataset, path: Path, size: int) -> None:
    """Raise :class:`InputError` when pydicom stopped early because the file is cut short.

    pydicom silently returns the elements it could read when a file ends inside an element; the
    symptom is then a confusing "no pixel data". The last element read tells: its value runs past
    the end of the file (native pixel data cut short included), or (when no pixel data was
    reached) a few stray bytes follow it.

    ``size`` is the byte count the elements' offsets refer to: the file's size, or for a deflated
    file (transfer syntax 1.2.840.10008.1.2.1.99) the length of the inflated dataset, which is what
    :func:`read_header` passes (a deflate stream that is itself cut short fails earlier, when it is
    inflated).
    """
    keys = list(ds.keys())
    if not keys:
        return
    last = ds.get_item(keys[-1], keep_deferred=True)
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return
    end = tell + length
    if end == size or end < size and any(t in ds for t in _PIXEL_TAGS):
        return
    from pydicom.datadict import keyword_for_tag

    name = f"({last.tag >> 16:04X},{last.tag & 0xFFFF:04X}) {keyword_for_tag(last.tag) or 'private element'}"
    fix = "the file was cut short (interrupted transfer or export); re-export or re-send it"
    fm = getattr(ds, "file_meta", None)
    deflated = fm is not None and str(raw_value(fm, "TransferSyntaxUID", path) or "") == DEFLATED
    the_end = "the end of the inflated dataset" if deflated else "the end of the file"
    if end > size:
        raise InputError("file is truncated inside an element", path=path, tag=name,
                         expected=f"{length} bytes of value from byte {tell}",
                         found=f"{the_end} at byte {size}", fix=fix)
    raise InputError("file is truncated: it ends inside an element header", path=path,
                     expected=f"a complete element after byte {end}",
                     found=f"{size - end} stray byte(s) before {the_end}", fix=fix)


_FAST_TEXT_VRS = frozenset({"IS", "DS", "CS", "UI"})
_FAST_BINARY_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}
_TAGS: dict[str, int] = {}


def raw_value(ds: Dataset, keyword: str, path=None) -> Any:
    """``ds.get(keyword)`` for numbers, code strings and UIDs, parsed straight from the raw bytes.

    Returns None when the element is absent or empty, an ``int`` for binary integers, a ``str``
    (or a list of ``str`` for several values) for IS/DS/CS/UI text. About 15× faster than pydicom's
    value conversion, which matters when reading thousands of headers; anything unusual (other VRs,
    values already converted, odd lengths) goes through pydicom. A value pydicom cannot convert is an
    :class:`InputError` naming the tag and ``path`` (default: the dataset's ``filename``; a file meta
    dataset has none, so callers pass the file).
    """
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = _tag_for_keyword(keyword)
    elements = getattr(ds, "_dict", None)  # pydicom's element store: a plain dict keyed by tag
    if isinstance(elements, dict):
        elem = elements.get(tag)
        if elem is None:
            return None
    else:
        if tag not in ds:
            return None
        elem = ds.get_item(tag, keep_deferred=True)
    if isinstance(elem, tuple) and elem.value is not None:  # a raw element (pydicom's, or the lite reader's)
        vr = elem.VR or _dictionary_vr(tag)
        raw = elem.value
        if vr in _FAST_TEXT_VRS:
            text = raw.decode("latin-1").strip(" \x00")
            if not text:
                return None
            if "\\" in text:
                return [v.strip(" \x00") for v in text.split("\\")]
            return text
        if vr in _FAST_BINARY_VRS and len(raw) == 2 * (1 + (vr[1] == "L")):
            return int.from_bytes(raw, "little" if elem.is_little_endian else "big", signed=vr[0] == "S")
    try:
        value = ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a value it cannot convert
        raise _undecodable(ds, keyword, exc, path) from None
    return None if value is None or value == "" else value


def _undecodable(ds, keyword: str, exc: Exception, path=None) -> InputError:
    """The error for a header value pydicom cannot convert (unknown VR, bad bytes, ...)."""
    filename = path if path is not None else getattr(ds, "filename", None)
    return InputError("header value cannot be decoded", path=filename if isinstance(filename, (str, Path)) else None,
                      tag=tag_name(keyword), expected="a value of the element's VR",
                      found=f"{describe_exception(exc)}", fix=_FIX_HEADER)


def header_value(ds, keyword: str, path=None, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` with any failure to convert the value as an :class:`InputError`
    naming ``path`` and the tag (pydicom converts lazily, so a damaged value fails on first use)."""
    try:
        return ds.get(keyword, default)
    except Exception as exc:  # noqa: BLE001 - unknown VR (NotImplementedError), bad bytes, bad sequences ...
        err = _undecodable(ds, keyword, exc)
        if path is not None:
            err = InputError(err.what, path=path, tag=err.tag, expected=err.expected, found=err.found, fix=err.fix)
        raise err from None


def read_instance(src, *, force_no_meta: bool = True, decode_all: bool = True):
    """Read a DICOM instance completely, or raise :class:`InputError` saying why not.

    Accepts files with a preamble and also bare datasets without file meta (old ACR-NEMA style),
    rejects anything else, DICOMDIR files, datasets without SOP Class/Instance UID, and
    truncated elements or pixel data. ``decode_all`` decodes every value now (so a damaged value
    fails here); de-identification passes ``False``, decodes only what it needs and removes what
    it cannot decode.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = src if isinstance(src, (str, Path)) else None
    try:
        try:
            ds = pydicom.dcmread(src)
        except InvalidDicomError:
            if not force_no_meta:
                raise
            if hasattr(src, "seek"):
                src.seek(0)
            ds = pydicom.dcmread(src, force=True)
            if len(ds) == 0 or not ds.get("SOPInstanceUID"):
                raise InvalidDicomError("no DICOM preamble and no recognisable dataset")
        check_raw_lengths(ds, path)
        if decode_all:  # decode every element now, so a damaged file fails here and not half-way
            for _ in ds.iterall():
                pass
    except InvalidDicomError as exc:
        raise InputError("not a DICOM file", path=path, expected="a DICOM Part 10 file or dataset",
                         found=str(exc), fix="check the file; non-DICOM files cannot be de-identified") from None
    except SobreError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types (zlib.error for a damaged deflate
        # stream, struct.error, NotImplementedError for an unknown VR ...): all mean a damaged file
        if isinstance(exc, FileNotFoundError):
            raise InputError("file not found", path=path) from None
        raise InputError("damaged or truncated DICOM file", path=path, expected="a complete DICOM dataset",
                         found=f"{describe_exception(exc)}", fix="re-export or re-send the instance") from None
    if str(header_value(ds, "SOPClassUID", path, "")) == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise InputError("DICOMDIR is an index of a file set, not an instance", path=path,
                         tag="(0004,1220) DirectoryRecordSequence", fix="de-identify the files it lists and "
                         "build a new DICOMDIR for the output if one is needed")
    for kw, tag in (("SOPClassUID", "(0008,0016) SOPClassUID"), ("SOPInstanceUID", "(0008,0018) SOPInstanceUID")):
        if not str(header_value(ds, kw, path, "") or "").strip():
            raise InputError("not a DICOM instance: required attribute missing", path=path, tag=tag,
                             expected="a UID", found="nothing", fix="check that this is an image or object file")
    check_pixel_length(ds, path)
    return ds


def check_raw_lengths(ds, path=None) -> None:
    """Raise :class:`InputError` if an element's value is shorter than its declared length.

    pydicom reads a truncated file without complaint, returning the short last value; this check
    runs on the still-raw elements right after reading.
    """
    from pydicom.datadict import keyword_for_tag

    try:
        elements = list(ds.elements())  # top level, raw elements not decoded
    except SobreError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's hooks check raw values (a US of 3 bytes ...)
        raise InputError("damaged DICOM dataset: an element cannot be read", path=path,
                         expected="elements of the length their VR allows", found=f"{describe_exception(exc)}",
                         fix="re-export or re-send the instance") from None
    for raw in elements:
        length = getattr(raw, "length", None)
        value = raw.value if length is not None else None
        if isinstance(value, (bytes, bytearray)) and length != 0xFFFFFFFF and len(value) < length:
            tag = raw.tag
            raise InputError("truncated file: an element is shorter than its declared length", path=path,
                             tag=f"({tag.group:04X},{tag.element:04X}) {keyword_for_tag(tag) or 'private'}",
                             expected=f"{length} bytes",
                             found=f"{len(value)} bytes", fix="re-export or re-send the instance")


# --------------------------------------------------------------------------- the image pixel module
# Samples per pixel that each (known) PhotometricInterpretation implies (PS3.3 C.7.6.3.1.2).
_PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "HSV": 3, "YBR_FULL": 3,
    "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3,
    "ARGB": 4, "CMYK": 4,  # retired, 4 samples
}
_PIXEL_BITS = {"PixelData": None, "FloatPixelData": 32, "DoubleFloatPixelData": 64}
_FIX_HEADER = "the header is corrupted; re-export the file from the source"
_MEMORY: list[int] = []


def header_int(value: Any, default: int, path, keyword: str) -> int:
    """An integer header value (IS/US/...), or ``default`` when absent; :class:`InputError` naming the
    tag when it is not an integer."""
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if f.is_integer():
        return int(f)
    raise InputError("value is not an integer", path=path, tag=tag_name(keyword), expected="an integer",
                     found=repr(str(value)), fix="the header is corrupted; re-export the file")


def expected_pixel_bytes(rows: int, cols: int, frames: int, samples: int, bits: int, photometric: str = "") -> int:
    """Bytes of native (uncompressed) pixel data that an image module describes, before padding.

    pydicom's rule (PS3.5 8.1.1, PS3.3 C.7.6.3.1.2): ``rows × columns × samples × BitsAllocated / 8``
    per frame; 1-bit data is packed across frames and padded once, at the end; YBR_FULL_422 stores
    two thirds of the bytes. Stored data may carry one more byte (padding to an even length).

    Examples
    --------
    >>> expected_pixel_bytes(256, 256, 1, 1, 16)
    131072
    >>> expected_pixel_bytes(10, 10, 3, 1, 1)  # 300 bits
    38
    """
    pixels = rows * cols * samples
    if bits == 1:
        return (pixels * frames + 7) // 8
    frame = pixels * (bits // 8)
    if photometric == "YBR_FULL_422":
        frame = frame // 3 * 2
    return frame * frames


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (0 when unknown)."""
    if not _MEMORY:
        try:
            _MEMORY.append(int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES")))
        except (AttributeError, ValueError, OSError):
            _MEMORY.append(0)
    return _MEMORY[0]


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def pixel_module_problem(*, keyword: str, rows: int, cols: int, frames: int, samples: int, bits: int,
                         stored: int, photometric: str, representation: int, length: int | None,
                         encapsulated: bool, planar: int | None = None) -> dict | None:
    """The first inconsistency between an image pixel module and its pixel data element, or None.

    The one rule Sobre applies to every image header (files, received datasets, downloads): returns
    the :class:`InputError` keywords (``what``, ``tag``, ``expected``, ``found``, ``fix``) describing
    what is wrong. ``length`` is the pixel data element's *declared* length (None when unknown,
    ``0xFFFFFFFF`` for undefined length); ``frames`` is NumberOfFrames as read (0 counts as 1, as
    pydicom reads it); ``planar`` is PlanarConfiguration (None when absent). Nothing here reads
    pixel data.
    """
    if rows <= 0 or cols <= 0:
        return dict(what="image has no pixels", tag=f"{tag_name('Rows')} / {tag_name('Columns')}",
                    expected="positive Rows and Columns", found=f"{rows}×{cols}", fix=_FIX_HEADER)
    if rows > 0xFFFF or cols > 0xFFFF:
        return dict(what="value is out of range", tag=f"{tag_name('Rows')} / {tag_name('Columns')}",
                    expected="at most 65535 (US)", found=f"{rows}×{cols}", fix=_FIX_HEADER)
    fixed = _PIXEL_BITS.get(keyword)
    if fixed is not None and bits != fixed:
        return dict(what=f"{keyword} needs {fixed}-bit values", tag=tag_name("BitsAllocated"),
                    expected=str(fixed), found=str(bits), fix=_FIX_HEADER)
    if not (bits == 1 or bits % 8 == 0 and 8 <= bits <= 64):
        return dict(what="BitsAllocated is not a whole number of bytes", tag=tag_name("BitsAllocated"),
                    expected="1 or a multiple of 8 up to 64", found=str(bits), fix=_FIX_HEADER)
    if not 1 <= stored <= bits:
        return dict(what="BitsStored does not fit in BitsAllocated", tag=tag_name("BitsStored"),
                    expected=f"1 to {bits} (BitsAllocated)", found=str(stored), fix=_FIX_HEADER)
    if samples not in (1, 3, 4):
        return dict(what="unsupported number of samples per pixel", tag=tag_name("SamplesPerPixel"),
                    expected="1 (grey, palette) or 3 (colour)", found=str(samples), fix=_FIX_HEADER)
    implied = _PHOTOMETRIC_SAMPLES.get(photometric)
    if implied is not None and implied != samples or implied is None and samples == 4:
        want = f"{implied} sample(s) per pixel for {photometric}" if implied is not None else \
            "ARGB or CMYK for 4 samples per pixel"
        return dict(what="PhotometricInterpretation does not match SamplesPerPixel",
                    tag=tag_name("PhotometricInterpretation"), expected=want,
                    found=f"{photometric or 'none'} with SamplesPerPixel {samples}", fix=_FIX_HEADER)
    if samples > 1 and planar not in (None, 0, 1):
        return dict(what="PlanarConfiguration is neither interleaved nor planar", tag=tag_name("PlanarConfiguration"),
                    expected="0 (colour-by-pixel) or 1 (colour-by-plane)", found=str(planar), fix=_FIX_HEADER)
    if representation not in (0, 1):
        return dict(what="PixelRepresentation is neither unsigned nor signed", tag=tag_name("PixelRepresentation"),
                    expected="0 (unsigned) or 1 (signed)", found=str(representation), fix=_FIX_HEADER)
    if frames < 0:
        return dict(what="negative number of frames", tag=tag_name("NumberOfFrames"),
                    expected="a positive integer", found=str(frames), fix=_FIX_HEADER)
    frames = frames or 1

    def shape() -> str:
        return f"{rows}×{cols} × {frames} frame(s) × {samples} sample(s) × {bits} bits"

    decoded = rows * cols * frames * samples * max(1, bits // 8)
    memory = _MEMORY[0] if _MEMORY else _memory_bytes()
    if memory and decoded > memory:
        return dict(what="image is larger than this machine's memory", tag=tag_name("PixelData"),
                    expected=f"at most {_gib(memory)} of decoded pixels", found=f"{shape()} = {_gib(decoded)}",
                    fix="the header is probably corrupted ((0028,0010) Rows, (0028,0011) Columns or "
                        "(0028,0008) NumberOfFrames); re-export the file")
    if length is None:
        return None
    if encapsulated:
        if length != 0xFFFFFFFF:
            return dict(what="compressed pixel data is not encapsulated", tag=tag_name("PixelData"),
                        expected="an undefined length and a sequence of fragments (PS3.5 A.4)",
                        found=f"a defined length of {length} bytes",
                        fix="the transfer syntax is wrong or the file is damaged; re-export it")
        return None
    if length == 0xFFFFFFFF:
        return dict(what="native pixel data has an undefined length", tag=tag_name("PixelData"),
                    expected="uncompressed pixel data of defined length", found="encapsulated (compressed) data",
                    fix="the transfer syntax does not match the pixel data; re-export the file")
    expected = expected_pixel_bytes(rows, cols, frames, samples, bits, photometric)
    if length < expected:
        return dict(what="pixel data is shorter than the image module says", tag=tag_name(keyword),
                    expected=f"{expected} bytes ({shape()}"
                             + (", YBR_FULL_422" if photometric == "YBR_FULL_422" else "") + ")",
                    found=f"{length} bytes",
                    fix="the file was cut short, or (0028,0010) Rows, (0028,0011) Columns, (0028,0008) "
                        "NumberOfFrames, (0028,0002) SamplesPerPixel or (0028,0100) BitsAllocated is wrong; "
                        "re-export or re-send it")
    if photometric == "YBR_FULL_422":
        full = expected // 2 * 3
        if length >= full + full % 2:
            return dict(what="pixel data is a third larger than YBR_FULL_422 implies",
                        tag=tag_name("PhotometricInterpretation"), expected=f"{expected} bytes",
                        found=f"{length} bytes",
                        fix="the (0028,0004) PhotometricInterpretation value 'YBR_FULL_422' is probably "
                            "wrong and should be 'RGB' or 'YBR_FULL'")
    elif length > expected + expected % 2:
        # pydicom decodes every whole frame the data holds (its allow_excess_frames): more whole frames
        # than NumberOfFrames means the header describes another image than the one decoded
        whole = length * 8 // (rows * cols * samples * bits)
        if whole > frames:
            return dict(what="pixel data holds more frames than the image module says", tag=tag_name(keyword),
                        expected=f"{expected} bytes ({shape()}), plus at most one byte of padding",
                        found=f"{length} bytes: {whole} whole frames of {rows}×{cols} × {samples} sample(s) "
                              f"× {bits} bits",
                        fix="(0028,0008) NumberOfFrames, (0028,0010) Rows or (0028,0011) Columns is wrong or "
                            "missing; re-export the file")
    return None


def palette_problem(ds, bits: int) -> dict | None:
    """Why the palette colour lookup tables of ``ds`` cannot be applied, or None.

    Applies them (pydicom's ``apply_color_lut``, as decoding does) to a single pixel: the
    descriptors, the LUT data lengths and segmented tables (their segment types) are checked
    without decoding any pixel data.
    """
    import numpy as np
    from pydicom.pixels import apply_color_lut

    try:
        apply_color_lut(np.zeros((1, 1), dtype=np.uint8 if bits <= 8 else np.uint16), ds)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError, KeyError, TypeError ... on bad tables
        return dict(what="palette colour lookup table cannot be applied",
                    tag="(0028,1101-1103) / (0028,1201-1203) / (0028,1221-1223) palette colour lookup tables",
                    expected="descriptors (entries, first value, 8 or 16 bits) and LUT data of that length, or "
                             "valid segmented tables (PS3.3 C.7.6.3.1.5-6, C.7.9)",
                    found=describe_exception(exc), fix=_FIX_HEADER)
    return None


def fragments_problem(frames: int, offsets: int, fragments: int, empty: int = 0, begun: int | None = None,
                      ts: str = "") -> dict | None:
    """Encapsulated pixel data with fewer (or more) frames than NumberOfFrames (``offsets``: entries
    of the Basic Offset Table, 0 when empty; ``fragments``: items after it; ``empty``: how many of
    them hold no byte; ``begun``: how many begin a codestream, when known; ``ts``: the transfer
    syntax UID).

    More frames than NumberOfFrames is refused too: pydicom decodes every frame it finds (its
    ``allow_excess_frames``), so the decoded image would not be the one the header describes. The
    data tells when the offset table has more entries than frames, when more fragments begin a
    codestream than there are frames (JPEG family, JPEG 2000), and for RLE, whose frames are one
    fragment each (PS3.5 A.4.2), when there are more fragments than frames."""
    frames = frames or 1
    more = None
    if offsets > frames:
        more = f"{offsets} Basic Offset Table entries"
    elif begun is not None and begun > frames:
        more = f"{fragments} fragment(s), {begun} of them beginning a codestream"
    elif ts == RLE_LOSSLESS and fragments > frames:
        more = f"{fragments} RLE fragments (one per frame)"
    if more is not None:
        return dict(what="compressed pixel data holds more frames than NumberOfFrames", tag=tag_name("NumberOfFrames"),
                    expected=f"{frames} frame(s)", found=more,
                    fix="(0028,0008) NumberOfFrames is wrong or missing; re-export the file")
    if fragments == 0:
        return dict(what="compressed pixel data holds no fragment", tag=tag_name("PixelData"),
                    expected=f"{frames} frame(s)", found="no fragment", fix="re-export or re-send the file")
    if empty and fragments == frames:
        return dict(what="compressed pixel data holds an empty frame", tag=tag_name("PixelData"),
                    expected=f"{frames} frame(s) of compressed bytes, one fragment each",
                    found=f"{empty} empty fragment(s)", fix="the file is damaged; re-export or re-send it")
    if fragments < frames or 0 < offsets < frames:
        return dict(what="compressed pixel data holds fewer frames than NumberOfFrames", tag=tag_name("PixelData"),
                    expected=f"{frames} frames (at least one fragment each)",
                    found=f"{fragments} fragment(s)" + (f" and {offsets} offset table entries" if offsets else ""),
                    fix="frames are missing (damaged file) or (0028,0008) NumberOfFrames is wrong; re-export it")
    if begun is not None and not offsets and 0 < begun < frames:
        return dict(what="compressed pixel data holds fewer frames than NumberOfFrames", tag=tag_name("PixelData"),
                    expected=f"{frames} frames (each beginning a codestream)",
                    found=f"{fragments} fragment(s), {begun} of them beginning a codestream",
                    fix="frames are missing (damaged file) or (0028,0008) NumberOfFrames is wrong; re-export it")
    return None


def _frame_starts(uid: str) -> tuple[bytes, ...] | None:
    """How the first fragment of each frame begins for a transfer syntax (JPEG family: SOI; JPEG 2000:
    SOC, or a JP2 signature box); None when unknown (RLE, others)."""
    kind = next((k for prefix, k in _CODESTREAM_OF.items() if uid.startswith(prefix)), None)
    if kind in ("JPEG", "JPEG-LS"):
        return (b"\xff\xd8",)
    if kind == "JPEG 2000":
        return (b"\xff\x4f", b"\x00\x00\x00\x0c")
    return None


def _count_fragments(read, stop_after: int, starts: tuple[bytes, ...] | None = None) \
        -> tuple[int, int, int, int | None] | bool:
    """``(offset table entries, fragments, empty fragments, fragments that begin a frame)`` of
    encapsulated data, walking item headers with ``read(n_bytes, skip)`` (and the first 2 bytes of
    each fragment when ``starts`` gives the codestream's start markers; else None in last place);
    stops counting after ``stop_after`` fragments. False when the data is not a sequence of items
    (a truncation is :func:`check_complete`'s to report, not this)."""
    head = read(8, 0)
    if len(head) < 8:
        return False
    group, element, length = struct.unpack("<HHL", head)
    if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
        return False
    offsets, skip, fragments, empty, begun = length // 4, length, 0, 0, 0
    while fragments < stop_after:
        head = read(8, skip)
        if not head:
            break  # the end of a value read into memory (readers drop the sequence delimiter)
        if len(head) < 8:
            return False
        group, element, length = struct.unpack("<HHL", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return False
        fragments += 1
        empty += length == 0
        skip = length
        if starts is not None and length >= 4:
            first = read(4, 0)
            begun += first.startswith(starts)
            skip = length - len(first)
    return offsets, fragments, empty, begun if starts is not None else None


def _fragments(ds, elem, stop_after: int, starts: tuple[bytes, ...] | None = None) \
        -> tuple[int, int, int, int | None] | bool | None:
    """Fragment count of encapsulated pixel data, from its bytes in memory or from the file (item
    headers only: the frames themselves are never read); False when malformed, None when the
    bytes are out of reach."""
    value = getattr(elem, "value", None)
    if isinstance(value, (bytes, bytearray, memoryview)):
        buf, pos = memoryview(value), [0]

        def read(n: int, skip: int) -> bytes:
            pos[0] += skip
            out = bytes(buf[pos[0]:pos[0] + n])
            pos[0] += n
            return out

        return _count_fragments(read, stop_after, starts)
    tell = getattr(elem, "value_tell", None)
    filename = getattr(ds, "filename", None)
    if tell is None or not isinstance(filename, (str, os.PathLike)) or not os.path.isfile(filename):
        return None
    with open(filename, "rb") as fh:
        fh.seek(tell)

        def read_file(n: int, skip: int) -> bytes:
            if skip:
                fh.seek(skip, 1)
            return fh.read(n)

        return _count_fragments(read_file, stop_after, starts)


_TRANSFER_SYNTAXES: dict[str, tuple[bool, dict | None]] = {}
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit and explicit VR little endian
_MAX_FRAGMENTS = 1 << 20  # items walked at most (a frame of a cine loop per item: far fewer)


def _transfer_syntax(uid: str) -> tuple[bool, dict | None]:
    """``(encapsulated, why no installed decoder handles it or None)`` for a transfer syntax UID (cached)."""
    known = _TRANSFER_SYNTAXES.get(uid)
    if known is None:
        if uid in _NATIVE_LITTLE_ENDIAN:  # pydicom's native decoder needs only numpy: always available
            known = _TRANSFER_SYNTAXES[uid] = (False, None)
            return known
        import pydicom.uid
        from pydicom.pixels.decoders.base import get_decoder

        ts = pydicom.uid.UID(uid)
        try:
            encapsulated = bool(ts.is_transfer_syntax and ts.is_encapsulated)
        except (AttributeError, ValueError):
            encapsulated = False
        try:
            reason = None if get_decoder(ts).is_available else "no installed plugin decodes it"
        except (NotImplementedError, ValueError, AttributeError) as exc:
            reason = str(exc) or "unknown transfer syntax"
        problem = None
        if reason is not None:
            problem = dict(what="pixel data cannot be decoded: unsupported transfer syntax",
                           tag=tag_name("TransferSyntaxUID"), expected="a transfer syntax pydicom's decoders handle",
                           found=f"{uid}{f' ({ts.name})' if ts.name != uid else ''}: {reason}",
                           fix="convert the file (e.g. with dcmtk's dcmdjpeg or gdcmconv --raw), or install the "
                               "decoder plugin for this transfer syntax")
        known = _TRANSFER_SYNTAXES[uid] = (encapsulated, problem)
    return known


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _codestream_size(head: bytes) -> tuple[str, int, int, int] | None:
    """``(kind, rows, columns, components)`` from the start of a JPEG, JPEG-LS or JPEG 2000 codestream;
    None when it is none of these or its frame header lies beyond ``head``."""
    if head[4:8] == b"jP  ":  # a JP2 file (boxes) rather than a bare codestream: the codestream box
        at = head.find(b"jp2c")
        return _codestream_size(head[at + 4:]) if at >= 0 else None
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) >= 42:  # JPEG 2000: SOC, then SIZ
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, 8)
        comps = struct.unpack_from(">H", head, 40)[0]
        return "JPEG 2000", ysiz - yo, xsiz - xo, comps
    if head[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack_from(">H", head, pos + 2)[0]
        if marker in _JPEG_SOF or marker == 0xF7:  # SOFn, or JPEG-LS SOF55
            if pos + 10 > len(head):
                return None
            _, rows, cols, comps = struct.unpack_from(">BHHB", head, pos + 4)
            return ("JPEG-LS" if marker == 0xF7 else "JPEG"), rows, cols, comps
        pos += 2 + length
    return None


_CODESTREAM_OF = {  # transfer syntax (prefix) -> the codestream its fragments must hold
    "1.2.840.10008.1.2.4.8": "JPEG-LS", "1.2.840.10008.1.2.4.9": "JPEG 2000", "1.2.840.10008.1.2.4.20": "JPEG 2000",
    "1.2.840.10008.1.2.4.5": "JPEG", "1.2.840.10008.1.2.4.6": "JPEG", "1.2.840.10008.1.2.4.7": "JPEG",
}


def _uid_name(uid: str) -> str:
    import pydicom.uid

    return pydicom.uid.UID(uid).name


def codestream_problem(ts, head: bytes, *, rows: int, cols: int, samples: int, bits: int) -> dict | None:
    """The first frame's codestream header against the transfer syntax and the image module.

    ``head`` is the start of the first fragment. JPEG, JPEG-LS and JPEG 2000 frames must be the
    codestream their transfer syntax names, of Rows × Columns pixels (0 rows in a JPEG frame header
    — height given later — is not checked) and SamplesPerPixel components; RLE frames must have one
    segment per sample and byte. Anything unrecognised is left to the decoder.
    """
    uid = str(ts or "")
    if uid == "1.2.840.10008.1.2.5":  # RLE Lossless: a 64-byte header, segment count first
        if len(head) < 64:
            return None
        segments = struct.unpack_from("<L", head, 0)[0]
        want = samples * max(1, bits // 8)
        if segments != want:
            return dict(what="RLE frame has the wrong number of segments", tag=tag_name("PixelData"),
                        expected=f"{want} segment(s) ({samples} sample(s) × {max(1, bits // 8)} byte(s))",
                        found=f"{segments} segment(s)",
                        fix="(0028,0002) SamplesPerPixel or (0028,0100) BitsAllocated is wrong, or the data is "
                            "damaged; re-export the file")
        return None
    want = next((kind for prefix, kind in _CODESTREAM_OF.items() if uid.startswith(prefix)), None)
    if want is None:
        return None
    found = _codestream_size(head)
    if found is None:
        starts = _frame_starts(uid)
        if starts and not head.startswith(starts):
            return dict(what="compressed frame is not the codestream its transfer syntax names",
                        tag=tag_name("PixelData"), expected=f"a {want} codestream ({_uid_name(uid)})",
                        found=f"data beginning {head[:4].hex(' ')}",
                        fix="the (0002,0010) TransferSyntaxUID is wrong or the data is damaged; re-export the file")
        return None  # a frame header beyond what was read: the decoder decides
    kind, c_rows, c_cols, comps = found
    if kind != want:
        return dict(what="compressed frame is not the codestream its transfer syntax names", tag=tag_name("PixelData"),
                    expected=f"a {want} codestream ({_uid_name(uid)})", found=f"a {kind} codestream",
                    fix="the (0002,0010) TransferSyntaxUID is wrong; re-export the file")
    if (c_rows and c_rows != rows) or c_cols != cols:
        return dict(what="compressed frame size differs from Rows and Columns",
                    tag=f"{tag_name('Rows')} / {tag_name('Columns')}", expected=f"{rows}×{cols} (the header)",
                    found=f"{c_rows or '?'}×{c_cols} in the {kind} frame header",
                    fix="the header is corrupted (Rows or Columns); re-export the file")
    if comps != samples:
        return dict(what="compressed frame has another number of components than SamplesPerPixel",
                    tag=tag_name("SamplesPerPixel"), expected=f"{samples} (the header)",
                    found=f"{comps} in the {kind} frame header", fix=_FIX_HEADER)
    return None


def _first_fragment(ds, elem, n: int) -> bytes | None:
    """The first ``n`` bytes of the first fragment of encapsulated pixel data (after the offset
    table), from memory or from the file; None when out of reach or not item-structured."""
    value = getattr(elem, "value", None)
    if isinstance(value, (bytes, bytearray)):
        def read(at: int, size: int) -> bytes:
            return bytes(value[at:at + size])
    else:
        tell = getattr(elem, "value_tell", None)
        filename = getattr(ds, "filename", None)
        if tell is None or not isinstance(filename, (str, os.PathLike)) or not os.path.isfile(filename):
            return None
        fh = open(filename, "rb")  # noqa: SIM115 - closed below

        def read(at: int, size: int) -> bytes:
            fh.seek(tell + at)
            return fh.read(size)
    try:
        head = read(0, 8)
        if len(head) < 8 or head[:4] != b"\xfe\xff\x00\xe0":
            return None
        bot = struct.unpack_from("<L", head, 4)[0]
        item = read(8 + bot, 8)
        if len(item) < 8 or item[:4] != b"\xfe\xff\x00\xe0":
            return None
        return read(16 + bot, min(n, struct.unpack_from("<L", item, 4)[0]))
    except OSError:
        return None
    finally:
        if not isinstance(value, (bytes, bytearray)):
            fh.close()


def _text_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00").upper()


def check_pixel_length(ds, path=None, *, transfer_syntax=None, strict: bool = False) -> None:
    """Raise :class:`InputError` unless the image pixel module agrees with the pixel data element.

    The one header check of pixel data (:func:`read_header`, the listener, DICOMweb downloads and
    de-identification all call it): BitsAllocated is 1 or a multiple of 8 up to 64, BitsStored fits
    in it, SamplesPerPixel is 1 or 3 (4 for the retired ARGB/CMYK) and matches
    PhotometricInterpretation, NumberOfFrames is not negative, the decoded image fits in this
    machine's memory, native pixel data is at least as long as Rows × Columns × frames × samples ×
    bits say (:func:`expected_pixel_bytes`), and encapsulated data holds a fragment per frame.
    Only declared lengths and item headers are read, never deferred pixel data; values come from
    the raw bytes (:func:`raw_value`), so the check costs microseconds per file.

    ``transfer_syntax`` (a pydicom UID) is the encoding of ``ds`` when it has no file meta (a dataset
    received over the network). Datasets with pixel data but no Rows/Columns are not checked (the
    image readers refuse them by name). A module value that cannot be read as a number (or a
    missing BitsAllocated) makes the check impossible: ``strict`` (what :func:`read_header` asks
    for) refuses the file naming that tag; otherwise the dataset is passed on unchecked, as
    de-identification and the listener want (they keep what they do not decode). ``strict`` also
    refuses what no installed decoder can decode (an unknown transfer syntax, a palette image
    without its palette) and compressed frames whose codestream header contradicts the image
    module (:func:`codestream_problem`: JPEG, JPEG-LS and JPEG 2000 size and components, RLE
    segments; first frame, first 16 KiB only).
    """
    elements = getattr(ds, "_dict", None)  # pydicom's element store: a plain dict keyed by tag
    if not isinstance(elements, dict):
        elements = {int(t): ds.get_item(t, keep_deferred=True) for t in ds.keys()}
    tag = next((t for t in _PIXEL_TAGS if t in elements), None)
    if tag is None:
        if 0x00280010 in elements and 0x00280011 in elements:
            raise InputError("image without pixel data (truncated?)", path=path, tag="(7FE0,0010) PixelData",
                             expected="pixel data after (0028,0010) Rows and (0028,0011) Columns", found="none",
                             fix="re-export or re-send the instance")
        return
    if 0x00280010 not in elements or 0x00280011 not in elements:
        return  # not an image module we can check
    keyword = _PIXEL_KEYWORDS[_PIXEL_TAGS.index(tag)]
    where = path if path is not None else getattr(ds, "filename", None)

    def number(kw: str, default: int | None) -> int:
        value = raw_value(ds, kw)
        if value is None and default is None:
            raise InputError("image attribute missing", path=where, tag=tag_name(kw),
                             expected="a value (type 1 in the image pixel module)", found="no value",
                             fix=_FIX_HEADER)
        return header_int(value, default if default is not None else 0, where, kw)

    def us(t: int, kw: str, default: int | None) -> int:  # the common case inline: 2 raw bytes of a US
        elem = elements.get(t)
        if isinstance(elem, tuple) and elem.VR in ("US", None) and elem.value is not None \
                and len(elem.value) == 2:
            return int.from_bytes(elem.value, "little" if elem.is_little_endian else "big")
        return number(kw, default)

    if transfer_syntax is not None:
        uid = str(transfer_syntax)
    else:
        fm = getattr(ds, "file_meta", None)
        uid = str(raw_value(fm, "TransferSyntaxUID", where) or "") if fm is not None else ""
    encapsulated, undecodable = _transfer_syntax(uid) if uid else (False, None)
    try:
        rows, cols = us(0x00280010, "Rows", None), us(0x00280011, "Columns", None)
        bits = us(0x00280100, "BitsAllocated", _PIXEL_BITS[keyword])
        samples = us(0x00280002, "SamplesPerPixel", 1)
        frames = number("NumberOfFrames", 1) if 0x00280008 in elements else 1
        stored, representation = us(0x00280101, "BitsStored", bits), us(0x00280103, "PixelRepresentation", 0)
        written = raw_value(ds, "PhotometricInterpretation")
        photometric = _text_value(written)
        planar = us(0x00280006, "PlanarConfiguration", -1) if samples > 1 else -1
    except InputError:
        if strict:
            raise
        return  # not an image module that can be checked
    elem = elements[tag]  # never the value itself: it may be deferred
    length = getattr(elem, "length", None)
    if length is None:  # an element created in memory: its value is all there is
        value = getattr(elem, "value", None)
        length = len(value) if isinstance(value, (bytes, bytearray)) else None
    problem = pixel_module_problem(
        keyword=keyword, rows=rows, cols=cols, frames=frames, samples=samples, bits=bits, stored=stored,
        photometric=photometric, representation=representation, length=length, encapsulated=encapsulated,
        planar=None if planar < 0 else planar,
    )
    if problem is None and strict:
        if undecodable is not None and keyword == "PixelData":
            problem = dict(undecodable)
        elif keyword == "PixelData" and bits not in (1, 8, 16, 32, 64):
            problem = dict(what="pixel data cannot be decoded: no decoder handles this sample size",
                           tag=tag_name("BitsAllocated"), expected="1, 8, 16, 32 or 64", found=str(bits),
                           fix=_FIX_HEADER)
        elif samples == 4:
            problem = dict(what="pixel data cannot be decoded: no decoder handles 4 samples per pixel (the retired "
                                "ARGB and CMYK)", tag=tag_name("SamplesPerPixel"), expected="1 or 3", found="4",
                           fix="convert the image to RGB with the software that made it")
        elif photometric and photometric not in _PHOTOMETRIC_SAMPLES:
            problem = dict(what="unknown PhotometricInterpretation", tag=tag_name("PhotometricInterpretation"),
                           expected=", ".join(sorted(_PHOTOMETRIC_SAMPLES)), found=repr(photometric),
                           fix=_FIX_HEADER)
        elif photometric and _text_value(written).strip() != str(
                "\\".join(written) if isinstance(written, list) else written).strip(" \x00"):
            problem = dict(what="PhotometricInterpretation is not written in upper case (a code string)",
                           tag=tag_name("PhotometricInterpretation"), expected=repr(photometric),
                           found=repr(written), fix=_FIX_HEADER)
        elif photometric == "PALETTE COLOR" and 0x00281101 not in elements:
            problem = dict(what="palette colour image without a palette", tag=tag_name("PhotometricInterpretation"),
                           expected="(0028,1101-1103) palette colour lookup table descriptors and data",
                           found="PALETTE COLOR and no lookup table", fix=_FIX_HEADER)
        elif photometric == "PALETTE COLOR" and keyword == "PixelData":
            problem = palette_problem(ds, bits)
        elif samples > 1 and planar < 0 and 0x00280006 in elements:
            problem = dict(what="PlanarConfiguration has no value", tag=tag_name("PlanarConfiguration"),
                           expected="0 (colour-by-pixel) or 1 (colour-by-plane)", found="an empty value",
                           fix=_FIX_HEADER)
        elif photometric in ("YBR_FULL", "YBR_FULL_422") and (representation != 0 or bits != 8) \
                and keyword == "PixelData":
            # pydicom converts YBR_FULL(_422) to RGB, on unsigned 8-bit samples only
            problem = dict(what="YBR colour pixels must be unsigned 8-bit samples",
                           tag=f"{tag_name('PixelRepresentation')} / {tag_name('BitsAllocated')}",
                           expected=f"PixelRepresentation 0 and BitsAllocated 8 for {photometric}",
                           found=f"PixelRepresentation {representation}, BitsAllocated {bits}", fix=_FIX_HEADER)
    if problem is None and encapsulated and keyword == "PixelData":
        counted = _fragments(ds, elem, _MAX_FRAGMENTS, _frame_starts(uid))  # item headers
        if counted is False:
            problem = dict(what="compressed pixel data is not a sequence of items", tag=tag_name("PixelData"),
                           expected="a Basic Offset Table item (FFFE,E000), then one item per fragment (PS3.5 A.4)",
                           found="something else", fix="the file is damaged; re-export or re-send it")
        elif counted is not None:
            problem = fragments_problem(frames, *counted, ts=uid)
        if problem is None and strict:
            head = _first_fragment(ds, elem, 1 << 14)
            if head is not None:
                problem = codestream_problem(uid, head, rows=rows, cols=cols, samples=samples, bits=bits)
    if problem is not None:
        raise InputError(problem.pop("what"), path=where, **problem)


_VRS = frozenset(v.encode() for v in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT",
                                      "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST",
                                      "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"))
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"))
_QUICK_TAGS = {
    0x00080016: "sop_class", 0x00080018: "sop", 0x0020000D: "study", 0x0020000E: "series",
    0x00280002: "spp", 0x00280004: "photometric", 0x00280006: "planar", 0x00280008: "frames", 0x00280010: "rows",
    0x00280011: "columns", 0x00280100: "bits", 0x00280101: "stored", 0x00280103: "representation",
    0x7FE00008: "float", 0x7FE00009: "double",
    0x7FE00010: "pixels",
}
_QUICK_VRS = {"sop_class": b"UI", "sop": b"UI", "study": b"UI", "series": b"UI", "spp": b"US", "photometric": b"CS",
              "frames": b"IS", "rows": b"US", "columns": b"US", "bits": b"US", "stored": b"US", "planar": b"US",
              "representation": b"US"}


class _Odd(Exception):
    """Something the quick check does not vouch for (pydicom then decides)."""


def received_facts(buf: bytes, ts) -> tuple[str, str, str, str] | None:
    """``(SOP class, SOP instance, study, series)`` UIDs of a received dataset, read from its bytes.

    Returns the UIDs only when the dataset is surely complete: every element (and every item of
    undefined-length sequences) lies within the stream, the required UIDs are plain ASCII, and
    native pixel data is as long as Rows x Columns x frames x samples x bits say. Anything else,
    unusual or wrong, gives ``None``: the caller then decodes the dataset with pydicom and checks it
    the thorough way (which also gives the right failure status). The same verdict as decoding,
    without building an element object for each of the hundreds of elements of an instance.
    """

    if not ts.is_little_endian or ts.is_deflated or not buf:
        return None
    found: dict[str, bytes] = {}
    try:
        pos = _quick_dataset(buf, 0, len(buf), ts.is_implicit_VR, False, found, struct.unpack_from)
    except (_Odd, struct.error):
        return None
    if pos != len(buf):
        return None

    def text(name: str) -> str:
        raw = found.get(name)
        if raw is None:
            return ""
        if not raw.isascii() or b"\\" in raw:
            raise _Odd
        return raw.decode("ascii").rstrip("\x00 ").strip()

    try:
        uids = [text("sop_class"), text("sop"), text("study") or "no-study", text("series") or "no-series"]
        if not uids[0] or not uids[1]:
            return None
        pixels = found.get("pixels")
        if pixels is None:
            if "rows" in found and "columns" in found and "float" not in found and "double" not in found:
                return None  # image without pixel data: the thorough check says why
            return tuple(uids)

        def us(name: str, default: int | None = None) -> int:
            raw = found.get(name)
            if raw is None and default is not None:
                return default
            if raw is None or len(raw) != 2:
                raise _Odd
            return struct.unpack("<H", raw)[0]

        frames_text = text("frames")
        frames = int(frames_text) if frames_text else 1
        bits = us("bits")
        encapsulated = bool(ts.is_encapsulated)
        # the same rule as check_pixel_length (a file read back later must pass it too)
        if pixel_module_problem(
                keyword="PixelData", rows=us("rows"), cols=us("columns"), frames=frames, samples=us("spp", 1),
                bits=bits, stored=us("stored", bits), photometric=text("photometric").upper(),
                representation=us("representation", 0), length=0xFFFFFFFF if encapsulated else len(pixels),
                encapsulated=encapsulated, planar=us("planar") if "planar" in found else None) is not None:
            return None
        if encapsulated:
            data, at = memoryview(pixels), [0]

            def read(n: int, skip: int) -> bytes:
                at[0] += skip
                out = bytes(data[at[0]:at[0] + n])
                at[0] += n
                return out

            counted = _count_fragments(read, _MAX_FRAGMENTS, _frame_starts(str(ts)))
            if counted is False or fragments_problem(frames, *counted, ts=str(ts)) is not None:
                return None
    except (_Odd, ValueError):
        return None
    return tuple(uids)


# Value sizes of the binary VRs: a value whose length is not a multiple cannot be read back by pydicom.
_ITEM_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"FD": 8, b"AT": 4, b"SV": 8, b"UV": 8,
              b"OW": 2, b"OF": 4, b"OD": 8, b"OL": 4, b"OV": 8}
_DICT_SIZE: dict[int, int] = {}


def _implicit_item_size(tag: int) -> int:
    """Value size of a standard tag's VR for an implicit-VR stream (0: any length is fine; -1: a
    sequence, whose items pydicom parses when the value is read)."""
    size = _DICT_SIZE.get(tag)
    if size is None:
        size = 0
        if tag >> 16 & 1 == 0:  # private tags are UN: bytes
            try:
                vrs = {v.strip().encode() for v in _dictionary_vr(tag).split(" or ")}
            except (KeyError, ValueError):
                vrs = set()
            if vrs == {b"SQ"}:
                size = -1
            else:
                sizes = {_ITEM_SIZE.get(v, 0) for v in vrs}
                size = sizes.pop() if len(sizes) == 1 else 0
        _DICT_SIZE[tag] = size
    return size


def _quick_dataset(buf: bytes, pos: int, end: int, implicit: bool, in_item: bool, found, unpack) -> int:
    """Walk elements from ``pos``; returns the position after the dataset (raises :class:`_Odd`).

    A top-level dataset (``found`` is a dict) ends at ``end``; an undefined-length item ends at its
    Item Delimitation Item.
    """
    while pos < end:
        if pos + 8 > end:
            raise _Odd
        group, element, length = unpack("<HHL", buf, pos)
        if group == 0xFFFE:
            if in_item and element == 0xE00D and length == 0:
                return pos + 8
            raise _Odd
        if implicit:
            vr = None
            pos += 8
        else:
            vr, length = unpack("<2sH", buf, pos + 4)
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Odd
                length = unpack("<L", buf, pos + 8)[0]
                pos += 12
            elif vr in _VRS:
                pos += 8
            else:
                raise _Odd
        if length == 0xFFFFFFFF:
            if not (implicit or vr == b"SQ" or (vr == b"OB" and group == 0x7FE0 and found is not None)):
                raise _Odd  # undefined-length UN and the like: leave to pydicom
            start = pos
            pixels = ((group << 16) | element) == 0x7FE00010 and not implicit
            pos = _quick_items(buf, pos, end, None, implicit, unpack, fragments=pixels)
            if found is not None and ((group << 16) | element) == 0x7FE00010:
                found["pixels"] = buf[start:pos - 8]
            continue
        if pos + length > end:
            raise _Odd  # truncated
        if implicit or vr == b"UN":  # the dictionary's VR (pydicom reads a standard tag's UN value by it)
            size = _implicit_item_size((group << 16) | element)
        else:
            size = _ITEM_SIZE.get(vr, 0)
        if size < 0 or vr == b"SQ":
            # items checked too, as a full read decodes them (an implicit-VR sequence of defined
            # length, or a standard sequence received as UN, is implicit VR inside)
            _quick_items(buf, pos, end, pos + length, implicit or vr == b"UN", unpack)
        elif size and length % size:
            raise _Odd  # a binary value pydicom cannot read back (e.g. US of 3 bytes)
        if found is not None:
            name = _QUICK_TAGS.get((group << 16) | element)
            if name is not None:
                want = _QUICK_VRS.get(name)
                if want is not None and vr is not None and vr != want:
                    raise _Odd
                found[name] = buf[pos:pos + length]
        pos += length
    if in_item or pos != end:
        raise _Odd
    return pos


def _quick_items(buf: bytes, pos: int, end: int, seq_end: int | None, implicit: bool, unpack, *,
                 fragments: bool = False) -> int:
    """Walk the items of a sequence (or of encapsulated pixel data), each item's elements included;
    returns the position after it: ``seq_end`` for a defined length, else after its Sequence
    Delimitation Item."""
    while True:
        if seq_end is not None and pos == seq_end:
            return pos
        limit = end if seq_end is None else seq_end
        if pos + 8 > limit:
            raise _Odd
        group, element, length = unpack("<HHL", buf, pos)
        pos += 8
        if group != 0xFFFE:
            raise _Odd
        if element == 0xE0DD and seq_end is None:
            return pos
        if element != 0xE000:
            raise _Odd
        if length == 0xFFFFFFFF:
            if fragments:
                raise _Odd
            pos = _quick_dataset(buf, pos, limit, implicit, True, None, unpack)
        elif pos + length > limit:
            raise _Odd
        elif fragments:
            pos += length  # encapsulated pixel data: fragments are bytes, not datasets
        else:
            pos = _quick_dataset(buf, pos, pos + length, implicit, False, None, unpack)


def verify_pixels(path: str | Path) -> None:
    """Decode every frame of a file with compressed pixel data, one frame at a time (bounded memory).

    Damage inside a compressed codestream shows only when it is decoded; headers and lengths are
    checked by :func:`read_header`. Raises :class:`~sobre.errors.InputError` naming the file; does
    nothing for uncompressed data (its length was checked when the header was read).
    """
    from pydicom.filereader import read_file_meta_info
    from pydicom.pixels import iter_pixels
    from pydicom.uid import UID

    from sobre.errors import describe_exception

    try:
        ts = UID(str(read_file_meta_info(path).get("TransferSyntaxUID", "")))
        compressed = ts.is_compressed if ts.is_transfer_syntax else True
    except Exception:  # noqa: BLE001 - no file meta: decode to know
        compressed = True
    if not compressed:
        return
    try:
        for _ in iter_pixels(path, **decoder_options(path)):
            pass
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise many types (Rust panics are BaseExceptions)
        raise InputError(f"compressed pixel data cannot be decoded ({describe_exception(exc)})", path=path,
                         tag=tag_name("PixelData"),
                         fix="the file is damaged, cut short, or needs a decoder that is not installed") from None


RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def decoder_options(path: str | os.PathLike) -> dict:
    """Keyword arguments for pydicom's pixel functions on this file.

    RLE is decoded by pydicom's own decoder only: its fallback (pylibjpeg-rle, in Rust) panics on
    damaged segments and prints the panic on stderr before the error reaches Python.
    """
    from pydicom.filereader import read_file_meta_info

    try:
        ts = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
    except Exception:  # noqa: BLE001 - no file meta: the default decoders decide
        return {}
    return {"decoding_plugin": "pydicom"} if ts == RLE_LOSSLESS else {}

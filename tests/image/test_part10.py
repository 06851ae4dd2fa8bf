"""The Part 10 layer's header checks: deflate, the image pixel module against its pixel data, undecodable values.

What ``info`` accepts, ``export`` must decode: every inconsistency between the image module and the
pixel data is found when the header is read (``read_header`` → ``check_pixel_length``, the one
rule the listener's ``received_facts`` applies too), from declared lengths and item headers only.
Malformed files are built from bytes (pydicom ``tests/test_filereader.py`` style) or mutated from
real samples.
"""

from __future__ import annotations

import re
import struct
import time
import warnings
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless

import sobre
from sobre.errors import InputError
from sobre.image import check_pixel_length, expected_pixel_bytes, raw_value, read_header, received_facts


# --------------------------------------------------------------------------- building files from bytes
def elem(group: int, element: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian data element (``length`` 0xFFFFFFFF for undefined)."""
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    n = len(value) if length is None else length
    head = struct.pack("<HH", group, element) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + b"\x00\x00" + struct.pack("<I", n) + value
    return head + struct.pack("<H", n) + value


def us(group: int, element: int, v: int) -> bytes:
    return elem(group, element, "US", struct.pack("<H", v))


def part10(body: bytes, ts: str = "1.2.840.10008.1.2.1") -> bytes:
    meta = (elem(2, 1, "OB", b"\x00\x01") + elem(2, 2, "UI", b"1.2.840.10008.5.1.4.1.1.7")
            + elem(2, 3, "UI", b"1.2.3.4") + elem(2, 0x10, "UI", ts.encode()))
    return b"\x00" * 128 + b"DICM" + elem(2, 0, "UL", struct.pack("<I", len(meta))) + meta + body


def image(*, rows=2, cols=2, bits=16, stored=None, spp=1, photometric="MONOCHROME2", frames=None, signed=0,
          pixels=None, pixel_length=None, extra=b"", encapsulated=None) -> bytes:
    """The dataset of a secondary capture image (no file meta); ``encapsulated``: a list of fragments."""
    body = (elem(8, 0x16, "UI", b"1.2.840.10008.5.1.4.1.1.7") + elem(8, 0x18, "UI", b"1.2.3.4")
            + elem(8, 0x60, "CS", b"OT") + elem(0x20, 0x0D, "UI", b"1.2.3") + elem(0x20, 0x0E, "UI", b"1.2.3.5"))
    body += extra + us(0x28, 2, spp) + elem(0x28, 4, "CS", photometric.encode())
    if frames is not None:
        body += elem(0x28, 8, "IS", str(frames).encode())
    body += us(0x28, 0x10, rows) + us(0x28, 0x11, cols)
    stored = bits if stored is None else stored
    body += us(0x28, 0x100, bits) + us(0x28, 0x101, stored) + us(0x28, 0x102, max(stored - 1, 0)) + us(0x28, 0x103, signed)
    if encapsulated is not None:
        items = struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # empty basic offset table
        for frag in encapsulated:
            items += struct.pack("<HHL", 0xFFFE, 0xE000, len(frag)) + frag
        items += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        return body + elem(0x7FE0, 0x10, "OB", items, 0xFFFFFFFF)
    if pixels is None:
        n = expected_pixel_bytes(rows, cols, frames or 1, spp, bits, photometric)
        pixels = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    return body + elem(0x7FE0, 0x10, "OB" if bits <= 8 else "OW", pixels, pixel_length)


def write(tmp_path, name: str, data: bytes):
    p = tmp_path / f"{name}.dcm"
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------- the rule
def test_expected_bytes_follow_pydicom():
    assert expected_pixel_bytes(256, 256, 1, 1, 16) == 131072
    assert expected_pixel_bytes(10, 10, 3, 1, 1) == 38  # 1-bit: packed across frames, padded once
    assert expected_pixel_bytes(4, 4, 2, 3, 8, "YBR_FULL_422") == 64  # two thirds of 96
    assert expected_pixel_bytes(3, 3, 1, 1, 8) == 9  # odd: stored padded to 10


def test_a_consistent_image_built_from_bytes_reads(tmp_path):
    p = write(tmp_path, "ok", part10(image(rows=2, cols=3)))
    ds = read_header(p)
    assert raw_value(ds, "Rows") == 2
    assert sobre.load(p).shape == (3, 2)


def test_odd_length_8_bit_data_padded_to_even_reads(tmp_path):
    p = write(tmp_path, "odd", part10(image(rows=3, cols=3, bits=8, pixels=bytes(range(9)))))
    assert len(pydicom.dcmread(p).PixelData) == 10  # 9 bytes + the padding byte
    assert np.array_equal(sobre.load(p).array, np.arange(9, dtype=np.uint8).reshape(3, 3).T)


BAD_MODULES = {
    # name: (dataset bytes, the message after "<file>: ")
    "rows_65535": (image(rows=65535, cols=2, pixels=bytes(8)),
                   r"\(7FE0,0010\) PixelData: pixel data is shorter than the image module says \(expected 262140 "
                   r"bytes \(65535×2 × 1 frame\(s\) × 1 sample\(s\) × 16 bits\); found 8 bytes\)\. the file was cut "
                   r"short, or \(0028,0010\) Rows"),
    "bits_7": (image(bits=7, stored=7, pixels=bytes(4)),
               r"\(0028,0100\) BitsAllocated: BitsAllocated is not a whole number of bytes \(expected 1 or a multiple "
               r"of 8 up to 64; found 7\)"),
    "bits_72": (image(bits=72, stored=12, pixels=bytes(36)),
                r"\(0028,0100\) BitsAllocated: BitsAllocated is not a whole number of bytes"),
    "stored_17": (image(bits=16, stored=17),
                  r"\(0028,0101\) BitsStored: BitsStored does not fit in BitsAllocated \(expected 1 to 16 "
                  r"\(BitsAllocated\); found 17\)"),
    "samples_2": (image(spp=2, pixels=bytes(16)),
                  r"\(0028,0002\) SamplesPerPixel: unsupported number of samples per pixel \(expected 1 \(grey, "
                  r"palette\) or 3 \(colour\); found 2\)"),
    "rgb_one_sample": (image(photometric="RGB"),
                       r"\(0028,0004\) PhotometricInterpretation: PhotometricInterpretation does not match "
                       r"SamplesPerPixel \(expected 3 sample\(s\) per pixel for RGB; found RGB with SamplesPerPixel 1\)"),
    "grey_three_samples": (image(spp=3, bits=8),
                           r"\(0028,0004\) PhotometricInterpretation: PhotometricInterpretation does not match "
                           r"SamplesPerPixel \(expected 1 sample\(s\) per "
                           r"pixel for MONOCHROME2; found MONOCHROME2 with SamplesPerPixel 3\)"),
    "four_samples_rgb": (image(spp=4, bits=8, photometric="RGB"),
                         r"\(0028,0004\) PhotometricInterpretation: PhotometricInterpretation does not match "
                         r"SamplesPerPixel \(expected 3 sample\(s\) per pixel for RGB; found RGB with SamplesPerPixel 4\)"),
    "frames_negative": (image(frames=-2, pixels=bytes(8)),
                        r"\(0028,0008\) NumberOfFrames: negative number of frames \(expected a positive integer; "
                        r"found -2\)"),
    "representation_2": (image(signed=2),
                         r"\(0028,0103\) PixelRepresentation: PixelRepresentation is neither unsigned nor signed"),
    "frames_missing_data": (image(rows=4, cols=4, frames=3, pixels=bytes(64)),
                            r"\(7FE0,0010\) PixelData: pixel data is shorter than the image module says \(expected 96 bytes \(4×4 × 3 "
                            r"frame\(s\) × 1 sample\(s\) × 16 bits\); found 64 bytes\)"),
    "ybr_422_a_third_larger": (image(rows=4, cols=4, spp=3, bits=8, photometric="YBR_FULL_422", pixels=bytes(48)),
                               r"\(0028,0004\) PhotometricInterpretation: pixel data is a third larger than "
                               r"YBR_FULL_422 implies \(expected 32 bytes; found 48 bytes\)\. the \(0028,0004\) "
                               r"PhotometricInterpretation value 'YBR_FULL_422' is probably wrong"),
    "rows_not_us": (image().replace(us(0x28, 0x10, 2), elem(0x28, 0x10, "ZZ", b"\x02\x00")),
                    r"\(0028,0010\) Rows: header value cannot be decoded \(expected a value of the element's VR; "
                    r"found NotImplementedError: Unknown Value Representation 'ZZ'"),
    "no_bits_allocated": (image().replace(us(0x28, 0x100, 16), b""),
                          r"\(0028,0100\) BitsAllocated: image attribute missing"),
}


UNREADABLE_MODULES = {"rows_not_us", "no_bits_allocated"}


@pytest.mark.parametrize("name", sorted(BAD_MODULES))
def test_inconsistent_image_modules_are_refused_when_the_header_is_read(tmp_path, name):
    data, message = BAD_MODULES[name]
    p = write(tmp_path, name, part10(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=rf"{name}\.dcm: {message}"):
            read_header(p)
        with pytest.raises(InputError, match=rf"{name}\.dcm: {message}"):
            sobre.load_all(p)  # what info shows: refused before any pixel is decoded


@pytest.mark.parametrize("name", sorted(BAD_MODULES))
def test_listener_and_deidentification_apply_the_same_rule(tmp_path, name):
    """check_pixel_length on a fully decoded dataset says what read_header says (unless the module
    cannot be read at all and the caller is not strict); received_facts never vouches for the
    dataset (the listener then runs check_pixel_length)."""
    data, message = BAD_MODULES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert received_facts(data, UID(ExplicitVRLittleEndian)) is None
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), force=True)
        with pytest.raises(InputError, match=rf"^{message}"):
            check_pixel_length(ds, transfer_syntax=UID(ExplicitVRLittleEndian), strict=True)
        if name in UNREADABLE_MODULES:  # nothing to check against: de-identification keeps such files
            check_pixel_length(ds, transfer_syntax=UID(ExplicitVRLittleEndian))
        else:
            with pytest.raises(InputError, match=rf"^{message}"):
                check_pixel_length(ds, transfer_syntax=UID(ExplicitVRLittleEndian))
    good = image(rows=2, cols=3)
    assert received_facts(good, UID(ExplicitVRLittleEndian)) == ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", "1.2.3",
                                                                "1.2.3.5")


def test_zero_frames_read_as_one_as_pydicom_reads_them(tmp_path):
    p = write(tmp_path, "zero_frames", part10(image(frames=0)))
    assert sobre.load(p).shape == (2, 2)
    assert received_facts(image(frames=0), UID(ExplicitVRLittleEndian)) is not None


def test_rows_65535_on_a_real_segmentation_is_refused_at_once(tmp_path, pydicom_data):
    ds = pydicom.dcmread(pydicom_data / "liver.dcm")
    ds.Rows = 65535
    ds.save_as(tmp_path / "seg.dcm")
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"seg\.dcm: \(7FE0,0010\) PixelData: pixel data is shorter than the image "
                                         r"module says \(expected 12582720 bytes \(65535×512 × 3 frame\(s\) × 1 "
                                         r"sample\(s\) × 1 bits\); found 98304 bytes\)"):
        sobre.load_all(tmp_path / "seg.dcm")
    assert time.perf_counter() - start < 2.0


def test_header_check_reads_declared_lengths_not_deferred_pixels(tmp_path, pydicom_test_files, monkeypatch):
    import pydicom.filereader

    def refuse(*args, **kwargs):
        raise AssertionError("deferred pixel data was read")

    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", refuse)
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
                 "rtdose.dcm", "MR_small_bigendian.dcm"):
        ds = read_header(pydicom_test_files / name)
        check_pixel_length(ds, pydicom_test_files / name)


# --------------------------------------------------------------------------- compressed data
def test_compressed_image_with_fewer_frames_than_number_of_frames(tmp_path, pydicom_test_files):
    ds = pydicom.dcmread(pydicom_test_files / "MR_small_jp2klossless.dcm")
    ds.NumberOfFrames = 3
    ds.save_as(tmp_path / "j2k_frames.dcm")
    with pytest.raises(InputError, match=r"j2k_frames\.dcm: \(7FE0,0010\) PixelData: compressed pixel data holds fewer "
                                         r"frames than NumberOfFrames \(expected 3 frames \(at least one fragment "
                                         r"each\); found 1 fragment\(s\)\)"):
        sobre.load_all(tmp_path / "j2k_frames.dcm")


def test_real_multiframe_with_frames_removed_is_refused(tmp_path, pydicom_data):
    ds = pydicom.dcmread(pydicom_data / "emri_small_jpeg_2k_lossless.dcm")
    n = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    ds.PixelData = encapsulate(frames[: n - 2])
    ds.save_as(tmp_path / "fewer.dcm")
    with pytest.raises(InputError, match=rf"fewer\.dcm: .*fewer frames than NumberOfFrames \(expected {n} frames "
                                         rf"\(at least one fragment each\); found {n - 2} fragment\(s\) and {n - 2} offset table "
                                         rf"entries\)"):
        sobre.load(tmp_path / "fewer.dcm")


def test_absurd_decoded_size_is_refused_before_any_allocation(tmp_path, pydicom_test_files):
    ds = pydicom.dcmread(pydicom_test_files / "MR_small_jp2klossless.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 100000  # 858 TB decoded
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(InputError, match=r"huge\.dcm: \(7FE0,0010\) PixelData: image is larger than this machine's "
                                         r"memory \(expected at most [\d.]+ GiB of decoded pixels; found 65535×65535 × "
                                         r"100000 frame\(s\) × 1 sample\(s\) × 16 bits = [\d.]+e\+05 GiB\)\. the header is "
                                         r"probably corrupted"):
        sobre.load_all(tmp_path / "huge.dcm")


def test_volume_larger_than_available_memory_is_refused_before_allocating(tmp_path, rng, monkeypatch):
    from sobre.image import _dicom

    sobre.write_dicom_series(sobre.Image(rng.integers(0, 9, (6, 5, 4)).astype(np.int16), np.eye(4),
                                         modality="CT"), tmp_path)
    img = sobre.load(tmp_path)
    monkeypatch.setattr(_dicom, "_available_memory", lambda: 100)
    with pytest.raises(InputError, match=r"IM0001\.dcm: \(7FE0,0010\) PixelData: image does not fit in the memory "
                                         r"available \(expected at most 9\.31e-08 GiB \(available now\); found "
                                         r"2\.24e-07 GiB for shape \(6, 5, 4\) u?int16\)"):
        img.array  # noqa: B018


def test_encapsulated_data_that_is_not_a_sequence_of_items(tmp_path):
    body = image(encapsulated=[]).replace(struct.pack("<HHL", 0xFFFE, 0xE000, 0), b"\x00" * 8, 1)
    p = write(tmp_path, "no_items", part10(body, ts=JPEG2000Lossless))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"no_items\.dcm: \(7FE0,0010\) PixelData: compressed pixel data is not "
                                             r"a sequence of items"):
            read_header(p)


def test_compressed_data_without_fragments(tmp_path):
    p = write(tmp_path, "no_fragment", part10(image(encapsulated=[]), ts=JPEG2000Lossless))
    with pytest.raises(InputError, match=r"no_fragment\.dcm: \(7FE0,0010\) PixelData: compressed pixel data holds no "
                                         r"fragment"):
        read_header(p)
    assert received_facts(image(encapsulated=[]), UID(JPEG2000Lossless)) is None
    assert received_facts(image(encapsulated=[b"\xff\x4f\xff\x51"]), UID(JPEG2000Lossless)) is not None


# --------------------------------------------------------------------------- deflate
def _deflate_parts(path):
    data = path.read_bytes()
    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        meta_end = fh.tell()
    return data, meta_end


def test_deflated_file_is_complete_although_offsets_pass_the_file_size(pydicom_test_files):
    path = pydicom_test_files / "image_dfl.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_header(path)
        pixels = ds.get_item("PixelData", keep_deferred=True)
        # offsets count inflated bytes: a check against the file's size would call this file truncated
        assert pixels.value_tell + pixels.length > path.stat().st_size
        assert sobre.load(path).shape == (512, 512)


@pytest.mark.parametrize("cut", [10, 1000, -200])
def test_truncated_deflate_stream_is_an_input_error(tmp_path, pydicom_test_files, cut):
    data, meta_end = _deflate_parts(pydicom_test_files / "image_dfl.dcm")
    p = write(tmp_path, "dfl_cut", data[: meta_end + cut] if cut > 0 else data[:cut])
    with pytest.raises(InputError, match=r"dfl_cut\.dcm: \(0002,0010\) TransferSyntaxUID: deflated dataset cannot be "
                                         r"inflated: the compressed stream is truncated or damaged \(expected a "
                                         r"complete deflate stream \(PS3\.5 A\.5\); found zlib: Error -5 while "
                                         r"decompressing data: incomplete or truncated stream\)"):
        sobre.load_all(p)


def test_damaged_deflate_stream_is_an_input_error(tmp_path, pydicom_test_files):
    data, meta_end = _deflate_parts(pydicom_test_files / "image_dfl.dcm")
    p = write(tmp_path, "dfl_bad", data[:meta_end] + bytes([data[meta_end] ^ 0xFF]) + data[meta_end + 1:])
    with pytest.raises(InputError, match=r"dfl_bad\.dcm: \(0002,0010\) TransferSyntaxUID: deflated dataset cannot be "
                                         r"inflated.*found zlib: Error -3"):
        sobre.load_all(p)


def test_complete_deflate_stream_of_a_truncated_dataset(tmp_path, pydicom_test_files):
    data, meta_end = _deflate_parts(pydicom_test_files / "image_dfl.dcm")
    inflated = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    p = write(tmp_path, "dfl_short", data[:meta_end] + packer.compress(inflated[:-1000]) + packer.flush())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"dfl_short\.dcm: \(7FE0,0010\) PixelData: file is truncated inside an "
                                             r"element \(expected 262144 bytes of value from byte \d+; found the end of "
                                             r"the inflated dataset at byte \d+\)"):
            read_header(p)


# --------------------------------------------------------------------------- values pydicom cannot convert
def _set_raw(src, dst, keyword, vr, value):
    ds = pydicom.dcmread(src)
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(dst)


@pytest.mark.parametrize("keyword, tag", [("SeriesDescription", "(0008,103E)"), ("ImagePositionPatient", "(0020,0032)"),
                                          ("PixelSpacing", "(0028,0030)"), ("Modality", "(0008,0060)")])
def test_unknown_vr_of_a_value_in_use_names_the_file_and_tag(tmp_path, pydicom_test_files, keyword, tag):
    _set_raw(pydicom_test_files / "CT_small.dcm", tmp_path / "zz.dcm", keyword, "ZZ", b"1\\2\\3 ")
    with pytest.raises(InputError, match=rf"zz\.dcm: {re.escape(tag)} {keyword}: header "
                                         r"value cannot be decoded \(expected a value of the element's VR; found "
                                         r"NotImplementedError: Unknown Value Representation 'ZZ'"):
        sobre.load_all(tmp_path / "zz.dcm")


def test_unknown_vr_of_a_value_not_in_use_is_harmless(tmp_path, pydicom_test_files):
    _set_raw(pydicom_test_files / "CT_small.dcm", tmp_path / "zz.dcm", "ReferringPhysicianName", "ZZ", b"x\\y ")
    assert sobre.load(tmp_path / "zz.dcm").shape == (128, 128)


def test_broken_functional_group_sequence_names_the_file_and_tag(tmp_path, pydicom_data):
    _set_raw(pydicom_data / "eCT_Supplemental.dcm", tmp_path / "enh.dcm", "PerFrameFunctionalGroupsSequence", "SQ",
             b"\xfe\xff\x00\xe0\x10\x00\x00\x00" + b"\x28\x00\x10\x00ZZ\x02\x00\x01\x00" + b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"enh\.dcm: \(5200,9230\) PerFrameFunctionalGroupsSequence: "):
            sobre.load_all(tmp_path / "enh.dcm")


# --------------------------------------------------------------------------- what no decoder can decode
def _mutate(src, dst, **values):
    ds = pydicom.dcmread(src)
    for keyword, value in values.items():
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, keyword, value)
    ds.save_as(dst, enforce_file_format=False)
    return dst


def test_planar_configuration_must_be_0_or_1(tmp_path, pydicom_data):
    p = _mutate(pydicom_data / "SC_rgb.dcm", tmp_path / "planar.dcm", PlanarConfiguration=32768)
    with pytest.raises(InputError, match=r"planar\.dcm: \(0028,0006\) PlanarConfiguration: PlanarConfiguration is "
                                         r"neither interleaved nor planar \(expected 0 \(colour-by-pixel\) or 1 "
                                         r"\(colour-by-plane\); found 32768\)"):
        sobre.load_all(p)


@pytest.mark.parametrize("uid, found", [("1.2.3.4.5", r"1\.2\.3\.4\.5: No pixel data decoders have been implemented"),
                                        ("1.2.840.10008.1.2.4.100", r"1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2 Main "
                                                                    r"Profile / Main Level\): No pixel data decoders")])
def test_unsupported_transfer_syntax_is_refused_at_header_time(tmp_path, pydicom_test_files, uid, found):
    src = "CT_small.dcm" if uid == "1.2.3.4.5" else "MR_small_jp2klossless.dcm"  # native / encapsulated data
    p = _mutate(pydicom_test_files / src, tmp_path / "ts.dcm", TransferSyntaxUID=uid)
    with pytest.raises(InputError, match=rf"ts\.dcm: \(0002,0010\) TransferSyntaxUID: pixel data cannot be decoded: "
                                         rf"unsupported transfer syntax \(expected a transfer syntax pydicom's "
                                         rf"decoders handle; found {found}"):
        sobre.load_all(p)


def test_empty_transfer_syntax_reads_and_decodes_as_the_file_is_encoded(tmp_path, pydicom_test_files):
    p = _mutate(pydicom_test_files / "CT_small.dcm", tmp_path / "no_ts.dcm", TransferSyntaxUID="")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = sobre.load(p)
        assert np.array_equal(img.array, sobre.load(pydicom_test_files / "CT_small.dcm").array)


def test_palette_colour_without_a_palette(tmp_path, pydicom_test_files):
    p = _mutate(pydicom_test_files / "CT_small.dcm", tmp_path / "palette.dcm", PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(InputError, match=r"palette\.dcm: \(0028,0004\) PhotometricInterpretation: palette colour image "
                                         r"without a palette"):
        sobre.load_all(p)


@pytest.mark.parametrize("name, changes, message", [
    ("MR_small_jp2klossless.dcm", {"Rows": 65}, r"\(0028,0010\) Rows / \(0028,0011\) Columns: compressed frame size "
     r"differs from Rows and Columns \(expected 65×64 \(the header\); found 64×64 in the JPEG 2000 frame header\)"),
    ("SC_rgb_jpeg_dcmtk.dcm", {"Columns": 1}, r".*compressed frame size differs from Rows and Columns \(expected 100×1 "
     r"\(the header\); found 100×100 in the JPEG frame header\)"),
    ("MR_small_jpeg_ls_lossless.dcm", {"Rows": 32}, r".*found 64×64 in the JPEG-LS frame header"),
    ("MR_small_jp2klossless.dcm", {"TransferSyntaxUID": "1.2.840.10008.1.2.4.57"},
     r"\(7FE0,0010\) PixelData: compressed frame is not the codestream its transfer syntax names \(expected a JPEG "
     r"codestream \(JPEG Lossless, Non-Hierarchical \(Process 14\)\); found a JPEG 2000 codestream\)"),
    ("SC_rgb_jpeg_dcmtk.dcm", {"TransferSyntaxUID": "1.2.840.10008.1.2.4.201"}, r".*expected a JPEG 2000 codestream "
     r"\(High-Throughput JPEG 2000 Image Compression \(Lossless Only\)\); found a JPEG codestream"),
    ("MR_small_RLE.dcm", {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
     r"\(7FE0,0010\) PixelData: RLE frame has the wrong number of segments \(expected 1 segment\(s\) \(1 sample\(s\) × 1 "
     r"byte\(s\)\); found 2 segment\(s\)\)"),
])
def test_codestream_header_contradicting_the_image_module(tmp_path, pydicom_test_files, name, changes, message):
    p = _mutate(pydicom_test_files / name, tmp_path / "mutant.dcm", **changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=rf"mutant\.dcm: {message}"):
            sobre.load_all(p)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_RLE.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"])
def test_sound_compressed_files_pass_the_codestream_check(pydicom_test_files, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_header(pydicom_test_files / name)
        check_pixel_length(ds, pydicom_test_files / name, strict=True)
        assert sobre.load(pydicom_test_files / name).array.size


def test_a_decoder_panic_is_an_input_error_naming_the_file(tmp_path, pydicom_test_files, monkeypatch):
    import pydicom.pixels

    class PanicException(BaseException):  # what Rust decoders raise (pyo3_runtime.PanicException)
        pass

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds: the len is 8064 but the index is 8065")

    img = sobre.load(pydicom_test_files / "MR_small_RLE.dcm")
    monkeypatch.setattr(pydicom.pixels, "pixel_array", panic)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    with pytest.raises(InputError, match=r"MR_small_RLE\.dcm: \(7FE0,0010\) PixelData: pixel data cannot be decoded "
                                         r"\(PanicException: index out of bounds"):
        img.array  # noqa: B018


@pytest.mark.parametrize("changes, message", [
    ({"PhotometricInterpretation": "XYZ"}, r"\(0028,0004\) PhotometricInterpretation: unknown PhotometricInterpretation "
                                           r"\(expected ARGB, CMYK, HSV, MONOCHROME1, .*; found 'XYZ'\)"),
    ({"BitsAllocated": 24, "BitsStored": 24, "HighBit": 23},
     r"\(0028,0100\) BitsAllocated: pixel data cannot be decoded: no decoder handles this sample size \(expected 1, 8, "
     r"16, 32 or 64; found 24\)"),
])
def test_module_values_no_decoder_handles(tmp_path, pydicom_test_files, changes, message):
    src = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    if "BitsAllocated" in changes:  # keep the data as long as the header now says
        src.PixelData = bytes(128 * 128 * 3)
    src.save_as(tmp_path / "src.dcm")
    p = _mutate(tmp_path / "src.dcm", tmp_path / "mutant.dcm", **changes)
    with pytest.raises(InputError, match=rf"mutant\.dcm: {message}"):
        sobre.load_all(p)


def test_four_samples_per_pixel_are_consistent_but_not_decodable(tmp_path):
    data = image(spp=4, bits=8, photometric="ARGB")
    assert check_pixel_length(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), force=True),
                              transfer_syntax=UID(ExplicitVRLittleEndian)) is None  # the shared rule accepts it
    p = write(tmp_path, "argb", part10(data))
    with pytest.raises(InputError, match=r"argb\.dcm: \(0028,0002\) SamplesPerPixel: pixel data cannot be decoded: no "
                                         r"decoder handles 4 samples per pixel"):
        read_header(p)


def test_multiframe_compressed_data_with_fewer_codestreams_than_frames(tmp_path, pydicom_data):
    ds = pydicom.dcmread(pydicom_data / "emri_small_jpeg_2k_lossless.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    halves = [part for f in frames[:5] for part in (f[: len(f) // 2], f[len(f) // 2:])]  # 10 fragments, 5 frames
    ds.PixelData = encapsulate(halves, has_bot=False)
    ds.save_as(tmp_path / "split.dcm")
    with pytest.raises(InputError, match=r"split\.dcm: \(7FE0,0010\) PixelData: compressed pixel data holds fewer "
                                         r"frames than NumberOfFrames \(expected 10 frames \(each beginning a "
                                         r"codestream\); found 10 fragment\(s\), 5 of them beginning a codestream\)"):
        sobre.load_all(tmp_path / "split.dcm")


def test_empty_frame_in_compressed_data(tmp_path, pydicom_data):
    ds = pydicom.dcmread(pydicom_data / "emri_small_jpeg_2k_lossless.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[3] = b""
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # empty basic offset table, then one item per frame
    for f in frames:
        f += b"\x00" * (len(f) % 2)
        items += struct.pack("<HHL", 0xFFFE, 0xE000, len(f)) + f
    ds.PixelData = items
    ds.save_as(tmp_path / "hole.dcm")
    with pytest.raises(InputError, match=r"hole\.dcm: \(7FE0,0010\) PixelData: compressed pixel data holds an empty "
                                         r"frame \(expected 10 frame\(s\) of compressed bytes, one fragment each; found 1 "
                                         r"empty fragment\(s\)\)"):
        sobre.load_all(tmp_path / "hole.dcm")


def test_rle_data_under_a_jpeg_transfer_syntax(tmp_path, pydicom_test_files):
    p = _mutate(pydicom_test_files / "MR_small_RLE.dcm", tmp_path / "rle_as_jpeg.dcm",
                TransferSyntaxUID="1.2.840.10008.1.2.4.57")
    with pytest.raises(InputError, match=r"rle_as_jpeg\.dcm: \(7FE0,0010\) PixelData: compressed frame is not the "
                                         r"codestream its transfer syntax names \(expected a JPEG codestream \(JPEG "
                                         r"Lossless, Non-Hierarchical \(Process 14\)\); found data beginning "):
        sobre.load_all(p)


def test_read_instance_names_an_undecodable_uid(tmp_path, pydicom_test_files):
    from sobre.image import read_instance

    _set_raw(pydicom_test_files / "CT_small.dcm", tmp_path / "uid.dcm", "SOPInstanceUID", "ZZ", b"1.2.3.4 ")
    with pytest.raises(InputError, match=r"uid\.dcm: \(0008,0018\) SOPInstanceUID: header value cannot be decoded"):
        read_instance(tmp_path / "uid.dcm", decode_all=False)


def test_read_instance_of_a_damaged_deflate_stream(tmp_path, pydicom_test_files):
    from sobre.image import read_instance

    data, meta_end = _deflate_parts(pydicom_test_files / "image_dfl.dcm")
    p = write(tmp_path, "dfl_bad", data[:meta_end] + bytes([data[meta_end] ^ 0xFF]) + data[meta_end + 1:])
    with pytest.raises(InputError, match=r"dfl_bad\.dcm: damaged or truncated DICOM file \(expected a complete DICOM "
                                         r"dataset; found error: Error -3 while decompressing data"):
        read_instance(p, decode_all=False)

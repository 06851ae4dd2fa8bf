"""Classes of problems found by the fuzz benchmark (``bench/bench_fuzz.py``), on mutants of real samples.

The rule behind each: every file ``info`` accepts must decode (``export``), and every refusal names
the file. Each class is tested twice: on the mutants the benchmark found (rebuilt from their
``(source, kind, seed)`` with ``tests/fuzz/mutants.py``), and on mutations of the same class made
here on other real sample files. Skipped when the sample files are not fetched (``sobre samples fetch``).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fuzz import mutants as M

import sobre
from sobre.errors import InputError, Problems
from sobre.image import read_header

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about the very values damaged here


def _source_file(key: str) -> Path:
    path = M.source_path(key)
    if path is None:
        pytest.skip(f"sample file {key} is not available (sobre samples fetch)")
    return path


def _mutant(tmp_path: Path, key: str, kind: str, seed: int) -> Path:
    _source_file(key)
    m = M.make(key, kind, seed)
    path = tmp_path / f"{m.name.replace(':', '_')}.dcm"
    path.write_bytes(m.data)
    return path


def _info_then_export(path: Path) -> str | None:
    """What ``sobre info`` then ``sobre export`` do: the refusal (naming the file), or None when every
    image shown decodes to the shape shown."""
    problems = Problems()
    try:
        images = sobre.load_all(path, problems=problems, verify=True)
    except InputError as exc:
        assert str(path) in str(exc), f"refusal does not name the file: {exc}"
        return str(exc)
    if not images:
        errors = problems.at("error")
        assert errors and all(str(path) in str(p) for p in errors), [str(p) for p in errors]
        return str(errors[0])
    for im in images:
        assert im.array.shape == im.shape  # what info showed is what export decodes
    return None


# The mutants bench_fuzz.py found (campaign seed 20241125, 10,000 mutants): info exited 0, export failed.
UNDECODABLE = [
    # decoded frame has the wrong size: more whole frames in the data than the header says
    ("derived-deflate:pydicom:CT_small.dcm", "set_value", 1724920312, "more frames"),  # deflated, Columns 64 (4079)
    ("pydicom:image_dfl.dcm", "set_value", 1451274273, "more frames"),  # deflated, Columns 512 -> 3 (5238)
    ("derived-deflate:pydicom-data:emri_small.dcm", "delete", 441353116, "more frames"),  # 10 frames (8191)
    ("pydicom:SC_rgb_rle_2frame.dcm", "delete", 2897592602, "more frames"),  # RLE, 2 fragments (8269)
    ("pydicom:examples_ybr_color.dcm", "delete", 283031371, "more frames"),  # JPEG, 30 frames (1393)
    # colour metadata pydicom cannot apply
    ("pydicom-data:gdcm-US-ALOKA-16.dcm", "flip", 3021658181, "palette"),  # segment type 128 (3717)
    ("pydicom-data:gdcm-US-ALOKA-16.dcm", "flip", 976755630, "palette"),  # LUT data lengths differ (990)
    ("pydicom:examples_rgb_color.dcm", "bad_vr", 2867199235, "PlanarConfiguration"),  # empty (2372)
    ("pydicom:SC_ybr_full_422_uncompressed.dcm", "set_value", 4170435198, "YBR"),  # signed (6166)
    ("pydicom-data:SC_rgb_expb_16bit_2frame.dcm", "set_value", 1771615607, "upper case"),  # 'rgb' (6657)
]


@pytest.mark.parametrize(("key", "kind", "seed", "said"), UNDECODABLE,
                         ids=[f"{k.rsplit(':', 1)[-1]}-{kind}" for k, kind, _, _ in UNDECODABLE])
def test_benchmark_mutants_that_did_not_decode_are_refused_by_info(tmp_path, key, kind, seed, said):
    path = _mutant(tmp_path, key, kind, seed)
    refusal = _info_then_export(path)
    assert refusal is not None and said in refusal, refusal


def _rewrite(src: Path, out: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(out)
    return out


# Header values that no longer describe the pixel data, on every kind of encoding of the class:
# native (little/big endian, deflated), RLE, JPEG, JPEG 2000; single and multi-frame; 1-bit.
SOURCES = ["pydicom:CT_small.dcm", "pydicom:MR_small_bigendian.dcm", "pydicom:image_dfl.dcm",
           "pydicom:rtdose.dcm", "pydicom:SC_rgb_rle_2frame.dcm", "pydicom:examples_ybr_color.dcm",
           "pydicom-data:emri_small.dcm", "pydicom-data:emri_small_RLE.dcm",
           "pydicom-data:emri_small_jpeg_2k_lossless.dcm", "pydicom-data:OBXXXX1A_2frame.dcm",
           "pydicom-data:liver.dcm"]
CHANGES = {
    "frames deleted": lambda ds: dict(NumberOfFrames=None),
    "frames 1": lambda ds: dict(NumberOfFrames=1),
    "frames empty": lambda ds: dict(NumberOfFrames=""),
    "columns halved": lambda ds: dict(Columns=ds.Columns // 2),
    "rows 3": lambda ds: dict(Rows=3),
    "columns 1": lambda ds: dict(Columns=1),
}


@pytest.mark.parametrize("key", SOURCES, ids=[k.rsplit(":", 1)[-1] for k in SOURCES])
def test_every_file_info_accepts_decodes_to_the_shape_it_shows(tmp_path, key):
    """Class 1a: rows × columns × frames × samples × bits against the pixel data (native, deflated
    after inflating, RLE and JPEG fragments): either refused by name, or decoded as shown."""
    src = _source_file(key)
    head = pydicom.dcmread(src, stop_before_pixels=True)
    refused = 0
    for name, change in CHANGES.items():
        if name.startswith("frames") and "NumberOfFrames" not in head:
            continue
        out = _rewrite(src, tmp_path / f"{name.replace(' ', '_')}.dcm", **change(head))
        refused += _info_then_export(out) is not None
    assert refused  # every source has at least one change that no longer fits its pixel data


def test_palette_tables_are_checked_when_the_header_is_read(tmp_path):
    """Class 1b: a segmented palette with an unknown segment type, LUT data of another length than
    its descriptor: refused by info, naming the file and the tables, without decoding pixels."""
    src = _source_file("pydicom-data:gdcm-US-ALOKA-16.dcm")
    ds = pydicom.dcmread(src)
    assert "SegmentedRedPaletteColorLookupTableData" in ds
    bad = bytearray(ds.SegmentedGreenPaletteColorLookupTableData)
    bad[0] = 7  # segment type 7: neither discrete (0), linear (1) nor indirect (2)
    ds.SegmentedGreenPaletteColorLookupTableData = bytes(bad)
    ds.save_as(tmp_path / "segment.dcm")
    assert "segment type" in _info_then_export(tmp_path / "segment.dcm")

    src = _source_file("pydicom-data:OBXXXX1A_2frame.dcm")
    ds = pydicom.dcmread(src)
    ds.BluePaletteColorLookupTableData = ds.BluePaletteColorLookupTableData[:-4]
    ds.save_as(tmp_path / "short.dcm")
    assert "palette" in _info_then_export(tmp_path / "short.dcm")
    read_header(src)  # the sound original reads (its tables apply)


def test_colour_module_values_pydicom_cannot_apply(tmp_path):
    """Class 1b: PhotometricInterpretation not upper case, PlanarConfiguration empty, YBR with
    signed or 16-bit samples: refused by info; a missing PlanarConfiguration still reads and decodes."""
    rgb = _source_file("pydicom:examples_rgb_color.dcm")
    ybr = _source_file("pydicom:SC_ybr_full_422_uncompressed.dcm")
    assert "upper case" in _info_then_export(_rewrite(rgb, tmp_path / "lower.dcm", PhotometricInterpretation="rgb"))
    assert "PlanarConfiguration" in _info_then_export(_rewrite(rgb, tmp_path / "planar.dcm", PlanarConfiguration=""))
    assert "YBR" in _info_then_export(_rewrite(ybr, tmp_path / "signed.dcm", PixelRepresentation=1))
    assert _info_then_export(_rewrite(rgb, tmp_path / "no_planar.dcm", PlanarConfiguration=None)) is None


@pytest.mark.parametrize(("key", "seed"), [("pydicom-data:mlut_18.dcm", 3653462624), ("pydicom:rtdose.dcm", 1051847898)])
def test_a_damaged_file_meta_value_is_refused_naming_the_file(tmp_path, key, seed):
    """Class 4: a bad VR on (0002,0010) TransferSyntaxUID (the file meta has no filename of its own)."""
    path = _mutant(tmp_path, key, "bad_vr", seed)
    with pytest.raises(InputError) as err:
        read_header(path)
    assert str(path) in str(err.value) and "(0002,0010)" in str(err.value)
    assert "(0002,0010)" in _info_then_export(path)


def test_a_damaged_transfer_syntax_of_an_object_without_pixels_names_the_file(tmp_path, pydicom_test_files):
    """Class 4 beyond image files: the transfer syntax is checked whenever a header is read."""
    ds = pydicom.dcmread(pydicom_test_files / "rtplan.dcm")
    ds.save_as(tmp_path / "plan.dcm")
    data = (tmp_path / "plan.dcm").read_bytes()
    assert data.count(b"\x02\x00\x10\x00UI") == 1
    (tmp_path / "plan.dcm").write_bytes(data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00FD"))
    with pytest.raises(InputError) as err:
        read_header(tmp_path / "plan.dcm")
    assert str(tmp_path / "plan.dcm") in str(err.value) and "(0002,0010)" in str(err.value)

"""The lite path (simple uncompressed files read without pydicom) gives what the pydicom path gives, or steps aside.

For every file: either ``_read_simple`` declines (None) and the usual reading happens, or the usual
reading accepts the file too, without a warning, with the same frames and the same metadata.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

import sobre
from sobre.errors import GeometryError, InputError, SobreError
from sobre.image import _dicom_fast, _lite
from sobre.image._dicom import _read_simple, check_image, frames_of, header_metadata
from sobre.image._part10 import read_header

from .test_dicom import AXIAL


def _usual(path: Path):
    """``(frames as dicts, metadata, warnings)`` the pydicom path gives, or the error it raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = read_header(path)
            check_image(ds, path)
            frames = [f.to_dict() for f in frames_of(ds, path)]
            meta = header_metadata(ds)
        except SobreError as exc:
            return exc
    return frames, meta, [str(w.message) for w in caught]


def _lite_way(path: Path):
    """``(frames as dicts, metadata or None where pydicom must convert)``, or None when the lite path declines."""
    got = _read_simple(path)
    if got is None:
        return None
    ds, frames = got
    try:
        meta = header_metadata(ds)
    except _lite.NeedPydicom:
        meta = None
    return [f.to_dict() for f in frames], meta


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return type(a) is type(b) and a == b


def _check(path: Path) -> str:
    """'lite' (the lite path read it, as the usual one does), 'usual' (it declined)."""
    lite = _lite_way(path)
    if lite is None:
        return "usual"
    usual = _usual(path)
    assert not isinstance(usual, Exception), f"{path}: lite path accepts what the usual one refuses: {usual}"
    frames, meta, caught = usual
    assert _same(lite[0], frames), f"{path}: frames differ"
    if lite[1] is not None:
        assert lite[1] == meta, f"{path}: metadata differ"
        assert not caught, f"{path}: the usual path warns ({caught[:2]}), the lite path does not"
    return "lite"


# --------------------------------------------------------------------------- tables
def test_tables_agree_with_pydicom():
    for keyword, (tag, vr) in _lite.KEYWORDS.items():
        assert tag_for_keyword(keyword) == tag and dictionary_VR(tag) == vr, keyword
    assert _dicom_fast._EXPLICIT_32 == {str(v).encode() for v in EXPLICIT_VR_LENGTH_32}
    for vr in _dicom_fast._VR_STR.values():
        assert _dicom_fast._lite_empty(vr) == empty_value_for_VR(vr, raw=True), vr


VALUES = {
    "Modality": [b"CT", b"CT ", b" CT", b"A B", b"CT\x00", b"ct", b"C\\T", b"", b"  ", b"\xe9"],
    "ImageType": [b"ORIGINAL\\PRIMARY\\AXIAL ", b"DERIVED\\\\X", b"A\\ B"],
    "SeriesInstanceUID": [b"1.2.3\x00", b"1.2.3", b"1.2.3 ", b"1.2.3\\4.5\x00", b"01.2", b"1..2", b"1.2" * 40],
    "SeriesNumber": [b"12", b"0012", b"+5 ", b" 7", b"-3", b"1\\2 ", b"99999999999", b"1.0", b"3000000000"],
    "SliceThickness": [b"1.50", b"-1024 ", b"1e2", b".5", b"5.", b"+1.0", b"1\\2.0 ", b" 1.5", b"nan", b"1.5.",
                       b"12345678901234567"],
    "SeriesDescription": [b"bench CT 300", b"x ", b" x", b"a\\b", b"a  b ", b"x\x00", b"tab\there", b"\xc3\xa9t\xc3\xa9",
                          b"\x1b$B"],
    "StudyDate": [b"20200101", b"20200101 ", b"2020-01-01", b"20200101\\20200102"],
    "PatientAge": [b"045Y", b"045Y ", b"45Y"],
    "PatientSex": [b"M ", b"O"],
}


@pytest.mark.parametrize("charset", [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO 2022 IR 87", b"GARBAGE"])
@pytest.mark.parametrize("implicit", [False, True])
def test_get_converts_as_pydicom_or_steps_aside(implicit, charset):
    """Each value the lite ``get`` converts prints (and reads as a number) as pydicom's does, without a
    warning from pydicom; every other value raises NeedPydicom."""
    converted = 0
    for keyword, values in VALUES.items():
        tag, vr = _lite.KEYWORDS[keyword]
        for raw in values:
            elems = {tag: RawDataElement(BaseTag(tag), None if implicit else vr, len(raw), raw, 0, implicit, True)}
            lite = {tag: _dicom_fast.RawElement(tag, vr, len(raw), raw, 0, implicit, True)}
            if charset is not None:
                elems[0x00080005] = RawDataElement(BaseTag(0x00080005), "CS", len(charset), charset, 0, implicit, True)
                lite[0x00080005] = _dicom_fast.RawElement(0x00080005, "CS", len(charset), charset, 0, implicit, True)
            try:
                mine = _lite.LiteDataset(lite).get(keyword)
            except _lite.NeedPydicom:
                continue
            ds = pydicom.Dataset()
            ds._dict.update(elems)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds.set_original_encoding(implicit, True, ds._character_set)  # as read_header_fast does
                theirs = ds.get(keyword)
            assert not caught, (keyword, raw, charset, [str(w.message) for w in caught])
            converted += 1

            def text(v):
                if v is None or v == "":
                    return None
                return "\\".join(str(x) for x in v) if isinstance(v, (list, pydicom.multival.MultiValue)) else str(v)

            assert text(mine) == text(theirs), (keyword, raw, mine, theirs)
            if vr == "DS" and not isinstance(mine, list) and mine not in (None, ""):
                assert float(mine) == float(theirs)
    assert converted > 20 if charset in (None, b"ISO_IR 100", b"ISO_IR 192") else converted == 0  # others: pydicom


# --------------------------------------------------------------------------- files
def _dicom_files(roots) -> list[Path]:
    out = []
    for r in roots:
        for p in sorted(r.rglob("*")):
            if p.is_file() and p.stat().st_size > 132:
                with open(p, "rb") as fh:
                    if fh.read(132)[128:] == b"DICM":
                        out.append(p)
    return out


def test_lite_path_equals_the_usual_one_on_every_sample(sample, pydicom_test_files):
    roots = [sample("pydicom-data"), sample("deid-data"), pydicom_test_files]
    seen = {"lite": 0, "usual": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _dicom_files(roots):
            seen[_check(path)] += 1
    assert seen["lite"] >= 20 and seen["usual"] > 100, seen


def test_lite_path_equals_the_usual_one_on_fuzz_mutants(sample, tmp_path, monkeypatch):
    """The first 500 mutants of the fuzz campaign (truncations, flipped bytes, bad VRs and lengths, wrong
    values, deleted elements ...): accepted by the lite path only where the usual path accepts them alike."""
    fuzz = pytest.importorskip("fuzz.mutants")
    sample("pydicom-data")
    sample("deid-data")
    sources = fuzz.sources_available()
    if len(sources) < len(fuzz.SOURCES):
        pytest.skip("fuzz sample files missing")
    seen = {"lite": 0, "usual": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(500):
            m = fuzz.plan(20241125, i, sources)
            path = tmp_path / f"{m.name}.dcm"
            path.write_bytes(m.data)
            kind = _check(path)
            seen[kind] += 1
            if kind == "lite":  # the whole reading too: volumes, their metadata, problems and pixels
                lite, usual = _load_both(path, monkeypatch)
                assert isinstance(lite, str) == isinstance(usual, str) and (lite == usual if isinstance(lite, str)
                                                                             else lite[:2] == usual[:2]), m.name
                if not isinstance(lite, str):
                    for a, b in zip(lite[2], usual[2]):
                        try:
                            pixels_a = a.array
                        except SobreError as exc:
                            with pytest.raises(type(exc)):
                                b.array  # noqa: B018
                            continue
                        np.testing.assert_array_equal(pixels_a, b.array)
    assert seen["lite"] >= 20, seen  # 30 of the 500 when written


def _load_both(path: Path, monkeypatch) -> tuple:
    """``sobre.load_all(path, problems=...)`` by the lite path where it applies, and by the usual path only:
    (images as (shape, dtype, affine, metadata, sources), problems as text) for each, or the exception."""
    import sobre.image._dicom as d
    from sobre.errors import Problems

    def run():
        found = Problems()
        try:
            images = sobre.load_all(path, problems=found, on_warning=lambda m: None)
        except SobreError as exc:
            return f"{type(exc).__name__}: {exc}"
        return ([(im.shape, im.dtype, im.affine.tolist(), im.metadata, im.sources) for im in images],
                [str(p) for p in found], images)

    lite = run()
    with monkeypatch.context() as m:
        m.setattr(d, "_read_simple", lambda p: None)
        usual = run()
    return lite, usual


def _series(folder: Path, n: int = 6) -> Path:
    arr = (np.arange(8 * 6 * n, dtype=np.int32).reshape(8, 6, n) * 37 % 4000).astype(np.uint16)
    img = sobre.Image(arr, AXIAL, modality="CT")
    sobre.write_dicom_series(img, folder, extra={"BitsStored": 12, "HighBit": 11, "RescaleIntercept": "-1024",
                                                 "RescaleSlope": "1"})
    return folder


def test_series_read_without_pydicom_equals_the_usual_reading(tmp_path, monkeypatch):
    series = _series(tmp_path / "s")
    files = sorted(series.glob("*.dcm"))
    assert all(_check(p) == "lite" for p in files)
    lite = sobre.load(series)
    monkeypatch.setattr("sobre.image._dicom._read_simple", lambda path: None)  # the usual reading only
    usual = sobre.load(series)
    assert lite.metadata == usual.metadata and np.array_equal(lite.affine, usual.affine)
    assert lite.dtype == usual.dtype and np.array_equal(lite.array, usual.array)


def test_single_slice_with_a_header_value_only_pydicom_converts(tmp_path, monkeypatch):
    """assemble reads SliceThickness of a single slice's header: a value the lite reader cannot convert
    (here written with VR UN) sends the file the usual way before assembling."""
    series = _series(tmp_path / "one", n=1)
    path = next(series.glob("*.dcm"))
    ds = pydicom.dcmread(path)
    ds["SliceThickness"].VR = "UN"
    ds["SliceThickness"].value = b"2.5 "
    ds.save_as(path)
    assert _read_simple(path) is None
    lite, usual = _load_both(path, monkeypatch)
    assert lite[:2] == usual[:2] and lite[0][0][2][2][2] == 2.5


def test_damaged_series_are_refused_as_before(tmp_path):
    """Uneven spacing, a missing slice, truncated pixels, a header contradicting its pixel data: the same
    errors as the usual path, naming the file and tag."""
    series = _series(tmp_path / "gap", n=6)
    files = sorted(series.glob("*.dcm"))
    files[2].unlink()  # a missing slice
    with pytest.raises(GeometryError, match="missing"):
        sobre.load(series)

    series = _series(tmp_path / "cut", n=4)
    victim = sorted(series.glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:-10])  # pixels cut short
    assert _read_simple(victim) is None
    with pytest.raises(InputError, match="truncated") as err:
        sobre.load(series)
    assert err.value.path is not None and Path(err.value.path).name == victim.name

    series = _series(tmp_path / "rows", n=4)
    victim = sorted(series.glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    ds.Rows = 9  # more rows than the pixel data holds
    ds.save_as(victim)
    assert _read_simple(victim) is None
    with pytest.raises(InputError, match="shorter than the image module") as err:
        sobre.load(series)
    assert "(0028,0010)" in str(err.value) or "PixelData" in str(err.value.tag)


@pytest.mark.parametrize("bits, stored, signed, intercept, into_place", [
    (16, 12, False, -1024, True), (16, 12, True, -1024, True), (16, 16, True, 0, True), (16, 16, False, 0, True),
    (16, 10, False, 5, True), (8, 7, False, 0, True), (32, 20, True, -7, True),
    (8, 8, True, 3, False),  # int16 out of 8-bit values: converted
    (16, 12, False, 0.5, False), (16, 16, False, -1024, False),  # float32, int32 out
])
def test_frames_read_into_place_equal_pydicom(tmp_path, monkeypatch, bits, stored, signed, intercept, into_place):
    """Frames read straight into the volume (``_direct``) hold what pydicom decodes and rescales, with
    garbage above BitsStored masked or sign-extended, as the copying path gives."""
    series = _series(tmp_path / "s", n=5)
    rng = np.random.default_rng(7)
    truth = []
    for p in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, int(signed)
        ds.RescaleIntercept, ds.RescaleSlope = str(intercept), "1"
        ds.PixelData = rng.integers(0, 256, ds.Rows * ds.Columns * bits // 8, dtype=np.uint8).tobytes()
        ds.save_as(p)
        truth.append(pydicom.dcmread(p).pixel_array.astype(np.float64) + intercept)  # (rows, cols), pydicom's
    import sobre.image._dicom as d

    reads = []
    real = d._read_native
    monkeypatch.setattr(d, "_read_native", lambda *a, **k: reads.append(k.get("into") is not None) or real(*a, **k))
    direct = sobre.load(series)
    direct.array  # noqa: B018 - read
    assert reads == [into_place] * 5
    expected = np.stack([t.T for t in truth], axis=-1)  # (cols, rows, k) in file order = slice order here
    with monkeypatch.context() as m:
        m.setattr(d, "_direct", lambda f, dtype: False)
        copied = sobre.load(series).array
    assert direct.dtype == copied.dtype
    np.testing.assert_array_equal(direct.array, copied)
    np.testing.assert_array_equal(direct.array.astype(np.float64), expected)

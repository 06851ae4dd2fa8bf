"""The fast header reader gives pydicom's dataset, element by element, on every real sample it handles."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest

from sobre.image._dicom_fast import read_header_fast


def _same_dataset(fast, ref) -> None:
    assert list(fast.keys()) == list(ref.keys())
    assert list(fast.file_meta.keys()) == list(ref.file_meta.keys())
    assert fast.original_encoding == ref.original_encoding and fast.preamble == ref.preamble
    for tag in ref.keys():
        a, b = ref.get_item(tag, keep_deferred=True), fast.get_item(tag, keep_deferred=True)
        if getattr(a, "value", 0) is None or getattr(b, "value", 0) is None:  # deferred: same place in the file
            assert getattr(a, "value", 0) is None and b.value is None, tag
            assert (a.value_tell, a.length) == (b.value_tell, b.length), tag
            continue
        assert ref[tag].value == fast[tag].value, tag
    for tag in ref.file_meta.keys():
        assert ref.file_meta[tag].value == fast.file_meta[tag].value, tag


def _real_files(roots) -> list[Path]:
    return sorted(p for r in roots for p in r.rglob("*") if p.is_file() and p.stat().st_size > 132)


def test_fast_reader_equals_pydicom_on_every_sample(sample, pydicom_test_files):
    roots = [sample("pydicom-data"), sample("deid-data"), pydicom_test_files]
    checked = fast_count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _real_files(roots):
            with open(path, "rb") as fh:
                if fh.read(132)[128:] != b"DICM":
                    assert read_header_fast(path) is None  # not Part 10: pydicom guesses, we do not
                    continue
            try:
                ref = pydicom.dcmread(path, defer_size=1024, force=True)
            except Exception:  # noqa: BLE001 - pydicom cannot read it either: the fast reader must not pretend
                assert read_header_fast(path) is None, path
                continue
            checked += 1
            fast = read_header_fast(path)
            if fast is None:
                continue
            fast_count += 1
            try:
                _same_dataset(fast, ref)
            except AssertionError as exc:
                raise AssertionError(f"{path}: {exc}") from None
    assert checked > 200 and fast_count > 100, (checked, fast_count)


def test_fast_reader_hands_unusual_files_to_pydicom(tmp_path, pydicom_test_files):
    ct = pydicom_test_files / "CT_small.dcm"
    data = ct.read_bytes()
    # cut inside the header: not guessed, pydicom (and sobre's truncation checks) explain it
    (tmp_path / "cut.dcm").write_bytes(data[:700])
    assert read_header_fast(tmp_path / "cut.dcm") is None
    # big endian: not handled here
    ds = pydicom.dcmread(ct)
    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        pytest.skip("CT_small is expected little endian")
    assert read_header_fast(pydicom_test_files / "MR_small_bigendian.dcm") is None
    # deferred pixel data reads back through pydicom exactly as after dcmread
    fast = read_header_fast(ct, defer_size=100)
    ref = pydicom.dcmread(ct, defer_size=100)
    assert fast.PixelData == ref.PixelData and fast.pixel_array.sum() == ref.pixel_array.sum()

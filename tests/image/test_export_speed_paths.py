"""The fast paths of ``sobre export``: the NIfTI writer (no nibabel) and the lazy imports.

The writer must give the very file nibabel writes for the same image (header byte for byte, voxels,
affine), whatever the memory layout of the array, for .nii and .nii.gz, with either gzip backend.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import sobre
from sobre import Image
from sobre.errors import InputError
from sobre.image import _formats

from .test_image import oblique_affine

AXIAL = np.array([[0.5, 0, 0, -64.0], [0, 0.75, 0, 12.5], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
SHEARED = np.array([[0.7, 0.1, 0, -10.0], [0, 0.7, 0.2, 20.0], [0.05, 0, 1.5, 30.0], [0, 0, 0, 1]])
LEFT_HANDED = np.array([[0.5, 0, 0, 1.0], [0, 0.5, 0, 2.0], [0, 0, -3.0, 3.0], [0, 0, 0, 1]])


def nibabel_bytes(image: Image, suffix: str, tmp_path: Path) -> bytes:
    """What Sobre wrote before its own writer: nibabel's file for the same image (uncompressed bytes)."""
    arr = _formats._storable(image.array)
    nd, extra = image.spatial_ndim, image.extra_axes
    spatial3 = arr.shape[:nd] + (1,) * (3 - nd)
    n_time = arr.shape[nd] if extra and extra[0] in ("time", "frame") else None
    vector = False
    if "channel" in extra:
        c = arr.shape[-1]
        if arr.dtype == np.uint8 and c in (3, 4):
            names = ("R", "G", "B", "A")[:c]
            rgb = np.empty(spatial3 + (n_time,) if n_time else arr.shape[:-1], dtype=[(n, "u1") for n in names])
            for i, n in enumerate(names):
                rgb[n] = arr[..., i].reshape(rgb.shape)
            arr = rgb
        else:
            arr, vector = arr.reshape(spatial3 + (n_time or 1, c)), True
    elif n_time:
        arr = arr.reshape(spatial3 + (n_time,))
    n = nib.Nifti1Image(arr, image.affine_ras, dtype=arr.dtype)
    if vector:
        n.header.set_intent("vector")
    n.header.set_xyzt_units("mm", "sec")
    n.set_sform(image.affine_ras, code=1)
    n.set_qform(image.affine_ras, code=1)
    if image.modality:
        n.header["descrip"] = f"sobre {image.modality}"[:79].encode()
    path = tmp_path / f"nibabel{suffix}"
    nib.save(n, str(path))
    return gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes()


def written_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        d = zlib.decompressobj(31)  # one gzip member, nothing after it
        out = d.decompress(data)
        assert d.eof and d.unused_data == b""
        return out
    return data


def layouts(arr: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in Fortran order, C order and as a strided (non-contiguous) view."""
    c = np.ascontiguousarray(arr)
    strided = np.zeros(arr.shape + (2,), arr.dtype)
    strided[..., 0] = arr
    return {"fortran": np.asfortranarray(arr), "c": c, "strided": strided[..., 0]}


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32, np.uint8, np.int32, np.float64, np.int64])
def test_nifti_equals_nibabels_file_and_reads_back(tmp_path, rng, dtype, suffix):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    vals = (rng.integers(max(info.min, -5000), min(info.max, 5000), (9, 7, 5)) if info
            else rng.normal(size=(9, 7, 5)) * 1000).astype(dtype)
    for name, arr in layouts(vals).items():
        img = Image(arr, SHEARED if name == "c" else AXIAL, modality="CT")
        out = sobre.save(img, tmp_path / f"{name}{suffix}")
        assert written_bytes(out) == nibabel_bytes(img, suffix, tmp_path), name
        back = nib.load(str(out))
        assert back.get_data_dtype() == np.dtype(dtype)
        assert back.dataobj.slope == 1.0 and back.dataobj.inter == 0.0  # voxels are the values
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), vals)
        np.testing.assert_allclose(back.affine, img.affine_ras, atol=1e-4)
        assert back.header["sform_code"] == 1 and back.header["qform_code"] == 1
        assert back.header.get_xyzt_units() == ("mm", "sec")
        assert bytes(back.header["descrip"]).rstrip(b"\x00") == b"sobre CT"
        np.testing.assert_allclose(sobre.load(out).affine, img.affine, atol=1e-4)


@pytest.mark.parametrize("affine", [AXIAL, SHEARED, LEFT_HANDED, oblique_affine(), np.eye(4)],
                         ids=["axial", "sheared", "left-handed", "oblique", "identity"])
def test_header_is_nibabels_byte_for_byte(tmp_path, affine):
    img = Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), affine)
    out = sobre.save(img, tmp_path / "a.nii")
    assert out.read_bytes()[:352] == nibabel_bytes(img, ".nii", tmp_path)[:352]


def test_2d_4d_vector_rgb_bool_complex_and_big_endian_equal_nibabels(tmp_path, rng):
    cases = {
        "2d": Image(rng.integers(0, 9, (4, 5)).astype(np.int16), AXIAL, spatial_ndim=2),
        "4d": Image(rng.integers(0, 9, (4, 5, 6, 3)).astype(np.int16), AXIAL, extra_axes=("time",)),
        "vector": Image(rng.normal(size=(4, 5, 6, 2)).astype(np.float32), AXIAL, extra_axes=("channel",)),
        "rgb": Image(rng.integers(0, 255, (4, 5, 6, 3)).astype(np.uint8), AXIAL, extra_axes=("channel",)),
        "rgba-2d": Image(rng.integers(0, 255, (4, 5, 4)).astype(np.uint8), AXIAL, spatial_ndim=2,
                         extra_axes=("channel",)),
        "bool": Image(rng.integers(0, 2, (4, 5, 6)).astype(bool), AXIAL),
        "complex": Image((rng.normal(size=(4, 5, 6)) + 1j).astype(np.complex64), AXIAL),
        "big-endian": Image(rng.integers(-1024, 3000, (6, 5, 4)).astype(">i2"), AXIAL),
    }
    for name, img in cases.items():
        for suffix in (".nii", ".nii.gz"):
            out = sobre.save(img, tmp_path / f"{name}{suffix}")
            assert written_bytes(out) == nibabel_bytes(img, suffix, tmp_path), (name, suffix)
    back = nib.load(str(tmp_path / "big-endian.nii"))
    assert back.header.endianness == "<"
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), cases["big-endian"].array)


def _backends():
    found = ["zlib"]
    try:
        import isal  # noqa: F401

        found.append("isal")
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("threads", [1, 3])
def test_gzip_blocks_join_into_one_member_any_backend(tmp_path, rng, monkeypatch, backend, threads):
    monkeypatch.setattr(_formats, "GZIP_BACKEND", backend)
    monkeypatch.setattr(_formats, "GZIP_BLOCK", 1000)  # many blocks, each primed with the bytes before it
    monkeypatch.setattr(_formats, "GZIP_THREADS", threads)
    vals = rng.integers(-1024, 3071, (40, 30, 20)).astype(np.int16)
    vals[:, :, :5] = 0  # long runs: back-references across block boundaries
    img = Image(np.asfortranarray(vals), AXIAL)
    out = sobre.save(img, tmp_path / "x.nii.gz")
    assert _formats.gzip_backend().startswith(backend)
    assert written_bytes(out) == nibabel_bytes(img, ".nii.gz", tmp_path)
    assert gzip.decompress(out.read_bytes())[352:] == np.asfortranarray(vals).tobytes(order="F")
    np.testing.assert_array_equal(sobre.load(out).array, vals)


def test_gzip_level_is_honoured(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(_formats, "GZIP_BACKEND", "zlib")
    vals = (np.arange(200_000) % 97).astype(np.int16).reshape(100, 100, 20)
    sizes = {}
    for level in (1, 9):
        monkeypatch.setattr(_formats, "GZIP_LEVEL", level)
        sizes[level] = sobre.save(Image(vals, AXIAL), tmp_path / f"l{level}.nii.gz").stat().st_size
    assert sizes[9] < sizes[1]


def test_unwritable_pixels_and_output_are_input_errors(tmp_path):
    img = Image(np.zeros((2, 2, 2), dtype=np.float16).astype("U1"), AXIAL)
    with pytest.raises(InputError, match="NIfTI cannot hold these pixels"):
        _formats.write_nifti(img, tmp_path / "x.nii")
    with pytest.raises(InputError, match=r"NIfTI-1 cannot hold an image of this shape.*\(40000, 1, 1\)"):
        _formats.write_nifti(Image(np.zeros((40000, 1, 1), np.uint8), AXIAL), tmp_path / "long.nii")
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(InputError, match="cannot write the NIfTI file"):
        _formats.write_nifti(Image(np.zeros((2, 2, 2), np.int16), AXIAL), tmp_path / "dir.nii")


def test_header_parses_as_nibabels_header():
    raw = _formats.nifti1_header((5, 6, 7), np.dtype(np.uint16), SHEARED, descrip=b"x" * 100)
    assert len(raw) == _formats.NIFTI_VOX_OFFSET == 352
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=True)
    assert hdr.get_data_shape() == (5, 6, 7) and hdr.get_data_dtype() == np.uint16
    assert bytes(hdr["descrip"]).rstrip(b"\x00") == b"x" * 79  # NUL-terminated in its 80 bytes
    np.testing.assert_allclose(hdr.get_sform(), SHEARED, atol=1e-6)


# --------------------------------------------------------------------------- imports
def _run(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


HEAVY = ("numpy", "pydicom", "torch", "pandas", "sqlalchemy", "nibabel", "scipy", "SimpleITK", "pydantic")


def test_import_sobre_and_the_parser_stay_light():
    code = ("import sys, sobre, sobre.cli; sobre.cli.build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert _run(code) == "[]"


# Not imported by `sobre export` of an uncompressed series: pydicom (and what its import pulls in: its pixel
# decoders, `requests` through pydicom.data, Pillow through pydicom.pixels) is needed only for other files.
NOT_FOR_EXPORT = ('torch', 'pandas', 'sqlalchemy', 'nibabel', 'SimpleITK', 'scipy', 'monai', 'pydantic',
                  'pydicom', 'requests', 'urllib3', 'PIL', 'sobre.image._dicom_objects', 'sobre.image._dicom_write')


def test_export_imports_only_what_it_uses(tmp_path):
    img = Image(np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3), AXIAL, modality="CT")
    series = tmp_path / "series"
    sobre.write_dicom_series(img, series, extra={"BitsStored": 12, "RescaleIntercept": "-1024", "RescaleSlope": "1"})
    out = tmp_path / "out.nii"
    code = ("import os, sys; from sobre.cli import main; "
            f"assert main(['export', {str(series)!r}, '--to', {str(out)!r}]) == 0; "
            f"print(sorted(m for m in {NOT_FOR_EXPORT!r} if m in sys.modules)); "
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))")
    assert _run(code).splitlines()[-2:] == ["[]", "1"]  # no BLAS thread spinning beside the header reading
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), img.array.astype(np.int32) - 1024)
    code = ("import os, sys; os.environ['OPENBLAS_NUM_THREADS'] = '2'; from sobre.cli import main; "
            f"assert main(['export', {str(series)!r}, '--to', {str(out)!r}]) == 0; "
            "print(os.environ['OPENBLAS_NUM_THREADS'])")
    assert _run(code).splitlines()[-1] == "2"  # the user's setting is kept


def test_export_of_compressed_data_still_imports_pydicom_and_decodes(tmp_path, pydicom_test_files):
    src = pydicom_test_files / "MR_small_RLE.dcm"  # RLE lossless: pydicom's decoder, not the lite path
    out = tmp_path / "rle.nii"
    code = ("import sys; from sobre.cli import main; "
            f"assert main(['export', {str(src)!r}, '--to', {str(out)!r}]) == 0; print('pydicom' in sys.modules)")
    assert _run(code).splitlines()[-1] == "True"
    plain = sobre.save(sobre.load(pydicom_test_files / "MR_small.dcm"), tmp_path / "plain.nii")  # the same, uncompressed
    a, b = nib.load(str(out)), nib.load(str(plain))
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)


def test_public_names_resolve_lazily():
    assert sobre.load is sobre.image.load and sobre.Image is Image
    assert _run("import sobre; print(sobre.image.resample.__name__, sobre.samples.__name__)") == \
        "resample sobre.samples"
    assert {"load", "save", "Image", "SobreError"} <= set(dir(sobre))
    with pytest.raises(AttributeError):
        sobre.no_such_name  # noqa: B018


def test_command_index_names_the_module_that_registers_each_command():
    import argparse
    import importlib

    from sobre import cli

    for command, module in cli.COMMAND_INDEX.items():
        assert module in cli.COMMAND_MODULES, (command, module)
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert command in sub.choices, f"{module} does not register {command!r}: fix COMMAND_INDEX"


def test_one_command_builds_only_its_parsers_and_help_lists_them_all(capsys):
    from sobre import cli

    assert set(cli.build_parser("export")._subparsers._group_actions[0].choices) == {"init", "ingest", "info",
                                                                                      "export"}
    everything = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert set(cli.COMMAND_INDEX) <= everything
    assert set(cli.build_parser("no-such-command")._subparsers._group_actions[0].choices) == everything
    assert cli._command(["--debug", "export", "x"]) == "export"
    assert cli._command(["-h", "export"]) is None and cli._command([]) is None
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sobre ")
    assert cli.main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "export" in out and "cohort" in out and "model" in out
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err

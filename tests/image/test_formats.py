"""NIfTI, NRRD/MetaImage and optical formats: round trips, agreement with nibabel and SimpleITK."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import sobre
from sobre import Image
from sobre.errors import InputError
from sobre.image import _formats

from .test_image import oblique_affine

# Affines whose entries are exact in float32 (NIfTI-1 stores srow_* as float32) and one that is not.
AXIAL = np.array([[0.5, 0, 0, -64.0], [0, 0.75, 0, 12.5], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
LAS = np.array([[0.5, 0, 0, -64.0], [0, -0.75, 0, 12.5], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
SAGITTAL = np.array([[0, 0, -1.5, 80.0], [1.0, 0, 0, -100.0], [0, -1.0, 0, 120.0], [0, 0, 0, 1]])
OBLIQUE = oblique_affine()
NIFTI1_FLOAT32_TOL = 1e-5  # mm; NIfTI-1 keeps the affine in float32
ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data"


def sitk_affine(simg) -> np.ndarray:
    """The voxel->LPS affine SimpleITK reports (its world coordinates are LPS), in Sobre's i, j, k order."""
    nd = simg.GetDimension()
    a = np.eye(4)
    a[:nd, :nd] = np.array(simg.GetDirection()).reshape(nd, nd) * np.array(simg.GetSpacing())[None, :]
    a[:nd, 3] = simg.GetOrigin()
    return a


def sitk_array(simg) -> np.ndarray:
    """SimpleITK's array (z, y, x[, c]) in Sobre's (i, j, k[, c]) order."""
    arr = sitk.GetArrayFromImage(simg)
    nd = simg.GetDimension()
    return np.transpose(arr, list(range(nd))[::-1] + list(range(nd, arr.ndim)))


# --------------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize("affine", [AXIAL, LAS, SAGITTAL], ids=["axial", "LAS", "sagittal"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_lps_affine_exactly_and_the_array(tmp_path, rng, affine, dtype, suffix):
    arr = (rng.normal(size=(7, 6, 5)) * 100).astype(dtype)
    img = Image(arr, affine, modality="MR")
    path = sobre.save(img, tmp_path / f"img{suffix}")
    back = sobre.load(path)
    assert not back.is_loaded
    assert np.array_equal(back.affine, affine)  # LPS in memory, exactly
    assert back.dtype == np.dtype(dtype) and np.array_equal(back.array, arr)
    assert back.orientation == img.orientation and back.spacing == pytest.approx(img.spacing)
    # nibabel sees RAS on disk
    n = nib.load(path)
    assert np.array_equal(n.affine, img.affine_ras)
    assert int(n.header["sform_code"]) == 1 and int(n.header["qform_code"]) == 1
    assert np.array_equal(np.asarray(n.dataobj), arr)
    # SimpleITK reads the same file in LPS
    s = sitk.ReadImage(str(path))
    assert np.allclose(sitk_affine(s), affine, atol=1e-6)
    assert np.array_equal(sitk_array(s), arr)


def test_nifti_round_trip_of_an_oblique_affine_is_float32_exact(tmp_path, rng):
    arr = rng.integers(0, 1000, (9, 8, 7)).astype(np.int16)
    img = Image(arr, OBLIQUE)
    back = sobre.load(sobre.save(img, tmp_path / "obl.nii.gz"))
    assert np.allclose(back.affine, OBLIQUE, atol=NIFTI1_FLOAT32_TOL, rtol=0)
    assert np.array_equal(back.affine, OBLIQUE.astype(np.float32).astype(np.float64))
    assert back.is_oblique and np.array_equal(back.array, arr)
    s = sitk.ReadImage(str(tmp_path / "obl.nii.gz"))
    assert np.allclose(sitk_affine(s), OBLIQUE, atol=NIFTI1_FLOAT32_TOL)


def test_nifti_2d_4d_and_channel_images_round_trip(tmp_path, rng):
    two_d = Image(rng.normal(size=(5, 6)).astype(np.float32), AXIAL)
    back = sobre.load(sobre.save(two_d, tmp_path / "2d.nii.gz"))
    assert back.spatial_ndim == 2 and np.array_equal(back.array, two_d.array)
    assert np.array_equal(back.affine, AXIAL)

    series = Image(rng.normal(size=(5, 6, 4, 3)).astype(np.float32), AXIAL, extra_axes="time")
    back = sobre.load(sobre.save(series, tmp_path / "4d.nii.gz"))
    assert back.extra_axes == ("time",) and back.spatial_ndim == 3 and np.array_equal(back.array, series.array)

    rgb = Image(rng.integers(0, 256, (5, 6, 4, 3), dtype=np.uint8), AXIAL, extra_axes="channel")
    path = sobre.save(rgb, tmp_path / "rgb.nii.gz")
    assert nib.load(path).get_data_dtype().names == ("R", "G", "B")  # NIfTI RGB24 voxels
    back = sobre.load(path)
    assert back.extra_axes == ("channel",) and back.shape == (5, 6, 4, 3)
    assert np.array_equal(back.array, rgb.array)

    vec = Image(rng.normal(size=(5, 6, 4, 2)).astype(np.float32), AXIAL, extra_axes="channel")
    path = sobre.save(vec, tmp_path / "vec.nii.gz")
    n = nib.load(path)
    assert n.shape == (5, 6, 4, 1, 2) and n.header.get_intent()[0] == "vector"
    back = sobre.load(path)
    assert back.extra_axes == ("channel",) and np.array_equal(back.array, vec.array)


def test_nifti_stores_bool_as_uint8_and_int64_as_int64(tmp_path, rng):
    mask = Image(rng.random((4, 4, 4)) > 0.5, AXIAL)
    back = sobre.load(sobre.save(mask, tmp_path / "mask.nii.gz"))
    assert back.dtype == np.uint8 and np.array_equal(back.array, mask.array.astype(np.uint8))
    big = Image(rng.integers(-(2**40), 2**40, (3, 3, 3)), AXIAL)
    back = sobre.load(sobre.save(big, tmp_path / "big.nii.gz"))
    assert back.dtype == np.int64 and np.array_equal(back.array, big.array)


def test_scaled_nifti_reads_as_float32_with_the_scaling_applied(tmp_path, rng):
    values = rng.normal(size=(6, 5, 4)) * 300.0
    n = nib.Nifti1Image(values, np.diag([-1.0, 1.0, 1.0, 1.0]))
    n.set_data_dtype(np.int16)  # nibabel stores int16 with scl_slope / scl_inter
    nib.save(n, tmp_path / "scaled.nii.gz")
    on_disk = nib.load(tmp_path / "scaled.nii.gz")
    slope = on_disk.dataobj.slope
    assert slope != 1.0
    img = sobre.load(tmp_path / "scaled.nii.gz")
    assert img.dtype == np.float32  # never the int16 storage type: that would drop the scaling
    assert np.array_equal(img.array, np.asanyarray(on_disk.dataobj).astype(np.float32))
    assert np.allclose(img.array, values, atol=slope)
    n.set_data_dtype(np.int32)
    nib.save(n, tmp_path / "scaled32.nii.gz")
    img32 = sobre.load(tmp_path / "scaled32.nii.gz")
    assert img32.dtype == np.float64 and np.allclose(img32.array, values, atol=1e-5)


def test_real_colin27_agrees_with_nibabel_and_simpleitk(colin27_path):
    img = sobre.load(colin27_path)
    n = nib.load(colin27_path)
    assert img.shape == n.shape == (181, 217, 181)
    assert np.array_equal(img.affine_ras, n.affine)
    assert np.array_equal(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ n.affine)
    assert img.orientation == "RAS" and img.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert np.array_equal(img.array, np.asarray(n.dataobj))
    s = sitk.ReadImage(str(colin27_path))
    assert np.allclose(sitk_affine(s), img.affine, atol=1e-6)
    assert np.array_equal(sitk_array(s), img.array)


@pytest.mark.parametrize(
    "source, rel",
    [
        ("itk-examples", f"{ITK_DATA}/KmeansTest_T1UCharRaw.nii.gz"),
        ("nibabel-data", "nibabel/tests/data/example4d.nii.gz"),
        ("nibabel-data", "nibabel/tests/data/example_nifti2.nii.gz"),
        ("nibabel-data", "nibabel/tests/data/standard.nii.gz"),
        ("nibabel-data", "nibabel/tests/data/anatomical.nii"),
    ],
)
def test_real_nifti_files_agree_with_nibabel(sample, source, rel):
    path = sample(source) / rel
    img = sobre.load(path)
    n = nib.load(path)
    assert img.shape == n.shape
    assert img.extra_axes == (("time",) if len(n.shape) == 4 else ())
    assert np.array_equal(img.affine_ras, n.affine)
    assert np.allclose(img.array, np.asanyarray(n.dataobj), equal_nan=True)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_raises_input_error_naming_the_file(tmp_path, suffix):
    img = Image(np.arange(40 * 30 * 8, dtype=np.int16).reshape(40, 30, 8), AXIAL)
    good = sobre.save(img, tmp_path / f"good{suffix}")
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    if suffix == ".nii":  # uncompressed: the file's size tells at once (info and export agree)
        with pytest.raises(InputError, match=r"cut[.]nii: dim / vox_offset: NIfTI voxel data is truncated"):
            sobre.load(cut)
    else:  # compressed: only decompressing tells
        lazy = sobre.load(cut)  # the header is intact
        with pytest.raises(InputError, match=rf"cut{suffix.replace('.', '[.]')}: NIfTI pixel data cannot be read"):
            lazy.array  # noqa: B018
    stub = tmp_path / f"stub{suffix}"
    stub.write_bytes(data[:40])
    with pytest.raises(InputError, match=r"stub.*(NIfTI file cannot be read|unrecognised file type)"):
        sobre.load(stub)


# --------------------------------------------------------------------------- NRRD / MetaImage
@pytest.mark.parametrize("affine", [AXIAL, SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"])
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_round_trip_keeps_the_lps_affine(tmp_path, rng, affine, suffix):
    arr = rng.integers(-1000, 3000, (8, 7, 6)).astype(np.int16)
    img = Image(arr, affine, modality="CT")
    path = sobre.save(img, tmp_path / f"img{suffix}")
    back = sobre.load(path)
    assert np.allclose(back.affine, affine, atol=1e-12, rtol=0)
    assert np.array_equal(back.array, arr) and back.dtype == np.int16
    s = sitk.ReadImage(str(path))  # SimpleITK: origin/direction/spacing in LPS, like Sobre
    assert np.allclose(s.GetOrigin(), img.origin, atol=1e-12)
    assert np.allclose(np.array(s.GetDirection()).reshape(3, 3), img.direction, atol=1e-12)
    assert np.allclose(s.GetSpacing(), img.spacing, atol=1e-12)
    assert np.array_equal(sitk_array(s), arr)


def test_nrrd_written_by_simpleitk_is_read_in_lps(tmp_path, rng):
    arr = rng.normal(size=(6, 5, 4)).astype(np.float32)
    simg = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)).copy())
    simg.SetSpacing((0.7, 0.8, 3.0))
    simg.SetOrigin((10.0, -20.0, 30.0))
    simg.SetDirection(oblique_affine(spacing=(1, 1, 1))[:3, :3].ravel().tolist())
    sitk.WriteImage(simg, str(tmp_path / "by_sitk.nrrd"))
    img = sobre.load(tmp_path / "by_sitk.nrrd")
    assert np.allclose(img.affine, sitk_affine(simg), atol=1e-12)
    assert img.origin == pytest.approx((10.0, -20.0, 30.0))
    assert np.array_equal(img.array, arr)


def test_nrrd_2d_channels_and_refusals(tmp_path, rng):
    rgb = Image(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), np.diag([0.5, 0.5, 1, 1]), extra_axes="channel")
    back = sobre.load(sobre.save(rgb, tmp_path / "rgb.nrrd"))
    assert back.extra_axes == ("channel",) and np.array_equal(back.array, rgb.array)
    # a sagittal 2D slice keeps its orientation: written as one slice of a 3D volume
    sag = Image(rng.normal(size=(6, 5)).astype(np.float32), SAGITTAL)
    back = sobre.load(sobre.save(sag, tmp_path / "sag.nrrd"))
    assert back.shape == (6, 5, 1) and np.allclose(back.affine, SAGITTAL, atol=1e-12)
    series = Image(np.zeros((4, 4, 4, 2), np.float32), AXIAL, extra_axes="time")
    with pytest.raises(InputError, match=r"4d\.nrrd: NRRD/MetaImage files hold 2D or 3D images"):
        sobre.save(series, tmp_path / "4d.nrrd")
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_real_nrrd_lung_ct_agrees_with_simpleitk(pyradiomics_data):
    path = pyradiomics_data / "lung1_image.nrrd"
    img = sobre.load(path)
    s = sitk.ReadImage(str(path))
    assert img.shape == s.GetSize() == (512, 512, 48)
    assert np.allclose(img.affine, sitk_affine(s), atol=1e-9)
    assert img.dtype == np.int16 and img.orientation == "LPS"
    assert np.array_equal(img.array, sitk_array(s))


def test_real_metaimage_agrees_with_simpleitk(sample):
    path = sample("itk-examples") / ITK_DATA / "ResampleImageFilterInput2x3.mha"
    img = sobre.load(path)
    s = sitk.ReadImage(str(path))
    assert img.shape[: img.spatial_ndim] == s.GetSize()
    assert np.allclose(img.affine[: s.GetDimension(), : s.GetDimension()],
                       sitk_affine(s)[: s.GetDimension(), : s.GetDimension()])
    assert np.array_equal(img.array, sitk_array(s))


def test_unreadable_nrrd_raises_input_error(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\n\n"
                    + b"\0" * 10)  # 10 bytes where 128 are due
    img = sobre.load(bad)
    with pytest.raises(InputError, match=r"bad\.nrrd: pixel data cannot be read"):
        img.array  # noqa: B018
    garbled = tmp_path / "garbled.nrrd"
    garbled.write_bytes(b"NRRD0004\nthis is not a header\n")
    with pytest.raises(InputError, match=r"garbled\.nrrd: image header cannot be read"):
        sobre.load(garbled)


# --------------------------------------------------------------------------- optical
@pytest.mark.parametrize(
    "shape, dtype, extra",
    [((20, 12), np.uint8, ()), ((20, 12), np.uint16, ()), ((20, 12, 3), np.uint8, ("channel",)),
     ((20, 12, 4), np.uint8, ("channel",))],
)
def test_png_round_trip(tmp_path, rng, shape, dtype, extra):
    arr = rng.integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    img = Image(arr, extra_axes=extra, coordinate_system="pixel")
    back = sobre.load(sobre.save(img, tmp_path / "x.png"))
    assert back.coordinate_system == "pixel" and back.orientation == "???"
    assert back.shape == shape and back.extra_axes == extra and np.array_equal(back.array, arr)


def test_png_axes_follow_the_dicom_convention(tmp_path):
    from PIL import Image as PILImage

    rows_cols = np.zeros((3, 5), np.uint8)  # 3 rows, 5 columns
    rows_cols[0, 4] = 255  # first row, last column
    PILImage.fromarray(rows_cols).save(tmp_path / "p.png")
    img = sobre.load(tmp_path / "p.png")
    assert img.shape == (5, 3)  # i = column, j = row
    assert img.array[4, 0] == 255


def test_jpeg_and_tiff_with_resolution(tmp_path, rng):
    import tifffile
    from PIL import Image as PILImage

    smooth = (np.add.outer(np.arange(32), np.arange(24)) * 3).astype(np.uint8)
    PILImage.fromarray(smooth).save(tmp_path / "s.jpg", quality=95)
    jpg = sobre.load(tmp_path / "s.jpg")
    assert jpg.shape == (24, 32)
    assert np.abs(jpg.array.astype(int) - smooth.T).max() <= 8  # lossy, but close

    arr = rng.integers(0, 65535, (10, 8)).astype(np.uint16)
    # 200 pixels per centimetre -> 0.05 mm per pixel
    tifffile.imwrite(tmp_path / "m.tif", arr, resolution=(200, 200), resolutionunit="CENTIMETER")
    tif = sobre.load(tmp_path / "m.tif")
    assert tif.spacing == pytest.approx((0.05, 0.05))
    assert tif.metadata["spacing_unit"] == "mm" and np.array_equal(tif.array, arr.T)


def test_real_png_from_itk_examples(sample):
    from PIL import Image as PILImage

    path = sample("itk-examples") / ITK_DATA / "BrainProtonDensitySlice256x256.png"
    img = sobre.load(path)
    with PILImage.open(path) as pil:
        expected = np.asarray(pil)
    assert img.shape == (expected.shape[1], expected.shape[0]) + expected.shape[2:]
    assert np.array_equal(img.array, np.swapaxes(expected, 0, 1))


def test_optical_refusals(tmp_path, rng):
    with pytest.raises(InputError, match=r"f\.png: PNG/JPEG/TIFF hold 8- or 16-bit grey"):
        sobre.save(Image(rng.normal(size=(4, 4))), tmp_path / "f.png")
    with pytest.raises(InputError, match=r"w\.jpg: JPEG holds 8-bit grey or RGB pixels only"):
        sobre.save(Image(np.zeros((4, 4), np.uint16)), tmp_path / "w.jpg")
    with pytest.raises(InputError, match="only 2D images can be written as PNG/JPEG"):
        sobre.save(Image(np.zeros((4, 4, 4), np.uint8)), tmp_path / "v.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(InputError, match=r"broken\.png: image cannot be decoded"):
        sobre.load(broken)


# --------------------------------------------------------------------------- load / save plumbing
def test_formats_are_recognised_by_content_not_by_name(tmp_path, pydicom_test_files):
    dicom_named_nii = tmp_path / "really_dicom.nii"
    dicom_named_nii.write_bytes((pydicom_test_files / "CT_small.dcm").read_bytes())
    assert _formats.sniff(dicom_named_nii) == "dicom"
    assert sobre.load(dicom_named_nii).modality == "CT"
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    assert _formats.sniff(text) is None
    with pytest.raises(InputError, match=r"notes\.txt: unrecognised file type"):
        sobre.load(text)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match=r"nowhere: no such file or folder"):
        sobre.load(tmp_path / "nowhere")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.dcm: file is empty \(0 bytes\)"):
        sobre.load(empty)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match=r"dir: no image found"):
        sobre.load(tmp_path / "dir")


def test_folders_mix_formats_and_skip_unknown_files(tmp_path, rng):
    folder = tmp_path / "mixed"
    sobre.save(Image(rng.normal(size=(4, 4, 4)).astype(np.float32), AXIAL), folder / "a.nii.gz")
    sobre.save(Image(rng.integers(0, 9, (4, 4, 4)).astype(np.int16), AXIAL), folder / "b.nrrd")
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.nii.gz").write_bytes(b"ignored too")
    images = sobre.load_all(folder)
    assert sorted(Path(im.sources[0]).name for im in images) == ["a.nii.gz", "b.nrrd"]
    with pytest.raises(InputError, match=r"2 volumes found where one was expected"):
        sobre.load(folder)


def test_save_rejects_unknown_suffix_and_leaves_no_partial_file(tmp_path):
    img = Image(np.zeros((3, 3, 3), np.int16), AXIAL)
    with pytest.raises(InputError, match=r"x\.dcm: unknown output format.*write_dicom_series"):
        sobre.save(img, tmp_path / "x.dcm")
    out = sobre.save(img, tmp_path / "sub" / "x.nii.gz")
    assert out.exists() and sorted(os.listdir(tmp_path / "sub")) == ["x.nii.gz"]


def test_gzip_sniffing_needs_the_nifti_magic(tmp_path):
    fake = tmp_path / "fake.gz"
    with gzip.open(fake, "wb") as fh:
        fh.write(b"just text" * 100)
    assert _formats.sniff(fake) is None

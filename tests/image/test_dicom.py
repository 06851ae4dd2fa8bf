"""DICOM reading: series assembly, geometry, transfer syntaxes, multi-frame, inconsistent series, bad input."""

from __future__ import annotations

import shutil
import struct
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array

import sobre
from sobre import Image
from sobre.image import SeriesWarning
from sobre.errors import GeometryError, InputError
from sobre.image import _dicom

from .test_image import oblique_affine

AXIAL = np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 10.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
SAGITTAL = np.array([[0, 0, -2.5, 40.0], [0.7, 0, 0, -20.0], [0, -0.8, 0, 60.0], [0, 0, 0, 1]])
DS_TOL = 1e-6  # mm; DS strings keep 10 significant digits


def volume(rng, shape=(12, 10, 8), lo=-1000, hi=2000) -> np.ndarray:
    return rng.integers(lo, hi, shape).astype(np.int16)


def load_all_warned(path):
    """(images, [SeriesWarning messages])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = sobre.load_all(path)
    return images, [str(w.message) for w in caught if issubclass(w.category, SeriesWarning)]


def pydicom_frame(path, index=None) -> np.ndarray:
    """pydicom's decode of one file, in Sobre's axis order (i = column, j = row[, channel])."""
    arr = pixel_array(str(path)) if index is None else pixel_array(str(path), index=index)
    return np.swapaxes(arr, 0, 1)


def edit(path, **values):
    """Change header values of a written DICOM file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("affine", [AXIAL, SAGITTAL, oblique_affine()], ids=["axial", "sagittal", "oblique"])
def test_written_series_reads_back_with_the_same_geometry_and_pixels(tmp_path, rng, affine):
    arr = volume(rng)
    paths = sobre.write_dicom_series(Image(arr, affine, modality="CT"), tmp_path, uid_seed="rt",
                                     meta={"patient_id": "P1", "patient_age": "045Y", "manufacturer": "ACME"})
    assert [p.name for p in paths] == [f"IM{k:04d}.dcm" for k in range(1, 9)]
    img = sobre.load(tmp_path)
    assert not img.is_loaded  # headers only so far
    assert img.shape == arr.shape and img.spatial_ndim == 3 and img.extra_axes == ()
    assert np.allclose(img.affine, affine, atol=DS_TOL, rtol=0)
    assert img.modality == "CT" and img.dtype == np.int16
    assert np.array_equal(img.array, arr)
    assert img.metadata["patient_id"] == "P1" and img.metadata["patient_age"] == "045Y"
    assert img.metadata["manufacturer"] == "ACME" and img.metadata["series_uid"]
    assert sorted(img.sources) == sorted(str(p) for p in paths)


def test_written_series_is_deterministic_with_a_uid_seed(tmp_path, rng):
    img = Image(volume(rng, (6, 5, 3)), AXIAL, modality="MR")
    a = sobre.write_dicom_series(img, tmp_path / "a", uid_seed="same")
    b = sobre.write_dicom_series(img, tmp_path / "b", uid_seed="same")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = sobre.write_dicom_series(img, tmp_path / "c")
    assert pydicom.dcmread(c[0]).SeriesInstanceUID != pydicom.dcmread(a[0]).SeriesInstanceUID


def test_float_pixels_are_quantised_with_rescale_and_read_back(tmp_path, rng):
    arr = rng.normal(size=(9, 8, 5)) * 250.0 + 40.0
    sobre.write_dicom_series(Image(arr, AXIAL, modality="MR"), tmp_path)
    ds = pydicom.dcmread(tmp_path / "IM0001.dcm")
    slope = float(ds.RescaleSlope)
    assert slope != 1.0
    img = sobre.load(tmp_path)
    assert img.dtype == np.float32
    assert np.abs(img.array - arr).max() <= slope * 0.51 + 1e-3


def test_rescale_slope_and_intercept_are_applied(tmp_path, rng):
    stored = rng.integers(0, 4096, (6, 5, 4)).astype(np.uint16)
    paths = sobre.write_dicom_series(Image(stored, AXIAL, modality="CT"), tmp_path)
    for p in paths:
        edit(p, RescaleSlope="2", RescaleIntercept="-1024", BitsStored=12, HighBit=11)
    img = sobre.load(tmp_path)
    assert img.dtype == np.int16  # 0..4095 * 2 - 1024 fits int16
    assert np.array_equal(img.array, stored.astype(np.int32) * 2 - 1024)
    for p in paths:
        edit(p, RescaleSlope="0.5", RescaleIntercept="10.25")
    img = sobre.load(tmp_path)
    assert img.dtype == np.float32 and np.allclose(img.array, stored * 0.5 + 10.25)


def test_bits_beyond_bits_stored_are_masked_like_pydicom(tmp_path, rng):
    stored = rng.integers(0, 4096, (6, 5, 3)).astype(np.uint16)
    dirty = stored | np.uint16(0xF000)  # overlay bits in the unused high nibble
    paths = sobre.write_dicom_series(Image(dirty, AXIAL, modality="CT"), tmp_path)
    for p in paths:
        edit(p, BitsStored=12, HighBit=11)
    img = sobre.load(tmp_path)
    assert np.array_equal(img.array, stored)
    assert np.array_equal(img.array[:, :, 0], pydicom_frame(paths[0]))


def test_signed_values_are_sign_extended_from_bits_stored(tmp_path, rng):
    values = rng.integers(-2048, 2048, (6, 5, 3)).astype(np.int16)
    raw = (values.astype(np.uint16) & np.uint16(0x0FFF)).astype(np.int16)  # 12-bit two's complement
    paths = sobre.write_dicom_series(Image(raw, AXIAL, modality="CT"), tmp_path)
    for p in paths:
        edit(p, BitsStored=12, HighBit=11, PixelRepresentation=1)
    img = sobre.load(tmp_path)
    assert np.array_equal(img.array, values)


# --------------------------------------------------------------------------- slice geometry
def test_spacing_comes_from_positions_never_from_slice_thickness(tmp_path, rng):
    arr = volume(rng)
    paths = sobre.write_dicom_series(Image(arr, AXIAL, modality="CT"), tmp_path)
    for p in paths:
        edit(p, SliceThickness="7.77", SpacingBetweenSlices="9.99")
    img = sobre.load(tmp_path)
    assert img.spacing == pytest.approx((0.7, 0.8, 2.5), abs=DS_TOL)
    for p in paths:
        edit(p, SliceThickness=None, SpacingBetweenSlices=None)
    assert sobre.load(tmp_path).spacing == pytest.approx((0.7, 0.8, 2.5), abs=DS_TOL)


def test_files_out_of_order_on_disk_assemble_by_position(tmp_path, rng):
    arr = volume(rng)
    paths = sobre.write_dicom_series(Image(arr, AXIAL, modality="CT"), tmp_path / "w")
    shuffled = tmp_path / "shuffled"
    (shuffled / "sub").mkdir(parents=True)
    for new, k in enumerate(rng.permutation(len(paths))):
        # names unrelated to slice order, some in a subfolder, instance numbers scrambled too
        target = shuffled / ("sub" if new % 3 == 0 else "") / f"x{new:02d}_{rng.integers(1e6)}"
        shutil.copy(paths[k], target)
        edit(target, InstanceNumber=int(rng.integers(1, 100)))
    img = sobre.load(shuffled)
    assert np.allclose(img.affine, AXIAL, atol=DS_TOL)
    assert np.array_equal(img.array, arr)


def test_descending_positions_give_the_same_world_geometry(tmp_path, rng):
    arr = volume(rng)
    down = AXIAL.copy()
    down[:3, 2] *= -1  # slices written head to feet
    sobre.write_dicom_series(Image(arr, down, modality="CT"), tmp_path)
    img = sobre.load(tmp_path)
    # Sobre orders slices along the slice normal (row x column direction): k grows toward +z here
    assert img.affine[2, 2] == pytest.approx(2.5)
    assert np.array_equal(img.array, arr[:, :, ::-1])
    flip_k = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 7], [0, 0, 0, 1]], float)
    assert np.allclose(img.affine, down @ flip_k, atol=DS_TOL)  # every voxel keeps its world position


def test_tilted_stack_keeps_its_sheared_slice_axis(tmp_path, rng):
    # gantry tilt: slices are axial, but each one is shifted in y as k grows (k column not along the normal)
    tilted = AXIAL.copy()
    tilted[1, 2] = 2.5 * np.tan(np.deg2rad(20.0))
    arr = volume(rng)
    sobre.write_dicom_series(Image(arr, tilted, modality="CT"), tmp_path)
    img = sobre.load(tmp_path)
    assert np.allclose(img.affine, tilted, atol=DS_TOL) and np.array_equal(img.array, arr)


def test_oblique_colin27_round_trips(colin27_oblique_series):
    folder, written = colin27_oblique_series
    img = sobre.load(folder)
    assert img.is_oblique and img.shape == written.shape == (181, 217, 181)
    assert np.allclose(img.affine, written.affine, atol=1e-4, rtol=0)
    assert np.array_equal(img.array, written.array)
    assert img.metadata["patient_id"] == "COLIN27" and img.modality == "MR"


def test_axial_colin27_round_trips(colin27_axial_series):
    folder, written = colin27_axial_series
    img = sobre.load(folder)
    assert img.orientation == written.orientation == "RAS"
    assert np.allclose(img.affine, written.affine, atol=1e-4, rtol=0)
    assert np.array_equal(img.array, written.array)


def test_single_slice_is_2d_with_the_slice_normal_as_third_axis(pydicom_test_files):
    img = sobre.load(pydicom_test_files / "CT_small.dcm")
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    assert img.spatial_ndim == 2 and img.shape == (ds.Columns, ds.Rows)
    iop = np.array(ds.ImageOrientationPatient, float)
    assert np.allclose(img.direction[:, 0], iop[:3]) and np.allclose(img.direction[:, 1], iop[3:])
    assert np.allclose(img.direction[:, 2], np.cross(iop[:3], iop[3:]))
    assert np.allclose(img.origin, [float(v) for v in ds.ImagePositionPatient])
    assert img.spacing == pytest.approx([float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])
    assert np.array_equal(img.array, pydicom_frame(pydicom_test_files / "CT_small.dcm").astype(np.int32) - 1024)
    assert img.metadata["modality"] == "CT" and img.metadata["patient_id"] == ds.PatientID


# --------------------------------------------------------------------------- inconsistent series
def test_missing_slice_raises_naming_the_file_and_the_gap(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path)
    (tmp_path / "IM0005.dcm").unlink()
    with pytest.raises(GeometryError, match=r"IM0006\.dcm: \(0020,0032\) ImagePositionPatient: slice spacing is "
                                            r"uneven.*expected a step of 2\.5 mm.*found 5 mm between IM0004\.dcm and "
                                            r"IM0006\.dcm"):
        sobre.load(tmp_path)


def test_same_instance_twice_is_deduplicated(tmp_path, rng):
    arr = volume(rng)
    sobre.write_dicom_series(Image(arr, AXIAL, modality="CT"), tmp_path)
    shutil.copy(tmp_path / "IM0003.dcm", tmp_path / "copy_of_3.dcm")
    images, warned = load_all_warned(tmp_path)
    assert len(images) == 1 and warned == []
    assert np.array_equal(images[0].array, arr)


def _second_series(tmp_path, rng, first_dir, affine=AXIAL, arr=None, seed="second", **extra):
    """Write another set of files into the SeriesInstanceUID of the series in ``first_dir``."""
    ds = pydicom.dcmread(first_dir / "IM0001.dcm")
    arr = volume(rng) if arr is None else arr
    return sobre.write_dicom_series(Image(arr, affine, modality="CT"), first_dir.parent / seed, uid_seed=seed,
                                    meta={"series_uid": ds.SeriesInstanceUID, "study_uid": ds.StudyInstanceUID,
                                          "frame_of_reference_uid": ds.FrameOfReferenceUID},
                                    extra=extra or None)


def test_echoes_at_the_same_positions_are_split_with_a_warning(tmp_path, rng):
    first, second = volume(rng), volume(rng)
    sobre.write_dicom_series(Image(first, AXIAL, modality="MR"), tmp_path / "e1", uid_seed="e1",
                             extra={"EchoNumbers": 1})
    _second_series(tmp_path, rng, tmp_path / "e1", arr=second, seed="e2", EchoNumbers=2)
    images, warned = load_all_warned(tmp_path)
    assert [im.metadata["volume_label"] for im in images] == ["echo=1", "echo=2"]
    assert np.array_equal(images[0].array, first) and np.array_equal(images[1].array, second)
    assert len(warned) == 1 and "2 acquisitions at the same slice positions (echo=1, echo=2)" in warned[0]
    with pytest.raises(InputError, match=r"2 volumes found where one was expected.*\[echo=1\].*\[echo=2\]"):
        with pytest.warns(SeriesWarning):
            sobre.load(tmp_path)


def test_indistinguishable_instances_at_the_same_positions_raise(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path / "a", uid_seed="a")
    _second_series(tmp_path, rng, tmp_path / "a", seed="b")
    with pytest.raises(GeometryError, match=r"ImagePositionPatient: several frames share the same slice position "
                                            r"and no header field tells them apart.*found 16 frames in series"):
        sobre.load_all(tmp_path)


def test_several_acquisitions_in_one_series_are_split(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path / "a1", uid_seed="a1",
                             extra={"AcquisitionNumber": 1})
    _second_series(tmp_path, rng, tmp_path / "a1", seed="a2", AcquisitionNumber=2)
    images, warned = load_all_warned(tmp_path)
    assert [im.metadata["volume_label"] for im in images] == ["acquisition=1", "acquisition=2"]
    assert len(warned) == 1


def test_acquisitions_at_different_table_positions_are_split_not_stacked(tmp_path, rng):
    farther = AXIAL.copy()
    farther[2, 3] += 50.0  # a second stack 50 mm higher, leaving a gap
    a, b = volume(rng), volume(rng)
    sobre.write_dicom_series(Image(a, AXIAL, modality="CT"), tmp_path / "a1", uid_seed="a1",
                             extra={"AcquisitionNumber": 1})
    _second_series(tmp_path, rng, tmp_path / "a1", affine=farther, arr=b, seed="a2", AcquisitionNumber=2)
    images, warned = load_all_warned(tmp_path)
    assert [im.shape for im in images] == [(12, 10, 8), (12, 10, 8)]
    assert np.array_equal(images[0].array, a) and np.array_equal(images[1].array, b)
    assert np.allclose(images[1].origin, farther[:3, 3], atol=DS_TOL)
    assert len(warned) == 1 and "evenly spaced stacks (acquisition=1, acquisition=2)" in warned[0]


def test_mixed_orientations_are_split_with_a_warning(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path / "ax", uid_seed="ax")
    _second_series(tmp_path, rng, tmp_path / "ax", affine=SAGITTAL, seed="sag")
    images, warned = load_all_warned(tmp_path)
    assert sorted(im.orientation for im in images) == sorted(["LPS", "PIR"])
    assert all(im.metadata["volume_label"].startswith("part=") for im in images)
    assert len(warned) == 1 and "mixes 2 different image sizes/orientations/spacings" in warned[0]


def test_mixed_sizes_are_split_with_a_warning(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path / "big", uid_seed="big")
    _second_series(tmp_path, rng, tmp_path / "big", arr=volume(rng, (6, 10, 8)), seed="small")
    images, warned = load_all_warned(tmp_path)
    assert sorted(im.shape for im in images) == [(6, 10, 8), (12, 10, 8)]
    assert len(warned) == 1


def test_series_uid_selects_one_of_several_series(tmp_path, rng):
    a, b = volume(rng), volume(rng, (5, 5, 4))
    sobre.write_dicom_series(Image(a, AXIAL, modality="CT"), tmp_path / "a", meta={"series_uid": "1.2.3.1"})
    sobre.write_dicom_series(Image(b, AXIAL, modality="CT"), tmp_path / "b", meta={"series_uid": "1.2.3.2"})
    assert len(sobre.load_all(tmp_path)) == 2
    assert np.array_equal(sobre.load(tmp_path, series_uid="1.2.3.2").array, b)


def test_on_warning_callback_receives_series_warnings(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path / "ax", uid_seed="ax")
    _second_series(tmp_path, rng, tmp_path / "ax", affine=SAGITTAL, seed="sag")
    messages: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may reach the warnings module
        images = sobre.load_all(tmp_path, on_warning=messages.append)
    assert len(images) == 2 and len(messages) == 1


# --------------------------------------------------------------------------- real series
def test_real_ct_stack_from_a_dicomdir_folder(pydicom_test_files):
    folder = pydicom_test_files / "dicomdirtests/98892001/CT5N"
    img = sobre.load(folder)
    assert img.shape == (16, 16, 5) and img.modality == "CT"
    assert img.spacing[2] == pytest.approx(2.5, abs=1e-4)
    positions = sorted(
        (np.array(pydicom.dcmread(p).ImagePositionPatient, float) for p in folder.iterdir()),
        key=lambda v: v[2],
    )
    assert np.allclose(img.origin, positions[0], atol=1e-4)
    assert np.allclose(img.voxel_to_world([0, 0, 4]), positions[-1], atol=1e-4)


def test_real_unevenly_spaced_ct_is_refused(pydicom_test_files):
    with pytest.raises(GeometryError, match=r"CT2/\d+: \(0020,0032\) ImagePositionPatient: slice spacing is uneven"):
        sobre.load(pydicom_test_files / "dicomdirtests/77654033/CT2")


def test_real_localizer_with_seven_orientations_is_split(pydicom_test_files):
    images, warned = load_all_warned(pydicom_test_files / "dicomdirtests/98892003/MR700")
    assert len(images) == 7 and all(im.spatial_ndim == 2 for im in images)
    assert len(warned) == 1 and "split into 7 volumes" in warned[0]


def test_dicomdir_index_files_are_ignored(pydicom_test_files, tmp_path):
    shutil.copytree(pydicom_test_files / "dicomdirtests/98892001/CT5N", tmp_path / "CT5N")
    shutil.copy(pydicom_test_files / "dicomdirtests/DICOMDIR", tmp_path / "DICOMDIR")
    assert sobre.load(tmp_path).shape == (16, 16, 5)


def test_siemens_mosaic_with_irregular_tiles_is_refused(sample):
    path = sample("nibabel-data") / "nibabel/tests/data/0.dcm"
    with pytest.raises(GeometryError, match=r"0\.dcm: \(0028,0010\) Rows: Siemens mosaic layout is irregular "
                                            r"\(expected a 7×7 grid of 36×36 tiles = 252×252 pixels; "
                                            r"found 256×256 pixels\)"):
        sobre.load(path)


def test_rt_dose_grid_frame_offsets_give_the_slice_spacing(pydicom_test_files):
    path = pydicom_test_files / "rtdose.dcm"
    ds = pydicom.dcmread(path)
    img = sobre.load(path)
    assert img.shape == (ds.Columns, ds.Rows, ds.NumberOfFrames) and img.spatial_ndim == 3
    offsets = np.array(ds.GridFrameOffsetVector, float)
    assert img.spacing[2] == pytest.approx(abs(offsets[1] - offsets[0]))
    # values are doses: stored values × DoseGridScaling (3004,000E), in the unit DoseUnits says
    stored = np.transpose(pixel_array(str(path)), (2, 1, 0)).astype(np.float64)
    assert img.dtype == np.float32
    assert np.allclose(img.array, stored * float(ds.DoseGridScaling), rtol=1e-6, atol=0)
    assert ds.DoseUnits == img.metadata["dose_units"] == "RELATIVE" and img.metadata["units"] == "relative"
    assert img.metadata["dose_grid_scaling"] == pytest.approx(float(ds.DoseGridScaling))


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_1frame.dcm", "rtdose_expb.dcm", "rtdose_rle.dcm",
                                  "rtdose_rle_1frame.dcm", "rtdose_expb_1frame.dcm"])
def test_rt_dose_values_are_scaled_to_gray(pydicom_test_files, name):
    path = pydicom_test_files / name
    ds = pydicom.dcmread(path)
    img = sobre.load(path)
    stored = pixel_array(str(path)).astype(np.float64) * float(ds.DoseGridScaling)
    expected = np.transpose(stored, (2, 1, 0)) if stored.ndim == 3 else stored.T
    assert img.dtype == np.float32 and np.allclose(img.array, expected, rtol=1e-6, atol=0)
    assert img.metadata["dose_units"] == ds.DoseUnits and img.metadata["dose_type"] == ds.DoseType


def test_rt_dose_in_gray_says_so(tmp_path, pydicom_test_files):
    ds = pydicom.dcmread(pydicom_test_files / "rtdose_1frame.dcm")
    ds.DoseUnits = "GY"
    ds.save_as(tmp_path / "dose.dcm")
    img = sobre.load(tmp_path / "dose.dcm")
    assert img.metadata["dose_units"] == "GY" and img.metadata["units"] == "Gy"
    assert img.summary()["metadata"]["units"] == "Gy"


def test_rt_dose_with_a_damaged_scaling_is_refused(tmp_path, pydicom_test_files):
    ds = pydicom.dcmread(pydicom_test_files / "rtdose_1frame.dcm")
    ds.DoseGridScaling = "-1"
    ds.save_as(tmp_path / "dose.dcm")
    with pytest.raises(InputError, match=r"dose\.dcm: \(3004,000E\) DoseGridScaling: dose grid scaling is not a "
                                         r"positive number \(expected a positive decimal \(Gy per stored unit\); "
                                         r"found '-1'\)"):
        sobre.load(tmp_path / "dose.dcm")


# --------------------------------------------------------------------------- multi-frame, enhanced
def test_enhanced_ct_uses_per_frame_positions(pydicom_data):
    path = pydicom_data / "eCT_Supplemental.dcm"
    ds = pydicom.dcmread(path)
    img = sobre.load(path)
    assert img.shape == (512, 512, 2) and img.modality == "CT"
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in ds.PerFrameFunctionalGroupsSequence]
    normal = np.cross(*np.array(
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float
    ).reshape(2, 3))
    first = min(positions, key=lambda p: float(np.dot(p, normal)))
    assert np.allclose(img.origin, first, atol=1e-4)
    assert img.spacing == pytest.approx((0.388672, 0.388672, 10.0), abs=1e-4)
    stored = np.transpose(pixel_array(str(path)), (2, 1, 0)).astype(np.int32)
    pv = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    expected = stored * int(pv.RescaleSlope) + int(pv.RescaleIntercept)
    order = np.argsort([float(np.dot(p, normal)) for p in positions])
    assert np.array_equal(img.array, expected[:, :, order])


def test_multiframe_without_positions_has_a_frame_axis(pydicom_data):
    img = sobre.load(pydicom_data / "emri_small.dcm")
    assert img.shape == (64, 64, 10) and img.extra_axes == ("frame",) and img.spatial_ndim == 2
    assert np.array_equal(img.array, np.transpose(pixel_array(str(pydicom_data / "emri_small.dcm")), (2, 1, 0)))


@pytest.mark.parametrize(
    "variant",
    ["emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm",
     "emri_small_jpeg_ls_lossless.dcm"],
)
def test_multiframe_transfer_syntaxes_give_equal_arrays(pydicom_data, variant):
    reference = sobre.load(pydicom_data / "emri_small.dcm").array
    img = sobre.load(pydicom_data / variant)
    assert img.shape == reference.shape and img.dtype == reference.dtype
    assert np.array_equal(img.array, reference)


@pytest.mark.parametrize(
    "reference, variant",
    [
        ("pydicom:MR_small.dcm", "pydicom:MR_small_RLE.dcm"),
        ("pydicom:MR_small.dcm", "pydicom:MR_small_bigendian.dcm"),
        ("pydicom:MR_small.dcm", "pydicom:MR_small_expb.dcm"),
        ("pydicom:MR_small.dcm", "pydicom:MR_small_implicit.dcm"),
        ("pydicom:MR_small.dcm", "pydicom:MR_small_jp2klossless.dcm"),
        ("pydicom:MR_small.dcm", "pydicom:MR_small_jpeg_ls_lossless.dcm"),
        ("pydicom:MR_small.dcm", "pydicom:MR_small_padded.dcm"),
        ("data:MR2_UNCR.dcm", "data:MR2_J2KR.dcm"),
        ("data:693_UNCR.dcm", "data:693_J2KR.dcm"),
        ("data:RG1_UNCR.dcm", "data:RG1_J2KR.dcm"),
        ("data:US1_UNCR.dcm", "data:US1_J2KR.dcm"),
        ("data:OBXXXX1A.dcm", "data:OBXXXX1A_rle.dcm"),
        ("data:OBXXXX1A.dcm", "data:OBXXXX1A_expb.dcm"),
        ("data:SC_rgb.dcm", "data:SC_rgb_expb.dcm"),
        ("data:SC_rgb.dcm", "pydicom:SC_rgb_rle.dcm"),
        ("data:SC_rgb_16bit.dcm", "pydicom:SC_rgb_rle_16bit.dcm"),
        ("data:SC_rgb_2frame.dcm", "pydicom:SC_rgb_rle_2frame.dcm"),
        ("data:liver.dcm", "data:liver_expb.dcm"),
    ],
)
def test_lossless_transfer_syntaxes_give_equal_arrays(pydicom_data, pydicom_test_files, reference, variant):
    def path(spec):
        where, name = spec.split(":")
        return (pydicom_test_files if where == "pydicom" else pydicom_data) / name

    ref, img = sobre.load(path(reference)), sobre.load(path(variant))
    assert img.shape == ref.shape and img.extra_axes == ref.extra_axes
    assert np.array_equal(img.array.astype(np.float64), ref.array.astype(np.float64))
    assert np.allclose(img.affine, ref.affine)


@pytest.mark.parametrize(
    "where, name, syntax",
    [
        ("data", "JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless, process 14 SV1
        ("data", "JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70"),
        ("pydicom", "JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended, 12-bit
        ("pydicom", "JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
        ("pydicom", "SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline
        ("data", "US1_J2KI.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000 (lossy)
    ],
)
def test_compressed_files_equal_pydicom_decode(pydicom_data, pydicom_test_files, where, name, syntax):
    path = (pydicom_test_files if where == "pydicom" else pydicom_data) / name
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    img = sobre.load(path)
    expected = np.swapaxes(ds.pixel_array, 0, 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    assert img.shape == expected.shape and expected.std() > 0
    assert np.array_equal(img.array.astype(np.float64), expected * slope + intercept)


def test_lossy_jpeg_is_close_to_the_original(pydicom_data, pydicom_test_files):
    ref = sobre.load(pydicom_data / "SC_rgb.dcm").array.astype(int)
    lossy = sobre.load(pydicom_test_files / "SC_rgb_jpeg_gdcm.dcm").array.astype(int)
    assert lossy.shape == ref.shape == (100, 100, 3)
    assert np.abs(lossy - ref).mean() < 3


def test_deflated_transfer_syntax_matches_pydicom(pydicom_test_files):
    path = pydicom_test_files / "image_dfl.dcm"
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: "Expected explicit VR, but found implicit VR"
        img = sobre.load(path)
        arr = img.array
        expected = np.swapaxes(pydicom.dcmread(path).pixel_array, 0, 1)
    assert img.shape == (512, 512) and np.array_equal(arr, expected)


def test_rgb_has_a_channel_axis_with_known_colours(pydicom_data):
    img = sobre.load(pydicom_data / "SC_rgb.dcm")
    assert img.shape == (100, 100, 3) and img.extra_axes == ("channel",) and img.dtype == np.uint8
    assert img.coordinate_system == "pixel"
    # the test pattern: horizontal stripes, 10 rows each, red, pink, green, ..., white (array[column, row])
    assert tuple(int(v) for v in img.array[50, 0]) == (255, 0, 0)
    assert tuple(int(v) for v in img.array[50, 25]) == (0, 255, 0)
    assert tuple(int(v) for v in img.array[50, 45]) == (0, 0, 255)
    assert tuple(int(v) for v in img.array[0, 95]) == (255, 255, 255)
    assert np.array_equal(img.array, pydicom_frame(pydicom_data / "SC_rgb.dcm"))


def test_ybr_colour_is_converted_to_rgb(pydicom_data):
    rgb = sobre.load(pydicom_data / "SC_rgb.dcm").array.astype(int)
    ybr = sobre.load(pydicom_data / "SC_ybr_full_uncompressed.dcm").array.astype(int)
    assert ybr.shape == rgb.shape
    assert np.abs(ybr - rgb).max() <= 8 and np.abs(ybr - rgb).mean() < 1  # YBR_FULL rounding


def test_palette_colour_is_expanded_through_the_lut(pydicom_data):
    from pydicom.pixels import apply_color_lut

    path = pydicom_data / "OT-PAL-8-face.dcm"
    img = sobre.load(path)
    ds = pydicom.dcmread(path, force=True)  # no DICM prefix, no file meta: say how it is encoded
    ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if ds.original_encoding[0]
                                      else pydicom.uid.ExplicitVRLittleEndian)
    assert img.extra_axes == ("channel",) and img.shape == (ds.Columns, ds.Rows, 3)
    assert np.array_equal(img.array, np.swapaxes(apply_color_lut(ds.pixel_array, ds), 0, 1))


def test_big_endian_palette_colour_matches_little_endian(pydicom_data):
    # pydicom 3.0's apply_color_lut reads LUT data in machine byte order; Sobre corrects it
    little = sobre.load(pydicom_data / "OBXXXX1A.dcm")
    big = sobre.load(pydicom_data / "OBXXXX1A_expb.dcm")
    assert big.extra_axes == ("channel",) and np.array_equal(big.array, little.array)
    frames = sobre.load(pydicom_data / "OBXXXX1A_expb_2frame.dcm")
    assert frames.extra_axes == ("frame", "channel")
    assert np.array_equal(frames.array[:, :, 0], little.array)


def test_ultrasound_colour_cine_has_frame_and_channel_axes(pydicom_data):
    path = pydicom_data / "color3d_jpeg_baseline.dcm"
    img = sobre.load(path)
    assert img.shape == (640, 480, 120, 3) and img.extra_axes == ("frame", "channel")
    assert img.spatial_ndim == 2 and img.modality == "US" and img.dtype == np.uint8
    arr = img.array
    for k in (0, 59, 119):
        assert np.array_equal(arr[:, :, k], pydicom_frame(path, index=k))


def test_uncompressed_fast_path_equals_pydicom_on_every_native_file(pydicom_data, pydicom_test_files):
    """Uncompressed grey pixels are read straight from the file; the result must equal pydicom's decode."""
    checked = 0
    files = sorted(pydicom_data.glob("*.dcm")) + sorted(pydicom_test_files.glob("*.dcm"))
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = _dicom.read_header(path)
                _dicom.check_image(ds, path)
                frames = _dicom.frames_of(ds, path)
            except (InputError, GeometryError):
                continue
            if frames[0].native is None:
                continue
            for plan in _dicom.assemble(frames, on_warning=lambda m: None):
                fast = _dicom.load_pixels(plan)
                for f in plan.frames:
                    f.native = None
                slow = _dicom.load_pixels(plan)
                assert fast.dtype == slow.dtype and np.array_equal(fast, slow), path.name
                checked += 1
    assert checked >= 20


def test_arrays_are_fortran_ordered_so_frames_are_contiguous(tmp_path, rng):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path)
    arr = sobre.load(tmp_path).array
    assert arr.flags.f_contiguous and arr[:, :, 3].flags.f_contiguous


# --------------------------------------------------------------------------- laziness
def test_load_reads_headers_only_and_pixels_on_access(tmp_path, rng, monkeypatch):
    sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were read")

    monkeypatch.setattr(_dicom, "_read_native", refuse)
    monkeypatch.setattr(_dicom, "_decode_file", refuse)
    img = sobre.load(tmp_path)
    assert img.shape == (12, 10, 8) and not img.is_loaded
    monkeypatch.undo()
    (tmp_path / "IM0004.dcm").unlink()
    with pytest.raises(InputError, match=r"IM0004\.dcm: file has disappeared since it was read"):
        img.array  # noqa: B018


# --------------------------------------------------------------------------- bad input
def test_zero_byte_file(tmp_path):
    p = tmp_path / "zero.dcm"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"zero\.dcm: file is empty \(0 bytes\)"):
        sobre.load(p)
    with pytest.raises(InputError, match=r"zero\.dcm: file is empty"):
        _dicom.read_header(p)


def test_file_without_dicm_prefix(tmp_path, rng):
    p = tmp_path / "noise.dcm"
    p.write_bytes(rng.bytes(4096))
    with pytest.raises(InputError, match=r"noise\.dcm: not a DICOM file \(expected 'DICM' at byte 128"):
        _dicom.read_header(p)
    with pytest.raises(InputError, match=r"noise\.dcm: unrecognised file type"):
        sobre.load(p)


def test_non_image_objects_are_refused_with_the_sop_class(pydicom_test_files):
    for name, sop in (("rtplan.dcm", "RT Plan Storage"), ("test-SR.dcm", "Comprehensive SR Storage"),
                      ("waveform_ecg.dcm", "12-lead ECG Waveform Storage")):
        with pytest.raises(InputError, match=rf"{name}: \(7FE0,0010\) PixelData: DICOM object holds no pixel "
                                             rf"data \(expected an image; found SOP class {sop}\)"):
            sobre.load(pydicom_test_files / name)


def test_image_object_without_pixel_data(tmp_path, rng):
    paths = sobre.write_dicom_series(Image(volume(rng, (4, 4, 1)), AXIAL, modality="CT"), tmp_path)
    edit(paths[0], PixelData=None)
    with pytest.raises(InputError, match=r"IM0001\.dcm: \(7FE0,0010\) PixelData: DICOM object holds no pixel data "
                                         r"\(expected an image; found SOP class CT Image Storage\)\. .*cut short"):
        sobre.load(paths[0])


def test_truncated_native_pixel_data(tmp_path, rng, pydicom_test_files):
    paths = sobre.write_dicom_series(Image(volume(rng), AXIAL, modality="CT"), tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"IM0003\.dcm: \(7FE0,0010\) PixelData: file is truncated inside an "
                                         r"element \(expected 240 bytes of value from byte \d+; found the end of the "
                                         r"file at byte \d+\)"):
        sobre.load(tmp_path)
    with pytest.raises(InputError, match=r"MR_truncated\.dcm: \(7FE0,0010\) PixelData: file is truncated"):
        sobre.load(pydicom_test_files / "MR_truncated.dcm")


def test_truncated_header(tmp_path, pydicom_test_files):
    data = (pydicom_test_files / "CT_small.dcm").read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[:900])  # inside the element header that follows byte 898
    with pytest.raises(InputError, match=r"cut\.dcm: file is truncated: it ends inside an element header "
                                         r"\(expected a complete element after byte 898; found 2 stray byte"):
        sobre.load(p)
    p.write_bytes(data[:3000])  # inside a value
    with pytest.raises(InputError, match=r"cut\.dcm: .*file is truncated"):
        sobre.load(p)


def test_every_truncation_of_a_file_is_an_input_error(tmp_path, pydicom_test_files):
    """Cut a small file at many points: each gives an InputError naming the file, never another exception."""
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm"):
        data = (pydicom_test_files / name).read_bytes()
        p = tmp_path / f"cut_{name}"
        for cut in range(133, len(data) - 1, 97):
            p.write_bytes(data[:cut])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(InputError, match=rf"cut_{name.replace('.', '[.]')}"):
                    sobre.load(p).array  # noqa: B018


def test_compressed_frames_too_short_for_their_delimiter(pydicom_data):
    path = pydicom_data / "emri_small_jpeg_2k_lossless_too_short.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the missing delimiter first
        with pytest.raises(InputError, match=r"too_short\.dcm: \(7FE0,0010\) PixelData: pixel data is truncated: "
                                             r"the compressed frames run past the end of the file"):
            sobre.load(path)


def test_corrupt_jpeg2000_frame_cannot_be_decoded(tmp_path, pydicom_test_files):
    ds = pydicom.dcmread(pydicom_test_files / "MR_small_jp2klossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # a well-formed item holding a third of the codestream
    ds.save_as(tmp_path / "j2k_cut.dcm")
    img = sobre.load(tmp_path / "j2k_cut.dcm")  # the header is fine
    assert img.shape == (64, 64)
    with pytest.raises(InputError, match=r"j2k_cut\.dcm: \(7FE0,0010\) PixelData: pixel data cannot be decoded"):
        img.array  # noqa: B018


def test_garbled_header_values_name_their_tag(pydicom_test_files):
    with pytest.raises(InputError, match=r"badVR\.dcm: \(0028,0008\) NumberOfFrames: value is not an integer "
                                         r"\(expected an integer; found '1A'\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sobre.load(pydicom_test_files / "badVR.dcm")


# Malformed DICOM built from bytes, in the manner of pydicom's tests/test_filereader.py
def _elem(group: int, element: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian data element."""
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    n = len(value) if length is None else length
    head = struct.pack("<HH", group, element) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + b"\x00\x00" + struct.pack("<I", n) + value
    return head + struct.pack("<H", n) + value


def _us(group: int, element: int, v: int) -> bytes:
    return _elem(group, element, "US", struct.pack("<H", v))


def _part10(body: bytes) -> bytes:
    meta = (_elem(2, 1, "OB", b"\x00\x01") + _elem(2, 2, "UI", b"1.2.840.10008.5.1.4.1.1.7")
            + _elem(2, 3, "UI", b"1.2.3.4") + _elem(2, 0x10, "UI", b"1.2.840.10008.1.2.1"))
    return b"\x00" * 128 + b"DICM" + _elem(2, 0, "UL", struct.pack("<I", len(meta))) + meta + body


def _image(rows=2, cols=2, extra=b"", frames=None, pixels=None) -> bytes:
    body = (_elem(8, 0x16, "UI", b"1.2.840.10008.5.1.4.1.1.7") + _elem(8, 0x18, "UI", b"1.2.3.4")
            + _elem(8, 0x60, "CS", b"OT") + _elem(0x20, 0x0D, "UI", b"1.2.3") + _elem(0x20, 0x0E, "UI", b"1.2.3.5"))
    body += extra + _us(0x28, 2, 1) + _elem(0x28, 4, "CS", b"MONOCHROME2")
    if frames is not None:
        body += _elem(0x28, 8, "IS", frames)
    body += _us(0x28, 0x10, rows) + _us(0x28, 0x11, cols)
    body += _us(0x28, 0x100, 16) + _us(0x28, 0x101, 16) + _us(0x28, 0x102, 15) + _us(0x28, 0x103, 0)
    pixels = struct.pack(f"<{rows * cols}H", *range(rows * cols)) if pixels is None else pixels
    return body + _elem(0x7FE0, 0x10, "OW", pixels)


def test_dicom_built_from_bytes_reads(tmp_path):
    p = tmp_path / "ok.dcm"
    p.write_bytes(_part10(_image(rows=2, cols=3)))
    img = sobre.load(p)
    assert img.shape == (3, 2) and np.array_equal(img.array, np.arange(6, dtype=np.uint16).reshape(2, 3).T)
    raw = tmp_path / "raw.dcm"  # no preamble, no file meta: a pre-Part-10 dataset starting with group 0008
    raw.write_bytes(_image(rows=2, cols=3))
    assert np.array_equal(sobre.load(raw).array, img.array)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("short_pixels", _part10(_image())[:-4],
         r"\(7FE0,0010\) PixelData: file is truncated inside an element \(expected 8 bytes of value"),
        ("header_cut", _part10(_image())[:-23],
         r"file is truncated: it ends inside an element header"),
        ("length_overflow",
         _part10(_image()).replace(_elem(0x28, 4, "CS", b"MONOCHROME2"), _elem(0x28, 4, "CS", b"MONOCHROME2", 0xFFF0)),
         r"\(0028,0004\) PhotometricInterpretation: file is truncated inside an element \(expected 65520 bytes"),
        ("frames_not_int", _part10(_image(frames=b"abc")),
         r"\(0028,0008\) NumberOfFrames: value is not an integer \(expected an integer; found 'abc'\)"),
        ("position_2_values",
         _part10(_image(extra=_elem(0x20, 0x32, "DS", b"1\\2") + _elem(0x20, 0x37, "DS", b"1\\0\\0\\0\\1\\0"))),
         r"\(0020,0032\) ImagePositionPatient: value has the wrong number of items \(expected 3 finite numbers"),
        ("spacing_text", _part10(_image(extra=_elem(0x28, 0x30, "DS", b"a\\b"))),
         r"\(0028,0030\) PixelSpacing: value is not numeric"),
        ("no_rows", _part10(_image(rows=0, pixels=b"")),
         r"\(0028,0010\) Rows / \(0028,0011\) Columns: image has no pixels \(expected positive Rows and Columns; "
         r"found 0×2\)"),
        ("dicm_then_noise", _part10(b"")[:132] + bytes(range(256)) * 4,
         r"\(0100,0302\) private element: file is truncated inside an element"),
    ],
)
def test_malformed_dicom_built_from_bytes(tmp_path, name, data, message):
    p = tmp_path / f"{name}.dcm"
    p.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=rf"{name}\.dcm: {message}"):
            sobre.load(p).array  # noqa: B018


def test_write_dicom_series_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(InputError, match="only images with a patient frame"):
        sobre.write_dicom_series(Image(np.zeros((4, 4), np.uint8), coordinate_system="pixel"), tmp_path)
    with pytest.raises(InputError, match="only grey-level 2D/3D images"):
        sobre.write_dicom_series(Image(np.zeros((4, 4, 3), np.uint8), extra_axes="channel"), tmp_path)


def test_rescale_does_not_apply_to_colour_palette_or_1_bit_pixels(tmp_path, pydicom_data):
    for name in ("SC_rgb.dcm", "OBXXXX1A.dcm", "liver_1frame.dcm"):
        src = pydicom_data / name if (pydicom_data / name).exists() else None
        if src is None:
            continue
        ds = pydicom.dcmread(src)
        ds.RescaleSlope, ds.RescaleIntercept = "1e308", "-7"  # meaningless here (PS3.3 C.11.1): ignored
        ds.save_as(tmp_path / name)
        assert np.array_equal(sobre.load(tmp_path / name).array, sobre.load(src).array)


@pytest.mark.parametrize("slope, intercept, bad", [("inf", "0", "RescaleSlope"), ("0", "0", "RescaleSlope"),
                                                   ("1", "nan", "RescaleIntercept")])
def test_rescale_values_that_are_not_numbers_name_their_tag(tmp_path, rng, slope, intercept, bad):
    paths = sobre.write_dicom_series(Image(volume(rng, (4, 3, 2)), AXIAL, modality="CT"), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: "Invalid value for VR DS"
        for p in paths:
            edit(p, RescaleSlope=slope, RescaleIntercept=intercept)
    with pytest.raises(InputError, match=rf"IM0001\.dcm: \(0028,105[23]\) {bad}: rescale value is not usable"):
        sobre.load(tmp_path)


def test_singular_pixel_spacing_names_the_file(tmp_path, rng):
    paths = sobre.write_dicom_series(Image(volume(rng, (4, 3, 2)), AXIAL, modality="CT"), tmp_path)
    for p in paths:
        edit(p, PixelSpacing=["1e-30", "1e-30"])
    with pytest.raises(GeometryError, match=r"IM0001\.dcm: \(0028,0030\) PixelSpacing / \(0020,0032\) "
                                            r"ImagePositionPatient: affine is singular or not finite"):
        sobre.load(tmp_path)

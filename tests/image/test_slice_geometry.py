"""Slice regularity and damaged orientation: what a real series may carry, and what must be refused.

Slice positions are judged against a least-squares uniform grid (``_dicom.SLICE_POSITION_TOL``, a
fifth of a voxel), so positions stored to 0.1 mm read; missing, extra or misplaced slices, drifting
spacing and mixed stacks do not. A damaged ImageOrientationPatient gives pixel coordinates, a
warning and ``metadata["geometry_problem"]`` — never an LPS affine built from garbage.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

import sobre
from sobre import Image
from sobre.errors import GeometryError
from sobre.image import SeriesWarning, _dicom, lps_to_ras

from .test_image import oblique_affine

# a doubly oblique MR grid: 0.9 mm pixels, 7 mm slices, an origin off the 0.1 mm lattice
OBLIQUE_7MM = oblique_affine(spacing=(0.9, 0.9, 7.0), origin=(-101.234, 47.891, 12.345), ax=17.0, ay=-23.0)


def rounded_series(folder, rng, affine=OBLIQUE_7MM, shape=(24, 20, 18), decimals=1):
    """(paths, voxels): an MR series whose ImagePositionPatient values are rounded to ``decimals``."""
    arr = rng.integers(0, 1000, shape).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, affine, modality="MR"), folder, uid_seed=f"rounded-{folder.name}")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [f"{round(float(v), decimals):.{decimals}f}" for v in ds.ImagePositionPatient]
        ds.save_as(p)
    return paths, arr


def set_position(path, position):
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.save_as(path)


def set_raw(path, keyword: str, vr: str, value: bytes) -> None:
    """Store ``value`` as the raw bytes of an element, whatever they are (pydicom would refuse garbage)."""
    ds = pydicom.dcmread(path)
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    if len(value) % 2:
        value += b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(path)


def normal_of(affine):
    n = np.cross(affine[:3, 0], affine[:3, 1])
    return n / np.linalg.norm(n)


# --------------------------------------------------------------------------- regularity
def test_oblique_positions_rounded_to_0_1_mm_read_with_the_fitted_spacing(tmp_path, rng):
    paths, arr = rounded_series(tmp_path, rng)
    positions = np.array([[float(v) for v in pydicom.dcmread(p).ImagePositionPatient] for p in paths])
    steps = np.diff(positions @ normal_of(OBLIQUE_7MM))
    assert np.abs(steps / np.median(steps) - 1).max() > 0.01  # single steps are off by more than 1 %
    img = sobre.load(tmp_path)
    assert img.shape == arr.shape and np.array_equal(img.array, arr)
    # the third column is the least-squares step: within 0.02 mm of the true 7 mm grid (single steps: ~0.1 mm off)
    assert np.abs(img.affine[:3, 2] - OBLIQUE_7MM[:3, 2]).max() < 0.02
    assert img.spacing[2] == pytest.approx(7.0, abs=0.01)
    assert np.abs(img.affine[:3, :2] - OBLIQUE_7MM[:3, :2]).max() < 1e-6
    dev = img.metadata["slice_position_deviation_mm"]
    assert 0.01 < dev <= np.sqrt(3) * 0.05 + 0.02  # rounding to 0.1 mm moves each coordinate by <= 0.05 mm
    fitted = img.affine[:3, 3][None, :] + np.arange(len(paths))[:, None] * img.affine[:3, 2][None, :]
    assert np.linalg.norm(fitted - positions, axis=1).max() == pytest.approx(dev, abs=1e-6)


def test_exact_positions_have_no_deviation_and_keep_the_first_position(tmp_path, rng):
    arr = rng.integers(0, 1000, (8, 6, 5)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, OBLIQUE_7MM, modality="MR"), tmp_path)
    img = sobre.load(tmp_path)
    assert img.metadata["slice_position_deviation_mm"] < 1e-5
    first = [float(v) for v in pydicom.dcmread(paths[0]).ImagePositionPatient]
    assert np.allclose(img.origin, first, atol=1e-5) and np.allclose(img.affine, OBLIQUE_7MM, atol=1e-5)


@pytest.mark.peers
def test_rounded_oblique_series_agrees_with_dcm2niix(dcm2niix, tmp_path, rng):
    from .test_dcm2niix import run_dcm2niix

    rounded_series(tmp_path / "series", rng)
    (nii,) = run_dcm2niix(dcm2niix, tmp_path / "series", tmp_path)
    img = sobre.load(tmp_path / "series")
    ours = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(img.array), img.affine_ras))
    theirs = nib.as_closest_canonical(nib.load(nii))
    assert ours.shape == theirs.shape
    assert np.array_equal(np.asarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    # dcm2niix takes its step from single slices; both stay within the rounding of the positions (0.1 mm)
    assert np.abs(ours.affine - theirs.affine).max() < 0.1
    truth = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(img.array), lps_to_ras(OBLIQUE_7MM)))
    assert np.abs(ours.affine - truth.affine).max() <= np.abs(theirs.affine - truth.affine).max() + 1e-3


def test_missing_slice_of_a_rounded_series_is_still_refused(tmp_path, rng):
    paths, _ = rounded_series(tmp_path, rng)
    paths[9].unlink()
    with pytest.raises(GeometryError, match=r"IM0011\.dcm: \(0020,0032\) ImagePositionPatient: slice spacing is uneven: "
                                            r"a gap where slices are missing \(expected a step of 7(\.0\d*)? mm between "
                                            r"slices; found 14(\.\d+)? mm between IM0009\.dcm and IM0011\.dcm\)"):
        sobre.load(tmp_path)


def test_missing_first_inner_slice_of_three_is_refused(tmp_path, rng):
    arr = rng.integers(0, 1000, (6, 5, 4)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, OBLIQUE_7MM, modality="MR"), tmp_path)
    paths[1].unlink()  # 0, 14, 21 mm: the median step is 7 mm, one step of 14 mm
    with pytest.raises(GeometryError, match=r"a gap where slices are missing"):
        sobre.load(tmp_path)


def test_extra_slice_between_two_regular_ones_is_refused(tmp_path, rng):
    paths, _ = rounded_series(tmp_path, rng, decimals=4)
    stray = tmp_path / "stray.dcm"
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["stray"])
    ds.save_as(stray)
    set_position(stray, OBLIQUE_7MM[:3, 3] + 4.6 * OBLIQUE_7MM[:3, 2])
    with pytest.raises(GeometryError, match=r"slice spacing is uneven: an extra or misplaced slice between two "
                                            r"regular ones"):
        sobre.load(tmp_path)


def test_drifting_spacing_is_refused_though_each_step_is_close_to_the_median(tmp_path, rng):
    paths = sobre.write_dicom_series(Image(rng.integers(0, 9, (6, 5, 12)).astype(np.int16), OBLIQUE_7MM,
                                           modality="MR"), tmp_path)
    z = np.cumsum(np.linspace(6.0, 8.0, len(paths))) - 6.0  # steps grow from 6 to 8 mm
    for p, d in zip(paths, z):
        set_position(p, OBLIQUE_7MM[:3, 3] + d * normal_of(OBLIQUE_7MM))
    with pytest.raises(GeometryError, match=r"slice spacing is uneven: the slices do not follow a regular grid "
                                            r"\(expected every slice origin within 1\.4\d* mm of a uniform 7\.\d+ mm "
                                            r"grid along the slice normal"):
        sobre.load(tmp_path)


def test_slices_shifted_in_plane_are_not_one_stack(tmp_path, rng):
    paths = sobre.write_dicom_series(Image(rng.integers(0, 9, (6, 5, 6)).astype(np.int16), OBLIQUE_7MM,
                                           modality="MR"), tmp_path)
    ds = pydicom.dcmread(paths[3])
    shifted = np.array([float(v) for v in ds.ImagePositionPatient]) + 2.0 * OBLIQUE_7MM[:3, 0] / 0.9
    set_position(paths[3], shifted)  # 2 mm along the rows: more than 0.2 pixel off the line
    with pytest.raises(GeometryError, match=r"IM0004\.dcm: \(0020,0032\) ImagePositionPatient: slice positions do not "
                                            r"lie on a straight line .*0\.18 mm of it across .*found IM0004\.dcm "
                                            r"[\d.e+-]+ mm off along the normal and 1\.6\d* mm across"):
        sobre.load(tmp_path)


def test_misplacement_just_inside_the_tolerance_reads(tmp_path, rng):
    paths = sobre.write_dicom_series(Image(rng.integers(0, 9, (6, 5, 9)).astype(np.int16), OBLIQUE_7MM,
                                           modality="MR"), tmp_path)
    ds = pydicom.dcmread(paths[4])
    moved = np.array([float(v) for v in ds.ImagePositionPatient]) + 1.2 * normal_of(OBLIQUE_7MM)
    set_position(paths[4], moved)  # 1.2 mm off on a 7 mm grid: about 1.07 mm from the fitted line
    img = sobre.load(tmp_path)
    assert 1.0 < img.metadata["slice_position_deviation_mm"] < 0.2 * 7.0
    set_position(paths[4], moved + 0.6 * normal_of(OBLIQUE_7MM))  # 1.8 mm: past a fifth of the step
    with pytest.raises(GeometryError, match="do not follow a regular grid"):
        sobre.load(tmp_path)


# --------------------------------------------------------------------------- damaged orientation
DAMAGED_ORIENTATIONS = {
    "five_values": (b"1\\0\\0\\0\\1", r"value has the wrong number of items \(expected 6 finite numbers"),
    "not_numeric": (b"a\\b\\c\\d\\e\\f", r"value is not numeric"),
    "not_unit": (b"2\\0\\0\\0\\2\\0", r"direction cosines are not unit vectors \(row length 2, column length 2"),
    "not_orthogonal": (b"1\\0\\0\\0.7071068\\0.7071068\\0", r"row and column directions are not orthogonal "
                                                           r"\(angle 45°"),
    "zeros": (b"0\\0\\0\\0\\0\\0", r"direction cosines are not unit vectors \(row length 0"),
    "infinite": (b"1\\0\\0\\0\\inf\\0", r"value has the wrong number of items \(expected 6 finite numbers"),
}


@pytest.mark.parametrize("name", sorted(DAMAGED_ORIENTATIONS))
def test_damaged_orientation_gives_pixel_coordinates_a_warning_and_a_recorded_problem(tmp_path, rng, name):
    value, reason = DAMAGED_ORIENTATIONS[name]
    arr = rng.integers(0, 1000, (6, 5, 4)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, OBLIQUE_7MM, modality="MR"), tmp_path)
    for p in paths:
        set_raw(p, "ImageOrientationPatient", "DS", value)
    said: list[str] = []
    (img,) = sobre.load_all(tmp_path, on_warning=said.append)
    assert img.coordinate_system == "pixel"  # never an LPS affine from garbage
    assert img.extra_axes == ("frame",) and img.shape == (6, 5, 4)
    assert np.array_equal(img.array, arr)  # instance-number order: the order written
    assert len(said) == 1 and img.metadata["geometry_problem"] in said[0]
    assert said[0].startswith(f"{paths[0]} and 3 more file(s) (series ")
    assert img.metadata["geometry_problem"].startswith("(0020,0037) ImageOrientationPatient: ")
    assert img.metadata["geometry_problem"].endswith("read in pixel coordinates, without a patient frame")
    assert re.search(reason, img.metadata["geometry_problem"]), img.metadata["geometry_problem"]
    with pytest.warns(SeriesWarning, match=reason):  # without a callback: a SeriesWarning
        sobre.load(tmp_path)


def test_one_file_with_a_damaged_orientation_is_split_off_with_warnings(tmp_path, rng):
    arr = rng.integers(0, 1000, (6, 5, 5)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, OBLIQUE_7MM, modality="MR"), tmp_path)
    set_raw(paths[-1], "ImageOrientationPatient", "DS", b"1\\0\\0\\1\\0\\0")  # the last slice: no gap left
    said: list[str] = []
    images = sobre.load_all(tmp_path, on_warning=said.append)
    assert sorted(im.coordinate_system for im in images) == ["LPS", "pixel"]
    good = next(im for im in images if im.coordinate_system == "LPS")
    assert good.shape == (6, 5, 4) and "geometry_problem" not in good.metadata
    assert any("split into 2 volumes" in m for m in said) and any("not orthogonal" in m for m in said)


def test_orientation_within_rounding_is_not_damaged(tmp_path, rng):
    arr = rng.integers(0, 1000, (6, 5, 3)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, np.diag([0.9, 0.9, 3.0, 1.0]), modality="MR"), tmp_path)
    for p in paths:  # two decimals: lengths 1.00005 and 0.99985, cosine of the angle 0.0007
        set_raw(p, "ImageOrientationPatient", "DS", b"0.71\\0.71\\0\\-0.70\\0.71\\0.07")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeriesWarning)
        img = sobre.load(tmp_path)
    assert img.coordinate_system == "LPS" and "geometry_problem" not in img.metadata


def test_tolerances_are_the_documented_ones():
    assert _dicom.SLICE_POSITION_TOL == 0.2 and _dicom.SLICE_GAP_RATIO == 1.5 and _dicom.SLICE_EXTRA_RATIO == 0.5
    assert _dicom.ORIENTATION_VALID_TOL == 0.01
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    assert "0.2 voxel" in doc and "1.5" in doc and "0.01" in doc


@pytest.mark.parametrize("missing, present", [("ImageOrientationPatient", "ImagePositionPatient"),
                                              ("ImagePositionPatient", "ImageOrientationPatient")])
def test_half_a_patient_frame_is_a_geometry_problem_too(tmp_path, rng, missing, present):
    arr = rng.integers(0, 1000, (6, 5, 3)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, OBLIQUE_7MM, modality="MR"), tmp_path)
    for p in paths:
        ds = pydicom.dcmread(p)
        delattr(ds, missing)  # e.g. a bit flipped in its tag: the element is now some other one
        ds.save_as(p)
    said: list[str] = []
    (img,) = sobre.load_all(tmp_path, on_warning=said.append)
    assert img.coordinate_system == "pixel" and len(said) == 1
    assert re.match(rf"\(0020,003\d\) {missing}: missing although \(0020,003\d\) {present} is present",
                    img.metadata["geometry_problem"])


def test_frames_without_any_patient_frame_are_no_problem(pydicom_data):
    (img,) = sobre.load_all(pydicom_data / "US1_J2KR.dcm", on_warning=pytest.fail)
    assert img.coordinate_system == "pixel" and "geometry_problem" not in img.metadata

"""Spatial operations keep the geometry exact: resample (against SimpleITK), reorient, crop_or_pad."""

from __future__ import annotations

import numpy as np
import pytest

from sobre.errors import ConfigError, GeometryError
from sobre.image import Grid, Image, crop_or_pad, orientation_code, reorient, resample


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def affine(direction, spacing, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)[None, :]
    a[:3, 3] = origin
    return a


def centres(grid: Grid) -> np.ndarray:
    """World (LPS) coordinates of every voxel centre, shape grid.shape + (3,)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), axis=-1)
    if grid.ndim == 2:
        idx = np.concatenate([idx, np.zeros(idx.shape[:-1] + (1,))], axis=-1)
    return grid.voxel_to_world(idx)


SOURCE = Image(np.random.default_rng(0).normal(size=(23, 19, 11)),
               affine(rotation(0.3, -0.2, 0.5), (1.1, 0.9, 2.7), (-12.0, 7.5, 30.0)), modality="MR")
TARGET = Grid((17, 21, 14), affine(rotation(-0.1, 0.25, 1.9), (1.4, 1.2, 1.9), (8.0, -10.0, 28.0)))


def to_sitk(img: Image):
    import SimpleITK as sitk

    s = sitk.GetImageFromArray(np.ascontiguousarray(img.array.transpose(2, 1, 0)))  # SimpleITK arrays are [k, j, i]
    s.SetSpacing([float(v) for v in img.spacing])
    s.SetOrigin([float(v) for v in img.origin])
    s.SetDirection([float(v) for v in img.direction.ravel()])  # both LPS, columns = index axes
    return s


@pytest.mark.parametrize("order", ["linear", "nearest"])
def test_resample_equals_simpleitk(order):
    sitk = pytest.importorskip("SimpleITK")
    ref = Image(np.zeros(TARGET.shape, np.float32), TARGET.affine)
    ours = resample(SOURCE, TARGET, order=order, fill=-7.0)
    interp = sitk.sitkLinear if order == "linear" else sitk.sitkNearestNeighbor
    theirs = sitk.Resample(to_sitk(SOURCE), to_sitk(ref), sitk.Transform(), interp, -7.0, sitk.sitkFloat64)
    theirs = sitk.GetArrayFromImage(theirs).transpose(2, 1, 0)
    assert ours.array.dtype == np.float64  # float64 in, float64 out
    np.testing.assert_allclose(ours.array, theirs, rtol=0, atol=1e-9)
    outside = np.isclose(theirs, -7.0).mean()
    assert 0.05 < outside < 0.95  # the case covers voxels inside and outside the source
    np.testing.assert_array_equal(ours.affine, TARGET.affine)


def test_linear_resampling_reproduces_a_linear_field_at_world_positions():
    # values that are an affine function of the world position: linear interpolation must give the
    # function's value at every target centre that lies between source centres
    src_grid = Grid(SOURCE.spatial_shape, SOURCE.affine)
    coef, const = np.array([0.7, -1.3, 0.4]), 5.0
    img = Image(centres(src_grid) @ coef + const, SOURCE.affine)
    out = resample(img, TARGET, order="linear", fill=np.nan)
    expected = centres(TARGET) @ coef + const
    ci = np.linalg.inv(SOURCE.affine)
    cont = centres(TARGET) @ ci[:3, :3].T + ci[:3, 3]
    between = np.all((cont >= 0) & (cont <= np.array(SOURCE.spatial_shape) - 1), axis=-1)
    assert between.sum() > 300
    np.testing.assert_allclose(out.array[between], expected[between], atol=1e-9)
    beyond = np.any((cont < -0.5) | (cont >= np.array(SOURCE.spatial_shape) - 0.5), axis=-1)
    assert np.isnan(out.array[beyond]).all() and beyond.sum() > 300


def test_nearest_keeps_labels_and_dtype_linear_gives_float32():
    labels = Image((np.arange(6 * 5 * 4).reshape(6, 5, 4) % 7).astype(np.uint8), np.diag([2.0, 2.0, 3.0, 1.0]))
    near = resample(labels, spacing=(1.0, 1.0, 1.5), order="nearest")
    assert near.dtype == np.uint8 and set(np.unique(near.array)) <= set(range(7))
    assert near.spatial_shape == (12, 10, 8) and near.spacing == pytest.approx((1.0, 1.0, 1.5))
    lin = resample(labels, spacing=(1.0, 1.0, 1.5))
    assert lin.dtype == np.float32
    mask = Image(np.zeros((4, 4, 4), bool), np.eye(4))
    assert resample(mask, shape=(2, 2, 2), order="nearest").dtype == np.bool_
    with pytest.raises(ConfigError, match=r"fill value does not fit.*expected a uint8 value; found -1"):
        resample(labels, spacing=(1.0, 1.0, 1.5), order="nearest", fill=-1)


def test_grids_keep_the_field_of_view():
    g = Grid((10, 9, 4), affine(rotation(0.2, 0.1, -0.3), (1.0, 1.5, 3.0), (5.0, 6.0, 7.0)))

    def corner(grid, side):  # world position of the outer edge of voxel 0 (side 0) or n-1 (side 1)
        idx = np.where(side, np.array(grid.shape) - 0.5, -0.5)
        return grid.voxel_to_world(idx)

    same = g.with_shape((5, 3, 8))
    assert same.shape == (5, 3, 8) and same.spacing == pytest.approx((2.0, 4.5, 1.5))
    for side in (0, 1):
        np.testing.assert_allclose(corner(same, side), corner(g, side), atol=1e-12)
    exact = g.with_spacing((2.0, 1.5, 2.5))  # 10 mm -> 5 voxels; 13.5 mm -> 9; 12 mm -> round(4.8) = 5
    assert exact.shape == (5, 9, 5) and exact.spacing == pytest.approx((2.0, 1.5, 2.5))
    centre = (np.array(g.shape) - 1) / 2
    np.testing.assert_allclose(exact.voxel_to_world((np.array(exact.shape) - 1) / 2), g.voxel_to_world(centre),
                               atol=1e-12)
    np.testing.assert_allclose(exact.affine[:3, :3] / np.array(exact.spacing), g.affine[:3, :3] / np.array(g.spacing),
                               atol=1e-12)  # same directions
    cut = g.crop_or_pad((6, 12, 4))  # crop i by 2 voxels at the start, pad j by 1
    np.testing.assert_allclose(cut.voxel_to_world((0, 1, 0)), g.voxel_to_world((2, 0, 0)), atol=1e-12)


def test_spacing_and_shape_in_one_pass_equal_resample_then_crop():
    a = resample(SOURCE, spacing=(2.0, 2.0, 2.0), shape=(9, 12, 17))
    b = crop_or_pad(resample(SOURCE, spacing=(2.0, 2.0, 2.0)), (9, 12, 17))
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_allclose(a.array, b.array, atol=1e-6)


def test_resample_extra_axes_and_2d():
    rgb = Image(np.random.default_rng(1).random((8, 6, 3)), np.diag([0.5, 0.5, 1.0, 1.0]), spatial_ndim=2,
                extra_axes="channel")
    out = resample(rgb, shape=(4, 3), order="linear")
    assert out.shape == (4, 3, 3) and out.extra_axes == ("channel",)
    for c in range(3):
        np.testing.assert_allclose(out.array[..., c], rgb.array[..., c].reshape(4, 2, 3, 2).mean(axis=(1, 3)))
    # a 2D target in another plane lies outside the source: filled
    other = Grid((8, 6), np.diag([0.5, 0.5, 1.0, 1.0]) + np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 5.0],
                                                                    [0, 0, 0, 0]]))
    assert np.all(resample(rgb, other, fill=-1.0).array == -1.0)


def test_resample_refusals():
    with pytest.raises(ConfigError, match=r"unknown interpolation order.*'nearest' or 'linear'.*found 'cubic'"):
        resample(SOURCE, TARGET, order="cubic")
    with pytest.raises(ConfigError, match=r"either a target grid or spacing/shape"):
        resample(SOURCE, TARGET, spacing=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"spacing must be finite and positive.*found \(1, 0, 1\)"):
        resample(SOURCE, spacing=(1, 0, 1))
    with pytest.raises(ConfigError, match=r"shape must give one whole number.*expected 3 positive integers"):
        resample(SOURCE, shape=(4, 4))
    with pytest.raises(GeometryError, match=r"another number of spatial axes"):
        resample(SOURCE, Grid((4, 4), np.eye(4)))


@pytest.mark.parametrize("code", ["LPS", "RAS", "SLA", "IRP", "PIL"])
def test_reorient_moves_no_voxel_in_the_world(code):
    img = Image(np.arange(7 * 5 * 3).reshape(7, 5, 3).astype(np.int32),
                affine(rotation(0.0, 0.0, 0.1) @ np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0.0]]), (0.8, 1.2, 3.0),
                       (1.0, 2.0, 3.0)))
    out = reorient(img, code)
    assert out.orientation == code and out.dtype == img.dtype
    # every value sits at the same world position as before
    before = centres(Grid(img.spatial_shape, img.affine)).reshape(-1, 3)[img.array.ravel()]
    after = centres(Grid(out.spatial_shape, out.affine)).reshape(-1, 3)[np.argsort(out.array.ravel())]
    np.testing.assert_allclose(after, before, atol=1e-12)
    back = reorient(out, img.orientation)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-12)


def test_reorient_keeps_extra_axes_and_refuses_what_it_cannot_do():
    vol = Image(np.zeros((4, 3, 2, 5), np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]), extra_axes="time")
    out = reorient(vol, "LPS")
    assert out.shape == (4, 3, 2, 5) and orientation_code(out.affine) == "LPS"
    with pytest.raises(ConfigError, match=r"unknown orientation code.*found 'LPX'"):
        reorient(vol, "LPX")
    with pytest.raises(ConfigError, match="unknown orientation code"):
        reorient(vol, "LLS")
    flat = Image(np.zeros((4, 3), np.uint8), np.eye(4), spatial_ndim=2)
    assert reorient(flat, "RAS").orientation == "RAS"  # the third letter: the slice normal
    with pytest.raises(GeometryError, match=r"2D image in the LP plane cannot be reoriented to 'SPL'"):
        reorient(flat, "SPL")
    photo = Image(np.zeros((4, 3), np.uint8), np.eye(4), spatial_ndim=2, coordinate_system="pixel")
    with pytest.raises(GeometryError, match="without a patient frame"):
        reorient(photo, "LPS")


def test_crop_or_pad_keeps_voxel_positions():
    img = Image(np.arange(6 * 5 * 4).reshape(6, 5, 4).astype(np.int16), SOURCE.affine)
    out = crop_or_pad(img, (4, 8, 4), fill=-1)
    assert out.shape == (4, 8, 4) and out.dtype == np.int16
    kept = out.array >= 0
    assert kept.sum() == 4 * 5 * 4 and (out.array[~kept] == -1).all()
    src_idx = np.argwhere(np.isin(img.array, out.array[kept]))
    out_idx = np.array([np.argwhere(out.array == img.array[tuple(i)])[0] for i in src_idx])
    np.testing.assert_allclose(out.voxel_to_world(out_idx), img.voxel_to_world(src_idx), atol=1e-12)
    # the rule: crop keeps (n - m) // 2 onwards; pad puts the input at (m - n) // 2
    np.testing.assert_array_equal(out.array[:, 1:6, :], img.array[1:5])
    with pytest.raises(ConfigError, match=r"fill value does not fit.*int16.*found 100000"):
        crop_or_pad(img, (4, 8, 4), fill=100000)
    with pytest.raises(ConfigError, match=r"expected 3 positive integers; found \(4, 0, 4\)"):
        crop_or_pad(img, (4, 0, 4))

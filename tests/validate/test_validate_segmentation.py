"""Segmentation metrics equal MONAI's on the same masks (2D and 3D, anisotropic spacing)."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from sobre.image import Image, resample
from sobre.validate import (
    MaskGeometryError,
    MaskReadError,
    check_same_grid,
    hd95,
    mask_voxels,
    read_mask,
    segmentation_metrics,
    segmentation_scores,
)
from sobre.validate._surface import surface_mask


def ellipsoid(shape, centre, radii):
    grid = np.indices(shape, dtype=float)
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    return d <= 1.0


@pytest.fixture(params=["3d", "2d"])
def masks(request):
    if request.param == "3d":
        ref = ellipsoid((48, 44, 22), (24, 21, 11), (14, 11, 6))
        pred = ellipsoid((48, 44, 22), (26, 20, 10), (13, 12, 6.5))
        pred[5:8, 5:8, 2:4] = True  # a false-positive island drives the tail of the distances
        return pred, ref, (0.8, 0.9, 2.5)
    ref = ellipsoid((64, 50), (30, 25), (15, 10))
    pred = ellipsoid((64, 50), (33, 24), (14, 12))
    pred[2:4, 45:48] = True
    return pred, ref, (0.7, 1.3)


def _monai(fn, pred, ref, **kw):
    t = lambda a: torch.from_numpy(a[None, None].astype(np.float32))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(t(pred), t(ref), **kw).reshape(-1)[0])


def test_metrics_match_monai(masks):
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    pred, ref, spacing = masks
    s = segmentation_scores(pred, ref, spacing, tolerance_mm=1.5)
    assert s.dice == pytest.approx(_monai(compute_dice, pred, ref, include_background=True), abs=1e-6)
    assert s.hd95 == pytest.approx(_monai(compute_hausdorff_distance, pred, ref, include_background=True,
                                          percentile=95, spacing=spacing), abs=1e-4)
    assert s.hd == pytest.approx(_monai(compute_hausdorff_distance, pred, ref, include_background=True,
                                        spacing=spacing), abs=1e-4)
    assert s.asd == pytest.approx(_monai(compute_average_surface_distance, pred, ref, include_background=True,
                                         symmetric=True, spacing=spacing), abs=1e-4)
    assert s.nsd == pytest.approx(_monai(compute_surface_dice, pred, ref, class_thresholds=[1.5],
                                         include_background=True, spacing=spacing), abs=1e-6)
    voxel = float(np.prod(spacing))
    assert s.volume_error == pytest.approx((pred.sum() - ref.sum()) * voxel)
    assert s.relative_volume_error == pytest.approx((pred.sum() - ref.sum()) / ref.sum())
    assert hd95(pred, ref, spacing) == pytest.approx(s.hd95)
    assert s.hd95 > 3.0  # the island really moved the 95th percentile


def test_surface_is_mask_minus_erosion(masks):
    pred, _, _ = masks
    expected = pred ^ ndimage.binary_erosion(pred)  # scipy default: cross structure, border = background
    np.testing.assert_array_equal(surface_mask(pred), expected)


def test_spacing_scales_distances():
    ref = ellipsoid((40, 40, 40), (20, 20, 20), (10, 10, 10))
    pred = np.roll(ref, 3, axis=0)
    assert hd95(pred, ref, (1, 1, 1)) == pytest.approx(3.0)
    assert hd95(pred, ref, (2, 2, 2)) == pytest.approx(6.0)
    # anisotropic: brute force over all pairs of surface points
    from scipy.spatial.distance import cdist

    sp = np.array([2.0, 0.7, 1.2])
    a = np.argwhere(surface_mask(pred)) * sp
    b = np.argwhere(surface_mask(ref)) * sp
    d = cdist(a, b)
    brute = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    assert hd95(pred, ref, sp) == pytest.approx(brute, rel=1e-12)


def test_empty_mask_conventions():
    ref = ellipsoid((20, 20, 10), (10, 10, 5), (5, 5, 3))
    empty = np.zeros_like(ref)
    both = segmentation_scores(empty, empty, (1, 1, 2))
    assert (both.dice, both.hd95, both.asd, both.nsd, both.empty) == (1.0, 0.0, 0.0, 1.0, "both")
    missed = segmentation_scores(empty, ref, (1, 1, 2))
    diagonal = math.sqrt(19 ** 2 + 19 ** 2 + 18 ** 2)
    assert missed.dice == 0.0 and missed.nsd == 0.0 and missed.empty == "prediction"
    assert missed.hd95 == pytest.approx(diagonal)
    nan = segmentation_scores(ref, empty, (1, 1, 2), empty_distance="nan")
    assert nan.empty == "reference" and math.isnan(nan.hd95) and math.isnan(nan.relative_volume_error)
    agg = segmentation_metrics([both, missed, segmentation_scores(ref, ref)], n_resamples=0)
    assert agg.counts == {"n": 3, "empty_reference": 0, "empty_prediction": 1, "both_empty": 1}
    assert agg.metrics["dice"].value == pytest.approx(2 / 3)
    assert "image diagonal" in agg.conventions["one_empty"]


def test_mean_dice_interval():
    rng = np.random.default_rng(0)
    ref = ellipsoid((30, 30, 12), (15, 15, 6), (8, 8, 4))
    cases = [segmentation_scores(np.roll(ref, int(rng.integers(0, 4)), axis=0), ref, (1, 1, 2.5)) for _ in range(25)]
    agg = segmentation_metrics(cases, n_resamples=500, seed=1)
    d = np.array([c.dice for c in cases])
    e = agg.metrics["dice"]
    assert e.value == pytest.approx(d.mean())
    assert e.ci_low < e.value < e.ci_high
    assert e.ci_high - e.ci_low == pytest.approx(2 * 1.96 * d.std(ddof=1) / 5, rel=0.35)


def _write_nifti(path, arr, spacing, origin=(0.0, 0.0, 0.0)):
    import nibabel as nib

    aff = np.diag(list(spacing) + [1.0])
    aff[:3, 3] = origin
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), aff), str(path))


def test_read_mask_and_geometry_refusal(tmp_path):
    ref = ellipsoid((30, 30, 12), (15, 15, 6), (8, 8, 4))
    _write_nifti(tmp_path / "ref.nii.gz", ref, (1.0, 1.0, 2.5))
    _write_nifti(tmp_path / "moved.nii.gz", ref, (1.0, 1.0, 2.5), origin=(5.0, 0, 0))
    a = read_mask(tmp_path / "ref.nii.gz")
    assert a.array.shape == (30, 30, 12)
    np.testing.assert_allclose(a.spacing, (1.0, 1.0, 2.5))
    b = read_mask(tmp_path / "moved.nii.gz")
    with pytest.raises(MaskGeometryError, match=r"moved\.nii\.gz.*position or orientation.*--resample"):
        check_same_grid(b, a)
    assert a.sources and a.sources[0].endswith("ref.nii.gz")  # messages name the files
    half = Image(np.zeros((15, 15, 12)), np.diag([2.0, 2.0, 2.5, 1.0]), sources=["half.nii"])
    with pytest.raises(MaskGeometryError, match=r"half\.nii and reference mask do not have the same shape.*expected "
                                                r"shape \(30, 30, 12\)"):
        check_same_grid(half, a)
    coarser = Image(np.zeros((30, 30, 12)), np.diag([1.0, 1.0, 3.0, 1.0]), sources=["thick.nii"])
    with pytest.raises(MaskGeometryError, match=r"thick\.nii and reference mask differ in voxel spacing.*expected "
                                                r"spacing \[1\.0, 1\.0, 2\.5\] mm; found spacing \[1\.0, 1\.0, 3\.0\]"):
        check_same_grid(coarser, a)


def test_read_mask_refuses_what_is_not_a_mask(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(MaskReadError, match=r"broken\.nii\.gz: cannot read mask file.*convert the mask to NIfTI"):
        read_mask(tmp_path / "broken.nii.gz")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.uint8), np.eye(4)), str(tmp_path / "onehot.nii.gz"))
    with pytest.raises(MaskReadError, match=r"one value per voxel.*found shape \(4, 4, 3, 2\)"):
        read_mask(tmp_path / "onehot.nii.gz")
    np.save(tmp_path / "m.npy", np.ones((5, 4), np.uint8))
    m = read_mask(tmp_path / "m.npy")
    assert m.spatial_shape == (5, 4) and m.spacing == (1.0, 1.0) and m.sources == [str(tmp_path / "m.npy")]


def test_a_2d_mask_stored_as_one_slice_counts_as_2d(tmp_path):
    img = Image(np.ones((6, 5, 1), np.uint8), np.diag([0.5, 0.7, 3.0, 1.0]))
    arr, spacing = mask_voxels(img)
    assert arr.shape == (6, 5) and spacing == pytest.approx((0.5, 0.7))


def test_resample_onto_reference_grid():
    # the same object on a grid of half the resolution in x, y
    fine = ellipsoid((40, 40, 10), (20, 20, 5), (10, 10, 3))
    coarse = fine[::2, ::2, :]
    ref = Image(fine, np.diag([1.0, 1.0, 3.0, 1.0]))
    prd = Image(coarse, np.diag([2.0, 2.0, 3.0, 1.0]))  # coarse voxel k is fine voxel 2k: same first centre
    out = resample(prd, ref, order="nearest")
    assert out.array.shape == fine.shape and out.dtype == np.bool_
    assert segmentation_scores(out.array, fine, ref.spacing).dice > 0.9


def test_real_tumour_mask_matches_monai(pyradiomics_data):
    # a real tumour segmentation (pyradiomics brain1, 0.78 x 0.78 x 6.5 mm) read through read_mask,
    # against a plausible second reader: dilated in-plane and with its first slice missing
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    ref_vol = read_mask(pyradiomics_data / "brain1_label.nrrd")
    ref = ref_vol.array > 0
    spacing = tuple(float(s) for s in ref_vol.spacing)
    assert ref.shape == (256, 256, 25) and spacing[2] == pytest.approx(6.5)
    pred = ndimage.binary_dilation(ref, structure=np.ones((3, 3, 1), bool))
    first = np.flatnonzero(ref.any(axis=(0, 1)))[0]
    pred[:, :, first] = False
    s = segmentation_scores(pred, ref, spacing, tolerance_mm=2.0)
    assert 0.7 < s.dice < 0.99
    assert s.hd95 == pytest.approx(_monai(compute_hausdorff_distance, pred, ref, include_background=True,
                                          percentile=95, spacing=spacing), abs=1e-4)
    assert s.asd == pytest.approx(_monai(compute_average_surface_distance, pred, ref, include_background=True,
                                         symmetric=True, spacing=spacing), abs=1e-4)
    assert s.nsd == pytest.approx(_monai(compute_surface_dice, pred, ref, class_thresholds=[2.0],
                                         include_background=True, spacing=spacing), abs=1e-6)

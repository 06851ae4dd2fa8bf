"""Overlap and surface-distance metrics of binary masks, 2D or 3D, spacing-aware.

Surfaces are the mask voxels with at least one face-neighbour outside the mask (a mask
minus its erosion by the cross-shaped structuring element), the same definition as MONAI's
``get_mask_edges``; distances are exact Euclidean distances in millimetres between surface
voxel centres (KD-tree on the surface points of the cropped union bounding box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "surface_mask",
    "surface_distances",
    "segmentation_scores",
    "SegmentationScores",
    "EMPTY_CONVENTIONS",
]

#: How distance metrics are reported when exactly one of the two masks is empty.
EMPTY_CONVENTIONS = ("diagonal", "nan")


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels, or None when empty."""
    slices = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        if len(nz) == 0:
            return None
        slices.append(slice(int(nz[0]), int(nz[-1]) + 1))
        # shrink before the next axis: cheaper reductions
        mask = mask[(slice(None),) * ax + (slices[-1],)]
    return tuple(slices)


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask: voxels with a face-neighbour outside the mask.

    Voxels on the array border count as surface (outside the array is background).

    Parameters
    ----------
    mask : array of bool, shape (X, Y) or (X, Y, Z)

    Returns
    -------
    ndarray of bool, same shape
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inner = tuple(slice(1, -1) for _ in range(m.ndim))
    core = m[inner]
    eroded = core.copy()
    for ax in range(m.ndim):
        lo = list(inner)
        hi = list(inner)
        lo[ax] = slice(0, -2)
        hi[ax] = slice(2, None)
        eroded &= m[tuple(lo)]
        eroded &= m[tuple(hi)]
    return core & ~eroded


def _points(surface: np.ndarray, spacing: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return (np.argwhere(surface) + offset) * spacing


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing=None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the nearest of the other.

    Parameters
    ----------
    pred, ref : array of bool, same shape (2D or 3D)
    spacing : sequence of float, optional
        Voxel size in mm along each array axis (1 by default).

    Returns
    -------
    d_pred_to_ref : ndarray of shape (n_pred_surface,)
    d_ref_to_pred : ndarray of shape (n_ref_surface,)
        Empty arrays for an empty mask; ``inf`` distances when the other mask is empty.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    box = _bbox(pred | ref)
    if box is None:
        return np.zeros(0), np.zeros(0)
    offset = np.array([s.start for s in box])
    sp = surface_mask(pred[box])
    sr = surface_mask(ref[box])
    pp = _points(sp, spacing, offset)
    pr = _points(sr, spacing, offset)
    if len(pp) == 0 or len(pr) == 0:
        return np.full(len(pp), np.inf), np.full(len(pr), np.inf)
    # surface voxels common to both surfaces are at distance 0: only the others are queried
    shared = sp & sr
    d_pr = np.zeros(len(pp))
    d_rp = np.zeros(len(pr))
    todo_p = ~shared[sp]
    todo_r = ~shared[sr]
    if todo_p.any():
        d_pr[todo_p] = cKDTree(pr, leafsize=32, balanced_tree=False).query(pp[todo_p], k=1)[0]
    if todo_r.any():
        d_rp[todo_r] = cKDTree(pp, leafsize=32, balanced_tree=False).query(pr[todo_r], k=1)[0]
    return d_pr, d_rp


@dataclass
class SegmentationScores:
    """Per-case segmentation metrics.

    Attributes
    ----------
    dice : float
    hd95 : float
        95th-percentile symmetric Hausdorff distance, mm: the larger of the two directed
        95th percentiles (as MONAI's ``compute_hausdorff_distance(percentile=95)``).
    hd : float
        Maximum symmetric Hausdorff distance, mm.
    asd : float
        Average symmetric surface distance, mm: mean of the distances of both surfaces.
    nsd : float
        Normalised surface Dice at ``tolerance_mm``: fraction of surface voxels of either mask
        within the tolerance of the other mask's surface.
    volume_ref, volume_pred : float
        Volumes in mm^3 (areas in mm^2 in 2D).
    volume_error : float
        ``volume_pred - volume_ref``.
    relative_volume_error : float
        ``volume_error / volume_ref`` (NaN when the reference is empty).
    empty : str or None
        ``"both"``, ``"reference"``, ``"prediction"`` or None.
    """

    dice: float
    hd95: float
    hd: float
    asd: float
    nsd: float
    volume_ref: float
    volume_pred: float
    volume_error: float
    relative_volume_error: float
    empty: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("dice", "hd95", "hd", "asd", "nsd", "volume_ref", "volume_pred",
                                           "volume_error", "relative_volume_error")}
        d = {k: (None if not math.isfinite(v) else float(v)) for k, v in d.items()}
        d["empty"] = self.empty
        return d


def segmentation_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing=None,
    *,
    tolerance_mm: float = 1.0,
    percentile: float = 95.0,
    empty_distance: str = "diagonal",
) -> SegmentationScores:
    """Dice, HD95, HD, ASD, NSD and volume error of one predicted mask against a reference.

    Parameters
    ----------
    pred, ref : array of bool, shape (X, Y) or (X, Y, Z)
        Same shape; the caller checks the geometry.
    spacing : sequence of float, optional
        Voxel size in mm along each axis.
    tolerance_mm : float
        Tolerance of the normalised surface Dice.
    percentile : float
        Percentile of the robust Hausdorff distance.
    empty_distance : {"diagonal", "nan"}
        Convention when exactly one mask is empty: distances are the image diagonal in mm
        (the worst possible value, so a missed structure is penalised) or NaN (left out of
        means). When both masks are empty, Dice = NSD = 1 and distances = 0.

    Returns
    -------
    SegmentationScores
    """
    if empty_distance not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty_distance must be one of {EMPTY_CONVENTIONS}, not {empty_distance!r}")
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=float)[: pred.ndim]
    voxel = float(np.prod(spacing))
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    vp, vr = n_pred * voxel, n_ref * voxel
    verr = vp - vr
    rel = verr / vr if vr > 0 else (0.0 if vp == 0 else math.nan)
    if n_pred == 0 and n_ref == 0:
        return SegmentationScores(1.0, 0.0, 0.0, 0.0, 1.0, vr, vp, 0.0, 0.0, "both")
    inter = int(np.count_nonzero(pred & ref))
    dice = 2.0 * inter / (n_pred + n_ref)
    if n_pred == 0 or n_ref == 0:
        worst = float(np.linalg.norm((np.array(pred.shape) - 1) * spacing)) if empty_distance == "diagonal" \
            else math.nan
        return SegmentationScores(dice, worst, worst, worst, 0.0, vr, vp, verr, rel,
                                  "prediction" if n_pred == 0 else "reference")
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd95 = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
    hd = max(float(d_pr.max()), float(d_rp.max()))
    asd = float((d_pr.sum() + d_rp.sum()) / (len(d_pr) + len(d_rp)))
    nsd = float((np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm))
                / (len(d_pr) + len(d_rp)))
    return SegmentationScores(dice, hd95, hd, asd, nsd, vr, vp, verr, rel, None)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing=None, *, percentile: float = 95.0) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (NaN if a mask is empty).

    Parameters
    ----------
    pred, ref : array of bool, shape (X, Y) or (X, Y, Z)
    spacing : sequence of float, optional
    """
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    if len(d_pr) == 0 or len(d_rp) == 0 or not np.isfinite(d_pr).all():
        return math.nan
    return max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))

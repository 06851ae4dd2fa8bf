"""Lesion-wise detection: matching, sensitivity, false positives per case, FROC, by lesion size.

A *lesion* is a connected component of the reference mask (or a row of a lesion table: centre
and diameter in mm); a *candidate* is a connected component of the prediction (score: its
maximum probability, or 1 for a binary mask) or a row of a detection table. A candidate
**hits** a lesion when it overlaps it (masks) or when its centre lies within
``max(diameter / 2, min_radius_mm)`` of the lesion centre. A lesion is detected at
threshold ``t`` when a candidate with score ``>= t`` hits it; a candidate that hits no
lesion is a false positive; several candidates on one lesion count once and are not false
positives (the LUNA16 / FROC convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from sobre.validate._estimate import Estimate, bootstrap

__all__ = [
    "CaseDetections",
    "match_candidates",
    "lesions_from_mask",
    "detect_case",
    "detection_metrics",
    "DetectionResult",
    "DEFAULT_SIZE_BINS",
    "DEFAULT_FP_RATES",
]

DEFAULT_SIZE_BINS = (10.0, 20.0, 30.0)
DEFAULT_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class CaseDetections:
    """Matched detections of one case.

    Attributes
    ----------
    lesion_diameters : ndarray of shape (L,)
        Diameter of each reference lesion, mm.
    lesion_hit_scores : ndarray of shape (L,)
        Highest score among the candidates hitting each lesion (``-inf`` when none does).
    fp_scores : ndarray of shape (F,)
        Scores of the candidates hitting no lesion.
    """

    lesion_diameters: np.ndarray
    lesion_hit_scores: np.ndarray
    fp_scores: np.ndarray
    extra: dict = field(default_factory=dict)


def match_candidates(
    lesion_centres: np.ndarray,
    lesion_diameters: np.ndarray,
    candidate_centres: np.ndarray,
    candidate_scores: np.ndarray,
    *,
    overlaps: np.ndarray | None = None,
    min_radius_mm: float = 0.0,
) -> CaseDetections:
    """Match candidates to lesions of one case.

    Parameters
    ----------
    lesion_centres : array of shape (L, d), mm
    lesion_diameters : array of shape (L,), mm
    candidate_centres : array of shape (C, d), mm
    candidate_scores : array of shape (C,)
    overlaps : array of bool, shape (C, L), optional
        True where candidate and lesion share a voxel (counts as a hit).
    min_radius_mm : float
        Smallest hit radius around a lesion centre (helps tiny lesions).

    Returns
    -------
    CaseDetections
    """
    ld = np.asarray(lesion_diameters, dtype=float).reshape(-1)
    cs = np.asarray(candidate_scores, dtype=float).reshape(-1)
    lc = np.asarray(lesion_centres, dtype=float)
    cc = np.asarray(candidate_centres, dtype=float)
    ndim = lc.shape[-1] if lc.size else (cc.shape[-1] if cc.size else 3)
    lc = lc.reshape(len(ld), ndim)
    cc = cc.reshape(len(cs), ndim)
    if len(ld) and len(cs):
        dist = np.linalg.norm(cc[:, None, :] - lc[None, :, :], axis=2)
        hit = dist <= np.maximum(ld / 2.0, min_radius_mm)[None, :]
        if overlaps is not None:
            hit |= np.asarray(overlaps, dtype=bool)
    else:
        hit = np.zeros((len(cs), len(ld)), dtype=bool)
    hit_scores = np.where(hit, cs[:, None], -np.inf).max(axis=0) if len(cs) else np.full(len(ld), -np.inf)
    fp = cs[~hit.any(axis=1)] if len(ld) else cs.copy()
    return CaseDetections(ld, np.asarray(hit_scores, dtype=float), np.asarray(fp, dtype=float))


def _diameters(labels: np.ndarray, n: int, spacing: np.ndarray, size: str) -> np.ndarray:
    if n == 0:
        return np.zeros(0)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    measure = float(np.prod(spacing))
    if size == "equivalent":
        vol = counts * measure
        if labels.ndim == 3:
            return (6.0 * vol / math.pi) ** (1.0 / 3.0)
        return 2.0 * np.sqrt(vol / math.pi)
    if size == "longest":
        out = np.zeros(n)
        for i, sl in enumerate(ndimage.find_objects(labels)):
            if sl is None:
                continue
            pts = (np.argwhere(labels[sl] == i + 1) + [s.start for s in sl]) * spacing
            if len(pts) > 2000:
                pts = pts[np.random.default_rng(0).choice(len(pts), 2000, replace=False)]
            d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() if len(pts) > 1 else 0.0
            out[i] = d + float(np.min(spacing))  # voxel centres -> outer extent
        return out
    raise ValueError(f"size must be 'equivalent' or 'longest', not {size!r}")


def lesions_from_mask(mask: np.ndarray, spacing=None, *, size: str = "equivalent"):
    """Connected components of a reference mask (full connectivity).

    Parameters
    ----------
    mask : array, shape (X, Y) or (X, Y, Z)
        Non-zero voxels are lesion.
    spacing : sequence of float, optional
    size : {"equivalent", "longest"}
        Lesion diameter: of the sphere (circle in 2D) of the same volume, or the longest
        distance between voxel centres plus one voxel.

    Returns
    -------
    labels : ndarray of int, same shape
    centres : ndarray of shape (L, ndim), mm (centres of mass)
    diameters : ndarray of shape (L,), mm
    """
    mask = np.asarray(mask) != 0
    spacing = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, dtype=float)[: mask.ndim]
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    centres = np.array(ndimage.center_of_mass(mask, labels, range(1, n + 1)), dtype=float).reshape(n, mask.ndim)
    centres = centres * spacing
    return labels, centres, _diameters(labels, n, spacing, size)


def detect_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing=None,
    *,
    candidate_threshold: float = 0.5,
    size: str = "equivalent",
    min_radius_mm: float = 0.0,
) -> CaseDetections:
    """Lesion-wise matching of one case from masks.

    Parameters
    ----------
    reference : array, shape (X, Y[, Z])
        Reference lesion mask (non-zero = lesion).
    prediction : array, same shape
        Probability map (float: candidates are the components of ``prediction >=
        candidate_threshold``, scored by their maximum) or binary/labelled mask (each
        component, or each label, is a candidate of score 1).
    spacing : sequence of float, optional
    candidate_threshold : float
        Threshold defining candidates on a probability map.
    size, min_radius_mm
        See :func:`lesions_from_mask` and :func:`match_candidates`.

    Returns
    -------
    CaseDetections
    """
    ref_labels, lc, ld = lesions_from_mask(reference, spacing, size=size)
    pred = np.asarray(prediction)
    spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=float)[: pred.ndim]
    structure = np.ones((3,) * pred.ndim)
    if np.issubdtype(pred.dtype, np.floating) and not np.all((pred == 0) | (pred == 1)):
        cand_labels, nc = ndimage.label(pred >= candidate_threshold, structure=structure)
        scores = np.asarray(ndimage.maximum(pred, cand_labels, range(1, nc + 1)), dtype=float).reshape(nc)
    elif pred.dtype != bool and pred.max(initial=0) > 1:
        values = np.unique(pred[pred > 0])
        cand_labels = np.searchsorted(values, pred) + 1
        cand_labels[pred <= 0] = 0
        nc = len(values)
        scores = np.ones(nc)
    else:
        cand_labels, nc = ndimage.label(pred != 0, structure=structure)
        scores = np.ones(nc)
    cc = np.array(ndimage.center_of_mass(cand_labels > 0, cand_labels, range(1, nc + 1)),
                  dtype=float).reshape(nc, pred.ndim)
    cc = cc * spacing
    overlaps = np.zeros((nc, len(ld)), dtype=bool)
    both = (cand_labels > 0) & (ref_labels > 0)
    if both.any():
        pairs = np.unique(np.stack([cand_labels[both], ref_labels[both]], axis=1), axis=0)
        overlaps[pairs[:, 0] - 1, pairs[:, 1] - 1] = True
    return match_candidates(lc, ld, cc, scores, overlaps=overlaps, min_radius_mm=min_radius_mm)


def _size_labels(bins) -> list[str]:
    labels = [f"<{bins[0]:g}"]
    labels += [f"{a:g}-{b:g}" for a, b in zip(bins[:-1], bins[1:])]
    labels.append(f">={bins[-1]:g}")
    return [f"{x} mm" for x in labels]


@dataclass
class DetectionResult:
    """Lesion-wise detection performance.

    Attributes
    ----------
    metrics : dict of str to Estimate
        ``sensitivity`` and ``fp_per_case`` at ``threshold``; ``sensitivity[<10 mm]`` ... per size
        bin; ``froc_sensitivity@<r>`` at each false-positive rate ``r`` per case; ``cpm`` (mean of
        those, the competition performance metric).
    threshold : float
    froc : dict
        The full-sample FROC curve: ``fp_per_case`` and ``sensitivity`` lists (descending
        threshold), and ``thresholds``.
    counts : dict
        Cases, lesions (overall and per size bin), candidates.
    size_bins : list of str
    """

    metrics: dict
    threshold: float
    froc: dict
    counts: dict
    size_bins: list

    def to_dict(self) -> dict:
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "threshold": self.threshold,
                "froc": self.froc, "counts": self.counts, "size_bins": self.size_bins}


def detection_metrics(
    cases: list[CaseDetections],
    *,
    threshold: float = 0.5,
    size_bins=DEFAULT_SIZE_BINS,
    fp_rates=DEFAULT_FP_RATES,
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
    max_thresholds: int = 512,
) -> DetectionResult:
    """Lesion-wise sensitivity, false positives per case and FROC, with case-level bootstrap CIs.

    Parameters
    ----------
    cases : list of CaseDetections
        One per case (cases without lesions still count for false positives).
    threshold : float
        Operating threshold for ``sensitivity`` and ``fp_per_case``.
    size_bins : sequence of float
        Edges (mm) of the lesion-size strata: (10, 20, 30) gives <10, 10-20, 20-30, >=30 mm.
    fp_rates : sequence of float
        False-positive rates per case at which the FROC sensitivity is read (the highest
        sensitivity reached with no more false positives per case than the rate).
    n_resamples, method, level, seed
        Bootstrap settings; resampling is by case.
    max_thresholds : int
        FROC thresholds (quantiles of the candidate scores when there are more).

    Returns
    -------
    DetectionResult
    """
    n = len(cases)
    bins = np.asarray(size_bins, dtype=float)
    names = _size_labels(list(bins))
    n_les = np.array([len(c.lesion_diameters) for c in cases], dtype=float)
    hits = np.array([np.sum(c.lesion_hit_scores >= threshold) for c in cases], dtype=float)
    fps = np.array([np.sum(c.fp_scores >= threshold) for c in cases], dtype=float)
    bin_of = [np.searchsorted(bins, c.lesion_diameters, side="right") for c in cases]
    n_bin = np.array([[np.sum(b == k) for k in range(len(names))] for b in bin_of], dtype=float).reshape(n, -1)
    hit_bin = np.array([[np.sum((b == k) & (c.lesion_hit_scores >= threshold)) for k in range(len(names))]
                        for b, c in zip(bin_of, cases)], dtype=float).reshape(n, -1)
    all_scores = np.concatenate([np.concatenate([c.lesion_hit_scores[np.isfinite(c.lesion_hit_scores)],
                                                 c.fp_scores]) for c in cases] + [np.zeros(0)])
    thr = np.unique(all_scores)[::-1]
    if len(thr) > max_thresholds:
        thr = np.unique(np.quantile(all_scores, np.linspace(0, 1, max_thresholds)))[::-1]
    # per case and threshold: lesions hit and false positives (threshold descending)
    hit_t = np.zeros((n, len(thr)))
    fp_t = np.zeros((n, len(thr)))
    neg_thr = -thr
    for i, c in enumerate(cases):
        hs = np.sort(-c.lesion_hit_scores)
        fs = np.sort(-c.fp_scores)
        hit_t[i] = np.searchsorted(hs, neg_thr, side="right")
        fp_t[i] = np.searchsorted(fs, neg_thr, side="right")
    rates = np.asarray(fp_rates, dtype=float)

    def stat(w: np.ndarray) -> dict:
        sw = w.sum(axis=1)
        nl = w @ n_les
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {"sensitivity": np.where(nl > 0, (w @ hits) / nl, np.nan), "fp_per_case": (w @ fps) / sw}
            nb = w @ n_bin
            hb = w @ hit_bin
            for k, name in enumerate(names):
                out[f"sensitivity[{name}]"] = np.where(nb[:, k] > 0, hb[:, k] / nb[:, k], np.nan)
            if len(thr):
                sens_c = (w @ hit_t) / nl[:, None]
                fp_c = (w @ fp_t) / sw[:, None]
                froc = []
                for r in rates:
                    ok = fp_c <= r
                    val = np.where(ok, sens_c, 0.0).max(axis=1)
                    froc.append(np.where(nl > 0, val, np.nan))
            else:
                froc = [np.where(nl > 0, 0.0, np.nan) for _ in rates]
            for r, v in zip(rates, froc):
                out[f"froc_sensitivity@{r:g}"] = v
            out["cpm"] = np.mean(np.stack(froc, axis=1), axis=1)
        return out

    metrics = bootstrap(stat, n, n_resamples=n_resamples, method=method, level=level, seed=seed)
    for k, name in enumerate(names):
        if n_bin[:, k].sum() == 0:
            metrics[f"sensitivity[{name}]"] = Estimate(math.nan, level=level, n=n,
                                                       note="no reference lesion of this size")
    if n_les.sum() == 0:
        for key in [k for k in metrics if k.startswith(("sensitivity", "froc_", "cpm"))]:
            metrics[key] = Estimate(math.nan, level=level, n=n, note="no reference lesion")
    total = max(n_les.sum(), 1.0)
    froc = {"thresholds": thr.tolist(),
            "sensitivity": (hit_t.sum(axis=0) / total).tolist() if len(thr) else [],
            "fp_per_case": (fp_t.sum(axis=0) / max(n, 1)).tolist() if len(thr) else []}
    counts = {"cases": n, "lesions": int(n_les.sum()),
              "lesions_per_size": {name: int(n_bin[:, k].sum()) for k, name in enumerate(names)},
              "candidates": int(sum(np.isfinite(c.lesion_hit_scores).sum() + len(c.fp_scores) for c in cases)),
              "detected_at_threshold": int(hits.sum()), "false_positives_at_threshold": int(fps.sum())}
    return DetectionResult(metrics, float(threshold), froc, counts, names)

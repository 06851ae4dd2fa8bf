"""Cohort-level segmentation metrics: means of per-case scores with subject-level CIs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sobre.validate._estimate import bootstrap
from sobre.validate._surface import SegmentationScores

__all__ = ["SEGMENTATION_METRICS", "segmentation_metrics", "mean_statistic", "SegmentationResult"]

SEGMENTATION_METRICS = ("dice", "hd95", "asd", "nsd", "volume_error", "abs_volume_error",
                        "relative_volume_error")
HIGHER_IS_BETTER = {"dice", "nsd"}
LOWER_IS_BETTER = {"hd95", "asd", "abs_volume_error"}


def mean_statistic(values: dict[str, np.ndarray]):
    """Statistic function of the (NaN-skipping) mean of each column of per-case values.

    Parameters
    ----------
    values : dict of str to array of shape (n,)
    """
    prepared = {}
    for k, v in values.items():
        v = np.asarray(v, dtype=float)
        ok = np.isfinite(v)
        prepared[k] = (np.where(ok, v, 0.0), ok.astype(float))

    def stat(w: np.ndarray) -> dict:
        out = {}
        for k, (v, ok) in prepared.items():
            cnt = w @ ok
            with np.errstate(divide="ignore", invalid="ignore"):
                out[k] = np.where(cnt > 0, (w @ v) / cnt, np.nan)
        return out

    def loo() -> dict:
        out = {}
        for k, (v, ok) in prepared.items():
            cnt = ok.sum() - ok
            with np.errstate(divide="ignore", invalid="ignore"):
                out[k] = np.where(cnt > 0, (v.sum() - v) / cnt, np.nan)
        return out

    stat.loo = loo
    return stat


@dataclass
class SegmentationResult:
    """Mean segmentation metrics over cases with CIs.

    Attributes
    ----------
    metrics : dict of str to Estimate
        Means over cases of ``dice``, ``hd95`` (mm), ``asd`` (mm), ``nsd``, ``volume_error``
        (mm^3, signed), ``abs_volume_error`` and ``relative_volume_error``.
    per_case : list of dict
        The per-case scores.
    conventions : dict
        How empty masks were scored, and the NSD tolerance.
    counts : dict
        Number of cases, and of cases with an empty reference, prediction, or both.
    """

    metrics: dict
    per_case: list
    conventions: dict
    counts: dict

    def to_dict(self) -> dict:
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "per_case": self.per_case,
                "conventions": self.conventions, "counts": self.counts}


def segmentation_metrics(
    cases: list[SegmentationScores],
    *,
    subject_ids: list | None = None,
    tolerance_mm: float = 1.0,
    empty_distance: str = "diagonal",
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
) -> SegmentationResult:
    """Aggregate per-case scores (from :func:`segmentation_scores`) into means with CIs.

    Parameters
    ----------
    cases : list of SegmentationScores
        One per subject.
    subject_ids : list, optional
        Identifiers for the per-case table.
    tolerance_mm, empty_distance
        The settings the cases were scored with (recorded in ``conventions``).

    Returns
    -------
    SegmentationResult
    """
    values = {
        "dice": np.array([c.dice for c in cases]),
        "hd95": np.array([c.hd95 for c in cases]),
        "asd": np.array([c.asd for c in cases]),
        "nsd": np.array([c.nsd for c in cases]),
        "volume_error": np.array([c.volume_error for c in cases]),
        "abs_volume_error": np.abs(np.array([c.volume_error for c in cases])),
        "relative_volume_error": np.array([c.relative_volume_error for c in cases]),
    }
    metrics = bootstrap(mean_statistic(values), len(cases), n_resamples=n_resamples, method=method,
                        level=level, seed=seed)
    ids = subject_ids if subject_ids is not None else list(range(len(cases)))
    per_case = [{"subject_id": str(i), **c.as_dict()} for i, c in zip(ids, cases)]
    empties = [c.empty for c in cases]
    counts = {"n": len(cases), "empty_reference": empties.count("reference"),
              "empty_prediction": empties.count("prediction"), "both_empty": empties.count("both")}
    conventions = {
        "both_empty": "Dice = NSD = 1, distances = 0, volume error = 0",
        "one_empty": ("Dice = NSD = 0; HD95/HD/ASD = image diagonal in mm (worst case)"
                      if empty_distance == "diagonal" else
                      "Dice = NSD = 0; HD95/HD/ASD undefined (NaN) and left out of the means"),
        "relative_volume_error_empty_reference": "undefined (NaN), left out of the mean",
        "nsd_tolerance_mm": tolerance_mm,
        "surface": "mask voxels with a face-neighbour outside the mask; distances between voxel centres, mm",
        "hd95": "max of the two directed 95th percentiles",
    }
    return SegmentationResult(metrics, per_case, conventions, counts)

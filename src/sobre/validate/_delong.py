"""DeLong's variance of the AUC and test for correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988).

Uses the fast midrank algorithm of Sun & Xu (2014), O(n log n) per score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from sobre.validate._estimate import Estimate

__all__ = ["delong_covariance", "delong_auc", "delong_test", "DeLongTest"]


def delong_covariance(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for one or more scores of the same subjects.

    Parameters
    ----------
    positive : array of bool, shape (n,)
        Reference label.
    scores : array of float, shape (k, n) or (n,)
        ``k`` scores (models) for the same subjects.

    Returns
    -------
    aucs : ndarray of shape (k,)
    cov : ndarray of shape (k, k)
        ``S10 / m + S01 / n`` where ``S10`` and ``S01`` are the sample covariances of the
        structural components of the positives (``m`` of them) and negatives (``n``).
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    x = scores[:, positive]
    y = scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positive and two negative subjects")
    tx = stats.rankdata(x, axis=1)
    ty = stats.rankdata(y, axis=1)
    tz = stats.rankdata(np.hstack([x, y]), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n          # per positive: fraction of negatives below it
    v01 = 1.0 - (tz[:, m:] - ty) / m    # per negative: fraction of positives above it
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_auc(positive: np.ndarray, score: np.ndarray, *, level: float = 0.95) -> Estimate:
    """AUC with DeLong's asymptotic confidence interval (clipped to [0, 1])."""
    aucs, cov = delong_covariance(positive, score)
    se = math.sqrt(max(cov[0, 0], 0.0))
    z = special.ndtri(0.5 + level / 2)
    a = float(aucs[0])
    return Estimate(a, max(0.0, a - z * se), min(1.0, a + z * se), "delong", level, len(score))


@dataclass(frozen=True)
class DeLongTest:
    """Result of DeLong's test of two correlated AUCs.

    Attributes
    ----------
    auc_a, auc_b : float
    difference : Estimate
        ``auc_a - auc_b`` with its DeLong confidence interval.
    variance : float
        Variance of the difference.
    z, p_value : float
        Two-sided z test of equal AUCs.
    correlation : float
        Correlation of the two AUC estimates.
    """

    auc_a: float
    auc_b: float
    difference: Estimate
    variance: float
    z: float
    p_value: float
    correlation: float

    def to_dict(self) -> dict:
        return {"auc_a": self.auc_a, "auc_b": self.auc_b, "difference": self.difference.to_dict(),
                "variance": self.variance, "z": self.z, "p_value": self.p_value,
                "correlation": self.correlation}


def delong_test(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                *, level: float = 0.95) -> DeLongTest:
    """Compare two AUCs measured on the same subjects (paired) with DeLong's test.

    Parameters
    ----------
    positive : array of bool, shape (n,)
    score_a, score_b : array of float, shape (n,)
        Two models' scores for the same subjects, in the same order.

    Returns
    -------
    DeLongTest
    """
    aucs, cov = delong_covariance(positive, np.vstack([score_a, score_b]))
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
        se = 0.0
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * special.ndtr(-abs(z)))
    q = special.ndtri(0.5 + level / 2)
    denom = math.sqrt(max(cov[0, 0] * cov[1, 1], 0.0))
    corr = float(cov[0, 1] / denom) if denom > 0 else math.nan
    return DeLongTest(float(aucs[0]), float(aucs[1]),
                      Estimate(diff, diff - q * se, diff + q * se, "delong", level, len(positive)),
                      var, float(z), p, corr)

"""Group statistics on z-scores: one-sample and two-sample tests, Benjamini-Hochberg FDR, effect sizes.

Under the normative model a reference subject's z-score is standard normal, so a group whose mean z
differs from 0 deviates from the norm; the mean z is itself the effect size in standard deviations of
the normative population (Cohen's d against the norm). The p-values of all regions (or voxels) are
corrected together by Benjamini-Hochberg (step-up, independent or positively dependent tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["GroupDeviation", "benjamini_hochberg", "group_deviation"]


def benjamini_hochberg(p: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg adjusted p-values (q) and rejections at ``alpha``; NaN p-values stay NaN.

    Same values as ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh")``.

    >>> q, rej = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    >>> np.round(q, 3).tolist(), rej.tolist()
    ([0.04, 0.053, 0.053, 0.5], [True, False, False, False])
    """
    p = np.asarray(p, float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    pv = p[ok]
    n = pv.size
    if n:
        order = np.argsort(pv, kind="mergesort")
        ranked = pv[order] * n / np.arange(1, n + 1)
        adj = np.minimum.accumulate(ranked[::-1])[::-1]
        out = np.empty(n)
        out[order] = np.minimum(adj, 1.0)
        q[ok] = out
    rej = np.zeros(p.shape, bool)
    rej[ok] = q[ok] <= alpha
    return q, rej


@dataclass
class GroupDeviation:
    """Per measure (arrays of length M): how a group deviates from the norm (and from controls)."""

    n: np.ndarray
    mean_z: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    t: np.ndarray
    p: np.ndarray
    q: np.ndarray
    significant: np.ndarray
    share_extreme: np.ndarray
    controls_mean_z: np.ndarray | None = None
    difference: np.ndarray | None = None
    hedges_g: np.ndarray | None = None
    p_vs_controls: np.ndarray | None = None
    q_vs_controls: np.ndarray | None = None


def group_deviation(z: np.ndarray, *, controls: np.ndarray | None = None, alpha: float = 0.05,
                    threshold: float = 2.6, level: float = 0.95) -> GroupDeviation:
    """Test, per measure, whether a group's z-scores (N, M) deviate from 0 (and from ``controls``' z).

    One-sample t-test of the mean z against 0 (the norm), its t-based interval, BH q-values over the
    M measures, and the share of subjects beyond ``|z| > threshold``. With ``controls`` (held-out
    reference subjects scored by the same model): Welch's t-test of the difference and Hedges' g.
    NaN z (unscorable subjects) are left out per measure.
    """
    z = np.asarray(z, float)
    ok = np.isfinite(z)
    n = ok.sum(0)
    zz = np.where(ok, z, 0.0)
    mean = zz.sum(0) / np.maximum(n, 1)
    var = (np.where(ok, (z - mean) ** 2, 0.0)).sum(0) / np.maximum(n - 1, 1)
    se = np.sqrt(var / np.maximum(n, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / se
    df = np.maximum(n - 1, 1)
    p = 2 * stats.t.sf(np.abs(t), df)
    p[n < 2] = np.nan
    tq = stats.t.ppf(0.5 + level / 2, df)
    q, rej = benjamini_hochberg(p, alpha)
    share = (np.where(ok, np.abs(z) > threshold, False)).sum(0) / np.maximum(n, 1)
    out = GroupDeviation(n=n, mean_z=mean, ci_low=mean - tq * se, ci_high=mean + tq * se, t=t, p=p, q=q,
                         significant=rej, share_extreme=share)
    if controls is not None and len(controls):
        c = np.asarray(controls, float)
        cok = np.isfinite(c)
        nc = cok.sum(0)
        cm = np.where(cok, c, 0.0).sum(0) / np.maximum(nc, 1)
        cv = np.where(cok, (c - cm) ** 2, 0.0).sum(0) / np.maximum(nc - 1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            tw = (mean - cm) / np.sqrt(var / n + cv / nc)
            dfw = (var / n + cv / nc) ** 2 / ((var / n) ** 2 / np.maximum(n - 1, 1) + (cv / nc) ** 2 / np.maximum(nc - 1, 1))
            pooled = np.sqrt(((n - 1) * var + (nc - 1) * cv) / np.maximum(n + nc - 2, 1))
            g = (mean - cm) / pooled * (1 - 3 / (4 * (n + nc) - 9))
        pw = 2 * stats.t.sf(np.abs(tw), dfw)
        out.controls_mean_z, out.difference, out.hedges_g = cm, mean - cm, g
        out.p_vs_controls = pw
        out.q_vs_controls = benjamini_hochberg(pw, alpha)[0]
    return out

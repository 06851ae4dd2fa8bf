"""Regression metrics on bootstrap weights: MAE, RMSE, Pearson r, bias."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sobre.validate._estimate import bootstrap

__all__ = ["regression_metrics", "regression_statistic", "RegressionResult"]

HIGHER_IS_BETTER = {"pearson_r"}
LOWER_IS_BETTER = {"mae", "rmse"}


def regression_statistic(target: np.ndarray, prediction: np.ndarray):
    """Statistic function of MAE, RMSE, Pearson r and bias (mean of prediction - target)."""
    y = np.asarray(target, dtype=float)
    p = np.asarray(prediction, dtype=float)
    e = p - y
    abs_e = np.abs(e)
    sq_e = e ** 2
    # centre for numerical stability of the weighted moments
    yc = y - y.mean()
    pc = p - p.mean()
    yy, pp, yp = yc ** 2, pc ** 2, yc * pc

    def from_sums(sw, s_y, s_p, s_yp, s_yy, s_pp, s_abs, s_sq, s_e) -> dict:
        my, mp = s_y / sw, s_p / sw
        cov = s_yp / sw - my * mp
        vy = s_yy / sw - my ** 2
        vp = s_pp / sw - mp ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where((vy > 0) & (vp > 0), cov / np.sqrt(np.abs(vy * vp)), np.nan)
        return {"mae": s_abs / sw, "rmse": np.sqrt(s_sq / sw), "pearson_r": np.clip(r, -1.0, 1.0), "bias": s_e / sw}

    columns = (yc, pc, yp, yy, pp, abs_e, sq_e, e)

    def stat(w: np.ndarray) -> dict:
        return from_sums(w.sum(axis=1), *(w @ c for c in columns))

    def loo() -> dict:
        return from_sums(len(y) - 1.0, *(c.sum() - c for c in columns))

    stat.loo = loo
    return stat


@dataclass
class RegressionResult:
    """Regression metrics with their confidence intervals (``metrics``: name -> Estimate)."""

    metrics: dict
    counts: dict

    def to_dict(self) -> dict:
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "counts": self.counts}


def regression_metrics(
    target: np.ndarray,
    prediction: np.ndarray,
    *,
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
) -> RegressionResult:
    """MAE, RMSE, Pearson correlation and bias (prediction minus target), with CIs.

    Parameters
    ----------
    target, prediction : array of float, shape (n,)

    Returns
    -------
    RegressionResult
    """
    stat = regression_statistic(target, prediction)
    metrics = bootstrap(stat, len(target), n_resamples=n_resamples, method=method, level=level, seed=seed)
    return RegressionResult(metrics, {"n": int(len(target))})

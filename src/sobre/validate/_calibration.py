"""Calibration: reliability diagram, expected calibration error, Brier score, temperature scaling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from sobre.validate._estimate import bootstrap

__all__ = [
    "reliability_diagram",
    "expected_calibration_error",
    "brier_score",
    "fit_temperature",
    "apply_temperature",
    "calibration_report",
    "CalibrationResult",
]

_EPS = 1e-7


def _as_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    return p


def _confidence_and_outcome(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: P(positive) and the label; multi-class: top-label confidence and correctness."""
    p = _as_probs(probs)
    y = np.asarray(labels)
    if p.ndim == 1:
        return p, y.astype(float)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # bins (0, 1/n], ..., ((n-1)/n, 1] with 0 in the first bin (as scikit-learn's calibration_curve)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)


def reliability_diagram(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = 10) -> dict:
    """Data of a reliability diagram with equal-width bins.

    Parameters
    ----------
    labels : array of shape (n,)
        Binary labels (0/1) or class indices.
    probs : array of shape (n,) or (n, k)
        P(positive) for binary, class probabilities for multi-class (top-label diagram).
    n_bins : int

    Returns
    -------
    dict
        ``bin_edges`` (n_bins + 1,), and per non-empty bin: ``confidence`` (mean predicted
        probability), ``frequency`` (observed fraction positive / correct), ``count``.
    """
    conf, out = _confidence_and_outcome(labels, probs)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    s_out = np.bincount(idx, weights=out, minlength=n_bins)
    keep = count > 0
    return {
        "bin_edges": np.linspace(0, 1, n_bins + 1).tolist(),
        "confidence": (s_conf[keep] / count[keep]).tolist(),
        "frequency": (s_out[keep] / count[keep]).tolist(),
        "count": count[keep].astype(int).tolist(),
    }


def _ece_statistic(labels, probs, n_bins: int):
    conf, out = _confidence_and_outcome(labels, probs)
    idx = _bin_index(conf, n_bins)
    onehot = np.zeros((len(conf), n_bins))
    onehot[np.arange(len(conf)), idx] = 1.0
    p = _as_probs(probs)
    y = np.asarray(labels)
    if p.ndim == 1:
        sq = (p - y.astype(float)) ** 2
    else:
        t = np.zeros_like(p)
        t[np.arange(len(y)), y.astype(int)] = 1.0
        sq = ((p - t) ** 2).sum(axis=1)

    def stat(w: np.ndarray) -> dict:
        cnt = w @ onehot
        sc = w @ (onehot * conf[:, None])
        so = w @ (onehot * out[:, None])
        tot = w.sum(axis=1)
        ece = np.abs(so - sc).sum(axis=1) / tot
        return {"ece": ece, "brier": (w @ sq) / tot, "_n": cnt.sum(axis=1)}

    return stat


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE: ``sum_b (n_b / n) |frequency_b - confidence_b|`` over equal-width bins.

    Binary inputs use P(positive) against the label; multi-class inputs the top-label
    confidence against correctness.
    """
    return float(_ece_statistic(labels, probs, n_bins)(np.ones((1, len(labels))))["ece"][0])


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Brier score: mean squared difference between probabilities and outcomes.

    Binary: ``mean((p - y)^2)`` (scikit-learn's ``brier_score_loss``); multi-class: mean over
    subjects of ``sum_k (p_k - 1[y = k])^2``.
    """
    return float(_ece_statistic(labels, probs, 2)(np.ones((1, len(labels))))["brier"][0])


def _logits(probs: np.ndarray) -> np.ndarray:
    p = np.clip(_as_probs(probs), _EPS, 1 - _EPS)
    if p.ndim == 1:
        return special.logit(p)
    return np.log(p)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature: ``softmax(logits / T)`` (sigmoid for binary)."""
    z = _logits(probs) / temperature
    if z.ndim == 1:
        return special.expit(z)
    return special.softmax(z, axis=1)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood on validation data (Guo et al. 2017).

    Parameters
    ----------
    labels : array of shape (n,)
        0/1 labels (binary) or class indices.
    probs : array of shape (n,) or (n, k)
        The model's probabilities on the validation subjects.

    Returns
    -------
    float
        ``T > 0``; ``T > 1`` softens over-confident probabilities.
    """
    z = _logits(probs)
    y = np.asarray(labels)

    def nll(log_t: float) -> float:
        t = np.exp(log_t)
        if z.ndim == 1:
            s = z / t
            return float(np.mean(np.logaddexp(0, s) - y * s))
        s = z / t
        return float(np.mean(special.logsumexp(s, axis=1) - s[np.arange(len(y)), y.astype(int)]))

    res = optimize.minimize_scalar(nll, bounds=(np.log(0.01), np.log(100.0)), method="bounded",
                                   options={"xatol": 1e-6})
    return float(np.exp(res.x))


@dataclass
class CalibrationResult:
    """Calibration of the test predictions, before and after temperature scaling.

    Attributes
    ----------
    metrics : dict of str to Estimate
        ``ece``, ``brier`` (as given) and, when a temperature was fitted,
        ``ece_scaled``, ``brier_scaled``.
    temperature : float or None
        Fitted on validation subjects only.
    diagram, diagram_scaled : dict
        Reliability-diagram data (see :func:`reliability_diagram`).
    n_bins : int
    note : str or None
    """

    metrics: dict
    temperature: float | None
    diagram: dict
    diagram_scaled: dict | None
    n_bins: int
    note: str | None = None

    def to_dict(self) -> dict:
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "temperature": self.temperature,
                "diagram": self.diagram, "diagram_scaled": self.diagram_scaled, "n_bins": self.n_bins,
                "note": self.note}


def calibration_report(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    val_labels: np.ndarray | None = None,
    val_probs: np.ndarray | None = None,
    n_bins: int = 10,
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
) -> CalibrationResult:
    """ECE and Brier score with CIs, reliability diagrams, and temperature scaling.

    The temperature is fitted on the validation subjects (``val_*``) and applied to the test
    subjects; without validation data no temperature is fitted (fitting it on the test data
    would make the test calibration look better than it is).

    Returns
    -------
    CalibrationResult
    """
    stat = _ece_statistic(labels, probs, n_bins)
    est = bootstrap(lambda w: {k: v for k, v in stat(w).items() if k != "_n"}, len(labels),
                    n_resamples=n_resamples, method=method, level=level, seed=seed)
    metrics = dict(est)
    diagram = reliability_diagram(labels, probs, n_bins=n_bins)
    temperature = None
    diagram_scaled = None
    note = None
    if val_labels is not None and val_probs is not None and len(val_labels) > 0:
        temperature = fit_temperature(val_labels, val_probs)
        scaled = apply_temperature(probs, temperature)
        stat2 = _ece_statistic(labels, scaled, n_bins)
        est2 = bootstrap(lambda w: {f"{k}_scaled": v for k, v in stat2(w).items() if k != "_n"}, len(labels),
                         n_resamples=n_resamples, method=method, level=level, seed=seed)
        metrics.update(est2)
        diagram_scaled = reliability_diagram(labels, scaled, n_bins=n_bins)
    else:
        note = "no validation subjects (split column): temperature scaling not fitted"
    return CalibrationResult(metrics, temperature, diagram, diagram_scaled, n_bins, note)

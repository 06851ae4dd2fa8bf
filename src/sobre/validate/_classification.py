"""Classification metrics written on bootstrap weights: AUC, sensitivity, specificity, ...

All functions here accept a weight matrix ``w`` of shape (b, n) (see
:mod:`sobre.validate._estimate`); at ``w = 1`` they equal the usual definitions
(scikit-learn's ``roc_auc_score``, ``recall_score``, ``balanced_accuracy_score``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sobre.validate._estimate import Estimate, bootstrap, bootstrap_weights

__all__ = [
    "AUCKernel",
    "auc",
    "auc_ci",
    "auc_statistic",
    "binary_metrics",
    "multiclass_metrics",
    "roc_curve_band",
    "ClassificationResult",
]

#: Metrics for which larger is better (used to flag weak subgroups).
HIGHER_IS_BETTER = {"auc", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv",
                    "accuracy", "macro_auc"}


class AUCKernel:
    """Area under the ROC curve as a function of per-subject weights.

    The Mann-Whitney statistic of a weighted sample is
    ``U = sum_i sum_j w_i w_j [s_i > s_j] + 0.5 [s_i == s_j]`` over positives ``i`` and
    negatives ``j``. Sorting once and grouping tied scores, it is a cumulative sum per
    resample: O(b * n), no sort per resample.

    Parameters
    ----------
    positive : array of bool, shape (n,)
        True for positive subjects.
    score : array of float, shape (n,)
        Higher means more likely positive.
    """

    def __init__(self, positive: np.ndarray, score: np.ndarray) -> None:
        positive = np.asarray(positive, dtype=bool)
        score = np.asarray(score, dtype=float)
        self.positive = positive
        self.score = score
        self.order = np.argsort(score, kind="mergesort")
        # subjects already sorted by score (see binary_metrics): no gather per resample
        self.sorted = bool(np.all(self.order == np.arange(len(score))))
        s = score[self.order]
        self.pos_sorted = positive[self.order].astype(float)
        self.neg_sorted = 1.0 - self.pos_sorted
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.starts = None if len(starts) == len(s) else starts

    def __call__(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=float)
        ws = w if self.sorted else np.take(w, self.order, axis=1)
        wp = ws * self.pos_sorted
        wn = ws * self.neg_sorted
        if self.starts is not None:
            wp = np.add.reduceat(wp, self.starts, axis=1)
            wn = np.add.reduceat(wn, self.starts, axis=1)
        below = np.cumsum(wn, axis=1)
        wn *= 0.5
        below -= wn  # negatives strictly below + half of the ties
        u = np.einsum("ij,ij->i", wp, below)
        p = wp.sum(axis=1)
        q = 2.0 * wn.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return u / (p * q)

    def placements(self) -> tuple[np.ndarray, np.ndarray]:
        """Per subject: for a positive, negatives below it (+ half the ties); for a negative,
        positives above it (+ half the ties). Shape (n,) each; zero for the other class."""
        pos = np.sort(self.score[self.positive])
        neg = np.sort(self.score[~self.positive])
        x = self.score
        below = np.searchsorted(neg, x, side="left") + 0.5 * (np.searchsorted(neg, x, side="right")
                                                                 - np.searchsorted(neg, x, side="left"))
        above = (len(pos) - np.searchsorted(pos, x, side="right")) + 0.5 * (
            np.searchsorted(pos, x, side="right") - np.searchsorted(pos, x, side="left"))
        return np.where(self.positive, below, 0.0), np.where(~self.positive, above, 0.0)

    def loo(self) -> np.ndarray:
        """Leave-one-out AUCs, shape (n,), in closed form (no refit)."""
        m = float(self.positive.sum())
        n = float((~self.positive).sum())
        below, above = self.placements()
        u = below.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.positive, (u - below) / ((m - 1) * n), (u - above) / (m * (n - 1)))


def auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney), ties counted one half; NaN when one class is absent.

    Parameters
    ----------
    positive : array of bool, shape (n,)
    score : array of float, shape (n,)
    """
    return float(AUCKernel(positive, score)(np.ones((1, len(score))))[0])


def auc_statistic(positive: np.ndarray, score: np.ndarray):
    """Statistic function (for :func:`bootstrap`) of the AUC alone, with closed-form leave-one-out."""
    kernel = AUCKernel(positive, score)

    def stat(w: np.ndarray) -> dict:
        return {"auc": kernel(w)}

    stat.loo = lambda: {"auc": kernel.loo()}
    return stat


def auc_ci(
    positive: np.ndarray,
    score: np.ndarray,
    *,
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """AUC with a subject-level bootstrap interval (percentile or BCa).

    Parameters
    ----------
    positive : array of bool, shape (n,)
    score : array of float, shape (n,)

    Returns
    -------
    Estimate

    Examples
    --------
    >>> import numpy as np
    >>> y = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    >>> s = np.r_[np.linspace(0, 1, 50), np.linspace(0.5, 1.5, 50)]
    >>> e = auc_ci(y, s, n_resamples=500)
    >>> round(e.value, 3), e.ci_low < e.value < e.ci_high
    (0.87, True)
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(score, kind="mergesort")
    stat = auc_statistic(positive[order], score[order])
    return bootstrap(stat, len(score), n_resamples=n_resamples, method=method, level=level, seed=seed)["auc"]


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def binary_statistic(positive: np.ndarray, score: np.ndarray, threshold: float):
    """Statistic function (for :func:`bootstrap`) of the binary metrics.

    Subjects with ``score >= threshold`` are called positive.
    """
    positive = np.asarray(positive, dtype=bool)
    called = np.asarray(score, dtype=float) >= threshold
    tp_v = (positive & called).astype(float)
    fn_v = (positive & ~called).astype(float)
    tn_v = (~positive & ~called).astype(float)
    fp_v = (~positive & called).astype(float)
    kernel = AUCKernel(positive, score)

    def from_counts(tp, fn, tn, fp, auc_values) -> dict:
        sens = _ratio(tp, tp + fn)
        spec = _ratio(tn, tn + fp)
        return {
            "auc": auc_values,
            "balanced_accuracy": (sens + spec) / 2.0,
            "sensitivity": sens,
            "specificity": spec,
            "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn),
            "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        }

    def stat(w: np.ndarray) -> dict:
        return from_counts(w @ tp_v, w @ fn_v, w @ tn_v, w @ fp_v, kernel(w))

    def loo() -> dict:
        return from_counts(tp_v.sum() - tp_v, fn_v.sum() - fn_v, tn_v.sum() - tn_v, fp_v.sum() - fp_v,
                           kernel.loo())

    stat.loo = loo
    return stat


@dataclass
class ClassificationResult:
    """Metrics of a classifier with their confidence intervals.

    Attributes
    ----------
    metrics : dict of str to Estimate
    threshold : float or None
        Operating threshold of the threshold-dependent metrics (binary).
    counts : dict
        Confusion counts at the threshold (binary) or per-class counts (multi-class).
    """

    metrics: dict
    threshold: float | None
    counts: dict

    def to_dict(self) -> dict:
        return {
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "threshold": self.threshold,
            "counts": self.counts,
        }


def binary_metrics(
    positive: np.ndarray,
    score: np.ndarray,
    *,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
) -> ClassificationResult:
    """AUC, balanced accuracy, sensitivity, specificity, PPV, NPV and accuracy with CIs.

    Parameters
    ----------
    positive : array of bool, shape (n,)
        Reference label, True for the positive class.
    score : array of float, shape (n,)
        Model score, higher for the positive class.
    threshold : float
        ``score >= threshold`` is a positive call.
    n_resamples, method, level, seed
        Bootstrap settings (see :func:`sobre.validate.bootstrap`). Resampling is at the
        subject level, unstratified: the prevalence varies across resamples as it would across
        samples, which matters for PPV and NPV.

    Returns
    -------
    ClassificationResult
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    # every metric is invariant to the order of subjects: sorting by score once spares the AUC
    # kernel a gather per resample
    order = np.argsort(score, kind="mergesort")
    stat = binary_statistic(positive[order], score[order], threshold)
    metrics = bootstrap(stat, len(score), n_resamples=n_resamples, method=method, level=level, seed=seed)
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        missing = "positive" if n_pos == 0 else "negative"
        note = f"undefined: no {missing} subject"
        for k in ("auc", "balanced_accuracy"):
            metrics[k] = Estimate(math.nan, level=level, n=len(score), note=note)
        key = "sensitivity" if n_pos == 0 else "specificity"
        metrics[key] = Estimate(math.nan, level=level, n=len(score), note=note)
    called = score >= threshold
    counts = {
        "n": int(len(score)), "positives": n_pos, "negatives": n_neg,
        "tp": int((positive & called).sum()), "fn": int((positive & ~called).sum()),
        "tn": int((~positive & ~called).sum()), "fp": int((~positive & called).sum()),
    }
    _exact_when_degenerate(metrics, counts, level)
    return ClassificationResult(metrics, float(threshold), counts)


def _exact_when_degenerate(metrics: dict, c: dict, level: float) -> None:
    """A proportion of 0 or 1 gives the same value in every resample: the bootstrap interval
    collapses to a point. Use the exact (Clopper-Pearson) interval instead, and say so."""
    from scipy import stats

    fractions = {"sensitivity": (c["tp"], c["tp"] + c["fn"]), "specificity": (c["tn"], c["tn"] + c["fp"]),
                 "ppv": (c["tp"], c["tp"] + c["fp"]), "npv": (c["tn"], c["tn"] + c["fn"]),
                 "accuracy": (c["tp"] + c["tn"], c["n"])}
    for name, (k, n) in fractions.items():
        e = metrics.get(name)
        if e is None or n == 0 or e.method == "none" or e.value not in (0.0, 1.0) or e.ci_low != e.ci_high:
            continue
        ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
        metrics[name] = Estimate(e.value, float(ci.low), float(ci.high), "clopper-pearson", level, e.n,
                                 f"bootstrap interval degenerate at {e.value:g}; exact interval on {n} subjects")
    e = metrics.get("auc")
    if e is not None and e.method != "none" and e.ci_low == e.ci_high and e.value in (0.0, 1.0):
        metrics["auc"] = Estimate(e.value, e.ci_low, e.ci_high, e.method, level, e.n,
                                  "perfect separation in every resample: the interval is degenerate and "
                                  "over-confident; more subjects are needed to bound the AUC")


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    cnt = ok.sum(axis=1)
    tot = np.where(ok, a, 0.0).sum(axis=1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def multiclass_statistic(labels: np.ndarray, scores: np.ndarray):
    """Statistic function of the multi-class metrics.

    Parameters
    ----------
    labels : array of int, shape (n,)
        Class index of each subject, in ``range(k)``.
    scores : array of float, shape (n, k)
        One score per class; the predicted class is the arg-max.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    k = scores.shape[1]
    kernels = [AUCKernel(labels == c, scores[:, c]) for c in range(k)]
    pred = scores.argmax(axis=1)
    member = [(labels == c).astype(float) for c in range(k)]
    hit = [((labels == c) & (pred == c)).astype(float) for c in range(k)]
    correct = (pred == labels).astype(float)

    def assemble(aucs, recalls, acc) -> dict:
        out = {"macro_auc": _nanmean_rows(aucs), "balanced_accuracy": _nanmean_rows(recalls), "accuracy": acc}
        for c in range(k):
            out[f"auc[{c}]"] = aucs[:, c]
            out[f"sensitivity[{c}]"] = recalls[:, c]
        return out

    def stat(w: np.ndarray) -> dict:
        aucs = np.stack([kern(w) for kern in kernels], axis=1)
        recalls = np.stack([_ratio(w @ h, w @ m) for h, m in zip(hit, member)], axis=1)
        return assemble(aucs, recalls, (w @ correct) / w.sum(axis=1))

    def loo() -> dict:
        aucs = np.stack([kern.loo() for kern in kernels], axis=1)
        recalls = np.stack([_ratio(h.sum() - h, m.sum() - m) for h, m in zip(hit, member)], axis=1)
        return assemble(aucs, recalls, (correct.sum() - correct) / (len(correct) - 1.0))

    stat.loo = loo
    return stat


def multiclass_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    classes: list | None = None,
    *,
    n_resamples: int = 2000,
    method: str = "bca",
    level: float = 0.95,
    seed: int = 0,
) -> ClassificationResult:
    """Macro one-vs-rest AUC, balanced accuracy, accuracy, and per-class AUC and recall.

    Parameters
    ----------
    labels : array of int, shape (n,)
        Class index per subject.
    scores : array of float, shape (n, k)
        Score per class (probabilities or logits); prediction is the arg-max.
    classes : list, optional
        Class names, used in metric names (``auc[name]``).

    Returns
    -------
    ClassificationResult
        ``macro_auc`` equals scikit-learn's ``roc_auc_score(..., multi_class="ovr",
        average="macro")`` on probabilities.
    """
    scores = np.asarray(scores, dtype=float)
    k = scores.shape[1]
    classes = list(range(k)) if classes is None else list(classes)
    stat = multiclass_statistic(labels, scores)
    raw = bootstrap(stat, len(labels), n_resamples=n_resamples, method=method, level=level, seed=seed)
    metrics = {}
    for name, est in raw.items():
        if "[" in name:
            base, idx = name[:-1].split("[")
            name = f"{base}[{classes[int(idx)]}]"
        metrics[name] = est
    counts = {"n": int(len(labels)), **{f"class[{c}]": int((np.asarray(labels) == i).sum())
                                         for i, c in enumerate(classes)}}
    return ClassificationResult(metrics, None, counts)


def roc_curve_band(
    positive: np.ndarray,
    score: np.ndarray,
    *,
    n_resamples: int = 500,
    level: float = 0.95,
    seed: int = 0,
    grid: int = 101,
) -> dict:
    """Empirical ROC curve with a pointwise bootstrap band (vertical averaging).

    Returns
    -------
    dict
        ``fpr`` and ``tpr`` of the empirical curve, and ``grid_fpr`` (grid,) with
        ``tpr_low``/``tpr_high`` (grid,), the pointwise percentile band of the TPR at each
        false-positive rate over the resamples.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    pos = positive[order].astype(float)
    neg = 1.0 - pos
    # indices of the last element of each group of tied scores
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]

    def curve(w: np.ndarray):
        ws = w[:, order]
        tp = np.cumsum(ws * pos, axis=1)[:, last]
        fp = np.cumsum(ws * neg, axis=1)[:, last]
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr = tp / tp[:, -1:]
            fpr = fp / fp[:, -1:]
        zeros = np.zeros((len(w), 1))
        return np.hstack([zeros, fpr]), np.hstack([zeros, tpr])

    fpr0, tpr0 = curve(np.ones((1, len(score))))
    gx = np.linspace(0, 1, grid)
    bands = []
    rng = np.random.default_rng(seed)
    for w in bootstrap_weights(len(score), n_resamples, rng, chunk=128):
        f, t = curve(w)
        for fr, tr in zip(f, t):
            if np.isfinite(fr).all() and np.isfinite(tr).all():
                # step curve: largest TPR reached at FPR <= x
                idx = np.searchsorted(fr, gx, side="right") - 1
                bands.append(np.maximum.accumulate(tr)[idx])
    alpha = (1 - level) / 2
    if bands:
        arr = np.array(bands)
        lo, hi = np.quantile(arr, [alpha, 1 - alpha], axis=0)
    else:
        lo = hi = np.full(grid, np.nan)
    return {"fpr": fpr0[0].tolist(), "tpr": tpr0[0].tolist(), "grid_fpr": gx.tolist(),
            "tpr_low": lo.tolist(), "tpr_high": hi.tolist()}

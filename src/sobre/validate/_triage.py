"""Triage operating points: a threshold reaching a target sensitivity, chosen on validation data.

For "rule out normal" triage a model must miss almost no abnormal case: the threshold is the
highest one whose sensitivity on the *validation* subjects is at least the target; its
sensitivity and specificity are then measured on the *test* subjects. The interval reported
for the test specificity (and sensitivity) comes from a joint bootstrap that resamples the
validation subjects (re-choosing the threshold) and the test subjects in each replicate, so it
includes the uncertainty of the threshold itself; exact Clopper-Pearson intervals at the fixed
threshold are given too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from sobre.validate._estimate import Estimate, bootstrap_weights, interval_from_replicates

__all__ = ["threshold_for_sensitivity", "threshold_youden", "triage_operating_point", "TriageResult"]


def threshold_for_sensitivity(positive: np.ndarray, score: np.ndarray, target: float) -> float:
    """Highest threshold ``t`` such that ``mean(score[positive] >= t) >= target``.

    Parameters
    ----------
    positive : array of bool, shape (n,)
    score : array of float, shape (n,)
    target : float
        Target sensitivity in (0, 1].

    Returns
    -------
    float
    """
    pos = np.sort(np.asarray(score, dtype=float)[np.asarray(positive, dtype=bool)])[::-1]
    if len(pos) == 0:
        return math.nan
    k = int(math.ceil(target * len(pos) - 1e-12))
    k = min(max(k, 1), len(pos))
    return float(pos[k - 1])


def threshold_youden(positive: np.ndarray, score: np.ndarray) -> float:
    """The threshold ``t`` (one of the scores) that maximises Youden's J = sensitivity + specificity - 1.

    ``score >= t`` is positive. Among equally good thresholds the lowest (the most sensitive) is
    returned. Meant for validation rows: choosing it on the test rows would flatter the test metrics.

    Examples
    --------
    >>> threshold_youden(np.array([0, 0, 1, 0, 1, 1], bool), np.array([10, 20, 30, 40, 50, 60.0]))
    30.0
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    cand = np.unique(score)
    pos = np.sort(score[positive])
    neg = np.sort(score[~positive])
    sens = (n_pos - np.searchsorted(pos, cand, side="left")) / n_pos
    spec = np.searchsorted(neg, cand, side="left") / n_neg
    return float(cand[int(np.argmax(sens + spec))])


def _thresholds_weighted(pos_scores_desc: np.ndarray, w_pos: np.ndarray, target: float) -> np.ndarray:
    """Per resample: highest threshold whose weighted sensitivity reaches the target."""
    cum = np.cumsum(w_pos, axis=1)
    need = target * cum[:, -1:] - 1e-9
    idx = np.argmax(cum >= need, axis=1)
    return pos_scores_desc[idx]


@dataclass
class TriageResult:
    """A triage operating point.

    Attributes
    ----------
    target_sensitivity : float
    threshold : float
        Chosen on the validation subjects.
    validation_sensitivity, validation_specificity : float
    sensitivity, specificity : Estimate
        On the test subjects, joint-bootstrap CI (threshold re-chosen in each replicate).
    sensitivity_exact, specificity_exact : Estimate
        On the test subjects at the fixed threshold, Clopper-Pearson CI.
    counts : dict
    note : str or None
    """

    target_sensitivity: float
    threshold: float
    validation_sensitivity: float
    validation_specificity: float
    sensitivity: Estimate
    specificity: Estimate
    sensitivity_exact: Estimate
    specificity_exact: Estimate
    counts: dict
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "target_sensitivity": self.target_sensitivity, "threshold": self.threshold,
            "validation_sensitivity": self.validation_sensitivity,
            "validation_specificity": self.validation_specificity,
            "sensitivity": self.sensitivity.to_dict(), "specificity": self.specificity.to_dict(),
            "sensitivity_exact": self.sensitivity_exact.to_dict(),
            "specificity_exact": self.specificity_exact.to_dict(),
            "counts": self.counts, "note": self.note,
        }


def _clopper_pearson(k: int, n: int, level: float) -> Estimate:
    if n == 0:
        return Estimate(math.nan, level=level, n=0, note="no subject")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return Estimate(k / n, float(ci.low), float(ci.high), "clopper-pearson", level, n)


def triage_operating_point(
    val_positive: np.ndarray,
    val_score: np.ndarray,
    test_positive: np.ndarray,
    test_score: np.ndarray,
    *,
    target_sensitivity: float = 0.99,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> TriageResult:
    """Choose the threshold on validation data, measure it on test data.

    Parameters
    ----------
    val_positive, val_score : arrays of shape (n_val,)
        Validation subjects (label: True = abnormal, the class that must not be missed).
    test_positive, test_score : arrays of shape (n_test,)
        Test subjects.
    target_sensitivity : float
        E.g. 0.99 for normality triage.
    n_resamples, level, seed
        Joint bootstrap settings (percentile intervals).

    Returns
    -------
    TriageResult
    """
    vp = np.asarray(val_positive, dtype=bool)
    vs = np.asarray(val_score, dtype=float)
    tp_ = np.asarray(test_positive, dtype=bool)
    ts = np.asarray(test_score, dtype=float)
    thr = threshold_for_sensitivity(vp, vs, target_sensitivity)
    val_sens = float(np.mean(vs[vp] >= thr)) if vp.any() else math.nan
    val_spec = float(np.mean(vs[~vp] < thr)) if (~vp).any() else math.nan
    k_sens = int(np.sum(ts[tp_] >= thr))
    k_spec = int(np.sum(ts[~tp_] < thr))
    n_pos, n_neg = int(tp_.sum()), int((~tp_).sum())
    sens_exact = _clopper_pearson(k_sens, n_pos, level)
    spec_exact = _clopper_pearson(k_spec, n_neg, level)

    notes = []
    min_pos = math.ceil(1.0 / (1.0 - target_sensitivity)) if target_sensitivity < 1 else math.inf
    if vp.sum() < min_pos:
        notes.append(f"only {int(vp.sum())} validation positives: a sensitivity of {target_sensitivity:g} "
                     f"cannot be resolved with fewer than {min_pos} (one miss already drops below it)")
    # joint bootstrap: resample validation (re-choose the threshold) and test subjects
    rng = np.random.default_rng(seed)
    order = np.argsort(-vs[vp], kind="mergesort")
    pos_desc = vs[vp][order]
    t_pos = ts[tp_]
    t_neg = ts[~tp_]
    sens_rep, spec_rep = [], []
    if len(pos_desc) and n_pos and n_neg and n_resamples > 0:
        for w_val, w_test in zip(bootstrap_weights(int(vp.sum()), n_resamples, rng, chunk=256),
                                 _test_weights(n_pos, n_neg, n_resamples, rng)):
            t_b = _thresholds_weighted(pos_desc, w_val[:, order], target_sensitivity)
            wp, wn = w_test
            sens_rep.append((wp * (t_pos[None, :] >= t_b[:, None])).sum(1) / wp.sum(1))
            spec_rep.append((wn * (t_neg[None, :] < t_b[:, None])).sum(1) / wn.sum(1))
        sens = interval_from_replicates(sens_exact.value, np.concatenate(sens_rep), level=level,
                                        method="percentile", n=n_pos)
        spec = interval_from_replicates(spec_exact.value, np.concatenate(spec_rep), level=level,
                                        method="percentile", n=n_neg)
    else:
        why = "no bootstrap asked" if n_resamples <= 0 else "needs positives and negatives"
        sens = Estimate(sens_exact.value, level=level, n=n_pos, note=why)
        spec = Estimate(spec_exact.value, level=level, n=n_neg, note=why)
    counts = {"validation_positives": int(vp.sum()), "validation_negatives": int((~vp).sum()),
              "test_positives": n_pos, "test_negatives": n_neg,
              "test_missed_positives": n_pos - k_sens}
    return TriageResult(float(target_sensitivity), thr, val_sens, val_spec, sens, spec, sens_exact,
                        spec_exact, counts, "; ".join(notes) or None)


def _test_weights(n_pos: int, n_neg: int, n_resamples: int, rng: np.random.Generator):
    # test positives and negatives resampled separately (prevalence fixed: sensitivity and
    # specificity do not depend on it)
    for wp, wn in zip(bootstrap_weights(n_pos, n_resamples, rng, chunk=256),
                      bootstrap_weights(n_neg, n_resamples, rng, chunk=256)):
        yield wp, wn

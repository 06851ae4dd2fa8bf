"""Calibration (ECE, Brier, reliability diagram, temperature scaling) and triage operating points."""

import math

import numpy as np
import pytest
from scipy import special, stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from sobre.validate import (
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
    threshold_for_sensitivity,
    triage_operating_point,
)


@pytest.fixture
def overconfident():
    # true probability sigmoid(z / 2), model reports sigmoid(z): over-confident by a temperature of 2
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 4000)
    y = (rng.random(4000) < special.expit(z / 2)).astype(int)
    return y, special.expit(z)


def test_brier_matches_sklearn(overconfident):
    y, p = overconfident
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_reliability_diagram_matches_sklearn(overconfident):
    y, p = overconfident
    d = reliability_diagram(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(d["frequency"], frac, atol=1e-12)
    np.testing.assert_allclose(d["confidence"], mean, atol=1e-12)
    assert sum(d["count"]) == len(y)


def test_ece_matches_loop(overconfident):
    y, p = overconfident
    edges = np.linspace(0, 1, 11)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (p > lo) & (p <= hi) if lo > 0 else (p >= lo) & (p <= hi)
        if inb.any():
            ece += inb.mean() * abs(y[inb].mean() - p[inb].mean())
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(ece, abs=1e-12)


def test_multiclass_brier_and_top_label_ece():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), 500)
    y = np.array([rng.choice(3, p=row) for row in p])  # calibrated by construction
    onehot = np.eye(3)[y]
    assert brier_score(y, p) == pytest.approx(np.mean(((p - onehot) ** 2).sum(1)))
    assert expected_calibration_error(y, p) < 0.06


def test_temperature_scaling_recovers_known_temperature(overconfident):
    y, p = overconfident
    t = fit_temperature(y[:2000], p[:2000])  # validation half
    assert t == pytest.approx(2.0, rel=0.1)
    scaled = apply_temperature(p[2000:], t)  # test half
    assert expected_calibration_error(y[2000:], scaled) < expected_calibration_error(y[2000:], p[2000:]) / 2
    res = calibration_report(y[2000:], p[2000:], val_labels=y[:2000], val_probs=p[:2000], n_resamples=300)
    assert res.temperature == pytest.approx(t)
    assert res.metrics["ece_scaled"].value < res.metrics["ece"].ci_low
    assert res.metrics["brier"].ci_low < res.metrics["brier"].value < res.metrics["brier"].ci_high
    without = calibration_report(y, p, n_resamples=0)
    assert without.temperature is None and "no validation" in without.note


def test_threshold_for_sensitivity_exact():
    pos = np.ones(100, bool)
    s = np.arange(100) / 100.0  # positives scored 0.00 ... 0.99
    # >= 99 of 100 positives at or above the threshold: the second-lowest positive score
    assert threshold_for_sensitivity(pos, s, 0.99) == pytest.approx(0.01)
    assert threshold_for_sensitivity(pos, s, 0.90) == pytest.approx(0.10)
    assert threshold_for_sensitivity(pos, s, 1.0) == pytest.approx(0.0)


def test_triage_chosen_on_validation_measured_on_test():
    rng = np.random.default_rng(3)

    def cohort(n):
        y = rng.random(n) < 0.3
        return y, rng.normal(0, 1, n) + 2.5 * y

    vy, vs = cohort(1500)
    ty, ts = cohort(1500)
    res = triage_operating_point(vy, vs, ty, ts, target_sensitivity=0.99, n_resamples=500, seed=0)
    assert res.threshold == pytest.approx(threshold_for_sensitivity(vy, vs, 0.99))
    assert res.validation_sensitivity >= 0.99
    assert res.specificity.value == pytest.approx(np.mean(ts[~ty] < res.threshold))
    assert res.sensitivity.value == pytest.approx(np.mean(ts[ty] >= res.threshold))
    # Clopper-Pearson at the fixed threshold equals SciPy's exact interval
    k, n = int(np.sum(ts[~ty] < res.threshold)), int((~ty).sum())
    ci = stats.binomtest(k, n).proportion_ci(method="exact")
    assert (res.specificity_exact.ci_low, res.specificity_exact.ci_high) == pytest.approx((ci.low, ci.high))
    # the joint bootstrap adds the threshold's own uncertainty: wider than the fixed-threshold interval
    joint = res.specificity.ci_high - res.specificity.ci_low
    assert joint > res.specificity_exact.ci_high - res.specificity_exact.ci_low
    # population specificity at the population 0.99-sensitivity threshold lies in the interval
    thr_pop = 2.5 + stats.norm.ppf(0.01)
    assert res.specificity.covers(stats.norm.cdf(thr_pop))
    assert res.note is None  # enough validation positives


def test_triage_warns_with_too_few_validation_positives():
    rng = np.random.default_rng(4)
    vy = np.r_[np.ones(40, bool), np.zeros(200, bool)]
    vs = rng.normal(size=240) + 2 * vy
    res = triage_operating_point(vy, vs, vy, vs, target_sensitivity=0.99, n_resamples=200)
    assert "only 40 validation positives" in res.note
    assert math.isfinite(res.specificity.value)

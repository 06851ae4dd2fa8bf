"""Bootstrap machinery: weights, BCa against SciPy, and coverage on simulations with known truth."""

import numpy as np
import pytest
from scipy import special, stats

from sobre.validate import AUCKernel, Estimate, bootstrap, bootstrap_weights, interval_from_replicates
from sobre.validate._segmentation import mean_statistic


def test_weights_are_resamples():
    rng = np.random.default_rng(0)
    blocks = list(bootstrap_weights(50, 600, rng, chunk=256))
    assert [b.shape for b in blocks] == [(256, 50), (256, 50), (88, 50)]
    w = np.vstack(blocks)
    assert np.all(w.sum(1) == 50)
    assert np.all(w >= 0) and np.all(w == np.round(w))
    # each subject is drawn once per resample on average
    assert w.mean() == pytest.approx(1.0)


def test_stratified_weights_keep_strata_sizes():
    strata = np.r_[np.zeros(30), np.ones(10)]
    w = np.vstack(list(bootstrap_weights(40, 300, np.random.default_rng(1), strata=strata)))
    assert np.all(w[:, :30].sum(1) == 30)
    assert np.all(w[:, 30:].sum(1) == 10)


def test_bca_matches_scipy_given_the_same_replicates():
    # SciPy's BCa (Efron & Tibshirani 14.3) on its own bootstrap distribution; our interval from
    # the same replicates and our jackknife must be identical.
    rng = np.random.default_rng(2)
    x = rng.lognormal(size=60)
    res = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=3000, rng=np.random.default_rng(3))
    jk = (x.sum() - x) / (len(x) - 1)
    est = interval_from_replicates(x.mean(), res.bootstrap_distribution, method="bca", jackknife=jk)
    assert est.ci_low == pytest.approx(res.confidence_interval.low, rel=1e-10)
    assert est.ci_high == pytest.approx(res.confidence_interval.high, rel=1e-10)
    pct = interval_from_replicates(x.mean(), res.bootstrap_distribution, method="percentile")
    assert pct.ci_low == pytest.approx(np.quantile(res.bootstrap_distribution, 0.025))


def test_bootstrap_jackknife_of_the_mean_is_exact():
    x = np.random.default_rng(4).normal(size=30)
    got = bootstrap(lambda w: {"m": w @ x / w.sum(1)}, len(x), n_resamples=2000, seed=0, method="bca")["m"]
    assert got.value == pytest.approx(x.mean())
    assert got.method == "bca"
    # the normal-theory interval is close for a symmetric statistic
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert got.ci_high - got.ci_low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_degenerate_replicates_give_point_interval():
    e = interval_from_replicates(1.0, np.ones(500), method="bca")
    assert (e.ci_low, e.ci_high) == (1.0, 1.0)
    e = interval_from_replicates(0.5, np.r_[np.full(500, np.nan), np.linspace(0.4, 0.6, 500)], method="percentile")
    assert "500 of 1000 resamples undefined" in e.note


def _coverage(estimates: list[Estimate], truth: float) -> float:
    return float(np.mean([e.ci_low <= truth <= e.ci_high for e in estimates]))


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_auc_interval_coverage(method):
    # binormal scores: positives ~ N(mu, 1), negatives ~ N(0, 1) -> population AUC = Phi(mu / sqrt 2).
    # 400 repetitions x 1000 resamples (1000 is enough for a 95% interval's end points; the
    # Monte-Carlo error of the coverage itself, sqrt(.95 * .05 / 400) = 1.1%, dominates).
    mu = 1.2
    truth = special.ndtr(mu / np.sqrt(2))
    rng = np.random.default_rng(20240601)
    ests = []
    for rep in range(400):
        y = np.r_[np.ones(60, bool), np.zeros(90, bool)]
        s = np.r_[rng.normal(mu, 1, 60), rng.normal(0, 1, 90)]
        kern = AUCKernel(y, s)
        ests.append(bootstrap(lambda w: {"auc": kern(w)}, len(y), n_resamples=1000, method=method, seed=rep)["auc"])
    cov = _coverage(ests, truth)
    assert 0.92 <= cov <= 0.98, cov


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_mean_dice_interval_coverage(method):
    # per-case Dice ~ Beta(8, 2): skewed towards 1 as in practice, population mean 0.8
    truth = 8 / 10
    rng = np.random.default_rng(7)
    ests = []
    for rep in range(400):
        dice = rng.beta(8, 2, 80)
        ests.append(bootstrap(mean_statistic({"dice": dice}), len(dice), n_resamples=1000, method=method,
                              seed=rep)["dice"])
    cov = _coverage(ests, truth)
    assert 0.92 <= cov <= 0.98, cov


def _generic_loo(stat, n):
    w = np.ones((n, n)) - np.eye(n)
    return stat(w)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression", "mean", "auc"])
def test_closed_form_leave_one_out_equals_refitting(kind):
    # BCa uses closed-form jackknife values when a statistic offers them: they must equal the
    # statistic evaluated with each subject left out
    from sobre.validate._classification import auc_statistic, binary_statistic, multiclass_statistic
    from sobre.validate._regression import regression_statistic

    rng = np.random.default_rng(8)
    n = 60
    y = rng.integers(0, 2, n).astype(bool)
    s = np.round(rng.normal(size=n) + y, 1)
    if kind == "binary":
        stat = binary_statistic(y, s, 0.5)
    elif kind == "auc":
        stat = auc_statistic(y, s)
    elif kind == "multiclass":
        lab = rng.integers(0, 3, n)
        stat = multiclass_statistic(lab, rng.random((n, 3)) + np.eye(3)[lab] * 0.3)
    elif kind == "regression":
        stat = regression_statistic(s, s + rng.normal(size=n))
    else:
        v = rng.random(n)
        v[3] = np.nan
        stat = mean_statistic({"dice": v})
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = _generic_loo(stat, n)
    got = stat.loo()
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_auc_ci_bca_uses_exact_jackknife():
    from sobre.validate import auc_ci

    rng = np.random.default_rng(9)
    y = rng.random(3000) < 0.3
    s = rng.normal(size=3000) + y
    e = auc_ci(y, s, n_resamples=1000, seed=0)
    u = stats.mannwhitneyu(s[y], s[~y]).statistic
    assert e.method == "bca" and e.value == pytest.approx(u / (y.sum() * (~y).sum()))
    assert e.ci_low < e.value < e.ci_high

"""DeLong's variance, covariance and test against a naive loop implementation of the structural components."""

import math

import numpy as np
import pytest
from scipy import stats

from sobre.validate import AUCKernel, bootstrap, delong_auc, delong_covariance, delong_test


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def naive_delong(positive, scores):
    """DeLong et al. (1988), literally: V10, V01 components by double loops, then S10/m + S01/n."""
    positive = np.asarray(positive, bool)
    k = len(scores)
    xs = [np.asarray(s)[positive] for s in scores]
    ys = [np.asarray(s)[~positive] for s in scores]
    m, n = len(xs[0]), len(ys[0])
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        for i in range(m):
            v10[r, i] = sum(_psi(xs[r][i], ys[r][j]) for j in range(n)) / n
        for j in range(n):
            v01[r, j] = sum(_psi(xs[r][i], ys[r][j]) for i in range(m)) / m
    aucs = v10.mean(axis=1)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10[a, b] = sum((v10[a, i] - aucs[a]) * (v10[b, i] - aucs[b]) for i in range(m)) / (m - 1)
            s01[a, b] = sum((v01[a, j] - aucs[a]) * (v01[b, j] - aucs[b]) for j in range(n)) / (n - 1)
    return aucs, s10 / m + s01 / n


@pytest.fixture
def two_models():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 120).astype(bool)
    common = rng.normal(size=120)
    a = np.round(common + 1.0 * y + rng.normal(0, 0.5, 120), 1)  # ties
    b = np.round(common + 0.6 * y + rng.normal(0, 0.7, 120), 1)
    return y, a, b


def test_covariance_matches_naive(two_models):
    y, a, b = two_models
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    ref_aucs, ref_cov = naive_delong(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    assert cov[0, 1] > 0  # correlated models


def test_test_matches_naive_z_and_p(two_models):
    y, a, b = two_models
    res = delong_test(y, a, b)
    ref_aucs, c = naive_delong(y, [a, b])
    var = c[0, 0] + c[1, 1] - 2 * c[0, 1]
    z = (ref_aucs[0] - ref_aucs[1]) / math.sqrt(var)
    assert res.variance == pytest.approx(var, rel=1e-10)
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    assert res.difference.value == pytest.approx(ref_aucs[0] - ref_aucs[1])
    assert res.difference.ci_low < res.difference.value < res.difference.ci_high


def test_identical_scores_are_not_different(two_models):
    y, a, _ = two_models
    res = delong_test(y, a, a.copy())
    assert res.p_value == 1.0 and res.difference.value == 0.0


def test_delong_variance_agrees_with_bootstrap(two_models):
    y, a, _ = two_models
    est = delong_auc(y, a)
    kern = AUCKernel(y, a)
    _, reps = bootstrap(lambda w: {"auc": kern(w)}, len(y), n_resamples=4000, seed=0, method="percentile",
                        return_replicates=True)
    _, cov = delong_covariance(y, a)
    assert np.var(reps["auc"]) == pytest.approx(cov[0, 0], rel=0.15)
    assert est.ci_low < est.value < est.ci_high <= 1.0


def test_delong_needs_two_of_each_class():
    with pytest.raises(ValueError, match="two positive and two negative"):
        delong_covariance(np.array([1, 0, 0, 0], bool), np.arange(4.0))

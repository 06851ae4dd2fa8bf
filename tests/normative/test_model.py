"""The normative model on arrays, against direct formulas; FDR against statsmodels; group tests against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sobre.normative import (
    benjamini_hochberg, fit_arrays, group_deviation, natural_spline, nominal_rate, predict_arrays, t_to_z,
)


def test_z_scores_match_the_direct_formula():
    """One site, linear age, two sexes: the model is ordinary least squares; z = t-quantile mapped to normal."""
    rng = np.random.default_rng(0)
    n = 40
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    y = (1.0 + 0.02 * age + 0.3 * (sex == "M"))[:, None] + rng.normal(0, 0.5, (n, 3))
    p = fit_arrays(y, age, sex, np.array(["s"] * n), age_df=1)
    new_age, new_sex = np.array([30.0, 71.0]), np.array(["M", "F"])
    y_new = np.array([[3.0, 1.0, 2.0], [2.5, 2.0, 1.0]])
    z = predict_arrays(p, new_age, new_sex, np.array(["s", "s"])).z(y_new)
    # direct: X = [1, age, male]; s^2 = RSS / (n - 3); var_pred = s^2 (1 + x (X'X)^-1 x'); t -> z
    x = np.column_stack([np.ones(n), age, sex == "M"]).astype(float)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    s2 = ((y - x @ beta) ** 2).sum(0) / (n - 3)
    xn = np.column_stack([np.ones(2), new_age, new_sex == "M"]).astype(float)
    h = np.einsum("ij,jk,ik->i", xn, np.linalg.inv(x.T @ x), xn)
    t = (y_new - xn @ beta) / np.sqrt(s2[None, :] * (1 + h[:, None]))
    want = np.sign(t) * -stats.norm.ppf(stats.t.sf(np.abs(t), n - 3))
    assert np.allclose(z, want, atol=1e-9)
    assert p.df_resid == n - 3


def test_site_effects_are_pooled_and_unseen_sites_widen():
    rng = np.random.default_rng(1)
    n = 900
    site = np.array(["a", "b", "c"])[np.arange(n) % 3]
    off = {"a": 0.0, "b": 1.0, "c": -0.5}
    sd = {"a": 1.0, "b": 2.0, "c": 0.5}
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    y = (np.array([off[s] for s in site]) + np.array([sd[s] for s in site]) * rng.normal(size=n))[:, None]
    p = fit_arrays(y, age, sex, site, age_df=2)
    rel = p.mu0 + p.site_offset[:, 0] - (p.mu0 + p.site_offset[0, 0])
    assert rel[1] == pytest.approx(1.0, abs=0.2) and rel[2] == pytest.approx(-0.5, abs=0.15)
    assert np.sqrt(p.sigma2_site[:, 0]) == pytest.approx([1.0, 2.0, 0.5], rel=0.12)
    assert p.tau2[0] > 0.2  # the site intercepts really differ
    pred = predict_arrays(p, np.array([50.0, 50.0]), np.array(["F", "F"]), np.array(["b", "zzz"]))
    assert pred.seen_site.tolist() == [True, False]
    assert pred.sd[1, 0] ** 2 >= p.tau2[0]  # an unseen site: the between-site variance is added
    # calibration: fresh subjects of the same sites are N(0, 1)
    m = 3000
    s2 = np.array(["a", "b", "c"])[np.arange(m) % 3]
    y2 = (np.array([off[s] for s in s2]) + np.array([sd[s] for s in s2]) * rng.normal(size=m))[:, None]
    z = predict_arrays(p, rng.uniform(20, 80, m), rng.choice(["F", "M"], m), s2).z(y2)
    assert abs(z.mean()) < 0.06 and abs(z.std() - 1) < 0.05
    assert np.mean(np.abs(z) > 2.6) < 2 * nominal_rate(2.6)


def test_extrapolation_and_missing_covariates_are_flagged():
    rng = np.random.default_rng(2)
    age = rng.uniform(30, 60, 100)
    p = fit_arrays(rng.normal(size=(100, 2)), age, rng.choice(["F", "M"], 100), np.array(["s"] * 100))
    pred = predict_arrays(p, np.array([45.0, 75.0, np.nan, 40.0]), np.array(["F", "M", "F", "X"]), np.array(["s"] * 4))
    assert pred.extrapolated[0] == ""
    assert pred.extrapolated[1].startswith("age 75 outside the fitted range 30")
    assert pred.extrapolated[2] == "age missing" and "sex 'X' not in the normative sample" in pred.extrapolated[3]
    z = pred.z(np.zeros((4, 2)))
    assert np.isfinite(z[:2]).all() and np.isnan(z[2:]).all()  # out of range: scored (and flagged); missing: not


def test_natural_spline_is_linear_beyond_the_boundary():
    knots = np.array([20.0, 40.0, 60.0, 80.0])
    x = np.array([85.0, 90.0, 95.0, 100.0])
    b = natural_spline(x, knots)
    assert np.allclose(np.diff(b, 2, axis=0), 0, atol=1e-9)
    assert natural_spline(np.linspace(20, 80, 7), knots).shape == (7, 3)


def test_t_to_z_tails():
    assert t_to_z(np.array([2.0]), np.inf)[0] == 2.0
    z = t_to_z(np.array([-3.0, 3.0]), 10)
    assert z[0] == pytest.approx(-z[1]) and 2.3 < z[1] < 3.0


def test_fdr_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=80), rng.uniform(0, 1e-3, 20)])
    for alpha in (0.05, 0.1):
        rej, q, _, _ = multitest.multipletests(p, alpha=alpha, method="fdr_bh")
        q2, rej2 = benjamini_hochberg(p, alpha)
        assert np.allclose(q, q2) and np.array_equal(rej, rej2)
    q3, _ = benjamini_hochberg(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(q3[1]) and np.allclose(q3[[0, 2]], [0.02, 0.02])


def test_group_deviation_matches_scipy():
    rng = np.random.default_rng(4)
    z = rng.normal(0.4, 1, (30, 5))
    c = rng.normal(0, 1, (25, 5))
    g = group_deviation(z, controls=c)
    one = stats.ttest_1samp(z, 0)
    welch = stats.ttest_ind(z, c, equal_var=False)
    assert np.allclose(g.t, one.statistic) and np.allclose(g.p, one.pvalue)
    assert np.allclose(g.p_vs_controls, welch.pvalue) and np.allclose(g.mean_z, z.mean(0))
    lo, hi = stats.t.interval(0.95, 29, loc=z.mean(0), scale=stats.sem(z))
    assert np.allclose(g.ci_low, lo) and np.allclose(g.ci_high, hi)

"""Site effects: site probe, leave-one-site-out, and ComBat fitted inside training folds only."""

import numpy as np
import pandas as pd
import pytest

from sobre.validate import combat_cross_validated, label_site_dependence, leave_one_site_out, site_probe
from sobre.validate import _site


def cohort(n=240, d=8, site_effect=True, seed=0):
    rng = np.random.default_rng(seed)
    site = np.array(["A", "B", "C"])[rng.integers(0, 3, n)]
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    y = rng.integers(0, 2, n)
    # the ComBat model: covariate effects + additive site shift + site-scaled noise
    noise = rng.normal(size=(n, d))
    x = 0.8 * y[:, None] + 0.05 * (age[:, None] - 50) + 0.5 * (sex == "M")[:, None]
    if site_effect:
        k = pd.factorize(site, sort=True)[0]
        x = x + np.array([0.0, 2.0, -1.5])[k][:, None] * rng.uniform(0.5, 1.0, d)
        noise *= np.array([1.0, 1.8, 0.6])[k][:, None]
    x = x + noise
    covs = pd.DataFrame({"age": age, "sex": sex})
    return x, site, covs, y


def test_site_probe_detects_site_and_not_noise():
    x, site, _, _ = cohort()
    with_site = site_probe(x, site, n_resamples=500)
    assert with_site.chance == pytest.approx(1 / 3)
    assert with_site.detectable and with_site.balanced_accuracy.ci_low > 0.55
    x0, site0, _, _ = cohort(site_effect=False)
    without = site_probe(x0, site0, n_resamples=500)
    assert not without.detectable
    assert without.balanced_accuracy.ci_low < 1 / 3 + 0.02


def test_combat_removes_site_and_keeps_covariates():
    x, site, covs, y = cohort()
    res = combat_cross_validated(x, site, covariates=covs, label=y, n_resamples=300)
    assert res.probe_before.balanced_accuracy.ci_low > 0.5  # chance is 1/3
    assert res.probe_after.balanced_accuracy.value < 0.45
    assert not res.probe_after.detectable
    assert res.covariates == ["age", "sex=M"]
    # the age effect (slope 0.05 per year) survives harmonisation
    h = res.harmonized
    slope = np.polyfit(covs["age"], h.mean(axis=1), 1)[0]
    assert slope == pytest.approx(0.05, rel=0.35)
    # task performance is reported before and after
    assert res.task_metric == "auc"
    assert res.task_after.value > 0.6
    assert np.isfinite(h).all()


def test_combat_fit_never_sees_test_subjects(monkeypatch):
    x, site, covs, y = cohort(seed=1)
    seen = []
    original = _site._combat_fit

    def spy(data, covars):
        seen.append(np.array(data, copy=True))
        return original(data, covars)

    monkeypatch.setattr(_site, "_combat_fit", spy)
    res = combat_cross_validated(x, site, covariates=covs, n_resamples=100)
    assert len(seen) == len(res.folds)
    rows = {tuple(r): i for i, r in enumerate(x)}
    for fitted, fold in zip(seen, res.folds):
        used = {rows[tuple(r)] for r in fitted}
        assert used == set(fold.train.tolist())
        assert used.isdisjoint(fold.test.tolist())


def _params(model):
    return np.concatenate([np.ravel(model[k]) for k in ("B_hat", "gamma_star", "delta_star", "var_pooled")])


def test_combat_fold_model_is_unchanged_when_its_test_subjects_change():
    # wreck the features of the first fold's test subjects: the first fold's ComBat model must be
    # bit-identical; a fit that had used those subjects would change
    x, site, covs, _ = cohort(seed=2)
    first = combat_cross_validated(x, site, covariates=covs, n_resamples=100)
    test0 = first.folds[0].test
    x2 = x.copy()
    x2[test0] += 1000.0 * np.random.default_rng(9).normal(size=x2[test0].shape)
    second = combat_cross_validated(x2, site, covariates=covs, n_resamples=100)
    np.testing.assert_array_equal(second.folds[0].test, test0)
    np.testing.assert_array_equal(_params(first.folds[0].model), _params(second.folds[0].model))
    # other folds trained on those subjects: their models do change
    assert not np.allclose(_params(first.folds[1].model), _params(second.folds[1].model))
    # negative control: a leaky fit on all subjects is not invariant, so the check above has power
    cov_enc = _site.encode_covariates(covs, len(site))
    cov_enc.insert(0, "SITE", site)
    leaky_a = _site._combat_fit(x, cov_enc)
    leaky_b = _site._combat_fit(x2, cov_enc)
    assert not np.allclose(_params(leaky_a), _params(leaky_b))


def test_label_distribution_across_sites_warns():
    rng = np.random.default_rng(5)
    site = np.repeat(["A", "B"], 150)
    y = np.r_[rng.random(150) < 0.2, rng.random(150) < 0.6].astype(int)
    summary, problem = label_site_dependence(y, site)
    assert summary["test"] == "chi-square" and summary["p_value"] < 1e-6
    assert problem.level == "warning" and "leak" in problem.message
    _, none = label_site_dependence(rng.integers(0, 2, 300), site)
    assert none is None


def test_leave_one_site_out_holds_each_site_out():
    x, site, _, y = cohort(seed=3)
    res = leave_one_site_out(x, y, site, n_resamples=200)
    assert set(res.per_site) == {"A", "B", "C"}
    for s, e in res.per_site.items():
        assert e.n == int(np.sum(site == s))
        assert e.value > 0.6  # the label signal is the same at every site
    assert res.metric == "auc" and res.within_site_cv.value > 0.6

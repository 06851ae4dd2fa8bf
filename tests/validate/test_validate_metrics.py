"""Classification and regression metrics equal scikit-learn / SciPy on the same inputs."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from sobre.validate import AUCKernel, auc, binary_metrics, multiclass_metrics, regression_metrics, roc_curve_band


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(bool)
    s = np.round(rng.normal(size=300) + 1.2 * y, 1)  # rounding makes many ties
    return y, s


def test_auc_matches_sklearn_with_ties(binary_data):
    y, s = binary_data
    assert len(np.unique(s)) < len(s) / 3  # the test really has ties
    assert auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_weighted_auc_equals_sklearn_on_repeated_subjects(binary_data):
    # a bootstrap resample is a vector of counts: the kernel on counts must equal the AUC of
    # the dataset where each subject is repeated that many times
    y, s = binary_data
    rng = np.random.default_rng(0)
    w = np.stack([np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)) for _ in range(5)]).astype(float)
    got = AUCKernel(y, s)(w)
    for r in range(5):
        idx = np.repeat(np.arange(len(y)), w[r].astype(int))
        assert got[r] == pytest.approx(skm.roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_binary_metrics_match_sklearn(binary_data):
    y, s = binary_data
    thr = 0.5
    res = binary_metrics(y, s, threshold=thr, n_resamples=0)
    m = {k: v.value for k, v in res.metrics.items()}
    called = s >= thr
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, called))
    assert m["specificity"] == pytest.approx(skm.recall_score(~y, ~called))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, called))
    assert m["npv"] == pytest.approx(skm.precision_score(~y, ~called))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, called))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, called))
    tn, fp, fn, tp = skm.confusion_matrix(y, called).ravel()
    assert (res.counts["tp"], res.counts["fp"], res.counts["tn"], res.counts["fn"]) == (tp, fp, tn, fn)


def test_binary_metrics_intervals_bracket_estimates(binary_data):
    y, s = binary_data
    res = binary_metrics(y, s, threshold=0.5, n_resamples=400, seed=1)
    for name, e in res.metrics.items():
        assert e.ci_low <= e.value <= e.ci_high, name
        assert 0 < e.ci_high - e.ci_low < 0.3, name
    # same seed, same intervals
    again = binary_metrics(y, s, threshold=0.5, n_resamples=400, seed=1)
    assert again.metrics["auc"] == res.metrics["auc"]


def test_single_class_auc_is_undefined_and_says_so():
    y = np.zeros(20, dtype=bool)
    s = np.linspace(0, 1, 20)
    res = binary_metrics(y, s, n_resamples=100)
    assert math.isnan(res.metrics["auc"].value)
    assert "no positive subject" in res.metrics["auc"].note
    assert res.metrics["specificity"].value == pytest.approx(0.5)


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(5)
    k, n = 4, 400
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    res = multiclass_metrics(labels, probs, ["a", "b", "c", "d"], n_resamples=0)
    assert res.metrics["macro_auc"].value == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12)
    pred = probs.argmax(1)
    assert res.metrics["balanced_accuracy"].value == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert res.metrics["accuracy"].value == pytest.approx(skm.accuracy_score(labels, pred))
    assert res.metrics["auc[c]"].value == pytest.approx(skm.roc_auc_score(labels == 2, probs[:, 2]))
    assert res.metrics["sensitivity[b]"].value == pytest.approx(skm.recall_score(labels == 1, pred == 1))


def test_regression_matches_sklearn_and_scipy():
    rng = np.random.default_rng(7)
    y = rng.uniform(20, 80, 250)
    p = y + rng.normal(2.0, 5.0, 250)
    res = regression_metrics(y, p, n_resamples=300, seed=0)
    m = res.metrics
    assert m["mae"].value == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["rmse"].value == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)))
    assert m["pearson_r"].value == pytest.approx(stats.pearsonr(y, p).statistic)
    assert m["bias"].value == pytest.approx(np.mean(p - y))
    # the bias is a mean: its bootstrap interval is close to the t interval
    t_ci = stats.ttest_1samp(p - y, 0.0).confidence_interval()
    assert m["bias"].ci_low == pytest.approx(t_ci.low, abs=0.15)
    assert m["bias"].ci_high == pytest.approx(t_ci.high, abs=0.15)


def test_roc_curve_matches_sklearn(binary_data):
    y, s = binary_data
    band = roc_curve_band(y, s, n_resamples=100)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(band["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(band["tpr"], tpr, atol=1e-12)
    lo, hi = np.array(band["tpr_low"]), np.array(band["tpr_high"])
    assert np.all(lo <= hi + 1e-12)
    assert np.mean(hi - lo) > 0.02


def test_degenerate_proportions_get_exact_intervals():
    # a perfect classifier on 12 positives: every resample has sensitivity 1; the bootstrap
    # interval [1, 1] would be over-confident, so the exact interval is reported
    y = np.r_[np.ones(12, bool), np.zeros(30, bool)]
    s = np.r_[np.linspace(0.6, 1, 12), np.linspace(0, 0.4, 30)]
    res = binary_metrics(y, s, threshold=0.5, n_resamples=300)
    sens = res.metrics["sensitivity"]
    ci = stats.binomtest(12, 12).proportion_ci(method="exact")
    assert (sens.value, sens.method) == (1.0, "clopper-pearson")
    assert sens.ci_low == pytest.approx(ci.low) and sens.ci_high == 1.0
    assert "degenerate" in res.metrics["auc"].note

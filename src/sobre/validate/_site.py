"""Site effects: site-prediction probe, leave-one-site-out evaluation, ComBat inside folds.

A model that learned the hospital instead of the disease has features from which the site can
be predicted. The *site probe* is a cross-validated logistic regression predicting the site
from features; its balanced accuracy is compared with chance (1/K for K sites). *ComBat*
(neuroHarmonize) removes additive and multiplicative site effects per feature while keeping
covariates (age, sex); it is fitted on the training subjects of each fold and only *applied*
to the test subjects, never fitted on them.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from sobre.errors import Problem
from sobre.validate._classification import AUCKernel
from sobre.validate._estimate import Estimate, bootstrap
from sobre.validate._regression import regression_statistic

__all__ = [
    "site_probe",
    "SiteProbeResult",
    "leave_one_site_out",
    "LeaveOneSiteOutResult",
    "combat_cross_validated",
    "CombatResult",
    "FoldRecord",
    "label_site_dependence",
    "encode_covariates",
]


def _balanced_accuracy_statistic(true: np.ndarray, pred: np.ndarray, classes: np.ndarray):
    member = [(true == c).astype(float) for c in classes]
    hit = [((true == c) & (pred == c)).astype(float) for c in classes]

    def stat(w: np.ndarray) -> dict:
        rec = []
        for h, m in zip(hit, member):
            den = w @ m
            with np.errstate(divide="ignore", invalid="ignore"):
                rec.append(np.where(den > 0, (w @ h) / den, np.nan))
        r = np.stack(rec, axis=1)
        ok = np.isfinite(r)
        return {"balanced_accuracy": np.where(ok, r, 0).sum(1) / np.maximum(ok.sum(1), 1)}

    return stat


def _probe_model(kind: str, seed: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "classifier":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0, random_state=seed))


def _folds(strata: np.ndarray, n_folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    _, counts = np.unique(strata, return_counts=True)
    k = int(min(n_folds, counts.min()))
    if k < 2:
        raise ValueError("every site needs at least two subjects for cross-validation")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(strata)), strata))


@dataclass
class SiteProbeResult:
    """Cross-validated site prediction.

    Attributes
    ----------
    balanced_accuracy : Estimate
        Of predicting the site from the features (out-of-fold), bootstrap CI.
    chance : float
        1 / number of sites.
    n_sites : int
    per_site_recall : dict
    features : str
        Which features were probed.
    detectable : bool
        True when the CI lies wholly above chance: the features carry the site.
    """

    balanced_accuracy: Estimate
    chance: float
    n_sites: int
    per_site_recall: dict
    features: str
    detectable: bool

    def to_dict(self) -> dict:
        return {"balanced_accuracy": self.balanced_accuracy.to_dict(), "chance": self.chance,
                "n_sites": self.n_sites, "per_site_recall": self.per_site_recall, "features": self.features,
                "detectable": self.detectable}


def _probe_summary(site: np.ndarray, oof: np.ndarray, features: str, n_resamples: int, level: float,
                   seed: int) -> SiteProbeResult:
    classes = np.unique(site)
    est = bootstrap(_balanced_accuracy_statistic(site, oof, classes), len(site), n_resamples=n_resamples,
                    method="percentile", level=level, seed=seed)["balanced_accuracy"]
    chance = 1.0 / len(classes)
    recall = {str(c): float(np.mean(oof[site == c] == c)) for c in classes}
    return SiteProbeResult(est, chance, len(classes), recall, features, bool(est.ci_low > chance))


def site_probe(
    features: np.ndarray,
    site: np.ndarray,
    *,
    n_folds: int = 5,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    features_name: str = "features",
) -> SiteProbeResult:
    """Balanced accuracy of predicting the site from features (stratified K-fold logistic regression).

    Parameters
    ----------
    features : array of shape (n, d)
        Model features (or image statistics) per subject.
    site : array of shape (n,)
    n_folds : int
    n_resamples, level, seed
        Bootstrap of the out-of-fold predictions (percentile CI).
    features_name : str
        Recorded on the result.

    Returns
    -------
    SiteProbeResult
    """
    x = np.asarray(features, dtype=float)
    site = np.asarray(site).astype(str)
    oof = np.empty(len(site), dtype=object)
    for train, test in _folds(site, n_folds, seed):
        model = _probe_model("classifier", seed).fit(x[train], site[train])
        oof[test] = model.predict(x[test])
    return _probe_summary(site, oof.astype(str), features_name, n_resamples, level, seed)


def _task_statistic(task: str, y: np.ndarray, pred: np.ndarray):
    if task == "binary":
        kern = AUCKernel(y.astype(bool), pred)
        return "auc", lambda w: {"auc": kern(w)}
    stat = regression_statistic(y, pred)
    return "mae", lambda w: {"mae": stat(w)["mae"]}


@dataclass
class LeaveOneSiteOutResult:
    """Performance of a linear probe trained on all sites but one and tested on the one left out.

    Attributes
    ----------
    metric : str
        ``"auc"`` (binary) or ``"mae"`` (regression).
    per_site : dict of str to Estimate
        Performance on each held-out site.
    pooled : Estimate
        On all held-out predictions together.
    within_site_cv : Estimate
        The same probe with site-stratified K-fold CV (every test site seen in training): the
        in-distribution reference; a large gap means the features do not transfer across sites.
    """

    metric: str
    per_site: dict
    pooled: Estimate
    within_site_cv: Estimate

    def to_dict(self) -> dict:
        return {"metric": self.metric, "per_site": {k: v.to_dict() for k, v in self.per_site.items()},
                "pooled": self.pooled.to_dict(), "within_site_cv": self.within_site_cv.to_dict()}


def leave_one_site_out(
    features: np.ndarray,
    label: np.ndarray,
    site: np.ndarray,
    *,
    task: str = "binary",
    n_folds: int = 5,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> LeaveOneSiteOutResult:
    """Leave-one-site-out evaluation of a linear probe on the features.

    Parameters
    ----------
    features : array of shape (n, d)
    label : array of shape (n,)
        0/1 (``task="binary"``, logistic regression, AUC) or float (``"regression"``, ridge, MAE).
    site : array of shape (n,)

    Returns
    -------
    LeaveOneSiteOutResult
    """
    x = np.asarray(features, dtype=float)
    y = np.asarray(label, dtype=float)
    site = np.asarray(site).astype(str)
    kind = "classifier" if task == "binary" else "regressor"

    def fit_predict(train, test):
        model = _probe_model(kind, seed).fit(x[train], y[train].astype(int) if kind == "classifier" else y[train])
        return model.predict_proba(x[test])[:, 1] if kind == "classifier" else model.predict(x[test])

    per_site = {}
    oof = np.full(len(y), np.nan)
    for s in np.unique(site):
        test = np.flatnonzero(site == s)
        train = np.flatnonzero(site != s)
        if kind == "classifier" and len(np.unique(y[train])) < 2:
            continue
        oof[test] = fit_predict(train, test)
        name, stat = _task_statistic(task, y[test], oof[test])
        per_site[str(s)] = bootstrap(stat, len(test), n_resamples=n_resamples, method="percentile", level=level,
                                seed=seed)[name]
    ok = np.isfinite(oof)
    name, stat = _task_statistic(task, y[ok], oof[ok])
    pooled = bootstrap(stat, int(ok.sum()), n_resamples=n_resamples, method="percentile", level=level,
                       seed=seed)[name]
    cv = np.full(len(y), np.nan)
    for train, test in _folds(site, n_folds, seed):
        cv[test] = fit_predict(train, test)
    _, stat = _task_statistic(task, y, cv)
    within = bootstrap(stat, len(y), n_resamples=n_resamples, method="percentile", level=level, seed=seed)[name]
    return LeaveOneSiteOutResult(name, per_site, pooled, within)


def encode_covariates(covariates: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """Numeric covariates for ComBat: numbers as they are, categories (e.g. sex) as 0/1 dummies.

    Raises
    ------
    ValueError
        On missing values (ComBat cannot use them).
    """
    if covariates is None or covariates.shape[1] == 0:
        return pd.DataFrame(index=range(n))
    out = {}
    for col in covariates.columns:
        v = covariates[col]
        if v.isna().any():
            raise ValueError(f"covariate {col!r} has missing values")
        if pd.api.types.is_numeric_dtype(v) and v.nunique() > 2:
            out[col] = v.astype(float).to_numpy()
        else:
            levels = sorted(v.astype(str).unique())
            for lev in levels[1:]:
                out[f"{col}={lev}"] = (v.astype(str) == lev).astype(float).to_numpy()
    return pd.DataFrame(out)


@dataclass
class FoldRecord:
    """What one fold's ComBat model was fitted on and applied to (subject indices)."""

    train: np.ndarray
    test: np.ndarray
    model: dict = field(repr=False, default_factory=dict)


@dataclass
class CombatResult:
    """Site-probe and task performance before and after ComBat harmonisation in folds.

    Attributes
    ----------
    probe_before, probe_after : SiteProbeResult
        Site probe (out-of-fold) on raw and on harmonised features.
    task_metric : str
        ``"auc"`` or ``"mae"`` of a linear probe for the label, trained in the same folds.
    task_before, task_after : Estimate
    covariates : list of str
        Covariates whose effects ComBat preserved.
    folds : list of FoldRecord
        Train/test indices of each fold (the ComBat fit used ``train`` only).
    harmonized : ndarray of shape (n, d)
        Out-of-fold harmonised features (each subject harmonised by the model of the fold in
        which it was a test subject).
    problems : list of Problem
    """

    probe_before: SiteProbeResult
    probe_after: SiteProbeResult
    task_metric: str | None
    task_before: Estimate | None
    task_after: Estimate | None
    covariates: list
    folds: list
    harmonized: np.ndarray = field(repr=False)
    problems: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "site_probe_before": self.probe_before.to_dict(), "site_probe_after": self.probe_after.to_dict(),
            "task_metric": self.task_metric,
            "task_before": None if self.task_before is None else self.task_before.to_dict(),
            "task_after": None if self.task_after is None else self.task_after.to_dict(),
            "covariates": self.covariates, "n_folds": len(self.folds),
            "fitted_on": "training subjects of each fold only; applied to the fold's test subjects",
            "problems": [str(p) for p in self.problems],
        }


def _combat_fit(x: np.ndarray, covars: pd.DataFrame) -> dict:
    from neuroHarmonize import harmonizationLearn

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = harmonizationLearn(x, covars)
    return model


def _combat_apply(x: np.ndarray, covars: pd.DataFrame, model: dict) -> np.ndarray:
    from neuroHarmonize import harmonizationApply

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return harmonizationApply(x, covars, model)


def label_site_dependence(label: np.ndarray, site: np.ndarray, *, task: str = "binary",
                          alpha: float = 0.05) -> tuple[dict, Problem | None]:
    """Test whether the label distribution differs across sites.

    Chi-square test of independence (classification) or Kruskal-Wallis (regression). When it
    does, harmonisation that removes "site" can remove or leak label information, and site
    probes partly measure the label.

    Returns
    -------
    summary : dict
        Test name, statistic, p-value, and per-site label summary.
    problem : Problem or None
        A warning when ``p < alpha``.
    """
    site = np.asarray(site).astype(str)
    label = np.asarray(label)
    sites = np.unique(site)
    if task == "regression":
        groups = [label[site == s].astype(float) for s in sites]
        res = stats.kruskal(*groups) if len(groups) > 1 else None
        per = {s: float(np.mean(g)) for s, g in zip(sites, groups)}
        test = "kruskal-wallis"
    else:
        tab = pd.crosstab(site, label)
        res = stats.chi2_contingency(tab.to_numpy()) if tab.shape[0] > 1 and tab.shape[1] > 1 else None
        per = {s: {str(k): int(v) for k, v in tab.loc[s].items()} for s in tab.index}
        test = "chi-square"
    p = float(res.pvalue) if res is not None else math.nan
    stat_v = float(res.statistic) if res is not None else math.nan
    summary = {"test": test, "statistic": stat_v, "p_value": p, "per_site": per}
    problem = None
    if np.isfinite(p) and p < alpha:
        problem = Problem("warning", f"the label distribution differs across sites ({test} p = {p:.2g}): "
                          "harmonisation (ComBat) can remove or leak label information, and the site "
                          "probe partly measures the label",
                          fix="balance the label across sites, or interpret harmonised results with care",
                          details=summary)
    return summary, problem


def combat_cross_validated(
    features: np.ndarray,
    site: np.ndarray,
    *,
    covariates: pd.DataFrame | None = None,
    label: np.ndarray | None = None,
    task: str = "binary",
    n_folds: int = 5,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> CombatResult:
    """ComBat harmonisation fitted inside training folds, with before/after site probe and task probe.

    In each site-stratified fold, ComBat (neuroHarmonize) is *fitted on the training subjects*
    with the covariates, then *applied* to the test subjects (whose sites were all seen in
    training). Site-probe and label-probe models are trained on the fold's training subjects
    (raw, then harmonised) and predict its test subjects.

    Parameters
    ----------
    features : array of shape (n, d)
    site : array of shape (n,)
    covariates : DataFrame with n rows, optional
        Effects to preserve (e.g. ``age``, ``sex``); categories are encoded as 0/1.
    label : array of shape (n,), optional
        For the task probe (0/1 for ``task="binary"``, float for ``"regression"``).
    task : {"binary", "regression"}
    n_folds : int

    Returns
    -------
    CombatResult
    """
    x = np.asarray(features, dtype=float)
    site = np.asarray(site).astype(str)
    cov = encode_covariates(covariates, len(site))
    covars = cov.copy()
    covars.insert(0, "SITE", site)
    covars.index = range(len(site))
    problems = []
    if label is not None:
        _, prob = label_site_dependence(label, site, task=task)
        if prob is not None:
            problems.append(prob)
    harmonized = np.full_like(x, np.nan)
    oof_raw = np.empty(len(site), dtype=object)
    oof_h = np.empty(len(site), dtype=object)
    task_raw = np.full(len(site), np.nan)
    task_h = np.full(len(site), np.nan)
    kind = "classifier" if task == "binary" else "regressor"
    folds = []
    y = None if label is None else np.asarray(label, dtype=float)
    for train, test in _folds(site, n_folds, seed):
        model = _combat_fit(x[train], covars.iloc[train].reset_index(drop=True))
        h_train = _combat_apply(x[train], covars.iloc[train].reset_index(drop=True), model)
        h_test = _combat_apply(x[test], covars.iloc[test].reset_index(drop=True), model)
        harmonized[test] = h_test
        folds.append(FoldRecord(train, test, model))
        oof_raw[test] = _probe_model("classifier", seed).fit(x[train], site[train]).predict(x[test])
        oof_h[test] = _probe_model("classifier", seed).fit(h_train, site[train]).predict(h_test)
        if y is not None:
            for xtr, xte, out in ((x[train], x[test], task_raw), (h_train, h_test, task_h)):
                m = _probe_model(kind, seed).fit(xtr, y[train].astype(int) if kind == "classifier" else y[train])
                out[test] = m.predict_proba(xte)[:, 1] if kind == "classifier" else m.predict(xte)
    before = _probe_summary(site, oof_raw.astype(str), "raw features", n_resamples, level, seed)
    after = _probe_summary(site, oof_h.astype(str), "ComBat-harmonised features", n_resamples, level, seed)
    metric = t_before = t_after = None
    if y is not None:
        metric, stat_b = _task_statistic(task, y, task_raw)
        _, stat_a = _task_statistic(task, y, task_h)
        t_before = bootstrap(stat_b, len(y), n_resamples=n_resamples, method="percentile", level=level,
                             seed=seed)[metric]
        t_after = bootstrap(stat_a, len(y), n_resamples=n_resamples, method="percentile", level=level,
                            seed=seed)[metric]
    return CombatResult(before, after, metric, t_before, t_after, list(cov.columns), folds, harmonized, problems)

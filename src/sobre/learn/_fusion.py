"""Image + clinical fusion: ``sobre fuse CONFIG.toml`` and :func:`fuse` (binary tasks).

Three models over one image run's subjects and split, each fitted on its development subjects only:

* **tabular**: the variables of ``tabular.variables`` (frozen clinical variables of the dataset
  version) through :class:`TabularPrep` (imputation + ``<var>_missing`` indicator columns +
  standardisation, all with training statistics) into an L2 logistic regression.
* **late**: a logistic regression (the *combiner*, penalty ``combiner_C``) on two columns, the image
  model's logit and the tabular model's logit. Both are out-of-fold for the subjects the combiner is fitted on: the image
  run's ``validation`` rows (every development subject for a probe or a k-fold run, the validation
  subjects of a single split) and the tabular model's own ``inner_folds``-fold predictions. The test
  subjects get the image run's test scores and the tabular model refitted on every development
  subject; they enter no fit.
* **feature**: the run's encoder features (global average pooling: the pretrained encoder of a probe
  run, the first member's penultimate layer for a train run), one mean vector per subject,
  concatenated with the prepared tabular columns into one L2 logistic regression.

The penalty ``C`` is chosen by inner stratified cross-validation (AUC) on the development subjects
(or fixed by ``C``); validation rows are out-of-fold predictions with that penalty, each fold
refitting imputation, scaling and model on its own training part, as :func:`~sobre.learn.probe` does.

The array functions (:func:`tabular_only`, :func:`late_fusion`, :func:`feature_fusion`) take the
development subjects and the subjects to score separately: nothing computed from the latter
reaches a fitted statistic (``tests/learn/test_fusion.py`` perturbs them to check).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sobre.errors import ConfigError, InputError
from sobre.learn._config import FusionConfig, TabularConfig, TrainConfig, config_from, resolved, validate_config
from sobre.learn._data import require_columns
from sobre.learn._transfer import Probe, fit_probe

__all__ = ["TabularPrep", "TabularModel", "FusionResult", "fit_tabular", "tabular_only", "late_fusion",
           "feature_fusion", "fuse", "FuseResult"]

log = logging.getLogger("sobre.learn")

#: ``fusion.json`` of a fusion run; ``/2`` adds ``model``, what :func:`~sobre.learn.load_model` reads.
FUSION_FORMAT = "sobre.fusion/2"
FUSION_MODEL_FORMAT = "sobre.fusion-model/1"


# ------------------------------------------------------------------------------------- tabular
class TabularPrep:
    """Numeric tabular variables → model columns, with statistics of the rows it was fitted on.

    ``fit(table)`` (training subjects only) records per variable the imputed value (median or mean
    of the observed values), and the mean and standard deviation after imputation. ``transform``
    gives ``(n, V)`` standardised values, followed with ``missing = "indicator"`` by ``V`` columns
    ``<var>_missing`` (1 where the value was missing and imputed). A variable absent from the
    dataset version, a non-numeric value, or a variable without any value among the training
    subjects is an :class:`~sobre.errors.InputError`; so is any missing value with
    ``missing = "refuse"``.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"subject_id": list("abcd"), "nfl": [1.0, None, 3.0, 5.0]})
    >>> prep = TabularPrep(TabularConfig(variables=["nfl"])).fit(t)
    >>> prep.columns, prep.fill_.tolist()
    (['nfl', 'nfl_missing'], [3.0])
    >>> prep.transform(t)[:, 1].tolist()
    [0.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, cfg: TabularConfig, *, dataset: str = "the dataset version", config_path=None) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.config_path = config_path

    @property
    def columns(self) -> list[str]:
        v = list(self.cfg.variables)
        return v + [f"{x}_missing" for x in v] if self.cfg.missing == "indicator" else v

    def _values(self, table: pd.DataFrame) -> np.ndarray:
        require_columns(table, self.cfg.variables, dataset=self.dataset, key="tabular.variables",
                        config_path=self.config_path)
        cols = []
        for v in self.cfg.variables:
            raw = table[v]
            x = pd.to_numeric(raw, errors="coerce")
            bad = x.isna() & raw.notna()
            if bad.any():
                i = np.flatnonzero(bad.to_numpy())[0]
                raise InputError(f"tabular.variables: '{v}' is not numeric in dataset version {self.dataset}",
                                 path=self.config_path, expected="numbers (missing values empty or n/a)",
                                 found=f"{raw.iloc[i]!r} for subject {_subject(table, i)}",
                                 fix="correct the clinical table and freeze a new version, or drop the variable")
            cols.append(x.to_numpy(float))
        X = np.stack(cols, 1)
        if self.cfg.missing == "refuse" and np.isnan(X).any():
            j = int(np.flatnonzero(np.isnan(X).any(0))[0])
            rows = np.flatnonzero(np.isnan(X[:, j]))
            raise InputError(f"tabular.variables: '{self.cfg.variables[j]}' is missing for {len(rows)} subject(s) "
                             f"of dataset version {self.dataset}", path=self.config_path,
                             expected="a value for every subject (tabular.missing = \"refuse\")",
                             found=", ".join(_subject(table, i) for i in rows[:4]) + (" ..." if len(rows) > 4 else ""),
                             fix="set tabular.missing = \"indicator\" (imputation + indicator columns), or filter "
                                 "the subjects out and freeze a new version")
        return X

    def fit(self, table: pd.DataFrame) -> TabularPrep:
        """Fit on the training subjects' rows (one row per subject)."""
        X = self._values(table)
        miss = np.isnan(X)
        empty = [v for v, m in zip(self.cfg.variables, miss.all(0)) if m]
        if empty:
            raise InputError(f"tabular.variables: '{empty[0]}' has no value for any of the {len(X)} training "
                             f"subjects of dataset version {self.dataset}", path=self.config_path,
                             expected="observed values among the training subjects (to impute and scale with)",
                             found="all missing", fix=f"remove '{empty[0]}' from tabular.variables, or use a "
                             "version in which it is recorded")
        stat = np.nanmedian if self.cfg.impute == "median" else np.nanmean
        self.fill_ = np.asarray([stat(X[:, j]) for j in range(X.shape[1])], float)
        F = np.where(miss, self.fill_, X)
        self.mean_ = F.mean(0)
        sd = F.std(0)
        self.std_ = np.where(sd > 0, sd, 1.0)
        self.n_fit_ = len(X)
        self.n_missing_ = miss.sum(0).astype(int)
        return self

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Model columns of ``table``'s rows (imputed and scaled with the fitted statistics)."""
        if not hasattr(self, "fill_"):
            raise RuntimeError("TabularPrep.transform before fit")
        X = self._values(table)
        miss = np.isnan(X)
        Z = (np.where(miss, self.fill_, X) - self.mean_) / self.std_
        return np.c_[Z, miss.astype(float)] if self.cfg.missing == "indicator" else Z

    def check_present(self, table: pd.DataFrame, what: str = "subjects scored") -> None:
        """``absent = "refuse"``: refuse a variable without any value among two or more subjects scored."""
        if self.cfg.absent != "refuse" or len(table) < 2:
            return
        X = self._values(table)
        for v, m in zip(self.cfg.variables, np.isnan(X).all(0)):
            if m:
                raise InputError(f"tabular.variables: '{v}' has no value for any of the {len(X)} {what} in "
                                 f"dataset version {self.dataset}", path=self.config_path,
                                 expected=f"'{v}' recorded for some of them", found="all missing",
                                 fix="score subjects for whom it is recorded, drop the variable, or set "
                                     "tabular.absent = \"impute\" (each gets the training value and indicator 1)")

    def state(self) -> dict:
        """What was fitted (for the run record): per variable, imputed value, mean, sd, missing count."""
        return {v: {"impute": float(self.fill_[j]), "mean": float(self.mean_[j]), "std": float(self.std_[j]),
                    "n_missing_train": int(self.n_missing_[j])} for j, v in enumerate(self.cfg.variables)} | {
            "_n_train": int(self.n_fit_), "_columns": self.columns, "_impute": self.cfg.impute,
            "_missing": self.cfg.missing}

    def spec(self) -> dict:
        """Everything :meth:`transform` needs, as plain JSON (a loadable fusion model's ``tabular``)."""
        return {"variables": list(self.cfg.variables), "missing": self.cfg.missing, "impute": self.cfg.impute,
                "absent": self.cfg.absent, "columns": self.columns, "fill": [float(v) for v in self.fill_],
                "mean": [float(v) for v in self.mean_], "std": [float(v) for v in self.std_],
                "n_fit": int(self.n_fit_)}

    @classmethod
    def from_spec(cls, spec: dict, *, dataset: str = "the dataset version", config_path=None) -> TabularPrep:
        """The fitted preparation of :meth:`spec`, without refitting."""
        cfg = TabularConfig(variables=spec["variables"], missing=spec["missing"], impute=spec["impute"],
                            absent=spec["absent"])
        prep = cls(cfg, dataset=dataset, config_path=config_path)
        prep.fill_, prep.mean_, prep.std_ = (np.asarray(spec[k], float) for k in ("fill", "mean", "std"))
        prep.n_fit_ = int(spec["n_fit"])
        prep.n_missing_ = np.zeros(len(cfg.variables), int)
        return prep


def _subject(table: pd.DataFrame, i: int) -> str:
    return str(table["subject_id"].iloc[i]) if "subject_id" in table.columns else f"row {i}"


@dataclass
class TabularModel:
    """:class:`TabularPrep` + a logistic regression: ``predict(table)`` → P(positive)."""

    prep: TabularPrep
    probe: Probe

    def predict(self, table: pd.DataFrame) -> np.ndarray:
        return self.probe.predict(self.prep.transform(table))


def fit_tabular(table: pd.DataFrame, y: np.ndarray, cfg: TabularConfig, *, seed: int = 0, inner_folds: int = 5,
                C: float | None = None, dataset: str = "the dataset version", config_path=None) -> TabularModel:
    """Fit :class:`TabularPrep` and the logistic regression on these (training) subjects only."""
    prep = TabularPrep(cfg, dataset=dataset, config_path=config_path).fit(table)
    return TabularModel(prep, fit_probe(prep.transform(table), y, "binary", seed=seed, max_folds=inner_folds, C=C))


# -------------------------------------------------------------------------------------- results
@dataclass
class FusionResult:
    """Scores of one method: ``dev_scores`` out-of-fold on the development subjects (NaN where the
    method has none), ``test_scores`` on the subjects scored, what was fitted (``info``), and the
    fitted preparation and logistic regressions as plain numbers (``model``: what
    :func:`~sobre.learn.load_model` of a fusion run applies to new subjects)."""

    method: str
    dev_scores: np.ndarray
    test_scores: np.ndarray
    info: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # what scores new subjects (plain JSON; see :func:`_linear`)


def _check_binary(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) != 2 or np.bincount(y).min() < 2:
        raise InputError(f"fusion needs both classes among the {what}", expected="at least 2 subjects of each class",
                         found=f"class counts {np.bincount(y, minlength=2).tolist()}",
                         fix="use an image run with more development subjects")
    return y


def _folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    k = int(min(k, np.bincount(y).min()))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _rows(table: pd.DataFrame, idx) -> pd.DataFrame:
    return table.iloc[np.asarray(idx)].reset_index(drop=True)


_CLIP = 1e-6  # probabilities are clipped to [_CLIP, 1 - _CLIP] before their logit


def _logit(p: np.ndarray, clip: float = _CLIP) -> np.ndarray:
    p = np.clip(np.asarray(p, float), clip, 1 - clip)
    return np.log(p / (1 - p))


def _tabular_oof(table_dev, y, cfg, *, seed, inner_folds, C, dataset, config_path):
    """Final tabular model (all development subjects) and its out-of-fold scores with the same penalty."""
    final = fit_tabular(table_dev, y, cfg, seed=seed, inner_folds=inner_folds, C=C, dataset=dataset,
                        config_path=config_path)
    oof = np.full(len(y), np.nan)
    for tr, va in _folds(y, inner_folds, seed):
        m = fit_tabular(_rows(table_dev, tr), y[tr], cfg, seed=seed, C=final.probe.info["C"], dataset=dataset,
                        config_path=config_path)
        oof[va] = m.predict(_rows(table_dev, va))
    return final, oof


def tabular_only(y_dev, table_dev: pd.DataFrame, table_test: pd.DataFrame, cfg: TabularConfig, *, seed: int = 0,
                 inner_folds: int = 5, C: float | None = None, dataset: str = "the dataset version",
                 config_path=None) -> FusionResult:
    """The tabular model alone: fitted on ``table_dev`` (one row per subject), scores ``table_test``."""
    y = _check_binary(y_dev, "development subjects")
    final, oof = _tabular_oof(table_dev, y, cfg, seed=seed, inner_folds=inner_folds, C=C, dataset=dataset,
                              config_path=config_path)
    final.prep.check_present(table_test, "test subjects")
    test = final.predict(table_test) if len(table_test) else np.zeros(0)
    return FusionResult("tabular", oof, test, {"tabular": final.prep.state(), "C": final.probe.info["C"],
                                               "coef": _coef(final.probe, final.prep.columns)},
                        {"tabular": final.prep.spec(), "tabular_model": _linear(final.probe)})


def late_fusion(y_dev, image_dev, table_dev: pd.DataFrame, image_test, table_test: pd.DataFrame,
                cfg: TabularConfig, *, seed: int = 0, inner_folds: int = 5, C: float | None = None,
                combiner_C: float = 1.0, dataset: str = "the dataset version", config_path=None) -> FusionResult:
    """Late fusion: a logistic regression on the image logit and the tabular model's logit.

    Parameters
    ----------
    y_dev : array (n,) of 0/1
        Labels of the development subjects.
    image_dev : array (n,)
        The image model's *out-of-fold* P(positive) for the development subjects; NaN for subjects
        without one (the training subjects of a single train/validation split): the combiner is
        fitted on the others, the tabular model on all.
    table_dev, table_test : DataFrame
        One row per subject with the tabular variables (and ``subject_id``).
    image_test : array (m,)
        The image model's P(positive) for the subjects scored.
    C : float, optional
        Penalty of the tabular model (none: inner cross-validation).
    combiner_C : float
        Penalty of the combiner on its two standardised logits: fixed, not chosen by AUC (AUC ties
        across penalties of a two-column model, and the tie goes to the strongest penalty, which
        shrinks the weights towards each column's univariate covariance with the label).

    Returns
    -------
    FusionResult
        ``dev_scores``: out-of-fold combiner scores of the stacked subjects (NaN elsewhere);
        ``info["combiner"]``: ``{"image_logit": w1, "tabular_logit": w2, "intercept": b, "C": C}`` acting on
        raw logits.
    """
    y = _check_binary(y_dev, "development subjects")
    image_dev = np.asarray(image_dev, float)
    if image_dev.shape != y.shape:
        raise InputError("image_dev needs one score per development subject", expected=str(y.shape),
                         found=str(image_dev.shape))
    tab, tab_oof = _tabular_oof(table_dev, y, cfg, seed=seed, inner_folds=inner_folds, C=C, dataset=dataset,
                                config_path=config_path)
    stack = np.flatnonzero(~np.isnan(image_dev))
    ys = _check_binary(y[stack], "development subjects with an out-of-fold image score")
    Z = np.c_[_logit(image_dev[stack]), _logit(tab_oof[stack])]
    comb = fit_probe(Z, ys, "binary", seed=seed, C=combiner_C)
    dev = np.full(len(y), np.nan)
    for tr, va in _folds(ys, inner_folds, seed):
        dev[stack[va]] = fit_probe(Z[tr], ys[tr], "binary", C=comb.info["C"]).predict(Z[va])
    tab.prep.check_present(table_test, "test subjects")
    test = np.zeros(0)
    if len(table_test):
        test = comb.predict(np.c_[_logit(image_test), _logit(tab.predict(table_test))])
    w, b = comb.linear()
    return FusionResult("late", dev, test, {
        "combiner": {"image_logit": float(w[0, 0]), "tabular_logit": float(w[0, 1]), "intercept": float(b[0]),
                     "C": comb.info["C"], "n_subjects": len(stack)},
        "tabular": tab.prep.state(), "tabular_C": tab.probe.info["C"],
        "tabular_coef": _coef(tab.probe, tab.prep.columns)},
        {"tabular": tab.prep.spec(), "tabular_model": _linear(tab.probe), "combiner": _linear(comb),
         "logit_clip": _CLIP})


def feature_fusion(y_dev, features_dev, table_dev: pd.DataFrame, features_test, table_test: pd.DataFrame,
                   cfg: TabularConfig, *, seed: int = 0, inner_folds: int = 5, C: float | None = None,
                   dataset: str = "the dataset version", config_path=None) -> FusionResult:
    """Feature-level fusion: image features ``(n, D)`` + prepared tabular columns → one logistic regression.

    The tabular columns are imputed and scaled by a :class:`TabularPrep` fitted on the training rows
    of each fit; the whole matrix is then standardised with the same rows' statistics.
    """
    y = _check_binary(y_dev, "development subjects")
    F_dev = np.asarray(features_dev, float)

    def fit(rows_tab, Fx, yy, c):
        prep = TabularPrep(cfg, dataset=dataset, config_path=config_path).fit(rows_tab)
        return prep, fit_probe(np.c_[Fx, prep.transform(rows_tab)], yy, "binary", seed=seed, max_folds=inner_folds,
                               C=c)

    prep, model = fit(table_dev, F_dev, y, C)
    dev = np.full(len(y), np.nan)
    for tr, va in _folds(y, inner_folds, seed):
        p, m = fit(_rows(table_dev, tr), F_dev[tr], y[tr], model.info["C"])
        dev[va] = m.predict(np.c_[F_dev[va], p.transform(_rows(table_dev, va))])
    prep.check_present(table_test, "test subjects")
    test = np.zeros(0)
    if len(table_test):
        test = model.predict(np.c_[np.asarray(features_test, float), prep.transform(table_test)])
    names = [f"image_{i}" for i in range(F_dev.shape[1])] + prep.columns
    coef = _coef(model, names)
    return FusionResult("feature", dev, test, {
        "C": model.info["C"], "tabular": prep.state(), "n_image_features": int(F_dev.shape[1]),
        "tabular_coef": {k: v for k, v in coef.items() if not k.startswith("image_")}},
        {"tabular": prep.spec(), "feature_model": _linear(model), "n_image_features": int(F_dev.shape[1])})


def _coef(probe: Probe, names: list[str]) -> dict:
    """Coefficients on the standardised columns (comparable across columns)."""
    return {n: float(c) for n, c in zip(names, np.ravel(probe.model.coef_))}


def _linear(probe: Probe) -> dict:
    """A fitted binary logistic :class:`Probe` as plain numbers, computed as it computes:
    ``z = (x - scaler_mean) / scaler_scale``, ``P = expit(z @ coef + intercept)``."""
    return {"scaler_mean": [float(v) for v in probe.scaler.mean_],
            "scaler_scale": [float(v) for v in probe.scaler.scale_],
            "coef": [float(v) for v in np.ravel(probe.model.coef_)],
            "intercept": float(np.ravel(probe.model.intercept_)[0]), "C": float(probe.info["C"])}


# ------------------------------------------------------------------------------------ the run
@dataclass
class FuseResult:
    """What :func:`fuse` returns: the fusion run (None without recording), metrics, predictions."""

    run: object
    metrics: dict
    predictions: pd.DataFrame
    result: FusionResult


def fuse(config, *, workspace, progress=None, config_path=None, record: bool = True) -> FuseResult:
    """Fuse a completed binary image run with tabular variables of its dataset version.

    ``config``: a :class:`~sobre.learn.FusionConfig`, a dict or a TOML path. The dataset version (its
    content hash checked against the image run's), the label and the split are the image run's;
    the run is recorded as kind ``fusion`` in ``WS/runs`` with ``split.csv``, ``predictions.csv``
    (``sobre evaluate`` reads it), ``fusion.json`` (what was fitted, and ``model``: what
    :func:`~sobre.learn.load_model` reads to score new subjects) and ``run.json``.
    """
    from sobre.learn._runs import Run, open_run, runs_root
    from sobre.learn._tasks import build_task, metrics_for

    cfg, config_path = config_from(config, FusionConfig, config_path)
    t0 = time.perf_counter()
    rroot = runs_root(workspace)
    img = open_run(rroot, cfg.image_run)
    rec = img.record
    if rec.get("kind") not in ("train", "probe") or rec.get("status") != "completed":
        raise ConfigError(f"image_run = '{cfg.image_run}': run {img.run_id} is a {rec.get('kind')} run with status "
                          f"{rec.get('status')}", path=config_path, expected="a completed train or probe run",
                          fix="choose a run from `sobre runs list --kind train` (or --kind probe)")
    icfg = validate_config(rec["config"], TrainConfig, path=img.path / "run.json")
    if icfg.task.kind != "binary":
        raise ConfigError(f"fusion handles binary tasks; run {img.run_id} is {icfg.task.kind}", path=config_path,
                          expected="a binary image run", found=icfg.task.kind)
    dsrec = rec.get("dataset") or {}
    ds = workspace.dataset(dsrec.get("ref"))
    if ds.content_hash != dsrec.get("content_hash"):
        raise InputError(f"dataset version {ds.ref} is not the one run {img.run_id} was trained on",
                         expected=f"content hash {dsrec.get('content_hash')}", found=ds.content_hash)
    dsname = ds.ref
    split = pd.read_csv(img.path / "split.csv", dtype={"subject_id": str})
    table = pd.DataFrame(ds.records())
    table["subject_id"] = table["subject_id"].astype(str)
    table = table[table["subject_id"].isin(set(split["subject_id"]))].drop_duplicates("subject_id")
    require_columns(table, cfg.tabular.variables, dataset=dsname, key="tabular.variables", config_path=config_path)
    table = table.set_index("subject_id").loc[split["subject_id"]].reset_index()
    task = build_task(icfg.task, table, dataset=dsname, config_path=config_path)
    is_test = (split["split"] == "test").to_numpy()
    dev_i, test_i = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    y = task.targets
    t_dev, t_test = _rows(table, dev_i), _rows(table, test_i)
    common = {"seed": cfg.seed, "inner_folds": cfg.inner_folds, "C": cfg.C, "dataset": dsname,
              "config_path": config_path}
    note = None
    if cfg.method == "tabular":
        res = tabular_only(y[dev_i], t_dev, t_test, cfg.tabular, **common)
    elif cfg.method == "late":
        pr = pd.read_csv(img.path / "predictions.csv", dtype={"subject_id": str})
        val = pr[pr["split"] == "validation"].set_index("subject_id")["score"]
        tst = pr[pr["split"] == "test"].set_index("subject_id")["score"]
        img_dev = t_dev["subject_id"].map(val).to_numpy(float)
        img_test = t_test["subject_id"].map(tst).to_numpy(float)
        if np.isnan(img_test).any():
            raise InputError(f"run {img.run_id}: predictions.csv lacks test scores for "
                             f"{int(np.isnan(img_test).sum())} test subject(s)", path=img.path / "predictions.csv")
        res = late_fusion(y[dev_i], img_dev, t_dev, img_test, t_test, cfg.tabular, combiner_C=cfg.combiner_C,
                          **common)
    else:
        feats = _subject_features(img, icfg, workspace, table["subject_id"], progress)
        if rec.get("kind") == "train":
            note = ("features from the trained CNN's penultimate layer: the development subjects it was trained "
                    "on have in-sample features (a probe run's pretrained encoder has none)")
            log.warning("fusion: %s", note)
        res = feature_fusion(y[dev_i], feats[dev_i], t_dev, feats[test_i], t_test, cfg.tabular, **common)
    frames = []
    has = ~np.isnan(res.dev_scores)
    metrics: dict = {"validation": metrics_for(task, res.dev_scores[has], y[dev_i][has])}
    metrics["validation"]["n_subjects"] = int(has.sum())
    frames.append(_frame(t_dev[has], y[dev_i][has], res.dev_scores[has], "validation"))
    if len(test_i):
        metrics["test"] = metrics_for(task, res.test_scores, y[test_i])
        metrics["test"]["n_subjects"] = len(test_i)
        frames.append(_frame(t_test, y[test_i], res.test_scores, "test"))
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    preds = pd.concat(frames, ignore_index=True)
    run = None
    if record:
        run = Run.create(rroot, "fusion", config=resolved(cfg), seed=cfg.seed, dataset=dsrec, name=cfg.name)
        split.to_csv(run.path / "split.csv", index=False)
        run.add_artifact("split.csv")
        preds.to_csv(run.path / "predictions.csv", index=False)
        run.add_artifact("predictions.csv")
        members = (rec.get("model") or {}).get("members") or []
        artifacts = rec.get("artifacts") or {}
        model = {"format": FUSION_MODEL_FORMAT, "method": res.method, "image_run": img.run_id,
                 "image_run_kind": rec.get("kind"),
                 "image_checkpoints": {m["checkpoint"]: (artifacts.get(m["checkpoint"]) or {}).get("sha256")
                                       for m in members},
                 "label": icfg.task.label, "classes": [str(c) for c in task.classes],
                 "positive": None if task.positive is None else str(task.positive), **res.model}
        fitted = {"format": FUSION_FORMAT, "method": res.method, "image_run": img.run_id,
                  "image_run_kind": rec.get("kind"), "label": icfg.task.label,
                  "classes": [str(c) for c in task.classes],
                  "fitted": res.info, "note": note, "model": model}
        (run.path / "fusion.json").write_text(json.dumps(fitted, indent=1, default=float))
        run.add_artifact("fusion.json")
        auc = metrics.get("test", metrics["validation"]).get("auc")
        run.finish("completed", metrics=metrics, task="binary", task_kind="binary", positive_label=1,
                   classes=[str(c) for c in task.classes], run_id=run.run_id,
                   init={"image_run": img.run_id, "method": res.method},
                   headline=(f"{'test' if 'test' in metrics else 'val'} auc {auc:.3f}" if auc is not None else ""),
                   expected_subjects=sorted(t_test["subject_id"].astype(str)))
    return FuseResult(run, metrics, preds, res)


def _frame(t: pd.DataFrame, y: np.ndarray, s: np.ndarray, split: str) -> pd.DataFrame:
    df = pd.DataFrame({"subject_id": t["subject_id"].astype(str).to_numpy(), "label": np.asarray(y, int),
                       "score": np.asarray(s, float)})
    for c in ("site", "sex", "age"):
        if c in t.columns:
            df[c] = t[c].to_numpy()
    df["split"] = split
    return df


def _subject_features(img, icfg: TrainConfig, workspace, subjects: pd.Series, progress) -> np.ndarray:
    """Mean encoder features per subject (in ``subjects`` order), on the image run's cached arrays."""
    from sobre.learn._data import load_cohort
    from sobre.learn._inference import load_model
    from sobre.learn._transfer import extract_features

    model = load_model(img)
    cohort = load_cohort(workspace, icfg.data, icfg.preprocess, progress=progress)
    X, _ = extract_features(model.encoder, cohort.images, batch_size=16, bf16=False,
                            channels_last=icfg.runtime.channels_last, progress=progress)
    by = pd.DataFrame(X).groupby(cohort.table["subject_id"].astype(str).to_numpy()).mean()
    missing = set(subjects) - set(by.index)
    if missing:
        raise InputError(f"no image of {len(missing)} subject(s) of run {img.run_id} in its dataset version",
                         found=", ".join(sorted(missing)[:4]))
    return by.loc[list(subjects)].to_numpy(float)

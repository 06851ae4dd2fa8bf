"""``evaluate``: every validation analysis of a predictions file, as one result object."""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, PositiveFloat, field_validator
from pydantic_core import PydanticCustomError

from sobre.base import Config, resolved, validate_config
from sobre.errors import Problem
from sobre.image import resample
from sobre.validate import _classification as C
from sobre.validate import _regression as R
from sobre.validate import _segmentation as S
from sobre.validate._calibration import CalibrationResult, calibration_report
from sobre.validate._delong import DeLongTest, delong_auc, delong_test
from sobre.validate._detection import DEFAULT_FP_RATES, DEFAULT_SIZE_BINS, detect_case, detection_metrics
from sobre.validate._errors import MaskGeometryError, PredictionsError
from sobre.validate._estimate import Estimate
from sobre.validate._masks import check_same_grid, mask_voxels, read_mask
from sobre.validate._predictions import Predictions, read_predictions
from sobre.validate._site import (
    combat_cross_validated,
    label_site_dependence,
    leave_one_site_out,
    site_probe,
)
from sobre.validate._subgroups import DEFAULT_AGE_BANDS, age_bands, subgroup_analysis, subgroups_to_dict
from sobre.validate._surface import segmentation_scores
from sobre.validate._triage import TriageResult, threshold_youden, triage_operating_point

__all__ = ["EvaluationSettings", "Evaluation", "evaluate", "PRIMARY_METRIC", "THRESHOLD_METRICS"]

#: The metric shown in forest plots and used for the headline, per task.
PRIMARY_METRIC = {"binary": "auc", "multiclass": "macro_auc", "regression": "mae", "segmentation": "dice",
                  "detection": "sensitivity"}

_DEFAULT_BY = ("site", "sex", "age_band", "manufacturer")

#: Binary metrics that need an operating threshold (the AUC does not).
THRESHOLD_METRICS = ("balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "accuracy")


def _directions(task: str) -> dict:
    if task in ("binary", "multiclass"):
        return {k: 1 for k in C.HIGHER_IS_BETTER}
    if task == "regression":
        return {"mae": -1, "rmse": -1, "pearson_r": 1}
    if task == "segmentation":
        return {"dice": 1, "nsd": 1, "hd95": -1, "asd": -1, "abs_volume_error": -1}
    return {"sensitivity": 1, "fp_per_case": -1, "cpm": 1}


def _bad(expected: str) -> PydanticCustomError:
    return PydanticCustomError("value_out_of_range", "expected {expected}", {"expected": expected})


def _increasing(v: tuple, what: str) -> tuple:
    if any(b <= a for a, b in zip(v, v[1:])):
        raise _bad(f"{what} in increasing order")
    return v


class EvaluationSettings(Config):
    """Settings of :func:`evaluate` (all optional), a :class:`sobre.base.Config`.

    Unknown keys, wrong types and values out of range are refused with a
    :class:`~sobre.errors.ConfigError` naming the key, what was expected and what was found (from a
    mapping, :func:`evaluate`'s keywords or the command line; direct construction raises pydantic's
    ``ValidationError``).

    Parameters
    ----------
    by : sequence of str, optional
        Grouping columns for subgroup analysis; default: those of site, sex, age_band,
        manufacturer present in the file. ``age_band`` is derived from ``age``.
    n_bootstrap : int
        Bootstrap resamples for every interval (0: no intervals; else at least 100).
    ci_method : {"bca", "percentile"}
    level : float
        Confidence level, between 0.5 and 1.
    seed : int
    threshold : float, optional
        Binary operating threshold (``score >= threshold`` is positive). Without it: 0.5 when every
        score is a probability (in [0, 1]); otherwise the threshold that maximises Youden's J on the
        validation rows, and when there are none, no threshold-based metric at all (sensitivity,
        specificity, PPV, NPV, accuracy, balanced accuracy) — the report says which, and why.
    target_sensitivity : float
        Triage operating point, chosen on validation rows.
    compare : str, optional
        Another score column to compare with ``score`` by DeLong's test.
    task, positive
        Override the inferred task / the positive class of a binary label.
    resample_masks : bool
        Resample predicted masks onto the reference grid (nearest neighbour) instead of refusing a
        mismatch.
    nsd_tolerance_mm, empty_distance
        Segmentation settings (see :func:`sobre.validate.segmentation_scores`).
    candidate_threshold, detection_threshold, lesion_size, size_bins, fp_rates
        Detection settings (see :func:`sobre.validate.detection_metrics`).
    calibration_bins : int
    age_bands : sequence of float
    min_subgroup_size : int
    site_analysis : bool
        Run the site probe, leave-one-site-out and ComBat analyses when a ``site`` column is present.
    expected_subjects : list of str, optional
        Every one must have a row.
    """

    model_config = ConfigDict(allow_inf_nan=False)
    docs = "docs/validate.md"

    by: tuple[str, ...] | None = None
    n_bootstrap: int = 2000
    ci_method: Literal["bca", "percentile"] = "bca"
    level: float = 0.95
    seed: int = Field(0, ge=0)
    threshold: float | None = None
    target_sensitivity: float = 0.99
    compare: str | None = None
    task: Literal["binary", "multiclass", "regression", "segmentation", "detection"] | None = None
    positive: bool | int | float | str | None = None
    resample_masks: bool = False
    nsd_tolerance_mm: float = Field(1.0, ge=0)
    empty_distance: Literal["diagonal", "nan"] = "diagonal"
    candidate_threshold: float = 0.5
    detection_threshold: float = 0.5
    lesion_size: Literal["equivalent", "longest"] = "equivalent"
    size_bins: tuple[PositiveFloat, ...] = DEFAULT_SIZE_BINS
    fp_rates: tuple[PositiveFloat, ...] = DEFAULT_FP_RATES
    calibration_bins: int = Field(10, ge=2, le=100)
    age_bands: tuple[float, ...] = DEFAULT_AGE_BANDS
    min_subgroup_size: int = Field(10, ge=1)
    site_analysis: bool = True
    expected_subjects: list[str] | None = None

    @field_validator("n_bootstrap")
    @classmethod
    def _n_bootstrap(cls, v: int) -> int:
        if v < 0 or 0 < v < 100:
            raise _bad("0 (no intervals) or at least 100 (2000 recommended; --bootstrap 2000)")
        return v

    @field_validator("level")
    @classmethod
    def _level(cls, v: float) -> float:
        if not 0.5 < v < 1:
            raise _bad("a confidence level between 0.5 and 1 (e.g. 0.95)")
        return v

    @field_validator("target_sensitivity")
    @classmethod
    def _target(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise _bad("a sensitivity in (0, 1], e.g. 0.99")
        return v

    @field_validator("size_bins", "fp_rates", "age_bands")
    @classmethod
    def _ordered(cls, v: tuple, info) -> tuple:
        return _increasing(v, info.field_name)

    def to_dict(self) -> dict:
        """The resolved settings, JSON-able (without the expected-subject list)."""
        d = resolved(self)
        d["positive"] = None if self.positive is None else str(self.positive)
        d.pop("expected_subjects")
        return d


@dataclass
class Evaluation:
    """Everything :func:`evaluate` found; ``to_dict()`` is the JSON report.

    Attributes
    ----------
    predictions : Predictions
    settings : EvaluationSettings
    task : str
    metrics : dict of str to Estimate
        Headline metrics on the test subjects.
    details : dict
        Task-specific results (counts, per-case tables, conventions, FROC, ...).
    curves : dict
        ROC with its band (binary), FROC (detection), scatter data (regression).
    subgroups : dict
        See :func:`subgroup_analysis`.
    calibration : CalibrationResult or None
    triage : TriageResult or None
    comparison : DeLongTest or None
    site : dict
        Site analyses (label dependence, probes, leave-one-site-out, ComBat).
    limits : list of str
        Plain-language limits: weak subgroups, site dependence, small samples, ...
    problems : list of Problem
    """

    predictions: Predictions
    settings: EvaluationSettings
    task: str
    metrics: dict
    details: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    subgroups: dict = field(default_factory=dict)
    calibration: CalibrationResult | None = None
    triage: TriageResult | None = None
    comparison: DeLongTest | None = None
    site: dict = field(default_factory=dict)
    limits: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    created: str = ""

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.task]

    def to_dict(self) -> dict:
        """Every number of the evaluation, JSON-ready."""
        from sobre import __version__

        p = self.predictions
        meta = {k: v for k, v in p.metadata.items() if not k.startswith("_")}
        return _jsonable({
            "sobre_version": __version__,
            "created": self.created,
            "input": {"path": str(p.path), "sha256": p.sha256, "rows": int(len(p.table)),
                      "test_subjects": int((p.table["split"] == "test").sum()),
                      "validation_subjects": int((p.table["split"] == "validation").sum()),
                      "metadata_files": p.metadata.get("_metadata_files", [])},
            "data": {"dataset_version": meta.get("dataset_version", meta.get("dataset_hash")),
                     "simulated": meta.get("simulated"), "description": meta.get("dataset_description")},
            "model": {"run_id": meta.get("run_id"), "model": meta.get("model"), "config": meta.get("config")},
            "task": self.task,
            "classes": None if p.classes is None else [str(c) for c in p.classes],
            "settings": self.settings.to_dict(),
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "details": _jsonable(self.details),
            "curves": _jsonable(self.curves),
            "subgroups": subgroups_to_dict(self.subgroups),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "triage": None if self.triage is None else self.triage.to_dict(),
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "site": _jsonable(self.site),
            "label_efficiency": meta.get("label_efficiency"),
            "limits": list(self.limits),
            "problems": [{"level": q.level, "message": q.message, "path": q.path, "fix": q.fix}
                         for q in self.problems],
        })

    def summary(self) -> str:
        """A few lines of plain text: the headline metrics and the limits."""
        p = self.predictions
        lines = [f"{p.path}: {self.task}, {int((p.table['split'] == 'test').sum())} test subjects"]
        for k, v in self.metrics.items():
            lines.append(f"  {k:<32s} {v}")
        if self.task == "binary":
            thr = self.details.get("threshold")
            lines.append(f"  threshold: {'none' if thr is None else f'{thr:.6g}'} "
                         f"({self.details.get('threshold_source')})")
        if self.comparison is not None:
            c = self.comparison
            lines.append(f"  DeLong: AUC {c.auc_a:.3f} vs {c.auc_b:.3f} ({self.settings.compare}), "
                         f"difference {c.difference}, p = {c.p_value:.3g}")
        if self.triage is not None:
            t = self.triage
            lines.append(f"  triage @ sensitivity {t.target_sensitivity:g}: threshold {t.threshold:.4g}, "
                         f"test sensitivity {t.sensitivity}, specificity {t.specificity}")
        if self.limits:
            lines.append("limits:")
            lines.extend(f"  - {x}" for x in self.limits)
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.html`` and ``report.json`` into ``out_dir``; returns their paths."""
        from sobre.validate._report import write_report

        return write_report(self, out_dir)


def _jsonable(obj):
    if isinstance(obj, Estimate):
        return obj.to_dict()
    if hasattr(obj, "to_dict") and not isinstance(obj, (pd.DataFrame, pd.Series)):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Problem):
        return str(obj)
    return obj


def _boot(settings: EvaluationSettings, **extra) -> dict:
    return {"n_resamples": settings.n_bootstrap, "method": settings.ci_method, "level": settings.level,
            "seed": settings.seed, **extra}


def _groups(pred: Predictions, frame: pd.DataFrame, settings: EvaluationSettings) -> tuple[pd.DataFrame, list]:
    problems = []
    wanted = settings.by
    explicit = wanted is not None
    if wanted is None:
        wanted = [c for c in _DEFAULT_BY if c in frame.columns or (c == "age_band" and "age" in frame.columns)]
    cols = {}
    for c in wanted:
        if c == "age_band" and "age_band" not in frame.columns:
            if "age" not in frame.columns:
                raise PredictionsError("cannot group by age_band: no 'age' or 'age_band' column", path=pred.path,
                                       expected="an age column (years)", found="columns " + ", ".join(frame.columns),
                                       fix="add an age column, or drop age_band from --by")
            cols[c] = age_bands(frame["age"], settings.age_bands)
            continue
        if c not in frame.columns:
            if explicit:
                raise PredictionsError(f"grouping column {c!r} not found", path=pred.path,
                                       expected=f"a column named {c!r}", found="columns " + ", ".join(frame.columns),
                                       fix="add the column or remove it from --by")
            continue
        cols[c] = frame[c].astype(object).where(frame[c].notna(), None)
        if frame[c].isna().any():
            problems.append(Problem("warning", f"{int(frame[c].isna().sum())} test subjects have no {c!r}: "
                                    "left out of that subgroup analysis", path=str(pred.path)))
    return pd.DataFrame(cols, index=frame.index), problems


def _operating_threshold(ev: Evaluation, s: np.ndarray) -> tuple[float | None, str]:
    """``(threshold or None, where it comes from)`` for the threshold-based binary metrics.

    A given threshold is used as is; probabilities get 0.5; other scores (logits, 0-100 ratings...)
    have no natural threshold: it is chosen on the validation rows (maximum Youden J) when there are
    some with both classes, and otherwise the threshold-based metrics are not computed. Both cases
    are reported as warnings (stderr, report).
    """
    pred, st = ev.predictions, ev.settings
    if st.threshold is not None:
        return st.threshold, "given"
    if np.all((s >= 0) & (s <= 1)):
        return 0.5, "default for probabilities"
    val = pred.validation
    span = f"{s.min():.4g} to {s.max():.4g}"
    fix = "pass --threshold (threshold=...) with the operating point the model is meant to be used at"
    vy = pred.positive(val) if len(val) else np.zeros(0, bool)
    if vy.any() and not vy.all():
        thr = threshold_youden(vy, val["score"].to_numpy(dtype=float))
        ev.problems.append(Problem(
            "warning", f"scores are not probabilities (they range from {span}), so there is no default threshold: "
            f"threshold {thr:.6g} chosen on the {len(val)} validation rows (maximum Youden J) for "
            f"{', '.join(THRESHOLD_METRICS)}", path=str(pred.path), fix=fix, code="threshold-from-validation"))
        return thr, "chosen on validation rows (maximum Youden J)"
    ev.problems.append(Problem(
        "warning", f"scores are not probabilities (they range from {span}) and no threshold was given: "
        f"{', '.join(THRESHOLD_METRICS)} not computed (only the AUC does not need a threshold); "
        "no validation rows with both classes to choose one on", path=str(pred.path), fix=fix,
        code="no-threshold"))
    return None, "scores are not probabilities; no threshold given, no validation rows to choose one on"


def _load_pair(pred: Predictions, row, settings: EvaluationSettings):
    base = pred.base_dir

    def resolve(p):
        p = Path(str(p))
        return p if p.is_absolute() else base / p

    ref = read_mask(resolve(row["mask_path"]))
    prd = read_mask(resolve(row["pred_path"]))
    if settings.resample_masks:
        try:
            check_same_grid(prd, ref)
        except MaskGeometryError:
            prd = resample(prd, ref, order="nearest")
    else:
        check_same_grid(prd, ref)
    return ref, prd


def evaluate(source, settings: EvaluationSettings | None = None, **kwargs) -> Evaluation:
    """Evaluate a predictions file (or a run folder) completely.

    Parameters
    ----------
    source : str, Path or Predictions
        A predictions CSV/Parquet, a run folder holding ``predictions.csv`` (+ ``run.json``), or an
        already read :class:`Predictions`.
    settings : EvaluationSettings, optional
    **kwargs
        Shortcut for settings fields, e.g. ``evaluate(path, by=["site"], n_bootstrap=1000)``.

    Returns
    -------
    Evaluation

    Raises
    ------
    PredictionsError, SingleClassError, MaskGeometryError, MaskReadError
        For bad input, with the file, column/row, expected vs found, and the fix.
    """
    if settings is None:
        settings = validate_config(kwargs, EvaluationSettings)
    elif kwargs:
        settings = validate_config({**settings.model_dump(), **kwargs}, EvaluationSettings)
    pred = source if isinstance(source, Predictions) else read_predictions(
        source, task=settings.task, positive=settings.positive, expected_subjects=settings.expected_subjects)
    test = pred.test
    problems = list(pred.problems)
    groups, gp = _groups(pred, test, settings)
    problems += gp
    ev = Evaluation(pred, settings, pred.task, {}, problems=problems,
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    runner = {"binary": _binary, "multiclass": _multiclass, "regression": _regression,
              "segmentation": _segmentation, "detection": _detection}[pred.task]
    compute = runner(ev, test)
    if groups.shape[1]:
        ev.subgroups = subgroup_analysis(groups, compute, ev.metrics, _directions(pred.task),
                                         min_size=settings.min_subgroup_size)
    if settings.site_analysis:
        ev.site = _site_section(ev, test)
    ev.limits = _limits(ev)
    return ev


# --------------------------------------------------------------------------- tasks


def _binary(ev: Evaluation, test: pd.DataFrame):
    pred, st = ev.predictions, ev.settings
    y = pred.positive(test)
    s = test["score"].to_numpy(dtype=float)
    thr, source = _operating_threshold(ev, s)

    def metrics_at(idx=slice(None)):
        r = C.binary_metrics(y[idx], s[idx], threshold=0.0 if thr is None else thr, **_boot(st))
        if thr is None:  # no operating point: only the threshold-free metrics
            r.metrics = {k: v for k, v in r.metrics.items() if k not in THRESHOLD_METRICS}
        return r

    res = metrics_at()
    ev.metrics = res.metrics
    ev.details["threshold"] = thr
    ev.details["threshold_source"] = source
    ev.details["counts"] = res.counts if thr is not None else {k: res.counts[k] for k in ("n", "positives",
                                                                                         "negatives")}
    ev.details["positive_class"] = str(pred.classes[1])
    try:
        ev.details["auc_delong"] = delong_auc(y, s, level=st.level)
    except ValueError as exc:
        ev.details["auc_delong"] = str(exc)
    ev.curves["roc"] = C.roc_curve_band(y, s, n_resamples=min(max(st.n_bootstrap, 0), 500), level=st.level,
                                        seed=st.seed)
    if st.compare:
        if st.compare not in test.columns:
            raise PredictionsError(f"comparison column {st.compare!r} not found", path=pred.path,
                                   expected="a second score column for the same subjects",
                                   found="columns " + ", ".join(test.columns),
                                   fix="name an existing column with --compare")
        from sobre.validate._predictions import _numeric_column

        other = _numeric_column(test, st.compare, pred.path, "numbers (the other model's score)").to_numpy()
        ev.comparison = delong_test(y, s, other, level=st.level)
    val = pred.validation
    probs = bool(np.all((s >= 0) & (s <= 1)))
    vy = pred.positive(val) if len(val) else None
    vs = val["score"].to_numpy(dtype=float) if len(val) else None
    if probs:
        ev.calibration = calibration_report(y.astype(int), s, val_labels=None if vy is None else vy.astype(int),
                                            val_probs=vs, n_bins=st.calibration_bins, **_boot(st))
    else:
        ev.problems.append(Problem("info", "calibration not assessed: scores are not probabilities",
                                   path=str(pred.path)))
    if vy is not None and vy.any():
        ev.triage = triage_operating_point(vy, vs, y, s, target_sensitivity=st.target_sensitivity,
                                           n_resamples=max(st.n_bootstrap, 0), level=st.level, seed=st.seed)
    else:
        ev.details["triage"] = ("not computed: the threshold must be chosen on validation subjects "
                                "(rows with split = validation, including positives)")

    def compute(idx):
        return metrics_at(idx).metrics

    return compute


def _multiclass(ev: Evaluation, test: pd.DataFrame):
    pred, st = ev.predictions, ev.settings
    labels = pred.class_index(test)
    scores = test[pred.score_columns].to_numpy(dtype=float)
    res = C.multiclass_metrics(labels, scores, pred.classes, **_boot(st))
    ev.metrics = res.metrics
    ev.details["counts"] = res.counts
    is_prob = np.all((scores >= 0) & (scores <= 1)) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
    if is_prob:
        val = pred.validation
        ev.calibration = calibration_report(
            labels, scores, val_labels=pred.class_index(val) if len(val) else None,
            val_probs=val[pred.score_columns].to_numpy(dtype=float) if len(val) else None,
            n_bins=st.calibration_bins, **_boot(st))
    else:
        ev.problems.append(Problem("info", "calibration not assessed: class scores are not probabilities "
                                   "summing to 1", path=str(pred.path)))

    def compute(idx):
        r = C.multiclass_metrics(labels[idx], scores[idx], pred.classes, **_boot(st)).metrics
        return {k: v for k, v in r.items() if "[" not in k}

    return compute


def _regression(ev: Evaluation, test: pd.DataFrame):
    st = ev.settings
    y = test["label"].to_numpy(dtype=float)
    p = test["score"].to_numpy(dtype=float)
    res = R.regression_metrics(y, p, **_boot(st))
    ev.metrics = res.metrics
    ev.details["counts"] = res.counts
    ev.curves["scatter"] = {"label": y.tolist(), "prediction": p.tolist()}

    def compute(idx):
        return R.regression_metrics(y[idx], p[idx], **_boot(st)).metrics

    return compute


def _segmentation(ev: Evaluation, test: pd.DataFrame):
    pred, st = ev.predictions, ev.settings
    cases = []
    for _, row in test.iterrows():
        ref, prd = _load_pair(pred, row, st)
        ref_arr, spacing = mask_voxels(ref)
        prd_arr, _ = mask_voxels(prd)
        if np.issubdtype(prd_arr.dtype, np.floating) and not np.all((prd_arr == 0) | (prd_arr == 1)):
            prd_arr = prd_arr >= 0.5
        cases.append(segmentation_scores(prd_arr != 0, ref_arr != 0, spacing,
                                         tolerance_mm=st.nsd_tolerance_mm, empty_distance=st.empty_distance))
    res = S.segmentation_metrics(cases, subject_ids=list(test["subject_id"]), tolerance_mm=st.nsd_tolerance_mm,
                                 empty_distance=st.empty_distance, **_boot(st))
    ev.metrics = res.metrics
    ev.details.update({"counts": res.counts, "conventions": res.conventions, "per_case": res.per_case})
    if res.counts["empty_reference"] or res.counts["empty_prediction"] or res.counts["both_empty"]:
        ev.problems.append(Problem(
            "info", f"empty masks: {res.counts['empty_reference']} empty references, "
            f"{res.counts['empty_prediction']} empty predictions, {res.counts['both_empty']} both empty; "
            f"convention: {res.conventions['one_empty']}; both empty: {res.conventions['both_empty']}",
            path=str(pred.path)))
    values = {k: np.array([c[k] if c[k] is not None else np.nan for c in res.per_case], dtype=float)
              for k in ("dice", "hd95", "asd", "nsd", "volume_error", "relative_volume_error")}
    values["abs_volume_error"] = np.abs(values["volume_error"])

    def compute(idx):
        from sobre.validate._estimate import bootstrap

        return bootstrap(S.mean_statistic({k: v[idx] for k, v in values.items()}), len(idx), **_boot(st))

    return compute


def _detection(ev: Evaluation, test: pd.DataFrame):
    pred, st = ev.predictions, ev.settings
    cases = []
    for _, row in test.iterrows():
        ref, prd = _load_pair(pred, row, st)
        (ref_arr, spacing), (prd_arr, _) = mask_voxels(ref), mask_voxels(prd)
        cases.append(detect_case(ref_arr, prd_arr, spacing, candidate_threshold=st.candidate_threshold,
                                 size=st.lesion_size))
    res = detection_metrics(cases, threshold=st.detection_threshold, size_bins=st.size_bins, fp_rates=st.fp_rates,
                            **_boot(st))
    ev.metrics = res.metrics
    ev.details.update({"counts": res.counts, "size_bins": res.size_bins, "threshold": res.threshold,
                       "lesion_size": st.lesion_size, "candidate_threshold": st.candidate_threshold,
                       "hit_rule": "candidate overlaps the lesion or its centre lies within the lesion radius"})
    ev.curves["froc"] = res.froc

    def compute(idx):
        r = detection_metrics([cases[i] for i in idx], threshold=st.detection_threshold, size_bins=st.size_bins,
                              fp_rates=st.fp_rates, **_boot(st)).metrics
        return {k: r[k] for k in ("sensitivity", "fp_per_case", "cpm")}

    return compute


# --------------------------------------------------------------------------- site effects


def _site_section(ev: Evaluation, test: pd.DataFrame) -> dict:
    pred, st = ev.predictions, ev.settings
    if "site" not in test.columns:
        return {"note": "no 'site' column: site effects not assessed"}
    site = test["site"].astype(str).to_numpy()
    sites, counts = np.unique(site, return_counts=True)
    out: dict = {"n_sites": int(len(sites)), "subjects_per_site": {str(s): int(c) for s, c in zip(sites, counts)}}
    if len(sites) < 2:
        out["note"] = "one site only: site effects cannot be measured"
        return out
    task = {"binary": "binary", "regression": "regression"}.get(ev.task)
    if ev.task in ("binary", "multiclass", "regression"):
        label = (pred.positive(test).astype(int) if ev.task == "binary" else test["label"].to_numpy())
        summary, prob = label_site_dependence(label, site, task="regression" if ev.task == "regression" else "binary")
        out["label_by_site"] = summary
        if prob is not None:
            ev.problems.append(prob)
    boot = {"n_resamples": st.n_bootstrap, "level": st.level, "seed": st.seed}
    if counts.min() < 2:
        out["note"] = "a site has a single subject: site probe and ComBat need at least two per site"
        return out
    probes = {}
    for prefix, name in (("feat_", "model features"), ("stat_", "image statistics")):
        x = pred.features(prefix, test)
        if x is not None:
            probes[name] = site_probe(x, site, features_name=name, **boot)
    out["site_probe"] = probes
    if not probes:
        out["note"] = ("no feat_* or stat_* columns: the site probe, leave-one-site-out and ComBat analyses need "
                       "model features or image statistics per subject")
    x = pred.features("feat_", test)
    if x is not None and task is not None:
        y = label if task == "binary" else test["label"].to_numpy(dtype=float)
        try:
            out["leave_one_site_out"] = leave_one_site_out(x, y, site, task=task, **boot)
        except ValueError as exc:
            out["leave_one_site_out"] = f"not computed: {exc}"
        covs = [c for c in ("age", "sex") if c in test.columns and test[c].notna().all()]
        if task == "regression":
            # a covariate equal to the target (brain age: label = age) would feed the test subjects'
            # labels into the harmonisation of their own features
            same = [c for c in covs if pd.api.types.is_numeric_dtype(test[c])
                    and np.allclose(test[c].to_numpy(dtype=float), y)]
            for c in same:
                covs.remove(c)
                ev.problems.append(Problem("warning", f"covariate {c!r} equals the label: left out of ComBat, "
                                           "whose test-time adjustment would otherwise use the test labels",
                                           path=str(pred.path)))
        try:
            out["combat"] = combat_cross_validated(x, site, covariates=test[covs] if covs else None, label=y,
                                                   task=task, **boot)
        except ImportError as exc:
            out["combat"] = f"not computed: {exc} (pip install neuroHarmonize statsmodels neuroCombat)"
        except (ValueError, np.linalg.LinAlgError) as exc:
            out["combat"] = f"not computed: {exc}"
    elif x is not None:
        try:
            out["combat"] = combat_cross_validated(x, site, covariates=None, label=None, **boot)
        except ImportError as exc:
            out["combat"] = f"not computed: {exc} (pip install neuroHarmonize statsmodels neuroCombat)"
        except (ValueError, np.linalg.LinAlgError) as exc:
            out["combat"] = f"not computed: {exc}"
    return out


# --------------------------------------------------------------------------- limits


def _limits(ev: Evaluation) -> list[str]:
    out = []
    meta = ev.predictions.metadata
    n = int((ev.predictions.table["split"] == "test").sum())
    if meta.get("simulated") in (True, "true", "True", 1, "1", "yes"):
        out.append("the data are simulated: performance on real patients is not established by this report")
    if n < 100:
        out.append(f"small test set ({n} subjects): intervals are wide")
    for col, v in ev.subgroups.items():
        for r in v["levels"]:
            for m in r["flags"]:
                e, o = r["metrics"][m], ev.metrics[m]
                side = "below" if _directions(ev.task).get(m, 1) > 0 else "above"
                out.append(f"weak subgroup {col} = {r['level']} (n = {r['n']}): {m} {e}, interval wholly {side} "
                           f"the overall {o.value:.3f}")
            if r["small"]:
                out.append(f"subgroup {col} = {r['level']} has only {r['n']} subjects: not assessed for weakness")
    site = ev.site
    if site.get("n_sites") == 1:
        out.append("one site only: behaviour in another hospital (scanner, protocol, population) is unknown")
    for name, probe in (site.get("site_probe") or {}).items():
        if probe.detectable:
            out.append(f"the site can be predicted from the {name} (balanced accuracy {probe.balanced_accuracy} "
                       f"vs chance {probe.chance:.3f}): the representation carries the hospital")
    lab = site.get("label_by_site")
    if isinstance(lab, dict) and np.isfinite(lab.get("p_value", np.nan)) and lab["p_value"] < 0.05:
        out.append(f"the label distribution differs across sites ({lab['test']} p = {lab['p_value']:.2g}): site and "
                   "label are confounded; harmonisation can leak the label")
    loso = site.get("leave_one_site_out")
    if hasattr(loso, "pooled"):
        worse = (loso.pooled.ci_high < loso.within_site_cv.value if loso.metric == "auc"
                 else loso.pooled.ci_low > loso.within_site_cv.value)
        if worse:
            out.append(f"features transfer poorly to unseen sites: leave-one-site-out {loso.metric} {loso.pooled} vs "
                       f"{loso.within_site_cv.value:.3f} within sites")
    if ev.calibration is not None:
        ece = ev.calibration.metrics.get("ece")
        if ece is not None and np.isfinite(ece.ci_low) and ece.ci_low > 0.05:
            out.append(f"probabilities are miscalibrated: ECE {ece}")
    for q in ev.problems:
        if q.code in ("no-threshold", "threshold-from-validation"):
            out.append(q.message)
    if ev.triage is not None and ev.triage.note:
        out.append(f"triage: {ev.triage.note}")
    if ev.triage is not None:
        t = ev.triage
        if np.isfinite(t.sensitivity_exact.ci_low) and t.sensitivity_exact.ci_low < t.target_sensitivity:
            out.append(f"triage: test sensitivity {t.sensitivity_exact} does not establish the target "
                       f"{t.target_sensitivity:g} (lower bound below it)")
    if ev.task == "segmentation":
        c = ev.details.get("counts", {})
        if c.get("empty_prediction"):
            out.append(f"{c['empty_prediction']} cases with an empty prediction but a non-empty reference (missed)")
    for k, e in ev.metrics.items():
        if e.note and (not np.isfinite(e.value) or "degenerate" in e.note):
            out.append(f"{k}: {e.note}")
    return out

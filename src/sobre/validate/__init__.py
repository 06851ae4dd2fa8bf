"""Clinical validation: metrics with confidence intervals, site effects, subgroups, calibration,
triage operating points, lesion-wise detection, and HTML/JSON reports.

The entry point is :func:`evaluate` (``sobre evaluate`` on the command line); every analysis is
also a plain function of arrays. Masks are :class:`sobre.Image` s (:func:`read_mask`), resampled with
:func:`sobre.image.resample`; the settings are a :class:`sobre.base.Config` (:class:`EvaluationSettings`). The predictions-file format is documented in
``docs/validate.md`` and in :mod:`sobre.validate._predictions`.

Examples
--------
>>> import numpy as np
>>> from sobre.validate import binary_metrics
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 200).astype(bool)
>>> s = rng.normal(size=200) + y
>>> res = binary_metrics(y, s, threshold=0.5, n_resamples=500)
>>> 0.5 < res.metrics["auc"].value < 1
True
"""

from sobre.validate._calibration import (
    CalibrationResult,
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)
from sobre.validate._classification import (
    AUCKernel,
    ClassificationResult,
    auc,
    auc_ci,
    auc_statistic,
    binary_metrics,
    multiclass_metrics,
    roc_curve_band,
)
from sobre.validate._delong import DeLongTest, delong_auc, delong_covariance, delong_test
from sobre.validate._detection import (
    CaseDetections,
    DetectionResult,
    detect_case,
    detection_metrics,
    lesions_from_mask,
    match_candidates,
)
from sobre.validate._errors import MaskGeometryError, MaskReadError, PredictionsError, SingleClassError
from sobre.validate._estimate import Estimate, bootstrap, bootstrap_weights, interval_from_replicates
from sobre.validate._evaluate import Evaluation, EvaluationSettings, evaluate
from sobre.validate._masks import check_same_grid, mask_voxels, read_mask
from sobre.validate._predictions import Predictions, read_predictions
from sobre.validate._regression import RegressionResult, regression_metrics
from sobre.validate._report import render_html, write_report
from sobre.validate._segmentation import SegmentationResult, segmentation_metrics
from sobre.validate._site import (
    CombatResult,
    LeaveOneSiteOutResult,
    SiteProbeResult,
    combat_cross_validated,
    label_site_dependence,
    leave_one_site_out,
    site_probe,
)
from sobre.validate._subgroups import age_bands, subgroup_analysis
from sobre.validate._surface import SegmentationScores, hd95, segmentation_scores, surface_distances
from sobre.validate._triage import TriageResult, threshold_for_sensitivity, threshold_youden, triage_operating_point

__all__ = [
    # core
    "Estimate", "bootstrap", "bootstrap_weights", "interval_from_replicates",
    "evaluate", "Evaluation", "EvaluationSettings", "read_predictions", "Predictions",
    "write_report", "render_html",
    # classification / regression
    "AUCKernel", "auc", "auc_ci", "auc_statistic", "binary_metrics", "multiclass_metrics", "roc_curve_band",
    "ClassificationResult",
    "delong_auc", "delong_covariance", "delong_test", "DeLongTest",
    "regression_metrics", "RegressionResult",
    # segmentation / detection
    "segmentation_scores", "SegmentationScores", "surface_distances", "hd95", "segmentation_metrics",
    "SegmentationResult", "read_mask", "check_same_grid", "mask_voxels",
    "CaseDetections", "match_candidates", "lesions_from_mask", "detect_case", "detection_metrics",
    "DetectionResult",
    # calibration / triage
    "reliability_diagram", "expected_calibration_error", "brier_score", "fit_temperature", "apply_temperature",
    "calibration_report", "CalibrationResult",
    "threshold_for_sensitivity", "threshold_youden", "triage_operating_point", "TriageResult",
    # site effects / subgroups
    "site_probe", "SiteProbeResult", "leave_one_site_out", "LeaveOneSiteOutResult", "combat_cross_validated",
    "CombatResult", "label_site_dependence", "subgroup_analysis", "age_bands",
    # errors
    "PredictionsError", "SingleClassError", "MaskGeometryError", "MaskReadError",
]

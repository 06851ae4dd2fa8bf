"""``sobre evaluate RUN_OR_PREDICTIONS``: validation report of a predictions file or run folder."""

from __future__ import annotations

import json
import sys

from sobre.cli._common import add_scheduler_arg, open_compute_of


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="validate predictions: metrics with CIs, subgroups, site effects, calibration, report",
        description="Evaluate a predictions file (CSV/Parquet, one row per subject: subject_id, label, score or "
                    "score_<class>, or mask_path/pred_path; optional split, site, sex, age, feat_*, stat_*) or a run "
                    "folder holding predictions.csv (+ run.json). See docs/validate.md.",
    )
    p.add_argument("source", metavar="RUN_OR_PREDICTIONS", help="predictions file, or run folder")
    p.add_argument("--by", help="comma-separated grouping columns (default: site,sex,age_band,manufacturer "
                                "where present)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    p.add_argument("--ci", choices=["bca", "percentile"], default="bca", help="interval method (default bca)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", choices=["binary", "multiclass", "regression", "segmentation", "detection"],
                   help="override the task inferred from the columns")
    p.add_argument("--positive", help="positive class of a binary label (when not 0/1)")
    p.add_argument("--threshold", type=float,
                   help="operating threshold (score >= threshold is positive); default 0.5 for probabilities; "
                        "scores outside [0, 1] get the Youden-optimal threshold of the validation rows, or no "
                        "threshold-based metric without validation rows")
    p.add_argument("--target-sensitivity", type=float, default=0.99,
                   help="triage operating point, chosen on validation rows (default 0.99)")
    p.add_argument("--compare", metavar="COLUMN", help="second score column to compare by DeLong's test")
    p.add_argument("--resample", action="store_true",
                   help="resample predicted masks onto the reference grid instead of refusing a mismatch")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                   help="normalised surface Dice tolerance in mm (default 1)")
    p.add_argument("--empty", choices=["diagonal", "nan"], default="diagonal",
                   help="distance metrics when exactly one mask is empty (default: image diagonal)")
    p.add_argument("--detection-threshold", type=float, default=0.5,
                   help="operating threshold of lesion detection (default 0.5)")
    p.add_argument("--no-site", action="store_true", help="skip the site probe / leave-one-site-out / ComBat analyses")
    p.add_argument("--out", metavar="DIR", help="write report.html and report.json into DIR")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    add_scheduler_arg(p)
    p.set_defaults(func=_evaluate)


def _evaluate(ns) -> int:
    from sobre.base import use_compute, validate_config
    from sobre.validate import EvaluationSettings, evaluate

    by = None if ns.by is None else tuple(x.strip() for x in ns.by.split(",") if x.strip())
    settings = validate_config(dict(
        by=by, n_bootstrap=ns.bootstrap, ci_method=ns.ci, level=ns.level, seed=ns.seed, threshold=ns.threshold,
        target_sensitivity=ns.target_sensitivity, compare=ns.compare, task=ns.task, positive=ns.positive,
        resample_masks=ns.resample, nsd_tolerance_mm=ns.nsd_tolerance, empty_distance=ns.empty,
        detection_threshold=ns.detection_threshold, site_analysis=not ns.no_site,
    ), EvaluationSettings)
    with open_compute_of(ns) as compute, use_compute(compute):  # large bootstraps go to a cluster
        ev = evaluate(ns.source, settings)
    if ns.out:
        html_path, json_path = ev.write(ns.out)
    for q in ev.problems:  # what changes how the numbers read (no default threshold, ...) is said on stderr too
        if q.level in ("warning", "error"):
            print(f"warning: {q.message}" + (f". {q.fix}" if q.fix else ""), file=sys.stderr)
    if ns.json:
        print(json.dumps(ev.to_dict(), indent=2, default=str))
    else:
        print(ev.summary())
        if ns.out:
            print(f"report: {html_path}\njson:   {json_path}")
    sys.stdout.flush()
    return 0

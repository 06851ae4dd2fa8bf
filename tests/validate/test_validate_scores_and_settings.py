"""Scores that are not probabilities get no silent threshold; a label typo is named by line; settings are checked."""

import json

import numpy as np
import pandas as pd
import pytest

from sobre.cli import main
from sobre.errors import ConfigError
from sobre.validate import (
    EvaluationSettings,
    PredictionsError,
    evaluate,
    read_predictions,
    threshold_youden,
)
from sobre.validate._evaluate import THRESHOLD_METRICS


def rows(n=80, seed=0, scale=100.0, validation=0.0):
    """Binary predictions with scores from 0 to ``scale`` (a 0-100 rating by default)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    score = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1) * scale
    split = np.where(rng.random(n) < validation, "validation", "test")
    return pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)], "label": y, "score": score, "split": split})


def write(tmp_path, df, name="predictions.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_ratings_from_0_to_100_get_no_threshold_metric_without_validation_rows(tmp_path):
    path = write(tmp_path, rows())
    ev = evaluate(path, n_bootstrap=0)
    assert set(ev.metrics) == {"auc"} and not set(THRESHOLD_METRICS) & set(ev.metrics)
    assert ev.details["threshold"] is None
    warn = [q for q in ev.problems if q.code == "no-threshold"]
    assert len(warn) == 1 and warn[0].level == "warning"
    assert "scores are not probabilities (they range from 0 to 100) and no threshold was given" in warn[0].message
    assert any("not computed" in x for x in ev.limits)
    report = ev.to_dict()
    assert report["details"]["threshold"] is None and "sensitivity" not in report["metrics"]


def test_logits_are_not_thresholded_at_zero_silently(tmp_path):
    path = write(tmp_path, rows(scale=1.0).assign(score=lambda d: 8 * d["score"] - 4))  # logits, -4 to 4
    ev = evaluate(path, n_bootstrap=0)
    assert set(ev.metrics) == {"auc"} and ev.details["threshold"] is None


def test_threshold_chosen_on_validation_rows_when_there_are_some(tmp_path):
    df = rows(n=200, validation=0.4)
    path = write(tmp_path, df)
    ev = evaluate(path, n_bootstrap=0)
    val = df[df["split"] == "validation"]
    expected = threshold_youden(val["label"].to_numpy() == 1, val["score"].to_numpy())
    assert ev.details["threshold"] == pytest.approx(expected)
    assert ev.details["threshold_source"] == "chosen on validation rows (maximum Youden J)"
    assert {"sensitivity", "specificity", "auc"} <= set(ev.metrics)
    test = df[df["split"] == "test"]
    sens = np.mean(test.loc[test["label"] == 1, "score"] >= expected)
    assert ev.metrics["sensitivity"].value == pytest.approx(sens)
    assert any(q.code == "threshold-from-validation" for q in ev.problems)


def test_a_given_threshold_is_used_as_is_and_probabilities_default_to_half(tmp_path):
    path = write(tmp_path, rows())
    ev = evaluate(path, n_bootstrap=0, threshold=50)
    assert ev.details["threshold"] == 50 and ev.details["threshold_source"] == "given"
    assert not [q for q in ev.problems if q.level == "warning"]
    probs = write(tmp_path, rows(scale=1.0), "p.csv")
    ev = evaluate(probs, n_bootstrap=0)
    assert ev.details["threshold"] == 0.5 and "sensitivity" in ev.metrics


def test_cli_says_so_on_stderr_and_in_the_report(tmp_path, capsys):
    path = write(tmp_path, rows())
    rc = main(["evaluate", str(path), "--bootstrap", "0", "--no-site", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "warning: scores are not probabilities (they range from 0 to 100)" in err and "--threshold" in err
    metric_rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("  -")]
    assert "threshold:" in metric_rows and "sensitivity" not in metric_rows and "threshold: none" in out
    assert "No operating threshold" in (tmp_path / "r" / "report.html").read_text()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["details"]["threshold"] is None
    rc = main(["evaluate", str(path), "--bootstrap", "0", "--no-site", "--threshold", "50"])
    out, err = capsys.readouterr()
    assert rc == 0 and "warning" not in err and "threshold: 50 (given)" in out and "sensitivity" in out


def test_threshold_youden():
    pos = np.array([0, 0, 1, 0, 1, 1], bool)
    assert threshold_youden(pos, np.array([10, 20, 30, 40, 50, 60.0])) == 30.0
    assert threshold_youden(pos, np.array([1, 1, 2, 1, 2, 2.0])) == 2.0  # perfect separation
    assert np.isnan(threshold_youden(np.ones(3, bool), np.arange(3.0)))


def test_one_mistyped_label_is_named_by_line(tmp_path, capsys):
    df = rows(scale=1.0)
    df["label"] = df["label"].astype(object)
    df.loc[7, "label"] = "1x"
    path = write(tmp_path, df)
    with pytest.raises(PredictionsError, match=r"column 'label' holds numbers but for a few values that are not "
                                               r"numbers.*found '1x' on line 9\)"):
        read_predictions(path)
    rc = main(["evaluate", str(path), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "'1x' on line 9" in err and "multi-class" not in err and "Traceback" not in err
    # text classes with one typo: the line is named too
    df = rows(scale=1.0)
    df["label"] = np.where(df["label"] == 1, "patient", "control").astype(object)
    df.loc[3, "label"] = "patinet"
    path = write(tmp_path, df, "text.csv")
    with pytest.raises(PredictionsError, match=r"two classes and a few rows with other values.*expected 'control' or "
                                               r"'patient'.*found 'patinet' on line 5"):
        read_predictions(path)
    with pytest.raises(PredictionsError, match=r"more than two values.*'patinet' on line 5"):
        read_predictions(path, positive="patient")


def test_settings_are_a_config(tmp_path):
    path = write(tmp_path, rows(scale=1.0))
    with pytest.raises(ConfigError, match=r"unknown key 'n_bootsrap'; did you mean 'n_bootstrap'\?.*docs/validate\.md"):
        evaluate(path, n_bootsrap=10)
    with pytest.raises(ConfigError, match=r"wrong value for 'level' \(expected a confidence level between 0\.5 and 1 "
                                          r"\(e\.g\. 0\.95\); found 1\.5\)"):
        evaluate(path, level=1.5)
    with pytest.raises(ConfigError, match=r"wrong value for 'ci_method' \(expected 'bca' or 'percentile'; found "
                                          r"'student'\)"):
        evaluate(path, ci_method="student")
    with pytest.raises(ConfigError, match=r"wrong value for 'threshold' \(expected a finite number; found nan\)"):
        evaluate(path, threshold=float("nan"))
    with pytest.raises(ConfigError, match=r"wrong value for 'size_bins' \(expected size_bins in increasing order"):
        evaluate(path, size_bins=(20, 10))
    s = EvaluationSettings(by=["site"], n_bootstrap=0)
    assert s.by == ("site",) and s.to_dict()["by"] == ["site"] and "expected_subjects" not in s.to_dict()


@pytest.mark.parametrize("args, message", [
    (["--level", "1.5"], "wrong value for 'level'"),
    (["--bootstrap", "50"], "wrong value for 'n_bootstrap' (expected 0 (no intervals) or at least 100"),
    (["--target-sensitivity", "0"], "wrong value for 'target_sensitivity' (expected a sensitivity in (0, 1]"),
    (["--seed", "-1"], "wrong value for 'seed' (expected greater than or equal to 0; found -1)"),
    (["--threshold", "inf"], "wrong value for 'threshold' (expected a finite number; found inf)"),
])
def test_cli_settings_errors(tmp_path, capsys, args, message):
    path = write(tmp_path, rows(scale=1.0))
    out = tmp_path / "r"
    rc = main(["evaluate", str(path), "--out", str(out)] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and not out.exists()

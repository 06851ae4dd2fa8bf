"""``sobre evaluate`` end to end: every task, the HTML/JSON report, and bad input at the command line."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from sobre.cli import main
from sobre.validate import evaluate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder: predictions.csv with validation/test split, sites, features; run.json."""
    d = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    n = 400
    site = rng.choice(["A", "B", "C"], n)
    y = rng.integers(0, 2, n)
    z = rng.normal(size=n) + 1.6 * y - 1.2 * (site == "C") * y  # the model is weak at site C
    k = pd.factorize(site, sort=True)[0]
    feats = rng.normal(size=(n, 4)) + 0.5 * y[:, None] + np.array([0.0, 1.5, -1.5])[k][:, None]
    df = pd.DataFrame({
        "subject_id": [f"sub-{i:03d}" for i in range(n)], "label": y, "score": 1 / (1 + np.exp(-z)),
        "baseline": 1 / (1 + np.exp(-(rng.normal(size=n) + 0.5 * y))),
        "site": site, "sex": rng.choice(["F", "M"], n), "age": rng.uniform(20, 85, n),
        "split": np.where(rng.random(n) < 0.35, "validation", "test"),
    })
    for j in range(4):
        df[f"feat_{j}"] = feats[:, j]
    df.to_csv(d / "predictions.csv", index=False)
    (d / "run.json").write_text(json.dumps({
        "run_id": "run-7", "dataset_version": "sha256:0f3c", "simulated": True, "config": {"epochs": 3},
        "label_efficiency": [{"n_labels": n_, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "metric": "auc"}
                             for n_, v in ((10, 0.62), (40, 0.71), (160, 0.78))]}))
    return d


def test_cli_binary_report(run_dir, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["evaluate", str(run_dir), "--bootstrap", "200", "--compare", "baseline", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "auc" in text and "report:" in text
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "binary"
    assert report["data"] == {"dataset_version": "sha256:0f3c", "simulated": True, "description": None}
    assert report["model"]["run_id"] == "run-7" and report["model"]["config"] == {"epochs": 3}
    auc = report["metrics"]["auc"]
    assert auc["ci_low"] < auc["value"] < auc["ci_high"] and auc["method"] == "bca"
    assert report["comparison"]["p_value"] < 0.05  # the model beats the baseline
    assert report["triage"]["target_sensitivity"] == 0.99
    assert report["calibration"]["temperature"] is not None
    site_c = [r for r in report["subgroups"]["site"]["levels"] if r["level"] == "C"][0]
    assert "auc" in site_c["flags"]
    assert any("weak subgroup site = C" in x for x in report["limits"])
    assert any("simulated" in x for x in report["limits"])
    assert any("site can be predicted from the model features" in x for x in report["limits"])
    combat = report["site"]["combat"]
    before = combat["site_probe_before"]["balanced_accuracy"]["value"]
    assert combat["site_probe_after"]["balanced_accuracy"]["value"] < before
    assert set(report["subgroups"]) == {"site", "sex", "age_band"}
    html = (out / "report.html").read_text()
    # self-contained: every image embedded, nothing fetched
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 5
    assert not re.search(r'(src|href)="https?://', html)
    for alt in ("ROC curve", "reliability diagram", "forest plot", "site probe", "label efficiency"):
        assert f'alt="{alt}"' in html
    assert "sha256:0f3c" in html and "run-7" in html


def test_cli_json_stdout(run_dir, capsys):
    rc = main(["evaluate", str(run_dir / "predictions.csv"), "--bootstrap", "0", "--by", "sex", "--no-site",
               "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["subgroups"]) == ["sex"]
    assert report["metrics"]["auc"]["ci_low"] is None  # no bootstrap asked
    assert report["input"]["test_subjects"] + report["input"]["validation_subjects"] == 400


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    pd.DataFrame({"subject_id": ["a", "b", "c"], "label": [1, 1, 1], "score": [0.2, 0.5, 0.9]}).to_csv(
        tmp_path / "p.csv", index=False)
    rc = main(["evaluate", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "p.csv" in err and "AUC" in err and "Traceback" not in err
    rc = main(["evaluate", str(tmp_path / "missing.csv")])
    assert rc == 2 and "predictions file not found" in capsys.readouterr().err


def test_regression_and_multiclass(tmp_path):
    rng = np.random.default_rng(1)
    n = 150
    age = rng.uniform(20, 80, n)
    pd.DataFrame({"subject_id": range(n), "label": age, "score": age + rng.normal(1, 4, n),
                  "site": rng.choice(["A", "B"], n)}).to_csv(tmp_path / "reg.csv", index=False)
    ev = evaluate(tmp_path / "reg.csv", n_bootstrap=200)
    assert ev.task == "regression"
    assert ev.metrics["mae"].value == pytest.approx(np.mean(np.abs(rng.normal(1, 4, 10_000))), rel=0.25)
    assert ev.metrics["bias"].ci_low < 1.8 and ev.metrics["pearson_r"].value > 0.9
    assert set(r["level"] for r in ev.subgroups["site"]["levels"]) == {"A", "B"}
    classes = ["normal", "nodule", "effusion"]
    lab = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), lab] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame({"subject_id": range(n), "label": [classes[i] for i in lab]})
    for j, c in enumerate(classes):
        df[f"score_{c}"] = p[:, j]
    df.to_csv(tmp_path / "mc.csv", index=False)
    ev = evaluate(tmp_path / "mc.csv", n_bootstrap=200)
    assert ev.task == "multiclass" and ev.predictions.classes == classes
    assert 0.7 < ev.metrics["macro_auc"].value < 1 and "auc[nodule]" in ev.metrics
    assert ev.calibration is not None
    html, js = ev.write(tmp_path / "out")
    assert json.loads(js.read_text())["classes"] == classes


def _nifti(path, arr, spacing):
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr.astype(np.float32 if arr.dtype.kind == "f" else np.uint8),
                             np.diag(list(spacing) + [1.0])), str(path))


def test_segmentation_and_detection_from_masks(tmp_path, capsys):
    g = np.indices((40, 40, 16), dtype=float)
    rows = []
    for i, shift in enumerate([0, 1, 2, 3]):
        ref = ((g[0] - 20) ** 2 + (g[1] - 20) ** 2) / 100 + (g[2] - 8) ** 2 / 16 <= 1
        prob = np.where(((g[0] - 20 - shift) ** 2 + (g[1] - 20) ** 2) / 100 + (g[2] - 8) ** 2 / 16 <= 1, 0.9, 0.0)
        prob[2:4, 2:4, 2:4] = 0.6 if i % 2 else 0.0  # a false positive in half the cases
        _nifti(tmp_path / f"ref{i}.nii.gz", ref, (0.9, 0.9, 2.0))
        _nifti(tmp_path / f"prob{i}.nii.gz", prob.astype(np.float32), (0.9, 0.9, 2.0))
        rows.append({"subject_id": f"c{i}", "mask_path": f"ref{i}.nii.gz", "pred_path": f"prob{i}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "seg.csv", index=False)
    rc = main(["evaluate", str(tmp_path / "seg.csv"), "--bootstrap", "200", "--out", str(tmp_path / "seg")])
    assert rc == 0
    rep = json.loads((tmp_path / "seg" / "report.json").read_text())
    assert rep["task"] == "segmentation"
    dice = [c["dice"] for c in rep["details"]["per_case"]]
    assert dice[0] == pytest.approx(1.0) and dice[0] > dice[1] > dice[2] > dice[3] > 0.7
    assert rep["details"]["per_case"][0]["hd95"] == 0.0
    assert "nsd_tolerance_mm" in rep["details"]["conventions"]
    capsys.readouterr()
    rc = main(["evaluate", str(tmp_path / "seg.csv"), "--task", "detection", "--bootstrap", "200", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["metrics"]["sensitivity"]["value"] == 1.0
    assert rep["metrics"]["fp_per_case"]["value"] == pytest.approx(0.5)
    assert rep["details"]["counts"]["lesions"] == 4


def test_brain_age_site_analysis_never_uses_the_label_as_combat_covariate(tmp_path):
    rng = np.random.default_rng(4)
    n = 180
    age = rng.uniform(20, 80, n)
    site = rng.choice(["A", "B", "C"], n)
    k = pd.factorize(site, sort=True)[0]
    df = pd.DataFrame({"subject_id": range(n), "label": age, "age": age, "score": age + rng.normal(0, 5, n),
                       "site": site, "sex": rng.choice(["F", "M"], n)})
    for j in range(3):
        df[f"feat_{j}"] = 0.05 * age + np.array([0.0, 1.0, -1.0])[k] + rng.normal(size=n)
    df.to_csv(tmp_path / "age.csv", index=False)
    ev = evaluate(tmp_path / "age.csv", n_bootstrap=200)
    combat = ev.site["combat"]
    assert combat.covariates == ["sex=M"]  # age (= the label) left out
    assert any("equals the label" in q.message for q in ev.problems)
    assert combat.task_metric == "mae"
    assert ev.site["leave_one_site_out"].metric == "mae"
    assert ev.site["site_probe"]["model features"].detectable

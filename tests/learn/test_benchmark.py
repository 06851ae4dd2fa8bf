"""The label-efficiency benchmark end to end on tiny in-memory cohorts."""

from __future__ import annotations

import json

import pytest

from sobre.learn._benchmark import label_efficiency, throughput
from sobre.learn._config import ModelConfig

from .helpers import bench_cohorts


def bench_config(**over):
    task = {"kind": "binary", "label": "diagnosis", "positive": "patient"}
    cfg = {"seed": 0, "name": "tiny", "pretrain_data": {"dataset": "healthy"},
           "model": {"width": 4, "depth": 2},
           "yaware": {"kind": "yaware", "variables": ["age"], "bandwidth": [5.0]},
           "pretrain_optim": {"epochs": 1, "batch_size": 16},
           "pretrain_augment": [{"kind": "flip", "prob": 0.5, "axes": [0]}],
           "pretrain_monitor": {"val_fraction": 0.2, "regress": ["age"], "classify": []},
           "scratch_optim": {"epochs": 2, "batch_size": 8},
           "finetune_optim": {"epochs": 2, "batch_size": 8},
           "augment": [],
           "baseline": {"grid": [2, 2, 2]},
           "n_labels": [12, 24], "repeats": 2,
           "methods": ["scratch", "simclr_probe", "yaware_probe", "yaware_finetune", "classical"],
           "targets": [{"name": "disease", "data": {"dataset": "target"}, "task": task, "test_size": 30,
                        "covariates": ["age"]},
                       {"name": "brain-age", "data": {"dataset": "target"},
                        "task": {"kind": "regression", "label": "age"}, "test_size": 30, "n_labels": [24],
                        "methods": ["yaware_probe", "classical"]}],
           "runtime": {"progress": False}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def cohorts():
    pre, tgt = bench_cohorts()
    return pre, {"disease": tgt, "brain-age": tgt}


def test_label_efficiency_end_to_end(cohorts, tmp_path):
    pre, targets = cohorts
    lines = []
    res = label_efficiency(bench_config(), pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path,
                           log=lines.append)
    run = res.run
    assert run.record["status"] == "completed" and run.record["kind"] == "benchmark"
    for name in ("results.json", "results.md", "label_efficiency.png"):
        assert (run.path / name).exists() and name in run.record["artifacts"]
    data = json.loads((run.path / "results.json").read_text())
    d = data["targets"]["disease"]
    assert d["metric"] == "auc" and d["n_test"] in (29, 30, 31) and d["covariates"] == ["age"]
    assert set(d["summary"]) == {"scratch", "simclr_probe", "yaware_probe", "yaware_finetune", "classical"}
    for m, per in d["summary"].items():
        assert set(per) == {"12", "24"} and all(per[n]["repeats"] == 2 for n in per), m
    # every method of a (N, repeat) cell saw the same test set; subsets differ between repeats
    assert len(d["records"]) == 2 * 2 * 5
    ba = data["targets"]["brain-age"]
    assert ba["metric"] == "mae" and set(ba["summary"]) == {"yaware_probe", "classical"}
    assert set(data["throughput"]) >= {"fp32", "bf16", "native_bf16"}
    assert data["pretraining"]["yaware"]["reused"] is False
    md = (run.path / "results.md").read_text()
    assert "| y-aware + probe |" in md and "N = 12" in md and "same held-out test set" in md
    assert "also receives the covariate(s) age" in md
    assert any("N=24 repeat 1" in ln for ln in lines)
    # pretraining with the same settings on the same data is reused
    again = label_efficiency(bench_config(n_labels=[12], repeats=1, methods=["yaware_probe"],
                                          targets=bench_config()["targets"][:1]),
                             pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path, log=None)
    assert again["pretraining"]["yaware"]["reused"] is True
    assert again["pretraining"]["yaware"]["run_id"] == data["pretraining"]["yaware"]["run_id"]


def test_n_larger_than_the_pool_is_skipped_and_said(cohorts, tmp_path):
    pre, targets = cohorts
    res = label_efficiency(bench_config(n_labels=[12, 500], repeats=1, methods=["classical"],
                                        targets=bench_config()["targets"][:1]),
                           pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path, log=None)
    d = res["targets"]["disease"]
    assert d["skipped"][0]["n"] == 500 and "outside the test set" in d["skipped"][0]["reason"]
    assert "Skipped: N=500" in (res.run.path / "results.md").read_text()


def test_throughput_reports_both_precisions():
    out = throughput(ModelConfig(width=4, depth=2), (16, 16, 16), batch_size=4, repeats=1)
    for p in ("fp32", "bf16"):
        assert out[p]["train_samples_per_s"] > 0 and out[p]["inference_samples_per_s"] > 0
    assert isinstance(out["native_bf16"], bool)

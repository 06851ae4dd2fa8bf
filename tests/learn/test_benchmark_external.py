"""The label-efficiency benchmark's external test set (e.g. an anatomy shift), on tiny in-memory cohorts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sobre.errors import ConfigError, InputError
from sobre.learn import Cohort
from sobre.learn._benchmark import label_efficiency
from sobre.learn._config import LabelEfficiencyConfig

from .helpers import bench_cohorts, blob_arrays
from .test_benchmark import bench_config

TASK = {"kind": "binary", "label": "diagnosis", "positive": "patient"}


def external_config(**over):
    target = {"name": "disease", "data": {"dataset": "target"}, "task": TASK, "test_size": 30, "covariates": ["age"],
              "external_test": {"name": "shifted", "data": {"dataset": "shifted"}}}
    return bench_config(**{"n_labels": [24], "repeats": 2, "methods": ["scratch", "yaware_probe", "classical"],
                           "targets": [target], **over})


@pytest.fixture(scope="module")
def cohorts():
    pre, tgt = bench_cohorts()
    # other subjects, every image shifted by 3 voxels and brighter: a distribution the models never saw
    imgs, meta, _ = blob_arrays(40, seed=3)
    imgs = np.roll(imgs, 3, axis=1) * 1.3
    for m in meta:
        m["subject_id"] = m["subject_id"].replace("sub-", "sub-X")
    ext = Cohort.from_arrays(imgs, meta, name="shifted")
    return pre, tgt, ext


def test_probe_and_baseline_arms_are_scored_on_the_external_set(cohorts, tmp_path):
    pre, tgt, ext = cohorts
    lines = []
    res = label_efficiency(external_config(), pretrain_cohort=pre,
                           target_cohorts={"disease": tgt, "disease/external": ext}, runs_dir=tmp_path,
                           log=lines.append)
    d = json.loads((res.run.path / "results.json").read_text())["targets"]["disease"]
    e = d["external_test"]
    assert e["name"] == "shifted" and e["dataset"] == "shifted" and e["n_subjects"] == 40
    assert set(e["summary"]) == {"yaware_probe", "classical"}
    assert set(e["not_computed"]) == {"scratch"}
    for m in ("yaware_probe", "classical"):
        recs = [r for r in d["records"] if r["method"] == m]
        assert len(recs) == 2 and all(0.0 <= r["external_auc"] <= 1.0 for r in recs)
        c = e["summary"][m]["24"]
        # the loss is internal minus external AUC of the same fitted model, averaged over repeats
        assert c["loss_mean"] == pytest.approx(np.mean([r["auc"] - r["external_auc"] for r in recs]))
        assert c["mean"] == pytest.approx(np.mean([r["external_auc"] for r in recs]))
        assert c["internal_mean"] == pytest.approx(d["summary"][m]["24"]["mean"])
    assert all("external_auc" not in r for r in d["records"] if r["method"] == "scratch")
    md = (res.run.path / "results.md").read_text()
    assert "External test set 'shifted'" in md and "| y-aware + probe |" in md
    assert "Not scored on the external set: from scratch" in md
    assert any("external test set 'shifted'" in ln for ln in lines)


def test_the_internal_results_do_not_change_with_an_external_set(cohorts, tmp_path):
    pre, tgt, ext = cohorts
    cfg = external_config(methods=["yaware_probe", "classical"])
    with_ext = label_efficiency(cfg, pretrain_cohort=pre, target_cohorts={"disease": tgt, "disease/external": ext},
                                runs_dir=tmp_path, log=None)["targets"]["disease"]
    cfg["targets"][0].pop("external_test")
    without = label_efficiency(cfg, pretrain_cohort=pre, target_cohorts={"disease": tgt}, runs_dir=tmp_path,
                               log=None)["targets"]["disease"]
    assert without["external_test"] is None
    assert [r["auc"] for r in with_ext["records"]] == [r["auc"] for r in without["records"]]


def test_an_external_set_sharing_subjects_with_the_target_is_refused(cohorts, tmp_path):
    pre, tgt, _ = cohorts
    with pytest.raises(InputError) as err:
        label_efficiency(external_config(methods=["classical"]), pretrain_cohort=pre,
                         target_cohorts={"disease": tgt, "disease/external": tgt}, runs_dir=tmp_path, log=None)
    msg = str(err.value)
    assert "targets.disease.external_test" in msg and "also in the target" in msg


def test_external_test_config_is_checked():
    cfg = external_config()
    cfg["targets"][0]["external_test"] = {"name": "shifted", "dataset": "shifted"}
    with pytest.raises((ConfigError, ValueError)) as err:
        LabelEfficiencyConfig.model_validate(cfg)
    assert "data" in str(err.value)

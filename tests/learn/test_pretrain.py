"""Contrastive pretraining (SimCLR, y-aware, nuisance), transfer by fine-tuning and linear probe."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from sobre.errors import ConfigError, InputError
from sobre.learn import Cohort
from sobre.learn._pretrain import pretrain
from sobre.learn._probe import probe
from sobre.learn._train import train

from .helpers import tiny_train_config


def pre_config(kind="yaware", **over):
    cfg = {"seed": 0, "data": {"dataset": "blobs"},
           "method": {"kind": kind, **({"variables": ["age"], "bandwidth": [5.0]} if kind == "yaware" else {})},
           "model": {"width": 4, "depth": 2}, "optim": {"epochs": 3, "batch_size": 16, "lr": 3e-3},
           "augment": [{"kind": "flip", "prob": 0.5, "axes": [0]}, {"kind": "noise", "prob": 0.5, "std": 0.1},
                       {"kind": "intensity", "prob": 0.5}],
           "monitor": {"val_fraction": 0.25, "every": 3, "regress": ["age"], "classify": ["site"]},
           "runtime": {"progress": False}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("pre-runs")


@pytest.fixture(scope="module")
def yaware_run(blobs, runs):
    return pretrain(pre_config(), cohort=blobs, runs_dir=runs)


def test_yaware_pretraining_records_an_encoder(yaware_run):
    r = yaware_run.run.record
    assert r["status"] == "completed" and r["kind"] == "pretrain"
    assert (yaware_run.run.path / "encoder.pt").exists() and "encoder.pt" in r["artifacts"]
    st = torch.load(yaware_run.encoder_path, weights_only=False)
    assert st["spec"] == {"backbone": "compact3d", "width": 4, "depth": 2, "norm": "batch", "spatial_dims": 3,
                          "in_channels": 1}
    assert st["method"]["kind"] == "yaware" and st["dataset"]["content_hash"] == r["dataset"]["content_hash"]
    assert len(r["epochs"]) == 3 and all(e["train_loss"] > 0 for e in r["epochs"])
    m = yaware_run.metrics
    assert {"monitor_age_mae", "monitor_site_balanced_accuracy", "monitor_site_chance", "train_samples_per_s"} <= set(m)
    assert 0 < m["monitor_age_mae"] < 30
    assert not set(yaware_run.train_subjects) & set(yaware_run.monitor_subjects)
    assert len(yaware_run.monitor_subjects) == 24


def test_simclr_and_nuisance_variants(blobs, runs):
    s = pretrain(pre_config("simclr", optim={"epochs": 1}), cohort=blobs, record=False)
    assert s.run is None and s.metrics["monitor_age_mae"] > 0
    c = pretrain(pre_config(method={"nuisance": {"variable": "site", "method": "conditional"}}, optim={"epochs": 1}),
                 cohort=blobs, record=False)
    assert "monitor_site_balanced_accuracy" in c.metrics
    a = pretrain(pre_config("simclr", method={"nuisance": {"variable": "site", "method": "adversarial",
                                                           "weight": 0.5}}, optim={"epochs": 1}),
                 cohort=blobs, runs_dir=runs)
    assert "train_nuisance_ce" in a.run.record["epochs"][0]


def test_nuisance_both_is_conditional_contrast_and_adversarial_head(blobs, monkeypatch):
    import sobre.learn._pretrain as P

    seen = []
    real = P.y_aware_infonce

    def spy(*a, groups=None, **k):
        seen.append(groups)
        return real(*a, groups=groups, **k)

    monkeypatch.setattr(P, "y_aware_infonce", spy)
    res = pretrain(pre_config(method={"nuisance": {"variable": "site", "method": "both", "weight": 0.5}},
                              optim={"epochs": 1}, monitor={"classify": []}), cohort=blobs, record=False)
    assert seen and all(g is not None and len(g) == 16 for g in seen)  # contrast within the site
    assert res.history[0]["train_nuisance_ce"] > 0  # and the gradient-reversal site classifier


def test_finetune_from_the_pretrained_encoder(blobs, runs, yaware_run):
    cfg = tiny_train_config(model={"init_from": yaware_run.run.run_id, "encoder_lr_scale": 0.1},
                            optim={"epochs": 2})
    res = train(cfg, cohort=blobs, runs_dir=runs)
    init = res.run.record["init"]
    assert init["run_id"] == yaware_run.run.run_id
    assert init["sha256"] == yaware_run.run.record["artifacts"]["encoder.pt"]["sha256"]
    # the encoder really started from the pretrained weights: with lr 0 nothing moves
    frozen = tiny_train_config(model={"init_from": str(yaware_run.encoder_path), "freeze_encoder": True},
                               optim={"epochs": 1})
    res2 = train(frozen, cohort=blobs, record=False, runs_dir=runs)
    st = torch.load(yaware_run.encoder_path, weights_only=False)["encoder"]
    for k, v in res2.models[0][0].encoder.state_dict().items():
        assert torch.equal(v, st[k]), k


def test_encoder_must_match_the_model(blobs, runs, yaware_run):
    cfg = tiny_train_config(model={"init_from": yaware_run.run.run_id, "width": 8})
    with pytest.raises(ConfigError, match="pretrained encoder does not match model.width") as e:
        train(cfg, cohort=blobs, runs_dir=runs, record=False)
    assert "width = 4" in e.value.fix
    with pytest.raises(ConfigError, match="model.init_from = 'nope': no such run or file"):
        train(tiny_train_config(model={"init_from": "nope"}), cohort=blobs, runs_dir=runs, record=False)


def test_linear_probe_on_frozen_features(blobs, runs, yaware_run):
    cfg = tiny_train_config(model={"init_from": yaware_run.run.run_id},
                            task={"kind": "regression", "label": "age", "positive": None})
    res = probe(cfg, cohort=blobs, runs_dir=runs)
    assert res.run.record["kind"] == "probe" and res.metrics["test"]["mae"] < 16
    p = pd.read_csv(res.run.path / "predictions.csv")
    assert set(p["split"]) == {"validation", "test"} and p["subject_id"].is_unique
    b = probe(tiny_train_config(model={"init_from": yaware_run.run.run_id}), cohort=blobs, runs_dir=runs)
    assert 0 <= b.metrics["test"]["auc"] <= 1 and "C" in b.metrics["probe"]
    with pytest.raises(ConfigError, match="needs a pretrained encoder"):
        probe(tiny_train_config(), cohort=blobs, record=False)


def test_pretraining_resume_reproduces(blobs, tmp_path):
    cfg = pre_config(optim={"epochs": 2}, monitor={"every": 1})
    full = pretrain(cfg, cohort=blobs, runs_dir=tmp_path / "a")
    part = pretrain(cfg, cohort=blobs, runs_dir=tmp_path / "b", interrupt_after=1)
    assert part.run.record["status"] == "interrupted"
    done = pretrain(None, cohort=blobs, runs_dir=tmp_path / "b", resume=part.run.run_id)
    a = torch.load(full.encoder_path, weights_only=False)["encoder"]
    b = torch.load(done.encoder_path, weights_only=False)["encoder"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert [e["epoch"] for e in done.run.record["epochs"]] == [1, 2]


def test_bad_metadata_for_pretraining(blobs):
    with pytest.raises(InputError, match="method.variables = 'agee': no such column.*did you mean 'age'"):
        pretrain(pre_config(method={"variables": ["agee"]}), cohort=blobs, record=False)
    t = blobs.table.copy()
    t.loc[[2, 5], "age"] = None
    c = Cohort.from_arrays(np.asarray(blobs.images)[:, 0], t)
    with pytest.raises(InputError, match="variable 'age' is missing or not numeric for 2 subject") as e:
        pretrain(pre_config(), cohort=c, record=False)
    assert "age != null" in e.value.fix
    with pytest.raises(InputError, match="too few images for one batch"):
        pretrain(pre_config(optim={"batch_size": 200}), cohort=blobs, record=False)

"""Supervised training: tasks, run records, predictions, determinism, resume, no test leakage, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sobre.errors import ConfigError, InputError
from sobre.learn import Cohort
from sobre.learn._runs import sha256_file
from sobre.learn._train import train

from .helpers import blob_arrays, tiny_train_config


@pytest.fixture(scope="module")
def binary_run(blobs, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_train_config(optim={"epochs": 15}, augment=[{"kind": "flip", "prob": 0.5, "axes": [0, 1, 2]}])
    return train(cfg, cohort=blobs, runs_dir=runs), cfg, runs


def test_binary_training_learns_and_writes_predictions(binary_run):
    res, _, _ = binary_run
    assert res.metrics["test"]["auc"] > 0.7, res.metrics
    p = res.predictions
    assert list(p.columns) == ["subject_id", "label", "score", "site", "sex", "age", "split"]
    assert set(p["split"]) == {"validation", "test"} and p["subject_id"].is_unique
    assert set(p["label"]) == {0, 1} and p["score"].between(0, 1).all()
    assert (p["split"] == "test").sum() == res.metrics["test"]["n_subjects"] == len(res.plan.test)
    on_disk = pd.read_csv(res.run.path / "predictions.csv", dtype={"subject_id": str})
    pd.testing.assert_frame_equal(on_disk, p.reset_index(drop=True), check_dtype=False)


def test_run_record_is_complete(binary_run):
    res, cfg, _ = binary_run
    r = json.loads((res.run.path / "run.json").read_text())
    assert r["status"] == "completed" and r["kind"] == "train" and r["seed"] == 0
    assert r["config"]["model"]["width"] == 4 and r["config"]["model"]["depth"] == 2
    assert r["config"]["optim"]["lr"] == 3e-3 and r["config"]["split"]["test_fraction"] == 0.2  # resolved defaults
    assert r["dataset"]["content_hash"] == res.run.record["dataset_hash"] and len(r["dataset"]["content_hash"]) == 64
    assert set(r["code"]) == {"sobre_version", "git_sha", "git_dirty"}
    assert r["packages"]["torch"].startswith("2.") and r["packages"]["monai"]
    assert r["runtime"]["precision"] in ("fp32", "bf16") and r["runtime"]["precision_reason"]
    assert [e["epoch"] for e in r["epochs"]] == list(range(1, len(r["epochs"]) + 1)) and len(r["epochs"]) >= 10
    assert all({"train_loss", "val_loss", "val_auc", "train_samples_per_s", "val_samples_per_s"} <= set(e)
               for e in r["epochs"])
    for rel, info in r["artifacts"].items():
        assert sha256_file(res.run.path / rel) == info["sha256"], rel
    assert {"predictions.csv", "split.csv", "checkpoints/fold0/best.pt"} <= set(r["artifacts"])
    assert r["task"] == "binary" and r["positive_label"] == 1
    assert r["expected_subjects"] == sorted(res.plan.test)
    split = pd.read_csv(res.run.path / "split.csv", dtype={"subject_id": str})
    assert split["subject_id"].is_unique and len(split) == 96


def test_predictions_are_read_by_sobre_validate(binary_run):
    from sobre.validate._predictions import read_predictions

    res, _, _ = binary_run
    p = read_predictions(res.run.path)
    assert p.task == "binary" and p.metadata["run_id"] == res.run.run_id
    assert (p.table["split"] == "test").sum() == len(res.plan.test)


def test_same_seed_same_result(blobs, binary_run):
    res, cfg, _ = binary_run
    again = train(cfg, cohort=blobs, record=False)
    pd.testing.assert_frame_equal(again.predictions, res.predictions)


def test_resume_after_interruption_reproduces_the_uninterrupted_run(blobs, tmp_path):
    cfg = tiny_train_config(optim={"epochs": 4}, augment=[{"kind": "flip", "prob": 0.5, "axes": [0]},
                                                           {"kind": "noise", "prob": 0.5, "std": 0.1}])
    full = train(cfg, cohort=blobs, runs_dir=tmp_path / "a")
    part = train(cfg, cohort=blobs, runs_dir=tmp_path / "b", interrupt_after=2)
    assert part.run.record["status"] == "interrupted" and part.metrics == {"interrupted": True}
    assert len(part.run.record["epochs"]) == 2 and "--resume" in part.run.record["resume_hint"]
    done = train(None, cohort=blobs, runs_dir=tmp_path / "b", resume=part.run.run_id)
    assert done.run.run_id == part.run.run_id and done.run.record["status"] == "completed"
    assert [e["epoch"] for e in done.run.record["epochs"]] == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(done.predictions, full.predictions)
    for a, b in zip(full.run.record["epochs"], done.run.record["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


def test_resume_refuses_a_changed_config(blobs, tmp_path):
    cfg = tiny_train_config(optim={"epochs": 2})
    part = train(cfg, cohort=blobs, runs_dir=tmp_path, interrupt_after=1)
    with pytest.raises(ConfigError, match="differs from the one the run started with"):
        train(tiny_train_config(optim={"epochs": 3}), cohort=blobs, runs_dir=tmp_path, resume=part.run.run_id)


def test_test_subjects_are_invisible_to_training(blobs, monkeypatch):
    """Training sees development subjects only, and test labels cannot change the trained model."""
    import sobre.learn._train as T

    seen = []
    real = T._fit_fold

    def spy(dev, task, tr, va, *a, **k):
        seen.append(set(dev.table["subject_id"]))
        return real(dev, task, tr, va, *a, **k)

    monkeypatch.setattr(T, "_fit_fold", spy)
    cfg = tiny_train_config(optim={"epochs": 2})
    res = train(cfg, cohort=blobs, record=False)
    assert seen and not (seen[0] & set(res.plan.test)) and seen[0] == set(res.plan.development)
    # flip the labels of the test subjects: same split (stratified on labels? then fixed by column), same model
    table = blobs.table.copy()
    table["fixed"] = np.where(table["subject_id"].isin(res.plan.test), "test", "dev")
    base = Cohort.from_arrays(np.asarray(blobs.images)[:, 0], table, name="blobs")
    flipped_t = table.copy()
    test_rows = flipped_t["subject_id"].isin(res.plan.test)
    flipped_t.loc[test_rows, "diagnosis"] = flipped_t.loc[test_rows, "diagnosis"].map(
        {"patient": "control", "control": "patient"})
    flipped = Cohort.from_arrays(np.asarray(blobs.images)[:, 0], flipped_t, name="blobs")
    cfg2 = tiny_train_config(optim={"epochs": 2}, split={"test_column": "fixed", "stratify": ["site"]})
    a = train(cfg2, cohort=base, record=False)
    b = train(cfg2, cohort=flipped, record=False)
    for (ma, _), (mb, _) in zip(a.models, b.models):
        for ta, tb in zip(ma.state_dict().values(), mb.state_dict().values()):
            assert torch.equal(ta, tb)
    va, vb = (x.predictions[x.predictions["split"] == "validation"] for x in (a, b))
    pd.testing.assert_frame_equal(va, vb)
    ta_, tb_ = (x.predictions[x.predictions["split"] == "test"] for x in (a, b))
    np.testing.assert_array_equal(ta_["score"], tb_["score"])
    assert (ta_["label"].to_numpy() != tb_["label"].to_numpy()).all()


def test_kfold_cross_validation(blobs):
    res = train(tiny_train_config(optim={"epochs": 2}, split={"folds": 3}), cohort=blobs, record=False)
    p = res.predictions
    assert len(res.models) == 3 and len(res.metrics["folds"]) == 3
    assert sorted(p.loc[p["split"] == "validation", "subject_id"]) == res.plan.development
    assert (p["split"] == "test").sum() == len(res.plan.test)


def test_multiclass_multilabel_and_regression(blobs):
    mc = train(tiny_train_config(task={"kind": "multiclass", "label": "grade", "positive": None}), cohort=blobs,
               record=False)
    assert {"score_high", "score_low", "score_mid"} <= set(mc.predictions.columns)
    np.testing.assert_allclose(mc.predictions[["score_high", "score_low", "score_mid"]].sum(axis=1), 1, rtol=1e-5)
    assert "auc_macro" in mc.metrics["test"]
    ml = train(tiny_train_config(task={"kind": "multilabel", "labels": ["a", "b"], "label": None, "positive": None}),
               cohort=blobs, record=False)
    assert {"label_a", "score_a", "label_b", "score_b"} <= set(ml.predictions.columns)
    rg = train(tiny_train_config(task={"kind": "regression", "label": "age", "positive": None},
                                 optim={"epochs": 6}), cohort=blobs, record=False)
    p = rg.predictions
    assert {"label", "prediction", "score"} <= set(p.columns) and (p["prediction"] == p["score"]).all()
    assert rg.metrics["test"]["mae"] < 17  # the spread of ages is 20-80 (MAE of the mean ~15)


def test_covariates_reach_the_head(blobs):
    res = train(tiny_train_config(model={"covariates": ["age"]}, optim={"epochs": 2}), cohort=blobs, record=False)
    model, ftask = res.models[0]
    assert model.head.in_features == model.encoder.out_features + 1
    assert ftask.cov_mean.shape == (1,) and 40 < float(ftask.cov_mean[0]) < 60  # training statistics
    assert np.isfinite(res.predictions["score"]).all()
    with pytest.raises(InputError, match="model.covariates = 'agge': no such column"):
        train(tiny_train_config(model={"covariates": ["agge"]}), cohort=blobs, record=False)


def test_segmentation_3d_with_patches_and_sliding_window(blobs, tmp_path):
    cfg = tiny_train_config(task={"kind": "segmentation", "label": None, "positive": None,
                                  "mask": {"equals": "mask"}, "patch": [12, 12, 12]},
                            model={"backbone": "unet", "width": 4, "depth": 3}, optim={"epochs": 4, "lr": 1e-2},
                            augment=[{"kind": "flip", "prob": 0.5, "axes": [0]}])
    res = train(cfg, cohort=blobs, runs_dir=tmp_path)
    assert res.metrics["test"]["dice"] > 0.5, res.metrics
    p = pd.read_csv(res.run.path / "predictions.csv")
    assert {"subject_id", "mask_path", "pred_path", "dice", "split"} <= set(p.columns)
    assert (res.run.path / p["pred_path"].iloc[0]).exists()


def test_segmentation_2d_dynunet():
    imgs, meta, masks = blob_arrays(24, size=16, dims=2)
    c = Cohort.from_arrays(imgs, meta, masks=masks)
    cfg = tiny_train_config(task={"kind": "segmentation", "label": None, "positive": None,
                                  "mask": {"equals": "mask"}},
                            model={"backbone": "dynunet", "width": 4, "depth": 3}, optim={"epochs": 3, "lr": 1e-2})
    res = train(cfg, cohort=c, record=False)
    assert c.spatial_dims == 2 and "dice" in res.metrics["test"]


def test_bf16_autocast_path_runs(blobs):
    res = train(tiny_train_config(optim={"epochs": 1}, runtime={"progress": False, "precision": "bf16"}),
                cohort=blobs.subset(range(40)), record=False)
    assert np.isfinite(res.predictions["score"]).all()


# ---------------------------------------------------------------------------- bad input
def test_label_column_missing(blobs):
    with pytest.raises(InputError, match=r"task.label = 'diagnosys': no such column in dataset version blobs; "
                                         r"did you mean 'diagnosis'\?") as e:
        train(tiny_train_config(task={"label": "diagnosys"}), cohort=blobs, record=False)
    assert "diagnosis" in e.value.expected and "freeze a new version" in e.value.fix


def test_class_with_no_examples(blobs):
    with pytest.raises(InputError, match="class 'very-high' has no examples in column 'grade'"):
        train(tiny_train_config(task={"kind": "multiclass", "label": "grade", "positive": None,
                                      "classes": ["low", "mid", "high", "very-high"]}), cohort=blobs, record=False)
    one = blobs.subset(np.flatnonzero(blobs.table["diagnosis"] == "control"))
    with pytest.raises(InputError, match="task.positive = 'patient': no subject has this value"):
        train(tiny_train_config(), cohort=one, record=False)
    with pytest.raises(InputError, match="has 1 distinct value.*binary needs exactly two") as e:
        train(tiny_train_config(task={"positive": None}), cohort=one, record=False)
    assert "a class with no examples cannot be learned" in e.value.fix


def test_two_classes_without_positive(blobs):
    with pytest.raises(InputError, match="which is positive") as e:
        train(tiny_train_config(task={"positive": None}), cohort=blobs, record=False)
    assert 'positive = "patient"' in e.value.fix


def test_too_few_subjects_for_the_split(blobs):
    few = blobs.subset(range(5))
    with pytest.raises(InputError, match="too few"):
        train(tiny_train_config(split={"folds": 3}), cohort=few, record=False)


def test_missing_label_values(blobs):
    t = blobs.table.copy()
    t.loc[3, "diagnosis"] = None
    c = Cohort.from_arrays(np.asarray(blobs.images)[:, 0], t)
    with pytest.raises(InputError, match="1 subject\\(s\\) have no value in label column\\(s\\) diagnosis"):
        train(tiny_train_config(), cohort=c, record=False)


def test_lp_ft_head_starts_as_the_probe():
    """LP-FT: the linear head folded from the standardised probe predicts exactly what the probe does."""
    from types import SimpleNamespace

    from sobre.learn._models import Classifier
    from sobre.learn._train import _head_from_probe
    from sobre.learn._transfer import fit_probe

    class Flat(torch.nn.Module):
        out_features = 8

        def forward(self, x):
            return x.flatten(1)

    rng = np.random.default_rng(3)
    images = rng.normal(2.0, 3.0, (60, 1, 2, 2, 2)).astype(np.float32)
    y = (images.reshape(60, -1)[:, :3].sum(1) + rng.normal(0, 2, 60) > 6).astype(int)
    rows = np.arange(0, 60, 2)
    for kind, targets, n_out in (("binary", y, 1), ("regression", images.reshape(60, -1)[:, 0] * 0.5 + y, 1)):
        model = Classifier(Flat(), n_out)
        task = SimpleNamespace(kind=kind, targets=targets)
        _head_from_probe(model, images, rows, task, None, bf16=False, channels_last=False, seed=0)
        probe = fit_probe(images.reshape(60, -1)[rows].astype(np.float64), targets[rows], kind, seed=0)
        with torch.no_grad():
            out = model(torch.from_numpy(images))[:, 0].double().numpy()
        expect = probe.predict(images.reshape(60, -1).astype(np.float64))
        got = 1 / (1 + np.exp(-out)) if kind == "binary" else out
        np.testing.assert_allclose(got, expect, atol=1e-4)


def test_lp_ft_validates_the_probe_head_first(blobs, tmp_path):
    from sobre.learn._pretrain import pretrain

    pre = pretrain({"seed": 0, "data": {"dataset": "blobs"}, "method": {"kind": "simclr"},
                    "model": {"width": 4, "depth": 2}, "optim": {"epochs": 1, "batch_size": 16},
                    "augment": [{"kind": "noise", "prob": 0.5, "std": 0.1}], "runtime": {"progress": False}},
                   cohort=blobs, runs_dir=tmp_path)
    cfg = tiny_train_config(model={"init_from": str(pre.encoder_path), "head_init": "probe", "freeze_norm": True,
                                   "head_warmup_epochs": 1}, optim={"epochs": 2})
    res = train(cfg, cohort=blobs, runs_dir=tmp_path)
    epochs = res.run.record["epochs"]
    assert epochs[0]["epoch"] == 0 and "val_auc" in epochs[0] and "train_loss" not in epochs[0]
    assert [e["epoch"] for e in epochs if e.get("group", "fold0") == "fold0"][:3] == [0, 1, 2]
    assert res.run.record["config"]["model"]["head_init"] == "probe"


# ------------------------------------------------------------------------- reporting, not printing
def test_training_reports_through_callbacks_and_prints_nothing(blobs, capsys):
    from sobre.base import ProgressRecorder

    rec, rows = ProgressRecorder(), []
    res = train(tiny_train_config(optim={"epochs": 2}, runtime={"progress": True}), cohort=blobs, record=False,
                progress=rec, on_epoch=rows.append)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert [(r["group"], r["epoch"]) for r in rows] == [("fold0", 1), ("fold0", 2)]
    assert all(r["monitor"] == "val_auc" and "train_loss" in r and "val_auc" in r for r in rows)
    n = rec.last("fold0 epoch 2/2")[1]
    assert rec.last("fold0 epoch 1/2") == (n, n) and 0 < n <= len(res.plan.development)
    # runtime.progress = false: the callbacks stay silent
    rec2, rows2 = ProgressRecorder(), []
    train(tiny_train_config(optim={"epochs": 1}), cohort=blobs, record=False, progress=rec2, on_epoch=rows2.append)
    assert rec2.calls == [] and rows2 == []
    with pytest.raises(TypeError, match="progress must be a callable"):
        train(tiny_train_config(optim={"epochs": 1}, runtime={"progress": True}), cohort=blobs, record=False,
              progress=True)


def test_learning_code_never_prints_nor_draws_bars():
    from pathlib import Path

    import sobre.learn

    src = Path(sobre.learn.__file__).parent
    found = [f"{p.name}:{i}" for p in sorted(src.glob("*.py")) for i, line in
             enumerate(p.read_text().splitlines(), 1) if "print(" in line or "tqdm" in line]
    assert found == []

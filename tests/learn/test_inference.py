"""``load_model(run)``: a completed run becomes a model again, whose ``predict`` reproduces the run.

One preprocessing path (the cache and ``predict`` give identical arrays), the run's own inference
(``predictions.csv`` reproduced), deterministic on CPU, and clear errors for a bad run or bad input.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import sobre
from sobre.errors import CatalogError, InputError, SobreError
from sobre.learn import DataConfig, PreprocessConfig, load_cohort, load_model, pretrain, probe, train

from .helpers import make_workspace, tiny_train_config

#: predict vs predictions.csv: the same float32 computation; the CSV and the per-subject mean (float64)
#: round differently at the level of float32's epsilon.
ATOL = 1e-6

PRE = {"resample": "spacing", "spacing": [3.0, 3.0, 3.0], "shape": [12, 12, 12], "cache_dtype": "float16"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws, _ = make_workspace(tmp_path_factory.mktemp("infer-ws"), 40)
    return ws


@pytest.fixture(scope="module")
def binary_run(ws):
    """Two folds (test scores = mean of both), an age covariate, resampling and a float16 cache."""
    cfg = tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 3}, split={"folds": 2},
                            model={"covariates": ["age"]}, preprocess=PRE)
    return train(cfg, workspace=ws)


def rows_of(ws, preds: pd.DataFrame, split: str):
    ds = ws.dataset("all@v1")
    want = preds[preds["split"] == split]
    series = [s for s in ds.series if s.subject_id in set(want["subject_id"])]
    return ds, series, want


def predictions_csv(run) -> pd.DataFrame:
    return pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str})


def test_predict_reproduces_the_runs_test_predictions(ws, binary_run):
    model = load_model(binary_run.run.path)
    assert len(model.networks) == 2 and not model.network.training
    assert all(p.device.type == "cpu" and not p.requires_grad for p in model.network.parameters())
    ds, series, want = rows_of(ws, predictions_csv(binary_run.run), "test")
    assert len(series) == len(want) == 8
    got = model.predict(ds, series=series)
    assert got.kind == "binary" and got.classes == ["control", "patient"] and got.scores.shape == (8,)
    frame = got.frame().set_index("subject_id").loc[want["subject_id"]]
    diff = np.abs(frame["score"].to_numpy() - want["score"].to_numpy())
    assert diff.max() <= ATOL, diff
    assert got.labels == ["patient" if s >= 0.5 else "control" for s in got.scores]
    # deterministic: the same numbers again, bit for bit
    np.testing.assert_array_equal(model.predict(ds, series=series).scores, got.scores)


def test_cache_and_predict_preprocess_identically(ws, binary_run):
    model = load_model(binary_run.run.path)
    cohort = load_cohort(ws, DataConfig(dataset="all@v1"), PreprocessConfig(**PRE))
    assert cohort.source["cache"] == binary_run.run.record["dataset"]["cache"]  # the cache the run trained on
    ds = ws.dataset("all@v1")
    for i, uid in enumerate(cohort.table["series_uid"]):
        arr, affine = model.prepare(ds.image(uid))
        assert arr.dtype == np.float16 and arr.shape == (1, 12, 12, 12)
        np.testing.assert_array_equal(arr, cohort.images[i])
        np.testing.assert_array_equal(affine, cohort.affines[i])


def test_model_carries_task_preprocessing_input_and_provenance(ws, binary_run):
    run = binary_run.run
    model = load_model(run.run_id, workspace=ws)
    assert model.run_id == run.run_id and model.kind == "train"
    t = model.task
    assert (t.kind, t.label, t.positive, t.covariates) == ("binary", "diagnosis", "patient", ["age"])
    assert model.preprocess == PreprocessConfig(**PRE)
    assert (model.spatial_dims, model.in_channels, model.input_shape, model.input_spacing) == (3, 1, (12,) * 3,
                                                                                             (3.0,) * 3)
    assert model.modalities == ["MR"]
    prov = model.provenance
    assert prov["dataset"]["ref"] == "all@v1" and prov["dataset"]["content_hash"] == ws.dataset("all@v1").content_hash
    assert prov["config"] == run.record["config"] and prov["config_sha256"] == run.record["config_sha256"]
    assert set(prov["checkpoints"]) == {"checkpoints/fold0/best.pt", "checkpoints/fold1/best.pt"}
    assert model.precision == run.record["runtime"]["precision"]  # the run's evaluation precision by default
    assert load_model(run, precision="fp32").precision == "fp32"


def test_predict_on_images_needs_the_covariates(ws, binary_run):
    model = load_model(binary_run.run.path)
    ds = ws.dataset("all@v1")
    imgs = [ds.image(s) for s in ds.series[:3]]
    ages = [s.metadata["age"] for s in ds.series[:3]]
    with pytest.raises(InputError, match=f"run {binary_run.run.run_id} needs the covariate 'age'") as e:
        model.predict(imgs)
    assert "covariates={'age': [...]}" in e.value.fix
    from_images = model.predict(imgs, covariates={"age": ages})
    from_dataset = model.predict(ds, series=ds.series[:3])
    np.testing.assert_array_equal(from_images.scores, from_dataset.scores)
    assert from_images.series == ["image-0", "image-1", "image-2"]
    assert from_dataset.series == [s.series_uid for s in ds.series[:3]]


def test_regression_reproduces_every_row_with_its_target_scaling(ws):
    cfg = tiny_train_config(data={"dataset": "all@v1"}, task={"kind": "regression", "label": "age", "positive": None},
                            optim={"epochs": 2})
    res = train(cfg, workspace=ws)
    model = load_model(res.run.path)
    mean, std = model.task.target_scaling[0]
    assert 30 < mean < 70 and 5 < std < 25  # training-fold statistics, in years
    ds = ws.dataset("all@v1")
    want = predictions_csv(res.run)  # one model: validation and test rows alike
    got = model.predict(ds).frame().set_index("subject_id").loc[want["subject_id"]]
    np.testing.assert_allclose(got["prediction"].to_numpy(), want["prediction"].to_numpy(), rtol=0, atol=1e-4)
    assert model.predict(ds).labels[0] == pytest.approx(float(model.predict(ds).scores[0]))


def test_probe_and_pretraining_runs(ws, tmp_path):
    epochs = []
    pre = pretrain({"seed": 0, "data": {"dataset": "all@v1"}, "method": {"kind": "simclr"},
                    "model": {"width": 4, "depth": 2}, "optim": {"epochs": 1, "batch_size": 8},
                    "augment": [{"kind": "noise", "prob": 0.5, "std": 0.1}], "runtime": {"progress": True}},
                   workspace=ws, on_epoch=epochs.append)
    assert [(r["group"], r["epoch"]) for r in epochs] == [("pretrain", 1)]
    enc = load_model(pre.run.path)
    assert enc.kind == "pretrain" and enc.task is None and enc.input_shape == (16, 16, 16)
    ds = ws.dataset("all@v1")
    feats = enc.features(ds, series=ds.series[:5])
    cohort = load_cohort(ws, DataConfig(dataset="all@v1"), PreprocessConfig())
    from sobre.learn._transfer import extract_features

    ref, _ = extract_features(pre.encoder, cohort.images, np.arange(5), bf16=enc.precision == "bf16")
    np.testing.assert_allclose(feats, ref, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="is a pretraining run: an encoder without a task head"):
        enc.predict(ds)
    # a linear probe on it: its fitted head is saved folded into model.pt, and predicts what the probe did
    res = probe(tiny_train_config(data={"dataset": "all@v1"}, model={"init_from": pre.run.run_id}), workspace=ws)
    model = load_model(res.run.path)
    assert model.kind == "probe" and "model.pt" in res.run.record["artifacts"]
    _, series, want = rows_of(ws, predictions_csv(res.run), "test")
    got = model.predict(ds, series=series).frame().set_index("subject_id").loc[want["subject_id"]]
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.features(ds, series=series), enc.features(ds, series=series), atol=1e-6)


def test_segmentation_masks_come_back_on_the_input_grid(tmp_path):
    ws, ref = make_workspace(tmp_path, 12, with_masks=True, where='format == "nifti"')
    cfg = tiny_train_config(data={"dataset": ref.ref, "where": 'protocol == "T1w" or protocol == "mask"'},
                            task={"kind": "segmentation", "label": None, "positive": None,
                                  "mask": {"equals": "mask"}, "patch": [12, 12, 12]},
                            model={"backbone": "unet", "width": 4, "depth": 3}, optim={"epochs": 2, "lr": 1e-2},
                            split={"test_fraction": 0.25})
    res = train(cfg, workspace=ws)
    model = load_model(res.run.path)
    assert model.task.kind == "segmentation" and model.task.patch == [12, 12, 12]
    ds = ws.dataset(ref.ref)
    rows = pd.read_csv(res.run.path / "predictions.csv")
    row = rows[rows["split"] == "test"].iloc[0]
    got = model.predict(ds, series=[row["series_uid"]])
    mask = got.masks[0]
    img = ds.image(row["series_uid"])
    assert mask.spatial_shape == img.spatial_shape and np.allclose(mask.affine, img.affine)
    assert mask.dtype == np.uint8 and got.scores is None
    saved = sobre.load(res.run.path / row["pred_path"])  # the run's prediction (preprocessed grid = input grid)
    np.testing.assert_array_equal(mask.array, saved.array)
    # the image in another orientation: the mask follows it back, voxel for voxel in world space
    flipped = sobre.Image(img.array[::-1].copy(), img.affine @ np.array([[-1, 0, 0, 15], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                        [0, 0, 0, 1.0]]), modality="MR")
    np.testing.assert_array_equal(model.predict(flipped).masks[0].array[::-1], mask.array)
    # larger than the training volume (16³) and patch (12³): sliding windows over the whole of it
    shift = np.eye(4)
    shift[:3, 3] = -4.0
    big = sobre.Image(np.pad(img.array, 4), img.affine @ shift, modality="MR")
    big_mask = model.predict(big).masks[0]
    assert big_mask.spatial_shape == (24, 24, 24) and np.allclose(big_mask.affine, big.affine)
    assert set(np.unique(big_mask.array)) <= {0, 1}
    with pytest.raises(InputError, match="has no feature encoder"):
        model.features(img)


# ------------------------------------------------------------------------------------- bad input
def test_unknown_runs_are_refused(ws, tmp_path):
    with pytest.raises(CatalogError, match="no run 'no-such-run'") as e:
        load_model("no-such-run", workspace=ws)
    assert "sobre runs list" in e.value.expected
    with pytest.raises(InputError, match="no run folder") as e:
        load_model(tmp_path / "nothing-here")
    assert "its id and the workspace" in e.value.fix


def test_runs_without_weights_are_refused(ws, binary_run, tmp_path):
    cfg = tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 3})
    part = train(cfg, workspace=ws, interrupt_after=1)
    with pytest.raises(InputError, match=f"run {part.run.run_id} has no trained weights to load") as e:
        load_model(part.run.path)
    assert e.value.found == "status interrupted" and f"sobre train --resume {part.run.run_id}" in e.value.fix
    # a run whose process was killed: its record still says running
    copy = tmp_path / binary_run.run.run_id
    shutil.copytree(binary_run.run.path, copy)
    record = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps(dict(record, status="running")))
    with pytest.raises(InputError, match="has no trained weights to load") as e:
        load_model(copy)
    assert e.value.found == "status running" and e.value.expected == "a completed run"
    (copy / "run.json").write_text(json.dumps(record))
    # a completed run whose checkpoint is gone, or changed since it was recorded
    (copy / "checkpoints" / "fold1" / "best.pt").unlink()
    with pytest.raises(InputError, match="has no trained weights to load") as e:
        load_model(copy)
    assert "checkpoints/fold1/best.pt" in e.value.expected
    shutil.copy(copy / "checkpoints" / "fold0" / "best.pt", copy / "checkpoints" / "fold1" / "best.pt")
    with pytest.raises(InputError, match="checkpoints/fold1/best.pt changed since the run recorded it"):
        load_model(copy)
    # a run recorded before sobre.model/1
    record = json.loads((copy / "run.json").read_text())
    del record["model"]
    (copy / "run.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="has no trained weights") as e:
        load_model(copy)
    assert "older Sobre" in e.value.found


def test_images_unlike_the_training_images_are_refused(ws, binary_run):
    model = load_model(binary_run.run.path)
    rid = binary_run.run.run_id
    arr = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    with pytest.raises(InputError, match=f"run {rid} was trained on 3D images; image-0 is 2D") as e:
        model.predict(sobre.Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), covariates={"age": [40]})
    assert e.value.expected == "3D images (MR)" and "(16, 16)" in e.value.found
    vol = np.zeros((16, 16, 16), np.float32)
    with pytest.raises(InputError, match=f"run {rid} was trained on MR images; image-0 is CT"):
        model.predict(sobre.Image(vol, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT"), covariates={"age": [40]})
    rgb = np.zeros((16, 16, 16, 3), np.float32)
    with pytest.raises(InputError, match="images of 1 channel\\(s\\); image-0 has 3"):
        model.predict(sobre.Image(rgb, np.eye(4), extra_axes="channel"), covariates={"age": [40]})
    with pytest.raises(InputError, match="cannot predict on this"):
        model.predict("scan.nii.gz")
    assert issubclass(InputError, SobreError)


def test_an_image_off_the_training_grid_is_refused(ws):
    cfg = tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 1})  # resample = "none": 16³ only
    model = load_model(train(cfg, workspace=ws).run.path)
    with pytest.raises(InputError, match="does not land on the grid the network was trained on") as e:
        model.predict(sobre.Image(np.zeros((20, 16, 16), np.float32), np.eye(4), modality="MR"))
    assert e.value.expected == "(16, 16, 16) voxels after preprocessing" and "(20, 16, 16)" in e.value.found
    with torch.no_grad():
        assert model.predict(sobre.Image(np.zeros((16, 16, 16), np.float32), np.eye(4))).scores.shape == (1,)


@pytest.fixture(scope="module")
def probe_run(ws):
    """A linear probe with an age covariate (as in the README tour) on a 1-epoch SimCLR encoder."""
    pre = pretrain({"seed": 0, "data": {"dataset": "all@v1"}, "method": {"kind": "simclr"},
                    "model": {"width": 4, "depth": 2}, "optim": {"epochs": 1, "batch_size": 8},
                    "augment": [{"kind": "noise", "prob": 0.5, "std": 0.1}], "runtime": {"progress": False}},
                   workspace=ws)
    return probe(tiny_train_config(data={"dataset": "all@v1"}, model={"init_from": pre.run.run_id,
                                                                      "covariates": ["age"]}), workspace=ws)


@pytest.mark.parametrize("which", ["train", "probe"])
def test_loaded_model_reproduces_the_runs_test_scores(ws, binary_run, probe_run, which):
    """Regression (README tour): load_model(run).predict on the run's own test subjects gives predictions.csv."""
    res = binary_run if which == "train" else probe_run
    model = load_model(res.run.path)
    assert model.kind == which and model.task.covariates == ["age"]
    ds, series, want = rows_of(ws, predictions_csv(res.run), "test")
    assert len(series) == len(want) > 0
    got = model.predict(ds, series=series).frame().set_index("subject_id").loc[want["subject_id"]]
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-5)


def test_probe_validation_rows_come_from_the_final_probes_penalty(ws, probe_run):
    """Validation rows are out-of-fold fits with the saved probe's C, not each fold's own choice of C.

    Before, each fold chose its C again: validation scores spread over 0.0002–0.998 while the saved
    probe (C = 1e-4) and its test rows, and so ``predict``, gave 0.4995–0.5005.
    """
    from sklearn.model_selection import GroupKFold

    from sobre.learn._transfer import fit_probe

    model = load_model(probe_run.run.path)
    C = probe_run.metrics["probe"]["C"]
    ds, series, want = rows_of(ws, predictions_csv(probe_run.run), "validation")
    series = sorted(series, key=lambda s: want["subject_id"].tolist().index(s.subject_id))  # the rows' order
    X = np.c_[model.features(ds, series=series), [s.metadata["age"] for s in series]]
    y = (want["label"].to_numpy() == 1).astype(int)
    groups = want["subject_id"].to_numpy()
    oof = np.zeros(len(y))
    for tr, va in GroupKFold(n_splits=min(5, len(series))).split(X, groups=groups):
        oof[va] = fit_probe(X[tr], y[tr], "binary", C=C).predict(X[va])
    np.testing.assert_allclose(oof, want["score"].to_numpy(), rtol=0, atol=1e-5)

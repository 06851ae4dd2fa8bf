"""``sobre predict``: models and apps on files, catalogued series and dataset versions → predictions.csv
that ``sobre evaluate`` reads, masks on the input grid, DICOM outputs on request, sliding windows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sobre
from sobre.apps import predict
from sobre.base import sha256_file
from sobre.cli import main
from sobre.errors import InputError
from sobre.learn import load_model, train

from image.test_dicom_objects import iod_check
from learn.helpers import make_workspace, tiny_train_config


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """(workspace, completed binary run): the blob cohort of the learning tests, 40 subjects, 3 epochs."""
    ws, _ = make_workspace(tmp_path_factory.mktemp("predict-ws"), 40)
    res = train(tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 3}), workspace=ws)
    return ws, res.run


def test_predict_on_a_dataset_version_is_read_by_sobre_evaluate(tmp_path, capsys, binary):
    ws, run = binary
    out = tmp_path / "pred"
    assert main(["predict", run.run_id, "all@v1", "-w", str(ws.root), "--out", str(out)]) == 0
    assert f"predictions: {out / 'predictions.csv'}" in capsys.readouterr().out
    df = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str})
    assert len(df) == 40 and df["subject_id"].is_unique
    assert {"subject_id", "series_uid", "split", "label", "score", "site", "sex", "age"} <= set(df.columns)
    assert set(df["label"]) == {0, 1}
    # the run's own dataset version: each subject labelled by the run's split, not all "test"
    split = pd.read_csv(run.path / "split.csv", dtype={"subject_id": str}).set_index("subject_id")["split"]
    assert dict(zip(df["subject_id"], df["split"])) == split.to_dict()
    assert set(df["split"]) == {"train", "validation", "test"}
    ds = ws.dataset("all@v1")
    truth = {s.series_uid: int(s.metadata["diagnosis"] == "patient") for s in ds.series}
    assert dict(zip(df["series_uid"], df["label"])) == truth  # 1 = the positive class, as in runs
    side = json.loads((out / "predictions.json").read_text())
    assert (side["positive_label"], side["positive_class"]) == (1, "patient")
    assert side["dataset_version"] == "all@v1" and side["task"] == "binary"
    assert side["run_id"] == run.run_id and len(side["model_identity"]["sha256"]) == 64
    model = load_model(run.path)
    want = model.predict(ws.dataset("all@v1")).frame().set_index("series_uid")["score"]
    np.testing.assert_allclose(df.set_index("series_uid").loc[want.index, "score"], want, atol=1e-6)
    assert main(["evaluate", str(out / "predictions.csv"), "--bootstrap", "0", "--no-site", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "binary" and report["input"]["sha256"] == sha256_file(out / "predictions.csv")


def test_predict_with_a_registered_model_package(tmp_path, binary):
    from sobre.models import register

    ws, run = binary
    code = {"scheme": "SCT", "value": "64572001", "meaning": "Disease"}
    pkg = register(ws, run, "blobs", "1.0", info={"codes": {"patient": code}}, measure=False)
    res = predict("blobs@1.0", ["all@v1"], tmp_path / "pred", workspace=ws)
    ident = res.result.models[0]
    assert ident["source"] == "registry" and (ident["name"], ident["version"]) == ("blobs", "1.0")
    assert ident["sha256"] == pkg.package_sha256 and ident["model_sha256"] == pkg.model_sha256
    finding = res.result.cases[0].findings[0]
    assert finding["name"] == {"value": "64572001", "scheme": "SCT", "meaning": "Disease"}  # the card's code
    assert finding["value"]["meaning"] in ("Present", "Absent")
    direct = predict(run.path, ["all@v1"], tmp_path / "direct", workspace=ws)
    np.testing.assert_allclose(res.frame["score"], direct.frame["score"], atol=1e-6)  # the same weights
    with pytest.raises(InputError, match="unknown model 'blobs@9'") as e:
        predict("blobs@9", ["all@v1"], tmp_path / "x", workspace=ws)
    assert "no version 9 of model blobs" in e.value.found


def test_predict_segmentation_on_catalogued_series_with_dicom_outputs(tmp_path, capsys, seg_run, ct_series):
    from sobre.catalog import Workspace

    folder, img, truth = ct_series
    ws = Workspace.init(tmp_path / "ws")
    ws.ingest([folder], site="test")
    uid = img.metadata.get("series_uid") or sobre.load(folder).metadata["series_uid"]
    out = tmp_path / "pred"
    assert main(["predict", str(seg_run), uid[:20], "-w", str(ws.root), "--out", str(out), "--dicom", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    df = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str})
    assert list(df["subject_id"]) == ["PHANTOM-001"] and list(df["series_uid"]) == [uid]
    mask = sobre.load(out / df["pred_path"][0])
    src = sobre.load(folder)
    assert mask.spatial_shape == src.spatial_shape and np.allclose(mask.affine, src.affine)
    kinds = [o["kind"] for o in res["cases"][0]["outputs"]]
    assert {"mask", "SEG", "SR", "SC", "json"} <= set(kinds)
    for o in res["cases"][0]["outputs"]:
        if o["kind"] in ("SEG", "SR"):
            iod_check(out / o["path"])
    # the same on files, with an app by name; a NIfTI input cannot give DICOM outputs
    sobre.save(img, tmp_path / "ct.nii.gz")
    assert main(["predict", str(seg_run), str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "x"), "--dicom"]) == 2
    assert "rule 'dicom_sources'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    r = predict("ct-lesions", [folder], tmp_path / "app", model=seg_run)
    assert list(r.frame["pred_path"]) == ["case-001/mask.nii.gz"] and r.result.app["name"] == "ct-lesions"
    assert not (tmp_path / "app" / "case-001" / "seg.dcm").exists()  # DICOM outputs only with dicom=True


def test_predict_refuses_unknown_models_and_series_of_another_modality(tmp_path, seg_run, mr_series):
    with pytest.raises(InputError, match="unknown model 'nope'") as e:
        predict("nope", [mr_series], tmp_path / "a")
    assert "no workspace given" in e.value.found
    with pytest.raises(InputError, match="rule 'modality'"):
        predict("ct-lesions", [mr_series], tmp_path / "a", model=seg_run)
    with pytest.raises(InputError, match="no such file or folder"):
        predict(seg_run, [tmp_path / "missing"], tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_sliding_windows_cover_a_volume_four_times_the_patch(tmp_path, seg_run):
    from .helpers import phantom_image

    img, truth = phantom_image((64, 64, 64), seed=11, lesions=2)  # patch 16³: 4× along every axis
    model = load_model(seg_run)
    mask = model.predict(img).masks[0]
    assert mask.spatial_shape == (64, 64, 64) and np.allclose(mask.affine, img.affine)
    found = ((mask.array > 0) & (truth.array > 0)).sum()
    assert found >= 0.9 * (truth.array > 0).sum()  # the lesions, wherever the windows put them


def test_predict_takes_covariates_from_the_versions_clinical_variables(tmp_path, binary):
    """model.covariates = ["age"]: `sobre predict` on a dataset version reads age from the frozen version."""
    ws, _ = binary
    run = train(tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 1}, model={"covariates": ["age"]}),
                workspace=ws).run
    out = tmp_path / "pred"
    assert main(["predict", run.run_id, "all@v1", "-w", str(ws.root), "--out", str(out)]) == 0
    df = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    want = pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    test = want[want["split"] == "test"]
    assert len(test) and (df.loc[test.index, "split"] == "test").all()
    np.testing.assert_allclose(df.loc[test.index, "score"], test["score"], rtol=0, atol=1e-5)


def test_predict_on_other_inputs_labels_rows_external(tmp_path, capsys, binary):
    ws, run = binary
    files = sorted((ws.root.parent / "bids" / "north").glob("sub-*/anat/*_T1w.nii.gz"))[:4]
    out = tmp_path / "pred"
    assert main(["predict", str(run.path), *map(str, files), "--out", str(out)]) == 0
    df = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str})
    assert len(df) == 4 and set(df["split"]) == {"external"}

"""Image + clinical fusion (``sobre.learn.fuse``, ``sobre fuse``): leakage, missing values, determinism,
a case with a known answer, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sobre.errors import ConfigError, InputError
from sobre.learn import (
    FusionConfig, TabularConfig, TabularPrep, feature_fusion, late_fusion, tabular_only, validate_config,
)


def _auc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def synthetic(n: int = 400, seed: int = 0, missing: float = 0.2):
    """Labels, an image score and image features carrying signal, a lab value carrying independent
    signal (with missing values), and a variable carrying none."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    rng.shuffle(y)
    image = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=n))))
    feats = np.c_[1.2 * y + rng.normal(size=n), rng.normal(size=(n, 6))]
    lab = 1.2 * y + rng.normal(size=n)
    lab[rng.random(n) < missing] = np.nan
    table = pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)], "lab": lab,
                          "noise": rng.normal(size=n)})
    return y, image, feats, table


def split(n: int, n_test: int):
    return np.arange(n - n_test), np.arange(n - n_test, n)


FAST = {"C": 1.0, "inner_folds": 3}  # a fixed penalty where its choice is not what is tested (2 busy cores)


def rows(t, idx):
    return t.iloc[idx].reset_index(drop=True)


# --------------------------------------------------------------------------------- missing values
def test_prep_imputes_and_scales_with_training_rows_and_adds_indicators():
    t = pd.DataFrame({"subject_id": list("abcdef"), "lab": [1.0, np.nan, 3.0, 5.0, np.nan, 100.0]})
    prep = TabularPrep(TabularConfig(variables=["lab"]), dataset="x@v1").fit(t.iloc[:4])
    assert prep.columns == ["lab", "lab_missing"]
    assert prep.fill_.tolist() == [3.0]                      # median of 1, 3, 5 (the training rows)
    filled = np.array([1.0, 3.0, 3.0, 5.0])
    assert prep.mean_[0] == pytest.approx(filled.mean()) and prep.std_[0] == pytest.approx(filled.std())
    Z = prep.transform(t)
    assert Z[:, 1].tolist() == [0, 1, 0, 0, 1, 0]           # indicator of the imputed values
    assert Z[4, 0] == pytest.approx((3.0 - filled.mean()) / filled.std())
    assert prep.state()["lab"]["n_missing_train"] == 1
    mean = TabularPrep(TabularConfig(variables=["lab"], impute="mean")).fit(t.iloc[:4])
    assert mean.fill_[0] == pytest.approx(3.0)
    no_ind = TabularPrep(TabularConfig(variables=["lab"], missing="refuse"), dataset="x@v1")
    with pytest.raises(InputError, match=r"'lab' is missing for 1 subject\(s\) of dataset version x@v1") as e:
        no_ind.fit(t.iloc[:4])
    assert "b" in str(e.value)


def test_refusals_name_the_version_and_the_variable():
    y, image, _, t = synthetic(60)
    dev, test = split(60, 20)
    cfg = TabularConfig(variables=["lab", "nfll"])
    with pytest.raises(InputError, match=r"tabular.variables = 'nfll': no such column in dataset version t@v3"):
        tabular_only(y[dev], rows(t, dev), rows(t, test), cfg, dataset="t@v3")
    t2 = t.assign(lab=np.nan)  # nothing to impute or scale with
    with pytest.raises(InputError, match="'lab' has no value for any of the 40 training subjects of dataset "
                                         "version t@v3"):
        tabular_only(y[dev], rows(t2, dev), rows(t2, test), TabularConfig(variables=["lab"]), dataset="t@v3")
    t3 = t.assign(lab=t["lab"].astype(object))
    t3.loc[3, "lab"] = "high"
    with pytest.raises(InputError, match="'lab' is not numeric"):
        tabular_only(y[dev], rows(t3, dev), rows(t3, test), TabularConfig(variables=["lab"]), dataset="t@v3")


def test_variable_entirely_missing_in_test_is_refused_or_imputed_as_configured():
    y, image, _, t = synthetic(120)
    dev, test = split(120, 30)
    tt = rows(t, test).assign(lab=np.nan)
    with pytest.raises(InputError, match="'lab' has no value for any of the 30 test subjects in dataset version "
                                         "t@v1") as e:
        late_fusion(y[dev], image[dev], rows(t, dev), image[test], tt, TabularConfig(variables=["lab"]),
                    dataset="t@v1", **FAST)
    assert "absent" in e.value.fix
    cfg = TabularConfig(variables=["lab"], absent="impute")
    res = late_fusion(y[dev], image[dev], rows(t, dev), image[test], tt, cfg, dataset="t@v1", **FAST)
    assert np.isfinite(res.test_scores).all()
    # every test subject gets the training median and indicator 1: the tabular logit is one constant,
    # so the fused ranking is the image ranking
    assert _auc(y[test], res.test_scores) == pytest.approx(_auc(y[test], image[test]))
    single = late_fusion(y[dev], image[dev], rows(t, dev), image[test][:1], tt.iloc[:1],
                         TabularConfig(variables=["lab"]), dataset="t@v1", **FAST)  # one subject: ordinary missing
    assert np.isfinite(single.test_scores).all()


# ------------------------------------------------------------------------------------------ leakage
@pytest.mark.parametrize("method", ["tabular", "late", "feature"])
def test_nothing_is_fitted_on_test_subjects(method):
    """Perturbing the test rows (values, missingness, image scores and features) changes neither what
    was fitted nor the scores of the development subjects or of an unchanged test subject."""
    y, image, feats, t = synthetic(200)
    dev, test = split(200, 50)
    cfg = TabularConfig(variables=["lab", "noise"])

    def run(tt, img_t, f_t):
        if method == "tabular":
            return tabular_only(y[dev], rows(t, dev), tt, cfg, inner_folds=3)
        if method == "late":
            return late_fusion(y[dev], image[dev], rows(t, dev), img_t, tt, cfg, inner_folds=3)
        return feature_fusion(y[dev], feats[dev], rows(t, dev), f_t, tt, cfg, inner_folds=3)

    a = run(rows(t, test), image[test], feats[test])
    rng = np.random.default_rng(5)
    tt = rows(t, test)
    tt.loc[1:, "lab"] = rng.normal(50, 30, len(tt) - 1)       # shifted scale
    tt.loc[1:10, "lab"] = np.nan                               # other missingness
    tt.loc[1:, "noise"] = -1e3
    img_t, f_t = image[test].copy(), feats[test].copy()
    img_t[1:], f_t[1:] = rng.random(len(img_t) - 1), f_t[1:] * 7 + 3
    b = run(tt, img_t, f_t)
    assert json.dumps(a.info, sort_keys=True, default=float) == json.dumps(b.info, sort_keys=True, default=float)
    np.testing.assert_array_equal(a.dev_scores, b.dev_scores)
    assert a.test_scores[0] == b.test_scores[0]
    assert not np.allclose(a.test_scores[1:], b.test_scores[1:])  # the perturbation did reach the test rows


def test_statistics_come_from_the_development_subjects_only():
    y, image, _, t = synthetic(200)
    dev, test = split(200, 50)
    res = late_fusion(y[dev], image[dev], rows(t, dev), image[test], rows(t, test), TabularConfig(variables=["lab"]),
                      **FAST)
    lab_dev = t["lab"].to_numpy()[dev]
    assert res.info["tabular"]["lab"]["impute"] == pytest.approx(np.nanmedian(lab_dev))
    assert res.info["tabular"]["lab"]["n_missing_train"] == int(np.isnan(lab_dev).sum())
    assert res.info["tabular"]["_n_train"] == len(dev)


# ------------------------------------------------------------------------------- determinism, answer
def test_deterministic_for_a_seed():
    y, image, feats, t = synthetic(120)
    dev, test = split(120, 40)
    cfg = TabularConfig(variables=["lab"])
    for f, args in ((late_fusion, (image[dev], rows(t, dev), image[test], rows(t, test))),
                    (feature_fusion, (feats[dev], rows(t, dev), feats[test], rows(t, test)))):
        a, b = f(y[dev], *args, cfg, seed=3, inner_folds=3), f(y[dev], *args, cfg, seed=3, inner_folds=3)
        np.testing.assert_array_equal(a.test_scores, b.test_scores)
        np.testing.assert_array_equal(a.dev_scores, b.dev_scores)


def test_fused_beats_both_modalities_when_the_variable_carries_signal_and_not_otherwise():
    y, image, feats, t = synthetic(600, seed=1)
    dev, test = split(600, 200)
    tt, td = rows(t, test), rows(t, dev)
    sig, null = TabularConfig(variables=["lab"]), TabularConfig(variables=["noise"])
    auc_img = _auc(y[test], image[test])
    auc_tab = _auc(y[test], tabular_only(y[dev], td, tt, sig, **FAST).test_scores)
    late = _auc(y[test], late_fusion(y[dev], image[dev], td, image[test], tt, sig, **FAST).test_scores)
    # expected with two independent signals of d = 1.2 each: single ~0.80, both ~0.89
    assert late > max(auc_img, auc_tab) + 0.03, (late, auc_img, auc_tab)
    feat_img = _auc(y[test], feature_fusion(y[dev], feats[dev], td, feats[test], tt.assign(noise=0.0),
                                            TabularConfig(variables=["noise"]), **FAST).test_scores)
    feat = _auc(y[test], feature_fusion(y[dev], feats[dev], td, feats[test], tt, sig, **FAST).test_scores)
    assert feat > max(feat_img, auc_tab) + 0.03, (feat, feat_img, auc_tab)
    late_null = _auc(y[test], late_fusion(y[dev], image[dev], td, image[test], tt, null).test_scores)  # C by CV
    assert abs(late_null - auc_img) <= 0.01, (late_null, auc_img)


def test_late_fusion_fits_the_combiner_on_out_of_fold_image_scores_only():
    y, image, _, t = synthetic(200)
    dev, test = split(200, 50)
    img_dev = image[dev].copy()
    img_dev[:100] = np.nan  # the training subjects of a single split have no out-of-fold image score
    res = late_fusion(y[dev], img_dev, rows(t, dev), image[test], rows(t, test), TabularConfig(variables=["lab"]),
                      **FAST)
    assert res.info["combiner"]["n_subjects"] == 50
    assert np.isnan(res.dev_scores[:100]).all() and np.isfinite(res.dev_scores[100:]).all()
    assert res.info["tabular"]["_n_train"] == 150  # the tabular model uses every development subject


# ------------------------------------------------------------------------------------------ config
def test_bad_config_is_refused_with_the_nearest_key():
    with pytest.raises(ConfigError) as e:
        validate_config({"image_run": "r", "tabular": {"variabels": ["nfl"]}}, FusionConfig)
    assert "variabels" in str(e.value) and "did you mean 'variables'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_config({"image_run": "r", "methd": "late", "tabular": {"variables": ["nfl"]}}, FusionConfig)
    assert "did you mean 'method'" in str(e.value)
    with pytest.raises(ConfigError, match="method"):
        validate_config({"image_run": "r", "method": "early", "tabular": {"variables": ["nfl"]}}, FusionConfig)
    with pytest.raises(ConfigError, match="variables"):
        validate_config({"image_run": "r", "tabular": {"variables": []}}, FusionConfig)


# --------------------------------------------------------------------------------- on a workspace
def _clinical_workspace(root):
    """The blob workspace of the other learning tests with two clinical columns: ``lab`` (signal, 25 %
    missing) and ``sodium`` (none)."""
    from sobre.catalog import Workspace

    from .helpers import write_bids

    folders = write_bids(root / "bids", 48)
    rng = np.random.default_rng(7)
    for folder in folders.values():
        p = pd.read_csv(folder / "participants.tsv", sep="\t", dtype=str)
        patient = (p["diagnosis"] == "patient").to_numpy()
        lab = np.round(10 + 3 * patient + rng.normal(0, 1.5, len(p)), 2).astype(str)
        lab[rng.random(len(p)) < 0.25] = "n/a"
        p["lab"] = lab
        p["sodium"] = np.round(rng.normal(140, 2.5, len(p)), 1)
        p.to_csv(folder / "participants.tsv", sep="\t", index=False)
    ws = Workspace.init(root / "ws")
    for site, folder in folders.items():
        assert not ws.ingest([folder], site=site).clinical_error
    ws.cohort_create("all", 'modality == "MR"')
    ws.freeze("all")
    return ws


@pytest.fixture(scope="module")
def clinical(tmp_path_factory):
    """(workspace, image run): the clinical workspace and a tiny binary train run on it (one epoch)."""
    from sobre.learn import train

    from .helpers import tiny_train_config

    ws = _clinical_workspace(tmp_path_factory.mktemp("fusion-ws"))
    cfg = tiny_train_config(data={"dataset": "all@v1"}, split={"test_fraction": 0.25},
                            optim={"epochs": 1, "batch_size": 8})
    return ws, train(cfg, workspace=ws).run


def test_sobre_fuse_on_a_train_run(clinical, tmp_path, capsys):
    from sobre.cli import main
    from sobre.learn import open_run, runs_root

    ws, img = clinical
    runs = {}
    for method in ("late", "feature", "tabular"):
        toml = tmp_path / f"{method}.toml"
        toml.write_text(f'image_run = "{img.run_id}"\nmethod = "{method}"\nC = 1.0\ninner_folds = 3\n'
                        '[tabular]\nvariables = ["lab", "sodium"]\n')
        assert main(["fuse", str(toml), "-w", str(ws.root), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["status"] == "completed" and 0 <= out["metrics"]["test"]["auc"] <= 1
        runs[method] = open_run(runs_root(ws), out["run_id"])
    r = runs["late"]
    assert r.record["kind"] == "fusion" and r.record["dataset_version"] == "all@v1"
    assert (r.path / "split.csv").read_text() == (img.path / "split.csv").read_text()
    pred = pd.read_csv(r.path / "predictions.csv", dtype={"subject_id": str})
    img_pred = pd.read_csv(img.path / "predictions.csv", dtype={"subject_id": str})
    test_ids = set(img_pred.loc[img_pred.split == "test", "subject_id"])
    assert set(pred.loc[pred.split == "test", "subject_id"]) == test_ids
    fitted = json.loads((r.path / "fusion.json").read_text())["fitted"]
    assert fitted["tabular"]["_columns"] == ["lab", "sodium", "lab_missing", "sodium_missing"]
    assert json.loads((runs["feature"].path / "fusion.json").read_text())["note"]  # in-sample CNN features
    # refusals: a variable absent from the version (named with the version), a bad key
    toml = tmp_path / "bad.toml"
    toml.write_text(f'image_run = "{img.run_id}"\n[tabular]\nvariables = ["lab", "nfl"]\n')
    assert main(["fuse", str(toml), "-w", str(ws.root)]) == 2
    err = capsys.readouterr().err
    assert "tabular.variables = 'nfl': no such column in dataset version all@v1" in err
    toml.write_text(f'image_run = "{img.run_id}"\n[tabular]\nvariable = ["lab"]\n')
    assert main(["fuse", str(toml), "-w", str(ws.root)]) == 2
    assert "did you mean 'variables'" in capsys.readouterr().err


# ------------------------------------------------------------------------ a fusion run as a model
def _fused(ws, img, method, **tabular):
    from sobre.learn import fuse

    cfg = {"image_run": img.run_id, "method": method, "C": 1.0, "inner_folds": 3,
           "tabular": {"variables": ["lab", "sodium"], **tabular}}
    return fuse(cfg, workspace=ws).run


def _test_rows(ws, run):
    want = pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str})
    want = want[want["split"] == "test"]
    ds = ws.dataset("all@v1")
    return ds, [s for s in ds.series if s.subject_id in set(want["subject_id"])], want


@pytest.mark.parametrize("method", ["tabular", "late", "feature"])
def test_loaded_fusion_model_reproduces_the_runs_test_scores(clinical, method):
    """load_model(fusion run).predict on the run's test subjects gives its predictions.csv scores, with
    the variables from the dataset version or given as a table or a mapping keyed by subject."""
    from sobre.learn import FusionModel, load_model

    ws, img = clinical
    run = _fused(ws, img, method)
    model = load_model(run.run_id, workspace=ws)
    assert isinstance(model, FusionModel) and model.method == method and model.variables == ["lab", "sodium"]
    assert model.provenance["run_id"] == run.run_id and model.provenance["image_run"] == img.run_id
    assert model.provenance["image"]["run_id"] == img.run_id and model.provenance["image"]["checkpoints"]
    ds, series, want = _test_rows(ws, run)
    assert len(want) == 12 and want["subject_id"].isin([s.subject_id for s in series]).all()
    got = model.predict(ds, series=series)
    assert got.kind == "binary" and got.classes == ["control", "patient"] and len(got) == len(want)
    frame = got.frame().set_index("subject_id").loc[want["subject_id"]]
    np.testing.assert_allclose(frame["score"].to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-5)
    table = pd.DataFrame(ds.records())[["subject_id", "lab", "sodium"]]
    again = model.predict(ds, series=series, variables=table).scores
    np.testing.assert_array_equal(again, got.scores)
    by_subject = {r["subject_id"]: {"lab": r["lab"], "sodium": r["sodium"]} for r in table.to_dict("records")}
    np.testing.assert_array_equal(model.predict(ds, series=series, variables=by_subject).scores, got.scores)
    if method == "late":  # Images (a generator) with their subject ids and a table of variables
        def images():
            for s in series:
                img = ds.image(s)
                img.metadata["subject_id"] = s.subject_id  # a loaded file does not know its subject
                yield img

        with pytest.raises(InputError, match="scores subjects: image image-0 has no subject id"):
            model.predict([ds.image(series[0])], variables=table)
        on_images = model.predict(images(), variables=table)
        assert on_images.subjects == got.subjects
        np.testing.assert_allclose(on_images.scores, got.scores, rtol=0, atol=1e-12)


def test_fusion_model_refusals(clinical, tmp_path, capsys):
    import shutil

    import sobre
    from sobre.cli import main
    from sobre.learn import explain, load_model, open_run

    ws, img = clinical
    run = _fused(ws, img, "late", missing="refuse", variables=["sodium"])  # sodium: recorded for everyone
    model = load_model(run.path, workspace=ws)
    ds, series, _ = _test_rows(ws, run)
    table = pd.DataFrame(ds.records())[["subject_id", "sodium"]]
    who = series[3].subject_id
    holes = table.assign(sodium=np.where(table["subject_id"] == who, np.nan, table["sodium"]))
    with pytest.raises(InputError, match=f"'sodium' is missing for subject {who}") as e:
        model.predict(ds, series=series, variables=holes)
    assert "refuse" in e.value.expected
    with pytest.raises(InputError, match="needs the variable 'sodium': no such column in the variables given"):
        model.predict(ds, series=series, variables=table.rename(columns={"sodium": "natrium"}))
    with pytest.raises(InputError, match="no clinical variables for 1 subject"):
        model.predict(ds, series=series, variables=table[table["subject_id"] != who])
    flat = sobre.Image(np.zeros((16, 16), np.float32), np.eye(4), metadata={"subject_id": who, "sodium": 140.0})
    with pytest.raises(InputError, match="3D images; image-0 is 2D"):  # the image model's own checks
        model.predict([flat])
    with pytest.raises(InputError, match="fusion run: it has no encoder of its own") as e:
        model.features(ds)
    assert img.run_id in e.value.fix
    with pytest.raises(InputError, match="is a fusion run .*: saliency explains an image network"):
        explain(run.path, "all@v1", "occlusion", workspace=ws, write=False)
    # `sobre predict` scores series: it says how to use a fusion run instead
    assert main(["predict", str(run.path), "all@v1", "-w", str(ws.root), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "fusion run" in err and "load_model" in err
    # a copy of both runs: the image run's checkpoint changed; a fusion run from before the model format
    runs = tmp_path / "runs"
    for r in (img, run):
        shutil.copytree(r.path, runs / r.run_id)
    model = load_model(runs / run.run_id)  # the image run is found beside it
    assert model.provenance["image"]["path"] == str(runs / img.run_id)
    ckpt = runs / img.run_id / next(iter(model.spec["image_checkpoints"]))
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    with pytest.raises(InputError, match=f"run {img.run_id}: .* changed since the run recorded it"):
        load_model(runs / run.run_id)
    old = open_run(runs, run.run_id)
    doc = json.loads((old.path / "fusion.json").read_text())
    doc.pop("model")
    doc["format"] = "sobre.fusion/1"
    (old.path / "fusion.json").write_text(json.dumps(doc))
    old.add_artifact("fusion.json")
    with pytest.raises(InputError, match="fused before fusion runs became loadable models") as e:
        load_model(old.path)
    assert "fuse again" in e.value.fix

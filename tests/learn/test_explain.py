"""``explain``: saliency maps of a trained model on a dataset version (Captum IG, MONAI occlusion and Grad-CAM).

Maps come back on each input image's own grid (shape and affine), integrated gradients are complete
(attributions sum to f(x) - f(baseline)), regional shares match a hand count, a seed gives the same
files, and bad input is refused with the run and the dataset named, and nothing written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import sobre
from sobre.cli import main
from sobre.errors import InputError
from sobre.learn import explain, load_model, pretrain, region_shares, saliency, train

from .helpers import make_workspace, tiny_train_config

# the network sees a 3 mm grid, reoriented to LPS; the images are 2 mm NIfTI (RAS on disk): mapping back matters
PRE = {"resample": "spacing", "spacing": [3.0, 3.0, 3.0], "shape": [12, 12, 12]}
FAST = {"occlusion": {"mask_size": 4, "n_batch": 32}, "ig": {"steps": 16}, "gradcam": {}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws, _ = make_workspace(tmp_path_factory.mktemp("explain-ws"), 12)
    return ws


@pytest.fixture(scope="module")
def run(ws):
    cfg = tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 3}, preprocess=PRE,
                            model={"covariates": ["age"]})
    return train(cfg, workspace=ws).run


@pytest.fixture(scope="module")
def model(run):
    return load_model(run.path)


def half_atlas(img) -> sobre.Image:
    """Labels 1 (i < n/2) and 2 (the rest) on the image's grid."""
    lab = np.ones(img.spatial_shape, np.uint8)
    lab[img.spatial_shape[0] // 2:] = 2
    return sobre.Image(lab, img.affine, modality="SEG")


@pytest.mark.parametrize("method", ["ig", "occlusion", "gradcam"])
def test_maps_are_on_each_input_images_grid(ws, model, method, tmp_path):
    ds = ws.dataset("all@v1")
    res = explain(model, ds, method, series=[0, 1], out=tmp_path / "x", params=FAST[method],
                  atlas=lambda e: half_atlas(ds.image(e)), regions={1: "left", 2: "right"})
    for sub, entry in zip(res.subjects, ds.series[:2]):
        img = ds.image(entry)
        got = sobre.load(sub.path)
        assert got.spatial_shape == img.spatial_shape
        np.testing.assert_allclose(got.affine, img.affine, rtol=0, atol=1e-5)
        assert np.isfinite(got.array).all() and np.abs(got.array).sum() > 0
        assert set(sub.regions["name"]) == {"left", "right"}
        assert sub.regions["share"].sum() == pytest.approx(1.0)
    rep = json.loads((res.path / "explanation.json").read_text())
    assert rep["method"] == method and rep["dataset"]["ref"] == "all@v1" and rep["run"]["run_id"] == model.run_id
    assert rep["library"]["name"] == ("captum" if method == "ig" else "monai")
    assert [r["name"] for r in rep["regions"]] and (res.path / "explanation.md").read_text().startswith("# Explanation")
    assert (res.path / "regions.csv").is_file()


def test_integrated_gradients_are_complete(ws, model):
    ds = ws.dataset("all@v1")
    entry = ds.series[3]
    img = ds.image(entry)
    img.metadata["series_uid"] = entry.series_uid
    _, info = saliency(model, img, "ig", covariates={"age": entry.metadata["age"]}, params={"steps": 128})
    delta = info["output"] - info["output_at_baseline"]
    assert abs(delta) > 1e-3
    assert info["grid_sum"] == pytest.approx(delta, rel=0.02, abs=1e-4)


def test_region_shares_match_a_hand_count():
    s = np.array([[1.0, -3.0], [0.0, 4.0]])
    atlas = np.array([[0, 1], [1, 2]])
    df = region_shares(s, atlas, {1: "a", 2: "b"}).set_index("label")
    # |s| = 1, 3, 0, 4 (total 8): outside 1/8, a (3 + 0)/8, b 4/8; voxels 1, 2, 1 of 4
    assert df.loc[0, "name"] == "outside atlas" and df.loc[1, "name"] == "a"
    np.testing.assert_allclose(df["share"], [1 / 8, 3 / 8, 4 / 8])
    np.testing.assert_allclose(df["voxel_share"], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(df["enrichment"], [0.5, 0.75, 2.0])
    np.testing.assert_allclose(df["mean"], [1.0, -1.5, 4.0])
    assert df["voxels"].tolist() == [1, 2, 1]


def test_a_seed_gives_the_same_maps(ws, model, tmp_path):
    ds = ws.dataset("all@v1")
    runs = [explain(model, ds, "occlusion", series=[2], out=tmp_path / f"r{i}", seed=7, params=FAST["occlusion"])
            for i in range(2)]
    a, b = (json.loads((r.path / "explanation.json").read_text())["subjects"][0] for r in runs)
    assert a["map_sha256"] == b["map_sha256"] and a["output"] == b["output"]


def test_integrated_gradients_from_the_images_air(ws, model):
    """baseline = "min": each image's own minimum (no signal); still complete, the value recorded."""
    ds = ws.dataset("all@v1")
    entry = ds.series[3]
    img = ds.image(entry)
    img.metadata["series_uid"] = entry.series_uid
    x, _ = model.prepare(img)
    _, info = saliency(model, img, "ig", covariates={"age": entry.metadata["age"]},
                       params={"steps": 128, "baseline": "min"})
    assert info["baseline_value"] == pytest.approx(float(x.min()))
    assert info["params"]["baseline"] == "min"
    delta = info["output"] - info["output_at_baseline"]
    assert abs(delta) > 1e-3
    assert info["grid_sum"] == pytest.approx(delta, rel=0.02, abs=1e-4)
    for bad in ("max", float("nan"), True):
        with pytest.raises(InputError, match="unknown baseline"):
            saliency(model, img, "ig", covariates={"age": entry.metadata["age"]}, params={"baseline": bad})


def test_smoothgrad_over_integrated_gradients(ws, model):
    """smooth_samples > 0: Captum's NoiseTunnel over IG; same seed, same map; bad settings refused."""
    ds = ws.dataset("all@v1")
    entry = ds.series[3]
    img = ds.image(entry)
    img.metadata["series_uid"] = entry.series_uid
    cov = {"age": entry.metadata["age"]}
    a, info = saliency(model, img, "ig", covariates=cov, params={"steps": 8, "smooth_samples": 3}, seed=5)
    b, _ = saliency(model, img, "ig", covariates=cov, params={"steps": 8, "smooth_samples": 3}, seed=5)
    plain, _ = saliency(model, img, "ig", covariates=cov, params={"steps": 8}, seed=5)
    assert a.shape == img.shape and np.isfinite(a.array).all() and np.abs(a.array).sum() > 0
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.array_equal(a.array, plain.array)
    assert info["params"]["smooth_samples"] == 3 and info["params"]["smooth_noise"] == 0.15
    for bad in ({"smooth_samples": -1}, {"smooth_samples": 2.5}, {"smooth_samples": 2, "smooth_noise": 0},
                {"smooth_samples": 2, "smooth_noise": 3.0}):
        with pytest.raises(InputError, match="smooth_"):
            saliency(model, img, "ig", covariates=cov, params=bad)
    with pytest.raises(InputError, match="does not apply to method gradcam"):
        saliency(model, img, "gradcam", covariates=cov, params={"smooth_samples": 2})


def test_bad_input_names_the_run_and_dataset_and_writes_nothing(ws, run, model, tmp_path):
    out = tmp_path / "never"
    ds = ws.dataset("all@v1")
    with pytest.raises(InputError, match=rf"unknown saliency method 'lime' for run {run.run_id} on all@v1"):
        explain(run.path, "all@v1", "lime", workspace=ws, out=out)
    other = lambda e: sobre.Image(np.ones((5, 5, 5), np.uint8), np.eye(4))  # noqa: E731 - another space
    with pytest.raises(InputError, match=rf"atlas of subject \S+ is in another space than its image in all@v1 "
                                         rf"\(explaining run {run.run_id}\)"):
        explain(model, ds, "gradcam", out=out, atlas=other)
    def shifted(e):  # the same shape, 5 mm away
        img = ds.image(e)
        return sobre.Image(np.ones(img.spatial_shape, np.uint8), img.affine + _shift())

    with pytest.raises(InputError, match="in another space"):
        explain(model, ds, "gradcam", out=out, atlas=shifted)
    enc = pretrain({"seed": 0, "data": {"dataset": "all@v1"}, "method": {"kind": "simclr"},
                    "model": {"width": 4, "depth": 2}, "optim": {"epochs": 1, "batch_size": 8},
                    "runtime": {"progress": False}}, workspace=ws)
    with pytest.raises(InputError, match=rf"run {enc.run.run_id} is a pretraining run.*explaining all@v1"):
        explain(enc.run.path, "all@v1", "ig", workspace=ws, out=out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def _shift() -> np.ndarray:
    """An affine offset of 5 mm along the first axis: the same shape, another place."""
    m = np.zeros((4, 4))
    m[0, 3] = 5.0
    return m


def test_cli_explains_and_refuses_cleanly(ws, run, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["explain", run.run_id, "--dataset", "all@v1", "-w", str(ws.root), "--method", "gradcam",
               "--out", str(out), "--json"])
    got = capsys.readouterr()
    assert rc == 0, got.err
    rep = json.loads(got.out)
    assert rep["method"] == "gradcam" and len(rep["subjects"]) == 12 and (out / "maps").is_dir()
    rc = main(["explain", run.run_id, "--dataset", "all@v1", "-w", str(ws.root), "--method", "saliency",
               "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: unknown saliency method 'saliency' for run {run.run_id} on all@v1")
    assert not (tmp_path / "bad").exists()
    rc = main(["explain", run.run_id, "--dataset", "all@v1", "-w", str(ws.root), "--method", "gradcam",
               "--out", str(out)])
    assert rc == 2 and "exists" in capsys.readouterr().err

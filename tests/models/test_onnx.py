"""ONNX export: ONNX Runtime matches PyTorch eager within the stated tolerance; int8 is measured, not assumed."""

from __future__ import annotations

import numpy as np
import pytest

from sobre.errors import InputError
from sobre.models import Registry, register


@pytest.fixture(scope="module")
def exported(site):
    ws, run = site
    register(ws, run.run_id, "blobs-onnx", "1", measure=False)
    return Registry(ws).export_onnx("blobs-onnx@1", {"repeats": 5})


def test_onnx_matches_pytorch_within_tolerance(site, exported):
    ws, _ = site
    rec = exported.onnx
    chk = rec["check"]
    assert chk["passed"] and chk["max_abs_diff"] <= chk["atol"] == 1e-4
    assert chk["n"] == 8 and "training split of all@v1" in chk["inputs"]
    assert "onnx/member0.onnx" in exported.files and "onnx/onnx.json" in exported.files
    ds = ws.dataset("all@v1")
    torch_scores = exported.load(precision="fp32").predict(ds).scores
    ort = exported.load(runtime="onnx-fp32")
    assert ort.runtime == "onnx-fp32" and ort.task.kind == "binary"
    ort_scores = ort.predict(ds).scores
    assert np.max(np.abs(ort_scores - torch_scores)) <= 1e-4
    with pytest.raises(InputError, match="features"):
        ort.features(ds)


def test_int8_is_measured_and_chosen_by_measurement(exported):
    rec = exported.onnx
    lat, int8, held = rec["latency"], rec["int8"], rec["heldout"]
    assert int8["measured"] and isinstance(int8["chosen"], bool) and int8["reason"]
    assert lat["ort_fp32_ms"] > 0 and lat["ort_int8_ms"] > 0 and lat["torch_fp32_ms"] > 0
    assert lat["ort_int8_over_ort_fp32"] == pytest.approx(lat["ort_int8_ms"] / lat["ort_fp32_ms"])
    assert lat["machine"]["threads"] >= 1 and "load_average_1_5_15" in lat["machine"]
    assert held["measured"] and held["n"] == 5 and held["metric"] == "auc"
    assert "auc_delta_int8" in held and 0 <= held["agreement_ort_int8_vs_torch_fp32"] <= 1
    assert rec["recommended"] in ("onnx-int8", "onnx-fp32", "torch")
    auto = exported.load(runtime="auto")
    assert getattr(auto, "runtime", "torch") == rec["recommended"]
    if int8["chosen"]:
        assert "onnx/member0.int8.onnx" in exported.files
        assert exported.load(runtime="onnx").runtime == "onnx-int8"
    else:
        assert "onnx/member0.int8.onnx" not in exported.files
        assert exported.load(runtime="onnx").runtime == "onnx-fp32"
        with pytest.raises(InputError, match="no int8 network"):
            exported.load(runtime="onnx-int8")


def test_export_keeps_the_model_and_resigns_the_package(exported):
    chk = exported.verify()
    assert chk.ok and chk.signed_by == "this site"
    hist = exported.manifest["history"]
    assert hist[-1]["event"] == "onnx export" and hist[-1]["previous_package_sha256"] != exported.package_sha256
    card = exported.card["sections"]["runtime"]["onnx"]
    assert card["recommended_runtime"] == exported.onnx["recommended"]
    assert card["check"]["max_abs_diff"] == exported.onnx["check"]["max_abs_diff"]
    assert not [p for p in exported.path.parent.iterdir() if p.name.startswith(".")]  # no build folder left


def test_onnx_runtime_needs_an_export(package):
    with pytest.raises(InputError, match="holds no ONNX export.*export-onnx"):
        package.load(runtime="onnx")
    with pytest.raises(InputError, match="unknown runtime"):
        package.load(runtime="tensorrt")

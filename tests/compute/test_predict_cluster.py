"""Batch prediction over a dataset version on a Dask cluster: the same predictions file as here."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("torch")

from learn.helpers import make_workspace, tiny_train_config  # noqa: E402  (tests/ is on sys.path)
from sobre.apps import predict  # noqa: E402
from sobre.cli import main  # noqa: E402


def _outputs(out) -> dict:
    """Every output file except app-result.json (it records times) and predictions.json (same reason)."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("app-result.json",)}


def test_predict_on_a_dataset_version_on_the_cluster_equals_the_local_run(cluster, tmp_path, capfd):
    from sobre.learn import train

    ws, _ = make_workspace(tmp_path / "data", 24)
    run = train(tiny_train_config(data={"dataset": "all@v1"}, optim={"epochs": 2}), workspace=ws).run
    local = predict(run.path, ["all@v1"], tmp_path / "local", workspace=ws)
    dist = predict(run.path, ["all@v1"], tmp_path / "dist", workspace=ws, compute=cluster.address)
    assert len(local.frame) == 24
    assert dist.frame.equals(local.frame)  # the same scores, to the last bit
    assert _outputs(tmp_path / "dist") == _outputs(tmp_path / "local")
    # the command line: --scheduler
    code = main(["predict", run.run_id, "all@v1", "-w", str(ws.root), "--out", str(tmp_path / "cli"),
                 "--scheduler", cluster.address])
    out = capfd.readouterr()
    assert code == 0, out.err
    assert f"cluster: {cluster.address}, 2 worker(s)" in out.err
    assert (tmp_path / "cli" / "predictions.csv").read_bytes() == (tmp_path / "local" / "predictions.csv").read_bytes()
    ws.close()

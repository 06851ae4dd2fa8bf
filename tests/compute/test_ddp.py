"""Data-parallel training (PyTorch DDP, gloo on CPU) equals training in one process.

* The contrastive losses with negatives gathered across 2 processes (uneven blocks: 4 + 3 rows)
  equal the single-process losses on the same batch, and so do the gradients and the batch-norm
  statistics (within 1e-5: float32 sums in another order).
* ``sobre pretrain --nproc 2`` and ``sobre train --nproc 2`` follow the loss curve of one process
  with the same global batch and seed within a relative 1e-3 per epoch, in float32 (reductions split
  across processes and threads accumulate in another order; observed differences are ~1e-6). Under
  bf16 autocast (precision = "bf16") the first step's loss already differs by ~5e-4:
  bf16 rounds each process's block on its own, so the tests pin ``precision = "fp32"``.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

pytest.importorskip("torch")

from learn.helpers import make_workspace  # noqa: E402  (tests/ is on sys.path)
from sobre.cli import main  # noqa: E402

from . import ddp_worker  # noqa: E402

TOL = 1e-3  # relative, per epoch's mean training loss


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_negatives_give_the_single_process_loss_and_gradients():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=ddp_worker.member, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    want = ddp_worker.single()
    for rank in (0, 1):
        for name, value in want["loss"].items():
            assert got[rank]["loss"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (rank, name)
        for a, b in zip(got[rank]["grads"], want["grads"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(got[rank]["buffers"], want["buffers"]):
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws, _ = make_workspace(tmp_path_factory.mktemp("ddp"), 40)
    yield ws
    ws.close()


PRETRAIN = """
seed = 3
[data]
dataset = "all@v1"
[method]
kind = "yaware"
variables = ["age"]
bandwidth = [5.0]
[model]
width = 4
depth = 2
[optim]
epochs = 3
batch_size = 14
[[augment]]
kind = "flip"
[monitor]
val_fraction = 0.2
regress = ["age"]
[runtime]
progress = false
precision = "fp32"  # bf16 autocast rounds per block: compare the maths in fp32
"""

TRAIN = """
seed = 2
[data]
dataset = "all@v1"
[task]
kind = "binary"
label = "diagnosis"
positive = "patient"
[split]
test_fraction = 0.25
[model]
width = 4
depth = 2
[optim]
epochs = 3
batch_size = 9
[[augment]]
kind = "flip"
[runtime]
progress = false
precision = "fp32"  # bf16 autocast rounds per block: compare the maths in fp32
"""


def _curve(ws, capfd, command: str, config, *extra) -> tuple[list, dict]:
    code = main([command, str(config), "-w", str(ws.root), "--json", *extra])
    out = capfd.readouterr()  # the processes of --nproc write to the file descriptors
    assert code == 0, out.err
    run = json.loads(out.out)
    record = json.loads((ws.root / "runs" / run["run_id"] / "run.json").read_text())
    return [(e.get("group"), e["epoch"], e["train_loss"]) for e in record["epochs"] if "train_loss" in e], record


@pytest.mark.parametrize("command,text", [("pretrain", PRETRAIN), ("train", TRAIN)])
def test_two_processes_follow_the_loss_curve_of_one(ws, tmp_path, capfd, command, text):
    cfg = tmp_path / f"{command}.toml"
    cfg.write_text(text)
    one, rec1 = _curve(ws, capfd, command, cfg)
    two, rec2 = _curve(ws, capfd, command, cfg, "--nproc", "2")
    assert [c[:2] for c in two] == [c[:2] for c in one] and len(one) >= 3
    for (_, _, a), (_, _, b) in zip(one, two):
        assert b == pytest.approx(a, rel=TOL)
    assert rec2["runtime"]["data_parallel"] == {"processes": 2, "backend": "gloo"}
    assert "data_parallel" not in rec1["runtime"]
    if command == "train":
        assert rec2["metrics"]["test"]["auc"] == pytest.approx(rec1["metrics"]["test"]["auc"], abs=0.05)

"""Fixtures for the model-package tests: one tiny trained and evaluated run, shared read-only.

The run's positive class is named ``<script>alert(1)</script>``: every card rendering must escape it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import pytest  # noqa: E402

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


def make_site(root, n: int = 24):
    """A workspace with blobs of two sites (patients labelled SCRIPT), frozen as all@v1."""
    from learn.helpers import write_bids

    from sobre.catalog import Workspace

    folders = write_bids(root / "bids", n)
    for folder in folders.values():
        tsv = folder / "participants.tsv"
        tsv.write_text(tsv.read_text().replace("\tpatient\t", f"\t{SCRIPT}\t"))
    ws = Workspace.init(root / "ws")
    for site, folder in folders.items():
        ws.ingest([folder], site=site)
    ws.cohort_create("all", 'modality == "MR"')
    ws.freeze("all")
    return ws


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """(workspace, completed run with an evaluate report in RUN/report/)."""
    from learn.helpers import tiny_train_config

    from sobre.learn import train
    from sobre.validate import evaluate

    ws = make_site(tmp_path_factory.mktemp("site-a"))
    cfg = tiny_train_config(data={"dataset": "all@v1"}, task={"positive": SCRIPT}, optim={"epochs": 2})
    run = train(cfg, workspace=ws).run
    evaluate(run.path, n_bootstrap=100, site_analysis=False).write(run.path / "report")
    return ws, run


@pytest.fixture(scope="session")
def package(site):
    """The run registered as blobs@1.0 (no runtime measurement: fast)."""
    from sobre.models import register

    ws, run = site
    return register(ws, run.run_id, "blobs", "1.0", measure=False,
                    info={"intended_use": {"purpose": f"triage of {SCRIPT}"}, "details": {"developers": "tests"}})

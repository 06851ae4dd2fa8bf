"""Fixtures for the learning tests (data generators in ``helpers.py``)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import pytest  # noqa: E402

from .helpers import blob_arrays, make_workspace  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def blobs():
    """An in-memory cohort of 96 subjects (3 sites, half patients)."""
    from sobre.learn import Cohort

    imgs, meta, masks = blob_arrays(96)
    return Cohort.from_arrays(imgs, meta, masks=masks, name="blobs")


@pytest.fixture(scope="session")
def blob_workspace(tmp_path_factory):
    """(workspace, dataset ref) with 40 subjects from 2 sites; shared by read-only tests."""
    return make_workspace(tmp_path_factory.mktemp("learn-ws"), 40)

"""Fixtures of the compute tests: a real Dask cluster on loopback (scheduler + 2 workers, separate processes)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import pytest  # noqa: E402

from .cluster import LoopbackCluster, dask_available  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:  # a cluster of processes: part of the default run, but marked
        if item.fspath.dirname.endswith("compute"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A running loopback cluster shared by the tests that do not break it: ``cluster.address``."""
    if not dask_available():
        pytest.skip("Dask distributed is not installed (pip install -e '.[cluster]')")
    c = LoopbackCluster(workers=2, log_dir=tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster of this test only (to kill or change workers): started by the test with ``.start()``."""
    if not dask_available():
        pytest.skip("Dask distributed is not installed (pip install -e '.[cluster]')")
    c = LoopbackCluster(workers=2, log_dir=tmp_path / "cluster")
    yield c
    c.stop()

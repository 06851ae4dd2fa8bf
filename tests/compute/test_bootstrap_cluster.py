"""Bootstrap resampling on a Dask cluster gives the same intervals, digit for digit, as here."""

from __future__ import annotations

import numpy as np
import pytest

from sobre.base import open_compute, use_compute
from sobre.validate import binary_metrics, bootstrap
from sobre.validate._estimate import DISTRIBUTE_MIN  # the threshold this test must exceed


def test_a_large_bootstrap_on_the_cluster_equals_the_local_one(cluster):
    rng = np.random.default_rng(5)
    n = 20_000
    y = rng.integers(0, 2, n)
    x = rng.normal(y * 0.8, 1.0)

    def stat(w):
        return {"mean": w @ x / w.sum(1), "gap": (w * y) @ x / (w @ y) - (w * (1 - y)) @ x / (w @ (1 - y))}

    assert n * 1000 >= DISTRIBUTE_MIN
    local, rep_local = bootstrap(stat, n, n_resamples=1000, seed=3, strata=y, return_replicates=True)
    with open_compute(cluster.address) as compute:
        dist, rep_dist = bootstrap(stat, n, n_resamples=1000, seed=3, strata=y, return_replicates=True,
                                   compute=compute)
        for k in local:
            np.testing.assert_array_equal(rep_dist[k], rep_local[k])
        assert dist == local
        with use_compute(compute):  # how `sobre evaluate --scheduler` reaches the bootstraps deep inside
            m = binary_metrics(y, 1 / (1 + np.exp(-x)), n_resamples=1000, seed=2)
    assert m == binary_metrics(y, 1 / (1 + np.exp(-x)), n_resamples=1000, seed=2)

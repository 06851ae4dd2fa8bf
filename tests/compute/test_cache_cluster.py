"""Preprocessing caches of dataset versions built on a Dask cluster: the same bytes as a local build."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("torch")

from learn.helpers import make_workspace  # noqa: E402  (tests/ is on sys.path)
from sobre.learn import DataConfig, PreprocessConfig, load_cohort  # noqa: E402


def _files(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_cache_built_on_the_cluster_equals_the_local_one(cluster, tmp_path):
    data = DataConfig(dataset="all@v1")
    pre = PreprocessConfig(resample="shape", shape=[12, 12, 12], intensity="zscore")
    caches = []
    for where in ("local", cluster.address):
        ws, ref = make_workspace(tmp_path / where[:5], 24, with_masks=True, where='modality == "MR"')
        cohort = load_cohort(ws, data, pre, compute=where)
        assert len(cohort) == ref.n_series
        caches.append((cohort.source["cache_key"], _files(Path(cohort.source["cache"]))))
        ws.close()
    assert caches[0] == caches[1] and "images.npy" in caches[0][1]

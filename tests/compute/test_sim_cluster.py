"""``sobre simulate`` on a Dask cluster: the same bytes as on this machine (brain MRI and CT lesions)."""

from __future__ import annotations

import hashlib

import pytest

from sobre.cli import main


def _tree(root) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_brain_cohort_simulated_on_the_cluster_equals_the_local_one(cluster, tmp_path, capfd):
    from sobre import samples

    if not samples.is_available("mricron-data"):
        pytest.skip("sample 'mricron-data' (Colin27 + AAL) is not fetched; run `sobre samples fetch mricron-data`")
    args = ["--subjects", "4", "--sites", "2", "--seed", "7", "--format", "dicom", "--resolution", "4",
            "--disease", "accelerated-ageing", "--json"]
    assert main(["simulate", "brain", str(tmp_path / "local"), *args]) == 0
    assert main(["simulate", "brain", str(tmp_path / "dist"), *args, "--scheduler", cluster.address]) == 0
    capfd.readouterr()
    local, dist = _tree(tmp_path / "local"), _tree(tmp_path / "dist")
    assert sum(k.startswith("dicom/") for k in local) >= 4 and dist == local


def test_ct_lesions_simulated_on_the_cluster_equal_the_local_ones(cluster, tmp_path, capfd):
    import sobre
    from sim.conftest import phantom_ct  # tests/ is on sys.path

    bg = tmp_path / "bg.nii.gz"
    sobre.save(phantom_ct(shape=(48, 40, 20)), bg)
    args = ["--backgrounds", str(bg), "--cases", "3", "--seed", "2", "--lesions-per-case", "2", "--json"]
    assert main(["simulate", "ct-lesions", str(tmp_path / "local"), *args]) == 0
    assert main(["simulate", "ct-lesions", str(tmp_path / "dist"), *args, "--scheduler", cluster.address]) == 0
    capfd.readouterr()
    local, dist = _tree(tmp_path / "local"), _tree(tmp_path / "dist")
    assert len(local) >= 6 and dist == local

"""Lesions inserted into CT: where they go, their masks, sizes and HU; tables; determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

import sobre
from sobre.base import ProgressRecorder
from sobre.errors import InputError
from sobre.sim import (
    CTLesionCohortConfig,
    LesionConfig,
    insert_lesions,
    tissue_masks,
    write_ct_lesion_cohort,
)
from sobre.sim._ct import stratum_name

from .conftest import phantom_ct


def test_lesions_go_only_into_lung_or_soft_tissue(phantom):
    cfg = LesionConfig(lesions_per_case=(6, 6), sizes_mm=(3, 30), kinds=("solid", "ground-glass", "soft-tissue"))
    ct, mask, rows = insert_lesions(phantom, cfg, seed=3)
    hu0 = phantom.array.astype(float)
    tis = tissue_masks(hu0, phantom.spacing)
    placed = [r for r in rows if r["placed"]]
    assert len(placed) >= 4
    m = mask.array
    assert set(np.unique(m)) == set(range(len(placed) + 1))
    for r in placed:
        inside = m == r["lesion_id"]
        assert inside.any()
        region = tis.lung if r["region"] == "lung" else tis.soft
        assert region[inside].all(), f"lesion {r['lesion_id']} leaves its {r['region']}"
        assert (hu0[inside] > -980).all() and tis.body[inside].all()  # never in air or outside the body
        # the table's centre is the mask's centroid (within a voxel) and the size stratum fits the diameter
        cen = np.argwhere(inside).mean(axis=0)
        assert np.allclose(cen, [r["center_i"], r["center_j"], r["center_k"]], atol=1.0)
        assert r["size_stratum"] == stratum_name(r["diameter_mm"], (10, 20), 30)
        if r["kind"] == "solid":
            assert ct.array[inside].mean() > -300  # soft-tissue density in the lung
        if r["kind"] == "soft-tissue":
            assert abs(r["contrast_hu"]) >= 20
    # the CT is unchanged away from the lesions
    far = ~np.isin(m, [r["lesion_id"] for r in placed])
    far = np.logical_and(far, ~ndi.binary_dilation(m > 0, iterations=4))
    assert np.array_equal(ct.array[far], phantom.array[far])


def test_masks_are_exact_for_large_lesions():
    img = phantom_ct(shape=(110, 96, 60), spacing=(1.0, 1.0, 1.0))
    cfg = LesionConfig(lesions_per_case=(3, 3), sizes_mm=(12, 18), kinds=("solid",), max_elongation=1.3)
    _, mask, rows = insert_lesions(img, cfg, seed=1)
    for r in (r for r in rows if r["placed"]):
        vol = float((mask.array == r["lesion_id"]).sum())
        assert vol == pytest.approx(r["volume_mm3"], rel=0.06)
        assert r["partial_volume_mm3"] == pytest.approx(r["volume_mm3"], rel=0.03)


def test_strata_are_balanced_and_runs_deterministic(phantom):
    cfg = LesionConfig(lesions_per_case=(3, 3), sizes_mm=(3, 30), kinds=("solid",), gap_mm=2)
    a = insert_lesions(phantom, cfg, seed=9)
    b = insert_lesions(phantom, cfg, seed=9)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array) and a[2] == b[2]
    strata = sorted(r["size_stratum"] for r in a[2] if r["placed"])
    assert strata == sorted(["<10", "10-20", "20-30"])


def test_refuses_what_is_not_ct():
    mr = sobre.Image(np.random.default_rng(0).integers(0, 800, (20, 20, 10)).astype(np.int16), np.eye(4))
    with pytest.raises(InputError, match="does not look like a CT in Hounsfield units"):
        insert_lesions(mr, LesionConfig(), seed=0)


def test_cohort_on_disk_with_phantom(tmp_path):
    src = tmp_path / "bg.nii.gz"
    sobre.save(phantom_ct(), src)
    cfg = CTLesionCohortConfig(backgrounds=[str(src)], cases=2, seed=5,
                               lesions=LesionConfig(lesions_per_case=(2, 4), sizes_mm=(3, 30)))
    rec = ProgressRecorder()
    rep = write_ct_lesion_cohort(cfg, tmp_path / "out", progress=rec)
    assert rec.calls == [("cases", 0, 2), ("cases", 1, 2), ("cases", 2, 2)]
    rows = list(csv.DictReader(Path(tmp_path / "out" / "lesions.tsv").read_text().splitlines(), delimiter="\t"))
    assert len(rows) == rep.extra["lesions"] >= 4 and all(r["simulated"] == "yes" for r in rows)
    bg = sobre.load(src)
    for case in ("case-0001", "case-0002"):
        img = sobre.load(tmp_path / "out" / "images" / f"{case}.nii.gz")
        mask = sobre.load(tmp_path / "out" / "masks" / f"{case}.nii.gz")
        assert np.allclose(img.affine, bg.affine) and img.shape == bg.shape == mask.shape
        n = sum(r["case_id"] == case for r in rows)
        assert int(mask.array.max()) == n
    rep2 = write_ct_lesion_cohort(cfg, tmp_path / "out2")
    assert (tmp_path / "out" / "lesions.tsv").read_bytes() == (tmp_path / "out2" / "lesions.tsv").read_bytes()
    assert (tmp_path / "out" / "images" / "case-0002.nii.gz").read_bytes() == \
        (tmp_path / "out2" / "images" / "case-0002.nii.gz").read_bytes()
    assert rep2.extra == rep.extra


def test_real_lung_ct(lung_ct_paths, tmp_path):
    lung_ct_paths = lung_ct_paths[:1]
    cfg = CTLesionCohortConfig(backgrounds=[str(p) for p in lung_ct_paths], seed=2,
                               lesions=LesionConfig(lesions_per_case=(6, 6), sizes_mm=(3, 30)))
    write_ct_lesion_cohort(cfg, tmp_path / "out", format="nrrd")
    rows = list(csv.DictReader(Path(tmp_path / "out" / "lesions.tsv").read_text().splitlines(), delimiter="\t"))
    assert len(rows) == 6
    by = {}
    for r in rows:
        by[r["size_stratum"]] = by.get(r["size_stratum"], 0) + 1
    assert set(by) == {"<10", "10-20", "20-30"} and min(by.values()) >= 2
    for i, p in enumerate(lung_ct_paths):
        bg = sobre.load(p)
        hu0 = bg.array.astype(float)
        tis = tissue_masks(hu0, bg.spacing)
        mask = sobre.load(tmp_path / "out" / "masks" / f"case-{i + 1:04d}.nii.gz").array
        img = sobre.load(tmp_path / "out" / "images" / f"case-{i + 1:04d}.nrrd")
        assert np.allclose(img.affine, bg.affine)
        assert ((tis.lung | tis.soft)[mask > 0]).all() and (hu0[mask > 0] > -980).all()

"""Generated data for the learning tests: small blobs whose size follows a variable.

A subject's 3D image is a bright ball whose radius grows with its ``age`` (and, for patients, with
the disease), with a site-specific intensity scale and offset, plus noise. Volumes are 16³ so that
a tiny CNN learns them in seconds on 2 CPU cores. Fixed seeds: the same call gives the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 20241125
SITES = ("north", "south", "east")


def blob_arrays(n: int, size: int = 16, *, seed: int = SEED, disease: float = 1.5, sites=SITES, noise: float = 0.25,
                dims: int = 3, site_effect: float = 0.3):
    """(images (n, *shape) float32, metadata list, masks (n, *shape) uint8).

    Radius = 2.5 + 0.06 * (age - 20) + disease * patient (voxels), centre shifted by up to a voxel;
    intensity scale and offset per site.
    """
    rng = np.random.default_rng(seed)
    shape = (size,) * dims
    grid = np.stack(np.meshgrid(*[np.arange(size) - size / 2 + 0.5] * dims, indexing="ij"), 0)
    images, meta, masks = [], [], []
    for i in range(n):
        age = float(rng.uniform(20, 80))
        patient = i % 2 == 1
        site_i = i % len(sites)
        radius = 2.5 + 0.06 * (age - 20) + (disease if patient else 0.0)
        centre = rng.uniform(-1.0, 1.0, dims).reshape(-1, *([1] * dims))  # masks differ from subject to subject
        mask = np.sqrt(((grid - centre) ** 2).sum(0)) < radius
        scale = 1.0 + site_effect * site_i
        img = scale * mask.astype(np.float32) + site_effect * site_i + noise * rng.standard_normal(shape)
        images.append(img.astype(np.float32))
        masks.append(mask.astype(np.uint8))
        meta.append({"subject_id": f"sub-{i:03d}", "age": round(age, 1), "sex": "F" if i % 4 < 2 else "M",
                     "site": sites[site_i], "diagnosis": "patient" if patient else "control",
                     "grade": ["low", "mid", "high"][int(age // 27) % 3],
                     "a": int(age > 50), "b": int(patient)})
    return np.stack(images), meta, np.stack(masks)


def bench_cohorts():
    """The label-efficiency tests' in-memory cohorts: 64 healthy subjects to pretrain on, 80 target subjects."""
    from sobre.learn import Cohort

    imgs, meta, _ = blob_arrays(64, seed=1, disease=0.0)
    pre = Cohort.from_arrays(imgs, meta, name="healthy")
    imgs, meta, _ = blob_arrays(80, seed=2)
    return pre, Cohort.from_arrays(imgs, meta, name="target")


def tiny_train_config(**over) -> dict:
    cfg = {"seed": 0, "data": {"dataset": "blobs"},
           "task": {"kind": "binary", "label": "diagnosis", "positive": "patient"},
           "model": {"width": 4, "depth": 2}, "optim": {"epochs": 3, "batch_size": 16, "lr": 3e-3},
           "runtime": {"progress": False}}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def write_bids(root: Path, n: int = 40, *, seed: int = SEED, sizes=None, with_masks: bool = False,
               sites=("north", "south")) -> dict[str, Path]:
    """BIDS folders, one per site (``root/<site>/sub-XXX/anat/sub-XXX_T1w.nii.gz`` + participants.tsv).

    ``sizes`` optionally gives a per-subject cube size (to make inconsistent shapes).
    """
    import sobre

    imgs, meta, masks = blob_arrays(n, seed=seed, sites=sites)
    folders = {}
    for s in sites:
        d = root / s
        d.mkdir(parents=True, exist_ok=True)
        folders[s] = d
        (d / "participants.tsv").write_text("participant_id\tage\tsex\tdiagnosis\tgrade\n")
    for i, (img, m, mk) in enumerate(zip(imgs, meta, masks)):
        d = folders[m["site"]] / m["subject_id"] / "anat"
        d.mkdir(parents=True, exist_ok=True)
        arr = img
        if sizes is not None and sizes[i] != img.shape[0]:
            arr = np.zeros((sizes[i],) * 3, np.float32)
            k = min(sizes[i], img.shape[0])
            arr[:k, :k, :k] = img[:k, :k, :k]
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        sobre.save(sobre.Image((arr * 1000).astype(np.int16), aff, modality="MR"), d / f"{m['subject_id']}_T1w.nii.gz")
        if with_masks:
            sobre.save(sobre.Image(mk.astype(np.uint8), aff, modality="MR"), d / f"{m['subject_id']}_mask.nii.gz")
        with open(folders[m["site"]] / "participants.tsv", "a") as fh:
            fh.write(f"{m['subject_id']}\t{m['age']}\t{m['sex']}\t{m['diagnosis']}\t{m['grade']}\n")
    return folders


def make_workspace(root: Path, n: int = 40, *, with_masks: bool = False, sizes=None, cohort: str = "all",
                   where: str = 'modality == "MR"'):
    """A workspace holding the BIDS blobs of two sites and a frozen version ``<cohort>@v1``."""
    from sobre.catalog import Workspace

    folders = write_bids(root / "bids", n, with_masks=with_masks, sizes=sizes)
    ws = Workspace.init(root / "ws")
    for site, folder in folders.items():
        rep = ws.ingest([folder], site=site)
        assert not rep.clinical_error, rep.clinical_error
    ws.cohort_create(cohort, where)
    ref = ws.freeze(cohort)
    return ws, ref



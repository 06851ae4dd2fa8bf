"""Generated CT phantoms with bright lesions and a tiny segmentation model trained on them.

A phantom is a soft-tissue ellipse (40 HU, noise) in air with one or two spherical lesions at
~220 HU: a 4-channel U-Net learns them in a few seconds on 2 CPU cores. Fixed seeds throughout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 20241125
SPACING = (1.5, 1.5, 3.0)
SIMULATED = {"SyntheticData": "YES", "PatientIdentityRemoved": "YES", "DeidentificationMethod": "Sobre phantom"}


def phantom(shape=(32, 32, 12), *, seed: int = SEED, lesions: int = 1):
    """(HU array int16, mask uint8): a body ellipse with ``lesions`` bright spheres."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    ci, cj = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    body = ((i - ci) / (0.45 * shape[0])) ** 2 + ((j - cj) / (0.4 * shape[1])) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, shape)
    mask = np.zeros(shape, np.uint8)
    for _ in range(lesions):
        c = [rng.uniform(0.35, 0.65) * shape[0], rng.uniform(0.35, 0.65) * shape[1], rng.uniform(0.3, 0.7) * shape[2]]
        r = rng.uniform(3.0, 4.5)
        ball = ((i - c[0]) ** 2 + (j - c[1]) ** 2 + ((k - c[2]) * SPACING[2] / SPACING[0]) ** 2) <= r * r
        mask[ball & body] = 1
    hu[mask == 1] = 220.0 + rng.normal(0, 12, int(mask.sum()))
    return np.round(hu).astype(np.int16), mask


def phantom_image(shape=(32, 32, 12), *, seed: int = SEED, lesions: int = 1, affine=None):
    import sobre

    hu, mask = phantom(shape, seed=seed, lesions=lesions)
    aff = np.diag([*SPACING, 1.0]) if affine is None else np.asarray(affine, float)
    if affine is None:
        aff[:3, 3] = (-20.0, -30.0, 10.0)
    return sobre.Image(hu, aff, modality="CT"), sobre.Image(mask, aff, modality="SEG")


def write_ct_series(folder: Path, image, **meta) -> list[Path]:
    """The phantom as a single-frame CT series, marked simulated and de-identified."""
    import sobre

    base = {"patient_id": "PHANTOM-001", "patient_name": "Phantom^One", "study_date": "20250102", "study_time": "101500",
            "series_description": "phantom abdomen", "body_part": "ABDOMEN", "study_id": "S1",
            "accession_number": "ACC1"}
    base.update(meta)
    return sobre.write_dicom_series(image, folder, meta=base, modality=image.modality or "CT", extra=dict(SIMULATED))


def train_tiny_segmenter(runs_dir: Path, n: int = 16, *, epochs: int = 20):
    """A completed segmentation run on ``n`` phantoms (patch 16³, U-Net width 4); returns its run folder."""
    import sobre
    from sobre.learn import Cohort, PreprocessConfig, model_input, train

    pre = {"intensity": "zscore", "foreground_threshold": 0.0}
    imgs, masks, meta = [], [], []
    for s in range(n):  # arrays as the model's preprocessing makes them (what predict will feed it)
        hu, m = phantom((24, 24, 16), seed=SEED + s, lesions=1 + s % 2)
        imgs.append(model_input(sobre.Image(hu, np.diag([*SPACING, 1.0]), modality="CT"),
                                PreprocessConfig(**pre))[0][0])
        masks.append(m)
        meta.append({"subject_id": f"ph-{s:03d}", "modality": "CT"})
    cohort = Cohort.from_arrays(np.stack(imgs), meta, masks=np.stack(masks),
                                affines=[np.diag([*SPACING, 1.0])] * n, name="ct-phantoms")
    cfg = {"seed": 0, "data": {"dataset": "ct-phantoms"},
           "task": {"kind": "segmentation", "mask": {"equals": "mask"}, "patch": [16, 16, 16]},
           "preprocess": pre,
           "model": {"backbone": "unet", "width": 4, "depth": 3},
           "optim": {"epochs": epochs, "batch_size": 4, "lr": 2e-2}, "augment": [],
           "split": {"test_fraction": 0.25, "stratify": []}, "runtime": {"progress": False}}
    return train(cfg, cohort=cohort, runs_dir=runs_dir).run.path

"""Generated data for the normative tests: small subjects (label map, T1, template map) whose regional
volumes follow age, sex and site by construction, served by an in-memory dataset (fast) or written as
BIDS NIfTI, ingested and frozen in a real workspace."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from sobre.image import Image

NAMES = {1: "Alpha", 2: "Beta", 3: "Gamma", 4: "Delta", 5: "White_Matter"}
CENTRES = {1: (5, 5, 5), 2: (14, 5, 5), 3: (5, 14, 5), 4: (14, 14, 14)}
SITE_SCALE = {"north": 1.0, "south": 1.6, "east": 0.8}


def make_subject(rng, age: float, sex: str, site: str, *, effect: float = 0.0, map_shape=(8, 8, 8),
                 labels_extra: int | None = None, map_affine=None):
    """(t1, dseg, logjac) Images of one generated subject; ``effect`` shrinks region Beta (log volume)."""
    shape = (20, 20, 20)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ijk = np.indices(shape).astype(float)
    lab = np.zeros(shape, np.uint8)
    inside = ((ijk - 9.5) ** 2).sum(0) <= 10.0 ** 2
    lab[inside] = 5
    for r, c in CENTRES.items():
        logv = -0.004 * (age - 50) + (0.05 if sex == "M" else 0.0) + rng.normal(0, 0.05) + (effect if r == 2 else 0)
        rad = 3.2 * np.exp(logv / 3)
        centre = np.array(c, float) + rng.uniform(-0.5, 0.5, 3)  # every subject's map is its own
        d2 = ((ijk - centre[:, None, None, None]) ** 2).sum(0)
        lab[(d2 <= rad ** 2) & inside] = r
    if labels_extra is not None:
        lab[0:2, 0:2, 0:2] = labels_extra
    s = SITE_SCALE.get(site, 1.2)
    t1 = np.where(lab == 5, 100.0, np.where(lab > 0, 70.0, 5.0)) * s + rng.normal(0, 2, shape)
    m = (-0.003 * (age - 50) + rng.normal(0, 0.02, map_shape) + (0.1 if site == "south" else 0.0)).astype(np.float32)
    maff = np.diag([4.0, 4.0, 4.0, 1.0]) if map_affine is None else map_affine
    return (Image(np.clip(t1, 0, None).astype(np.float32), aff, modality="MR"), Image(lab, aff, modality="SEG"),
            Image(m, maff))


def cohort_rows(seed: int, n: int, *, prefix: str, patients: int = 0, ages=(20, 80), sites=("north", "south")):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append({"participant_id": f"sub-{prefix}{i + 1:03d}", "age": float(np.round(rng.uniform(*ages))),
                     "sex": str(rng.choice(["F", "M"])), "site": sites[i % len(sites)],
                     "diagnosis": "patient" if i < patients else "control"})
    return rows


@dataclass
class FakeDataset:
    """What :func:`sobre.normative.collect` reads of a dataset version, in memory."""

    ref: str
    rows: list[dict]
    images: dict = field(default_factory=dict)
    content_hash: str = ""
    simulated: bool = True
    modality: str = "MR"
    recs: list = field(default_factory=list)

    def records(self):
        return [dict(r) for r in self.recs]

    def image(self, key):
        return self.images[key]


def fake_dataset(ref: str, rows: list[dict], seed: int = 0, *, effect: float = 0.0, modality: str = "MR",
                 **kw) -> FakeDataset:
    rng = np.random.default_rng(seed)
    ds = FakeDataset(ref=ref, rows=rows, content_hash=f"hash-{ref}-{seed}", modality=modality)
    for r in rows:
        sid = r["participant_id"]
        eff = effect if r["diagnosis"] == "patient" else 0.0
        t1, dseg, lj = make_subject(rng, r["age"], r["sex"], r["site"], effect=eff, **kw)
        meta = {"subject_id": sid, "age": r["age"], "sex": r["sex"], "site": r["site"], "diagnosis": r["diagnosis"]}
        for proto, img, mod in (("T1w", t1, modality), ("dseg", dseg, None), ("logjac", lj, None)):
            uid = f"{sid}-{proto}"
            ds.images[uid] = img
            ds.recs.append({**meta, "protocol": proto, "modality": mod, "series_uid": uid, "series_label": ""})
    return ds


class FakeWorkspace:
    def __init__(self, root: Path, datasets: dict) -> None:
        from sobre.catalog import WorkspaceLayout

        self.layout = WorkspaceLayout(Path(root))
        self.root = Path(root)
        self._ds = datasets

    def dataset(self, ref):
        if ref not in self._ds:
            from sobre.errors import CatalogError

            raise CatalogError(f"no dataset version {ref!r}")
        return self._ds[ref]


@pytest.fixture
def atlas():
    from sobre.normative import Atlas

    return Atlas(dict(NAMES), title="generated")


@pytest.fixture
def fake_ws(tmp_path):
    healthy = fake_dataset("healthy@v1", cohort_rows(1, 60, prefix="H"), seed=1)
    test_rows = cohort_rows(2, 30, prefix="T", patients=15)
    test = fake_dataset("test@v1", test_rows, seed=2, effect=-0.45)
    return FakeWorkspace(tmp_path / "ws", {"healthy@v1": healthy, "test@v1": test})


def normative_config(**over):
    from sobre.normative import NormativeConfig

    base = {"data": {"maps": {"field": "protocol", "equals": "logjac"}},
            "model": {"age_df": 1, "min_subjects": 20, "min_per_site": 5}}
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return NormativeConfig.model_validate(base)


def write_bids(root: Path, rows: list[dict], seed: int, effect: float = 0.0) -> Path:
    """Write generated subjects as BIDS NIfTI (T1w, dseg, logjac) with participants.tsv."""
    import sobre

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "generated", "BIDSVersion": "1.9.0"}')
    for r in rows:
        sid = r["participant_id"]
        eff = effect if r["diagnosis"] == "patient" else 0.0
        t1, dseg, lj = make_subject(rng, r["age"], r["sex"], r["site"], effect=eff)
        d = root / sid / "anat"
        sobre.save(t1, d / f"{sid}_T1w.nii.gz")
        sobre.save(dseg, d / f"{sid}_dseg.nii.gz")
        sobre.save(lj, d / f"{sid}_space-template_logjac.nii.gz")
    with (root / "participants.tsv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    (root / "regions.tsv").write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in NAMES.items()))
    return root

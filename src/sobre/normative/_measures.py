"""What a normative model models: regional volumes and intensities from label maps, and voxel-wise maps.

* **Volumes**: voxel count of each label times the voxel volume; by default as ``log(V_r / V_all)``
  (``V_all``: every labelled voxel, the intracranial volume for atlases with a CSF label): head size
  divides out and the log makes the effects multiplicative (a 10 % atrophy is the same step in a
  small and a large region).
* **Intensities**: mean image intensity in each region as ``log(mean_r / reference)``, the reference
  being the median in ``intensity_reference`` (white matter) or in every labelled voxel: a scanner's
  global scale divides out; contrast, bias and noise differences stay and are the site's batch effect.
* **Voxel maps**: any per-subject map in one template space (e.g. log-Jacobians of a registration,
  ``sobre.sim``'s ``logjac``), within a mask of voxels present in every reference subject.

An :class:`Atlas` names the labels; its digest (over labels and names) identifies it, so that a model
is never applied to label maps of another atlas.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sobre.base import canonical_json, sha256_bytes
from sobre.errors import InputError

__all__ = ["Atlas", "regional_measures", "measure_names"]


@dataclass(frozen=True)
class Atlas:
    """Label -> region name of the label maps (0 is the background)."""

    names: dict[int, str]
    title: str = "atlas"

    @property
    def digest(self) -> str:
        return sha256_bytes(canonical_json({"names": {str(k): v for k, v in sorted(self.names.items())}}))

    @property
    def labels(self) -> list[int]:
        return sorted(self.names)

    def label_of(self, name: str) -> int | None:
        low = name.lower()
        return next((k for k, v in self.names.items() if v.lower() == low), None)

    def to_dict(self) -> dict:
        return {"title": self.title, "digest": self.digest, "names": {str(k): v for k, v in sorted(self.names.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> Atlas:
        return cls({int(k): str(v) for k, v in d["names"].items()}, title=d.get("title", "atlas"))

    @classmethod
    def from_names(cls, names, title: str = "atlas") -> Atlas:
        """From ``names[label]`` (index 0 = background, skipped)."""
        return cls({i: str(n) for i, n in enumerate(names) if i > 0}, title=title)

    @classmethod
    def from_tsv(cls, path: str | Path, title: str | None = None) -> Atlas:
        """A BIDS-style table with ``index`` (or ``label``) and ``name`` columns (e.g. ``truth/regions.tsv``)."""
        path = Path(path)
        try:
            rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
        except OSError as exc:
            raise InputError("cannot read the atlas table", path=path, found=exc.strerror) from None
        if not rows:
            raise InputError("the atlas table is empty", path=path, expected="one row per label")
        key = next((k for k in ("index", "label") if k in rows[0]), None)
        if key is None or "name" not in rows[0]:
            raise InputError("the atlas table has no label and name columns", path=path,
                             expected="tab-separated columns 'index' (or 'label') and 'name'",
                             found=", ".join(rows[0]))
        names = {}
        for i, r in enumerate(rows, start=2):
            try:
                lab = int(r[key])
            except (TypeError, ValueError):
                raise InputError(f"line {i}: label {r[key]!r} is not a whole number", path=path) from None
            if lab > 0:
                names[lab] = r["name"]
        return cls(names, title=title or path.name)


def measure_names(atlas: Atlas, kinds: list[str], skip: list[str] = ()) -> list[tuple[str, str, int]]:
    """``(kind, region name, label)`` of every regional measure, in a fixed order."""
    skip_low = {s.lower() for s in skip}
    out = []
    for kind in kinds:
        for lab in atlas.labels:
            if atlas.names[lab].lower() not in skip_low:
                out.append((kind, atlas.names[lab], lab))
    return out


def regional_measures(image, labels, atlas: Atlas, kinds: list[str], *, volume: str = "icv_fraction",
                      intensity_reference: str = "White_Matter", skip: list[str] = (),
                      where: str = "") -> tuple[np.ndarray, dict]:
    """Regional measures of one subject (see the module docstring) in :func:`measure_names` order.

    Parameters
    ----------
    image : sobre.Image or None
        The subject's image (intensities); None when only volumes are asked for.
    labels : sobre.Image
        The label map on the image's grid.

    Returns
    -------
    values : (M,) float (NaN where a region is absent), info : dict with ``label_counts`` (label ->
    voxels, every label found) and ``unknown_labels`` (labels not in the atlas).
    """
    lab = np.asarray(labels.array)
    if lab.ndim != 3:
        raise InputError(f"{where}label map is not a 3D volume", expected="one label per voxel", found=str(lab.shape))
    if not np.all(np.equal(np.mod(lab, 1), 0)):
        raise InputError(f"{where}label map holds non-integer values", expected="whole-number labels",
                         fix="label maps (dseg) only; intensity images belong to `data.images`")
    lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise InputError(f"{where}label map holds negative labels", expected="labels >= 0 (0: background)",
                         found=str(int(lab.min())))
    if image is not None and kinds and "intensity" in kinds:
        img = image
        if tuple(img.spatial_shape) != tuple(lab.shape) or not np.allclose(img.affine, labels.affine, atol=1e-3):
            raise InputError(f"{where}the label map is not on the image's grid",
                             expected=f"shape {tuple(img.spatial_shape)} and the image's affine",
                             found=f"shape {tuple(lab.shape)}", fix="resample the label map onto the image")
    counts = np.bincount(lab[lab > 0].ravel(), minlength=max(atlas.labels) + 1 if atlas.labels else 1)
    present = {int(k): int(c) for k, c in enumerate(counts) if c > 0 and k > 0}
    unknown = sorted(set(present) - set(atlas.names))
    vox = float(abs(np.linalg.det(labels.affine[:3, :3])))
    total = float(sum(present.values())) * vox
    order = measure_names(atlas, kinds, skip)
    out = np.full(len(order), np.nan)
    means = None
    ref = np.nan
    if "intensity" in kinds:
        arr = np.asarray(image.array, np.float64)
        if arr.ndim != 3:
            raise InputError(f"{where}image is not a 3D volume", found=str(arr.shape))
        flat_lab = lab.ravel()
        flat = arr.ravel()
        size = int(flat_lab.max()) + 1
        n_all = np.bincount(flat_lab, minlength=size)
        means = np.bincount(flat_lab, weights=flat, minlength=size) / np.maximum(n_all, 1)
        ref_label = atlas.label_of(intensity_reference) if intensity_reference else None
        sel = flat_lab == ref_label if ref_label is not None and present.get(ref_label) else flat_lab > 0
        ref = float(np.median(flat[sel])) if sel.any() else np.nan
    for j, (kind, _name, label) in enumerate(order):
        c = present.get(label, 0)
        if c == 0:
            continue
        if kind == "volume":
            v = c * vox
            out[j] = np.log(v / total) if volume == "icv_fraction" else np.log(v)
        else:
            m = means[label] if means is not None and label < means.size else np.nan
            out[j] = np.log(m / ref) if m > 0 and ref > 0 else np.nan
    return out, {"label_counts": present, "unknown_labels": unknown}

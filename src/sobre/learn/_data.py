"""From a frozen dataset version (or plain arrays) to a :class:`Cohort` of preprocessed arrays.

Preprocessing (reorientation, resampling, intensity normalisation) runs once per dataset version
and preprocessing setting; the result is cached in the workspace as ``.npy`` files opened
memory-mapped, under a key that hashes the dataset's content hash, the filter, the preprocessing
settings and the cache format::

    WS/cache/learn/<key>/images.npy     (N, C, *shape) float32 or float16
                         masks.npy      (N, *shape) uint8       (segmentation only)
                         affines.npy    (N, 4, 4) voxel -> LPS of the preprocessed grid
                         index.json     series order, metadata, provenance

A cache entry is written to a temporary folder and renamed into place, so an interrupted build
leaves nothing half-written; it is never modified afterwards. On a cluster (``[compute]`` of the
workspace, or ``compute=``) the workers read and preprocess the images and return the arrays, in
order; this process alone writes the cache: the same bytes as a local build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

import numpy as np
import pandas as pd

from sobre.base import Progress, no_progress, task_events
from sobre.errors import InputError
from sobre.learn._config import DataConfig, MaskRule, PreprocessConfig

__all__ = ["Cohort", "load_cohort", "preprocess_image", "model_input", "CACHE_FORMAT", "require_columns",
           "metadata_matrix"]

log = logging.getLogger("sobre.learn")

#: Version 2: preprocessing through ``sobre.image`` (exact ``spacing``; see docs/learning.md).
CACHE_FORMAT = "sobre.learn.cache/2"


# ---------------------------------------------------------------------------------------- Cohort
@dataclass
class Cohort:
    """Preprocessed images with one metadata row each.

    Attributes
    ----------
    images : ndarray, shape (N, C, *spatial)
        Float arrays (often a read-only memory map).
    table : DataFrame
        N rows: ``subject_id``, ``series_uid``, ``site``, ``age``, ``sex`` and every clinical
        variable of the dataset version (the series label is ``series_label``).
    masks : ndarray, shape (N, *spatial), optional
        Integer label maps (segmentation).
    affines : ndarray, shape (N, 4, 4)
        Voxel → LPS of the preprocessed grids.
    source : dict
        Provenance: dataset ref and content hash, cache key, preprocessing.
    """

    images: np.ndarray
    table: pd.DataFrame
    masks: np.ndarray | None = None
    affines: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim < 4:
            raise ValueError(f"images must be (N, C, *spatial), got shape {self.images.shape}")
        if len(self.table) != self.images.shape[0]:
            raise ValueError(f"table has {len(self.table)} rows for {self.images.shape[0]} images")
        if self.affines is None:
            self.affines = np.repeat(np.eye(4)[None], len(self.table), 0)
        self.table = self.table.reset_index(drop=True)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (f"Cohort({len(self)} images, {self.table['subject_id'].nunique()} subjects, "
                f"shape={tuple(self.images.shape[1:])}, source={self.source.get('dataset', 'in-memory')})")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[2:])

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def content_hash(self) -> str:
        return self.source.get("content_hash", "")

    def subset(self, indices: Sequence[int]) -> Cohort:
        """A cohort of the given rows (arrays are indexed lazily where memory-mapped)."""
        idx = np.asarray(indices, dtype=int)
        return _Subset(self, idx)

    def subjects(self, columns: Iterable[str] = ()) -> pd.DataFrame:
        """One row per subject (first image's values), keeping ``columns`` plus site/sex/age."""
        keep = ["subject_id"] + [c for c in ("site", "sex", "age", *columns) if c in self.table.columns]
        keep = list(dict.fromkeys(keep))
        return self.table[keep].drop_duplicates("subject_id").reset_index(drop=True)

    def rows_of(self, subject_ids: Iterable[str]) -> np.ndarray:
        """Row indices of every image of these subjects."""
        wanted = set(map(str, subject_ids))
        return np.flatnonzero(self.table["subject_id"].astype(str).isin(wanted).to_numpy())

    @classmethod
    def from_arrays(cls, images, metadata, *, masks=None, affines=None, name: str = "in-memory",
                    channel_axis: bool = False) -> Cohort:
        """A cohort from arrays already preprocessed.

        Parameters
        ----------
        images : array (N, *spatial), or (N, C, *spatial) with ``channel_axis=True``; or a list
            of equally shaped arrays
        metadata : DataFrame or list of dict
            One row per image with at least ``subject_id``.
        masks : array (N, *spatial), optional
        name : str
            Recorded as the source; the content hash covers arrays and metadata.
        """
        arr = np.stack([np.asarray(a) for a in images]) if isinstance(images, (list, tuple)) else np.asarray(images)
        table = metadata.copy() if isinstance(metadata, pd.DataFrame) else pd.DataFrame(list(metadata))
        if "subject_id" not in table.columns:
            raise InputError("metadata has no 'subject_id' column", expected="one subject_id per image",
                             found="columns " + ", ".join(map(str, table.columns)),
                             fix="add a subject_id to every metadata row")
        table["subject_id"] = table["subject_id"].astype(str)
        if not channel_axis:
            arr = arr[:, None]
        if arr.ndim not in (4, 5):
            raise InputError("images must be 2D or 3D", expected="(N, *spatial) or (N, C, *spatial) with 2 or 3 "
                             "spatial axes", found=f"array of shape {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        h = hashlib.sha256()
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
        h.update(table.to_json(orient="records", date_format="iso").encode())
        if masks is not None:
            masks = np.asarray(masks).astype(np.uint8)
            h.update(masks.tobytes())
        if "series_uid" not in table.columns:
            table["series_uid"] = [f"{name}-{i}" for i in range(len(table))]
        digest = h.hexdigest()
        return cls(arr, table, masks=masks, affines=None if affines is None else np.asarray(affines, float),
                   source={"dataset": name, "content_hash": digest, "simulated": bool(
                       table.get("simulated", pd.Series(dtype=object)).astype(str).str.lower()
                       .isin(["true", "yes", "1"]).any())})

    @classmethod
    def from_images(cls, items: Iterable, preprocess: PreprocessConfig, *, name: str = "in-memory") -> Cohort:
        """A cohort from ``(Image, metadata)`` pairs, preprocessed like a dataset version.

        This is the entry point for generators such as the simulator's in-memory API.
        """
        arrays, affines, rows = [], [], []
        for item in items:
            img, meta = item[0], item[1]
            a, aff = model_input(img, preprocess)
            arrays.append(a)
            affines.append(aff)
            rows.append(dict(meta))
        if not arrays:
            raise InputError("no images given", fix="pass at least one (Image, metadata) pair")
        _check_shapes([a.shape for a in arrays], [r.get("subject_id", i) for i, r in enumerate(rows)], preprocess,
                      None)
        c = cls.from_arrays(np.stack(arrays), rows, affines=np.stack(affines), name=name, channel_axis=True)
        c.source["preprocess"] = preprocess.model_dump(mode="json")
        return c


class _Subset(Cohort):
    """Rows of a parent cohort; arrays are read on access so a memory map stays a memory map."""

    def __init__(self, parent: Cohort, idx: np.ndarray) -> None:
        self._parent, self._idx = parent, idx
        self.table = parent.table.iloc[idx].reset_index(drop=True)
        self.affines = parent.affines[idx]
        self.source = dict(parent.source)

    @property
    def images(self):  # type: ignore[override]
        return _RowView(self._parent.images, self._idx)

    @property
    def masks(self):  # type: ignore[override]
        return None if self._parent.masks is None else _RowView(self._parent.masks, self._idx)

    def subset(self, indices):
        return _Subset(self._parent, self._idx[np.asarray(indices, dtype=int)])


class _RowView:
    """Indexable view on rows of an array without copying it."""

    def __init__(self, base, idx) -> None:
        self.base, self.idx = base, idx

    @property
    def shape(self):
        return (len(self.idx), *self.base.shape[1:])

    @property
    def ndim(self):
        return self.base.ndim

    @property
    def dtype(self):
        return self.base.dtype

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.base[self.idx[i]]
        sel = self.idx[i]
        return self.base[np.sort(sel)][np.argsort(np.argsort(sel))] if np.ndim(sel) else self.base[sel]

    def __array__(self, dtype=None, copy=None):
        out = self.base[self.idx]
        return out.astype(dtype) if dtype is not None else out


# ------------------------------------------------------------------------------------ preprocessing
def _normalise(arr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    a = arr.astype(np.float32, copy=False)
    if cfg.intensity == "none":
        return a
    if cfg.intensity == "zscore":
        sel = a[a > cfg.foreground_threshold] if cfg.foreground_threshold is not None else a.ravel()
        if sel.size < 2:
            sel = a.ravel()
        mu, sd = float(sel.mean()), float(sel.std())
        return (a - mu) / (sd if sd > 0 else 1.0)
    if cfg.intensity == "minmax":
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo if hi > lo else 1.0)
    lo, hi = np.percentile(a, cfg.percentiles)
    return (np.clip(a, lo, hi) - lo) / (hi - lo if hi > lo else 1.0)


def _on_grid(img, cfg: PreprocessConfig, *, mask: bool):
    """``img`` reoriented and resampled as ``cfg`` says (``sobre.image`` operations, exact geometry)."""
    from sobre.image import Grid, crop_or_pad, reorient, resample

    if cfg.reorient and img.spatial_ndim == 3 and img.coordinate_system == "LPS":
        img = reorient(img, "LPS")
    order = "nearest" if mask else "linear"
    if cfg.resample == "shape":
        return resample(img, shape=cfg.shape, order=order)
    if cfg.resample == "spacing":
        spacing = cfg.spacing[: img.spatial_ndim]
        target = Grid.of(img).with_spacing(spacing)
        if target.shape == img.spatial_shape and np.allclose(target.affine, img.affine, rtol=0, atol=1e-9):
            # already at that spacing: cutting or padding whole voxels is exact, no interpolation
            return crop_or_pad(img, cfg.shape) if cfg.shape else img
        return resample(img, spacing=spacing, shape=cfg.shape, order=order)
    return img


def preprocess_image(img, cfg: PreprocessConfig, *, mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One :class:`~sobre.image.Image` → channel-first array on the preprocessed grid, and its affine.

    The one preprocessing path of Sobre's learning code: the training cache and
    :meth:`TrainedModel.predict <sobre.learn.TrainedModel.predict>` both call it.

    1. ``reorient``: 3D images in patient coordinates get index axes along L, P, S
       (:func:`sobre.image.reorient`; no interpolation). 2D images keep their layout.
    2. ``resample = "shape"``: ``shape`` voxels over the same field of view
       (:func:`sobre.image.resample` with ``shape``); ``"spacing"``: exactly ``spacing`` mm over
       the field of view, centre-cropped or zero-padded to ``shape`` in the same interpolation
       (:func:`sobre.image.resample` with ``spacing`` and ``shape``). Linear interpolation, nearest
       neighbour for masks.
    3. Intensity normalisation per channel (``zscore``, ``minmax``, ``percentile`` or ``none``).

    Parameters
    ----------
    img : sobre.Image
    cfg : PreprocessConfig
    mask : bool
        Label map: nearest-neighbour resampling, no intensity normalisation, int32.

    Returns
    -------
    array : ndarray, shape (C, *spatial) float32 (masks: (1, *spatial) int32)
    affine : ndarray (4, 4), voxel → LPS of the output grid

    Examples
    --------
    >>> import numpy as np, sobre
    >>> from sobre.learn import PreprocessConfig, preprocess_image
    >>> img = sobre.Image(np.ones((20, 20, 10), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    >>> cfg = PreprocessConfig(resample="spacing", spacing=[2.0, 2.0, 2.0], shape=[8, 8, 8], intensity="none")
    >>> arr, affine = preprocess_image(img, cfg)
    >>> arr.shape, np.diag(affine)[:3].tolist()
    ((1, 8, 8, 8), [2.0, 2.0, 2.0])
    """
    if img.extra_axes and img.extra_axes != ("channel",):
        raise InputError(f"images with a {img.extra_axes[0]} axis cannot be learned from directly",
                         path=img.sources[0] if img.sources else None, expected="2D/3D images, or a channel axis",
                         found=f"shape {img.shape} with axes {img.extra_axes}",
                         fix="select one frame or time point when building the cohort")
    out = _on_grid(img, cfg, mask=mask)
    arr = np.asarray(out.array)
    arr = np.moveaxis(arr, -1, 0) if out.extra_axes else arr[None]
    affine = np.array(out.affine, dtype=np.float64)
    if mask:
        return np.rint(arr).astype(np.int32), affine
    return np.stack([_normalise(c, cfg) for c in arr.astype(np.float32, copy=False)]), affine


def model_input(img, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess_image` stored as the training cache stores it (``cache_dtype``).

    What a network sees of ``img``, exactly: the cache holds this array, and prediction computes it.
    """
    arr, affine = preprocess_image(img, cfg)
    return arr.astype(np.float16 if cfg.cache_dtype == "float16" else np.float32, copy=False), affine


def _check_shapes(shapes: list[tuple], names: list, cfg: PreprocessConfig, config_path) -> None:
    counts = Counter(shapes)
    if len(counts) <= 1:
        return
    common = counts.most_common(1)[0][0]
    odd = next(i for i, s in enumerate(shapes) if s != common)
    listing = ", ".join(f"{s[1:]} ×{n}" for s, n in counts.most_common(4))
    raise InputError(
        f"images have {len(counts)} different shapes and no resampling rule", path=config_path,
        expected=f"one shape for every image (e.g. {common[1:]}) or a rule in [preprocess]",
        found=f"{listing}; first odd one: {names[odd]} {shapes[odd][1:]}",
        fix=f'set preprocess.resample = "shape" with shape = {list(common[1:])}, or resample = "spacing" '
            "with spacing = [mm, ...] and a shape to crop/pad to")


# ------------------------------------------------------------------------------ dataset versions
def require_columns(table: pd.DataFrame, columns: Iterable[str], *, dataset: str, key: str, config_path=None) -> None:
    """Raise :class:`InputError` naming the config key if a metadata column is missing."""
    cols = [c for c in table.columns if not c.startswith("_")]
    for c in columns:
        if c not in table.columns:
            near = get_close_matches(c, cols, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise InputError(f"{key} = '{c}': no such column in dataset version {dataset}{hint}",
                             path=config_path, expected="one of: " + ", ".join(sorted(cols)), found=repr(c),
                             fix="correct the column name in the config, or add it to the catalog "
                                 "(sobre ingest --clinical TABLE) and freeze a new version")


def metadata_matrix(table: pd.DataFrame, variables: list[str], *, dataset: str, key: str,
                    config_path=None) -> np.ndarray:
    """Numeric ``(N, V)`` matrix of continuous metadata; missing or non-numeric values are errors."""
    require_columns(table, variables, dataset=dataset, key=key, config_path=config_path)
    cols = []
    for v in variables:
        x = pd.to_numeric(table[v], errors="coerce")
        bad = x.isna()
        if bad.any():
            subs = table.loc[bad, "subject_id"].astype(str).unique()
            raise InputError(f"{key}: variable '{v}' is missing or not numeric for {len(subs)} subject(s)",
                             path=config_path, expected="a number for every image",
                             found=", ".join(f"{s} ({table.loc[table['subject_id'] == s, v].iloc[0]!r})"
                                             for s in subs[:4]) + (" ..." if len(subs) > 4 else ""),
                             fix=f"filter them out with data.where = '{v} != null', or fill in the clinical table")
        cols.append(x.to_numpy(float))
    return np.stack(cols, 1) if cols else np.zeros((len(table), 0))


def _dataset_table(dataset) -> tuple[list, pd.DataFrame]:
    """The series of a dataset version and one table row per series (its frozen metadata)."""
    table = pd.DataFrame(dataset.records())
    if "subject_id" in table.columns:
        table["subject_id"] = table["subject_id"].astype(str)
    return dataset.series, table


def cache_key(content_hash: str, data: DataConfig, pre: PreprocessConfig, mask_rule: MaskRule | None) -> str:
    payload = {"format": CACHE_FORMAT, "content_hash": content_hash, "where": data.where,
               "preprocess": pre.model_dump(mode="json"),
               "mask": mask_rule.model_dump(mode="json") if mask_rule else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_cohort(ws, data: DataConfig, preprocess: PreprocessConfig, *, mask_rule: MaskRule | None = None,
                progress: Progress | None = None, config_path=None, threads: int = 1, compute=None) -> Cohort:
    """Load (building once, then reusing) the preprocessed cache of a frozen dataset version.

    Parameters
    ----------
    ws : sobre.catalog.Workspace
    data : DataConfig
        ``dataset`` ref and optional ``where`` filter on the series metadata.
    preprocess : PreprocessConfig
    mask_rule : MaskRule, optional
        Segmentation: which series are masks; each is paired with the image series of its subject.
    progress : callable, optional
        ``progress(stage, done, total)`` while the cache is built (stage ``"caching NAME@vN"``).
    threads : int
        Images read and preprocessed at once (locally).
    compute : sobre.base.Compute or str, optional
        Where a missing cache is built: a cluster's workers preprocess, this process writes. Default:
        the innermost :func:`sobre.base.use_compute` block, else the workspace's ``[compute]``, else
        ``threads`` threads here.

    Raises
    ------
    InputError
        Inconsistent shapes without a resampling rule, files changed since the freeze, masks
        missing or ambiguous, no series left after the filter.
    """
    from sobre.catalog import compile_filter

    ref = ws.dataset(data.dataset)
    entries, table = _dataset_table(ref)
    if data.where:
        pred = compile_filter(data.where, list(table.columns) + ["label"])
        keep = [i for i, e in enumerate(entries) if pred(dict(e.metadata, **table.iloc[i].to_dict()))]
        entries = [entries[i] for i in keep]
        table = table.iloc[keep].reset_index(drop=True)
        if not entries:
            raise InputError(f"no series of {ref.ref} matches data.where", path=config_path, found=data.where,
                             fix="loosen the filter (see `sobre cohort fields`)")
    mask_of: list[int | None] = [None] * len(entries)
    if mask_rule is not None:
        require_columns(table, [mask_rule.field], dataset=ref.ref, key="task.mask.field", config_path=config_path)
        is_mask = table[mask_rule.field].astype(str) == mask_rule.equals
        img_idx = np.flatnonzero(~is_mask.to_numpy())
        msk_idx = np.flatnonzero(is_mask.to_numpy())
        if not len(msk_idx):
            raise InputError(f"no mask series in {ref.ref}", path=config_path,
                             expected=f"series with {mask_rule.field} == {mask_rule.equals!r}",
                             found=", ".join(sorted(table[mask_rule.field].astype(str).unique())[:6]),
                             fix="set task.mask to the field/value that marks the masks")
        by_subject: dict[str, list[int]] = {}
        for j in msk_idx:
            by_subject.setdefault(table.at[j, "subject_id"], []).append(int(j))
        pairs = []
        for i in img_idx:
            sid = table.at[i, "subject_id"]
            cands = by_subject.get(sid, [])
            if len(cands) != 1:
                raise InputError(f"subject {sid} has {len(cands)} mask series for image {entries[i].series_uid}",
                                 path=config_path, expected="exactly one mask per subject",
                                 fix="use data.where to keep one image and one mask per subject")
            pairs.append((int(i), cands[0]))
        entries_img = [entries[i] for i, _ in pairs]
        mask_entries = [entries[j] for _, j in pairs]
        table = table.iloc[[i for i, _ in pairs]].reset_index(drop=True)
        entries, mask_of = entries_img, mask_entries
    key = cache_key(ref.content_hash, data, preprocess, mask_rule)
    folder = ws.layout.cache_for("learn") / key[:24]
    if not (folder / "index.json").exists():
        from sobre.base import current_compute, opened

        if compute is None:
            compute = current_compute() or getattr(getattr(ws, "settings", None), "compute", None)
        with opened(compute or "local") as cluster:
            _build_cache(folder, entries, mask_of, table, ref, preprocess,
                         verify=data.verify_hashes, ref=ref.ref, progress=progress, config_path=config_path,
                         threads=threads, meta={"key": key, "dataset": ref.ref, "content_hash": ref.content_hash,
                                                "where": data.where},
                         compute=cluster if cluster.distributed else None)
    index = json.loads((folder / "index.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r") if (folder / "masks.npy").exists() else None
    affines = np.load(folder / "affines.npy")
    table = pd.read_json(folder / "table.json", orient="records", dtype=False)
    table["subject_id"] = table["subject_id"].astype(str)
    return Cohort(images, table, masks=masks, affines=affines, source={
        "dataset": ref.ref, "content_hash": ref.content_hash, "cache": str(folder), "cache_key": key,
        "simulated": bool(ref.simulated), "preprocess": index["preprocess"],
        "n_subjects_in_version": ref.n_subjects})


@dataclass(frozen=True)
class _CacheJob:
    """What every worker building a cache needs (sent once per worker of a cluster)."""

    dataset: object
    entries: list
    mask_entries: list
    pre: PreprocessConfig
    verify: bool


def _cache_item(job: _CacheJob, i: int):
    """Image ``i`` of a cache as the network sees it: ``(array, affine, mask or None)``."""
    entries, mask_entries, pre = job.entries, job.mask_entries, job.pre
    img = job.dataset.image(entries[i], verify=job.verify)
    arr, aff = model_input(img, pre)
    img.unload()
    m = None
    if mask_entries[i] is not None:
        mimg = job.dataset.image(mask_entries[i], verify=job.verify)
        m, _ = preprocess_image(mimg, pre, mask=True)
        if m.shape[1:] != arr.shape[1:]:
            raise InputError(f"mask of series {entries[i].series_uid} does not match its image",
                             expected=f"shape {arr.shape[1:]}", found=f"{m.shape[1:]}",
                             fix="masks must be on the image grid (or use a resampling rule)")
        m = m[0]
        if m.min() < 0 or m.max() > 255:
            raise InputError(f"mask of series {entries[i].series_uid} has labels outside 0..255",
                             found=f"{int(m.min())}..{int(m.max())}", fix="relabel the classes 0..K-1")
    return arr, aff, m


def _build_cache(folder: Path, entries, mask_entries, table: pd.DataFrame, dataset, pre: PreprocessConfig, *,
                 verify, ref, progress, config_path, threads, meta, compute=None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    progress = progress or no_progress
    stage = f"caching {ref}"
    if "subject_id" not in table.columns or table["subject_id"].isna().any():
        raise InputError(f"series without a subject_id in {ref}", expected="every series linked to a subject",
                         fix="ingest with PatientID / BIDS sub-XX so every series has a subject")
    job = _CacheJob(dataset, list(entries), list(mask_entries), pre, verify)

    def work(i):
        return _cache_item(job, i)

    if compute is not None:  # workers read the version's files: they must see them where this process does
        files = [p for e in entries[:: max(1, len(entries) // 15)] for p in dataset.paths(e)[:1]]
        compute.check_shared(read=files)

    # shapes first (from the manifest when no resampling, else from the first image)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        n = len(entries)
        if pre.resample == "none":
            shapes = [tuple(e.shape or ()) for e in entries]
            _check_shapes([(0, *s) for s in shapes], [e.series_uid for e in entries], pre, config_path)
        log.info("building the cache of %s (%d images) in %s", ref, n, folder)
        progress(stage, 0, n)
        images = masks = None
        affines = np.zeros((n, 4, 4))
        shapes_seen: list[tuple] = []
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            items = pool.map(work, range(n)) if compute is None else \
                compute.map(_cache_item, range(n), shared=job, stage=stage, progress=task_events(progress))
            for i, (arr, aff, m) in enumerate(items):
                if images is None:
                    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=arr.dtype,
                                                       shape=(n, *arr.shape))
                    if m is not None:
                        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8,
                                                          shape=(n, *m.shape))
                shapes_seen.append(arr.shape)
                if arr.shape != images.shape[1:]:
                    _check_shapes(shapes_seen + [images.shape[1:]], [e.series_uid for e in entries[: i + 1]]
                                  + [entries[0].series_uid], pre, config_path)
                images[i] = arr
                if masks is not None:
                    masks[i] = m
                affines[i] = aff
                progress(stage, i + 1, n)
        images.flush()
        del images
        if masks is not None:
            masks.flush()
            del masks
        np.save(tmp / "affines.npy", affines)
        table.to_json(tmp / "table.json", orient="records", date_format="iso")
        index = dict(meta, format=CACHE_FORMAT, n=n, preprocess=pre.model_dump(mode="json"),
                     series=[e.series_uid for e in entries])
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "index.json").exists():  # pragma: no cover - a concurrent build won
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

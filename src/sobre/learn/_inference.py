"""A trained model, loaded from its run, with its preprocessing: :func:`load_model`.

A completed run records in ``run.json`` what inference needs (``"model"``, format
``sobre.model/1``): the input the network expects (spatial axes, channels, preprocessed shape and
spacing, modalities seen in training), the task (classes, positive class, per-model regression
target and covariate scaling), the checkpoints of its member networks (one per fold; k-fold runs
average them, as their test predictions did) and the precision of its evaluation. The
preprocessing and the network come from the run's resolved configuration. Nothing else is needed:
no cohort, no cache, no private import.

>>> model = load_model("WS/runs/20250101-120000-train-abc123")          # doctest: +SKIP
>>> model.predict(sobre.load("new_scan.nii.gz")).scores                 # doctest: +SKIP
array([0.83], dtype=float32)

Prediction calls :func:`~sobre.learn.preprocess_image` exactly as the training cache did (the same
function, then the cache's dtype: :func:`~sobre.learn.model_input`), and the same inference
code as the run's evaluation (batched forward passes; MONAI sliding windows with Gaussian blending
for segmentation, whose label map is then brought back to the input image's grid).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sobre.base import Progress, no_progress, sha256_file
from sobre.errors import CatalogError, InputError
from sobre.learn import _engine as E
from sobre.learn._config import ModelConfig, PreprocessConfig
from sobre.learn._data import model_input
from sobre.learn._runs import Run, open_run, runs_root

__all__ = ["load_model", "TrainedModel", "ModelTask", "Predictions", "MODEL_FORMAT", "model_record",
           "member_record", "input_record"]

MODEL_FORMAT = "sobre.model/1"


# ------------------------------------------------------------------------- what a run records
def input_record(cohort) -> dict:
    """What the network was fed: spatial axes, channels, preprocessed shape and spacing, modalities."""
    aff = np.asarray(cohort.affines, float)
    dims = cohort.spatial_dims
    sp = np.linalg.norm(aff[:, :3, :dims], axis=1) if len(aff) else np.ones((1, dims))
    uniform = bool(np.allclose(sp, sp[0], rtol=1e-4, atol=0))
    mods = cohort.table["modality"].dropna().astype(str) if "modality" in cohort.table.columns else pd.Series([])
    return {"spatial_dims": int(dims), "in_channels": int(cohort.in_channels),
            "shape": [int(s) for s in cohort.spatial_shape],
            "spacing": [round(float(v), 6) for v in sp[0]] if uniform else None,
            "modalities": sorted(set(mods))}


def member_record(checkpoint: str, task=None, *, part: str = "model") -> dict:
    """One member network: its checkpoint (relative to the run) and its task scaling."""
    rec: dict = {"checkpoint": str(checkpoint), "part": part}
    if task is not None:
        rec["target_mean"], rec["target_std"] = float(task.mean), float(task.std)
        rec["cov_mean"] = None if task.cov_mean is None else [float(v) for v in task.cov_mean]
        rec["cov_std"] = None if task.cov_std is None else [float(v) for v in task.cov_std]
    return rec


def model_record(kind: str, cfg, cohort, task, members: list[dict], rt: dict) -> dict:
    """The ``"model"`` entry of ``run.json`` (format ``sobre.model/1``)."""
    t = None
    if task is not None:
        t = {"kind": task.kind, "label": cfg.task.label, "labels": list(cfg.task.labels or []),
             "classes": [str(c) for c in task.classes] if task.kind != "regression" else [],
             "positive": None if task.positive is None else str(task.positive),
             "n_classes": int(task.n_classes), "patch": cfg.task.patch, "overlap": cfg.task.overlap}
    covs = list(getattr(cfg.model, "covariates", []) or [])
    return {"format": MODEL_FORMAT, "kind": kind, "input": input_record(cohort), "task": t, "covariates": covs,
            "preprocess": cfg.preprocess.model_dump(mode="json"), "members": members,
            "precision": rt.get("precision", "fp32"), "channels_last": bool(cfg.runtime.channels_last)}


# ------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class ModelTask:
    """What a trained model predicts.

    Attributes
    ----------
    kind : {"binary", "multiclass", "multilabel", "regression", "segmentation"}
    label : str or None
        Metadata column of the reference (binary, multiclass, regression).
    classes : list of str
        Score order: binary ``[negative, positive]``, multiclass class names, multilabel label
        columns, segmentation ``["0", "1", ...]``.
    positive : str or None
        Binary: the positive class (``scores`` are P(positive)).
    n_classes : int
        Segmentation: classes including background.
    target_scaling : list of (mean, std)
        Regression: per member network, the training statistics its standardised output is
        mapped back with (``value = output * std + mean``).
    covariates : list of str
        Metadata the network takes besides the image (standardised per member).
    """

    kind: str
    label: str | None = None
    classes: list = field(default_factory=list)
    positive: str | None = None
    n_classes: int = 2
    target_scaling: list = field(default_factory=list)
    covariates: list = field(default_factory=list)
    patch: list | None = None
    overlap: float = 0.25


@dataclass
class Predictions:
    """Predictions of a :class:`TrainedModel` for a list of images (one entry per image, in order).

    Attributes
    ----------
    kind : str
        The task kind.
    scores : ndarray or None
        binary ``(n,)`` P(positive); multiclass ``(n, K)`` class probabilities; multilabel
        ``(n, K)`` per-label probabilities; regression ``(n,)`` values in the label's units;
        segmentation: None (see ``masks``).
    classes : list of str
        Names of the score columns (see :class:`ModelTask`).
    series : list of str
        One id per image: the series uid (dataset versions, or an Image's ``series_uid``
        metadata), else ``image-<i>``.
    subjects : list of str or None
    masks : list of Image, optional
        Segmentation: one uint8 label map per image, on the input image's grid.
    run_id : str
    """

    kind: str
    scores: np.ndarray | None
    classes: list
    series: list
    subjects: list
    masks: list | None = None
    run_id: str = ""

    def __len__(self) -> int:
        return len(self.series)

    def __repr__(self) -> str:
        return f"Predictions({self.kind}, {len(self)} image(s), run {self.run_id})"

    @property
    def labels(self) -> list:
        """Predicted class per image (binary: the positive class when P ≥ 0.5), value (regression)."""
        if self.kind == "binary":
            return [self.classes[1] if s >= 0.5 else self.classes[0] for s in self.scores]
        if self.kind == "multiclass":
            return [self.classes[int(i)] for i in np.argmax(self.scores, 1)]
        if self.kind == "multilabel":
            return [[c for c, s in zip(self.classes, row) if s >= 0.5] for row in self.scores]
        if self.kind == "regression":
            return [float(v) for v in self.scores]
        return [None] * len(self)

    def frame(self) -> pd.DataFrame:
        """One row per image; score columns named as in ``predictions.csv``."""
        df = pd.DataFrame({"series_uid": self.series, "subject_id": self.subjects})
        if self.kind == "binary":
            df["score"] = self.scores
        elif self.kind in ("multiclass", "multilabel"):
            for j, c in enumerate(self.classes):
                df[f"score_{c}"] = self.scores[:, j]
        elif self.kind == "regression":
            df["prediction"] = self.scores
            df["score"] = self.scores
        return df


@dataclass
class _Item:
    id: str
    subject: str | None
    load: Callable
    meta: dict


class TrainedModel:
    """A network with its weights, task, preprocessing and provenance; see :func:`load_model`.

    Attributes
    ----------
    networks : list of torch.nn.Module
        The member networks (one per fold; their outputs are averaged), weights loaded, in eval
        mode, on ``device``. ``network`` is the first.
    kind : {"train", "probe", "pretrain"}
    task : ModelTask or None
        None for a pretraining run (an encoder: use :meth:`features`).
    preprocess : PreprocessConfig
        Exactly what training used (resampling, reorientation, intensities, cache dtype).
    input_shape : tuple of int
        Spatial shape of the preprocessed arrays the network was trained on.
    input_spacing : tuple of float or None
        Their voxel size in mm (None when it varied between training images).
    spatial_dims, in_channels : int
    modalities : list of str
        Modalities of the training images (empty when unknown).
    precision : {"fp32", "bf16"}
        Autocast used by :meth:`predict` (by default the precision of the run's evaluation).
    provenance : dict
        Run id, kind, path, dataset (ref, content hash, simulated), resolved config and its
        SHA-256, code version, creation time, and the SHA-256 of every checkpoint loaded.
    """

    def __init__(self, *, run: Run, kind: str, networks: list, task: ModelTask | None, members: list[dict],
                 preprocess: PreprocessConfig, fed: dict, precision: str, channels_last: bool,
                 provenance: dict) -> None:
        self.run_id = run.run_id
        self.path = run.path
        self.kind = kind
        self.networks = networks
        self.task = task
        self._members = members
        self.preprocess = preprocess
        self.spatial_dims = int(fed["spatial_dims"])
        self.in_channels = int(fed["in_channels"])
        self.input_shape = tuple(int(s) for s in fed["shape"]) if fed.get("shape") else None
        self.input_spacing = tuple(fed["spacing"]) if fed.get("spacing") else None
        self.modalities = list(fed.get("modalities") or [])
        self.precision = precision
        self.channels_last = channels_last
        self.provenance = provenance

    @property
    def network(self) -> torch.nn.Module:
        return self.networks[0]

    @property
    def encoder(self) -> torch.nn.Module:
        """The image encoder (features before any head) of the first member."""
        net = self.networks[0]
        return getattr(net, "encoder", net)

    def __repr__(self) -> str:
        what = self.task.kind if self.task else "encoder"
        return (f"TrainedModel({self.kind} run {self.run_id}, {what}, {len(self.networks)} network(s), "
                f"input {self.spatial_dims}D {self.input_shape} x{self.in_channels}, {self.precision})")

    # ------------------------------------------------------------------------------ inputs
    def prepare(self, image) -> tuple[np.ndarray, np.ndarray]:
        """``image`` as the network sees it: ``(array (C, *input_shape), affine)``, as the training cache held it."""
        return model_input(image, self.preprocess)

    def _items(self, images, series) -> list[_Item]:
        from sobre.catalog import Dataset, DatasetRef
        from sobre.image import Image

        if isinstance(images, DatasetRef):
            images = images.open()
        if isinstance(images, Dataset):
            ds = images
            return [_Item(s.series_uid, s.subject_id, lambda s=s: ds.image(s), dict(s.metadata))
                    for s in _select(ds, series)]
        if series is not None:
            raise InputError("series= selects series of a dataset version", found=type(images).__name__,
                             fix="pass the Dataset (ws.dataset(\"name@v1\")) with series=, or the Images themselves")
        if isinstance(images, Image):
            images = [images]
        if not isinstance(images, Iterable) or isinstance(images, (str, bytes, Path)):
            raise InputError("cannot predict on this", expected="a sobre.Image, a list of Images, or a dataset "
                             "version (ws.dataset(\"name@v1\"))", found=type(images).__name__,
                             fix="load the image first: sobre.load(path)")
        out = []
        for i, img in enumerate(images):
            if not isinstance(img, Image):
                raise InputError(f"input {i} is not an Image", expected="sobre.Image", found=type(img).__name__,
                                 fix="load it first: sobre.load(path)")
            meta = dict(img.metadata)
            sid = meta.get("subject_id")
            out.append(_Item(str(meta.get("series_uid") or f"image-{i}"), None if sid is None else str(sid),
                             lambda img=img: img, meta))
        return out

    def _check(self, img, item: _Item) -> None:
        where = img.sources[0] if img.sources else None
        what = f"run {self.run_id} was trained on"
        if img.spatial_ndim != self.spatial_dims:
            raise InputError(f"{what} {self.spatial_dims}D images; {item.id} is {img.spatial_ndim}D", path=where,
                             expected=f"{self.spatial_dims}D images ({', '.join(self.modalities) or 'any modality'})",
                             found=f"{img.spatial_ndim}D image of shape {img.shape}",
                             fix="predict on images like those of the run's dataset "
                                 f"({self.provenance['dataset'].get('ref')})")
        channels = img.shape[-1] if img.extra_axes == ("channel",) else 1
        if img.extra_axes in ((), ("channel",)) and channels != self.in_channels:
            raise InputError(f"{what} images of {self.in_channels} channel(s); {item.id} has {channels}", path=where,
                             expected=f"{self.in_channels} channel(s)", found=f"shape {img.shape}",
                             fix="predict on images like those of the run's dataset")
        modality = img.modality or item.meta.get("modality")
        if self.modalities and modality and str(modality) not in self.modalities:
            raise InputError(f"{what} {'/'.join(self.modalities)} images; {item.id} is {modality}", path=where,
                             expected=f"modality {' or '.join(self.modalities)}", found=f"modality {modality}",
                             fix="predict on images of the modality the model was trained on")

    def _load(self, item: _Item) -> tuple:
        img = item.load()
        self._check(img, item)
        arr, aff = self.prepare(img)
        seg = self.task is not None and self.task.kind == "segmentation"
        if not seg and self.input_shape and tuple(arr.shape[1:]) != self.input_shape:
            raise InputError(f"run {self.run_id}: {item.id} does not land on the grid the network was trained on",
                             path=img.sources[0] if img.sources else None,
                             expected=f"{self.input_shape} voxels after preprocessing",
                             found=f"{tuple(arr.shape[1:])} (image {img.spatial_shape}, spacing "
                                   f"{tuple(round(v, 3) for v in img.spacing[:img.spatial_ndim])})",
                             fix="predict on images with the training images' field of view, or train with "
                                 "preprocess.resample = \"shape\" or a spacing and a shape")
        return img, arr, aff

    def _covariates(self, items: list[_Item], covariates) -> np.ndarray | None:
        names = self.task.covariates if self.task else []
        if not names:
            return None
        cols = []
        for name in names:
            if covariates is not None and isinstance(covariates, Mapping | pd.DataFrame) and name in covariates:
                vals = list(np.asarray(covariates[name]).ravel())
            elif covariates is None and all(name in it.meta for it in items):
                vals = [it.meta[name] for it in items]
            else:
                raise InputError(f"run {self.run_id} needs the covariate '{name}' for every image",
                                 expected=f"covariates={{'{name}': [one value per image]}}",
                                 found="given: " + (", ".join(map(str, covariates)) if covariates is not None
                                                    else "none"),
                                 fix=f"pass covariates={{{', '.join(repr(n) + ': [...]' for n in names)}}}")
            x = pd.to_numeric(pd.Series(vals), errors="coerce").to_numpy(float)
            if len(x) != len(items) or np.isnan(x).any():
                raise InputError(f"covariate '{name}' must hold one number per image", expected=f"{len(items)} numbers",
                                 found=f"{len(x)} value(s), {int(np.isnan(x).sum())} missing or not numeric")
            cols.append(x)
        return np.stack(cols, 1)

    # ------------------------------------------------------------------------------ predict
    def predict(self, images, *, series: Sequence | None = None, covariates=None, batch_size: int = 8,
                progress: Progress | None = None) -> Predictions:
        """Predict on images, preprocessed exactly as in training.

        Parameters
        ----------
        images : sobre.Image, list of Images, or a dataset version (``Dataset`` / ``DatasetRef``)
        series : sequence, optional
            With a dataset version: the series to predict (entries, indices or uids); default all.
        covariates : mapping or DataFrame, optional
            For models trained with ``model.covariates``: one value per image for each name (a
            dataset version's own metadata is used when not given).
        batch_size : int
            Images preprocessed and forwarded at once (memory is bounded by one batch).
        progress : callable, optional
            ``progress("predicting", done, total)``.

        Returns
        -------
        Predictions

        Raises
        ------
        InputError
            An image of another dimensionality, channel count or modality than the training
            images, or one that does not land on the training grid; missing covariates. The
            message names the run, what it expected and what it found.
        """
        if self.task is None:
            raise InputError(f"run {self.run_id} is a pretraining run: an encoder without a task head",
                             expected="a train or probe run for predict()", found=f"kind {self.kind}",
                             fix="use model.features(images), or load a train/probe run")
        progress = progress or no_progress
        items = self._items(images, series)
        bf16 = self.precision == "bf16"
        t = self.task
        if t.kind == "segmentation":
            return self._segment(items, bf16, progress)
        cov_raw = self._covariates(items, covariates)
        outs = []
        for b in range(0, len(items), max(1, batch_size)):
            chunk = items[b:b + batch_size]
            x = np.stack([self._load(it)[1] for it in chunk])
            rows = np.arange(len(chunk))
            per = []
            for net, m in zip(self.networks, self._members):
                mt = _member_task(t.kind, m)
                cov = None if cov_raw is None else mt.scaled_covariates(cov_raw[b:b + batch_size])
                out, _ = E.timed_inference(net, x, rows, batch_size=len(chunk), bf16=bf16,
                                           channels_last=self.channels_last, covariates=cov)
                per.append(mt.outputs(out))
            outs.append(np.mean(per, axis=0))
            progress("predicting", min(b + batch_size, len(items)), len(items))
        scores = np.concatenate(outs) if outs else np.zeros((0,))
        return Predictions(t.kind, scores, list(t.classes), [it.id for it in items], [it.subject for it in items],
                           run_id=self.run_id)

    def _segment(self, items: list[_Item], bf16: bool, progress: Progress) -> Predictions:
        from sobre.image import Grid, Image, resample

        t = self.task
        roi = t.patch or list(self.input_shape)
        masks = []
        for i, it in enumerate(items):
            img, arr, aff = self._load(it)
            x = torch.from_numpy(np.asarray(arr, np.float32))[None]
            probs = None
            for net in self.networks:
                p = E.sliding_window_probs(net, x, roi=roi, overlap=t.overlap, bf16=bf16,
                                           channels_last=self.channels_last)[0]
                probs = p if probs is None else probs + p
            labels = probs.argmax(0).numpy().astype(np.uint8)
            on_grid = Image(labels, aff, coordinate_system=img.coordinate_system)
            mask = resample(on_grid, Grid.of(img), order="nearest")
            masks.append(Image(mask.array, mask.affine, modality="SEG", coordinate_system=img.coordinate_system,
                               metadata={"run_id": self.run_id, "source_series": it.id,
                                         "classes": list(t.classes)}))
            progress("predicting", i + 1, len(items))
        return Predictions(t.kind, None, list(t.classes), [it.id for it in items], [it.subject for it in items],
                           masks=masks, run_id=self.run_id)

    def features(self, images, *, series: Sequence | None = None, batch_size: int = 8,
                 progress: Progress | None = None) -> np.ndarray:
        """Encoder features ``(n, D)`` (global average pooling, before any head or projection).

        For a pretraining run, the pretrained encoder; for a train or probe run, the encoder of
        its first member network. Images are preprocessed exactly as in training.
        """
        if self.task is not None and self.task.kind == "segmentation":
            raise InputError(f"run {self.run_id} is a segmentation model: it has no feature encoder",
                             expected="a pretraining, classification or regression run",
                             found="task segmentation", fix="use predict() for masks")
        progress = progress or no_progress
        items = self._items(images, series)
        enc = self.encoder
        outs = []
        for b in range(0, len(items), max(1, batch_size)):
            chunk = items[b:b + batch_size]
            x = np.stack([self._load(it)[1] for it in chunk])
            out, _ = E.timed_inference(enc, x, np.arange(len(chunk)), batch_size=len(chunk),
                                       bf16=self.precision == "bf16", channels_last=self.channels_last)
            outs.append(out.numpy())
            progress("features", min(b + batch_size, len(items)), len(items))
        return np.concatenate(outs) if outs else np.zeros((0, getattr(enc, "out_features", 0)), np.float32)


def _select(ds, series) -> list:
    """Series of dataset version ``ds``: all, or those given as entries, indices or ``uid[#label]``."""
    if series is None:
        return ds.series
    return [ds.entry(int(s) if isinstance(s, np.integer) else s) for s in series]


def _member_task(kind: str, member: dict):
    """The member's :class:`TaskSpec`: the same output mapping and covariate scaling as in training."""
    from sobre.learn._tasks import TaskSpec

    cm, cs = member.get("cov_mean"), member.get("cov_std")
    return TaskSpec(kind=kind, targets=None, mean=float(member.get("target_mean", 0.0)),
                    std=float(member.get("target_std", 1.0)), cov_mean=None if cm is None else np.asarray(cm),
                    cov_std=None if cs is None else np.asarray(cs))


# ------------------------------------------------------------------------------------- loading
def _open(run, workspace, runs_dir) -> Run:
    if isinstance(run, Run):
        return run
    p = Path(str(run))
    if (p / "run.json").is_file():
        try:
            record = json.loads((p / "run.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError("run record is unreadable", path=p / "run.json", found=str(exc),
                               fix="the run folder is damaged; train again") from None
        return Run(p, record)
    root = runs_root(workspace) if workspace is not None else (Path(runs_dir) if runs_dir else None)
    if root is None:
        raise InputError(f"no run folder '{run}'", path=p, expected="a run folder holding run.json, a Run, or a run "
                         "id with workspace= (or runs_dir=)", found="no run.json there" if p.exists() else
                         "no such folder", fix="give the run's folder (WS/runs/RUN_ID) or its id and the workspace")
    return open_run(root, str(run))


def _no_weights(run: Run, expected: str, found: str) -> InputError:
    status = run.record.get("status")
    hint = run.record.get("resume_hint")
    fix = f"finish it first ({hint})" if hint else ("train again" if status != "completed" else
                                                   "restore the run folder, or train again")
    return InputError(f"run {run.run_id} has no trained weights to load", path=run.path, expected=expected,
                      found=found, fix=fix)


def _checkpoint(run: Run, rel: str, verify: bool) -> dict:
    p = run.path / rel
    if not p.is_file():
        raise _no_weights(run, f"{rel} in the run folder", f"status {run.record.get('status')}, no {rel}")
    recorded = (run.record.get("artifacts") or {}).get(Path(rel).as_posix())
    if verify and recorded and sha256_file(p) != recorded.get("sha256"):
        raise InputError(f"run {run.run_id}: {rel} changed since the run recorded it", path=p,
                         expected=f"sha256 {recorded.get('sha256')}", found=f"sha256 {sha256_file(p)}",
                         fix="restore the checkpoint, or train again")
    try:  # tensors and plain values only: loading a model never runs code from the file
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise InputError(f"run {run.run_id}: cannot read {rel} ({type(exc).__name__})", path=p,
                         expected="a checkpoint written by sobre", fix="train again") from None


def load_model(run, *, workspace=None, runs_dir=None, device: str | torch.device = "cpu",
               precision: str = "run", verify: bool = True) -> TrainedModel:
    """Load a trained model from its run: network(s) with weights, task, preprocessing and provenance.

    Parameters
    ----------
    run : Run, path of a run folder, or a run id
        A run id (or unique prefix) needs ``workspace`` (or ``runs_dir``). Train, probe and
        pretraining runs (the latter give an encoder: :meth:`TrainedModel.features`). A fusion run
        gives a :class:`~sobre.learn.FusionModel` (its image run, found in ``workspace`` or beside
        it, loaded too): ``predict(images, variables=...)`` scores subjects.
    workspace : sobre.catalog.Workspace, optional
    runs_dir : path, optional
        Where runs are, without a workspace.
    device : str or torch.device
        Where the networks go (``"cpu"`` by default).
    precision : {"run", "fp32", "bf16"}
        Autocast for prediction: ``"run"`` (default) is what the run's evaluation used, so that
        predictions reproduce ``predictions.csv``.
    verify : bool
        Check every checkpoint's SHA-256 against the run record first.

    Returns
    -------
    TrainedModel (FusionModel for a fusion run)

    Raises
    ------
    CatalogError
        No such run (the error lists known runs), or an unreadable record.
    InputError
        A run without weights (still running, interrupted, failed, or recorded before
        ``sobre.model/1``), or a checkpoint changed since the run recorded it; a fusion run fused
        before ``sobre.fusion-model/1``, or whose image run's checkpoints changed.
    """
    run = _open(run, workspace, runs_dir)
    r = run.record
    kind = r.get("kind")
    if kind not in ("train", "probe", "pretrain", "fusion"):
        raise InputError(f"run {run.run_id} is a {kind} run, which holds no model", path=run.path,
                         expected="a train, probe, pretrain or fusion run", found=f"kind {kind}",
                         fix="choose a run from `sobre runs list --kind train`")
    if r.get("status") != "completed":
        raise _no_weights(run, "a completed run", f"status {r.get('status')}"
                          + (f" ({r['error']})" if r.get("error") else ""))
    if precision not in ("run", "fp32", "bf16"):
        raise InputError("unknown precision", expected="run, fp32 or bf16", found=repr(precision))
    if kind == "fusion":
        from sobre.learn._fusion_model import load_fusion

        return load_fusion(run, workspace=workspace, runs_dir=runs_dir, device=device, precision=precision,
                           verify=verify)
    rec = r.get("model")
    if rec is None and kind == "pretrain":
        rec = _pretrain_record(run, verify)
    if rec is None or rec.get("format") != MODEL_FORMAT:
        found = "a run recorded by an older Sobre, without one" if rec is None else f"format {rec.get('format')}"
        raise _no_weights(run, f"a model record ({MODEL_FORMAT}) in run.json", found)
    cfg = r.get("config") or {}
    mcfg = ModelConfig.model_validate(cfg.get("model", {}))
    pre = PreprocessConfig.model_validate(rec["preprocess"])
    inp = rec["input"]
    dims, cin = int(inp["spatial_dims"]), int(inp["in_channels"])
    t = rec.get("task")
    task = None
    if t is not None:
        task = ModelTask(kind=t["kind"], label=t.get("label"), classes=list(t.get("classes") or []),
                         positive=t.get("positive"), n_classes=int(t.get("n_classes", 2)),
                         target_scaling=[(m.get("target_mean", 0.0), m.get("target_std", 1.0)) for m in rec["members"]],
                         covariates=list(rec.get("covariates") or []), patch=t.get("patch"),
                         overlap=float(t.get("overlap", 0.25)))
    networks, digests = [], {}
    for m in rec["members"]:
        st = _checkpoint(run, m["checkpoint"], verify)
        net = _network(mcfg, task, dims, cin, len(rec.get("covariates") or []), m.get("part", "model"))
        net = E.prepare_model(net, dims, bool(rec.get("channels_last", True)))
        net.load_state_dict(st["encoder"] if m.get("part") == "encoder" else st["model"])
        net.to(device).eval()
        for p_ in net.parameters():
            p_.requires_grad_(False)
        networks.append(net)
        digests[m["checkpoint"]] = ((r.get("artifacts") or {}).get(m["checkpoint"]) or {}).get("sha256")
    prec = rec.get("precision", "fp32") if precision == "run" else precision
    d = r.get("dataset") or {}
    provenance = {"run_id": run.run_id, "kind": kind, "path": str(run.path), "name": r.get("name"),
                  "created_at": r.get("created_at"), "finished_at": r.get("finished_at"),
                  "dataset": {"ref": d.get("ref"), "content_hash": d.get("content_hash"),
                              "simulated": d.get("simulated", False)},
                  "config": cfg, "config_sha256": r.get("config_sha256"), "code": r.get("code"),
                  "checkpoints": digests, "init": r.get("init"), "trained_precision": rec.get("precision")}
    return TrainedModel(run=run, kind=kind, networks=networks, task=task, members=rec["members"], preprocess=pre,
                        fed=inp, precision=prec, channels_last=bool(rec.get("channels_last", True)),
                        provenance=provenance)


def _network(mcfg: ModelConfig, task: ModelTask | None, dims: int, cin: int, n_cov: int, part: str):
    from sobre.learn._models import Classifier, build_encoder, build_segmenter

    if part == "encoder" or task is None:
        return build_encoder(mcfg, dims, cin)
    if task.kind == "segmentation":
        return build_segmenter(mcfg, dims, cin, task.n_classes)
    n_out = {"binary": 1, "regression": 1}.get(task.kind, len(task.classes))
    return Classifier(build_encoder(mcfg, dims, cin), n_out, mcfg.dropout, n_covariates=n_cov)


def _pretrain_record(run: Run, verify: bool) -> dict | None:
    """A pretraining run's encoder.pt says all a model record would (runs of any Sobre version)."""
    if not (run.path / "encoder.pt").is_file():
        return None
    st = _checkpoint(run, "encoder.pt", verify)
    spec = st.get("spec") or {}
    inp = {"spatial_dims": spec.get("spatial_dims"), "in_channels": spec.get("in_channels"),
           "shape": st.get("spatial_shape"), "spacing": None, "modalities": []}
    inp.update(st.get("input") or {})
    return {"format": MODEL_FORMAT, "kind": "pretrain", "input": inp, "task": None, "covariates": [],
            "preprocess": st["preprocess"], "members": [member_record("encoder.pt", part="encoder")],
            "precision": (run.record.get("runtime") or {}).get("precision", "fp32"),
            "channels_last": bool(((run.record.get("config") or {}).get("runtime") or {}).get("channels_last", True))}

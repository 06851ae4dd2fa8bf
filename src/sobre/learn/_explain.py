"""Saliency maps for trained models: :func:`explain`, :func:`saliency`, :func:`region_shares`.

Three methods, each implemented by a maintained library (nothing here re-implements them):

=============  ============================================================  =====================
method         what the map says                                             implementation
=============  ============================================================  =====================
``ig``         integrated gradients (Sundararajan et al. 2017): per voxel,   Captum
               (x - baseline) x the mean gradient along the straight path    ``IntegratedGradients``
               from the baseline; the attributions sum to f(x) - f(baseline)
``occlusion``  f(x) minus f(x with a box around the voxel set to the         MONAI
               baseline), averaged over the overlapping boxes                ``OcclusionSensitivity``
``gradcam``    Grad-CAM (Selvaraju et al. 2017) at the encoder's last        MONAI ``GradCAM``
               convolutional stage, ReLU, upsampled (trilinear)
=============  ============================================================  =====================

The explained output ``f`` is the network's raw output for the target: the positive-class logit
(binary), the class logit (multiclass, multilabel; by default the predicted class), the
standardised value (regression). ``k``-fold runs average their member networks' maps (for
integrated gradients this is exactly the attribution of their mean output). Computation is in
fp32 on the preprocessed grid (the network's own input: :meth:`TrainedModel.prepare`), then the
map is brought back to the input image's grid with :func:`sobre.image.resample` (linear; zero
outside the preprocessed field of view): the saliency NIfTI has the image's own shape and affine.

With an atlas (a label map on each image's grid), the map's mass (sum of absolute values) is
split by region: ``share`` = mass in the region / total mass; ``voxel_share`` is what a map of
uniform random values would give (the region's fraction of voxels), ``enrichment`` their ratio.

>>> from sobre.learn import explain                                          # doctest: +SKIP
>>> res = explain("WS/runs/RUN_ID", "target@v1", "ig", workspace=ws,  # doctest: +SKIP
...               atlas="sim/truth/{subject}/{subject}_dseg.nii.gz", regions="sim/truth/regions.tsv")
>>> res.regions.head()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sobre.base import Progress, no_progress, sha256_file, write_atomic
from sobre.errors import InputError, SobreError

__all__ = [
    "EXPLAIN_FORMAT",
    "METHODS",
    "Explanation",
    "SubjectExplanation",
    "explain",
    "region_shares",
    "saliency",
]

log = logging.getLogger("sobre.learn")

EXPLAIN_FORMAT = "sobre.explain/1"

#: method -> (library, class implementing it)
METHODS = {"ig": ("captum", "captum.attr.IntegratedGradients"),
           "occlusion": ("monai", "monai.visualize.OcclusionSensitivity"),
           "gradcam": ("monai", "monai.visualize.GradCAM")}

_DEFAULTS = {"ig": {"steps": 32, "baseline": 0.0, "internal_batch_size": 8, "smooth_samples": 0,
                    "smooth_noise": 0.15},
             "occlusion": {"mask_size": 8, "overlap": 0.5, "baseline": 0.0, "n_batch": 16},
             "gradcam": {"layer": None}}


def _library_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a version is informative only
        return "unknown"


def _check_method(method: str, *, run: str = "", dataset: str = "") -> str:
    if method not in METHODS:
        from difflib import get_close_matches

        near = get_close_matches(str(method), list(METHODS), n=1)
        where = "".join([f" for run {run}" if run else "", f" on {dataset}" if dataset else ""])
        raise InputError(f"unknown saliency method {method!r}{where}", expected="one of: " + ", ".join(METHODS),
                         found=repr(method), fix=f"use --method {near[0]}" if near else "use --method ig, occlusion "
                         "or gradcam")
    return method


def _params(method: str, given: Mapping | None) -> dict:
    p = dict(_DEFAULTS[method])
    for k, v in (given or {}).items():
        if v is None:
            continue
        if k not in p:
            raise InputError(f"parameter {k!r} does not apply to method {method}",
                             expected="one of: " + ", ".join(p), found=repr(k),
                             fix=f"leave --{k.replace('_', '-')} out with --method {method}")
        p[k] = v
    if method == "ig":
        n, sd = p["smooth_samples"], p["smooth_noise"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError("smooth_samples must be a whole number >= 0 (0: plain integrated gradients)",
                             expected="0, 8, 16 ...", found=repr(n), fix="--smooth-samples 8")
        if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not (0 < sd <= 1):
            raise InputError("smooth_noise must be a fraction of the image's intensity range in (0, 1]",
                             expected="e.g. 0.15", found=repr(sd), fix="--smooth-noise 0.15")
    if "baseline" in p:
        b = p["baseline"]
        ok = b == "min" or (isinstance(b, (int, float)) and not isinstance(b, bool) and np.isfinite(b))
        if not ok:
            raise InputError(f"unknown baseline {b!r} for method {method}",
                             expected="a number (the model's normalised intensity) or \"min\" (each image's "
                                      "minimum: no signal)", found=repr(b), fix="--baseline 0 or --baseline min")
    return p


def _baseline(p: dict, x: torch.Tensor) -> float:
    """The baseline intensity for input ``x``: a number, or ``"min"``, the image's own minimum (its air)."""
    return float(x.min()) if p["baseline"] == "min" else float(p["baseline"])


# ------------------------------------------------------------------------------ the network as f(x)
class _Output(torch.nn.Module):
    """One member network as ``x -> raw outputs (B, K)``, its covariates (if any) fixed for one image."""

    def __init__(self, net: torch.nn.Module, covariates: torch.Tensor | None) -> None:
        super().__init__()
        self.net = net
        self.covariates = covariates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.covariates is not None:
            return self.net(x, self.covariates.expand(x.shape[0], -1))
        return self.net(x)


def _last_spatial_layer(module: torch.nn.Module, x: torch.Tensor) -> str:
    """Name of the last module (in execution order) whose output is a spatial map larger than 1 voxel."""
    spatial = x.ndim
    seen: list[str] = []
    handles = []
    for name, m in module.named_modules():
        if not name:
            continue

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == spatial and max(out.shape[2:]) > 1:
                seen.append(name)

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise InputError("Grad-CAM needs a convolutional layer with a spatial output; this network has none",
                         expected="a CNN encoder", found=type(module).__name__, fix="use --method ig or occlusion")
    # the enclosing module that ends with the same output (e.g. a Sequential after its last ReLU) is fine too;
    # keep the outermost name that finished last
    return seen[-1]


def _attribute(method: str, nets: list[torch.nn.Module], x: torch.Tensor, target: int, p: dict) -> np.ndarray:
    """The map ``(*spatial)`` on the network's grid (channels summed), averaged over member networks."""
    maps = []
    for net in nets:
        if method == "ig":
            from captum.attr import IntegratedGradients

            base = torch.full_like(x, _baseline(p, x))
            ig = IntegratedGradients(net)
            kw = dict(baselines=base, target=target, n_steps=int(p["steps"]), method="gausslegendre",
                      internal_batch_size=int(p["internal_batch_size"]))
            if int(p["smooth_samples"]) > 0:  # SmoothGrad over IG: the mean map over noisy copies of the input
                from captum.attr import NoiseTunnel

                sd = float(p["smooth_noise"]) * float(x.max() - x.min())
                attr = NoiseTunnel(ig).attribute(x, nt_type="smoothgrad", nt_samples=int(p["smooth_samples"]),
                                                 nt_samples_batch_size=1, stdevs=sd, **kw)
            else:
                attr = ig.attribute(x, **kw)
            maps.append(attr.detach()[0].sum(0).numpy())
        elif method == "occlusion":
            from monai.visualize import OcclusionSensitivity

            occ = OcclusionSensitivity(net, mask_size=int(p["mask_size"]), n_batch=int(p["n_batch"]), verbose=False,
                                       mode=_baseline(p, x), overlap=float(p["overlap"]), activate=False)
            with torch.no_grad(), warnings.catch_warnings():
                # MONAI 1.6.1 indexes tensors with lists inside OcclusionSensitivity (torch deprecation notice)
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
                full = net(x)[0, target]
                occ_map, _ = occ(x)
            out = torch.as_tensor(occ_map).float()[0, target]
            maps.append((full - out).numpy())
        else:
            from monai.visualize import GradCAM

            net = copy.deepcopy(net)  # MONAI's hooks stay on the modules they are put on: not on the model's own
            for q in net.parameters():
                q.requires_grad_(True)
            layer = p.get("layer") or _last_spatial_layer(net, x)
            names = {n for n, _ in net.named_modules()}
            if layer not in names:
                raise InputError(f"no layer {layer!r} in this network", expected="a module name such as "
                                 + ", ".join(sorted(n for n in names if n.count(".") <= 2 and n)[-4:]),
                                 found=repr(layer))
            cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=lambda a: a)
            with torch.enable_grad():
                m = cam(x.clone().requires_grad_(True), class_idx=target)
            maps.append(torch.as_tensor(m).detach().float()[0, 0].numpy())
            p["layer"] = layer
    return np.mean(maps, axis=0).astype(np.float32)


def _target_index(model, target, logits: np.ndarray) -> tuple[int, str]:
    t = model.task
    if t.kind in ("binary", "regression"):
        if target not in (None, 0, t.positive, t.label):
            raise InputError(f"run {model.run_id}: a {t.kind} model has one output", expected="no target (or "
                             f"{t.positive or t.label!r})", found=repr(target), fix="leave the target out")
        return 0, (str(t.positive) if t.kind == "binary" else str(t.label))
    if target is None:
        k = int(np.argmax(logits))
        return k, str(t.classes[k])
    if str(target) not in [str(c) for c in t.classes]:
        raise InputError(f"run {model.run_id} has no class {target!r}", expected="one of: "
                         + ", ".join(map(str, t.classes)), found=repr(target))
    k = [str(c) for c in t.classes].index(str(target))
    return k, str(t.classes[k])


def _check_model(model, dataset: str = "") -> None:
    on = f" (explaining {dataset})" if dataset else ""
    if getattr(model, "kind", None) == "fusion":
        raise InputError(f"run {model.run_id} is a fusion run{on}: saliency explains an image network",
                         path=model.path, expected="a train or probe run", found="kind fusion",
                         fix=f"explain its image run {model.image_model.run_id}; the clinical variables' weights "
                             "are in the fusion run's fusion.json")
    if model.task is None:
        raise InputError(f"run {model.run_id} is a pretraining run: an encoder without a task head{on}",
                         path=model.path, expected="a train or probe run with an image classifier or regressor",
                         found=f"kind {model.kind}", fix="explain a train or probe run (`sobre runs list --kind train`)")
    if model.task.kind == "segmentation":
        raise InputError(f"run {model.run_id} is a segmentation model{on}: saliency explains one output per image",
                         path=model.path, expected="a classification or regression run",
                         found="task segmentation", fix="explain a classification or regression run")


def saliency(model, image, method: str, *, target=None, covariates=None, seed: int = 0,
             params: Mapping | None = None):
    """The saliency map of one image, on the image's own grid.

    Parameters
    ----------
    model : TrainedModel
        From :func:`load_model` (a classification or regression run).
    image : sobre.Image
    method : {"ig", "occlusion", "gradcam"}
    target : str, optional
        Class to explain (multiclass, multilabel); default the predicted one.
    covariates : mapping, optional
        For models with ``model.covariates``: ``{name: value}`` (else the image's metadata).
    seed : int
        Seeds torch's generator while the map is computed (the methods here are deterministic on CPU;
        the seed is recorded).
    params : mapping, optional
        ``ig``: ``steps`` (32), ``baseline`` (0.0, in the network's normalised intensities, or
        ``"min"``: each image's own minimum, i.e. its air, "no signal"), ``smooth_samples`` (0; n > 0:
        SmoothGrad over IG, Captum's ``NoiseTunnel``, the mean map over n copies of the input with Gaussian
        noise of SD ``smooth_noise`` (0.15) × the image's intensity range; the sum of the map is then no
        longer f(x) − f(baseline)),
        ``internal_batch_size`` (8); ``occlusion``: ``mask_size`` (8 voxels of the network's grid),
        ``overlap`` (0.5), ``baseline`` (0.0), ``n_batch`` (16); ``gradcam``: ``layer`` (default the
        last module with a spatial output).

    Returns
    -------
    (Image, dict)
        The map (float32, the image's shape and affine) and what was computed: target, raw output,
        the output at the baseline (``ig``), parameters.
    """
    _check_method(method, run=model.run_id)
    _check_model(model)
    item = model._items(image, None)[0]
    if covariates is not None:
        item.meta.update(dict(covariates))
    return _saliency(model, item, method, target=target, seed=seed, p=_params(method, params))


def _saliency(model, item, method: str, *, target, seed: int, p: dict):
    from sobre.image import Grid, Image, resample
    from sobre.learn._inference import _member_task

    p = dict(p)
    img, arr, aff = model._load(item)
    x = torch.from_numpy(np.asarray(arr, np.float32))[None]
    cov_raw = model._covariates([item], None)
    nets = []
    for net, m in zip(model.networks, model._members):
        cov = None
        if cov_raw is not None:
            cov = torch.from_numpy(np.asarray(_member_task(model.task.kind, m).scaled_covariates(cov_raw),
                                              np.float32))
        nets.append(_Output(net, cov).eval())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        with torch.no_grad():
            logits = np.mean([n(x)[0].float().numpy() for n in nets], axis=0)
        k, name = _target_index(model, target, logits)
        info = {"target": name, "target_index": k, "output": float(logits[k])}
        if method == "ig":
            with torch.no_grad():
                base = torch.full_like(x, _baseline(p, x))
                info["baseline_value"] = float(base.flatten()[0])
                info["output_at_baseline"] = float(np.mean([n(base)[0, k].item() for n in nets]))
        m = _attribute(method, nets, x, k, p)
    info["params"] = p
    info["grid_sum"] = float(m.astype(np.float64).sum())
    info["grid_mass"] = float(np.abs(m.astype(np.float64)).sum())  # 0: an empty map (e.g. Grad-CAM after its ReLU)
    on_grid = Image(m, aff, coordinate_system=img.coordinate_system)
    back = resample(on_grid, Grid.of(img), order="linear", fill=0)
    meta = {"run_id": model.run_id, "method": method, "source_series": item.id, "target": name}
    out = Image(np.asarray(back.array, np.float32), back.affine, coordinate_system=img.coordinate_system,
                metadata=meta)
    return out, info


# ------------------------------------------------------------------------------------------- regions
def _names(regions) -> dict[int, str]:
    if regions is None:
        return {}
    if isinstance(regions, Mapping):
        return {int(k): str(v) for k, v in regions.items()}
    p = Path(regions)
    try:
        df = pd.read_csv(p, sep="\t" if p.suffix in (".tsv", ".txt") else ",")
    except (OSError, ValueError) as exc:
        raise InputError("cannot read the region names", path=p, expected="a TSV/CSV with columns label and name",
                         found=type(exc).__name__) from None
    if not {"label", "name"} <= set(df.columns):
        raise InputError("the region table needs columns 'label' and 'name'", path=p,
                         expected="columns label, name", found="columns " + ", ".join(map(str, df.columns)))
    return {int(r.label): str(r.name) for r in df.itertuples()}


def region_shares(saliency_map, atlas, names: Mapping | None = None) -> pd.DataFrame:
    """The saliency mass of each atlas region.

    Parameters
    ----------
    saliency_map, atlas : sobre.Image or ndarray of one shape
        The map and an integer label map on the same voxels (label 0: outside the atlas).
    names : mapping label -> name, optional

    Returns
    -------
    DataFrame
        One row per label present (0 included when present): ``label``, ``name``, ``voxels``,
        ``voxel_share`` (fraction of all voxels: the share a uniform random map would give),
        ``mass`` (sum of |saliency|), ``share`` (mass / total mass), ``enrichment``
        (share / voxel_share), ``mean`` (mean signed saliency).
    """
    s = np.asarray(getattr(saliency_map, "array", saliency_map), np.float64)
    a = np.asarray(getattr(atlas, "array", atlas))
    if s.shape != a.shape:
        raise InputError("the saliency map and the atlas have different shapes", expected=str(s.shape),
                         found=str(a.shape))
    lab = np.rint(a).astype(np.int64).ravel()
    if lab.size and lab.min() < 0:
        raise InputError("the atlas has negative labels", expected="labels >= 0 (0 = outside)",
                         found=f"minimum {lab.min()}")
    sv = s.ravel()
    absv = np.abs(sv)
    present = np.unique(lab)
    vox = np.bincount(lab, minlength=present.max() + 1 if present.size else 1)[present]
    mass = np.bincount(lab, weights=absv, minlength=present.max() + 1 if present.size else 1)[present]
    tot_sum = np.bincount(lab, weights=sv, minlength=present.max() + 1 if present.size else 1)[present]
    total = float(absv.sum())
    names = dict(names or {})
    df = pd.DataFrame({
        "label": present.astype(int),
        "name": [names.get(int(v), "outside atlas" if v == 0 else f"label {int(v)}") for v in present],
        "voxels": vox.astype(int),
        "voxel_share": vox / max(lab.size, 1),
        "mass": mass,
        "share": mass / total if total > 0 else np.zeros(len(present)),
    })
    df["enrichment"] = np.where(df["voxel_share"] > 0, df["share"] / df["voxel_share"].where(df["voxel_share"] > 0, 1),
                                np.nan)
    df["mean"] = tot_sum / np.maximum(vox, 1)
    return df


def _grid_text(img) -> str:
    sp = ", ".join(f"{v:.3g}" for v in img.spacing[:img.spatial_ndim])
    return f"shape {tuple(img.spatial_shape)}, spacing ({sp}) mm, origin {tuple(round(float(v), 2) for v in img.origin)}"


def _same_grid(a, b) -> bool:
    if tuple(a.spatial_shape) != tuple(b.spatial_shape) or a.coordinate_system != b.coordinate_system:
        return False
    tol = 1e-3 * max(1.0, float(min(a.spacing[:a.spatial_ndim])))
    return bool(np.allclose(np.asarray(a.affine), np.asarray(b.affine), rtol=0, atol=tol))


# ------------------------------------------------------------------------------------------ results
@dataclass
class SubjectExplanation:
    """One image's explanation."""

    series: str
    subject: str | None
    target: str
    output: float
    map: object = None  # sobre.Image (in memory; ``path`` on disk)
    path: str | None = None
    regions: pd.DataFrame | None = None
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"series_uid": self.series, "subject_id": self.subject, "target": self.target, "output": self.output,
             "map": self.path, **{k: v for k, v in self.info.items() if k != "params"}}
        if self.regions is not None:
            d["regions"] = self.regions.to_dict(orient="records")
        return d


@dataclass
class Explanation:
    """What :func:`explain` made: per image maps and region shares, the summary over images, the report."""

    method: str
    run_id: str
    dataset: str
    subjects: list
    regions: pd.DataFrame | None
    report: dict
    path: Path | None = None

    def __repr__(self) -> str:
        return (f"Explanation({self.method}, run {self.run_id}, {self.dataset}, {len(self.subjects)} image(s)"
                + (f", {self.path}" if self.path else "") + ")")

    def to_dict(self) -> dict:
        return dict(self.report, path=None if self.path is None else str(self.path))


def _summary(rows: list[pd.DataFrame]) -> pd.DataFrame | None:
    if not rows:
        return None
    long = pd.concat(rows, ignore_index=True)
    n = len(rows)
    g = long.groupby("label", sort=True)
    out = pd.DataFrame({
        "name": g["name"].first(),
        "images": g.size(),
        "mean_share": g["share"].sum() / n,  # absent from an image = share 0 there
        "sd_share": g["share"].apply(lambda s: float(np.std(np.r_[s.to_numpy(), np.zeros(n - len(s))], ddof=1))
                                     if n > 1 else float("nan")),
        "mean_voxel_share": g["voxel_share"].sum() / n,
    }).reset_index()
    out["enrichment"] = out["mean_share"] / out["mean_voxel_share"].where(out["mean_voxel_share"] > 0)
    return out.sort_values("mean_share", ascending=False).reset_index(drop=True)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "image"


def _markdown(rep: dict, summary: pd.DataFrame | None) -> str:
    sim = "SIMULATED data — " if rep["simulated"] else ""
    lines = [f"# Explanation of run {rep['run']['run_id']} on {rep['dataset']['ref']} ({rep['method']})", ""]
    if rep["simulated"]:
        lines += ["**SIMULATED**: the dataset version is simulated; nothing here describes patients.", ""]
    lib = rep["library"]
    lines += [f"- {sim}method `{rep['method']}`, implemented by {lib['name']} {lib['version']} (`{lib['class']}`)",
              f"- explained output: {rep['output']}",
              f"- {len(rep['subjects'])} image(s); maps in `maps/` (NIfTI, each on its input image's grid)",
              f"- parameters: {json.dumps(rep['params'], sort_keys=True)}", ""]
    if summary is None:
        lines += ["No atlas was given: no regional shares.", ""]
        return "\n".join(lines)
    lines += ["Share of saliency mass (sum of |saliency|) per atlas region, mean over images; `random` is the",
              "share a map of uniform random values would give (the region's fraction of voxels).", "",
              "| region | label | mean share | SD | random | enrichment |", "|---|---|---|---|---|---|"]
    for r in summary.head(15).itertuples():
        lines.append(f"| {r.name} | {r.label} | {r.mean_share:.4f} | {r.sd_share:.4f} | {r.mean_voxel_share:.4f} | "
                     f"{r.enrichment:.2f} |")
    lines += ["", ("Saliency shows what the network's output is sensitive to on these images, not why a patient "
              "has a condition; it is not validated for clinical use."), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- explain
def _resolve_atlas(atlas, entry, ds_ref: str, run_id: str):
    """The atlas for one series: an Image, or a path (``{subject}``/``{series}`` filled in)."""
    from sobre.image import Image, load

    if atlas is None:
        return None
    a = atlas
    if callable(a) and not isinstance(a, Image):
        a = a(entry)
    elif isinstance(a, Mapping):
        a = a.get(entry.subject_id, a.get(entry.series_uid))
        if a is None:
            raise InputError(f"no atlas for subject {entry.subject_id} of {ds_ref} (explaining run {run_id})",
                             expected="an atlas for every subject (or series) of the dataset version",
                             found=f"atlases for {len(atlas)} key(s)", fix="give one for every subject, or one "
                             "label map for all")
    if isinstance(a, Image):
        return a
    path = Path(str(a).format(subject=entry.subject_id, series=entry.series_uid))
    if not path.exists():
        raise InputError(f"no atlas for subject {entry.subject_id} of {ds_ref} (explaining run {run_id})", path=path,
                         expected="a label map on the subject's image grid", found="no such file",
                         fix="check the atlas path ({subject} is replaced by the subject id)")
    try:
        return load(path)
    except SobreError as exc:
        raise InputError(f"cannot read the atlas of subject {entry.subject_id} of {ds_ref} (explaining run {run_id})",
                         path=path, found=str(exc.what)) from None


def explain(model, dataset, method: str, *, workspace=None, out=None, atlas=None, regions=None, series=None,
            target=None, params: Mapping | None = None, seed: int = 0, overwrite: bool = False, write: bool = True,
            progress: Progress | None = None) -> Explanation:
    """Saliency maps of a trained model on a frozen dataset version, with regional shares and a report.

    Parameters
    ----------
    model : TrainedModel, a run folder or a run id (with ``workspace``)
    dataset : Dataset, DatasetRef, or ``"NAME@vN"`` (with ``workspace``)
    method : {"ig", "occlusion", "gradcam"}
    out : path, optional
        Output folder; default ``RUN/explain/NAME-vN-METHOD``. Written whole or not at all (a
        temporary folder renamed into place); an existing non-empty folder needs ``overwrite``.
    atlas : sobre.Image, path, path pattern, mapping or callable, optional
        Label map(s) on each image's grid: one Image or file for every image, a pattern with
        ``{subject}`` / ``{series}`` (e.g. the simulator's ``truth/{subject}/{subject}_dseg.nii.gz``),
        a mapping subject id (or series uid) -> Image or path, or ``callable(series_entry)``.
        Checked for every image before anything is computed: an atlas on another grid is refused.
    regions : mapping label -> name, or a TSV/CSV with columns ``label`` and ``name``, optional
    series : sequence, optional
        Series of the version to explain (entries, indices or uids); default all.
    target : str, optional
        Class to explain (multiclass/multilabel); default the predicted class of each image.
    params : mapping, optional
        Method parameters (see :func:`saliency`).
    seed : int
    write : bool
        False: compute and return, write nothing.
    progress : callable, optional
        ``progress("explaining", done, total)``.

    Returns
    -------
    Explanation

    Raises
    ------
    InputError
        An unknown method, a run without an image classifier/regressor, an atlas missing or on
        another grid than its image, an existing output folder; the message names the run and the
        dataset version. Nothing is written.
    """
    from sobre.catalog import Dataset, DatasetRef
    from sobre.learn._inference import TrainedModel, _Item, load_model

    progress = progress or no_progress
    run_name = model.run_id if isinstance(model, TrainedModel) else Path(str(model)).name
    ds_name = dataset if isinstance(dataset, str) else getattr(dataset, "ref", str(dataset))
    _check_method(method, run=run_name, dataset=ds_name)
    p = _params(method, params)
    if not isinstance(model, TrainedModel):
        model = load_model(model, workspace=workspace)
    _check_model(model, ds_name)
    if isinstance(dataset, str):
        if workspace is None:
            raise InputError(f"dataset version {dataset!r} needs the workspace", expected="workspace=",
                             fix="pass workspace=Workspace.open(...) or the Dataset itself")
        dataset = workspace.dataset(dataset)
    if isinstance(dataset, DatasetRef):
        dataset = dataset.open()
    if not isinstance(dataset, Dataset):
        raise InputError("explain needs a frozen dataset version", expected="a Dataset or NAME@vN",
                         found=type(dataset).__name__)
    ref = dataset.ref
    from sobre.learn._inference import _select

    entries = _select(dataset, series)
    if not entries:
        raise InputError(f"dataset version {ref} has no series to explain (run {model.run_id})",
                         fix="choose a version with images")
    names = _names(regions)
    target_dir = Path(out) if out is not None else Path(model.path) / "explain" / f"{dataset.name}-v{dataset.version}-{method}"
    if write and target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())) and not overwrite:
        raise InputError(f"output folder for run {model.run_id} on {ref} exists", path=target_dir,
                         expected="a new or empty folder", found="a non-empty folder" if target_dir.is_dir()
                         else "a file", fix="choose another --out, or pass --overwrite")
    # every check before any computation: images and their atlases (headers only)
    plan = []
    for e in entries:
        img = dataset.image(e)
        item = _Item(e.series_uid, e.subject_id, lambda img=img: img, dict(e.metadata))
        model._check(img, item)
        a = _resolve_atlas(atlas, e, ref, model.run_id)
        if a is not None and not _same_grid(a, img):
            where = a.sources[0] if a.sources else None
            raise InputError(f"the atlas of subject {e.subject_id} is in another space than its image in {ref} "
                             f"(explaining run {model.run_id})", path=where,
                             expected=f"the image's grid: {_grid_text(img)}, {img.coordinate_system}",
                             found=f"{_grid_text(a)}, {a.coordinate_system}",
                             fix="give label maps on each image's grid (e.g. the simulator's "
                                 "truth/{subject}/{subject}_dseg.nii.gz), or resample the atlas onto the image "
                                 "(sobre.image.resample(atlas, Grid.of(image), order=\"nearest\"))")
        plan.append((e, item, a))
    lib, cls = METHODS[method]
    results, tables = [], []
    for i, (e, item, a) in enumerate(plan):
        m, info = _saliency(model, item, method, target=target, seed=seed, p=p)
        p = info.pop("params")
        tab = None
        if a is not None:
            tab = region_shares(m, a, names)
            tab.insert(0, "subject_id", e.subject_id)
            tab.insert(1, "series_uid", e.series_uid)
            tables.append(tab)
        results.append(SubjectExplanation(e.series_uid, e.subject_id, info["target"], info["output"], m, None, tab,
                                          info))
        progress("explaining", i + 1, len(plan))
    summary = _summary(tables)
    t = model.task
    output = {"binary": f"logit of P({t.positive})", "regression": f"standardised {t.label}"}.get(
        t.kind, "logit of the " + ("given class" if target is not None else "predicted class"))
    simulated = bool(dataset.simulated or (model.provenance.get("dataset") or {}).get("simulated"))
    rep = {"format": EXPLAIN_FORMAT, "simulated": simulated, "method": method,
           "library": {"name": lib, "version": _library_version(lib), "class": cls},
           "params": p, "seed": int(seed), "output": output, "precision": "fp32",
           "run": {k: model.provenance.get(k) for k in ("run_id", "kind", "name", "config_sha256")}
           | {"dataset": model.provenance.get("dataset"), "checkpoints": model.provenance.get("checkpoints")},
           "dataset": {"ref": ref, "content_hash": dataset.content_hash, "simulated": bool(dataset.simulated)},
           "atlas": None if atlas is None else (str(atlas) if isinstance(atlas, (str, os.PathLike)) else
                                                type(atlas).__name__),
           "mass": "sum of |saliency| over voxels of the input image's grid",
           "subjects": [], "regions": None if summary is None else summary.to_dict(orient="records")}
    res = Explanation(method, model.run_id, ref, results, summary, rep, None)
    if not write:
        rep["subjects"] = [r.to_dict() for r in results]
        return res
    from sobre.image import save

    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    try:
        (tmp / "maps").mkdir()
        counts: dict = {}
        for r in results:
            stem = _safe(r.subject or "image")
            counts[stem] = counts.get(stem, 0) + 1
            if counts[stem] > 1:
                stem = f"{stem}_{counts[stem]}"
            rel = f"maps/{stem}_{method}.nii.gz"
            save(r.map, tmp / rel)
            r.path = rel
            r.info["map_sha256"] = sha256_file(tmp / rel)
        rep["subjects"] = [r.to_dict() for r in results]
        if tables:
            pd.concat(tables, ignore_index=True).to_csv(tmp / "regions.csv", index=False)
        write_atomic(tmp / "explanation.json", json.dumps(_jsonable(rep), indent=2, sort_keys=True) + "\n")
        write_atomic(tmp / "explanation.md", _markdown(rep, summary))
        if target_dir.exists():
            old = target_dir.with_name(f".{target_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target_dir.rename(old)
            tmp.rename(target_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for r in results:
        r.path = str(target_dir / r.path)
    res.path = target_dir
    log.info("explained run %s on %s with %s: %d image(s) -> %s", model.run_id, ref, method, len(results), target_dir)
    return res


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if not np.isfinite(v) else v
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Callable) and not isinstance(obj, type):
        return getattr(obj, "__name__", str(obj))
    return obj

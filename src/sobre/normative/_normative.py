"""Normative models on frozen dataset versions: fit on a healthy version, score other versions.

``fit_normative(ws, "healthy@v1")`` collects, per subject, the regional measures of its label map and
image and its voxel-wise map (:mod:`sobre.normative._measures`), fits :func:`fit_arrays` against age
and sex with site as the batch, and freezes the result as an artefact in the workspace::

    WS/normative/<MODEL_ID>/model.json     the record: dataset (ref + content hash), training subjects,
                                           resolved config, code version, atlas, measures, template
                                           grid, covariate ranges, sites, fit summary, params SHA-256
    WS/normative/<MODEL_ID>/params.npz     the parameters (read-only)

``NormativeModel.score(ws, "patients@v1")`` refuses versions sharing a subject with the training
version (no test subject ever reaches a fit), label maps of another atlas, maps in another template
space and images of another modality; flags subjects whose covariates lie outside the fitted range;
and returns :class:`NormativeScores` (z-scores with intervals, ranked regions, extreme-value counts,
group deviations with Benjamini-Hochberg q-values, z-maps), written only once everything succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sobre.base import Progress, canonical_json, no_progress, sha256_bytes, sha256_file, write_atomic
from sobre.errors import CatalogError, ConfigError, InputError, Problem
from sobre.normative._config import NormativeConfig
from sobre.normative._measures import Atlas, measure_names, regional_measures
from sobre.normative._model import NormativeParams, Predictions, fit_arrays, nominal_rate, predict_arrays
from sobre.normative._stats import GroupDeviation, group_deviation

__all__ = ["NormativeModel", "NormativeScores", "SubjectData", "collect", "fit_normative", "load_normative",
           "list_normative", "normative_root", "code_version"]

MODEL_FORMAT = "sobre.normative/1"


def normative_root(ws) -> Path:
    """The folder of normative models in a workspace (``WS/normative``); the one place that names it."""
    layout = getattr(ws, "layout", None)
    return (layout.root if layout is not None else Path(ws)) / "normative"


def code_version() -> dict:
    """Sobre's version and, in a git checkout, the commit (read from ``.git``, no subprocess)."""
    import sobre

    out = {"sobre_version": sobre.__version__, "git_sha": None}
    git = Path(sobre.__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            p = git / ref
            if p.exists():
                out["git_sha"] = p.read_text().strip()
            elif (git / "packed-refs").exists():
                for line in (git / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        out["git_sha"] = line.split()[0]
        else:
            out["git_sha"] = head
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- collecting a dataset
@dataclass
class SubjectData:
    """One dataset version, per subject: covariates, group, regional measures and voxel maps."""

    dataset: dict
    subjects: list[str]
    age: np.ndarray
    sex: np.ndarray
    site: np.ndarray
    group: np.ndarray
    regions: np.ndarray | None
    measures: list[tuple[str, str, int]]
    maps: np.ndarray | None
    map_grid: dict | None
    map_index: np.ndarray | None
    series: list[dict]
    modalities: list[str]
    unknown_labels: list[int] = field(default_factory=list)
    absent: np.ndarray | None = None  # (M,) subjects in which a region is absent

    def __len__(self) -> int:
        return len(self.subjects)


def _value(rec: dict, key: str):
    v = rec.get(key)
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v


def collect(ds, config: NormativeConfig, atlas: Atlas | None, *, map_index: np.ndarray | None = None,
            map_grid: dict | None = None, progress: Progress = no_progress) -> SubjectData:
    """Read what the normative model needs from an opened dataset version (``ws.dataset(ref)``).

    Series are paired by ``config.data.subject``: exactly one image per subject (and one label map,
    one voxel map when asked for). ``map_index``: the voxels to keep (flat indices; a fitted model's
    mask); None keeps every voxel non-zero in the first subject's map (the fit narrows it later).
    """
    d = config.data
    ref = ds.ref
    recs = ds.records()
    roles = {"images": d.images, "labels": d.labels, "maps": d.maps}
    by_subject: dict[str, dict] = {}
    for r in recs:
        sid = r.get(d.subject)
        if sid is None:
            continue
        for role, rule in roles.items():
            if rule is not None and str(r.get(rule.field)) == rule.equals:
                slot = by_subject.setdefault(str(sid), {})
                if role in slot:
                    raise InputError(f"subject {sid} has several {role} in {ref} ({rule.field} == {rule.equals!r})",
                                     expected="one series per subject and role", found=f"{slot[role]['series_uid']} "
                                     f"and {r['series_uid']}", fix="narrow the cohort, then freeze a new version")
                slot[role] = r
    if not by_subject:
        raise InputError(f"no series of {ref} matches data.images ({d.images.field} == {d.images.equals!r})",
                         expected="the images of the normative model", found=f"{len(recs)} series",
                         fix="check the [data] rules, e.g. images = {field = \"protocol\", equals = \"T1w\"}")
    subjects = sorted(by_subject)
    for sid in subjects:
        for role, rule in roles.items():
            if rule is not None and role not in by_subject[sid]:
                raise InputError(f"subject {sid} of {ref} has no {role[:-1]} series ({rule.field} == {rule.equals!r})",
                                 expected=f"an image, a label map{' and a map' if d.maps else ''} per subject",
                                 fix="freeze a version holding every series of each subject")
    cov = config.covariates
    n = len(subjects)
    age = np.full(n, np.nan)
    sex = np.empty(n, object)
    site = np.empty(n, object)
    group = np.empty(n, object)
    gfield = config.scoring.group.field
    modalities = set()
    kinds = list(config.measures.regions) if d.labels is not None else []
    if kinds and atlas is None:
        raise ConfigError("regional measures need an atlas (the names of the labels)",
                          fix="pass atlas= (sobre.normative.Atlas.from_tsv('regions.tsv')) or --atlas")
    order = measure_names(atlas, kinds, config.measures.skip_labels) if kinds else []
    regions = np.full((n, len(order)), np.nan) if kinds else None
    unknown: set[int] = set()
    maps = None
    grid = map_grid
    idx = map_index
    series = []
    for i, sid in enumerate(subjects):
        slot = by_subject[sid]
        img_rec = slot["images"]
        a = _value(img_rec, cov.age)
        try:
            age[i] = float(a) if a is not None else np.nan
        except (TypeError, ValueError):
            raise InputError(f"covariate {cov.age!r} of subject {sid} in {ref} is not a number", found=repr(a)) from None
        s = _value(img_rec, cov.sex)
        sex[i] = "" if s is None else str(s)
        st = _value(img_rec, cov.site)
        site[i] = "" if st is None else str(st)
        g = _value(img_rec, gfield)
        group[i] = "" if g is None else str(g)
        modalities.add(str(img_rec.get("modality")))
        series.append({role: slot[role]["series_uid"] + (f"#{slot[role]['series_label']}"
                                                          if slot[role].get("series_label") else "")
                       for role in slot})
        where = f"{ref}, subject {sid}: "
        if kinds:
            lab_img = ds.image(series[-1]["labels"])
            image = ds.image(series[-1]["images"]) if "intensity" in kinds else None
            vals, info = regional_measures(image, lab_img, atlas, kinds, volume=config.measures.volume,
                                           intensity_reference=config.measures.intensity_reference,
                                           skip=config.measures.skip_labels, where=where)
            regions[i] = vals
            unknown.update(info["unknown_labels"])
        if d.maps is not None:
            m_img = ds.image(series[-1]["maps"])
            arr = np.asarray(m_img.array, np.float32)
            g_now = {"shape": list(arr.shape), "affine": np.round(np.asarray(m_img.affine), 4).tolist()}
            if grid is None:
                grid = g_now
            elif g_now["shape"] != list(grid["shape"]) or not np.allclose(g_now["affine"], grid["affine"], atol=1e-3):
                raise InputError(f"{where}its map is not in the template space of "
                                 f"{'the model' if map_grid is not None else 'the other subjects'}",
                                 expected=f"shape {tuple(grid['shape'])} with the template's affine",
                                 found=f"shape {tuple(arr.shape)}" + ("" if g_now["shape"] != list(grid["shape"])
                                                                      else " with another affine"),
                                 fix="register the maps to the template the normative model was fitted in")
            flat = arr.ravel()
            if idx is None:
                idx = np.flatnonzero(np.isfinite(flat) & (flat != 0))
            if maps is None:
                maps = np.empty((n, idx.size), np.float32)
            maps[i] = flat[idx]
        progress("reading subjects", i + 1, n)
    absent = None if regions is None else (~np.isfinite(regions)).sum(0)
    dataset = {"ref": ref, "content_hash": ds.content_hash, "simulated": bool(ds.simulated), "n_subjects": n}
    return SubjectData(dataset=dataset, subjects=subjects, age=age, sex=sex.astype(str), site=site.astype(str),
                       group=group.astype(str), regions=regions, measures=order, maps=maps, map_grid=grid,
                       map_index=idx, series=series, modalities=sorted(modalities), unknown_labels=sorted(unknown),
                       absent=absent)


# --------------------------------------------------------------------------- fitting
def _min_sample(config: NormativeConfig, sites: list[str]) -> int:
    n_par = config.model.age_df + 1 + len(sites)
    return max(config.model.min_subjects, 10 * n_par)


def fit_normative(ws, dataset: str, config: NormativeConfig | dict | None = None, *, atlas: Atlas | None = None,
                  progress: Progress = no_progress) -> NormativeModel:
    """Fit a normative model on a healthy dataset version and freeze it in the workspace.

    Raises
    ------
    InputError
        A version holding non-reference subjects (patients), a sample too small for the model (overall
        or per site), a subject without age, sex or site, a region absent in every subject: the message
        names the version and the variable; nothing is written.
    """
    cfg = config if isinstance(config, NormativeConfig) else NormativeConfig.model_validate(config or {})
    ds = ws.dataset(dataset)
    ref = ds.ref
    data = collect(ds, cfg, atlas, progress=progress)
    grp = cfg.scoring.group
    others = sorted({g for g in data.group if g and g != grp.reference})
    if others:
        n_other = int(np.isin(data.group, others).sum())
        raise InputError(f"{ref} is not a healthy reference: {n_other} subject(s) have {grp.field} = "
                         f"{', '.join(others)}", expected=f"only {grp.field} == {grp.reference!r} (or no value)",
                         fix=f"freeze a cohort of controls (where '{grp.field} == \"{grp.reference}\"') and fit on it")
    cov = cfg.covariates
    for name, bad in ((cov.age, ~np.isfinite(data.age)), (cov.sex, data.sex == ""), (cov.site, data.site == "")):
        if bad.any():
            who = ", ".join(np.asarray(data.subjects)[bad][:5])
            raise InputError(f"covariate {name!r} is missing for {int(bad.sum())} subject(s) of {ref} ({who})",
                             expected="a value for every reference subject", fix="complete the clinical table "
                             "(sobre ingest --clinical) and freeze a new version, or leave these subjects out")
    sites, counts = np.unique(data.site, return_counts=True)
    need = _min_sample(cfg, list(sites))
    if len(data) < need:
        raise InputError(f"the healthy cohort {ref} is too small for the normative model: {len(data)} subjects",
                         expected=f"at least {need} (model.min_subjects = {cfg.model.min_subjects}, and 10 per "
                                  f"parameter: {cfg.model.age_df} for age, 1 for sex, {len(sites)} for sites)",
                         found=f"{len(data)} subjects", fix="add reference subjects, or lower model.age_df")
    small = [f"{s} ({c})" for s, c in zip(sites, counts) if c < cfg.model.min_per_site]
    if small:
        raise InputError(f"site(s) of {ref} with too few reference subjects for their batch effect: "
                         f"{', '.join(small)}", expected=f"at least model.min_per_site = {cfg.model.min_per_site} "
                         f"per site ('{cov.site}')", fix="add subjects, merge the site with a like one, or leave it out")
    problems: list[Problem] = []
    keep = None
    if data.regions is not None:
        if data.unknown_labels:
            raise InputError(f"label maps of {ref} hold labels the atlas does not name: "
                             f"{', '.join(map(str, data.unknown_labels[:10]))}",
                             expected=f"labels of the atlas {atlas.title!r}", fix="pass the atlas of these label maps")
        keep = data.absent == 0
        gone = [f"{k}:{nm}" for (k, nm, _), a in zip(data.measures, data.absent) if a > 0]
        if not keep.any():
            raise InputError(f"no region of the atlas is present in every subject of {ref}",
                             expected="label maps of this atlas", fix="check the atlas and the label maps")
        if gone:
            problems.append(Problem("warning", f"{len(gone)} regional measure(s) left out: absent in some reference "
                                    f"subjects ({', '.join(gone[:6])}{'...' if len(gone) > 6 else ''})",
                                    code="regions-left-out"))
    m = cfg.model
    progress("fitting", 0, 2)
    p_reg = None
    measures = []
    if data.regions is not None:
        measures = [mm for mm, k in zip(data.measures, keep) if k]
        p_reg = fit_arrays(data.regions[:, keep], data.age, data.sex, data.site, age_df=m.age_df, scale=m.scale,
                           scale_prior_df=m.scale_prior_df)
    progress("fitting", 1, 2)
    p_map = None
    mask_index = None
    if data.maps is not None:
        valid = np.all(np.isfinite(data.maps) & (data.maps != 0), axis=0)
        mask_index = data.map_index[valid]
        p_map = fit_arrays(data.maps[:, valid].astype(np.float64), data.age, data.sex, data.site, age_df=m.age_df,
                           scale=m.scale, scale_prior_df=m.scale_prior_df)
    progress("fitting", 2, 2)
    return _freeze(ws, cfg, data, atlas, measures, p_reg, p_map, mask_index, problems)


def _freeze(ws, cfg, data: SubjectData, atlas, measures, p_reg, p_map, mask_index, problems) -> NormativeModel:
    arrays = {}
    record_params = {}
    for prefix, p in (("regions", p_reg), ("maps", p_map)):
        if p is None:
            continue
        for k, v in p.arrays().items():
            arrays[f"{prefix}__{k}"] = v
        record_params[prefix] = p.meta()
    if mask_index is not None:
        arrays["maps__mask_index"] = mask_index.astype(np.int64)
    root = normative_root(ws)
    identity = {"config": cfg.model_dump(mode="json"), "dataset": data.dataset["content_hash"],
                "atlas": atlas.digest if atlas is not None else None}
    model_id = f"{data.dataset['ref'].replace('@', '-')}-{sha256_bytes(canonical_json(identity))[:10]}"
    folder = root / model_id
    ages = data.age
    record = {
        "format": MODEL_FORMAT, "model_id": model_id, "kind": "normative",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": data.dataset, "training_subjects": list(data.subjects),
        "config": cfg.model_dump(mode="json"), "code": code_version(), "seed": None,
        "method": "empirical-Bayes hierarchical linear model: natural-spline age + sex, site random intercepts "
                  "(DerSimonian-Laird, BLUP) and moderated site variances; Student-t predictive z (docs/normative.md)",
        "modalities": data.modalities, "atlas": atlas.to_dict() if (atlas is not None and measures) else None,
        "measures": [{"kind": k, "region": nm, "label": lab} for k, nm, lab in measures],
        "maps": None if p_map is None else {"grid": data.map_grid, "n_voxels": int(mask_index.size)},
        "covariates": {"age_range": [float(np.min(ages)), float(np.max(ages))],
                       "sex_levels": sorted(set(data.sex.tolist())),
                       "sites": {s: int(c) for s, c in zip(*np.unique(data.site, return_counts=True))}},
        "params": record_params,
        "fit_summary": _fit_summary(p_reg, p_map),
        "problems": [p.to_dict() if hasattr(p, "to_dict") else str(p) for p in problems],
        "simulated": bool(data.dataset.get("simulated")),
    }
    tmp = Path(tempfile.mkdtemp(prefix=".fit-", dir=_ensure(root)))
    try:
        np.savez(tmp / "params.npz", **arrays)
        record["params_sha256"] = sha256_file(tmp / "params.npz")
        write_atomic(tmp / "model.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
        if folder.exists():  # the same config on the same data and atlas: the same model
            old = json.loads((folder / "model.json").read_text())
            if old.get("params_sha256") != record["params_sha256"]:
                raise CatalogError(f"normative model {model_id} exists with other parameters", path=folder,
                                   fix="a different code version fitted it; delete the folder to refit")
            shutil.rmtree(tmp)
            return load_normative(ws, model_id)
        for f in tmp.iterdir():
            os.chmod(f, 0o444)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_normative(ws, model_id)


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _fit_summary(p_reg: NormativeParams | None, p_map: NormativeParams | None) -> dict:
    out = {}
    for name, p in (("regions", p_reg), ("maps", p_map)):
        if p is None:
            continue
        sd_site = np.sqrt(p.tau2)
        sd_res = np.sqrt((p.n_site[:, None] * p.sigma2_site).sum(0) / p.n_site.sum())
        out[name] = {"measures": p.n_measures, "df_resid": p.df_resid,
                     "median_site_sd_over_residual_sd": float(np.median(sd_site / sd_res)),
                     "residual_skew_abs_median": float(np.median(np.abs(p.residual_skew))),
                     "residual_excess_kurtosis_median": float(np.median(p.residual_kurtosis))}
    return out


# --------------------------------------------------------------------------- the model
class NormativeModel:
    """A frozen normative model (``load_normative(ws, MODEL_ID)``); :meth:`score` applies it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.record = json.loads((self.folder / "model.json").read_text())
        if self.record.get("format") != MODEL_FORMAT:
            raise InputError("not a normative model", path=self.folder / "model.json", expected=MODEL_FORMAT,
                             found=str(self.record.get("format")))
        digest = sha256_file(self.folder / "params.npz")
        if digest != self.record.get("params_sha256"):
            raise InputError("the parameters of the normative model changed since it was frozen",
                             path=self.folder / "params.npz", expected=f"sha256 {self.record.get('params_sha256')}",
                             found=f"sha256 {digest}", fix="restore the folder; models are immutable")
        with np.load(self.folder / "params.npz") as z:
            arrays = {k: z[k] for k in z.files}
        self.config = NormativeConfig.model_validate(self.record["config"])
        self.atlas = Atlas.from_dict(self.record["atlas"]) if self.record.get("atlas") else None
        self.measures = [(m["kind"], m["region"], int(m["label"])) for m in self.record["measures"]]
        self.regions = self.maps = None
        for prefix in ("regions", "maps"):
            if prefix in self.record["params"]:
                sub = {k.split("__", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "__")}
                setattr(self, prefix, NormativeParams.from_saved(sub, self.record["params"][prefix]))
        self.map_index = arrays.get("maps__mask_index")

    @property
    def model_id(self) -> str:
        return self.record["model_id"]

    def __repr__(self) -> str:
        return (f"NormativeModel({self.model_id!r}, {len(self.measures)} regional measures, "
                f"{0 if self.map_index is None else self.map_index.size} voxels, {self.record['dataset']['ref']})")

    def score(self, ws, dataset: str, *, progress: Progress = no_progress) -> NormativeScores:
        """z-scores of every subject of ``dataset`` against the norm, and group deviations (nothing written)."""
        cfg = self.config
        ds = ws.dataset(dataset)
        ref = ds.ref
        trained = self.record["dataset"]
        if ds.content_hash == trained["content_hash"]:
            raise InputError(f"{ref} is the version the normative model {self.model_id} was fitted on",
                             expected="subjects the model has not seen", fix="score another dataset version")
        grid = self.record["maps"]["grid"] if self.record.get("maps") else None
        data = collect(ds, cfg, self.atlas, map_index=self.map_index, map_grid=grid, progress=progress)
        seen = sorted(set(data.subjects) & set(self.record["training_subjects"]))
        if seen:
            raise InputError(f"{len(seen)} subject(s) of {ref} were in the normative sample of {self.model_id} "
                             f"({trained['ref']}): {', '.join(seen[:5])}",
                             expected="no subject of the training version (its z-scores would be biased towards 0)",
                             fix="freeze a version without them, e.g. where 'not (subject_id in [...])'")
        if set(data.modalities) - set(self.record["modalities"]):
            raise InputError(f"the images of {ref} are {', '.join(data.modalities)}; the normative model "
                             f"{self.model_id} was fitted on {', '.join(self.record['modalities'])}",
                             expected="the modality the model was fitted on", fix="score images of that modality")
        if data.unknown_labels:
            raise InputError(f"the label maps of {ref} hold labels the atlas of {self.model_id} does not have: "
                             f"{', '.join(map(str, data.unknown_labels[:10]))}",
                             expected=f"label maps of the atlas {self.atlas.title!r} "
                                      f"({len(self.atlas.names)} labels, digest {self.atlas.digest[:12]})",
                             fix="another atlas needs another normative model")
        if data.regions is not None and len(self.measures):
            idx = [data.measures.index(m) for m in self.measures]
            data.regions = data.regions[:, idx]
            data.measures = list(self.measures)
            absent_all = np.mean(~np.isfinite(data.regions), axis=0) > 0.5
            if absent_all.mean() > 0.3:
                raise InputError(f"the label maps of {ref} miss {int(absent_all.sum())} of the "
                                 f"{len(self.measures)} regions of the atlas of {self.model_id} in most subjects",
                                 expected=f"label maps of the atlas {self.atlas.title!r}",
                                 fix="another atlas needs another normative model")
        preds_r = preds_m = None
        if self.regions is not None and data.regions is not None:
            preds_r = predict_arrays(self.regions, data.age, data.sex, data.site)
        if self.maps is not None and data.maps is not None:
            preds_m = predict_arrays(self.maps, data.age, data.sex, data.site)
        pred = preds_r or preds_m
        unseen = sorted(set(data.site[~pred.seen_site]))
        if unseen and cfg.scoring.unseen_sites == "refuse":
            raise InputError(f"site(s) of {ref} not in the normative sample of {self.model_id}: {', '.join(unseen)}",
                             expected=", ".join(self.record["covariates"]["sites"]),
                             fix="fit a model with reference subjects of these sites")
        flagged = [i for i, r in enumerate(pred.extrapolated) if r]
        if flagged and cfg.scoring.extrapolation == "refuse":
            i = flagged[0]
            raise InputError(f"{len(flagged)} subject(s) of {ref} lie outside the normative sample of "
                             f"{self.model_id}: {data.subjects[i]}: {pred.extrapolated[i]}",
                             expected="covariates within the fitted range", fix="set scoring.extrapolation = "
                             "\"flag\" to score them with a flag, or fit on a sample covering them")
        return NormativeScores.build(self, data, preds_r, preds_m)


def load_normative(ws, model: str | Path) -> NormativeModel:
    """A frozen model by id (in ``WS/normative``) or folder; its parameters' hash is checked."""
    p = Path(model)
    folder = p if (p / "model.json").exists() else normative_root(ws) / str(model)
    if not (folder / "model.json").exists():
        have = ", ".join(m["model_id"] for m in list_normative(ws)) or "none"
        raise CatalogError(f"no normative model {model!r}", path=folder, expected=f"one of: {have}",
                           fix="fit one with `sobre normative fit DATASET@V`")
    return NormativeModel(folder)


def list_normative(ws) -> list[dict]:
    """The models of a workspace (id, dataset, measures, created)."""
    root = normative_root(ws)
    out = []
    if root.exists():
        for f in sorted(root.glob("*/model.json")):
            try:
                r = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            out.append({"model_id": r.get("model_id"), "dataset": r.get("dataset", {}).get("ref"),
                        "n_subjects": len(r.get("training_subjects", [])), "measures": len(r.get("measures", [])),
                        "voxels": (r.get("maps") or {}).get("n_voxels", 0), "created_at": r.get("created_at")})
    return out


# --------------------------------------------------------------------------- scores
@dataclass
class NormativeScores:
    """Deviations of one dataset version from a normative model.

    Attributes
    ----------
    region_z, region_low, region_high : (N, M) z-scores of the regional measures and their intervals.
    region_deviation : (N, M) ``exp(y - expected) - 1`` (for volumes: the relative deviation).
    map_z : (N, V) voxel-wise z in the model's mask (or None).
    subjects, site, group, age, sex : per subject; ``flags`` a reason per subject ("" when none),
    ``seen_site`` whether its site was in the normative sample.
    patients : mask of subjects in the patient group (not the reference group, scorable, not flagged).
    group_regions, group_maps : :class:`GroupDeviation` of the patients (vs the norm and vs the
    dataset's own reference subjects).
    """

    model: NormativeModel
    data: SubjectData
    region_z: np.ndarray | None
    region_low: np.ndarray | None
    region_high: np.ndarray | None
    region_deviation: np.ndarray | None
    map_z: np.ndarray | None
    flags: list[str]
    seen_site: np.ndarray
    patients: np.ndarray
    controls: np.ndarray
    group_regions: GroupDeviation | None
    group_maps: GroupDeviation | None
    problems: list[Problem]

    @classmethod
    def build(cls, model: NormativeModel, data: SubjectData, pr: Predictions | None,
              pm: Predictions | None) -> NormativeScores:
        cfg = model.config
        zr = lo = hi = dev = zm = None
        if pr is not None:
            zr = pr.z(data.regions)
            lo, hi = pr.z_interval(zr)
            dev = np.expm1(data.regions - pr.mean)
        if pm is not None:
            zm = pm.z(data.maps.astype(np.float64)).astype(np.float32)
        pred = pr or pm
        flags = []
        for i, r in enumerate(pred.extrapolated):
            f = [r] if r else []
            if not pred.seen_site[i]:
                f.append(f"site {str(data.site[i])!r} not in the normative sample (scored with the between-site variance)")
            flags.append("; ".join(f))
        ref_group = cfg.scoring.group.reference
        clean = np.array([not pred.extrapolated[i] for i in range(len(flags))]) & pred.scorable
        patients = clean & (data.group != ref_group) & (data.group != "")
        controls = clean & (data.group == ref_group)
        problems = []
        n_flag = sum(1 for r in pred.extrapolated if r)
        if n_flag:
            problems.append(Problem("warning", f"{n_flag} subject(s) of {data.dataset['ref']} outside the fitted "
                                    "covariate range or with a missing covariate: scored with a flag, left out of "
                                    "group tests", code="extrapolation"))
        th, alpha = cfg.scoring.threshold, cfg.scoring.fdr
        gr = gm = None
        if zr is not None and patients.sum() >= 2:
            gr = group_deviation(zr[patients], controls=zr[controls] if controls.sum() >= 2 else None, alpha=alpha,
                                 threshold=th)
        if zm is not None and patients.sum() >= 2:
            gm = group_deviation(zm[patients], controls=zm[controls] if controls.sum() >= 2 else None, alpha=alpha,
                                 threshold=th)
        return cls(model, data, zr, lo, hi, dev, zm, flags, pred.seen_site, patients, controls, gr, gm, problems)

    # ------------------------------------------------------------------ tables
    @property
    def subjects(self) -> list[str]:
        return self.data.subjects

    def ranked_regions(self, subject: str | int, top: int | None = None) -> list[dict]:
        """One subject's regional deviations, largest |z| first."""
        i = self.subjects.index(subject) if isinstance(subject, str) else int(subject)
        rows = []
        for j, (kind, name, lab) in enumerate(self.data.measures):
            z = self.region_z[i, j]
            if not np.isfinite(z):
                continue
            rows.append({"subject": self.subjects[i], "kind": kind, "region": name, "label": lab,
                         "z": float(z), "z_low": float(self.region_low[i, j]), "z_high": float(self.region_high[i, j]),
                         "deviation_percent": float(100 * self.region_deviation[i, j]),
                         "extreme": bool(abs(z) > self.model.config.scoring.threshold)})
        rows.sort(key=lambda r: -abs(r["z"]))
        for k, r in enumerate(rows, start=1):
            r["rank"] = k
        return rows[:top] if top else rows

    def subject_table(self) -> list[dict]:
        """Per subject: covariates, group, extreme-value counts (observed and expected), flags."""
        th = self.model.config.scoring.threshold
        out = []
        for i, sid in enumerate(self.subjects):
            row = {"subject": sid, "site": self.data.site[i], "age": float(self.data.age[i]), "sex": self.data.sex[i],
                   "group": self.data.group[i], "seen_site": bool(self.seen_site[i]), "flags": self.flags[i]}
            for name, z in (("regions", self.region_z), ("voxels", self.map_z)):
                if z is None:
                    continue
                zi = z[i]
                ok = np.isfinite(zi)
                row[f"{name}_extreme"] = int((np.abs(zi[ok]) > th).sum())
                row[f"{name}_extreme_low"] = int((zi[ok] < -th).sum())
                row[f"{name}_extreme_high"] = int((zi[ok] > th).sum())
                row[f"{name}_expected"] = round(float(ok.sum() * nominal_rate(th)), 3)
            out.append(row)
        return out

    def group_table(self) -> list[dict]:
        """Per regional measure: how the patients deviate (sorted by p), with BH q-values."""
        g = self.group_regions
        if g is None:
            return []
        rows = []
        for j, (kind, name, lab) in enumerate(self.data.measures):
            r = {"kind": kind, "region": name, "label": lab, "n": int(g.n[j]), "mean_z": float(g.mean_z[j]),
                 "ci_low": float(g.ci_low[j]), "ci_high": float(g.ci_high[j]), "t": float(g.t[j]), "p": float(g.p[j]),
                 "q": float(g.q[j]), "significant": bool(g.significant[j]), "share_extreme": float(g.share_extreme[j])}
            if g.controls_mean_z is not None:
                r.update({"controls_mean_z": float(g.controls_mean_z[j]), "hedges_g": float(g.hedges_g[j]),
                          "p_vs_controls": float(g.p_vs_controls[j]), "q_vs_controls": float(g.q_vs_controls[j])})
            rows.append(r)
        rows.sort(key=lambda r: (r["p"] if np.isfinite(r["p"]) else 2.0))
        return rows

    def summary(self) -> dict:
        th = self.model.config.scoring.threshold
        out = {"model": self.model.model_id, "dataset": self.data.dataset, "subjects": len(self.subjects),
               "patients": int(self.patients.sum()), "controls": int(self.controls.sum()),
               "flagged": sum(1 for f in self.flags if f), "threshold": th, "nominal_rate": nominal_rate(th),
               "simulated": bool(self.data.dataset.get("simulated")) or bool(self.model.record.get("simulated"))}
        if self.region_z is not None and self.controls.any():
            zc = self.region_z[self.controls]
            out["controls_extreme_rate"] = float(np.mean(np.abs(zc[np.isfinite(zc)]) > th))
        if self.group_regions is not None:
            out["significant_regions"] = int(self.group_regions.significant.sum())
        if self.group_maps is not None:
            out["significant_voxels"] = int(self.group_maps.significant.sum())
        return out

    # ------------------------------------------------------------------ writing
    def write(self, ws, out: str | Path | None = None, *, images: bool = True,
              progress: Progress = no_progress) -> Path:
        """Write the tables, z-maps and ``scores.json`` into ``out`` (default: the model's ``scores/``).

        Everything is written into a temporary folder beside ``out`` and renamed at the end: a failure
        leaves nothing behind.
        """
        from sobre.image import Image, save

        ds_ref = self.data.dataset["ref"]
        target = Path(out) if out else self.model.folder / "scores" / ds_ref.replace("@", "-")
        if target.exists() and any(target.iterdir()):
            raise InputError("the scores folder is not empty", path=target, expected="a new or empty folder",
                             fix="choose another --out, or remove it")
        parent = _ensure(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=".scores-", dir=parent))
        try:
            _write_tsv(tmp / "subjects.tsv", self.subject_table())
            if self.region_z is not None:
                rows = []
                for i in range(len(self.subjects)):
                    rows.extend(self.ranked_regions(i))
                _write_tsv(tmp / "regions.tsv", rows)
                _write_tsv(tmp / "group.tsv", self.group_table())
            ds = ws.dataset(ds_ref) if images else None
            n = len(self.subjects)
            for i, sid in enumerate(self.subjects if images else []):
                if self.region_z is not None:
                    lab_img = ds.image(self.data.series[i]["labels"])
                    lab = np.asarray(lab_img.array).astype(np.int64)
                    for kind in sorted({k for k, _, _ in self.data.measures}):
                        lut = np.zeros(int(lab.max()) + 1, np.float32)
                        for j, (k, _, label) in enumerate(self.data.measures):
                            if k == kind and label < lut.size and np.isfinite(self.region_z[i, j]):
                                lut[label] = self.region_z[i, j]
                        save(Image(lut[lab], lab_img.affine, metadata={"content": f"{kind} z-score per region"}),
                             tmp / "maps" / f"{sid}_desc-{kind}_zmap.nii.gz")
                if self.map_z is not None:
                    save(self._template_image(self.map_z[i], "voxel z-score"),
                         tmp / "maps" / f"{sid}_space-template_zmap.nii.gz")
                progress("writing maps", i + 1, n)
            if self.group_maps is not None and images:
                g = self.group_maps
                for name, arr in (("meanz", g.mean_z), ("t", g.t), ("q", g.q)):
                    save(self._template_image(arr, f"patients: {name}"), tmp / f"group_space-template_{name}.nii.gz")
            summary = self.summary()
            summary.update({"model_record": {k: self.model.record[k] for k in ("model_id", "dataset", "code", "config")},
                            "code": code_version(),
                            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "problems": [str(p) for p in self.problems]})
            write_atomic(tmp / "scores.json", json.dumps(summary, indent=1, default=_json_default) + "\n")
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _template_image(self, values: np.ndarray, what: str):
        from sobre.image import Image

        grid = self.model.record["maps"]["grid"]
        full = np.zeros(int(np.prod(grid["shape"])), np.float32)
        full[self.model.map_index] = np.nan_to_num(np.asarray(values, np.float32))
        return Image(full.reshape(grid["shape"]), np.asarray(grid["affine"], float), metadata={"content": what})


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _write_tsv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    buf = io.StringIO()
    if rows:
        cols = list(rows[0])
        for r in rows[1:]:
            for c in r:
                if c not in cols:
                    cols.append(c)
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in cols])
    write_atomic(path, buf.getvalue())


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.6g}"
    return str(v)

"""Benchmark: do normative deviations recover the simulated disease? (SIMULATED data)

Run ``.venv/bin/python bench/bench_normative.py`` from the repository root (``--quick`` for a smoke run).
Results go to ``bench/out/normative/normative.json`` (and are printed).

Per repeat (seed ``100 + r``), on one set of sites imaged identically in every cohort (``fixed_bias``):

* a **healthy reference** (``--reference``, default 500) and **held-out controls** (``--heldout``, 150):
  one controls-only cohort, split by subject;
* **patients** (``--patients``, 300): preset ``three-subtypes`` at ``--strength`` (default 2.0; see
  docs/normative.md for 1.0).

Measures per subject (data preparation, cached in ``bench/out/normative/``, not timed): log regional
volume fractions and log regional intensities from the simulator's label map on the subject's own image
grid (:func:`sobre.normative.regional_measures`, the code ``sobre normative`` runs), and the template-space
log-Jacobian map. The timed part fits the normative model on the reference only and scores the
held-out controls and the patients.

Figures (each repeat, then mean, SD, min-max over repeats):

1. **Group level**: AUC over regions of the patients' mean |z| (volumes) for "affected vs unaffected"
   regions, per true subtype (affected = the subtype's regions) and averaged; also with every patient
   together (affected = any subtype's regions). Target >= 0.9.
2. **Per patient**: truly affected regions (of the patient's subtype) among its 5 largest |z| (volumes).
   Target >= 3 on average.
3. **False positives**: share of |z| > 2.6 in the held-out controls, every measure (volumes, intensities,
   voxels). Target <= 2 x the nominal 0.93 %.
4. **Voxels**: AUC of the patients' mean |z| per voxel for voxels inside vs outside the subtype's regions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "normative"
PREP_VERSION = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ data preparation
def _chunk(payload):
    """Worker: simulate subjects ``indices`` of one cohort; return their measures (no file written)."""
    cfg_dict, indices, kinds = payload
    from sobre.normative import Atlas, regional_measures
    from sobre.sim import BrainCohortConfig, BrainSimulator

    cfg = BrainCohortConfig.from_dict(cfg_dict)
    sim = BrainSimulator(cfg)
    atlas = Atlas.from_names(sim.template.names, title="sobre.sim")
    rows = []
    for i in indices:
        img, meta, truth = sim.subject(int(i))
        vals, _ = regional_measures(img, truth.labels, atlas, kinds)
        tmap = np.asarray(truth.template_map.array, np.float32).ravel()
        rows.append({"i": int(i), "age": float(meta["age"]), "sex": meta["sex"], "site": meta["site"],
                     "diagnosis": meta["diagnosis"], "subtype": truth.subtype or "", "strength": meta["disease_strength"],
                     "regions": vals, "map": tmap})
    return rows


def simulate(cfg, workers: int, kinds: list[str]) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor

    from sobre.sim import BrainSimulator

    BrainSimulator(cfg).calibration  # noqa: B018 - calibrate (and cache) once before the workers start
    n = cfg.subjects
    chunks = [list(range(w, n, workers)) for w in range(workers)]
    payloads = [(cfg.to_dict(), c, kinds) for c in chunks if c]
    if workers <= 1:
        rows = [r for p in payloads for r in _chunk(p)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = [r for part in pool.map(_chunk, payloads) for r in part]
    return sorted(rows, key=lambda r: r["i"])


def _cached(path: Path, make) -> dict:
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    data = make()
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return data


def prepare(seed: int, args) -> dict:
    """Simulated measures of one repeat (cached): reference + held-out controls, patients, the truth.

    Controls and patients are cached apart (the controls do not depend on the disease strength)."""
    from sobre.normative import Atlas, measure_names
    from sobre.sim import BrainCohortConfig, BrainSimulator, DiseaseModel, default_sites

    sites = [s.to_dict() for s in default_sites(args.sites, seed, args.resolution, fixed_bias=True)]
    base = {"sites": sites, "resolution": args.resolution, "template_maps": True, "seed": seed}
    dis = DiseaseModel.preset("three-subtypes", strength=args.strength).to_dict()
    ctl_cfg = BrainCohortConfig.from_dict({**base, "subjects": args.reference + args.heldout, "patient_fraction": 0.0,
                                           "id_prefix": "C"})
    pat_cfg = BrainCohortConfig.from_dict({**base, "seed": seed + 50_000, "subjects": args.patients, "disease": dis,
                                           "patient_fraction": 1.0, "id_prefix": "P", "substrate": args.substrate})
    kinds = ["volume", "intensity"]
    sim = BrainSimulator(pat_cfg)
    atlas = Atlas.from_names(sim.template.names, title="sobre.sim")
    measures = measure_names(atlas, kinds)
    common = f"v{PREP_VERSION}-s{seed}-k{args.sites}-res{args.resolution}"

    def controls():
        t0 = time.perf_counter()
        log(f"seed {seed}: simulating {ctl_cfg.subjects} controls ({args.workers} processes) ...")
        rows = simulate(ctl_cfg, args.workers, kinds)
        nz = np.flatnonzero(np.all(np.stack([r["map"] for r in rows[: min(50, len(rows))]]) != 0, axis=0))
        return {"c_age": _stack(rows, "age"), "c_sex": _stack(rows, "sex", str), "c_site": _stack(rows, "site", str),
                "c_regions": np.stack([r["regions"] for r in rows]), "c_map": np.stack([r["map"][nz] for r in rows]),
                "map_index": nz, "c_prep_seconds": np.float64(time.perf_counter() - t0)}

    c = _cached(OUT / f"controls-{common}-n{ctl_cfg.subjects}.npz", controls)
    nz = c["map_index"]

    def patients():
        t0 = time.perf_counter()
        log(f"seed {seed}: simulating {pat_cfg.subjects} patients (strength {args.strength}, {args.substrate}) ...")
        rows = simulate(pat_cfg, args.workers, kinds)
        effect = dict(sim.subtype_patterns)
        return {"p_age": _stack(rows, "age"), "p_sex": _stack(rows, "sex", str), "p_site": _stack(rows, "site", str),
                "p_subtype": _stack(rows, "subtype", str), "p_strength": _stack(rows, "strength"),
                "p_regions": np.stack([r["regions"] for r in rows]), "p_map": np.stack([r["map"][nz] for r in rows]),
                "subtype_names": np.array(list(effect)), "subtype_effects": np.stack([effect[k] for k in effect]),
                "p_prep_seconds": np.float64(time.perf_counter() - t0)}

    p = _cached(OUT / f"patients-{common}-n{pat_cfg.subjects}-st{args.strength}-{args.substrate}.npz", patients)
    data = {**c, **p}
    data["labels_of_measures"] = np.array([lab for _, _, lab in measures])
    data["template_labels_at_nodes"] = _labels_at_nodes(sim)
    data["prep_seconds"] = float(c["c_prep_seconds"] + p["p_prep_seconds"])
    data["measures"] = measures
    return data


def _stack(rows, key, dtype=float):
    return np.array([r[key] for r in rows], dtype=dtype)


def _labels_at_nodes(sim) -> np.ndarray:
    """Colin27's label at every field-grid node (flat), to know which voxels a subtype affects."""
    from sobre.sim import load_brain_template

    colin = load_brain_template()
    fg = sim.core.grid
    idx = np.rint(fg.node_coords()).astype(int)
    ok = np.all([(idx[a] >= 0) & (idx[a] < colin.shape[a]) for a in range(3)], axis=0)
    lab = np.zeros(fg.shape, np.int16)
    lab[ok] = colin.labels[idx[0][ok], idx[1][ok], idx[2][ok]]
    return lab.ravel()


# ------------------------------------------------------------------------------------ the figures
def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count one half)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    allv = np.concatenate([pos, neg])
    from scipy.stats import rankdata

    r = rankdata(allv)
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def evaluate(data: dict, args) -> dict:
    from sobre.normative import fit_arrays, nominal_rate, predict_arrays

    t0 = time.perf_counter()
    n_ref = args.reference
    measures = data["measures"]
    kinds = np.array([k for k, _, _ in measures])
    labels = data["labels_of_measures"]
    ref = slice(0, n_ref)
    held = slice(n_ref, None)
    c_age, c_sex, c_site = data["c_age"], data["c_sex"], data["c_site"]
    yr = data["c_regions"]
    keep = np.all(np.isfinite(yr[ref]), axis=0)  # regions present in every reference subject
    p_r = fit_arrays(yr[ref][:, keep], c_age[ref], c_sex[ref], c_site[ref], scale=args.scale)
    p_m = fit_arrays(data["c_map"][ref].astype(float), c_age[ref], c_sex[ref], c_site[ref], scale=args.scale)
    fit_s = time.perf_counter() - t0
    # held-out controls: every measure
    pc = predict_arrays(p_r, c_age[held], c_sex[held], c_site[held])
    zc = pc.z(yr[held][:, keep])
    pcm = predict_arrays(p_m, c_age[held], c_sex[held], c_site[held])
    zcm = pcm.z(data["c_map"][held].astype(float))
    th = 2.6
    ok_c = np.array([not r for r in pc.extrapolated])
    fpr = {
        "volumes": float(np.mean(np.abs(zc[ok_c][:, kinds[keep] == "volume"]) > th)),
        "intensities": float(np.mean(np.abs(zc[ok_c][:, kinds[keep] == "intensity"]) > th)),
        "voxels": float(np.mean(np.abs(zcm[ok_c]) > th)),
        "regions_all": float(np.mean(np.abs(zc[ok_c]) > th)),
        "nominal": nominal_rate(th), "n_controls": int(ok_c.sum()),
        "flagged_extrapolation": int((~ok_c).sum()),
    }
    # patients
    pp = predict_arrays(p_r, data["p_age"], data["p_sex"], data["p_site"])
    zp = pp.z(data["p_regions"][:, keep])
    ok_p = np.array([not r for r in pp.extrapolated]) & np.all(np.isfinite(zp), axis=1)
    ppm = predict_arrays(p_m, data["p_age"], data["p_sex"], data["p_site"])
    zpm = ppm.z(data["p_map"].astype(float))
    names = [str(s) for s in data["subtype_names"]]
    effects = data["subtype_effects"]  # (S, 120) log effect per label at strength 1
    vol = kinds[keep] == "volume"
    vol_labels = labels[keep][vol]
    zv = zp[:, vol]
    subtype = data["p_subtype"]
    per_subtype = {}
    top5 = []
    node_lab = data["template_labels_at_nodes"][data["map_index"]]
    for s, name in enumerate(names):
        affected = np.abs(effects[s][vol_labels]) > 0
        members = ok_p & (subtype == name)
        mean_abs = np.mean(np.abs(zv[members]), axis=0)
        a = auc(mean_abs[affected], mean_abs[~affected])
        vox_aff = np.abs(effects[s][node_lab]) > 0
        mvox = np.mean(np.abs(zpm[members]), axis=0)
        per_subtype[name] = {"patients": int(members.sum()), "affected_regions": int(affected.sum()),
                             "group_auc": a, "voxel_auc": auc(mvox[vox_aff], mvox[~vox_aff]),
                             "voxels_affected": int(vox_aff.sum())}
        za, zu = zv[members][:, affected], zv[members][:, ~affected]
        med = float(np.median(np.abs(za)))
        per_subtype[name]["affected_median_z"] = float(np.median(za))
        # how many unaffected regions of a patient out-rank the median affected one (what limits the top 5)
        per_subtype[name]["unaffected_above_median_affected"] = float(np.mean(np.sum(np.abs(zu) > med, axis=1)))
        for i in np.flatnonzero(members):
            order = np.argsort(-np.abs(zv[i]))[:5]
            top5.append(int(affected[order].sum()))
            per_subtype[name].setdefault("_top5", []).append(top5[-1])
    for v in per_subtype.values():
        v["top5_mean"] = float(np.mean(v.pop("_top5")))
    any_aff = np.any(np.abs(effects[:, vol_labels]) > 0, axis=0)
    mean_all = np.mean(np.abs(zv[ok_p]), axis=0)
    score_s = time.perf_counter() - t0
    return {
        "group_auc_mean_over_subtypes": float(np.mean([v["group_auc"] for v in per_subtype.values()])),
        "group_auc_all_patients": auc(mean_all[any_aff], mean_all[~any_aff]),
        "top5_affected_mean": float(np.mean(top5)), "per_subtype": per_subtype, "false_positives": fpr,
        "voxel_auc_mean_over_subtypes": float(np.mean([v["voxel_auc"] for v in per_subtype.values()])),
        "n_reference": n_ref, "n_heldout": int(len(c_age) - n_ref), "n_patients": int(ok_p.sum()),
        "measures": int(keep.sum()), "voxels": int(data["c_map"].shape[1]),
        "fit_seconds": round(fit_s, 2), "fit_and_score_seconds": round(score_s, 2),
        "prep_seconds": float(data["prep_seconds"]),
    }


def cohort_args(ap: argparse.ArgumentParser) -> None:
    """The cohort settings shared with bench_subtypes.py (same settings, same cached data)."""
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", type=int, default=500)
    ap.add_argument("--heldout", type=int, default=150)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--substrate", default="colin27", help="anatomy of the patients (itk-head: anatomy shift)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small smoke run (1 repeat, 120/40/60 subjects)")


def quick(args) -> None:
    if args.quick:
        args.repeats, args.reference, args.heldout, args.patients = 1, 120, 40, 60


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cohort_args(ap)
    ap.add_argument("--scale", default="site", choices=["site", "site+age"])
    ap.add_argument("--out", type=Path, default=OUT / "normative.json")
    args = ap.parse_args(argv)
    quick(args)
    t_all = time.perf_counter()
    results = []
    timed = 0.0
    for r in range(args.repeats):
        data = prepare(100 + r, args)
        t0 = time.perf_counter()
        res = evaluate(data, args)
        timed += time.perf_counter() - t0
        res["seed"] = 100 + r
        results.append(res)
        log(f"repeat {r}: group AUC {res['group_auc_mean_over_subtypes']:.3f} (all patients "
            f"{res['group_auc_all_patients']:.3f}), top-5 affected {res['top5_affected_mean']:.2f}, controls |z|>2.6 "
            f"volumes {100 * res['false_positives']['volumes']:.2f} %, intensities "
            f"{100 * res['false_positives']['intensities']:.2f} %, voxels {100 * res['false_positives']['voxels']:.2f} %"
            f" (nominal {100 * res['false_positives']['nominal']:.2f} %), voxel AUC "
            f"{res['voxel_auc_mean_over_subtypes']:.3f}")

    def agg(get):
        v = np.array([get(x) for x in results], float)
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}

    summary = {
        "simulated": True, "repeats": args.repeats, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                                 for k, v in vars(args).items()},
        "group_auc": agg(lambda x: x["group_auc_mean_over_subtypes"]),
        "group_auc_all_patients": agg(lambda x: x["group_auc_all_patients"]),
        "top5_affected": agg(lambda x: x["top5_affected_mean"]),
        "false_positive_rate_all_regional": agg(lambda x: x["false_positives"]["regions_all"]),
        "false_positive_rate_volumes": agg(lambda x: x["false_positives"]["volumes"]),
        "false_positive_rate_intensities": agg(lambda x: x["false_positives"]["intensities"]),
        "false_positive_rate_voxels": agg(lambda x: x["false_positives"]["voxels"]),
        "voxel_auc": agg(lambda x: x["voxel_auc_mean_over_subtypes"]),
        "nominal_rate": results[0]["false_positives"]["nominal"],
        "timed_seconds": round(timed, 1), "wall_seconds_with_preparation": round(time.perf_counter() - t_all, 1),
        "load_average": os.getloadavg(), "per_repeat": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_repeat"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: subtype discovery from normative deviations (SIMULATED data).

Run ``.venv/bin/python bench/bench_subtypes.py`` from the repository root (``--quick`` for a smoke run).
It uses the cohorts of ``bench_normative.py`` (same seeds and sizes, cached in ``bench/out/normative/``;
simulated on first use): per repeat a normative model is fitted on the healthy reference, the patients
(preset ``three-subtypes``) are scored, and their regional volume z-scores are clustered.

* **Discovery / hold-out**: 70 % of the patients (seeded) choose k (2-6) by stability (consensus
  clustering, 50 subsamples of 80 %, against a one-cluster Gaussian null) and are clustered; the other
  30 % are assigned to the nearest centroid afterwards (they reach no clustering).
* **Figures**: ARI of the clusters with the true subtypes (discovery and held-out; target >= 0.6), and
  how often the stability criterion picks the true k = 3 (target: most repeats).
* **Site check**: the same discovery on the patients' raw regional intensities (standardised, no
  site model) and on their intensity z-scores: does the site flag fire where the sites drive the
  clusters, and stay quiet after the normative model's site terms?
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
sys.path.insert(0, str(HERE))

import bench_normative as bn  # noqa: E402 - the shared cohorts


def run_repeat(data: dict, args, seed: int) -> dict:
    from sobre.normative import SubtypeConfig, adjusted_rand_index, discover_subtypes, fit_arrays, predict_arrays

    t0 = time.perf_counter()
    n_ref = args.reference
    kinds = np.array([k for k, _, _ in data["measures"]])
    yr = data["c_regions"][:n_ref]
    keep = np.all(np.isfinite(yr), axis=0)
    params = fit_arrays(yr[:, keep], data["c_age"][:n_ref], data["c_sex"][:n_ref], data["c_site"][:n_ref])
    pred = predict_arrays(params, data["p_age"], data["p_sex"], data["p_site"])
    z = pred.z(data["p_regions"][:, keep])
    ok = np.array([not r for r in pred.extrapolated]) & np.all(np.isfinite(z), axis=1)
    truth = data["p_subtype"][ok]
    site = data["p_site"][ok]
    meta_all = {"site": site, "sex": data["p_sex"][ok], "age": data["p_age"][ok]}
    vol = kinds[keep] == "volume"
    inten = kinds[keep] == "intensity"
    x = z[ok][:, vol]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_disc = int(round(0.7 * len(x)))
    disc, held = np.sort(perm[:n_disc]), np.sort(perm[n_disc:])
    cfg = SubtypeConfig(seed=seed, resamples=args.resamples, k_min=2, k_max=6, metric=args.metric)
    model = discover_subtypes(x[disc], config=cfg, metadata={k: v[disc] for k, v in meta_all.items()})
    held_lab = model.assign(x[held])
    res = {
        "patients": int(len(x)), "discovery": int(len(disc)), "held_out": int(len(held)), "k": int(model.k),
        "ari_discovery": adjusted_rand_index(model.labels, truth[disc]),
        "ari_held_out": adjusted_rand_index(held_lab, truth[held]),
        "per_k": model.per_k, "recovers_site": model.recovers_site, "site_flags": model.site_flags,
        "association": {k: {kk: v[kk] for kk in ("p", "effect", "effect_size")} for k, v in model.association.items()},
    }
    # the same number of clusters forced to 3 (how good is the partition itself)
    forced = discover_subtypes(x[disc], config=cfg.model_copy(update={"k_min": 3, "k_max": 3, "null_resamples": 0}))
    res["ari_discovery_k3"] = adjusted_rand_index(forced.labels, truth[disc])
    # site check: raw intensities (site effects untouched) vs their normative z-scores
    raw = data["p_regions"][ok][:, keep][:, inten]
    site_cfg = cfg.model_copy(update={"metric": "euclidean", "resamples": max(10, args.resamples // 2)})
    m_raw = discover_subtypes(raw[disc], config=site_cfg, metadata={"site": site[disc]}, standardise=True)
    m_z = discover_subtypes(z[ok][:, inten][disc], config=site_cfg, metadata={"site": site[disc]})
    res["site_check"] = {
        "raw_intensities": {"k": m_raw.k, "recovers_site": m_raw.recovers_site,
                            "cramers_v_site": m_raw.association.get("site", {}).get("effect_size"),
                            "ari_with_site": adjusted_rand_index(m_raw.labels, site[disc]) if m_raw.k > 1 else 0.0,
                            "flagged_clusters": len(m_raw.site_flags)},
        "intensity_z": {"k": m_z.k, "recovers_site": m_z.recovers_site,
                        "cramers_v_site": m_z.association.get("site", {}).get("effect_size"),
                        "ari_with_site": adjusted_rand_index(m_z.labels, site[disc]) if m_z.k > 1 else 0.0,
                        "flagged_clusters": len(m_z.site_flags)},
    }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bn.cohort_args(ap)
    ap.add_argument("--resamples", type=int, default=50)
    ap.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    ap.add_argument("--out", type=Path, default=bn.OUT / "subtypes.json")
    args = ap.parse_args(argv)
    bn.quick(args)
    if args.quick:
        args.resamples = 15
    t_all = time.perf_counter()
    results, timed = [], 0.0
    for r in range(args.repeats):
        data = bn.prepare(100 + r, args)
        t0 = time.perf_counter()
        res = run_repeat(data, args, seed=100 + r)
        timed += time.perf_counter() - t0
        res["seed"] = 100 + r
        results.append(res)
        sc = res["site_check"]
        bn.log(f"repeat {r}: k = {res['k']} (true 3), ARI discovery {res['ari_discovery']:.3f}, held out "
               f"{res['ari_held_out']:.3f} (k forced to 3: {res['ari_discovery_k3']:.3f}); site flag raw intensities "
               f"{sc['raw_intensities']['recovers_site']} (V {sc['raw_intensities']['cramers_v_site']}), intensity z "
               f"{sc['intensity_z']['recovers_site']}")
    ari_d = np.array([x["ari_discovery"] for x in results])
    ari_h = np.array([x["ari_held_out"] for x in results])
    summary = {
        "simulated": True, "repeats": args.repeats,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "k_chosen": [x["k"] for x in results], "true_k_chosen_share": float(np.mean([x["k"] == 3 for x in results])),
        "ari_discovery": {"mean": float(ari_d.mean()), "sd": float(ari_d.std(ddof=1)) if len(ari_d) > 1 else 0.0,
                          "min": float(ari_d.min()), "max": float(ari_d.max())},
        "ari_held_out": {"mean": float(ari_h.mean()), "sd": float(ari_h.std(ddof=1)) if len(ari_h) > 1 else 0.0,
                         "min": float(ari_h.min()), "max": float(ari_h.max())},
        "site_flag_raw_intensities": [x["site_check"]["raw_intensities"]["recovers_site"] for x in results],
        "site_flag_intensity_z": [x["site_check"]["intensity_z"]["recovers_site"] for x in results],
        "timed_seconds": round(timed, 1), "wall_seconds_with_preparation": round(time.perf_counter() - t_all, 1),
        "load_average": os.getloadavg(), "per_repeat": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_repeat"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

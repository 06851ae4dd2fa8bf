"""Saliency on a SIMULATED brain cohort: does each method put its mass where the disease is?

A simulated patients-vs-controls cohort (``sobre.sim``, Colin27 + AAL; the ``visual`` disease preset
shrinks calcarine, cuneus and lingual cortex only, regions the age model leaves alone) is written as
BIDS, ingested, frozen and learned by a small CNN (``sobre.learn.train``). ``sobre.learn.explain``
then maps every patient with integrated gradients (Captum), occlusion and Grad-CAM (MONAI), with the
simulator's own label map of each subject (``derivatives/sobre-sim/sub-X/sub-X_dseg.nii.gz``) as the
atlas. Per patient:

- ``share``: saliency mass (sum of |saliency|) in the truly affected regions / total mass;
- ``random``: the share a map of uniform random values would give (those regions' fraction of voxels);

both over the whole image and over the atlas (labels > 0: brain, ventricles, CSF). The figure is the
ratio mean(share) / mean(random) over patients, with BCa bootstrap CIs over subjects
(``sobre.validate.bootstrap``); the target is >= 2x. Everything here is SIMULATED.

    .venv/bin/python bench/bench_explain.py                       # the size recorded in docs/explain.md
    .venv/bin/python bench/bench_explain.py --subjects 16 --epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "out" / "explain"
METHODS = ("ig", "occlusion", "gradcam")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cohort(args, out: Path) -> Path:
    from sobre.sim import BrainCohortConfig, DiseaseModel, write_brain_cohort

    sim = out / "sim"
    if (sim / "participants.tsv").exists():
        return sim
    cfg = BrainCohortConfig(subjects=args.subjects, sites=args.sites, seed=args.seed, resolution=args.resolution,
                            disease=DiseaseModel.preset(args.disease, strength=args.strength))
    t0 = time.perf_counter()
    write_brain_cohort(cfg, sim, format="bids", jobs=args.workers)
    log(f"simulated {args.subjects} subjects in {time.perf_counter() - t0:.0f} s")
    return sim


def workspace(args, out: Path, sim: Path):
    from sobre.catalog import Workspace

    root = out / "ws"
    if (root / "sobre.toml").exists():
        return Workspace.open(root)
    ws = Workspace.init(root)
    ws.ingest([sim])
    ws.cohort_create("explain", 'protocol == "T1w"')
    ws.freeze("explain")
    return ws


def trained(args, ws):
    from sobre.learn import list_runs, runs_root, train

    done = [r for r in list_runs(runs_root(ws)) if r.record.get("kind") == "train" and r.record.get("status") == "completed"
            and r.record.get("name") == "bench-explain"]
    if done:
        return done[-1]
    cfg = {"seed": args.seed, "name": "bench-explain", "data": {"dataset": "explain@v1"},
           "preprocess": {"resample": "spacing", "spacing": [args.spacing] * 3, "shape": args.shape,
                          "intensity": "zscore", "foreground_threshold": 0.0},
           "task": {"kind": "binary", "label": "diagnosis", "positive": "patient"},
           "split": {"test_fraction": 0.25},
           "model": {"backbone": "compact3d", "width": args.width, "depth": 3},
           "optim": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr},
           "runtime": {"progress": False, "precision": "fp32"}}
    t0 = time.perf_counter()
    res = train(cfg, workspace=ws)
    log(f"trained in {time.perf_counter() - t0:.0f} s: {res.run.record.get('metrics', {}).get('test', {})}")
    return res.run


def ratio_ci(share: np.ndarray, rand: np.ndarray, n_boot: int, seed: int) -> dict:
    from sobre.validate import bootstrap

    def stat(w):
        w = np.asarray(w, float)
        return {"ratio": (w @ share) / (w @ rand), "share": (w @ share) / w.sum(1), "random": (w @ rand) / w.sum(1)}

    est = bootstrap(stat, len(share), n_resamples=n_boot, seed=seed)
    return {k: {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "method": e.method}
            for k, e in est.items()}


def figures(tab: pd.DataFrame, affected: set[int]) -> pd.DataFrame:
    """Per image: affected share/random over the whole image and within the atlas (labels > 0)."""
    rows = []
    for (sub, series), g in tab.groupby(["subject_id", "series_uid"], sort=True):
        aff = g["label"].isin(affected)
        inside = g["label"] > 0
        vox_in = g.loc[inside, "voxels"].sum()
        mass_in = g.loc[inside, "mass"].sum()
        rows.append({"subject_id": sub, "share_image": g.loc[aff, "share"].sum(),
                     "random_image": g.loc[aff, "voxel_share"].sum(),
                     "share_atlas": g.loc[aff, "mass"].sum() / mass_in if mass_in > 0 else np.nan,
                     "random_atlas": g.loc[aff, "voxels"].sum() / vox_in})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=300)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--disease", default="visual")
    ap.add_argument("--strength", type=float, default=8.0)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--shape", type=int, nargs=3, default=[40, 48, 40])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--mask-size", type=int, default=8, help="occlusion box, voxels of the network's grid")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fresh", action="store_true", help="delete OUT first (else reuse cohort, workspace, run)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.workers))
    out = args.out
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    sim = cohort(args, out)
    ws = workspace(args, out, sim)
    run = trained(args, ws)
    from sobre.learn import explain, load_model

    model = load_model(run.path, precision="fp32")
    ds = ws.dataset("explain@v1")
    truth = sim / "derivatives" / "sobre-sim"
    regions = pd.read_csv(truth / "regions.tsv", sep="\t")
    affected = set(regions.loc[regions["disease_percent"].abs() > 1e-9, "label"].astype(int))
    names = regions.set_index("label").loc[sorted(affected), "name"].tolist()
    patients = [s for s in ds.series if str(s.metadata.get("diagnosis")) == "patient"]
    split = pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")["split"]
    log(f"{len(patients)} patients; affected regions: {', '.join(names)}")
    metrics = (run.record.get("metrics") or {})
    result = {"simulated": True, "what": "SIMULATED cohort: share of saliency mass in the truly affected regions",
              "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load_start": load0,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "run": run.run_id, "test_metrics": metrics.get("test"), "affected_regions": names,
              "patients": len(patients), "methods": {}}
    params = {"occlusion": {"mask_size": args.mask_size}}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        res = explain(model, ds, method, series=patients, out=out / f"explain-{method}", overwrite=True,
                      atlas=str(truth / "{subject}" / "{subject}_dseg.nii.gz"), regions=truth / "regions.tsv",
                      params=params.get(method))
        secs = time.perf_counter() - t0
        fig = figures(pd.read_csv(res.path / "regions.csv", dtype={"subject_id": str}), affected)
        fig["split"] = fig["subject_id"].map(split).fillna("unknown")
        zero = int(fig["share_atlas"].isna().sum())  # a map without mass (Grad-CAM's ReLU can leave nothing)
        fig = fig.dropna(subset=["share_atlas"])
        entry = {"seconds": round(secs, 1), "seconds_per_image": round(secs / max(len(fig), 1), 2),
                 "library": res.report["library"], "params": res.report["params"], "images": len(fig),
                 "images_without_mass": zero}
        for where in ("image", "atlas"):
            entry[where] = ratio_ci(fig[f"share_{where}"].to_numpy(float), fig[f"random_{where}"].to_numpy(float),
                                    args.bootstrap, args.seed)
        test = fig[fig["split"] == "test"]
        if len(test) >= 3:
            entry["atlas_test_only"] = ratio_ci(test["share_atlas"].to_numpy(float),
                                                test["random_atlas"].to_numpy(float), args.bootstrap, args.seed)
            entry["atlas_test_only"]["n"] = len(test)
        result["methods"][method] = entry
        a = entry["atlas"]["ratio"]
        log(f"{method}: ratio in atlas {a['value']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}] ({secs:.0f} s)")
    best = max(result["methods"], key=lambda m: result["methods"][m]["atlas"]["ratio"]["value"])
    result["best_method"] = best
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    result["load_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"SIMULATED data. run {run.run_id}, test AUC {(metrics.get('test') or {}).get('auc')}, "
          f"{len(patients)} patients, affected: {', '.join(names)}")
    print("| method | library | share in affected (atlas) | random | ratio [95% CI] | ratio, whole image | s/image |")
    print("|---|---|---|---|---|---|---|")
    for m, e in result["methods"].items():
        a, i = e["atlas"], e["image"]
        print(f"| {m} | {e['library']['name']} {e['library']['version']} | {a['share']['value']:.3f} "
              f"[{a['share']['ci_low']:.3f}, {a['share']['ci_high']:.3f}] | {a['random']['value']:.3f} | "
              f"{a['ratio']['value']:.2f} [{a['ratio']['ci_low']:.2f}, {a['ratio']['ci_high']:.2f}] | "
              f"{i['ratio']['value']:.2f} [{i['ratio']['ci_low']:.2f}, {i['ratio']['ci_high']:.2f}] | "
              f"{e['seconds_per_image']} |")
    print(f"best: {best}; total {result['seconds_total']} s; load {load0} -> {result['load_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Saliency on a SIMULATED brain cohort: does each method put its mass where the disease is?

A simulated patients-vs-controls cohort (``sobre.sim``, Colin27 + AAL; the ``visual`` disease preset
shrinks calcarine, cuneus and lingual cortex only, regions the age model leaves alone) is written as
BIDS, ingested, frozen and learned by a small CNN (``sobre.learn.train``). ``sobre.learn.explain``
then maps every patient with integrated gradients (Captum), occlusion and Grad-CAM (MONAI), with the
simulator's own label map of each subject (``derivatives/sobre-sim/sub-X/sub-X_dseg.nii.gz``) as the
atlas. Per patient:

- ``share``: saliency mass (sum of |saliency|) in the truly affected regions / total mass;
- ``random``: the share a map of uniform random values would give (those regions' fraction of voxels);

over the whole image and over the atlas (labels > 0: brain, ventricles, CSF), with two truths:

- ``atlas`` (the patient's own regions): the affected labels of the patient's own label map, in which
  the regions have already shrunk (the tissue the disease removed is CSF or a neighbour there);
- ``healthy`` (the territory before atrophy): the affected labels of the patient's healthy counterpart
  (``BrainSimulator.subject(i, healthy=True)``: same anatomy, pose and grid, disease strength 0), the
  tissue the disease acted on, including what it removed; its random baseline is its own voxel fraction.

The figure is the ratio mean(share) / mean(random) over patients, with BCa bootstrap CIs over subjects
(``sobre.validate.bootstrap``); the target is >= 2x. The network's train / validation / test AUC and its
learning curve are recorded (``--train-only`` stops there: for choosing settings on validation).
Everything here is SIMULATED.

    .venv/bin/python bench/bench_explain.py                       # the size recorded in docs/explain.md
    .venv/bin/python bench/bench_explain.py --subjects 24 --epochs 2   # a smoke run
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
    made = {k: getattr(args, k) for k in ("subjects", "sites", "seed", "resolution", "disease", "strength")}
    stamp = out / "cohort.json"
    if (sim / "participants.tsv").exists():
        found = json.loads(stamp.read_text()) if stamp.exists() else None
        if found != made:
            sys.exit(f"{sim} holds another cohort (cohort.json: {found}; asked for {made}): "
                     "use --fresh or another --out")
        return sim
    cfg = BrainCohortConfig(subjects=args.subjects, sites=args.sites, seed=args.seed, resolution=args.resolution,
                            disease=DiseaseModel.preset(args.disease, strength=args.strength))
    t0 = time.perf_counter()
    write_brain_cohort(cfg, sim, format="bids", jobs=args.workers)
    stamp.write_text(json.dumps(made) + "\n")
    log(f"simulated {args.subjects} subjects in {time.perf_counter() - t0:.0f} s")
    return sim


def healthy_labels(args, sim: Path, patients: list[str]) -> Path:
    """Each patient's label map without the disease (``BrainSimulator.subject(i, healthy=True)``).

    Same draws as the patient (anatomy, pose, site grid) with the disease strength set to 0: the
    affected regions as they were before the atrophy, the truth for "where the disease acted".
    """
    from sobre.image import save
    from sobre.sim import BrainCohortConfig, BrainSimulator, DiseaseModel

    root = sim.parent / "healthy"
    todo = [s for s in patients if not (root / s / f"{s}_dseg.nii.gz").exists()]
    if todo:
        cfg = BrainCohortConfig(subjects=args.subjects, sites=args.sites, seed=args.seed, resolution=args.resolution,
                                disease=DiseaseModel.preset(args.disease, strength=args.strength))
        bs = BrainSimulator(cfg)
        t0 = time.perf_counter()
        for s in todo:
            h = bs.subject(int(s.removeprefix("sub-")) - 1, image=False, healthy=True)
            if h.metadata["subject_id"] != s:
                raise RuntimeError(f"healthy counterpart of {s} came out as {h.metadata['subject_id']}")
            save(h.truth.labels, root / s / f"{s}_dseg.nii.gz")
        log(f"healthy counterparts of {len(todo)} patients in {time.perf_counter() - t0:.0f} s")
    return root


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


AUGMENT = {"none": [], "flip": [{"kind": "flip", "axes": [0], "prob": 0.5}],
           "flip-affine": [{"kind": "flip", "axes": [0], "prob": 0.5},
                           {"kind": "affine", "prob": 0.5, "rotate_deg": 5.0, "scale": 0.05, "translate": 1.0}]}


def train_config(args) -> dict:
    """The training configuration (the split is fixed by the cohort seed, the network's draws by --train-seed)."""
    return {"seed": args.train_seed, "name": "bench-explain", "data": {"dataset": "explain@v1"},
            "preprocess": {"resample": "spacing", "spacing": [args.spacing] * 3, "shape": args.shape,
                           "intensity": "zscore", "foreground_threshold": 0.0},
            "task": {"kind": "binary", "label": "diagnosis", "positive": "patient"},
            "split": {"test_fraction": 0.25, "val_fraction": args.val_fraction, "seed": args.seed},
            "model": {"backbone": "compact3d", "width": args.width, "depth": args.depth},
            "optim": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "weight_decay": args.weight_decay,
                      "early_stopping": {"patience": args.patience}},
            "augment": AUGMENT[args.augment],
            "runtime": {"progress": False, "precision": "fp32"}}


def trained(args, ws):
    """A completed run of exactly this configuration (reused), else a new one."""
    from sobre.learn import TrainConfig, list_runs, open_run, resolved, runs_root, train

    cfg = train_config(args)
    want = json.loads(json.dumps(resolved(TrainConfig.model_validate(cfg))))
    for r in reversed(list_runs(runs_root(ws))):
        if r["kind"] == "train" and r["status"] == "completed":
            run = open_run(runs_root(ws), r["run_id"])
            if run.record.get("config") == want:
                return run, None
    t0 = time.perf_counter()
    res = train(cfg, workspace=ws)
    secs = time.perf_counter() - t0
    log(f"trained in {secs:.0f} s: {res.run.record.get('metrics', {}).get('test', {})}")
    return res.run, round(secs, 1)


def training_summary(run, model, ds) -> dict:
    """Train / validation / test AUC of the kept weights, the epoch kept, and the learning curve."""
    from sklearn.metrics import roc_auc_score

    preds = pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str})
    split = preds.drop_duplicates("subject_id").set_index("subject_id")["split"].replace({"validation": "val"})
    entries = list(ds.series)
    p = model.predict(ds, series=entries)
    y = np.array([str(e.metadata.get("diagnosis")) == "patient" for e in entries])
    part = np.array([split.get(e.subject_id, "train") for e in entries])
    auc = {k: round(float(roc_auc_score(y[part == k], p.scores[part == k])), 4)
           for k in ("train", "val", "test") if len(set(y[part == k])) == 2}
    n = {k: int((part == k).sum()) for k in ("train", "val", "test")}
    epochs = run.record.get("epochs") or []
    curve = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items()
              if k in ("epoch", "train_loss", "val_loss", "val_auc", "best_epoch")} for e in epochs]
    folds = run.record.get("folds") or [{}]
    return {"auc": auc, "n": n, "best_epoch": folds[0].get("best_epoch"), "epochs_run": folds[0].get("epochs_run"),
            "stopped_early": folds[0].get("stopped_early"), "curve": curve}


def ratio_ci(share: np.ndarray, rand: np.ndarray, n_boot: int, seed: int) -> dict:
    from sobre.validate import bootstrap

    def stat(w):
        w = np.asarray(w, float)
        return {"ratio": (w @ share) / (w @ rand), "share": (w @ share) / w.sum(1), "random": (w @ rand) / w.sum(1)}

    est = bootstrap(stat, len(share), n_resamples=n_boot, seed=seed)
    return {k: {"value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "method": e.method}
            for k, e in est.items()}


def healthy_figures(results, healthy: Path, affected: set[int]) -> pd.DataFrame:
    """Per image: share of mass in the affected regions' territory before the atrophy.

    The territory is the affected regions in the patient's healthy counterpart (same anatomy, grid
    and pose, disease strength 0): the tissue the disease removed (CSF in the patient's own map)
    counts as affected. Its random baseline is the territory's fraction of the voxels.
    """
    from sobre.image import load
    from sobre.learn import region_shares

    rows = []
    for r in results:
        lab = load(healthy / r.subject / f"{r.subject}_dseg.nii.gz")
        g = region_shares(r.map, lab)
        aff = g["label"].isin(affected)
        inside = g["label"] > 0
        mass_in = g.loc[inside, "mass"].sum()
        rows.append({"subject_id": r.subject, "share_healthy": g.loc[aff, "mass"].sum() / mass_in if mass_in > 0
                     else np.nan, "random_healthy": g.loc[aff, "voxels"].sum() / g.loc[inside, "voxels"].sum()})
    return pd.DataFrame(rows)


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
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--patience", type=int, default=None,
                    help="early stopping on validation AUC after this many epochs without improvement (default: off; "
                         "the weights of the best validation epoch are kept either way)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="of the development (non-test) subjects")
    ap.add_argument("--augment", choices=sorted(AUGMENT), default="flip-affine",
                    help="none: the network memorises the 180 training subjects (train AUC 1.0, validation 0.77-0.84 "
                         "on cohort seed 1); flip-affine: validation 0.996 (docs/explain.md)")
    ap.add_argument("--train-seed", type=int, default=None, help="the network's seed (default: --seed)")
    ap.add_argument("--train-only", action="store_true", help="stop after training (learning-curve diagnostics)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--mask-size", type=int, default=8, help="occlusion box, voxels of the network's grid")
    ap.add_argument("--ig-baseline", default="0",
                    help="integrated gradients' baseline: a number (normalised intensity; 0 = the image's mean) "
                         "or 'min' (each image's own minimum: its air, no signal)")
    ap.add_argument("--ig-smooth", type=int, default=0,
                    help="integrated gradients: SmoothGrad over this many noisy copies (0: off; noise SD 0.15 of the "
                         "image's intensity range)")
    ap.add_argument("--gradcam-layer", default=None,
                    help="Grad-CAM's layer (default: the last with a spatial output, 1/8 of the grid for depth 3); "
                         "e.g. net.encoder.body.11, the end of the second stage (1/4)")
    ap.add_argument("--tag", default="",
                    help="results in OUT/results-TAG.json and OUT/explain-METHOD-TAG (to compare settings on the "
                         "same cohort and trained network)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fresh", action="store_true", help="delete OUT first (else reuse cohort, workspace, run)")
    args = ap.parse_args(argv)
    if args.train_seed is None:
        args.train_seed = args.seed

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
    t_prep = time.perf_counter() - t_start
    run, train_seconds = trained(args, ws)
    from sobre.learn import explain, load_model

    model = load_model(run.path, precision="fp32")
    ds = ws.dataset("explain@v1")
    summary = training_summary(run, model, ds)
    log(f"run {run.run_id}: AUC {summary['auc']}, best epoch {summary['best_epoch']} of {summary['epochs_run']}")
    if args.train_only:
        out_json = out / f"training-{run.run_id}.json"
        out_json.write_text(json.dumps({"simulated": True, "run": run.run_id, "config": train_config(args),
                                        "train_seconds": train_seconds, "load": os.getloadavg(), **summary},
                                       indent=2) + "\n")
        print(f"SIMULATED data. run {run.run_id}: AUC {summary['auc']} (n {summary['n']}), best epoch "
              f"{summary['best_epoch']} of {summary['epochs_run']}, {train_seconds} s -> {out_json}")
        return 0
    truth = sim / "derivatives" / "sobre-sim"
    regions = pd.read_csv(truth / "regions.tsv", sep="\t")
    affected = set(regions.loc[regions["disease_percent"].abs() > 1e-9, "label"].astype(int))
    names = regions.set_index("label").loc[sorted(affected), "name"].tolist()
    patients = [s for s in ds.series if str(s.metadata.get("diagnosis")) == "patient"]
    split = pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")["split"]
    log(f"{len(patients)} patients; affected regions: {', '.join(names)}")
    healthy = healthy_labels(args, sim, sorted({e.subject_id for e in patients}))
    metrics = (run.record.get("metrics") or {})
    result = {"simulated": True, "what": "SIMULATED cohort: share of saliency mass in the truly affected regions",
              "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load_start": load0,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "run": run.run_id, "test_metrics": metrics.get("test"), "affected_regions": names,
              "train_config": train_config(args), "training": summary, "seconds_preparation": round(t_prep, 1),
              "seconds_training": train_seconds, "patients": len(patients), "methods": {}}
    params = {"occlusion": {"mask_size": args.mask_size},
              "ig": {"baseline": "min" if args.ig_baseline == "min" else float(args.ig_baseline),
                     "smooth_samples": args.ig_smooth},
              "gradcam": {"layer": args.gradcam_layer}}
    suffix = f"-{args.tag}" if args.tag else ""
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        res = explain(model, ds, method, series=patients, out=out / f"explain-{method}{suffix}", overwrite=True,
                      atlas=str(truth / "{subject}" / "{subject}_dseg.nii.gz"), regions=truth / "regions.tsv",
                      params=params.get(method))
        secs = time.perf_counter() - t0
        fig = figures(pd.read_csv(res.path / "regions.csv", dtype={"subject_id": str}), affected)
        fig = fig.merge(healthy_figures(res.subjects, healthy, affected), on="subject_id", how="left", validate="1:1")
        fig["split"] = fig["subject_id"].map(split).fillna("unknown")
        zero = int(fig["share_atlas"].isna().sum())  # a map without mass (Grad-CAM's ReLU can leave nothing)
        fig = fig.dropna(subset=["share_atlas"])
        entry = {"seconds": round(secs, 1), "seconds_per_image": round(secs / max(len(fig), 1), 2),
                 "library": res.report["library"], "params": res.report["params"], "images": len(fig),
                 "images_without_mass": zero}
        for where in ("image", "atlas", "healthy"):
            entry[where] = ratio_ci(fig[f"share_{where}"].to_numpy(float), fig[f"random_{where}"].to_numpy(float),
                                    args.bootstrap, args.seed)
        test = fig[fig["split"] == "test"]
        if len(test) >= 3:
            for where in ("atlas", "healthy"):
                entry[f"{where}_test_only"] = ratio_ci(test[f"share_{where}"].to_numpy(float),
                                                       test[f"random_{where}"].to_numpy(float), args.bootstrap,
                                                       args.seed)
                entry[f"{where}_test_only"]["n"] = len(test)
        result["methods"][method] = entry
        a, h = entry["atlas"]["ratio"], entry["healthy"]["ratio"]
        log(f"{method}: ratio in atlas {a['value']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}], territory before "
            f"atrophy {h['value']:.2f} [{h['ci_low']:.2f}, {h['ci_high']:.2f}] ({secs:.0f} s)")
    best = max(result["methods"], key=lambda m: result["methods"][m]["healthy"]["ratio"]["value"])
    result["best_method"] = best
    result["best_method_by"] = "ratio in the affected regions' territory before atrophy (healthy counterpart)"
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    result["load_end"] = os.getloadavg()
    (out / f"results{suffix}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"SIMULATED data. run {run.run_id}, AUC {summary['auc']} (n {summary['n']}; best epoch "
          f"{summary['best_epoch']} of {summary['epochs_run']}), {len(patients)} patients, "
          f"affected: {', '.join(names)}")

    def ci(d, f="{:.2f}"):
        return f"{f.format(d['value'])} [{f.format(d['ci_low'])}, {f.format(d['ci_high'])}]"

    print("| method | library | territory before atrophy: share | random | ratio | ratio, test patients | "
          "patient's own regions: share | random | ratio | ratio, test patients | s/image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, e in result["methods"].items():
        h, a = e["healthy"], e["atlas"]
        ht, at = e.get("healthy_test_only"), e.get("atlas_test_only")
        print(f"| {m} | {e['library']['name']} {e['library']['version']} | {ci(h['share'], '{:.3f}')} | "
              f"{h['random']['value']:.3f} | {ci(h['ratio'])} | {ci(ht['ratio']) if ht else '-'} | "
              f"{ci(a['share'], '{:.3f}')} | {a['random']['value']:.3f} | {ci(a['ratio'])} | "
              f"{ci(at['ratio']) if at else '-'} | {e['seconds_per_image']} |")
    print(f"best: {best}; total {result['seconds_total']} s; load {load0} -> {result['load_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

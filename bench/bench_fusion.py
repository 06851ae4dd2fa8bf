"""Image + clinical fusion on a SIMULATED brain cohort: image-only, tabular-only, late and feature fusion.

A simulated patients-vs-controls cohort (``sobre.sim``, Colin27 + AAL, disease preset ``visual``:
atrophy of calcarine, cuneus and lingual cortex, regions the age model leaves alone) with the
simulator's clinical variables (``clinical={}``: every default) is written as BIDS, ingested and
frozen. Of the clinical variables, by construction (docs/simulation.md):

- ``nfl`` (serum NfL) carries signal: higher in patients (times the patient's disease multiplier),
  rising with age; 20 % missing at random, more often in older subjects;
- ``sodium`` carries none: N(140, 2.5) drawn independently of everything; 10 % missing completely
  at random.

A test set (30 %, stratified by diagnosis) is fixed first in a ``split`` column of participants.tsv.
SimCLR pretraining sees the development subjects' images only (``data.where = 'split != "test"'``,
no labels); a linear probe on its frozen features (``sobre.learn.probe``, ``split.test_column``) is
the image-only model. ``sobre.learn.fuse`` then fits, for each variable, the tabular model, late
fusion and feature fusion on the development subjects; all arms are scored on the same test
subjects. Each fusion run is then loaded again (``sobre.learn.load_model``: image run + what
``fusion.json`` holds) and applied to the test subjects' images and variables of the dataset version;
its scores are compared with the run's ``predictions.csv``. AUCs with BCa bootstrap CIs (``sobre.validate.auc_ci``) and paired differences to
image-only and to tabular-only (DeLong, ``sobre.validate.delong_test``). Targets: with ``nfl`` fused >= both single
modalities; with ``sodium`` fused within 0.01 AUC of image-only. Everything here is SIMULATED.

    .venv/bin/python bench/bench_fusion.py                          # the size recorded in docs/learning.md
    .venv/bin/python bench/bench_fusion.py --subjects 60 --epochs 1 --fresh   # a smoke run
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

OUT = Path(__file__).resolve().parent / "out" / "fusion"
VARIABLES = {"nfl": "signal (linked to the diagnosis)", "sodium": "none (independent of everything)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cohort(args, out: Path) -> Path:
    from sobre.sim import BrainCohortConfig, DiseaseModel, write_brain_cohort

    sim = out / "sim"
    if (sim / "participants.tsv").exists():
        return sim
    cfg = BrainCohortConfig(subjects=args.subjects, sites=args.sites, seed=args.seed, resolution=args.resolution,
                            disease=DiseaseModel.preset(args.disease, strength=args.strength), clinical={})
    t0 = time.perf_counter()
    write_brain_cohort(cfg, sim, format="bids", jobs=args.workers)
    # the test subjects, fixed before anything is learned (stratified by diagnosis)
    p = pd.read_csv(sim / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(args.seed)
    p["split"] = "dev"
    for _, g in p.groupby("diagnosis"):
        idx = rng.permutation(g.index.to_numpy())
        p.loc[idx[:round(args.test_fraction * len(idx))], "split"] = "test"
    p.to_csv(sim / "participants.tsv", sep="\t", index=False)
    log(f"simulated {args.subjects} subjects in {time.perf_counter() - t0:.0f} s")
    return sim


def workspace(out: Path, sim: Path):
    from sobre.catalog import Workspace

    root = out / "ws"
    if (root / "sobre.toml").exists():
        return Workspace.open(root)
    t0 = time.perf_counter()
    ws = Workspace.init(root)
    ws.ingest([sim])
    ws.cohort_create("fusion", 'protocol == "T1w"')
    ws.freeze("fusion")
    log(f"ingested and frozen in {time.perf_counter() - t0:.0f} s")
    return ws


def image_run(args, ws):
    from sobre.learn import list_runs, open_run, pretrain, probe, runs_root

    done = [r for r in list_runs(runs_root(ws)) if r.get("kind") == "probe" and r.get("status") == "completed"
            and r.get("name") == "bench-fusion-probe"]
    if done:
        return open_run(runs_root(ws), done[-1]["run_id"])
    pre = {"resample": "spacing", "spacing": [args.spacing] * 3, "shape": args.shape, "intensity": "zscore",
           "foreground_threshold": 0.0}
    model = {"backbone": "compact3d", "width": args.width, "depth": 4}
    t0 = time.perf_counter()
    p = pretrain({"seed": args.seed, "name": "bench-fusion-pretrain",
                  "data": {"dataset": "fusion@v1", "where": 'split != "test"'}, "preprocess": pre, "model": model,
                  "method": {"kind": "simclr", "temperature": 0.1},
                  "optim": {"epochs": args.epochs, "batch_size": 32 if args.subjects >= 100 else 8, "lr": 1e-3},
                  "monitor": {"val_fraction": 0.0}, "runtime": {"progress": False, "precision": "fp32"}},
                 workspace=ws)
    log(f"SimCLR pretraining on the development subjects: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    res = probe({"seed": args.seed, "name": "bench-fusion-probe", "data": {"dataset": "fusion@v1"},
                 "preprocess": pre, "model": dict(model, init_from=p.run.run_id),
                 "task": {"kind": "binary", "label": "diagnosis", "positive": "patient"},
                 "split": {"test_column": "split", "test_values": ["test"]},
                 "runtime": {"progress": False, "precision": "fp32"}}, workspace=ws)
    log(f"probe: {time.perf_counter() - t0:.0f} s, test {res.metrics.get('test')}")
    return res.run


def est(e) -> dict:
    return {"value": round(e.value, 4), "ci_low": round(e.ci_low, 4), "ci_high": round(e.ci_high, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=360)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--disease", default="visual")
    ap.add_argument("--strength", type=float, default=8.0)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--shape", type=int, nargs=3, default=[40, 48, 40])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20, help="SimCLR pretraining epochs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fresh", action="store_true", help="delete OUT first (else reuse cohort, workspace, runs)")
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
    ws = workspace(out, sim)
    run = image_run(args, ws)
    from sobre.learn import fuse, load_model
    from sobre.validate import auc_ci, delong_test

    pr = pd.read_csv(run.path / "predictions.csv", dtype={"subject_id": str})
    test = pr[pr["split"] == "test"].set_index("subject_id").sort_index()
    y = test["label"].to_numpy().astype(bool)
    scores = {"image-only": test["score"].to_numpy(float)}
    fitted = {}
    for var in VARIABLES:
        for method, arm in (("tabular", "tabular-only"), ("late", "late fusion"), ("feature", "feature fusion")):
            t0 = time.perf_counter()
            res = fuse({"seed": args.seed, "name": f"bench-fusion-{method}-{var}", "image_run": run.run_id,
                        "method": method, "tabular": {"variables": [var]}}, workspace=ws)
            p = res.predictions[res.predictions["split"] == "test"].set_index("subject_id").loc[test.index]
            scores[f"{arm} [{var}]"] = p["score"].to_numpy(float)
            fitted[f"{method}-{var}"] = {"run": res.run.run_id, "seconds": round(time.perf_counter() - t0, 1),
                                         "fitted": json.loads((res.run.path / "fusion.json").read_text())["fitted"]}
            log(f"{method} [{var}]: test auc {res.metrics['test']['auc']:.3f} ({time.perf_counter() - t0:.0f} s)")
            t0 = time.perf_counter()  # the fused model, loaded and applied to the test subjects again
            ds = ws.dataset("fusion@v1")
            again = load_model(res.run.run_id, workspace=ws).predict(
                ds, series=[s_ for s_ in ds.series if s_.subject_id in set(test.index)])
            got = again.frame().set_index("subject_id").loc[test.index, "score"].to_numpy(float)
            fitted[f"{method}-{var}"]["reload"] = {
                "max_abs_diff": float(np.abs(got - p["score"].to_numpy(float)).max()), "n_subjects": len(got),
                "n_series": int(sum(len(x.split(";")) for x in again.series)),
                "seconds": round(time.perf_counter() - t0, 2)}
            log(f"{method} [{var}] loaded and applied again: {fitted[f'{method}-{var}']['reload']}")
    arms = {}
    for name, s in scores.items():
        arms[name] = {"auc": est(auc_ci(y, s, n_resamples=args.bootstrap, seed=args.seed))}
        if name != "image-only":
            d = delong_test(y, s, scores["image-only"])
            arms[name]["minus_image_only"] = dict(est(d.difference), p=round(d.p_value, 4))
        if " fusion [" in name:  # paired with the tabular-only arm of the same variable
            var = name.split("[")[1].rstrip("]")
            d = delong_test(y, s, scores[f"tabular-only [{var}]"])
            arms[name]["minus_tabular_only"] = dict(est(d.difference), p=round(d.p_value, 4))
    img = arms["image-only"]["auc"]["value"]
    checks = {}
    for var in VARIABLES:
        tab = arms[f"tabular-only [{var}]"]["auc"]["value"]
        for arm in ("late fusion", "feature fusion"):
            a = arms[f"{arm} [{var}]"]["auc"]["value"]
            if var == "nfl":
                checks[f"{arm} [{var}] >= image-only and >= tabular-only"] = bool(a >= img and a >= tab)
            else:
                checks[f"{arm} [{var}] within 0.01 of image-only"] = bool(abs(a - img) <= 0.01)
    part = pd.read_csv(sim / "participants.tsv", sep="\t", na_values=["n/a"])
    miss = {v: int(part[v].isna().sum()) for v in VARIABLES}
    result = {"simulated": True, "what": "SIMULATED cohort: image + clinical fusion, test-set AUC",
              "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load_start": load0,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "image_run": run.run_id, "n_test": int(len(y)), "n_test_patients": int(y.sum()),
              "missing_values": miss, "variables": VARIABLES, "arms": arms, "checks": checks, "fitted": fitted,
              "seconds_total": round(time.perf_counter() - t_start, 1), "load_end": os.getloadavg()}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [f"SIMULATED data ({args.subjects} subjects, {len(y)} test). {result['date']}, "
             f"load {load0[0]:.1f} -> {result['load_end'][0]:.1f}, {result['seconds_total']:.0f} s",
             "| arm | test AUC [95% CI] | minus image-only [95% CI] | minus tabular-only [95% CI] |",
             "|---|---|---|---|"]

    def diff(d):
        return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d else ""

    for name, a in arms.items():
        lines.append(f"| {name} | {a['auc']['value']:.3f} [{a['auc']['ci_low']:.3f}, {a['auc']['ci_high']:.3f}] | "
                     f"{diff(a.get('minus_image_only'))} | {diff(a.get('minus_tabular_only'))} |")
    lines += [f"- {k}: {'met' if v else 'NOT met'}" for k, v in checks.items()]
    lines += [f"- load_model({k}) on the test subjects: max |score - predictions.csv| "
              f"{f['reload']['max_abs_diff']:.2g} ({f['reload']['n_subjects']} subjects, {f['reload']['seconds']} s)"
              for k, f in fitted.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: label efficiency of metadata-aware (y-aware) contrastive pretraining on simulated brain MRI.

Run ``.venv/bin/python bench/bench_label_efficiency.py`` from the repository root (``--quick`` for a
small smoke run). Two phases, timed separately:

1. **Data** (not part of the benchmark's budget; done once, reused on later runs). Cohorts are
   simulated with :mod:`sobre.sim` (Colin27 + AAL, regional age effects, individual anatomy, head size,
   site effects: scanner, voxel size, slice orientation, contrast, bias, noise), written as NIfTI in
   BIDS folders (one per site, ``participants.tsv`` with age, sex, diagnosis, cohort), ingested into a
   workspace (``--site`` per folder) and frozen into dataset versions:

   * ``pretrain``     healthy subjects, ages 18–90, 5 sites (default 1,000)
   * ``accelerated``  patients vs controls, disease preset ``accelerated-ageing`` (default 700 subjects)
   * ``visual``       patients vs controls, preset ``visual`` (atrophy of regions that do not age)

   All cohorts share the same five sites (the same hospitals), with distinct subject identifiers.
2. **Benchmark**: ``sobre.learn.label_efficiency`` with ``bench/configs/label_efficiency.toml``:
   SimCLR and y-aware pretraining on ``pretrain``, then for N in {25, 50, 100, 200, 400} × 5 repeats:
   from scratch, SimCLR + probe, y-aware + probe, y-aware + fine-tune and the classical baseline (AAL ROI
   mean intensities and tissue volumes + logistic regression) on one held-out test set of 200 subjects;
   brain-age MAE of frozen y-aware features + ridge on the controls.

Results: ``bench/out/label-efficiency/`` (``summary.md``, and the benchmark run folder in the workspace
with ``results.json``, ``results.md``, ``label_efficiency.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

OUT = HERE / "out" / "label-efficiency"
CONFIG = HERE / "configs" / "label_efficiency.toml"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------- data
def sites(k: int, resolution: float):
    from sobre.sim import default_sites

    return [s.model_copy(update={"age_min": 18.0, "age_max": 90.0}) for s in default_sites(k, 7, resolution)]


def cohort_specs(args) -> list[dict]:
    specs = [{"name": "pretrain", "prefix": "P", "subjects": args.pretrain_subjects, "seed": 101, "disease": None,
              "strength": 0.0}]
    specs.append({"name": "accelerated", "prefix": "A", "subjects": args.target_subjects, "seed": 202,
                  "disease": "accelerated-ageing", "strength": args.strength})
    if args.visual_strength > 0:
        specs.append({"name": "visual", "prefix": "V", "subjects": args.target_subjects, "seed": 303,
                      "disease": "visual", "strength": args.visual_strength})
    return specs


def _simulate_chunk(payload):
    """Worker: simulate subjects ``indices`` of one cohort and write them as BIDS NIfTI; returns metadata rows."""
    spec, indices, folder, resolution, k_sites = payload
    import sobre
    from sobre.sim import BrainCohortConfig, BrainSimulator, DiseaseModel

    dis = None if spec["disease"] is None else DiseaseModel.preset(spec["disease"], spec["strength"])
    cfg = BrainCohortConfig(subjects=spec["subjects"], seed=spec["seed"], sites=sites(k_sites, resolution),
                            resolution=resolution, disease=dis)
    sim = BrainSimulator(cfg)
    rows = []
    for i in indices:
        img, meta, _ = sim.subject(i)
        sid = f"sub-{spec['prefix']}{i + 1:04d}"
        d = Path(folder) / meta["site"] / sid / "anat"
        d.mkdir(parents=True, exist_ok=True)
        sobre.save(img, d / f"{sid}_T1w.nii.gz")
        rows.append({"participant_id": sid, "site": meta["site"], "age": meta["age"], "sex": meta["sex"],
                     "diagnosis": meta["diagnosis"], "disease_strength": meta["disease_strength"],
                     "cohort": spec["name"], "simulated": "yes"})
    return rows


def simulate_cohort(spec: dict, folder: Path, resolution: float, k_sites: int, workers: int) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor

    n = spec["subjects"]
    chunks = [list(range(i, n, max(1, workers))) for i in range(max(1, workers))]
    payloads = [(spec, c, str(folder), resolution, k_sites) for c in chunks if c]
    if workers <= 1:
        rows = [r for p in payloads for r in _simulate_chunk(p)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = [r for part in pool.map(_simulate_chunk, payloads) for r in part]
    return sorted(rows, key=lambda r: r["participant_id"])


def prepare_data(args) -> tuple[object, dict]:
    """Simulate, write, ingest and freeze every cohort not already frozen with the same settings."""
    from sobre.catalog import Workspace

    wsdir = args.out / "ws"
    ws = Workspace.init(wsdir) if not (wsdir / "sobre.toml").exists() else Workspace.open(wsdir)
    timings = {}
    for spec in cohort_specs(args):
        stamp = dict(spec, resolution=args.resolution, sites=args.sites, format=3)
        marker = args.out / f"cohort-{spec['name']}.json"
        if marker.exists() and json.loads(marker.read_text()).get("spec") == stamp:
            log(f"cohort {spec['name']}: already frozen ({json.loads(marker.read_text())['ref']})")
            continue
        if marker.exists():
            raise SystemExit(f"{marker} was made with other settings; use another --out or delete {args.out}")
        folder = args.out / "data" / spec["name"]
        if folder.exists():
            shutil.rmtree(folder)
        t0 = time.perf_counter()
        log(f"cohort {spec['name']}: simulating {spec['subjects']} subjects "
            f"({spec['disease'] or 'healthy'}, strength {spec['strength']}) with {args.workers} processes ...")
        rows = simulate_cohort(spec, folder, args.resolution, args.sites, args.workers)
        t_sim = time.perf_counter() - t0
        by_site: dict[str, list[dict]] = {}
        for r in rows:
            by_site.setdefault(r["site"], []).append(r)
        t1 = time.perf_counter()
        for site, rs in sorted(by_site.items()):
            cols = ["participant_id", "age", "sex", "diagnosis", "disease_strength", "cohort", "simulated"]
            lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rs]
            (folder / site / "participants.tsv").write_text("\n".join(lines) + "\n")
            rep = ws.ingest([folder / site], site=site, workers=args.workers)
            if rep.clinical_error or rep.problems:
                raise SystemExit(f"ingest of {folder / site} failed: {rep.clinical_error or rep.problems[:3]}")
        ws.cohort_create(spec["name"], f'cohort == "{spec["name"]}"', replace=True)
        ref = ws.freeze(spec["name"])
        t_ing = time.perf_counter() - t1
        marker.write_text(json.dumps({"spec": stamp, "ref": ref.ref, "content_hash": ref.content_hash,
                                      "simulate_s": round(t_sim, 1), "ingest_freeze_s": round(t_ing, 1)}, indent=1))
        timings[spec["name"]] = {"simulate_s": round(t_sim, 1), "ingest_freeze_s": round(t_ing, 1)}
        log(f"cohort {spec['name']}: {ref.ref} ({ref.n_subjects} subjects), simulated in {t_sim:.0f} s, "
            f"ingested + frozen in {t_ing:.0f} s")
    return ws, timings


def build_caches(ws, cfg: dict) -> dict:
    """Preprocess every dataset version of the benchmark once (memory-mapped cache in the workspace)."""
    from sobre.learn import DataConfig, PreprocessConfig, load_cohort

    pre = PreprocessConfig.model_validate(cfg.get("preprocess", {}))
    out = {}
    for data in [cfg["pretrain_data"]] + [t["data"] for t in cfg["targets"]]:
        dc = DataConfig.model_validate(data)
        t0 = time.perf_counter()
        c = load_cohort(ws, dc, pre, threads=2)
        dt = time.perf_counter() - t0
        out[f"{dc.dataset}{' where ' + dc.where if dc.where else ''}"] = round(dt, 1)
        log(f"cache {dc.dataset}: {len(c)} images {tuple(c.images.shape[1:])} ready in {dt:.0f} s")
    return out


# ------------------------------------------------------------------------------------ benchmark
def bench_config(args) -> dict:
    import tomllib

    cfg = tomllib.loads(args.config.read_text())
    if args.atlas:
        cfg.setdefault("baseline", {})["atlas"] = str(args.atlas)
    cfg["targets"] = [t for t in cfg["targets"] if t["data"]["dataset"] != "visual" or args.visual_strength > 0]
    if args.quick:
        cfg["n_labels"] = [25, 50]
        cfg["repeats"] = 2
        cfg["pretrain_optim"]["epochs"] = 2
        for t in cfg["targets"]:
            t["test_size"] = min(t.get("test_size", 200), 60 if t["task"]["kind"] == "binary" else 30)
            t.pop("n_labels", None)
    if args.repeats:
        cfg["repeats"] = args.repeats
    return cfg


def default_atlas() -> Path | None:
    try:
        from sobre import samples

        p = samples.path("mricron-data") / "usr/share/mricron/templates/aal.nii.gz"
        return p if p.exists() else None
    except Exception:  # noqa: BLE001 - the baseline falls back to a grid
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--pretrain-subjects", type=int, default=1000)
    ap.add_argument("--target-subjects", type=int, default=700)
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--resolution", type=float, default=2.0, help="simulation resolution in mm")
    ap.add_argument("--strength", type=float, default=4.0, help="accelerated-ageing disease strength")
    ap.add_argument("--visual-strength", type=float, default=4.0, help="visual preset strength (0: skip)")
    ap.add_argument("--workers", type=int, default=2, help="processes for simulation and ingest")
    ap.add_argument("--repeats", type=int, default=0, help="override the config's repeats")
    ap.add_argument("--quick", action="store_true", help="small smoke run (100/200 subjects, N in {25, 50})")
    ap.add_argument("--data-only", action="store_true", help="prepare the frozen cohorts, do not run the benchmark")
    ap.add_argument("--no-reuse", action="store_true",
                    help="pretrain again even when an identical completed pretraining run exists")
    ap.add_argument("--atlas", type=Path, default=None, help="label image for the classical baseline (default: AAL)")
    args = ap.parse_args(argv)
    if args.quick:
        args.pretrain_subjects, args.target_subjects = min(args.pretrain_subjects, 120), min(args.target_subjects, 160)
        if args.out == OUT:
            args.out = OUT.parent / "label-efficiency-quick"
    args.atlas = args.atlas or default_atlas()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ws, data_t = prepare_data(args)
    t_data = time.perf_counter() - t0
    log(f"data ready in {t_data:.0f} s")
    cfg = bench_config(args)
    t_c = time.perf_counter()
    caches = build_caches(ws, cfg)
    t_cache = time.perf_counter() - t_c
    if args.data_only:
        return 0
    from sobre.learn import label_efficiency

    t1 = time.perf_counter()
    res = label_efficiency(cfg, workspace=ws, log=log, config_path=args.config,
                           reuse_pretraining=not args.no_reuse)
    t_bench = time.perf_counter() - t1
    run = res.run
    cohorts = {p.stem.removeprefix("cohort-"): json.loads(p.read_text()) for p in args.out.glob("cohort-*.json")}
    head = ["# Label-efficiency benchmark (simulated brain MRI)", "",
            f"Machine: {os.cpu_count()} CPU cores, torch threads {res['runtime']['threads']}, "
            f"precision {res['runtime']['precision']} ({res['runtime']['precision_reason']}).", "",
            "Cohorts (sobre.sim, Colin27 + AAL, 5 sites, ages 18-90):", ""]
    for name, c in sorted(cohorts.items()):
        s = c["spec"]
        head.append(f"- `{c['ref']}`: {s['subjects']} subjects, {s['disease'] or 'healthy'}"
                    f"{'' if not s['disease'] else ', strength ' + str(s['strength'])}; simulated in "
                    f"{c['simulate_s']:.0f} s, ingested + frozen in {c['ingest_freeze_s']:.0f} s")
    head += ["", f"Benchmark wall time: **{t_bench / 60:.1f} min**. Done once before it: simulation, ingest and "
                 f"freeze {sum(c['simulate_s'] + c['ingest_freeze_s'] for c in cohorts.values()) / 60:.1f} min; "
                 f"preprocessing cache {t_cache / 60:.1f} min this run ("
                 + ", ".join(f"{k} {v:.0f} s" for k, v in caches.items()) + "; a few seconds once built).",
             f"Run folder: `{run.path}`.", ""]
    text = "\n".join(head) + "\n" + (run.path / "results.md").read_text()
    (args.out / "summary.md").write_text(text)
    for name in ("results.json", "label_efficiency.png"):
        shutil.copyfile(run.path / name, args.out / name)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

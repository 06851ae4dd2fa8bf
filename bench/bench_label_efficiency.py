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

   All cohorts share the same five sites (the same hospitals, imaged by the very same scanners: each
   site's bias field is its own, ``fixed_bias``), with distinct subject identifiers.
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
SUITE_CONFIG = HERE / "configs" / "label_efficiency_suite.toml"

# The suite (``--suite``): disease patterns that are not presets, each at two strengths, each cohort
# with its own simulation seed; percent volume change per region group (or AAL region prefix) at
# strength 1. ``ageing`` says how the pattern relates to the regions that age in the simulator's
# default age model (visual cortex is the only group that does not age).
SUITE_PATTERNS: dict[str, dict] = {
    "hippo-focal": {"ageing": "overlaps ageing", "extent": "focal",
                    "effects": {"hippocampus": -5.0, "amygdala": -4.0}},
    "cortex-diffuse": {"ageing": "overlaps ageing", "extent": "diffuse",
                       "effects": {"frontal": -2.0, "parietal": -2.0, "temporal": -2.0, "thalamus": -2.0,
                                   "putamen_pallidum": -2.0, "white_matter": -1.5, "ventricles": 10.0}},
    "posterior-mixed": {"ageing": "partly overlaps ageing", "extent": "diffuse",
                        "effects": {"caudate": -4.0, "cerebellum": -3.0, "occipital": -3.0, "visual": -3.0}},
    "calcarine-focal": {"ageing": "does not age", "extent": "focal", "effects": {"Calcarine*": -8.0}},
}
SUITE_STRENGTHS = (2.0, 4.0)
SUITE_SHIFT = ("cortex-diffuse", 4.0)  # the pattern/strength also simulated on the ITK head (test only)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------- data
def sites(k: int, resolution: float):
    from sobre.sim import default_sites

    # fixed_bias: a site's bias pattern belongs to its scanner, not to the cohort's seed. Without it (data
    # format 3) each cohort saw other bias fields on the "same" sites, and a site eraser fitted on the
    # pretraining cohort could not transfer to the target cohorts (docs/benchmarks/label-efficiency.md).
    return [s.model_copy(update={"age_min": 18.0, "age_max": 90.0})
            for s in default_sites(k, 7, resolution, fixed_bias=True)]


def cohort_specs(args) -> list[dict]:
    specs = [{"name": "pretrain", "prefix": "P", "subjects": args.pretrain_subjects, "seed": 101, "disease": None,
              "strength": 0.0}]
    if getattr(args, "suite", False):  # the suite needs the pretraining cohort and its own cohorts only
        specs += suite_specs(args.suite_subjects, args.shift_subjects)
        return _only(specs, getattr(args, "only", None))
    specs.append({"name": "accelerated", "prefix": "A", "subjects": args.target_subjects, "seed": 202,
                  "disease": "accelerated-ageing", "strength": args.strength})
    if args.visual_strength > 0:
        specs.append({"name": "visual", "prefix": "V", "subjects": args.target_subjects, "seed": 303,
                      "disease": "visual", "strength": args.visual_strength})
    return _only(specs, getattr(args, "only", None))


def _only(specs: list[dict], only: str | None) -> list[dict]:
    if not only:
        return specs
    names = {n for n in only.split(",") if n}
    if "suite" in names:
        names |= {s["name"] for s in suite_specs(1, 1)}
    return [s for s in specs if s["name"] in names]


def suite_cohort_name(pattern: str, strength: float) -> str:
    return f"{pattern}-s{strength:g}"


def suite_specs(subjects: int, shift_subjects: int) -> list[dict]:
    """Cohorts of the suite: every pattern x strength (own seed), plus the anatomy-shift test cohort."""
    specs = []
    for i, (pat, p) in enumerate(SUITE_PATTERNS.items()):
        for j, st in enumerate(SUITE_STRENGTHS):
            specs.append({"name": suite_cohort_name(pat, st), "prefix": f"S{i + 1}{j + 1}", "subjects": subjects,
                          "seed": 4000 + 10 * i + j, "disease": pat, "effects": dict(p["effects"]), "strength": st})
    pat, st = SUITE_SHIFT
    specs.insert(min(len(specs), 1 + [x["name"] for x in specs].index(suite_cohort_name(pat, st))), {"name": suite_cohort_name(pat, st) + "-itkhead", "prefix": "SX", "subjects": shift_subjects,
                  "seed": 4900, "disease": pat, "effects": dict(SUITE_PATTERNS[pat]["effects"]), "strength": st,
                  "substrate": "itk-head"})
    # the stronger cohorts first (with the shift cohort), so that an interrupted preparation has one per pattern
    return sorted(specs, key=lambda x: -x["strength"])


def _simulate_chunk(payload):
    """Worker: simulate subjects ``indices`` of one cohort and write them as BIDS NIfTI; returns metadata rows."""
    spec, indices, folder, resolution, k_sites = payload
    import sobre
    from sobre.sim import BrainCohortConfig, BrainSimulator, DiseaseModel

    if spec["disease"] is None:
        dis = None
    elif "effects" in spec:  # a custom pattern (the suite)
        dis = DiseaseModel(name=spec["disease"], effects=spec["effects"], strength=spec["strength"])
    else:
        dis = DiseaseModel.preset(spec["disease"], spec["strength"])
    cfg = BrainCohortConfig(subjects=spec["subjects"], seed=spec["seed"], sites=sites(k_sites, resolution),
                            resolution=resolution, disease=dis, substrate=spec.get("substrate", "colin27"))
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
        stamp = dict(spec, resolution=args.resolution, sites=args.sites, format=4)
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


def build_caches(ws, cfg: dict, only: set[str] | None = None) -> dict:
    """Preprocess every dataset version of the benchmark once (memory-mapped cache in the workspace).

    ``only``: the dataset names to cache (the others are left for the benchmark run).
    """
    from sobre.learn import DataConfig, PreprocessConfig, load_cohort

    pre = PreprocessConfig.model_validate(cfg.get("preprocess", {}))
    out = {}
    datas = [cfg["pretrain_data"]] + [t["data"] for t in cfg["targets"]]
    datas += [t["external_test"]["data"] for t in cfg["targets"] if t.get("external_test")]
    for data in datas:
        dc = DataConfig.model_validate(data)
        if only is not None and dc.dataset not in only:
            continue
        t0 = time.perf_counter()
        c = load_cohort(ws, dc, pre, threads=2)
        dt = time.perf_counter() - t0
        out[f"{dc.dataset}{' where ' + dc.where if dc.where else ''}"] = round(dt, 1)
        log(f"cache {dc.dataset}: {len(c)} images {tuple(c.images.shape[1:])} ready in {dt:.0f} s")
    return out


# ------------------------------------------------------------------------------------ benchmark
def override(cfg: dict, targets: str | None, n_labels: str | None, methods: str | None) -> dict:
    """``--targets``, ``--n-labels``, ``--methods`` (comma-separated) applied to a loaded config, for exploratory
    runs on the same cohorts (recorded in the run's config); returns what was overridden."""
    over = {}
    if targets:
        keep = targets.split(",")
        cfg["targets"] = [t for t in cfg["targets"] if t["name"] in keep]
        over["targets"] = keep
    if n_labels:
        cfg["n_labels"] = over["n_labels"] = [int(n) for n in n_labels.split(",")]
        for t in cfg["targets"]:
            t.pop("n_labels", None)
    if methods:
        cfg["methods"] = over["methods"] = methods.split(",")
        for t in cfg["targets"]:
            t.pop("methods", None)
    return over


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
    if args.targets:
        unknown = sorted(set(args.targets.split(",")) - {t["name"] for t in cfg["targets"]})
        if unknown:
            raise SystemExit(f"--targets: no target {', '.join(unknown)} in {args.config}")
    override(cfg, args.targets, args.n_labels, args.methods)
    if args.suite:  # targets whose cohort was not prepared (an interrupted preparation) are left out, and said
        ready = {p.stem.removeprefix("cohort-") for p in args.out.glob("cohort-*.json")}
        cfg["missing_targets"] = [t["name"] for t in cfg["targets"] if t["data"]["dataset"] not in ready]
        cfg["targets"] = [t for t in cfg["targets"] if t["data"]["dataset"] in ready]
        for t in cfg["targets"]:
            if t.get("external_test") and t["external_test"]["data"]["dataset"] not in ready:
                cfg["missing_targets"].append(f"{t['name']} external test {t['external_test']['name']}")
                t.pop("external_test")
        for m in cfg["missing_targets"]:
            log(f"suite: {m} left out (its cohort is not prepared)")
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
    ap.add_argument("--config", type=Path, default=None,
                    help="benchmark configuration (default: label_efficiency.toml, with --suite label_efficiency_suite.toml)")
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
    ap.add_argument("--suite", action="store_true",
                    help="the suite: prepare the pretraining cohort and the suite's cohorts (disease patterns x "
                         "strengths, plus an ITK-head test cohort), run label_efficiency_suite.toml (or --config); "
                         "results in TAG-summary.md, TAG-tables.json, TAG-results.json (TAG: the config's file name "
                         "after label_efficiency_, e.g. suite)")
    ap.add_argument("--suite-subjects", type=int, default=300, help="subjects per suite cohort")
    ap.add_argument("--shift-subjects", type=int, default=150, help="subjects of the ITK-head (anatomy shift) cohort")
    ap.add_argument("--targets", default=None, help="comma-separated target names of the config to keep")
    ap.add_argument("--methods", default=None, help="comma-separated arms (overrides every target's)")
    ap.add_argument("--n-labels", default=None, help="comma-separated N (overrides every target's)")
    ap.add_argument("--tag", default=None, help="suite: results in OUT/TAG-*.{md,json} (default: from the config's name)")
    ap.add_argument("--only", default=None,
                    help="comma-separated cohorts to prepare (\"suite\" = all suite cohorts); the others are left alone")
    args = ap.parse_args(argv)
    args.config = args.config or (SUITE_CONFIG if args.suite else CONFIG)
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
    caches = build_caches(ws, cfg, None if not args.only else {c["name"] for c in cohort_specs(args)})
    t_cache = time.perf_counter() - t_c
    if args.data_only:
        return 0
    from sobre.learn import label_efficiency

    t1 = time.perf_counter()
    missing = cfg.pop("missing_targets", [])
    res = label_efficiency(cfg, workspace=ws, log=log, config_path=args.config,
                           reuse_pretraining=not args.no_reuse)
    t_bench = time.perf_counter() - t1
    run = res.run
    used = {c["name"] for c in cohort_specs(argparse.Namespace(**{**vars(args), "only": None}))}
    cohorts = {p.stem.removeprefix("cohort-"): json.loads(p.read_text()) for p in args.out.glob("cohort-*.json")
               if p.stem.removeprefix("cohort-") in used}
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
    if args.suite:
        suite_md, suite_json = suite_report(res, missing)
        text = "\n".join(head) + "\n" + suite_md + "\n" + (run.path / "results.md").read_text()
        tag = args.tag or args.config.stem.removeprefix("label_efficiency_").replace("_", "-")  # suite, suite-wide
        (args.out / f"{tag}-summary.md").write_text(text)
        (args.out / f"{tag}-tables.json").write_text(json.dumps(suite_json, indent=1))
        for name in ("results.json", "label_efficiency.png"):
            shutil.copyfile(run.path / name, args.out / f"{tag}-{name}")
        print(text)
        return 0
    text = "\n".join(head) + "\n" + (run.path / "results.md").read_text()
    (args.out / "summary.md").write_text(text)
    for name in ("results.json", "label_efficiency.png"):
        shutil.copyfile(run.path / name, args.out / name)
    print(text)
    return 0


# ---------------------------------------------------------------------------------------- suite
def _pattern_of(target: str) -> tuple[str, float] | None:
    for pat in SUITE_PATTERNS:
        for st in SUITE_STRENGTHS:
            if target == suite_cohort_name(pat, st):
                return pat, st
    return None


def suite_report(res: dict, missing: list[str]) -> tuple[str, dict]:
    """Per pattern (both strengths) and pooled: AUC per arm and N, paired differences to the classical
    baseline and between the two probes, the ROI-baseline gap at N = 100 per cohort, the anatomy shift."""
    import numpy as np
    import pandas as pd

    rows = []
    for name, t in res["targets"].items():
        name = name.removesuffix("-scratch")  # the from-scratch arm at N = 100, same test set and subsets
        ps = _pattern_of(name)
        if ps is None or t["metric"] != "auc":
            continue
        for r in t["records"]:
            rows.append({"cohort": name, "pattern": ps[0], "strength": ps[1], "n": r["n"], "repeat": r["repeat"],
                         "method": r["method"], "auc": r["auc"]})
    df = pd.DataFrame(rows)
    out: dict = {"missing": missing, "patterns": {k: {kk: v for kk, v in p.items()} for k, p in SUITE_PATTERNS.items()},
                 "strengths": list(SUITE_STRENGTHS)}
    lines = ["## Suite", "", "Disease patterns (percent volume change at strength 1; sobre.sim `DiseaseModel.effects`):",
             ""]
    for k, p in SUITE_PATTERNS.items():
        eff = ", ".join(f"{r} {v:+g} %" for r, v in p["effects"].items())
        lines.append(f"- **{k}** ({p['ageing']}, {p['extent']}): {eff}")
    if missing:
        lines += ["", "Not run (cohort not prepared): " + ", ".join(missing)]
    if not len(df):
        return "\n".join(lines + ["", "(no suite target ran)"]) + "\n", out
    methods = [m for m in ("yaware_probe", "simclr_probe", "yaware_finetune", "scratch", "classical")
               if m in set(df["method"])]
    ns = sorted(set(df["n"]))
    cell = df.groupby(["cohort", "pattern", "strength", "method", "n"])["auc"].mean().reset_index()
    lines += ["", "Mean AUC over repeats, per cohort (pattern-strength) and N; **pooled**: mean over the cohorts "
                  "that ran.", "",
              "| cohort | " + " | ".join(f"{NICE_S.get(m, m)} N={n}" for n in ns for m in methods) + " |",
              "|---|" + "---|" * (len(ns) * len(methods))]
    table: dict = {}
    for (c, pat, st), g in cell.groupby(["cohort", "pattern", "strength"], sort=False):
        vals = {(m, n): g[(g["method"] == m) & (g["n"] == n)]["auc"].mean() for m in methods for n in ns}
        table[c] = {f"{m}@{n}": float(v) for (m, n), v in vals.items()}
        lines.append(f"| {c} | " + " | ".join(_f3(vals[(m, n)]) for n in ns for m in methods) + " |")
    for label, g in [(f"pattern {p}", cell[cell["pattern"] == p]) for p in SUITE_PATTERNS if p in set(cell["pattern"])] \
            + [("**pooled**", cell)]:
        vals = {(m, n): g[(g["method"] == m) & (g["n"] == n)]["auc"].mean() for m in methods for n in ns}
        table[label.strip("*")] = {f"{m}@{n}": float(v) for (m, n), v in vals.items()}
        lines.append(f"| {label} | " + " | ".join(_f3(vals[(m, n)]) for n in ns for m in methods) + " |")
    out["auc"] = table
    # paired differences: same cohort, N, repeat (same labelled subjects, same test set)
    wide = df.pivot_table(index=["cohort", "pattern", "n", "repeat"], columns="method", values="auc").reset_index()
    pairs = [(a, b) for a, b in (("yaware_probe", "classical"), ("simclr_probe", "classical"),
                                 ("yaware_probe", "simclr_probe"), ("yaware_probe", "scratch"))
             if a in wide and b in wide]
    lines += ["", "Paired differences of AUC (same labelled subjects, same test set), per N: mean over cohorts of "
                  "each cohort's mean over repeats; SD and range across cohorts; cohorts where the difference "
                  "is > 0.", "",
              "| difference | N | pooled mean | SD across cohorts | min – max | cohorts > 0 |", "|---|---|---|---|---|---|"]
    out["differences"] = {}
    for a, b in pairs:
        for n in ns:
            w = wide[wide["n"] == n]
            per = (w[a] - w[b]).groupby(w["cohort"]).mean().dropna()
            if not len(per):
                continue
            out["differences"][f"{a}-{b}@{n}"] = {"mean": float(per.mean()), "sd": float(per.std(ddof=1)),
                                                   "min": float(per.min()), "max": float(per.max()),
                                                   "positive": int((per > 0).sum()), "cohorts": int(len(per)),
                                                   "per_cohort": {k: float(v) for k, v in per.items()}}
            d = out["differences"][f"{a}-{b}@{n}"]
            lines.append(f"| {NICE_S.get(a, a)} − {NICE_S.get(b, b)} | {n} | {d['mean']:+.3f} | {d['sd']:.3f} | "
                         f"{d['min']:+.3f} – {d['max']:+.3f} | {d['positive']}/{d['cohorts']} |")
    if "classical" in wide and 100 in ns:
        lines += ["", "Gap to the classical ROI baseline at N = 100 on the ageing-related patterns (requirement (c): "
                      "the learned representation at least the baseline's AUC on every one):", "",
                  "| cohort | ageing | classical | y-aware + probe | gap | met |", "|---|---|---|---|---|---|"]
        out["gap_at_100"] = {}
        for c in table:
            ps = _pattern_of(c)
            if ps is None or SUITE_PATTERNS[ps[0]]["ageing"] == "does not age":
                continue
            cl, ya = table[c].get("classical@100"), table[c].get("yaware_probe@100")
            if cl is None or ya is None or np.isnan(cl) or np.isnan(ya):
                continue
            out["gap_at_100"][c] = {"classical": cl, "yaware_probe": ya, "gap": ya - cl, "met": bool(ya >= cl)}
            lines.append(f"| {c} | {SUITE_PATTERNS[ps[0]]['ageing']} | {cl:.3f} | {ya:.3f} | {ya - cl:+.3f} | "
                         f"{'yes' if ya >= cl else 'no'} |")
    shift = {n: t["external_test"] for n, t in res["targets"].items() if t.get("external_test")}
    if shift:
        lines += ["", "Anatomy shift: trained on Colin27-built subjects, scored on their own test set and on subjects "
                      "built on the ITK head (never trained on). Loss = internal − external AUC of the same fitted "
                      "model, mean ± SD over repeats.", "",
                  "| target | external | method | N | internal AUC | external AUC | loss |", "|---|---|---|---|---|---|---|"]
        out["anatomy_shift"] = shift
        for n_, e in shift.items():
            for m, per in e["summary"].items():
                for n, c in sorted(per.items(), key=lambda kv: int(kv[0])):
                    sd = f" ± {c['loss_sd']:.3f}" if c.get("loss_sd") is not None else ""
                    lines.append(f"| {n_} | {e['name']} ({e['n_subjects']}) | {NICE_S.get(m, m)} | {n} | "
                                 f"{c['internal_mean']:.3f} | {c['mean']:.3f} | {c['loss_mean']:+.3f}{sd} |")
    return "\n".join(lines) + "\n", out


def _f3(v) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


NICE_S = {"yaware_probe": "y-aware + probe", "simclr_probe": "SimCLR + probe", "classical": "classical",
          "scratch": "scratch", "yaware_finetune": "y-aware + fine-tune"}


if __name__ == "__main__":
    sys.exit(main())

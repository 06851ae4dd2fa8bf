"""Check (SIMULATED): does a site eraser fitted on the pretraining cohort transfer to new subjects?

Written to test why the site-robust arm read chance on held-out pretraining subjects but 0.71-0.83 on the
accelerated target's test subjects (data format 3 of bench_label_efficiency.py, where each cohort's seed drew
its own bias fields for the "same" sites). It simulates N new healthy subjects (indices 1000..) with the
pretraining cohort's seed (101: the same bias fields as pretraining) and with the accelerated cohort's seed
(202: other bias fields), takes the features of two pretraining runs of that workspace (plain y-aware and
adversarial), fits LEACE on all pretraining subjects' features and reads a 5-fold site probe on each new set.

    .venv/bin/python bench/check_site_bias.py [N] [--ws WS] [--runs yaware=RUN,adv=RUN] [--format3]

Measured with --format3 on 2026-12-02 17:30-17:45 UTC (N = 150, load 3-4; format-3 workspace, runs 20261202-150047-pretrain-a6ee93
and 20261202-151108-pretrain-200129): site balanced accuracy (chance 0.20) raw / after LEACE:
y-aware, seed 101 0.781 / 0.196, seed 202 0.713 / 0.673; adversarial, seed 101 0.914 / 0.213, seed 202 0.805 / 0.588.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    from bench_label_efficiency import sites

    from sobre.catalog import Workspace
    from sobre.learn import _harmonize, load_model
    from sobre.learn._benchmark import _cv_site_probe
    from sobre.learn._config import DataConfig
    from sobre.learn._data import load_cohort
    from sobre.learn._transfer import extract_features
    from sobre.sim import BrainCohortConfig, BrainSimulator

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", type=int, nargs="?", default=150)
    ap.add_argument("--ws", default=str(HERE / "out" / "label-efficiency" / "ws"))
    ap.add_argument("--runs", default="yaware=20261202-150047-pretrain-a6ee93,adv=20261202-151108-pretrain-200129")
    ap.add_argument("--format3", action="store_true",
                    help="the sites of data format 3 (bias field drawn from each cohort's seed), as measured above")
    ap.add_argument("--out", default=None, help="JSON results (default: print only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    ws = Workspace.open(args.ws)
    runs = dict(x.split("=", 1) for x in args.runs.split(","))
    site_cfgs = sites(5, 2.0)
    if args.format3:
        site_cfgs = [s.model_copy(update={"bias_seed": None}) for s in site_cfgs]
    n = args.n
    sets = {}
    for seed in (101, 202):
        sim = BrainSimulator(BrainCohortConfig(subjects=1000 + n, seed=seed, sites=site_cfgs, resolution=2.0,
                                               disease=None))
        imgs, site = [], []
        t0 = time.time()
        for i in range(1000, 1000 + n):
            img, meta, _ = sim.subject(i)
            imgs.append(img)
            site.append(meta["site"])
        print(f"seed {seed}: simulated {n} in {time.time() - t0:.0f} s", flush=True)
        sets[seed] = (imgs, np.array(site))
    res = {}
    for name, rid in runs.items():
        m = load_model(rid, workspace=ws)
        enc = m.encoder.eval()
        coh = load_cohort(ws, DataConfig(dataset="pretrain"), m.preprocess)
        xp, _ = extract_features(enc, coh.images, np.arange(len(coh)), batch_size=32, bf16=False, channels_last=True)
        er = _harmonize.leace_fit(xp, coh.table["site"].astype(str).to_numpy())
        for seed, (imgs, site) in sets.items():
            x = np.stack([m.prepare(im)[0] for im in imgs]).astype(np.float32)
            with torch.no_grad():
                f = enc(torch.from_numpy(x)).numpy()
            fe = er(f)
            r = {"raw": _cv_site_probe(f, site, 0)["balanced_accuracy"],
                 "leace": _cv_site_probe(fe, site, 0)["balanced_accuracy"]}
            res[f"{name}/seed{seed}"] = r
            print(name, seed, r, flush=True)
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: site-robust representations on the label-efficiency cohorts (SIMULATED brain MRI, 5 sites).

Runs ``sobre.learn.label_efficiency`` with ``bench/configs/label_efficiency_site.toml`` on the workspace
that ``bench/bench_label_efficiency.py`` prepared (``--out``, default ``bench/out/label-efficiency``; its
datasets ``pretrain``, ``accelerated``, ``visual``): SimCLR, y-aware and y-aware with the site as a
nuisance (``[yaware_site]``) + probe, y-aware + ComBat (fitted on each repeat's labelled subjects) +
probe, the classical baseline; site probe per representation on the pretraining subjects held out from
pretraining; leave-one-site-out AUC at N = 100.

It neither simulates nor deletes data. Results: ``OUT/site-TAG.md`` and ``OUT/site-TAG.json`` (and the
benchmark run folder in the workspace). ``--yaware-site '{"method": "conditional"}'``, ``--n-labels``,
``--repeats``, ``--targets``, ``--methods`` override the configuration for small exploratory runs.

Run it under the shared benchmark lock: ``flock /tmp/sobre-bench.lock .venv/bin/python bench/bench_site_robust.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

OUT = HERE / "out" / "label-efficiency"
CONFIG = HERE / "configs" / "label_efficiency_site.toml"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the prepared workspace (OUT/ws)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--tag", default="run", help="results go to OUT/site-TAG.md and OUT/site-TAG.json")
    ap.add_argument("--yaware-site", default=None, help="JSON merged into [yaware_site]")
    ap.add_argument("--n-labels", default=None, help="comma-separated N (overrides every target's)")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None, help="another seed: pretraining, test set and subsets anew")
    ap.add_argument("--targets", default=None, help="comma-separated target names to keep")
    ap.add_argument("--methods", default=None, help="comma-separated arms (overrides every target's)")
    args = ap.parse_args(argv)

    ws_dir = args.out / "ws"
    if not (ws_dir / "sobre.toml").exists():
        print(f"error: no prepared workspace in {ws_dir} (expected {ws_dir / 'sobre.toml'}); run "
              f"bench/bench_label_efficiency.py --data-only --out {args.out} first", file=sys.stderr)
        return 2
    try:
        cfg = tomllib.loads(args.config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"error: cannot read the configuration {args.config}: {exc}", file=sys.stderr)
        return 2
    from bench_label_efficiency import default_atlas, override

    over = {}
    if args.yaware_site:
        try:
            extra = json.loads(args.yaware_site)
        except json.JSONDecodeError as exc:
            print(f"error: --yaware-site is not JSON ({exc}); expected e.g. '{{\"method\": \"conditional\"}}'",
                  file=sys.stderr)
            return 2
        cfg["yaware_site"] = {**cfg.get("yaware_site", {}), **extra}
        over["yaware_site"] = cfg["yaware_site"]
    over.update(override(cfg, args.targets, args.n_labels, args.methods))
    if args.repeats:
        cfg["repeats"] = over["repeats"] = args.repeats
    if args.seed is not None:
        cfg["seed"] = over["seed"] = args.seed

    atlas = default_atlas()
    if atlas:
        cfg.setdefault("baseline", {})["atlas"] = str(atlas)

    from sobre.catalog import Workspace
    from sobre.errors import SobreError
    from sobre.learn import label_efficiency

    ws = Workspace.open(ws_dir)
    load_before = uptime()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.perf_counter()
    try:
        res = label_efficiency(cfg, workspace=ws, log=log, config_path=args.config)
    except SobreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    load_after = uptime()
    run = res.run
    head = ["# Site-robust representations (SIMULATED brain MRI, 5 sites)", "",
            f"Started {started}; wall time {wall / 60:.1f} min; {os.cpu_count()} CPU cores shared with other "
            f"work, torch threads {res['runtime']['threads']}.",
            f"Load before: `{load_before}`.", f"Load after: `{load_after}`.",
            f"Configuration `{args.config.relative_to(HERE.parent) if args.config.is_relative_to(HERE.parent) else args.config}`"
            + (f", overridden: `{json.dumps(over)}`" if over else "") + ".",
            f"Run folder: `{run.path}`.", ""]
    text = "\n".join(head) + "\n" + (run.path / "results.md").read_text()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"site-{args.tag}.md").write_text(text)
    shutil.copyfile(run.path / "results.json", args.out / f"site-{args.tag}.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

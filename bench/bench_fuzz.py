"""Fuzz benchmark: mutants of real sample files through info, export, deid, ingest and the C-STORE listener.

Goal (core issue): at least 10,000 mutants, 0 internal errors, 0 tracebacks, 0 hangs over 5 s, peak
memory under 1 GB per file, every exit-0 file decodes, a workspace ingested beforehand is unchanged
(same series, same files, same hashes); the listener always answers with a status and never crashes.

The mutants are deterministic (``tests/fuzz/mutants.py``: source file + mutation kind + seed); the
runner (``tests/fuzz/runner.py``) handles them in long-lived worker processes, one stage at a time,
with a time limit per stage and the resident memory watched from outside. Every source is also run
unmodified first ("controls"): failures there are not made by a mutation.

Usage::

    .venv/bin/python bench/bench_fuzz.py                       # 10,000 mutants, 2 workers
    .venv/bin/python bench/bench_fuzz.py --n 200 --workers 1   # a quick look
    .venv/bin/python bench/bench_fuzz.py --src /path/to/other/checkout/src   # test another sobre

Writes ``bench/out/fuzz.json`` (every mutant's outcome per stage, failure classes with examples and
how to regenerate them) and copies one failing mutant file per (stage, class) into
``bench/out/fuzz-examples/``. Exit status 0 when no failure was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of mutants (default 10,000)")
    ap.add_argument("--seed", type=int, default=20241125, help="campaign seed (mutant i is the same for any --n)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per stage before a hang is declared")
    ap.add_argument("--memory-mb", type=float, default=1024.0, help="resident memory limit per worker (MB)")
    ap.add_argument("--no-controls", action="store_true", help="skip the unmodified sources")
    ap.add_argument("--src", help="a sobre source folder (…/src) to test instead of the installed one")
    ap.add_argument("--label", help="what code is tested, written into the report (e.g. 'HEAD abc1234')")
    ap.add_argument("--json", default=str(ROOT / "bench" / "out" / "fuzz.json"), help="report file")
    ap.add_argument("--examples", default=str(ROOT / "bench" / "out" / "fuzz-examples"),
                    help="folder for one failing mutant file per (stage, class); '' for none")
    ap.add_argument("--workdir", help="keep the work folder here (default: a temporary folder, removed)")
    ns = ap.parse_args(argv)

    from fuzz import mutants
    from fuzz.runner import Config, run, summary_text

    if not mutants.sources_available():
        print("no sample data: run `sobre samples fetch` (or `make data`)", file=sys.stderr)
        return 2
    env = {}
    if ns.src:
        env["PYTHONPATH"] = str(Path(ns.src).resolve())
        os.environ["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + os.environ.get("PYTHONPATH", "")
    if ns.examples:
        shutil.rmtree(ns.examples, ignore_errors=True)
    cfg = Config(n=ns.n, seed=ns.seed, workers=ns.workers, stage_timeout=ns.timeout, memory_limit_mb=ns.memory_mb,
                 controls=not ns.no_controls, keep_examples=ns.examples or None, workdir=ns.workdir, env=env,
                 code_label=ns.label)
    rep = run(cfg)
    print(summary_text(rep))
    out = Path(ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1, default=str))
    print(f"\nreport: {out}" + (f"; failing mutant files: {ns.examples}" if ns.examples else ""))
    return 1 if rep["mutants"]["with_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

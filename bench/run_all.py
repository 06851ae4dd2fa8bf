"""Run every benchmark in this folder, one after the other, and print their tables.

Usage: ``.venv/bin/python bench/run_all.py [NAME ...]`` (names like ``load`` for bench_load.py).
Each benchmark measures Sobre and the named peers in the same run and prints ratios; results are
also written to ``bench/out/<name>.json`` where the script supports it.
``fuzz`` (bench_fuzz.py) feeds 10,000 mutants of the real sample files through info, export, deid,
ingest and the listener (about 15 min on 2 cores) and exits 1 while any failure class remains.
``export`` (bench_export.py) times ``sobre export`` of the 300-slice CT of ``load`` against dcm2niix as
whole processes, .nii and .nii.gz, on tmpfs and disk (about 5 min; 11 paired runs each) and exits 1 if
the two outputs differ in voxels or affine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"--- {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

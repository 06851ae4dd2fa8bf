"""Benchmark: catalogue 10,000 small DICOM files with ``Workspace.ingest``.

Run ``.venv/bin/python bench/bench_index.py`` from the repository root.

The data set (100 series × 100 single-frame slices of 64×64, CT and MR, with realistic headers:
patient id/sex/age or birth date, size, weight, institution, scanner, study date) is generated once
with ``sobre.write_dicom_series`` into ``bench/out/index10k/`` (gitignored) and reused afterwards.

Timed, in the same process, best of ``--repeat`` (default 3) interleaved runs:

1. a bare header-reading loop, ``pydicom.dcmread(path, stop_before_pixels=True)`` over every file
   (one process: the floor for "look at every header once"; no hashing, no geometry, no database);
2. ``Workspace.ingest`` into a fresh workspace (SQLite): walk, SHA-256 of every file, header scan
   in worker processes, catalogue writes, and assembly of the 100 volumes; also its CPU time over
   all processes, which says what 2 cores would give if nothing else ran on them;
3. a second ``Workspace.ingest`` of the same folder (every file already known: one stat per file).

The page cache is warmed by an untimed read of every file first. Target: >= 1,000 files/s on
2 cores for step 2. The 1-minute load average is printed: on a shared machine, other processes
take cores and the timings with them.

Options: ``--series N --slices M`` change the data set size, ``--workers W`` the header-reading
processes (default: as ``sobre ingest``, i.e. 2), ``--repeat R``, ``--json`` prints the numbers as
JSON, ``--profile`` runs the first ingest under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TARGET_FILES_PER_S = 1000.0


def generate(root: Path, n_series: int, n_slices: int, size: int = 64) -> list[Path]:
    """Write the data set (deterministic: fixed seed and UID seeds); reuse it when complete."""
    import sobre

    stamp = root / ".complete"
    expected = n_series * n_slices
    if stamp.exists() and stamp.read_text().strip() == str(expected):
        return sorted(p for p in root.rglob("*.dcm"))
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(20240601)
    sites = ["Hopital Nord", "Clinique Sud", "CHU Est", "Centre Ouest"]
    t0 = time.perf_counter()
    for s in range(n_series):
        modality = "MR" if s % 2 else "CT"
        subject = f"BENCH{s // 2:04d}"  # two series (one CT, one MR) per subject
        spacing = (0.9, 0.9, 1.5) if modality == "MR" else (0.7, 0.7, 1.25)
        base = rng.normal(0, 1, (size, size, n_slices)).astype(np.float32)
        arr = (base * 200 + (0 if modality == "CT" else 400)).astype(np.int16)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = rng.uniform(-100, 100, 3)
        img = sobre.Image(arr, affine, modality=modality)
        height = float(np.round(rng.uniform(1.5, 1.95), 2))
        meta = {
            "patient_id": subject, "patient_sex": "F" if (s // 2) % 2 else "M",
            "study_date": f"2023{1 + s % 12:02d}{1 + s % 28:02d}",
            "patient_size_m": height, "patient_weight_kg": float(np.round(rng.uniform(50, 110), 1)),
            "institution": sites[s % len(sites)],
            "manufacturer": ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips"][s % 3],
            "model": ["Skyra", "Discovery", "Ingenia"][s % 3],
            "series_description": f"{modality} bench series {s}", "series_number": s + 1,
            "body_part": "HEAD" if modality == "MR" else "CHEST",
        }
        if s % 4 == 3:  # some headers carry a birth date instead of PatientAge
            meta["patient_birth_date"] = f"19{50 + s % 40:02d}0615"
        else:
            meta["patient_age"] = f"{20 + (s * 7) % 60:03d}Y"
        if modality == "MR":
            meta["field_strength"] = 3.0 if s % 3 else 1.5
        sobre.write_dicom_series(img, root / f"{subject}" / f"series{s:03d}", meta=meta, modality=modality,
                                 uid_seed=f"bench-index-{s}", filename="IM{index:05d}.dcm")
    stamp.write_text(str(expected))
    print(f"generated {expected} files in {time.perf_counter() - t0:.1f} s into {root}", file=sys.stderr)
    return sorted(p for p in root.rglob("*.dcm"))


def bare_dcmread(paths: list[Path]) -> float:
    import pydicom

    t0 = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p, stop_before_pixels=True)
    return time.perf_counter() - t0


def _cpu() -> float:
    """CPU seconds of this process and of its joined children (the header-reading workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _stop_workers(module) -> None:
    """Join the catalog's header-reading processes (also for older catalog code, to compare)."""
    stop = getattr(module, "_shutdown_pool", None)
    if stop is not None:
        stop(wait=True)
    elif getattr(module, "_POOL", None) is not None:
        module._POOL[1].shutdown(wait=True)
        module._POOL = None


def _ingest_once(data: Path, workers: int | None, profile: bool = False):
    """(seconds, CPU seconds of all processes, report, re-ingest seconds, summary) on a fresh workspace."""
    from sobre.catalog import Workspace, _workspace

    tmp = Path(tempfile.mkdtemp(prefix="sobre-bench-ws-"))
    try:
        ws = Workspace.init(tmp / "ws")
        _stop_workers(_workspace)
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        c0 = _cpu()
        t0 = time.perf_counter()
        report = ws.ingest([data], workers=workers)
        dt = time.perf_counter() - t0
        if prof is not None:
            import pstats

            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        _stop_workers(_workspace)  # joins the workers, so that their CPU time is counted
        cpu = _cpu() - c0
        t0 = time.perf_counter()
        again = ws.ingest([data], workers=workers)
        t_again = time.perf_counter() - t0
        summary = ws.summary()
        ws.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dt, cpu, report, again, t_again, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each step; the best is reported")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    n_total = args.series * args.slices
    data = OUT / (f"index{n_total // 1000}k" if n_total >= 1000 and n_total % 1000 == 0 else f"index{n_total}")
    paths = generate(data, args.series, args.slices)
    n = len(paths)
    for p in paths:  # warm the page cache (untimed)
        with open(p, "rb") as fh:
            fh.read()
    load_before = os.getloadavg()[0]
    bare, runs = [], []
    for i in range(max(1, args.repeat)):  # interleaved, so that both see the same machine load
        bare.append(bare_dcmread(paths))
        runs.append(_ingest_once(data, args.workers, profile=args.profile and i == 0))
    load_after = os.getloadavg()[0]
    t_bare = min(bare)
    best = min(runs, key=lambda r: r[0])
    t_ingest, cpu_ingest, report, again, t_again, summary = best
    ok = all(r.new == n and not r.skipped and r.series_new == args.series and not r.problems
             and a.known == n and a.new == 0 and s["files"] == n and s["series"] == args.series
             for _, _, r, a, _, s in runs)
    cpu_ms = 1000 * min(r[1] for r in runs) / n
    res = {
        "files": n, "series": args.series, "cores": os.cpu_count(), "repeat": len(runs),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "bare_dcmread_s": round(t_bare, 3), "bare_dcmread_files_per_s": round(n / t_bare, 1),
        "ingest_s": round(t_ingest, 3), "ingest_files_per_s": round(n / t_ingest, 1),
        "ingest_s_all_runs": [round(r[0], 3) for r in runs],
        "ingest_vs_bare_dcmread": round(t_ingest / t_bare, 2),
        "ingest_cpu_ms_per_file": round(cpu_ms, 3),
        "ingest_files_per_s_cpu_bound_2_cores": round(2000 / cpu_ms, 1),
        "reingest_known_s": round(t_again, 3), "reingest_files_per_s": round(n / t_again, 1),
        "target_files_per_s": TARGET_FILES_PER_S, "meets_target": n / t_ingest >= TARGET_FILES_PER_S,
        "catalog_ok": ok,
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{n} files, {args.series} series, {res['cores']} cores, best of {len(runs)} "
              f"(1-min load average {load_before:.1f} -> {load_after:.1f})")
        print(f"bare pydicom.dcmread(stop_before_pixels=True) loop:  {t_bare:7.2f} s  "
              f"{res['bare_dcmread_files_per_s']:8.0f} files/s  (one process)")
        print(f"Workspace.ingest, fresh SQLite workspace:           {t_ingest:7.2f} s  "
              f"{res['ingest_files_per_s']:8.0f} files/s  ({res['ingest_vs_bare_dcmread']:.2f}x the bare loop's "
              f"time; runs: {', '.join(f'{r[0]:.2f}' for r in runs)} s)")
        print(f"  CPU time, all processes: {cpu_ms:.3f} ms/file -> "
              f"{res['ingest_files_per_s_cpu_bound_2_cores']:.0f} files/s when 2 cores are all ours")
        print(f"re-ingest, every file already known:                {t_again:7.2f} s  "
              f"{res['reingest_files_per_s']:8.0f} files/s")
        print(f"target >= {TARGET_FILES_PER_S:.0f} files/s: {'met' if res['meets_target'] else 'NOT met'}; "
              f"catalog {'complete' if ok else 'INCOMPLETE'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

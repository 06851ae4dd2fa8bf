"""Benchmark: ``sobre export`` of a 300-slice 512×512 CT series to NIfTI against ``dcm2niix``, whole processes.

Run ``.venv/bin/python bench/bench_export.py`` from the repository root (about 5 minutes on 2 cores;
``--runs 5`` for a quick look, ``--all-levels`` adds the level-6 comparisons, another ~5 minutes).

The series is the one of ``bench/bench_load.py`` (built once into ``bench/out/ct300/``, reused): the
pyradiomics lung CT interpolated to 300 slices of 512×512, stored as most CT scanners store it:
uint16, BitsStored 12, RescaleIntercept -1024, Explicit VR Little Endian, one file per slice.

What is timed: each command as a whole process, as a user runs it (interpreter start, imports, reading
the 300 files, writing the file), from ``fork`` to ``wait``; its CPU time (user + system) and peak
memory come from ``wait4``. The commands of a comparison run in turn, A B A B ..., after one untimed
warm-up run each (which also puts the series in the page cache), so that a change in the machine's
load hits both alike; medians of ``--runs`` (default 11) pairs are printed, with the median of the
pairwise ratios. Every output is deleted (untimed) before the next run, so no run overwrites a file.
Outputs go to a tmpfs (``/dev/shm``) and to the disk holding ``bench/out/`` (no fsync by either
tool: the disk figures include the page cache's copy, not the device's). Python may cache bytecode
for Sobre's runs (under ``bench/out/pycache``), as it does for any user of a pip-installed package: a
development environment with ``PYTHONDONTWRITEBYTECODE=1`` (as on our shared machine) recompiles every
Sobre module from source at each start, ~0.1 s more; ``--no-bytecode-cache`` measures that.

Comparisons (same output kind each):

* ``.nii``: ``sobre export SERIES --to x.nii`` vs ``dcm2niix -b n -z n`` (-b n: no JSON sidecar,
  which Sobre does not write either).
* ``.nii.gz``, each tool's default: Sobre compresses with ISA-L level 1 when the ``isal`` package is
  installed, else zlib level 1, in ``min(4, cores)`` threads, as it writes; ``dcm2niix -z y`` writes the
  .nii, then runs ``pigz -b 960 -n -f -6`` on it (level 6, one thread per core) when pigz is on PATH,
  else compresses in one thread with its built-in miniz (level 6). What each used is printed.
* ``.nii.gz``, like with like: zlib level 1 in Sobre vs ``dcm2niix -z y -1`` (pigz -1, zlib's level 1,
  threads); with ``--all-levels`` also level 6 both (Sobre's zlib 6 vs pigz -6) and dcm2niix's internal
  compressor (``-z i``, miniz level 6, one thread) vs Sobre's zlib level 6 in one thread.
  Sobre's backend and level are set for a run by a two-line ``python -c`` wrapper around the same
  ``sobre.cli.main`` (the ``sobre`` script is that too).

Also timed, against ``python -c pass``: ``sobre --version`` and ``python -c "import sobre.cli"``.

Correctness, checked once on each kind of output before timing: both files read with nibabel (which
applies dcm2niix's ``scl_slope``/``scl_inter``: it stores the 12-bit stored values as int16 with
scl_inter -1024, Sobre stores int16 HU with slope 1 and intercept 0), brought to the closest
canonical (RAS) axis order (dcm2niix flips the rows, Sobre keeps the DICOM order with a negative
j step), must hold the same voxel values, and their affines must agree within 1e-3 mm (largest
difference of a matrix element, and of a corner voxel's centre).

``--sobre-src DIR`` runs Sobre from another checkout's ``src`` (e.g. a ``git worktree`` of an older
commit) with this venv, to measure before/after. Results also go to ``bench/out/export.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

from bench_load import SERIES, ensure_series  # the same series, built the same way

PY = sys.executable
SOBRE_SCRIPT = str(Path(PY).with_name("sobre"))
# the same entry point as the ``sobre`` script, with the .nii.gz backend and level set first
SOBRE_WITH = ("import sys; from sobre.image import _formats as f; f.GZIP_BACKEND, f.GZIP_LEVEL = '{backend}', {level}; "
              "f.GZIP_THREADS = {threads}; from sobre.cli import main; sys.exit(main(sys.argv[1:]))")


# --------------------------------------------------------------------------- running
class Cmd:
    """A command writing ``out_name`` into a folder (``{out}`` in argv is that folder)."""

    def __init__(self, label: str, argv: list[str], out_name: str | None = None, env: dict | None = None):
        self.label, self.argv, self.out_name, self.env = label, argv, out_name, env

    def run(self, folder: Path | None) -> tuple[float, float, int, int]:
        """(wall s, CPU s user+system, peak RSS bytes, exit status) of one whole process."""
        argv = [a.replace("{out}", str(folder)) for a in self.argv]
        env = None
        if self.env is not None:  # a value None removes the variable
            env = {k: v for k, v in {**os.environ, **self.env}.items() if v is not None}
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no command running (dcm2niix's pigz too)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.perf_counter() - t
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0,):
            raise RuntimeError(f"{self.label} exited {proc.returncode}: {' '.join(argv)}\n{err[-2000:]}")
        return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, proc.returncode


def _clean(folder: Path | None) -> None:
    if folder is None:
        return
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()


def paired(a: Cmd, b: Cmd, folder: Path | None, runs: int) -> dict:
    """A and B in turn, one warm-up each, then ``runs`` pairs; medians and the median pairwise ratio."""
    rows = {a.label: [], b.label: []}
    for i in range(runs + 1):
        for c in (a, b):
            _clean(folder)
            r = c.run(folder)
            if i:
                rows[c.label].append(r)
    _clean(folder)

    def med(label, k):
        return statistics.median(r[k] for r in rows[label])

    ratios = [ra[0] / rb[0] for ra, rb in zip(rows[a.label], rows[b.label])]
    cpu_ratios = [ra[1] / rb[1] for ra, rb in zip(rows[a.label], rows[b.label]) if rb[1] > 0]
    return {
        "a": a.label, "b": b.label, "runs": runs,
        "a_wall_s": med(a.label, 0), "b_wall_s": med(b.label, 0),
        "a_wall_min_s": min(r[0] for r in rows[a.label]), "b_wall_min_s": min(r[0] for r in rows[b.label]),
        "a_cpu_s": med(a.label, 1), "b_cpu_s": med(b.label, 1),
        "a_peak_mib": med(a.label, 2) / 2**20, "b_peak_mib": med(b.label, 2) / 2**20,
        "ratio_wall_median": statistics.median(ratios),
        "ratio_wall_min": min(ratios), "ratio_wall_max": max(ratios),
        "ratio_cpu_median": statistics.median(cpu_ratios) if cpu_ratios else None,
    }


def _print_pair(where: str, r: dict) -> None:
    print(f"  [{where}] {r['a']}: {r['a_wall_s']:.3f} s (cpu {r['a_cpu_s']:.3f}, peak {r['a_peak_mib']:.0f} MiB)"
          f"  vs  {r['b']}: {r['b_wall_s']:.3f} s (cpu {r['b_cpu_s']:.3f}, peak {r['b_peak_mib']:.0f} MiB)")
    print(f"  [{where}] ratio (median of {r['runs']} pairs): {r['ratio_wall_median']:.2f}x "
          f"(pairs {r['ratio_wall_min']:.2f}-{r['ratio_wall_max']:.2f}; cpu {r['ratio_cpu_median']:.2f}x)",
          flush=True)


# --------------------------------------------------------------------------- correctness
def _canonical(path: Path):
    import nibabel as nib
    import numpy as np

    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(img.dataobj), img.affine, img


def _dicom_corners(series: Path):
    """RAS centres of the 8 corner voxels, from the first and last file's ImagePositionPatient."""
    import numpy as np
    import pydicom

    files = sorted(p for p in series.iterdir() if p.suffix == ".dcm")
    first, last = (pydicom.dcmread(f, stop_before_pixels=True) for f in (files[0], files[-1]))
    row_dir, col_dir = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
    d_row, d_col = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    pts = []
    for ds in (first, last):
        ipp = np.array(ds.ImagePositionPatient, float)
        for c in (0, int(first.Columns) - 1):
            for r in (0, int(first.Rows) - 1):
                pts.append(ipp + c * d_col * row_dir + r * d_row * col_dir)
    return np.array(pts) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS


def _corner_error(aff, shape, truth) -> float:
    """Largest distance (mm) from a DICOM corner centre to the nearest corner centre of the NIfTI."""
    import numpy as np

    idx = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]).T
    pts = (aff @ idx)[:3].T
    return float(max(np.min(np.linalg.norm(pts - t, axis=1)) for t in truth))


def check_same(sobre_file: Path, d2n_file: Path, series: Path = SERIES) -> dict:
    """Same voxels (after dcm2niix's scaling) and affines within 1e-3 mm, in canonical (RAS) order."""
    import numpy as np

    a, aff_a, _ = _canonical(sobre_file)
    b, aff_b, _ = _canonical(d2n_file)
    same_shape = a.shape == b.shape
    same_values = bool(same_shape and np.array_equal(a, b))
    n_diff = int(np.count_nonzero(a != b)) if same_shape else None
    element = float(np.max(np.abs(aff_a - aff_b)))
    truth = _dicom_corners(series)
    return {
        "same_shape": same_shape, "same_values": same_values, "voxels_differing": n_diff,
        "affine_max_element_diff": element,
        "affine_max_corner_diff_mm": _corner_error(aff_a, a.shape, (aff_b @ np.array(
            [[i, j, k, 1.0] for i in (0, b.shape[0] - 1) for j in (0, b.shape[1] - 1)
             for k in (0, b.shape[2] - 1)]).T)[:3].T),
        "sobre_corner_vs_dicom_mm": _corner_error(aff_a, a.shape, truth),
        "dcm2niix_corner_vs_dicom_mm": _corner_error(aff_b, b.shape, truth),
        "ok": same_values and element <= 1e-3,
        "sobre_storage": nib_header(sobre_file), "dcm2niix_storage": nib_header(d2n_file),
    }


def _check_in_subprocess(sobre_file: Path, d2n_file: Path) -> dict:
    """check_same in a child process, so that this process stays small (a child's peak memory as
    reported by wait4 starts from its parent's at fork)."""
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from bench_export import check_same; "
            f"print(json.dumps(check_same(__import__('pathlib').Path(sys.argv[1]), __import__('pathlib').Path(sys.argv[2]))))")
    run = subprocess.run([PY, "-c", code, str(sobre_file), str(d2n_file)], capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def nib_header(path: Path) -> str:
    import nibabel as nib

    img = nib.load(str(path))
    slope, inter = img.dataobj.slope, img.dataobj.inter
    return f"{img.get_data_dtype()} scl_slope {slope:g} scl_inter {inter:g}, {path.stat().st_size / 1e6:.1f} MB"


# --------------------------------------------------------------------------- main
def _tmpfs() -> Path | None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts if len(line.split()) > 2):
        return Path("/dev/shm")
    return None


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _sobre_gzip(sobre_src: str | None) -> str:
    env = None if sobre_src is None else {**os.environ, "PYTHONPATH": sobre_src}
    code = "from sobre.image import _formats as f; print(f.gzip_backend())"
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env,
                          check=False).stdout.strip() or "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=11, help="timed pairs per comparison (default 11)")
    ap.add_argument("--all-levels", action="store_true", help="also compare at gzip level 6 (pigz and miniz)")
    ap.add_argument("--only", choices=["nii", "gz", "import", "check"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--where", choices=["tmpfs", "disk"], action="append", help="output locations (default both)")
    ap.add_argument("--sobre-src", help="run Sobre from this src folder (PYTHONPATH), e.g. an older worktree's src")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run Sobre as the environment says (PYTHONDONTWRITEBYTECODE=1 makes Python compile every "
                         "module's source at each start); by default Python may cache bytecode, as it does for a "
                         "user (a pip install compiles it), under bench/out/pycache")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the output folders
    parts = set(args.only or ["nii", "gz", "import", "check"])

    d2n = shutil.which("dcm2niix")
    if d2n is None:
        print("dcm2niix is not installed (apt-get install dcm2niix): nothing to compare with")
        return 1
    desc = ensure_series()
    series = str(SERIES)
    files = sorted(p for p in SERIES.iterdir() if p.suffix == ".dcm")
    print(f"series: {SERIES} ({len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB): {desc}")
    pigz = shutil.which("pigz")
    d2n_version = subprocess.run([d2n, "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip().splitlines()
    env: dict = {}
    if args.sobre_src is not None:
        env["PYTHONPATH"] = str(Path(args.sobre_src).resolve())
    if not args.no_bytecode_cache:
        env.update(PYTHONDONTWRITEBYTECODE=None, PYTHONPYCACHEPREFIX=str(OUT / "pycache"))
    bytecode = ("compiled from source at every start (PYTHONDONTWRITEBYTECODE=1)"
                if os.environ.get("PYTHONDONTWRITEBYTECODE") and args.no_bytecode_cache
                else "cached (as after a pip install)")
    sobre_gz = _sobre_gzip(env.get("PYTHONPATH"))
    print(f"dcm2niix: {d2n} ({d2n_version[-1] if d2n_version else '?'}); pigz: {pigz or 'not installed'}; "
          f"cores: {os.cpu_count()}; load average at start: {_load()}")
    print(f"sobre: {SOBRE_SCRIPT}{' with PYTHONPATH=' + env['PYTHONPATH'] if 'PYTHONPATH' in env else ''}; "
          f"Python bytecode {bytecode}; .nii.gz default: {sobre_gz}, {min(4, os.cpu_count() or 1)} threads")
    d2n_gz_default = f"pigz ({pigz}), level 6, {os.cpu_count()} threads" if pigz else \
        "built-in miniz, level 6, one thread"
    print(f"dcm2niix -z y: {d2n_gz_default}")
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of a timed process, from wait4, is at least this benchmark's own ({own:.0f} MiB): "
          "Linux counts the parent's memory at fork")

    places = []
    shm = _tmpfs()
    wanted = set(args.where or ["tmpfs", "disk"])
    if "tmpfs" in wanted:
        if shm is None:
            print("no tmpfs at /dev/shm: tmpfs runs skipped")
        else:
            places.append(("tmpfs", shm / f"sobre-bench-export-{os.getpid()}"))
    if "disk" in wanted:
        places.append(("disk", OUT / f"export-{os.getpid()}"))
    for _, folder in places:
        folder.mkdir(parents=True, exist_ok=True)

    def sobre(name: str, backend: str | None = None, level: int | None = None, threads: str = "None") -> Cmd:
        if backend is None:
            argv = [SOBRE_SCRIPT, "export", series, "--to", "{out}/" + name]
            label = f"sobre export .{name.split('.', 1)[1]}"
        else:
            argv = [PY, "-c", SOBRE_WITH.format(backend=backend, level=level, threads=threads),
                    "export", series, "--to", "{out}/" + name]
            label = f"sobre .nii.gz {backend} {level}{' 1 thread' if threads == '1' else ''}"
        return Cmd(label, argv, name, env)

    def dcm2niix(z: str, *extra: str) -> Cmd:
        label = f"dcm2niix -z {z}{' ' + ' '.join(extra) if extra else ''}"
        return Cmd(label, [d2n, "-b", "n", "-z", z, *extra, "-f", "ct", "-o", "{out}", series])

    results: dict = {"series": series, "source": desc, "runs": args.runs, "load_start": _load(),
                     "sobre_gzip_default": sobre_gz, "dcm2niix_gzip_default": d2n_gz_default,
                     "sobre_src": args.sobre_src, "bytecode": bytecode, "comparisons": [], "checks": {}}
    t_start = time.perf_counter()
    try:
        if "check" in parts and places:
            folder = places[0][1]
            print("\ncorrectness (sobre vs dcm2niix, canonical RAS order):")
            for sobre_name, z in (("s.nii", "n"), ("s.nii.gz", "y")):
                _clean(folder)
                sobre(sobre_name).run(folder)
                dcm2niix(z).run(folder)
                d2n_file = folder / ("ct.nii" if z == "n" else "ct.nii.gz")
                chk = _check_in_subprocess(folder / sobre_name, d2n_file)
                results["checks"][sobre_name] = chk
                print(f"  {sobre_name:9s} same voxel values: {chk['same_values']} "
                      f"(differing: {chk['voxels_differing']}); affine: largest element difference "
                      f"{chk['affine_max_element_diff']:.2e} -> {'OK' if chk['ok'] else 'MISMATCH'}")
                print(f"            corner voxel centres: sobre vs dcm2niix {chk['affine_max_corner_diff_mm']:.2e} mm; "
                      f"vs the DICOM positions: sobre {chk['sobre_corner_vs_dicom_mm']:.2e} mm, "
                      f"dcm2niix {chk['dcm2niix_corner_vs_dicom_mm']:.2e} mm")
                print(f"            sobre: {chk['sobre_storage']}; dcm2niix: {chk['dcm2niix_storage']}")
            _clean(folder)

        comparisons = []
        if "nii" in parts:
            comparisons.append(("nii", sobre("s.nii"), dcm2niix("n")))
        if "gz" in parts:
            comparisons.append(("gz default", sobre("s.nii.gz"), dcm2niix("y")))
            if pigz:
                comparisons.append(("gz level 1, zlib both", sobre("s.nii.gz", "zlib", 1), dcm2niix("y", "-1")))
            if args.all_levels:
                if pigz:
                    comparisons.append(("gz level 6, zlib both", sobre("s.nii.gz", "zlib", 6),
                                        dcm2niix("y", "-6")))
                comparisons.append(("gz level 6, one thread", sobre("s.nii.gz", "zlib", 6, "1"), dcm2niix("i")))
        for what, a, b in comparisons:
            print(f"\n{what}: {a.label}  vs  {b.label}  (load {_load()})", flush=True)
            for where, folder in places:
                r = paired(a, b, folder, args.runs)
                r.update(what=what, where=where, load_end=_load())
                results["comparisons"].append(r)
                _print_pair(where, r)

        if "import" in parts:
            print(f"\nstart-up (no output file; load {_load()}):", flush=True)
            base = Cmd("python -c pass", [PY, "-c", "pass"], env=env)
            for c in (Cmd("sobre --version", [SOBRE_SCRIPT, "--version"], env=env),
                      Cmd("python -c 'import sobre.cli'", [PY, "-c", "import sobre.cli"], env=env)):
                r = paired(c, base, None, max(args.runs, 11))
                r.update(what="start-up", where="-", load_end=_load())
                results["comparisons"].append(r)
                print(f"  {c.label}: {r['a_wall_s']:.3f} s (cpu {r['a_cpu_s']:.3f}); python -c pass: "
                      f"{r['b_wall_s']:.3f} s; difference {r['a_wall_s'] - r['b_wall_s']:.3f} s", flush=True)
    finally:
        for _, folder in places:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"\nsummary (median wall-clock ratios sobre / dcm2niix, {args.runs} pairs each; "
          f"load {results['load_start']} -> {_load()}, {time.perf_counter() - t_start:.0f} s):")
    for r in results["comparisons"]:
        if r["what"] != "start-up":
            print(f"  {r['what']:24s} {r['where']:5s} {r['ratio_wall_median']:5.2f}x   "
                  f"({r['a_wall_s']:.3f} s vs {r['b_wall_s']:.3f} s)")
    nii = [r["ratio_wall_median"] for r in results["comparisons"] if r["what"] == "nii"]
    if nii:
        print(f"target .nii within 2x of dcm2niix (aim 1.5x): {'met' if max(nii) <= 2.0 else 'NOT met'} "
              f"({', '.join(f'{x:.2f}x' for x in nii)})")
    results["load_end"] = _load()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "export.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
    bad = [k for k, v in results["checks"].items() if not v["ok"]]
    if bad:
        print(f"MISMATCH between sobre and dcm2niix outputs: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

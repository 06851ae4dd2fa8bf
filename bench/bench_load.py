"""Benchmark: load a 300-slice 512×512 CT series with Sobre, SimpleITK (GDCM) and dcm2niix.

Run ``.venv/bin/python bench/bench_load.py`` from the repository root.

The series is written once into ``bench/out/ct300/`` (gitignored) from real anatomy:

* the pyradiomics lung CT ``lung1_image.nrrd`` (sample source ``pyradiomics-data``) (512×512×48 at 5 mm,
  BSD-3) linearly interpolated along z to 300 slices, when that file is present;
* otherwise Colin27 (``sobre.samples.path("mricron-data")``), a 181×217×181 T1 resampled onto a
  512×512×300 grid and mapped to a CT-like value range.

Pixels are stored the way most CT scanners store them: BitsAllocated 16, **BitsStored 12**,
PixelRepresentation 0 (unsigned), RescaleIntercept -1024, RescaleSlope 1, Explicit VR Little Endian.

Timings are the best of 3 interleaved rounds (Sobre, SimpleITK, dcm2niix, Sobre, ...), each run in
a fresh subprocess (so no reader profits from warm Python caches, only from the OS page cache, which
every reader shares after the first, untimed, warm-up read); imports are not timed. CPU seconds
(``time.process_time``, all threads) are printed too: on a shared machine they vary less than
wall-clock time. Sobre's peak memory is measured in its own subprocess: ``ru_maxrss`` after the
load minus ``ru_maxrss`` after the imports, and tracemalloc's peak of numpy/Python allocations
during the load.
Targets: time <= 1.0x SimpleITK; peak memory <= 1.5x the volume's bytes. Results also go to
``bench/out/load.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SERIES = OUT / "ct300"
N_SLICES, N_ROWS, N_COLS = 300, 512, 512
REPEATS = 3


# --------------------------------------------------------------------------- data
def _source_volume() -> tuple[np.ndarray, np.ndarray, str]:
    """(HU int16 array (512, 512, 300) indexed [i, j, k], LPS affine, description)."""
    import sobre

    lung = _lung()
    if lung.exists():
        img = sobre.load(lung)
        vol = img.array.astype(np.float32)  # (512, 512, 48), HU
        n0 = vol.shape[2]
        z = np.linspace(0, n0 - 1, N_SLICES)
        lo = np.floor(z).astype(int)
        hi = np.minimum(lo + 1, n0 - 1)
        w = (z - lo).astype(np.float32)
        out = np.empty(vol.shape[:2] + (N_SLICES,), np.float32)
        for k in range(N_SLICES):
            out[:, :, k] = vol[:, :, lo[k]] * (1 - w[k]) + vol[:, :, hi[k]] * w[k]
        aff = img.affine.copy()
        aff[:3, 2] = aff[:3, 2] * (n0 - 1) / (N_SLICES - 1)
        hu = np.clip(np.round(out), -1024, 3071).astype(np.int16)
        desc = f"pyradiomics lung1 CT ({lung}), 48 slices at 5 mm interpolated to {N_SLICES} slices"
        return hu, aff, desc
    from scipy import ndimage

    from sobre import samples

    ch2 = sobre.load(samples.path("mricron-data") / "usr/share/mricron/templates/ch2.nii.gz")
    t1 = ch2.array.astype(np.float32)
    zoom = (N_COLS / t1.shape[0], N_ROWS / t1.shape[1], N_SLICES / t1.shape[2])
    big = ndimage.zoom(t1, zoom, order=1)[:N_COLS, :N_ROWS, :N_SLICES]
    hu = np.clip(big / max(float(big.max()), 1.0) * 2000.0 - 1000.0, -1024, 3071).astype(np.int16)
    aff = ch2.affine.copy()
    aff[:3, :3] = aff[:3, :3] / np.asarray(zoom)[None, :]
    return hu, aff, "Colin27 T1 (mricron-data ch2.nii.gz) resampled to 512x512x300, mapped to -1000..1000"


def ensure_series() -> str:
    """Write the benchmark series once; returns its description."""
    marker = SERIES / ".complete"
    if marker.exists():
        return marker.read_text().strip()
    import sobre

    hu, aff, desc = _source_volume()
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=OUT, prefix=".ct300-"))
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)  # 0..4095: 12 bits, unsigned
    img = sobre.Image(stored, aff, modality="CT")
    sobre.write_dicom_series(
        img, tmp, uid_seed="sobre-bench-ct300",
        meta={"series_description": "bench CT 300", "manufacturer": "sobre-bench"},
        extra={"BitsStored": 12, "HighBit": 11, "RescaleIntercept": "-1024", "RescaleSlope": "1"},
    )
    (tmp / ".complete").write_text(desc + "\n")
    if SERIES.exists():
        shutil.rmtree(SERIES)
    tmp.rename(SERIES)
    return desc


# --------------------------------------------------------------------------- readers (run in subprocesses)
_SOBRE = """
import sys, time
import sobre, sobre.image  # the readers (sobre loads its names on first use): imports are not timed
t, c = time.perf_counter(), time.process_time()
a = sobre.load(sys.argv[1]).array
print(time.perf_counter() - t, time.process_time() - c, float(a.astype('float64').sum()))
"""

_SITK = """
import sys, time
import SimpleITK as sitk
t, c = time.perf_counter(), time.process_time()
r = sitk.ImageSeriesReader()
files = r.GetGDCMSeriesFileNames(sys.argv[1])
r.SetFileNames(files)
img = r.Execute()
a = sitk.GetArrayViewFromImage(img)
print(time.perf_counter() - t, time.process_time() - c, float(a.astype('float64').sum()))
"""

_MEMORY = """
import resource, sys, time, tracemalloc
import numpy, pydicom, pydicom.pixels, sobre, sobre.image  # imports before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
img = sobre.load(sys.argv[1])
a = img.array
cur, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_delta": (after - base) * 1024, "tracemalloc_peak": peak, "nbytes": a.nbytes}))
""".replace("import resource", "import json, resource")


def _py(code: str, *args: str) -> str:
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    return run.stdout.strip()


def time_sobre() -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of all threads, voxel sum)."""
    wall, cpu, total = (float(v) for v in _py(_SOBRE, str(SERIES)).split())
    return wall, cpu, total


def time_sitk() -> tuple[float, float, float]:
    wall, cpu, total = (float(v) for v in _py(_SITK, str(SERIES)).split())
    return wall, cpu, total


def time_dcm2niix() -> float | None:
    exe = shutil.which("dcm2niix")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([exe, "-b", "n", "-z", "n", "-p", "n", "-o", tmp, str(SERIES)],
                       check=True, capture_output=True)
        return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    desc = ensure_series()
    files = sorted(p for p in SERIES.iterdir() if p.suffix == ".dcm")
    print(f"series: {SERIES} ({len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB)")
    print(f"source: {desc}")
    print("pixels: uint16 BitsStored 12, RescaleIntercept -1024 -> int16 HU, Explicit VR Little Endian")

    # warm the page cache once for everybody, then check that the readers agree on the voxels
    s_sum, k_sum = time_sobre()[2], time_sitk()[2]
    if s_sum != k_sum:
        print(f"WARNING: voxel sums differ: sobre {s_sum} vs SimpleITK {k_sum}")

    # interleaved rounds, so that a change in machine load hits every reader alike; best round each
    rounds = [(time_sobre(), time_sitk(), time_dcm2niix()) for _ in range(args.repeats)]
    t_sobre = min(r[0][0] for r in rounds)
    t_sitk = min(r[1][0] for r in rounds)
    cpu_sobre = min(r[0][1] for r in rounds)
    cpu_sitk = min(r[1][1] for r in rounds)
    t_d2n = None if rounds[0][2] is None else min(r[2] for r in rounds)
    mem = json.loads(_py(_MEMORY, str(SERIES)))
    nbytes = mem["nbytes"]

    rows = [("sobre.load(dir).array", t_sobre), ("SimpleITK ImageSeriesReader (GDCM)", t_sitk)]
    if t_d2n is not None:
        rows.append(("dcm2niix (subprocess, writes .nii)", t_d2n))
    print()
    print(f"{'reader':38s} {'best of ' + str(args.repeats) + ' (s)':>16s} {'vs SimpleITK':>13s}")
    for name, t in rows:
        print(f"{name:38s} {t:16.3f} {t / t_sitk:12.2f}x")
    if t_d2n is None:
        print("dcm2niix: not installed (apt-get install dcm2niix)")
    print(f"CPU seconds (all threads, best round): sobre {cpu_sobre:.3f}, SimpleITK {cpu_sitk:.3f} "
          f"({cpu_sobre / cpu_sitk:.2f}x); wall-clock ratios are noisy on a shared machine, CPU ratios less so")
    print()
    print(f"volume bytes:                {nbytes / 2**20:8.1f} MiB")
    print(f"sobre peak RSS increase:     {mem['rss_delta'] / 2**20:8.1f} MiB = {mem['rss_delta'] / nbytes:.2f}x volume")
    print(f"sobre tracemalloc peak:      {mem['tracemalloc_peak'] / 2**20:8.1f} MiB = "
          f"{mem['tracemalloc_peak'] / nbytes:.2f}x volume")
    ok_time = t_sobre <= 1.0 * t_sitk
    ok_mem = max(mem["rss_delta"], mem["tracemalloc_peak"]) <= 1.5 * nbytes
    print()
    print(f"target time   <= 1.0x SimpleITK : {'met' if ok_time else 'NOT met'} ({t_sobre / t_sitk:.2f}x)")
    print(f"target memory <= 1.5x volume    : {'met' if ok_mem else 'NOT met'} "
          f"({max(mem['rss_delta'], mem['tracemalloc_peak']) / nbytes:.2f}x)")
    result = {"series": str(SERIES), "source": desc, "repeats": args.repeats, "sobre_s": t_sobre,
              "sitk_s": t_sitk, "dcm2niix_s": t_d2n, "sobre_cpu_s": cpu_sobre, "sitk_cpu_s": cpu_sitk,
              "sobre_vs_sitk": t_sobre / t_sitk, "volume_bytes": nbytes,
              "rss_delta_bytes": mem["rss_delta"], "tracemalloc_peak_bytes": mem["tracemalloc_peak"],
              "target_time_met": ok_time, "target_memory_met": ok_mem}
    (OUT / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _lung() -> Path:
    """The pyradiomics lung CT in the sample cache (``sobre samples fetch pyradiomics-data``)."""
    from sobre import samples

    try:
        return samples.path("pyradiomics-data") / "pyradiomics-3.1.0" / "data" / "lung1_image.nrrd"
    except samples.SampleMissing:
        return Path("/nonexistent/lung1_image.nrrd")

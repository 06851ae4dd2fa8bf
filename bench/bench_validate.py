"""Benchmarks of sobre.validate against the peers, measured in the same run.

Run: ``.venv/bin/python bench/bench_validate.py`` (add ``--quick`` for fewer repeats). The table is
printed and also written to ``bench/out/validate.json``.

1. 95th-percentile Hausdorff distance of a pair of 256^3 masks (anisotropic spacing): Sobre vs
   MONAI's ``compute_hausdorff_distance(percentile=95)`` on the same masks; values must agree
   within one voxel (they are in fact equal: same surface definition, exact distances).
2. Bootstrap of 2,000 resamples of the AUC on 10,000 subjects: Sobre's vectorised weight
   bootstrap (percentile and BCa) vs a loop over scikit-learn's ``roc_auc_score`` on the
   resampled indices (the usual way), with the resulting 95% intervals side by side.
3. DeLong's test of two correlated AUCs on 10,000 subjects (informative).
4. ``sobre evaluate`` of a 10,000-subject binary predictions file, 2,000 resamples, end to end.
5. Resampling a predicted mask onto its reference grid (``evaluate --resample``): ``sobre.image.resample``
   vs SimpleITK's ``Resample`` (nearest neighbour, and linear for a probability map) from a rotated
   1 x 1 x 3 mm 256 x 256 x 80 grid onto a 0.8 x 0.8 x 1.5 mm 256 x 256 x 160 one; the voxels must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def timeit(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def ellipsoid(shape, centre, radii):
    axes = np.ogrid[tuple(slice(0, s) for s in shape)]
    d = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii))
    return d <= 1.0


def bench_hd95(repeat: int) -> list[dict]:
    import torch
    from monai.metrics import compute_hausdorff_distance

    from sobre.validate import hd95

    n = 256
    spacing = (0.8, 0.8, 1.5)
    ref = ellipsoid((n, n, n), (128, 120, 130), (70, 52, 60))
    pred = ellipsoid((n, n, n), (125, 124, 127), (68, 55, 62))
    pred[60:72, 60:72, 50:60] = True  # a false-positive island
    ref[150:170, 140:150, 120:125] = False  # a hole in the reference
    tp = torch.from_numpy(pred[None, None].astype(np.float32))
    tr = torch.from_numpy(ref[None, None].astype(np.float32))

    def monai():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(compute_hausdorff_distance(tp, tr, include_background=True, percentile=95,
                                                    spacing=spacing)[0, 0])

    t_ours, v_ours = timeit(lambda: hd95(pred, ref, spacing), repeat)
    t_monai, v_monai = timeit(monai, repeat)
    assert abs(v_ours - v_monai) <= min(spacing), (v_ours, v_monai)
    return [{"task": "HD95, 256^3 masks", "sobre_ms": t_ours * 1e3, "peer": "MONAI compute_hausdorff_distance",
             "peer_ms": t_monai * 1e3, "values": f"{v_ours:.4f} mm vs {v_monai:.4f} mm"}]


def bench_bootstrap(repeat: int, n_loop: int) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    from sobre.validate import auc_ci

    rng = np.random.default_rng(0)
    n, b = 10_000, 2000
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + 1.0 * y
    rows = []
    results = {}
    for method in ("percentile", "bca"):
        cpu0 = time.process_time()
        t, est = timeit(lambda: auc_ci(y, s, n_resamples=b, method=method, seed=1), repeat)
        results[method] = (t, est, (time.process_time() - cpu0) / repeat)

    def sklearn_loop(count):
        r = np.random.default_rng(1)
        vals = np.empty(count)
        for i in range(count):
            idx = r.integers(0, n, n)
            vals[i] = roc_auc_score(y[idx], s[idx])
        return np.quantile(vals, [0.025, 0.975])

    t0 = time.perf_counter()
    ci = sklearn_loop(n_loop)
    t_loop = (time.perf_counter() - t0) * b / n_loop  # scaled to 2,000 resamples when fewer were run
    note = "" if n_loop == b else f" (timed on {n_loop}, scaled)"
    for method, (t, est, cpu) in results.items():
        rows.append({"task": f"bootstrap AUC, 2000 x 10,000 ({method})", "sobre_ms": t * 1e3,
                     "peer": "loop of sklearn roc_auc_score" + note, "peer_ms": t_loop * 1e3,
                     "values": f"{est} vs [{ci[0]:.3f}, {ci[1]:.3f}]; CPU {cpu * 1e3:.0f} ms"})
    return rows


def bench_delong(repeat: int) -> list[dict]:
    from sobre.validate import delong_test

    rng = np.random.default_rng(2)
    n = 10_000
    y = rng.random(n) < 0.3
    c = rng.normal(size=n)
    a, b_ = c + y + rng.normal(0, 0.5, n), c + 0.8 * y + rng.normal(0, 0.5, n)
    t, res = timeit(lambda: delong_test(y, a, b_), repeat)
    return [{"task": "DeLong test, 10,000 subjects", "sobre_ms": t * 1e3, "peer": "-", "peer_ms": float("nan"),
             "values": f"p = {res.p_value:.3g}"}]


def bench_evaluate(repeat: int) -> list[dict]:
    import pandas as pd

    from sobre.validate import evaluate

    rng = np.random.default_rng(3)
    n = 10_000
    y = rng.integers(0, 2, n)
    df = pd.DataFrame({"subject_id": np.arange(n), "label": y,
                       "score": 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y))),
                       "site": rng.choice(list("ABCD"), n), "sex": rng.choice(["F", "M"], n),
                       "split": np.where(rng.random(n) < 0.3, "validation", "test")})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "predictions.csv"
        df.to_csv(path, index=False)
        t, ev = timeit(lambda: evaluate(path, n_bootstrap=2000), repeat)
        t_report, _ = timeit(lambda: ev.write(Path(d) / "out"), 1)
    return [{"task": "evaluate 10,000 subjects (binary, 2 subgroups, 2000 resamples)", "sobre_ms": t * 1e3,
             "peer": "-", "peer_ms": float("nan"), "values": f"AUC {ev.metrics['auc']}"},
            {"task": "write report.html + report.json", "sobre_ms": t_report * 1e3, "peer": "-",
             "peer_ms": float("nan"), "values": ""}]


def bench_resample(repeat: int) -> list[dict]:
    import SimpleITK as sitk

    from sobre.image import Image, resample

    c, s = np.cos(0.2), np.sin(0.2)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    src_aff = np.eye(4)
    src_aff[:3, :3] = rot * np.array([1.0, 1.0, 3.0])
    src_aff[:3, 3] = (-128, -128, -120)
    ref_aff = np.diag([0.8, 0.8, 1.5, 1.0])
    ref_aff[:3, 3] = (-102, -102, -120)
    mask = ellipsoid((256, 256, 80), (128, 120, 40), (70, 52, 20)).astype(np.uint8)
    prob = np.random.default_rng(5).random((256, 256, 80)).astype(np.float32)
    ref = Image(np.zeros((256, 256, 160), np.uint8), ref_aff)

    def to_sitk(img):
        out = sitk.GetImageFromArray(np.ascontiguousarray(img.array.T))
        out.SetSpacing([float(v) for v in img.spacing])
        out.SetOrigin([float(v) for v in img.origin])
        out.SetDirection([float(v) for v in img.direction.ravel()])
        return out

    rows = []
    for name, arr, order, interp in (("nearest, uint8 mask", mask, "nearest", sitk.sitkNearestNeighbor),
                                     ("linear, float32 probability map", prob, "linear", sitk.sitkLinear)):
        img = Image(arr, src_aff)
        s_img, s_ref = to_sitk(img), to_sitk(ref)
        t, ours = timeit(lambda: resample(img, ref, order=order), repeat)
        out_type = sitk.sitkFloat32 if order == "linear" else sitk.sitkUInt8
        t_peer, theirs = timeit(lambda: sitk.Resample(s_img, s_ref, sitk.Transform(), interp, 0.0, out_type), repeat)
        theirs = sitk.GetArrayFromImage(theirs).T
        diff = np.abs(ours.array.astype(np.float64) - theirs).max()
        rows.append({"task": f"resample 256x256x80 -> 256x256x160, {name}", "sobre_ms": t * 1e3,
                     "peer": f"SimpleITK Resample ({sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads; "
                             "Sobre: 1)", "peer_ms": t_peer * 1e3, "values": f"max |difference| {diff:.2g}"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, sklearn loop timed on 200 resamples")
    ns = parser.parse_args(argv)
    repeat = 1 if ns.quick else 3
    rows = []
    rows += bench_hd95(repeat)
    rows += bench_bootstrap(repeat, 200 if ns.quick else 2000)
    rows += bench_delong(repeat)
    rows += bench_evaluate(1)
    rows += bench_resample(repeat)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores available: {cores}")
    head = f"{'benchmark':<62} {'sobre ms':>10} {'peer ms':>10} {'speed-up':>9}  peer / values"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["peer_ms"] / r["sobre_ms"] if np.isfinite(r["peer_ms"]) else float("nan")
        peer = "" if not np.isfinite(r["peer_ms"]) else f"{r['peer_ms']:10.1f}"
        speed = f"{ratio:8.1f}x" if np.isfinite(ratio) else f"{'-':>9}"
        print(f"{r['task']:<62} {r['sobre_ms']:10.1f} {peer:>10} {speed}  {r['peer']}; {r['values']}")
        r["speedup"] = None if not np.isfinite(ratio) else ratio
        r["peer_ms"] = None if not np.isfinite(r["peer_ms"]) else r["peer_ms"]
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "validate.json").write_text(json.dumps({"cores": cores, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

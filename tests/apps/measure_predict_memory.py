"""Peak memory of segmentation ``predict`` on a volume 4× the training patch along every axis.

Run by hand (not collected by pytest)::

    .venv/bin/python tests/apps/measure_predict_memory.py [--patch 48] [--width 8]

Trains a throw-away U-Net (one epoch: the weights do not change the memory) with patch P³, then in
fresh processes measures the peak resident memory (``ru_maxrss``) above the level reached once the
model and the image are loaded, for (a) ``TrainedModel.predict`` on a (4P)³ CT volume — MONAI
sliding windows of P³, Gaussian blending, mask brought back to the input grid — and (b) one forward
pass of the same network over the whole volume at once (what inference without windows costs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(run: str, size: int, mode: str) -> None:
    import torch

    import sobre
    from sobre.learn import load_model

    torch.set_num_threads(2)
    model = load_model(run)
    rng = np.random.default_rng(0)
    hu = (40 + 12 * rng.standard_normal((size,) * 3)).astype(np.int16)
    img = sobre.Image(hu, np.diag([1.5, 1.5, 1.5, 1.0]), modality="CT")
    with torch.no_grad():  # warm-up on a small volume: allocator pools, MONAI imports
        model.predict(sobre.Image(hu[:32, :32, :32].copy(), img.affine, modality="CT"))
    base = _rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if mode == "sliding":
        mask = model.predict(img).masks[0]
        assert mask.spatial_shape == (size,) * 3
    else:
        x, _ = model.prepare(img)
        with torch.no_grad():
            model.network(torch.from_numpy(np.asarray(x, np.float32))[None])
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "size": size, "base_mb": round(base, 1),
                      "peak_above_base_mb": round(max(peak, peak_before) - base, 1),
                      "volume_float32_mb": round(size ** 3 * 4 / 2 ** 20, 1), "seconds": round(seconds, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--child", nargs=3, metavar=("RUN", "SIZE", "MODE"))
    ns = ap.parse_args()
    if ns.child:
        _child(ns.child[0], int(ns.child[1]), ns.child[2])
        return
    import torch

    from sobre.learn import Cohort, train

    torch.set_num_threads(2)
    p = ns.patch
    rng = np.random.default_rng(1)
    imgs = rng.standard_normal((4, p, p, p)).astype(np.float32)
    masks = (imgs > 1.5).astype(np.uint8)
    cohort = Cohort.from_arrays(imgs, [{"subject_id": f"s{i}"} for i in range(4)], masks=masks, name="noise")
    cfg = {"seed": 0, "data": {"dataset": "noise"},
           "task": {"kind": "segmentation", "mask": {"equals": "mask"}, "patch": [p, p, p]},
           "model": {"backbone": "unet", "width": ns.width, "depth": 3}, "optim": {"epochs": 1, "batch_size": 2},
           "augment": [], "split": {"test_fraction": 0.25, "stratify": []}, "runtime": {"progress": False}}
    with tempfile.TemporaryDirectory() as tmp:
        run = train(cfg, cohort=cohort, runs_dir=Path(tmp)).run.path
        for mode in ("sliding", "whole"):
            out = subprocess.run([sys.executable, __file__, "--child", str(run), str(4 * p), mode],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

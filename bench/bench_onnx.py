"""ONNX Runtime vs PyTorch eager, and int8 vs fp32, on models trained and packaged through Sobre's public API.

Run: ``.venv/bin/python bench/bench_onnx.py`` (``--quick`` for the two small models only). The table is
printed and written to ``bench/out/onnx.json``.

For each model: train it for a few epochs on generated blobs (``tests/learn/helpers.py``; images
resized to the input size below), register it, and ``Registry.export_onnx`` it (check against PyTorch,
int8 static quantization calibrated on 8 training images, held-out accuracy of fp32 and int8, the
package's own latency measurement and int8 decision). Then the latency of one image is measured
again here, interleaved (PyTorch fp32, PyTorch at the run's precision, ONNX Runtime fp32, int8; 5
rounds of ``--repeats`` passes each, medians over all), because one measurement on a shared machine
moves with its load; the 1-minute load average is printed before and after.

Peers in the same run: PyTorch eager (fp32, and bf16 autocast where the CPU has it, as training
chose), ONNX Runtime fp32. Ratios below 1 mean faster than the reference named in the column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping threads, as the CLI sets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

MODELS = [  # name, task, backbone, width, depth, input size, quick
    ("cnn-small", "binary", "compact3d", 4, 2, 32, True),
    ("unet-small", "segmentation", "unet", 4, 3, 32, True),
    ("cnn-default", "binary", "compact3d", 16, 4, 64, False),
    ("unet-wide", "segmentation", "unet", 16, 4, 64, False),
]


def load() -> float:
    return os.getloadavg()[0]


def train_and_export(ws, name, task, backbone, width, depth, size, repeats):
    from learn.helpers import tiny_train_config

    from sobre.learn import train
    from sobre.models import Registry, register

    pre = {"resample": "shape", "shape": [size] * 3}
    if task == "binary":
        cfg = tiny_train_config(data={"dataset": "all@v1", "where": 'protocol == "T1w"'}, preprocess=pre,
                                model={"backbone": backbone, "width": width, "depth": depth},
                                optim={"epochs": 4, "batch_size": 8, "lr": 3e-3})
    else:
        cfg = tiny_train_config(data={"dataset": "all@v1", "where": 'protocol == "T1w" or protocol == "mask"'},
                                preprocess=pre, task={"kind": "segmentation", "label": None, "positive": None,
                                                      "mask": {"equals": "mask"}, "patch": [size] * 3},
                                model={"backbone": backbone, "width": width, "depth": depth},
                                optim={"epochs": 4, "batch_size": 4, "lr": 1e-2})
    t0 = time.perf_counter()
    run = train(cfg, workspace=ws).run
    t_train = time.perf_counter() - t0
    register(ws, run.run_id, name, "1", measure=False)
    t0 = time.perf_counter()
    pkg = Registry(ws).export_onnx(f"{name}@1", {"repeats": repeats, "keep_int8": True})
    return pkg, t_train, time.perf_counter() - t0


def interleaved(pkg, repeats: int, rounds: int = 5) -> dict:
    import numpy as np
    import torch

    t32 = pkg.load(precision="fp32")
    trun = pkg.load()
    o32 = pkg.load(runtime="onnx-fp32")
    o8 = pkg.load(runtime="onnx-int8")
    roi = tuple(t32.task.patch) if t32.task.kind == "segmentation" else tuple(t32.input_shape)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, t32.in_channels, *roi)).astype(np.float32))
    xc = x.contiguous(memory_format=torch.channels_last_3d) if t32.channels_last else x

    def torch_fn(m, bf16):
        def f():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                m.networks[0](xc)
        return f

    fns = {"torch_fp32": torch_fn(t32, False), f"torch_{trun.precision}": torch_fn(trun, trun.precision == "bf16"),
           "ort_fp32": lambda: o32.networks[0](x), "ort_int8": lambda: o8.networks[0](x)}
    times = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(3):
            f()
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the two small models only")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--subjects", type=int, default=32)
    args = ap.parse_args(argv)

    import torch
    from learn.helpers import write_bids

    from sobre.catalog import Workspace

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"load before: {os.getloadavg()}  threads: {torch.get_num_threads()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    folders = write_bids(tmp / "bids", args.subjects, with_masks=True)
    ws = Workspace.init(tmp / "ws")
    for site, folder in folders.items():
        ws.ingest([folder], site=site)
    ws.cohort_create("all", 'format == "nifti"')
    ws.freeze("all")
    rows = []
    for name, task, backbone, width, depth, size, quick in MODELS:
        if args.quick and not quick:
            continue
        l0 = load()
        pkg, t_train, t_export = train_and_export(ws, name, task, backbone, width, depth, size, args.repeats)
        rec = pkg.onnx
        lat = interleaved(pkg, args.repeats)
        held = rec["heldout"]
        metric = held.get("metric")
        n_params = pkg.card["sections"]["model_details"]["parameters"]
        row = {"model": name, "task": task, "backbone": f"{backbone} w{width} d{depth}", "parameters": n_params,
               "input": f"{size}^3", "train_s": round(t_train, 1), "export_s": round(t_export, 1),
               "check_max_abs_diff": rec["check"]["max_abs_diff"], "interleaved_ms": lat,
               "ort_fp32_vs_torch_fp32": lat["ort_fp32"] / lat["torch_fp32"],
               "int8_vs_ort_fp32": lat["ort_int8"] / lat["ort_fp32"],
               "package_latency_ms": {k: v for k, v in rec["latency"].items() if k.endswith("_ms")},
               "heldout": held, "int8_chosen": rec["int8"].get("chosen"), "int8_reason": rec["int8"].get("reason"),
               "recommended": rec["recommended"], "load_1min": [round(l0, 2), round(load(), 2)]}
        if metric == "auc":
            row["accuracy"] = (f"AUC {held['auc_torch_fp32']:.3f} -> int8 {held['auc_ort_int8']:.3f} "
                               f"(delta {held['auc_delta_int8']:+.3f}), label agreement "
                               f"{held['agreement_ort_int8_vs_torch_fp32']:.3f} on {held['n']} held-out images")
        else:
            row["accuracy"] = (f"Dice(int8, fp32) {held.get('dice_ort_int8_vs_torch_fp32'):.4f}, voxel agreement "
                               f"{held['agreement_ort_int8_vs_torch_fp32']:.4f} on {held['n']} held-out images")
        rows.append(row)
        print(f"\n{name} ({row['backbone']}, {n_params:,} parameters, input {size}^3, load {row['load_1min']})\n"
              f"  ONNX check: max |ort - torch| = {row['check_max_abs_diff']:.2g}\n"
              f"  one image, interleaved medians: " + ", ".join(f"{k} {v:.3g} ms" for k, v in lat.items()) +
              f"\n  ORT fp32 / torch fp32 = {row['ort_fp32_vs_torch_fp32']:.2f}x; int8 / ORT fp32 = "
              f"{row['int8_vs_ort_fp32']:.2f}x\n  {row['accuracy']}\n  int8 "
              f"{'kept' if row['int8_chosen'] else 'not kept'}: {row['int8_reason']}; recommended {row['recommended']}",
              flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "onnx.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
                                               "machine": pkg.onnx["latency"]["machine"]}, indent=1))
    print(f"\nload after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

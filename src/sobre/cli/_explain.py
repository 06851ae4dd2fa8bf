"""``sobre explain RUN --dataset NAME@vN --method ig|occlusion|gradcam``: saliency maps of a trained model."""

from __future__ import annotations

import argparse
import os

from sobre.cli._common import (
    add_json_arg,
    add_workspace_arg,
    emit_json,
    open_workspace,
    progress_bars,
)


def register(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="saliency maps of a trained model on a dataset version, with shares per atlas region",
        description="Saliency maps (integrated gradients: Captum; occlusion and Grad-CAM: MONAI) of a train or "
                    "probe run on every image of a frozen dataset version, written as NIfTI on each image's own "
                    "grid, with the share of saliency mass per atlas region and a report (explanation.json, "
                    "explanation.md). See docs/explain.md.",
    )
    p.add_argument("run", metavar="RUN", help="run folder, or run id in the workspace")
    p.add_argument("--dataset", required=True, metavar="NAME@vN", help="frozen dataset version to explain")
    p.add_argument("--method", required=True, metavar="METHOD", help="ig, occlusion or gradcam")
    add_workspace_arg(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/explain/NAME-vN-METHOD)")
    p.add_argument("--atlas", metavar="PATH",
                   help="label map on each image's grid: one file for all, or a pattern with {subject} / {series}, "
                        "e.g. sim/truth/{subject}/{subject}_dseg.nii.gz")
    p.add_argument("--regions", metavar="TSV", help="region names: a TSV/CSV with columns label and name")
    p.add_argument("--target", metavar="CLASS", help="class to explain (multiclass; default the predicted one)")
    p.add_argument("--steps", type=int, help="integrated gradients: steps along the path (default 32)")
    p.add_argument("--baseline", type=_baseline_arg,
                   help="ig/occlusion: baseline intensity, in the model's normalised units (default 0), or 'min': "
                        "each image's own minimum (its air, no signal)")
    p.add_argument("--smooth-samples", type=int,
                   help="ig: SmoothGrad over integrated gradients with this many noisy copies (default 0: off)")
    p.add_argument("--smooth-noise", type=float,
                   help="ig: noise SD as a fraction of the image's intensity range (default 0.15)")
    p.add_argument("--mask-size", type=int, help="occlusion: box size in voxels of the model's grid (default 8)")
    p.add_argument("--overlap", type=float, help="occlusion: overlap of the boxes (default 0.5)")
    p.add_argument("--layer", help="gradcam: module name (default the last one with a spatial output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_json_arg(p)
    p.set_defaults(func=_explain)


def _explain(ns) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping threads on a shared CPU
    from sobre.learn import explain

    params = {"steps": ns.steps, "baseline": ns.baseline, "mask_size": ns.mask_size, "overlap": ns.overlap,
              "layer": ns.layer, "smooth_samples": ns.smooth_samples, "smooth_noise": ns.smooth_noise}
    ws = open_workspace(ns)
    with progress_bars(ns) as progress:
        res = explain(ns.run, ns.dataset, ns.method, workspace=ws, out=ns.out, atlas=ns.atlas, regions=ns.regions,
                      target=ns.target, params=params, seed=ns.seed, overwrite=ns.overwrite, progress=progress)
    if ns.json:
        emit_json(res.to_dict())
        return 0
    sim = "SIMULATED data: " if res.report["simulated"] else ""
    print(f"{sim}{res.method} ({res.report['library']['name']}) on {res.dataset}: {len(res.subjects)} map(s) "
          f"in {res.path}/maps")
    if res.regions is not None:
        for r in res.regions.head(5).itertuples():
            print(f"  {r.name:<28} share {r.mean_share:.3f}  (random {r.mean_voxel_share:.3f}, "
                  f"x{r.enrichment:.2f})")
    print(f"report: {res.path}/explanation.md")
    return 0


def _baseline_arg(text: str) -> float | str:
    """``--baseline``: a number or ``min`` (an unknown word is refused by argparse, exit 2)."""
    if text.strip().lower() == "min":
        return "min"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'min', found {text!r}") from None

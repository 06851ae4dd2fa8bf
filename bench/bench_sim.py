"""Benchmark and full-size validation of ``sobre.sim``.

Run ``.venv/bin/python bench/bench_sim.py`` from the repository root (``--quick`` for a smaller run).
Results are printed and written to ``bench/out/sim.json``.

1. **Speed** of brain subjects at 2 mm, in memory (image + truth, and anatomy only), as CPU seconds
   of this one process (so "subjects/s/core" does not depend on other load on the machine), and of
   writing them as DICOM and NIfTI (one process).
2. **Age and disease recovery** on a cohort (default 200 subjects, 2 mm, accelerated-ageing disease):
   regional volumes are counted on each subject's label map (the atlas warped by its known
   deformation) and regressed on age and disease strength; relative errors against the
   configuration, paired (each subject against itself without the effects) and cross-sectional.
3. **Site probe**: logistic regression on simple intensity statistics predicts the site with site
   effects on, and does not with them off (3 sites, cross-validated accuracy).
4. **CT lesions**: time per case on the pyradiomics lung CT (sample source pyradiomics-data, when fetched) or a phantom.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE.parent / "tests" / "sim"))  # the CT phantom of the tests


def speed(n: int) -> dict:
    from sobre.sim import BrainCohortConfig, BrainSimulator, DiseaseModel

    cfg = BrainCohortConfig(subjects=n, seed=1, sites=3, disease=DiseaseModel.preset("accelerated-ageing"))
    t = time.process_time()
    sim = BrainSimulator(cfg)
    sim.calibration  # noqa: B018
    init = time.process_time() - t
    sim.subject(0)
    out = {"init_cpu_s": round(init, 2)}
    for label, kw in (("image_and_truth", {}), ("truth_only", {"image": False})):
        t = time.process_time()
        for i in range(1, n + 1):
            subj = sim.subject(i, **kw)
            if subj.image is not None:
                _ = subj.image.array
        cpu = (time.process_time() - t) / n
        out[label] = {"cpu_s_per_subject": round(cpu, 4), "subjects_per_s_per_core": round(1 / cpu, 2)}
    return out


def write_speed(n: int, tmp: Path) -> dict:
    from sobre.sim import BrainCohortConfig, write_brain_cohort

    res = {}
    for fmt in ("nifti", "dicom"):
        cfg = BrainCohortConfig(subjects=n, seed=2, sites=2)
        t = time.process_time()
        rep = write_brain_cohort(cfg, tmp / fmt, format=fmt)
        res[fmt] = {"cpu_s_per_subject": round((time.process_time() - t) / n, 3),
                    "wall_s_per_subject": round(rep.seconds / n, 3), "files": rep.files}
    return res


def recovery(n: int) -> dict:
    from sobre.sim import REGION_GROUPS, BrainCohortConfig, BrainSimulator, DiseaseModel
    from sobre.sim._brain import disease_pattern

    cfg = BrainCohortConfig(subjects=n, seed=31, sites=3, site_effects=True, resolution=2.0, paired_truth=True,
                            disease=DiseaseModel.preset("accelerated-ageing"))
    sim = BrainSimulator(cfg)
    names = sim.template.names
    units = {g: (g,) for g in REGION_GROUPS}
    units["medial_temporal"] = ("hippocampus", "parahippocampal", "amygdala")
    units["basal_ganglia"] = ("caudate", "putamen_pallidum")
    rows = []
    for i in range(n):
        _, meta, truth = sim.subject(i, image=False)
        r = {"age": meta["age"] / 10, "s": meta["disease_strength"], "f": float(meta["sex"] == "F"),
             "head": truth.latent["head_log_volume"]}
        for u, gs in units.items():
            labs = [lab for g in gs for lab in REGION_GROUPS[g]]
            r["V" + u] = np.log(sum(truth.volumes[names[lab]] for lab in labs))
            r["B" + u] = np.log(sum(truth.baseline_volumes[names[lab]] for lab in labs))
            vol = sim.template.volumes_mm3
            r["z" + u] = sum(truth.latent["individual"][g] * sum(vol[lab] for lab in REGION_GROUPS[g]) for g in gs) / \
                sum(vol[lab] for lab in labs)
        rows.append(r)
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    pattern = disease_pattern(sim.template, cfg.disease)
    group_of = {lab: g for g, labs in REGION_GROUPS.items() for lab in labs}
    vol = sim.template.volumes_mm3
    res = {}
    for u, gs in units.items():
        labs = [lab for g in gs for lab in REGION_GROUPS[g]]
        w = np.array([vol[lab] for lab in labs]) / sum(vol[lab] for lab in labs)
        age_want = float(sum(wi * cfg.age.beta(group_of[lab]) for wi, lab in zip(w, labs)))
        dis_want = float(sum(wi * pattern[lab] for wi, lab in zip(w, labs)))
        xp = np.column_stack([np.ones(n), col["age"], col["z" + u], col["s"]])
        bp = np.linalg.lstsq(xp, col["V" + u] - col["B" + u], rcond=None)[0]
        xc = np.column_stack([np.ones(n), col["age"], col["f"], col["head"], col["z" + u], col["s"]])
        bc, *_ = np.linalg.lstsq(xc, col["V" + u], rcond=None)
        resid = col["V" + u] - xc @ bc
        se = np.sqrt(resid.var(ddof=xc.shape[1]) * np.diag(np.linalg.inv(xc.T @ xc)))

        def rel(est, want):
            return None if want == 0 else round(float((est - want) / abs(want)), 3)

        res[u] = {"age_configured": round(age_want, 5), "age_paired": round(float(bp[1]), 5),
                  "age_cross": round(float(bc[1]), 5), "age_cross_se": round(float(se[1]), 5),
                  "age_rel_error_paired": rel(bp[1], age_want), "age_rel_error_cross": rel(bc[1], age_want),
                  "disease_configured": round(dis_want, 5), "disease_paired": round(float(bp[3]), 5),
                  "disease_cross": round(float(bc[5]), 5), "disease_cross_se": round(float(se[5]), 5),
                  "disease_rel_error_paired": rel(bp[3], dis_want), "disease_rel_error_cross": rel(bc[5], dis_want)}
    return res


def site_probe(n_per_site: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sobre.sim import BrainCohortConfig, BrainSimulator

    out = {}
    for on in (True, False):
        cfg = BrainCohortConfig(subjects=3 * n_per_site, seed=41, sites=3, site_effects=on)
        sim = BrainSimulator(cfg)
        x, y = [], []
        for i in range(cfg.subjects):
            image, meta, _ = sim.subject(i)
            a = np.asarray(image.array, float).ravel()
            fg = a[a > np.percentile(a, 60)]
            q = np.percentile(fg, [5, 25, 50, 75, 95, 99])
            x.append(np.r_[np.log1p(q), np.log1p(fg.mean()), np.log1p(fg.std()), fg.std() / fg.mean()])
            y.append(meta["site"])
        x, y = np.array(x), np.array(y)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        pred = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
        out["on" if on else "off"] = round(float(np.mean(pred == y)), 3)
    out["chance"] = round(1 / 3, 3)
    return out


def ct_speed() -> dict:
    from sobre.sim import CTLesionCohortConfig, LesionConfig, simulate_ct_case

    lung = _lung()
    if lung.exists():
        cfg = CTLesionCohortConfig(backgrounds=[str(lung)], seed=1, lesions=LesionConfig(lesions_per_case=(6, 6)))
        bg = None
        name = "pyradiomics lung1 (512x512x48)"
    else:
        from conftest import phantom_ct

        bg = phantom_ct()
        cfg = CTLesionCohortConfig(backgrounds=[], seed=1, lesions=LesionConfig(lesions_per_case=(4, 4)))
        name = "phantom"
    t = time.process_time()
    _, _, rows = simulate_ct_case(cfg, 0, background=bg)
    return {"background": name, "cpu_s_per_case": round(time.process_time() - t, 2),
            "lesions": sum(r.get("placed", False) for r in rows)}


def main(argv=None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=200, help="cohort size of the recovery check (default 200)")
    p.add_argument("--quick", action="store_true", help="smaller run (60 subjects, 20 per site)")
    ns = p.parse_args(argv)
    n = 60 if ns.quick else ns.subjects
    results = {}
    t0 = time.perf_counter()
    results["speed_2mm"] = speed(10 if ns.quick else 30)
    print("speed:", json.dumps(results["speed_2mm"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results["write"] = write_speed(4 if ns.quick else 10, Path(tmp))
    print("write:", json.dumps(results["write"]), flush=True)
    results["recovery"] = recovery(n)
    print(f"\nrecovery on {n} subjects at 2 mm (label maps; relative error vs configured):")
    print(f"{'unit':18s} {'age paired':>10s} {'age cross':>10s} {'dis paired':>10s} {'dis cross':>10s}")
    for u, r in results["recovery"].items():
        def f(v):
            return "   -" if v is None else f"{v:+.3f}"
        print(f"{u:18s} {f(r['age_rel_error_paired']):>10s} {f(r['age_rel_error_cross']):>10s} "
              f"{f(r['disease_rel_error_paired']):>10s} {f(r['disease_rel_error_cross']):>10s}", flush=True)
    results["site_probe"] = site_probe(20 if ns.quick else 40)
    print("site probe accuracy:", json.dumps(results["site_probe"]), flush=True)
    results["ct"] = ct_speed()
    print("ct:", json.dumps(results["ct"]))
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    OUT.mkdir(exist_ok=True)
    (OUT / "sim.json").write_text(json.dumps(results, indent=2))
    print(f"\nwritten {OUT / 'sim.json'} ({results['wall_s']} s)")
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

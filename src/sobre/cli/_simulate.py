"""``sobre simulate brain|ct-lesions``: simulated cohorts on real anatomy, with ground truth."""

from __future__ import annotations

import re
import sys

from sobre.cli._common import add_scheduler_arg, open_compute_of


def register(sub) -> None:
    p = sub.add_parser(
        "simulate", help="simulated cohorts on real anatomy with known ground truth (brain MRI, CT lesions)",
        description="Make SIMULATED cohorts (never patient data; every header and table says so) for "
                    "benchmarks, validation and teaching. See docs/simulation.md.")
    s = p.add_subparsers(dest="simulate_cmd", metavar="KIND", required=True)

    b = s.add_parser(
        "brain", help="brain MRI cohort on Colin27 + AAL (ageing, sex, disease, site effects)",
        description="Simulated T1 brain MRI cohort on real anatomy (Colin27, AAL atlas): inter-subject "
                    "anatomy, region-specific ageing, sex and head size, optional disease atrophy, per-site "
                    "scanner effects; participants.tsv and ground truth (volumes, label maps, deformations).")
    b.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    b.add_argument("--subjects", type=int, default=None, metavar="N", help="number of subjects (default 10)")
    b.add_argument("--sites", type=int, default=None, metavar="K", help="number of sites (default 3)")
    b.add_argument("--seed", type=int, default=None, help="random seed (default 0); same seed, same bytes")
    b.add_argument("--disease", metavar="PRESET",
                   help="disease model: accelerated-ageing (alias schizophrenia-like: overlaps the ageing "
                        "regions) or visual (alias non-ageing: regions that do not age)")
    b.add_argument("--disease-strength", type=float, metavar="F", help="disease strength (default 1.0)")
    b.add_argument("--disease-regions", metavar="SPEC",
                   help="custom disease: comma-separated REGION=PERCENT, e.g. 'hippocampus=-8,Thalamus_L=-5' "
                        "(region groups, AAL names, or prefixes ending in *)")
    b.add_argument("--patient-fraction", type=float, metavar="P", help="share of patients (default 0.5)")
    b.add_argument("--id-prefix", metavar="P", help="participant ids sub-<P>0001, ... (letters and digits): "
                   "keeps cohorts apart when several are ingested into one workspace")
    b.add_argument("--format", choices=["dicom", "nifti", "bids"], default="dicom", help="image format (default dicom)")
    b.add_argument("--resolution", type=float, metavar="MM", help="voxel size in mm (default 2)")
    b.add_argument("--no-site-effects", action="store_true",
                   help="sites keep their names and scanners but image identically")
    b.add_argument("--common-grid", action="store_true",
                   help="write every image on the same isotropic grid (site voxel sizes still blur)")
    b.add_argument("--config", metavar="TOML", help="full configuration (see docs/simulation.md); flags override it")
    b.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes (output does not depend on it)")
    b.add_argument("--no-truth", action="store_true", help="skip per-subject truth files (tables are still written)")
    b.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    b.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_scheduler_arg(b)
    b.set_defaults(func=_brain)

    c = s.add_parser(
        "ct-lesions", help="lesions inserted into real CT volumes, with masks and size tables",
        description="Insert ellipsoid lesions (realistic HU, texture, soft edges, partial volume) into real CT "
                    "backgrounds, inside lung parenchyma or soft tissue only; exact masks and lesion tables "
                    "stratified by size (< 10, 10-20, 20-30 mm).")
    c.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    c.add_argument("--backgrounds", nargs="+", required=True, metavar="PATH",
                   help="CT volumes (NIfTI, NRRD, DICOM folder...) in HU")
    c.add_argument("--cases", type=int, metavar="N", help="number of cases (default: one per background, cycled)")
    c.add_argument("--lesions-per-case", default="3", metavar="N|A-B", help="lesions per case (default 3)")
    c.add_argument("--sizes", default="3-30mm", metavar="A-Bmm", help="longest diameter range (default 3-30mm)")
    c.add_argument("--kinds", default="auto", metavar="LIST",
                   help="comma-separated: solid, ground-glass, soft-tissue, or auto (default)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--format", choices=["nifti", "nrrd", "dicom"], default="nifti", help="image format (default nifti)")
    c.add_argument("--jobs", type=int, default=1, metavar="J")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--json", action="store_true")
    add_scheduler_arg(c)
    c.set_defaults(func=_ct)


def _range(text: str, what: str, cast=float, unit: str = "") -> tuple:
    from sobre.errors import ConfigError

    t = text.strip().lower()
    if unit and t.endswith(unit):
        t = t[: -len(unit)]
    number = r"\d+" if cast is int else r"\d+(?:\.\d+)?"
    m = re.fullmatch(rf"\s*({number})\s*(?:-\s*({number}))?\s*", t)
    if not m:
        kind = "whole numbers " if cast is int else ""
        raise ConfigError(f"cannot read {what} {text!r}", expected=f"{kind}N or A-B{unit}, e.g. 3-30{unit}",
                          found=text)
    a = cast(m.group(1))
    b = cast(m.group(2)) if m.group(2) else a
    return a, b


class _Render:
    """Turns the library's ``progress(stage, done, total)`` calls into stderr output: a line when the
    (slow, once per configuration) calibration starts, a bar per stage on a terminal."""

    NOTES = {"calibrating": "calibrating the brain deformation model (once per configuration; cached)"}
    UNITS = {"subjects": "subject", "cases": "case"}

    def __init__(self, ns) -> None:
        from sobre.cli._common import show_progress

        self.quiet = bool(getattr(ns, "json", False))
        self.bars = show_progress(ns)
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        from sobre.base import FAILED, RETRIED

        if stage.endswith((RETRIED, FAILED)):  # tasks of a cluster run again or failed: said on the bar
            if self.bar is not None:
                self.bar.set_postfix_str(f"{stage[len(self.stage or ''):].strip(' ()')} {done}")
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            if stage in self.NOTES and not self.quiet:
                print(self.NOTES[stage], file=sys.stderr)
            if self.bars and stage in self.UNITS and (total or 0) > 1:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=stage, unit=self.UNITS[stage], file=sys.stderr)
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _brain_config(ns):
    """The cohort configuration: the TOML file (if any), then the flags on top, validated as one."""
    from sobre.errors import ConfigError
    from sobre.sim import BrainCohortConfig

    data = BrainCohortConfig.from_toml(ns.config).model_dump() if ns.config else {}
    flags = {"subjects": ns.subjects, "sites": ns.sites, "seed": ns.seed, "resolution": ns.resolution,
             "patient_fraction": ns.patient_fraction, "id_prefix": ns.id_prefix}
    data.update({k: v for k, v in flags.items() if v is not None})
    if ns.no_site_effects:
        data["site_effects"] = False
    if ns.common_grid:
        data["output_grid"] = "common"
    if ns.disease_regions:
        effects = {}
        for part in ns.disease_regions.split(","):
            if "=" not in part:
                raise ConfigError(f"cannot read disease region {part!r}", expected="REGION=PERCENT, e.g. hippocampus=-8",
                                  found=part, fix="write --disease-regions 'hippocampus=-8,Thalamus_L=-5'")
            k, v = part.split("=", 1)
            try:
                effects[k.strip()] = float(v)
            except ValueError:
                raise ConfigError(f"disease effect of {k.strip()!r} is not a number", expected="a percent change, "
                                  "e.g. -8", found=v, fix="write REGION=PERCENT, e.g. hippocampus=-8") from None
        data["disease"] = {"name": ns.disease or "custom", "effects": effects}
    elif ns.disease:
        data["disease"] = {"preset": ns.disease}
    if ns.disease_strength is not None:
        if not data.get("disease"):
            raise ConfigError("--disease-strength needs a disease", found=f"--disease-strength {ns.disease_strength}",
                              fix="add --disease accelerated-ageing (or visual)")
        data["disease"] = {**data["disease"], "strength": ns.disease_strength}
    return BrainCohortConfig.from_dict(data)


def _brain(ns) -> int:
    import json

    from sobre.sim import write_brain_cohort

    cfg = _brain_config(ns)
    render = _Render(ns)
    try:
        with open_compute_of(ns) as compute:
            report = write_brain_cohort(cfg, ns.out, format=ns.format, jobs=ns.jobs, overwrite=ns.overwrite,
                                        truth=not ns.no_truth, progress=render, compute=compute)
    finally:
        render.close()
    if ns.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        rate = cfg.subjects / report.seconds if report.seconds else float("nan")
        print(f"{cfg.subjects} SIMULATED subjects ({ns.format}) in {report.out_dir} "
              f"({report.seconds:.1f} s, {rate:.2f} subjects/s); participants.tsv, "
              f"{'regional volumes (--no-truth: no label maps)' if ns.no_truth else 'truth'} in {report.truth_dir}")
    return 0


def _ct(ns) -> int:
    import json

    from sobre.base import validate_config
    from sobre.sim import CTLesionCohortConfig, write_ct_lesion_cohort

    n = _range(ns.lesions_per_case, "lesions per case", cast=int)
    sizes = _range(ns.sizes, "lesion sizes", unit="mm")
    kinds = [k.strip() for k in ns.kinds.split(",") if k.strip()]
    cfg = validate_config({"backgrounds": list(ns.backgrounds), "cases": ns.cases, "seed": ns.seed,
                           "lesions": {"lesions_per_case": n, "sizes_mm": sizes, "kinds": kinds}}, CTLesionCohortConfig)
    total = cfg.resolved_cases()
    render = _Render(ns)
    try:
        with open_compute_of(ns) as compute:
            report = write_ct_lesion_cohort(cfg, ns.out, format=ns.format, jobs=ns.jobs, overwrite=ns.overwrite,
                                            progress=render, compute=compute)
    finally:
        render.close()
    if ns.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        strata = ", ".join(f"{k}: {v}" for k, v in sorted(report.extra["by_stratum"].items()))
        print(f"{total} cases, {report.extra['lesions']} SIMULATED lesions ({strata}) in {report.out_dir}")
    return 0


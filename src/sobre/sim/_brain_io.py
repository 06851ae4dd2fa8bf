"""``write_brain_cohort``: a simulated brain MRI cohort on disk, with participants.tsv and ground truth.

Layout (``format="dicom"``; ``nifti`` puts ``nifti/sub-XXXX.nii.gz`` instead of ``dicom/``)::

    OUT/README.md                  what this is (SIMULATED), how it was made, what is where
    OUT/simulation.json            resolved configuration, seed, sites, calibration summary
    OUT/participants.tsv (+.json)  participant_id, age, sex, height, weight, bmi, site, diagnosis, ..., simulated
    OUT/sites.tsv                  each site's scanner and image effects
    OUT/dicom/sub-0001/IM0001.dcm  one T1w series per subject
    OUT/truth/regions.tsv          label, name, group, age rate, disease effect
    OUT/truth/volumes.tsv          regional volumes of every subject (mm^3)
    OUT/truth/template_labels.nii.gz   the simulation atlas on the template (1 mm)
    OUT/truth/disease_pattern.nii.gz   template map of the disease's log-volume change at strength 1
    OUT/truth/sub-0001/sub-0001_dseg.nii.gz               atlas warped onto the subject's image grid
    OUT/truth/sub-0001/sub-0001_desc-anatomy_xfm.nii.gz   displacement, inter-subject anatomy
    OUT/truth/sub-0001/sub-0001_desc-effects_xfm.nii.gz   displacement, age/individual/disease effects
    OUT/truth/sub-0001/sub-0001_desc-disease_map.nii.gz   patients: disease log-volume change per voxel
    OUT/truth/sub-0001/sub-0001_truth.json                targets, latent variables, volumes, pre-affine
    OUT/truth/sub-0001/sub-0001_space-colin27_logjac.nii.gz   template_maps: log-Jacobian in template space
    OUT/truth/participants_truth.tsv   diagnosis, subtype, complete clinical values, what was withheld
    OUT/truth/subtype-NAME_pattern.nii.gz   disease with subtypes: each subtype's pattern at strength 1

``format="bids"``: ``OUT/sub-0001/anat/sub-0001_T1w.nii.gz`` + ``.json`` sidecar,
``dataset_description.json``, and the truth under ``OUT/derivatives/sobre-sim/`` (same names).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sobre.base import Progress, no_progress
from sobre.errors import ConfigError
from sobre.image import Image
from sobre.sim import _write as w
from sobre.sim._atlas import CSF, N_LABELS, REGION_GROUPS
from sobre.sim._brain import BrainSimulator, SimulatedBrain, disease_pattern
from sobre.sim._config import BrainCohortConfig

PARTICIPANT_COLUMNS = ["participant_id", "age", "sex", "height", "weight", "bmi", "site", "diagnosis", "disease",
                       "disease_strength", "simulated"]
PARTICIPANT_DESCRIPTION = {
    "participant_id": {"Description": "simulated participant (no real person)"},
    "age": {"Description": "age at the scan", "Units": "year"},
    "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
    "height": {"Description": "body height", "Units": "m"},
    "weight": {"Description": "body weight", "Units": "kg"},
    "bmi": {"Description": "body-mass index, weight / height^2", "Units": "kg/m^2"},
    "site": {"Description": "acquisition site (also DICOM InstitutionName)"},
    "diagnosis": {"Description": "control, or the disease model's label (also DICOM AdmittingDiagnosesDescription)"},
    "disease": {"Description": "disease model of patients ('' for controls)"},
    "disease_strength": {"Description": "individual disease strength (0 for controls)"},
    "simulated": {"Description": "every row of this table is simulated", "Levels": {"yes": "simulated"}},
}
CLINICAL_DESCRIPTION = {
    "nfl": {"Description": "SIMULATED serum neurofilament light chain (higher with age and in patients); n/a: "
                           "not measured", "Units": "pg/mL"},
    "sodium": {"Description": "SIMULATED serum sodium (no link to anything); n/a: not measured", "Units": "mmol/L"},
}
TRUTH_COLUMNS = ["participant_id", "diagnosis", "subtype", "disease_strength", "substrate", "nfl", "sodium", "bmi",
                 "nfl_missing", "sodium_missing", "bmi_missing", "nfl_missing_probability",
                 "sodium_missing_probability", "bmi_missing_probability", "simulated"]


def write_brain_cohort(config: BrainCohortConfig, out_dir: str | Path, *, format: str = "dicom", jobs: int = 1,
                       overwrite: bool = False, truth: bool = True, cache_dir=None,
                       progress: Progress = no_progress, compute=None) -> w.WriteReport:
    """Simulate ``config`` and write it under ``out_dir`` (see the module docstring for the layout).

    Parameters
    ----------
    format : {"dicom", "nifti", "bids"}
    jobs : int
        Worker processes; the output does not depend on it.
    truth : bool
        Write the per-subject ground truth (label maps, deformations, disease maps); the tables
        (volumes.tsv, participants.tsv) are always written.
    progress : callable
        ``progress(stage, done, total)``: ``"calibrating"`` (only when not cached), then ``"subjects"``.
    compute : sobre.base.Compute, optional
        A cluster: its workers simulate and write the subjects (they must see ``out_dir``: checked
        before anything is written); calibration and tables stay here. The output does not depend on it.

    Raises
    ------
    ConfigError
        An invalid configuration or format (checked before anything is written).
    InputError
        An output folder that is a file, not writable, or not empty without ``overwrite``.
    """
    if format not in w.FORMATS:
        raise ConfigError(f"unknown output format {format!r}", expected=", ".join(w.FORMATS), found=format)
    config.validate()
    out = Path(out_dir)
    w.check_out_dir(out, overwrite)
    if compute is not None and compute.distributed:
        compute.check_shared(write=[out])
    t0, c0 = time.perf_counter(), time.process_time()
    sim = BrainSimulator(config, cache_dir=cache_dir, progress=progress)
    sim.calibration  # noqa: B018 - calibrate once in this process, before workers fork
    sim._progress = no_progress  # calibrated: the simulator travels to workers without the caller's bars
    truth_dir = out / ("derivatives/sobre-sim" if format == "bids" else "truth")
    image_dir = out if format == "bids" else out / format
    digest = sim.digest

    def work(i: int) -> dict:
        subj = sim.subject(i)
        return _write_subject(subj, format, image_dir, truth_dir if truth else None, digest)

    rows = w.run_ordered(config.subjects, work, max(1, int(jobs)), progress, compute=compute)
    _write_tables(sim, out, truth_dir, format, rows)
    files = sum(1 for p in out.rglob("*") if p.is_file())
    report = w.WriteReport(out_dir=out, format=format, subjects=config.subjects, files=files,
                           participants=out / "participants.tsv", truth_dir=truth_dir, image_dir=image_dir)
    report.seconds = round(time.perf_counter() - t0, 3)
    report.cpu_seconds = round(time.process_time() - c0, 3)  # parent process only when jobs > 1
    return report


def _write_subject(subj: SimulatedBrain, fmt: str, image_dir: Path, truth_dir: Path | None, digest: str) -> dict:
    image, meta, truth = subj
    sid = meta["subject_id"]
    n = 0
    if fmt == "dicom":
        m, extra = w.brain_dicom_meta(meta, digest)
        n += len(w.write_dicom(image, image_dir / sid, m, extra, uid_seed=f"sobre.sim/{digest}/{sid}"))
    elif fmt == "nifti":
        w.save_image(image, image_dir / f"{sid}.nii.gz")
        n += 1
    else:
        anat = image_dir / sid / "anat"
        w.save_image(image, anat / f"{sid}_T1w.nii.gz")
        w.atomic_write_text(anat / f"{sid}_T1w.json", w.dumps(w.bids_sidecar(meta, image)))
        n += 2
    if truth_dir is not None:
        d = truth_dir / sid
        w.save_image(truth.labels, d / f"{sid}_dseg.nii.gz")
        w.save_image(truth.deformation[0], d / f"{sid}_desc-anatomy_xfm.nii.gz")
        w.save_image(truth.deformation[1], d / f"{sid}_desc-effects_xfm.nii.gz")
        n += 3
        if truth.disease_map is not None:
            w.save_image(truth.disease_map, d / f"{sid}_desc-disease_map.nii.gz")
            n += 1
        if truth.template_map is not None:
            w.save_image(truth.template_map, d / f"{sid}_space-colin27_logjac.nii.gz")
            n += 1
        record = {
            "Simulated": True, "Notice": w.NOTICE, "subject_id": sid, "metadata": meta,
            "targets": truth.targets, "latent": truth.latent, "volumes_mm3": truth.volumes,
            "baseline_volumes_mm3": truth.baseline_volumes, "subtype": truth.subtype, "clinical": truth.clinical,
            "deformation": ("voxel at LPS x was sampled from the template at y = q + E(q), q = p + A(p), "
                            "p = latent.pre_affine @ x; A = desc-anatomy_xfm, E = desc-effects_xfm "
                            "(LPS mm, trilinear); see sobre.sim.warp_labels"),
        }
        w.atomic_write_text(d / f"{sid}_truth.json", w.dumps(record))
        n += 1
    row = {
        "participant_id": sid, "age": meta["age"], "sex": meta["sex"], "height": meta["height_m"],
        "weight": meta["weight_kg"], "bmi": meta["bmi"], "site": meta["site"], "diagnosis": meta["diagnosis"],
        "disease": meta["disease"], "disease_strength": meta["disease_strength"], "simulated": "yes",
    }
    if truth.clinical is not None:
        row["nfl"], row["sodium"] = meta.get("nfl"), meta.get("sodium")
    hidden = {"participant_id": sid, "diagnosis": meta["diagnosis"], "subtype": truth.subtype or "",
              "disease_strength": meta["disease_strength"], "substrate": truth.latent.get("substrate", "colin27"),
              "simulated": "yes"}
    if truth.clinical is not None:
        for k in ("nfl", "sodium", "bmi"):
            hidden[k] = truth.clinical["values"][k]
            hidden[f"{k}_missing"] = truth.clinical["missing"][k]
            hidden[f"{k}_missing_probability"] = round(truth.clinical["missing_probability"][k], 6)
    vol = {"participant_id": sid, **truth.volumes}
    base = None if truth.baseline_volumes is None else {"participant_id": sid, **truth.baseline_volumes}
    return {"participant": row, "volumes": vol, "baseline": base, "hidden": hidden, "files": n}


def _write_tables(sim: BrainSimulator, out: Path, truth_dir: Path, fmt: str, rows: list[dict]) -> None:
    cfg = sim.config
    columns = PARTICIPANT_COLUMNS[:-1] + (["nfl", "sodium"] if cfg.clinical else []) + ["simulated"]
    w.atomic_write_text(out / "participants.tsv", w.tsv([r["participant"] for r in rows], columns))
    desc = dict(PARTICIPANT_DESCRIPTION, **(CLINICAL_DESCRIPTION if cfg.clinical else {}))
    if cfg.clinical:
        desc["bmi"] = dict(desc["bmi"], Description=desc["bmi"]["Description"] + "; n/a: not measured (weight too)")
    w.atomic_write_text(out / "participants.json", w.dumps(desc))
    truth_cols = [c for c in TRUTH_COLUMNS if cfg.clinical or not any(c.startswith(v) for v in ("nfl", "sodium", "bmi"))]
    w.atomic_write_text(truth_dir / "participants_truth.tsv", w.tsv([r["hidden"] for r in rows], truth_cols))
    names = list(sim.template.names[1:]) + ["ICV", "Brain"]
    w.atomic_write_text(truth_dir / "volumes.tsv", w.tsv([r["volumes"] for r in rows], ["participant_id"] + names))
    if any(r["baseline"] for r in rows):
        w.atomic_write_text(truth_dir / "baseline_volumes.tsv",
                            w.tsv([r["baseline"] for r in rows], ["participant_id"] + names))
    site_cols = ["name", "manufacturer", "model", "field_strength", "sequence", "voxel_size", "orientation",
                 "intensity_scale", "intensity_offset", "gamma", "bias_strength", "noise", "weight", "age_min",
                 "age_max", "female_fraction", "patient_fraction"]
    site_rows = []
    for s in sim.sites:
        g = sim.site_grid(s)
        r = {c: getattr(s, c) for c in site_cols if c != "voxel_size"}
        r["voxel_size"] = "x".join(w.fmt(round(float(v), 4)) for v in np.linalg.norm(g.affine[:3, :3], axis=0))
        site_rows.append(r)
    w.atomic_write_text(out / "sites.tsv", w.tsv(site_rows, site_cols))
    group_of = {lab: g for g, labs in REGION_GROUPS.items() for lab in labs}
    pattern = sim.pattern
    reg_rows = []
    for lab in range(1, N_LABELS):
        g = group_of.get(lab, "csf" if lab == CSF else "")
        strength = cfg.disease.strength if cfg.disease else 0.0
        row = {
            "label": lab, "name": sim.template.names[lab], "group": g,
            "template_volume_mm3": float(sim.template.volumes_mm3[lab]),
            "age_rate_percent_per_decade": cfg.age.rates.get(g, 0.0) if lab != CSF else None,
            "disease_percent": float(np.expm1(pattern[lab] * strength) * 100) if cfg.disease else 0.0,
        }
        for name, pat in sim.subtype_patterns.items():  # shared + subtype, at the cohort's strength
            row[f"disease_percent_{name}"] = float(np.expm1(pat[lab] * strength) * 100)
        reg_rows.append(row)
    w.atomic_write_text(truth_dir / "regions.tsv", w.tsv(reg_rows, list(reg_rows[0])))
    tpl = sim.template
    w.save_image(Image(tpl.labels, tpl.affine, modality="SEG", metadata={"simulated": "yes"}),
                 truth_dir / "template_labels.nii.gz")
    if cfg.disease is not None:
        pat = disease_pattern(tpl, cfg.disease).astype(np.float32)[tpl.labels]
        w.save_image(Image(pat, tpl.affine, metadata={"simulated": "yes"}), truth_dir / "disease_pattern.nii.gz")
        for name, p in sim.subtype_patterns.items():
            w.save_image(Image(p.astype(np.float32)[tpl.labels], tpl.affine, metadata={"simulated": "yes"}),
                         truth_dir / f"subtype-{name}_pattern.nii.gz")
    from sobre import __version__

    summary = {
        "Simulated": True, "Notice": w.NOTICE, "generator": f"sobre.sim {__version__}", "digest": sim.digest,
        "format": fmt, "config": cfg.to_dict(),
        "sites": [s.to_dict() for s in sim.sites],
        "template": {"source": _substrate_text(cfg.substrate), "digest": tpl.digest, "substrate": cfg.substrate,
                     "registration_quality": tpl.notes.get("quality")},
        "calibration": {"residual_log": round(float(sim.calibration.residual), 5),
                        "age_probes_decades": sim.calibration.age_decades.tolist()},
        "counts": {"subjects": len(rows), "patients": sum(r["participant"]["diagnosis"] != "control" for r in rows),
                   "subtypes": {n: sum(r["hidden"]["subtype"] == n for r in rows) for n in sim.subtypes}},
    }
    w.atomic_write_text(out / "simulation.json", w.dumps(summary))
    desc = {"Name": f"SIMULATED brain MRI cohort (sobre.sim, {w.NOTICE})", "BIDSVersion": "1.9.0",
            "DatasetType": "raw", "License": "CC0 (simulated data)",
            "GeneratedBy": [{"Name": "sobre.sim", "Version": __version__}],
            "HowToAcknowledge": "Simulated with Sobre on Colin27 (Holmes et al. 1998) and AAL "
                                "(Tzourio-Mazoyer et al. 2002).", "Simulated": True}
    w.atomic_write_text(out / "dataset_description.json", w.dumps(desc))
    if fmt == "bids":
        ddesc = dict(desc, Name="sobre.sim ground truth", DatasetType="derivative")
        w.atomic_write_text(truth_dir / "dataset_description.json", w.dumps(ddesc))
    w.atomic_write_text(out / "README.md", _readme(sim, fmt))


def _readme(sim: BrainSimulator, fmt: str) -> str:
    cfg = sim.config
    dis = (f"{cfg.disease.name} (strength {cfg.disease.strength}, label '{cfg.disease.label}')"
           if cfg.disease else "none")
    where = {"dicom": "dicom/sub-XXXX/ (one DICOM series per subject)", "nifti": "nifti/sub-XXXX.nii.gz",
             "bids": "sub-XXXX/anat/sub-XXXX_T1w.nii.gz (+ .json)"}[fmt]
    truth = "derivatives/sobre-sim/" if fmt == "bids" else "truth/"
    return f"""# SIMULATED brain MRI cohort - not patient data

Every image, header and table in this folder was made by `sobre.sim` from one real anatomy
({_substrate_text(cfg.substrate)}). No person was scanned; nothing here is patient data. DICOM headers say
so too (PatientName SIMULATED^..., PatientIdentityRemoved YES, SyntheticData YES,
ClinicalTrialProtocolName "{w.NOTICE}").

- subjects: {cfg.subjects}, seed: {cfg.seed}, sites: {len(sim.sites)}, site effects: {cfg.site_effects}
- resolution: {cfg.resolution} mm, disease: {dis}
- images: {where}
- participants.tsv: age, sex, height, weight, BMI, site, diagnosis{", NfL, sodium (n/a: withheld)" if cfg.clinical else ""} (and participants.json)
- sites.tsv: scanners and image effects per site
- {truth}: ground truth (regional volumes, label maps, deformations, disease maps; regions.tsv;
  participants_truth.tsv: subtypes, complete clinical values, what was withheld)
- simulation.json: the full configuration; the same configuration and seed give the same bytes

See docs/simulation.md in Sobre for the model, the published rates it is calibrated against,
and its limits.
"""


def _substrate_text(substrate: str) -> str:
    if substrate == "itk-head":
        return ("the ITK examples' T1 head (KmeansTest_T1UCharRaw, Debian insighttoolkit5-examples) carrying the "
                "AAL atlas by registration to Colin27")
    return "Colin27 (ch2) + AAL, Debian mricron-data"

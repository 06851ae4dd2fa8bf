"""``write_ct_lesion_cohort``: CT cases with inserted lesions, masks and lesion tables on disk.

Layout::

    OUT/README.md, OUT/simulation.json
    OUT/images/case-0001.nii.gz   CT with lesions (int16 HU); .nrrd, or a DICOM folder with format="dicom"
    OUT/masks/case-0001.nii.gz    lesion instance mask (uint16: lesion k = k), same grid
    OUT/lesions.tsv               one row per lesion: case, id, kind, centre (LPS mm and voxel), diameter,
                                  semi-axes, equivalent diameter, volume, size stratum, HU, mask voxels
    OUT/cases.tsv                 one row per case: background, shape, spacing, lesions placed / skipped

Only the pixels and geometry of a background are used: none of its header (names, dates, IDs) is
copied into the output.
"""

from __future__ import annotations

import time
from pathlib import Path

from sobre.base import Progress, no_progress
from sobre.errors import ConfigError
from sobre.sim import _write as w
from sobre.sim._ct import CTLesionCohortConfig, case_id, simulate_ct_case

CT_FORMATS = ("nifti", "nrrd", "dicom")
LESION_COLUMNS = ["case_id", "lesion_id", "kind", "region", "size_stratum", "diameter_mm", "equivalent_diameter_mm",
                  "semi_axis_1_mm", "semi_axis_2_mm", "semi_axis_3_mm", "volume_mm3", "partial_volume_mm3", "mask_volume_mm3",
                  "mask_voxels", "center_x_mm", "center_y_mm", "center_z_mm", "center_i", "center_j", "center_k",
                  "mean_hu", "background_hu", "contrast_hu", "background", "simulated"]


def write_ct_lesion_cohort(config: CTLesionCohortConfig, out_dir: str | Path, *, format: str = "nifti",
                           jobs: int = 1, overwrite: bool = False, progress: Progress = no_progress,
                           compute=None) -> w.WriteReport:
    """Make ``config.resolved_cases()`` cases and write them under ``out_dir`` (layout in the module docstring).

    ``progress("cases", done, total)`` is called after each case. Configuration, format and output folder
    are checked before anything is written (:class:`ConfigError`, :class:`InputError`). ``compute``: a
    cluster's workers make and write the cases (they must see the backgrounds and ``out_dir``: checked first).
    """
    if format not in CT_FORMATS:
        raise ConfigError(f"unknown output format {format!r}", expected=", ".join(CT_FORMATS), found=format)
    if not config.backgrounds:
        raise ConfigError("no CT backgrounds given", fix="pass --backgrounds PATH [PATH ...]")
    config.validate()
    out = Path(out_dir)
    w.check_out_dir(out, overwrite)
    if compute is not None and compute.distributed:
        files = [p for b in config.backgrounds for p in ([b] if Path(b).is_file() else sorted(Path(b).rglob("*"))[:1])]
        compute.check_shared(read=[p for p in files if Path(p).is_file()], write=[out])
    t0, c0 = time.perf_counter(), time.process_time()
    digest = w_digest(config)

    def work(i: int) -> dict:
        ct, mask, rows = simulate_ct_case(config, i)
        cid = case_id(i)
        if format == "dicom":
            m = {"patient_id": cid, "patient_name": f"SIMULATED^{cid}", "series_description":
                 "SIMULATED lesions - not a diagnostic image", "study_description": f"SIMULATED CT ({w.NOTICE})",
                 "body_part": "CHEST", "series_number": 1, "study_id": "SIM"}
            extra = {"PatientIdentityRemoved": "YES", "DeidentificationMethod": f"{w.NOTICE} (sobre.sim)",
                     "SyntheticData": "YES", "ClinicalTrialSponsorName": "sobre.sim (SIMULATED)",
                     "ClinicalTrialProtocolID": f"SOBRE-SIM-{digest[:8]}", "ClinicalTrialProtocolName": w.NOTICE,
                     "ClinicalTrialSiteID": "", "ClinicalTrialSiteName": "", "ClinicalTrialSubjectID": cid,
                     "ImageComments": f"{w.NOTICE}: simulated lesions inserted into a real CT (sobre.sim {digest})"}
            files = len(w.write_dicom(ct, out / "images" / cid, m, extra, uid_seed=f"sobre.sim/ct/{digest}/{cid}"))
        else:
            ext = ".nii.gz" if format == "nifti" else ".nrrd"
            w.save_image(ct, out / "images" / f"{cid}{ext}")
            files = 1
        w.save_image(mask, out / "masks" / f"{cid}.nii.gz")
        placed = [r for r in rows if r.get("placed")]
        case_row = {"case_id": cid, "background": rows[0]["background"] if rows else "",
                    "shape": "x".join(str(s) for s in ct.shape),
                    "spacing_mm": "x".join(w.fmt(round(float(s), 4)) for s in ct.spacing),
                    "lesions": len(placed), "skipped": len(rows) - len(placed), "simulated": "yes"}
        les = []
        for r in placed:
            r = dict(r)
            ax = r.pop("semi_axes_mm")
            r.update({"semi_axis_1_mm": ax[0], "semi_axis_2_mm": ax[1], "semi_axis_3_mm": ax[2], "simulated": "yes"})
            les.append(r)
        return {"case": case_row, "lesions": les, "files": files + 1}

    results = w.run_ordered(config.resolved_cases(), work, max(1, int(jobs)), progress, stage="cases",
                            compute=compute)
    lesion_rows = [r for res in results for r in res["lesions"]]
    w.atomic_write_text(out / "lesions.tsv", w.tsv(lesion_rows, LESION_COLUMNS))
    case_cols = ["case_id", "background", "shape", "spacing_mm", "lesions", "skipped", "simulated"]
    w.atomic_write_text(out / "cases.tsv", w.tsv([r["case"] for r in results], case_cols))
    from sobre import __version__

    counts: dict = {}
    for r in lesion_rows:
        counts[r["size_stratum"]] = counts.get(r["size_stratum"], 0) + 1
    summary = {"Simulated": True, "Notice": w.NOTICE, "generator": f"sobre.sim {__version__}", "digest": digest,
               "format": format, "config": _config_dict(config), "lesions_by_stratum": counts,
               "cases": len(results), "lesions": len(lesion_rows)}
    w.atomic_write_text(out / "simulation.json", w.dumps(summary))
    w.atomic_write_text(out / "README.md", """# SIMULATED lesions in CT - not diagnostic images

Lesions in these CT volumes were inserted by `sobre.sim` (ellipsoids with soft edges, texture and
realistic HU) into the background CT volumes listed in cases.tsv. The lesions are not real findings.
Only pixels and geometry of the backgrounds were used; no header information was copied.

- images/: CT with lesions (HU), masks/: lesion instance masks (lesion k = value k)
- lesions.tsv: size (longest diameter), size stratum, position (LPS mm and voxel), HU, volume
- simulation.json: configuration; the same configuration and seed give the same bytes
""")
    report = w.WriteReport(out_dir=out, format=format, subjects=len(results),
                           files=sum(r["files"] for r in results) + 4, image_dir=out / "images")
    report.extra = {"lesions": len(lesion_rows), "by_stratum": counts}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.cpu_seconds = round(time.process_time() - c0, 3)
    return report


def _config_dict(config: CTLesionCohortConfig) -> dict:
    d = config.to_dict()
    d["backgrounds"] = [Path(b).name for b in config.backgrounds]
    return d


def w_digest(config: CTLesionCohortConfig) -> str:
    from sobre.sim._config import config_digest

    return config_digest(_config_dict(config))


"""``sobre init``, ``sobre ingest``, ``sobre info``, ``sobre export``."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from sobre.cli._common import (add_json_arg, track, add_scheduler_arg, add_workspace_arg, emit_json, open_compute_of,
                               open_workspace, progress_bars)


def register(sub) -> None:
    p = sub.add_parser("init", help="create a workspace (folder + catalog database)")
    p.add_argument("dir", help="workspace folder to create")
    p.add_argument("--db", help="database URL (default: SQLite file in the folder; e.g. postgresql+psycopg://...)")
    add_json_arg(p)
    p.set_defaults(func=_init)

    p = sub.add_parser("ingest", help="catalogue images (DICOM, NIfTI, NRRD, PNG/TIFF, BIDS) into the workspace")
    p.add_argument("paths", nargs="+", help="files or folders (walked recursively)")
    add_workspace_arg(p)
    p.add_argument("--site", help="site name (default: InstitutionName of each file)")
    p.add_argument("--clinical", help="clinical table (.csv, .tsv, .xlsx) joined by subject id")
    p.add_argument("--copy", action="store_true", help="copy files into the workspace (content-addressed)")
    p.add_argument("--deidentify", action="store_true",
                   help="de-identify DICOM files first (PS3.15 basic profile + the workspace's [privacy] options); "
                        "always on when sobre.toml says [privacy] deidentify = true")
    p.add_argument("--workers", type=int, default=None, help="header-reading processes (default: 2)")
    add_scheduler_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_ingest)

    p = sub.add_parser("info", help="geometry and metadata of a file, folder or catalogued series",
                       description="Show every readable image of a file or folder (pixels checked: compressed "
                                   "data is decoded) or a catalogued series. Files and series that cannot be "
                                   "shown are listed as problems (stderr, or 'problems' in --json). Exit status 0 "
                                   "when at least one image was shown, 2 when nothing readable was found.")
    p.add_argument("target", help="path, or a SeriesInstanceUID of the workspace (uid or uid#label)")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_info)

    p = sub.add_parser("export", help="write a catalogued series (or a file/folder) as NIfTI/NRRD")
    p.add_argument("target", help="SeriesInstanceUID (uid or uid#label) or a path")
    p.add_argument("--to", required=True, help="output file: .nii.gz, .nii, .nrrd, .mha")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_export)


def _init(ns) -> int:
    from sobre.catalog import Workspace

    ws = track(Workspace.init(ns.dir, ns.db))
    info = ws.summary()
    if ns.json:
        emit_json(info)
    else:
        print(f"workspace ready: {ws.root} ({info['database']})")
    return 0


def _ingest(ns) -> int:
    from sobre.errors import InputError

    missing = [p for p in ns.paths if not Path(p).exists()]
    if missing:  # refused before anything is read or written
        raise InputError("no such file or folder", path=missing[0],
                         found=("also missing: " + ", ".join(missing[1:6]) + (" ..." if len(missing) > 6 else ""))
                         if len(missing) > 1 else None,
                         fix="check the path; nothing was ingested")
    with open_workspace(ns) as ws, open_compute_of(ns, ws) as compute, progress_bars(ns) as progress:
        report = ws.intake.ingest(ns.paths, site=ns.site, clinical=ns.clinical, copy=ns.copy, progress=progress,
                                  workers=ns.workers, deidentify=True if ns.deidentify else None, compute=compute)
    if ns.json:
        emit_json(report.to_dict())
    else:
        print(f"files: {report.new} new, {report.known} already known, {report.changed} changed, "
              f"{len(report.skipped)} skipped" + (f"; {report.deidentified} de-identified" if report.deidentified else "")
              + (f"; {report.objects} non-image objects" if report.objects else ""))
        print(f"series: {report.series_new} new, {report.series_updated} updated, "
              f"{len(report.series_problems)} with problems")
        for path, reason in report.skipped[:20]:
            print(f"  skipped {path}: {reason}")
        if len(report.skipped) > 20:
            print(f"  ... and {len(report.skipped) - 20} more skipped (see --json)")
        for uid, problem in report.series_problems[:20]:
            print(f"  problem in series {uid}: {problem}")
        if report.pixel_review:
            print(f"  {len(report.pixel_review)} de-identified instance(s) may carry burned-in text: review their "
                  "pixels (see --json for the list)")
        if report.clinical:
            names = ", ".join(v["name"] for v in report.clinical["variables"])
            print(f"clinical: {report.clinical['subjects']} subjects, variables: {names}")
    if report.clinical_error:
        import sys

        print(f"error: {report.clinical_error}", file=sys.stderr)
        return 2
    return 0


_UID_LIKE = re.compile(r"^[0-9][0-9.]*(#.*)?$")


def _catalogued(ns):
    """The workspace, for a target that is not an existing path: it must then look like a UID."""
    from sobre.errors import InputError

    if not _UID_LIKE.match(ns.target):
        raise InputError("no such file or folder", path=ns.target,
                         expected="an existing file or folder, or a SeriesInstanceUID (digits and dots) "
                                  "of the workspace",
                         fix="check the path")
    return open_workspace(ns)


def _info(ns) -> int:
    """Every readable image of a file or folder (or a catalogued series).

    Files and series that cannot be shown are listed as problems: lines on stderr, or ``problems``
    in ``--json`` (beside the summary when one image is shown, else ``{"images": [...],
    "problems": [...]}``; a plain list of summaries when there are several images and no
    problem). Exit status 0 when something was shown, 2 when nothing readable was found.
    """
    import sys

    import sobre
    from sobre.errors import InputError, Problems

    problems = None
    if Path(ns.target).exists():
        # every readable volume is shown; files and series that cannot be are listed as problems
        problems = Problems()
        images = sobre.load_all(ns.target, problems=problems, verify=True)  # exit 0: every image shown decodes
        errors = problems.at("error")
        if not images and Path(ns.target).is_file() and len(errors) == 1:
            # one file that cannot be read: its own error, as for every other command
            raise InputError(errors[0].message, path=errors[0].path, tag=errors[0].tag, fix=errors[0].fix)
        if not images:
            err = InputError("no readable image found", path=ns.target,
                             expected="at least one DICOM series or NIfTI, NRRD/MetaImage, PNG, JPEG or TIFF file",
                             found=f"{len(problems.at('error'))} file(s) or series that cannot be read"
                             if problems else "no image file",
                             fix="see the problems listed" if problems else None)
            if ns.json:
                emit_json(dict(err.to_dict(), problems=problems.to_list()))
            for prob in problems:
                print(f"problem: {prob}", file=sys.stderr)
            print(f"error: {err}", file=sys.stderr)
            return 2
        out = [im.summary() for im in images]
        if len(out) == 1:  # one image: its summary, as ever, with the problems beside it
            out = dict(out[0], problems=problems.to_list())
        elif problems:
            out = {"images": out, "problems": problems.to_list()}
    else:
        ws = _catalogued(ns)
        rec = ws.series(ns.target)
        out = rec
        if rec["status"] == "ok":
            out = dict(rec, image=ws.load(f"{rec['series_uid']}#{rec['label']}").summary())
    if ns.json:
        emit_json(out)
    else:
        items = out.get("images", out) if isinstance(out, dict) else out
        for item in items if isinstance(items, list) else [items]:
            img = item.get("image", item)
            print(f"shape {img.get('shape')}  spacing {img.get('spacing')}  orientation {img.get('orientation')}  "
                  f"modality {img.get('modality')}  dtype {img.get('dtype')}")
            if img.get("metadata", {}).get("geometry_problem"):
                print(f"geometry problem: {img['metadata']['geometry_problem']}")
            if "affine_lps" in img:
                print("affine (LPS):")
                for row in img["affine_lps"]:
                    print("  " + "  ".join(f"{v:10.4f}" for v in row))
    if problems:
        for prob in problems:
            print(f"problem: {prob}", file=sys.stderr)
        errors = len(problems.at("error"))
        print(f"note: {len(images)} image(s) shown; {errors} file(s) or series could not be shown"
              f"{f' and {len(problems) - errors} warning(s)' if len(problems) > errors else ''} (listed above)",
              file=sys.stderr)
    return 0


def _export(ns) -> int:
    if "numpy" not in sys.modules:  # this process is about to import numpy (not an in-process caller's)
        # numpy's OpenBLAS starts a worker thread per core that busy-waits for ~0.1 s after the import: on a
        # 2-core machine, half of it while the headers are read. Exporting does no linear algebra worth a
        # thread (the 300-slice CT of bench/bench_export.py: 0.09 s less CPU and 9 % less wall time, medians
        # of 12 alternating runs at load 2.3); a value set by the user is kept.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import sobre

    if Path(ns.target).exists():
        img = sobre.load(ns.target)
    else:
        img = _catalogued(ns).load(ns.target)
    out = sobre.save(img, ns.to)
    if ns.json:
        emit_json({"written": str(out), **img.summary()})
    else:
        print(f"wrote {out} ({img!r})")
    return 0

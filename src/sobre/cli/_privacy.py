"""``sobre deid``, ``sobre pseudonyms export``, ``sobre pull``, ``sobre push``, ``sobre listen``.

Keys: with ``-w WS`` the workspace key (``WS/secrets/project.key``) and its ``[privacy]`` options are
used. Standalone ``sobre deid IN OUT`` takes ``--key-file K``; without it, the key is
``OUT.project.key`` *beside* OUT (created on first use, mode 0600, never inside OUT, so exporting OUT
never exports the key). Keep that file to de-identify more data of the same project consistently.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from sobre.cli._common import add_json_arg, add_scheduler_arg, emit_json, open_compute_of


def register(sub) -> None:
    p = sub.add_parser("deid", help="de-identify DICOM files (PS3.15 Basic Profile + research options)",
                       description="De-identify every DICOM file under IN into OUT "
                                   "(OUT/SUBJECT/STUDY/SERIES/SOP.dcm), verifying each output.")
    p.add_argument("input", help="file or folder (walked recursively)")
    p.add_argument("output", help="output folder (created)")
    _key_args(p)
    _profile_args(p)
    add_scheduler_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_deid)

    p = sub.add_parser("pseudonyms", help="the pseudonym map (re-identification; authorised use only)")
    psub = p.add_subparsers(dest="pseudonyms_command", metavar="ACTION")
    e = psub.add_parser("export", help="write the map pseudonym -> patient as CSV (mode 0600)")
    e.add_argument("out", help="CSV file to write")
    _key_args(e, with_default=False)
    e.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_json_arg(e)
    e.set_defaults(func=_pseudonyms_export)
    p.set_defaults(func=lambda ns: (p.print_help(), 0)[1])

    p = sub.add_parser("pull", help="QIDO-RS search + WADO-RS retrieve studies from a DICOMweb PACS")
    p.add_argument("--dicomweb", required=True, metavar="URL", help="DICOMweb base URL (e.g. .../dicom-web)")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="StudyInstanceUID (repeatable)")
    p.add_argument("--query", action="append", default=[], metavar="KEY=VALUE",
                   help="QIDO-RS filter, e.g. PatientID=123, StudyDate=20200101-20201231, ModalitiesInStudy=CT")
    _dest_args(p)
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for each HTTP answer")
    add_json_arg(p)
    p.set_defaults(func=_pull)

    p = sub.add_parser("push", help="STOW-RS: store files (or catalogued series) on a DICOMweb PACS")
    p.add_argument("objects", nargs="+", help="files, folders, or SeriesInstanceUIDs of the workspace (-w)")
    p.add_argument("--dicomweb", required=True, metavar="URL", help="DICOMweb base URL")
    p.add_argument("-w", "--workspace", default=None, help="workspace for series UIDs")
    p.add_argument("--timeout", type=float, default=30)
    add_json_arg(p)
    p.set_defaults(func=_push)

    p = sub.add_parser("listen", help="DICOM C-STORE receiver (with C-ECHO) that ingests what arrives")
    p.add_argument("--aet", default="SOBRE", help="our AE title (default SOBRE); other called titles are rejected")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--allow-aet", action="append", default=None, metavar="AET",
                   help="accept only these calling AE titles (repeatable)")
    p.add_argument("--batch", type=int, default=200, help="files per ingest batch (also every 2 s)")
    p.add_argument("--grace", type=float, default=30, help="seconds open associations get to finish on SIGTERM")
    p.add_argument("--deid-workers", type=int, default=1,
                   help="processes that de-identify after acknowledging (default 1; 0: de-identify before "
                        "answering, so identifiable bytes never touch the disk and a refusal is a failure "
                        "status, at about half the throughput)")
    _dest_args(p)
    p.set_defaults(func=_listen)


# -- argument groups -----------------------------------------------------------------------
def _key_args(p, *, with_default: bool = True) -> None:
    p.add_argument("-w", "--workspace", default=None,
                   help="use this workspace's key and [privacy] options")
    p.add_argument("--key-file", default=None,
                   help="project key file (hex, mode 0600)" + (
                       "; default: OUT.project.key beside OUT, created if absent" if with_default else ""))


def _profile_args(p) -> None:
    g = p.add_argument_group("profile options (default: all research options on)")
    g.add_argument("--profile", metavar="TOML", help="read options from the [privacy] table of this file")
    g.add_argument("--basic", action="store_true", help="Basic Profile only: no option")
    g.add_argument("--no-patient-characteristics", action="store_true", help="remove age, sex, size, weight")
    g.add_argument("--no-dates", action="store_true", help="remove dates instead of shifting them")
    g.add_argument("--no-clean-descriptions", action="store_true", help="remove descriptions instead of cleaning")
    g.add_argument("--no-safe-private", action="store_true", help="remove every private attribute")
    g.add_argument("--safe-private", action="append", default=[], metavar="CREATOR,GGGG,EE",
                   help="also keep this private attribute (hex group and element low byte)")
    g.add_argument("--blank", action="append", default=[], metavar="X,Y,W,H[,MODALITY]",
                   help="blank this pixel rectangle (repeatable)")


def _dest_args(p) -> None:
    p.add_argument("-w", "--workspace", default=None,
                   help="workspace to ingest into (default: the current folder's workspace)")
    p.add_argument("--out", default=None, help="store files in this folder instead of ingesting them")
    p.add_argument("--site", default=None, help="site name recorded at ingest")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--deidentify", dest="deidentify", action="store_true", default=None,
                   help="de-identify on the way in (forced when the workspace says [privacy] deidentify = true)")
    d.add_argument("--no-deidentify", dest="deidentify", action="store_false")
    p.add_argument("--key-file", default=None, help="project key for --out --deidentify "
                                                    "(default: OUT.project.key beside OUT)")


# -- helpers -------------------------------------------------------------------------------
# Files reach the catalog in small batches while the listener keeps receiving: read their headers in
# this process (workers <= 1) rather than fanning each batch out to worker processes, which on a
# small server takes the CPU the receiver and the de-identification worker need.
INGEST_WORKERS = 1


def _note(msg: str) -> None:
    print(msg, file=sys.stderr)


def _default_key_path(out: Path) -> Path:
    out = out.absolute()
    return out.with_name(out.name + ".project.key")


def _open_key(key_file, out: Path | None, *, create: bool):
    """Key from --key-file, else the default beside ``out`` (created when ``create``)."""
    from sobre.errors import ConfigError
    from sobre.privacy import load_key, load_or_create_key

    if key_file:
        return load_key(key_file)
    if out is None:
        raise ConfigError("no project key given", fix="pass --key-file or -w WORKSPACE")
    path = _default_key_path(out)
    if create:
        key, created = load_or_create_key(path)
        if created:
            _note(f"created a new project key {path} (mode 0600). Keep it, and pass it with --key-file to "
                  "de-identify more data of this project consistently; never share it.")
        return key
    return load_key(path)


def _profile_from_args(ns, base=None):
    from dataclasses import replace

    from sobre.base import read_toml
    from sobre.errors import ConfigError
    from sobre.privacy import BlankRegion, DeidProfile, SafePrivateTag

    profile = base or DeidProfile()
    if ns.profile:
        table = read_toml(ns.profile).get("privacy", {})
        profile = DeidProfile.from_mapping(table, source=ns.profile)
    if ns.basic:
        profile = replace(DeidProfile.basic(), blank_regions=profile.blank_regions)
    changes = {}
    if ns.no_patient_characteristics:
        changes["retain_patient_characteristics"] = False
    if ns.no_dates:
        changes["retain_modified_dates"] = False
    if ns.no_clean_descriptions:
        changes["clean_descriptions"] = False
    if ns.no_safe_private:
        changes["retain_safe_private"] = False
    extra = []
    for text in ns.safe_private:
        parts = [x.strip() for x in text.split(",")]
        try:
            extra.append(SafePrivateTag(parts[0], int(parts[1], 16), int(parts[2], 16)))
        except (IndexError, ValueError):
            raise ConfigError("cannot read --safe-private", expected="CREATOR,GGGG,EE (hex)", found=text) from None
    if extra:
        changes["safe_private"] = tuple(profile.safe_private) + tuple(extra)
    if ns.blank:
        changes["blank_regions"] = tuple(profile.blank_regions) + tuple(BlankRegion.parse(b) for b in ns.blank)
    return replace(profile, **changes) if changes else profile


def _write_reports(out: Path, report) -> Path | None:
    """OUT/deid-report.json (no source paths) and OUT/pixel-review.csv."""
    import csv
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "deid-report.json").write_text(json.dumps(report.to_dict(), indent=2))
    review = report.pixel_review
    path = out / "pixel-review.csv"
    if review:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "reasons"])
            for r in review:
                w.writerow([str(Path(r.output).relative_to(out)), "; ".join(r.pixel_review)])
        return path
    path.unlink(missing_ok=True)
    return None


# -- commands ------------------------------------------------------------------------------
def _deid(ns) -> int:
    from sobre.errors import InputError
    from sobre.privacy import Deidentifier, PseudonymStore, map_path_for_key

    src, out = Path(ns.input), Path(ns.output)
    if not src.exists():
        raise InputError("input not found", path=src)
    if out.absolute() == src.absolute() or src.absolute() in out.absolute().parents:
        raise InputError("output folder must not be inside the input", path=out,
                         fix="choose an output folder outside the input")
    from contextlib import ExitStack

    stack = ExitStack()
    if ns.workspace:
        from sobre.catalog import Workspace

        with Workspace.open(ns.workspace) as ws:
            compute = stack.enter_context(open_compute_of(ns, ws))  # a cluster checked before the key is made
            key = ws.intake.key()
            profile = _profile_from_args(ns, ws.settings.privacy.profile())
            map_path = ws.intake.map_path
    else:
        compute = stack.enter_context(open_compute_of(ns))
        key = _open_key(ns.key_file, out, create=True)
        if key.path is not None and out.absolute() in Path(key.path).absolute().parents:
            raise InputError("the project key must not be inside the output folder", path=key.path,
                             fix="keep the key outside anything you export")
        profile = _profile_from_args(ns)
        map_path = map_path_for_key(key.path)
    with stack, PseudonymStore(map_path, key) as store:
        deid = Deidentifier(key, profile, store)
        total = [0]

        def progress(i, n):
            total[0] = n
            if sys.stderr.isatty() and not ns.json and (i == n or i % 50 == 0):
                print(f"\r{i}/{n}", end="" if i < n else "\n", file=sys.stderr)

        import warnings

        with warnings.catch_warnings():  # pydicom's complaints about source values (over-long LO, ...)
            warnings.simplefilter("ignore", UserWarning)
            report = deid.deidentify_tree(src, out, progress=progress, compute=compute)
    review = _write_reports(out, report)
    if ns.json:
        emit_json(report.to_dict(include_sources=True))
    else:
        print(f"de-identified {len(report.outputs)} file(s) into {out} (key id {key.key_id}); "
              f"{len(report.skipped)} skipped; {len(report.pixel_review)} need pixel review")
        if review:
            print(f"  images that may show burned-in text: {review} (look at them before sharing)")
    for path, reason in report.skipped:
        _note(f"skipped: {reason}" if str(path) in reason else f"skipped {path}: {reason}")
    return 1 if report.skipped else 0


def _pseudonyms_export(ns) -> int:
    from sobre.errors import ConfigError
    from sobre.privacy import export_map, load_key, map_path_for_key

    if ns.workspace:
        from sobre.catalog import Workspace

        with Workspace.open(ns.workspace) as ws:
            key, map_path = ws.intake.key(create=False), ws.intake.map_path
    elif ns.key_file:
        key, map_path = load_key(ns.key_file), map_path_for_key(ns.key_file)
    else:
        raise ConfigError("say whose pseudonym map to export", fix="pass -w WORKSPACE or --key-file K")
    n = export_map(map_path, ns.out, key, overwrite=ns.force)
    if ns.json:
        emit_json({"subjects": n, "file": str(ns.out)})
    else:
        print(f"wrote {n} subject(s) to {ns.out} (mode 0600)")
    _note("warning: this file re-identifies patients; keep it inside the secure zone and delete it after use")
    return 0


@contextmanager
def _destination(ns, kind: str):
    """``(store folder, deidentifier or None, on_files or None)`` for pull/listen.

    Into a workspace, everything goes through its intake, which applies its privacy policy; with
    --out, files are only written to a folder (de-identified with --deidentify).
    """
    from sobre.privacy import Deidentifier, PseudonymStore, map_path_for_key

    if ns.out:
        out = Path(ns.out)
        if not ns.deidentify:
            yield out, None, None
            return
        key = _open_key(ns.key_file, out, create=True)
        with PseudonymStore(map_path_for_key(key.path), key) as store:
            yield out, Deidentifier(key, None, store), None
        return
    from sobre.catalog import Workspace

    with Workspace.open(ns.workspace or ".") as ws:
        with ws.intake.route(kind, deidentify=ns.deidentify, site=ns.site, workers=INGEST_WORKERS) as route:
            def on_files(files):
                report = route.add(files)
                for path, reason in report.skipped[:10]:
                    _note(f"ingest skipped {path}: {reason}")
                return report

            yield route.store, route.deidentifier, on_files


def _pull(ns) -> int:
    from sobre.errors import InputError
    from sobre.pacs import DicomWebPacs, parse_query

    if not ns.study and not ns.query:
        raise InputError("nothing to pull", fix="pass --study UID or --query KEY=VALUE")
    query = parse_query(ns.query) if ns.query else None
    pacs = DicomWebPacs(ns.dicomweb, timeout=ns.timeout)
    with _destination(ns, "dicomweb") as (dest, deid, on_files):
        report = pacs.pull(dest, studies=ns.study, query=query, deidentifier=deid, on_files=on_files)
    if ns.json:
        emit_json(report.to_dict())
    else:
        print(f"pulled {len(report.studies)} study(ies), {len(report.files)} instance(s) into {dest}"
              + (" (de-identified)" if report.deidentified else ""))
        for path, reasons in report.pixel_review:
            print(f"  needs pixel review: {path}: {'; '.join(reasons)}")
    for uid, reason in report.failed:
        _note(f"study {uid} not pulled: {reason}")
    if not report.studies and not report.failed:
        _note("no study matched")
    return 1 if report.failed else 0


def _push(ns) -> int:
    from sobre.pacs import DicomWebPacs

    paths = []
    ws = None
    for obj in ns.objects:
        if Path(obj).exists():
            paths.append(obj)
            continue
        if ws is None:
            from sobre.catalog import Workspace

            ws = Workspace.open(ns.workspace or ".")
        rec = ws.series(obj)
        paths.extend(ws.files_of(rec["series_uid"], rec.get("label", "")))
    if ws is not None:
        ws.close()
    report = DicomWebPacs(ns.dicomweb, timeout=ns.timeout).push(paths)
    if ns.json:
        emit_json(report.to_dict())
    else:
        print(f"stored {len(report.stored)} instance(s); {len(report.failed)} failed; {len(report.skipped)} not sent")
    for inst, reason in report.failed:
        _note(f"failed {inst}: {reason}")
    for path, reason in report.skipped:
        _note(f"not sent {path}: {reason}")
    return 1 if report.failed or report.skipped else 0


def _listen(ns) -> int:
    import logging
    import signal
    import threading

    from sobre.pacs import Listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _destination(ns, "dicom") as (dest, deid, on_files):
            listener = Listener(dest, ae_title=ns.aet, host=ns.host, port=ns.port, deidentifier=deid,
                                on_files=on_files, batch_size=ns.batch, batch_seconds=2.0,
                                allowed_calling_aets=ns.allow_aet, deid_workers=ns.deid_workers)
            listener.start()
            print(f"listening as {ns.aet} on {ns.host}:{listener.port}; storing into {dest}"
                  f"{' (de-identified)' if deid else ''}; stop with SIGTERM or Ctrl-C", file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
            _note("stopping: finishing open associations and pending ingests")
            stats = listener.stop(grace=ns.grace)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    _note(f"stopped: {stats.received} received, {stats.failed} refused, {stats.ingested} ingested"
          + (f", {len(stats.ingest_errors)} ingest error(s)" if stats.ingest_errors else "")
          + (f", {len(stats.refused_after_ack)} quarantined by de-identification" if stats.refused_after_ack else ""))
    for path, reasons in stats.pixel_review[:50]:
        _note(f"needs pixel review: {path}: {'; '.join(reasons)}")
    return 1 if stats.ingest_errors or stats.refused_after_ack else 0

"""Cataloguing files: hash and read headers in worker processes, write in transactions, assemble volumes.

The path of a file through ingest:

1. :func:`sobre.image.discover` lists the files (the same walk as ``sobre.load_all`` and
   de-identification).
2. Files whose size and modification time match the catalog are known; the others are scanned in
   worker processes (:func:`sobre.catalog._scan.scan_file`: content hash, header facts, per-frame
   geometry; no pixel data is decoded).
3. Scan results are written a batch at a time, each batch in one transaction; every touched series
   is marked *pending*. A file whose SOP Instance UID is already catalogued with other content is a
   conflict: the catalogued instance is kept and the newcomer reported with both hashes.
4. Each pending series is (re)assembled into volumes in one transaction, which clears its mark. A
   run killed at any point leaves a consistent catalog; the next run finishes the pending series.

Everything that goes wrong is reported as :class:`~sobre.errors.Problem` s in the
:class:`IngestReport`; one bad file never stops the others.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import bindparam, delete, func, insert, select, update

from sobre.base import Compute, LocalCompute, Progress, no_progress, shutdown_local_pool, task_events
from sobre.errors import Problem

from . import _scan
from ._layout import WorkspaceLayout
from ._models import DicomObject, File, PendingSeries, Series, Site, Study, Subject

__all__ = ["IngestReport", "Ingester", "DEID_MARK"]

BATCH = 256
DEID_MARK = "Sobre PS3.15"  # start of (0012,0063) De-identification Method written by sobre.privacy

_SUBJECT_ID_LEN = Subject.__table__.c.subject_id.type.length
_STUDY_UID_LEN = Study.__table__.c.study_uid.type.length
_SITE_LEN = Site.__table__.c.name.type.length


@dataclass
class IngestReport:
    """What one ingest did.

    Counters say how many files were new, already known (same path, size and time), changed (same
    path, other content) or duplicates (same content as a catalogued file elsewhere). ``problems``
    lists everything worth a look, as :class:`~sobre.errors.Problem` s: files left out (level
    ``error``, with ``path``), conflicts, duplicates, series that could not be assembled
    (``details["series_uid"]``), notes of the intake.
    """

    new: int = 0
    known: int = 0
    changed: int = 0
    duplicates: int = 0
    series_new: int = 0
    series_updated: int = 0
    objects: int = 0
    problems: list[Problem] = field(default_factory=list)
    clinical: dict | None = None
    clinical_error: str | None = None
    deidentified: int = 0
    pixel_review: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every file that was not catalogued."""
        return [(p.path, p.message) for p in self.problems
                if p.path is not None and p.code not in ("series", "note")]

    @property
    def series_problems(self) -> list[tuple[str, str]]:
        """``(series UID, problem)`` of every series that could not be assembled."""
        return [(p.details.get("series_uid", ""), p.message) for p in self.problems if p.code == "series"]

    def add(self, other: IngestReport) -> None:
        """Add the counts and problems of another report (one intake in several ingests)."""
        for name in ("new", "known", "changed", "duplicates", "series_new", "series_updated", "objects",
                     "deidentified"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.problems.extend(other.problems)
        self.pixel_review.extend(other.pixel_review)

    def to_dict(self) -> dict:
        return {
            "new": self.new, "known": self.known, "changed": self.changed, "duplicates": self.duplicates,
            "series_new": self.series_new, "series_updated": self.series_updated, "objects": self.objects,
            "deidentified": self.deidentified,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "series_problems": [{"series_uid": u, "problem": r} for u, r in self.series_problems],
            "problems": [p.to_dict() for p in self.problems],
            "pixel_review": [{"path": p, "reasons": r} for p, r in self.pixel_review],
            "clinical": self.clinical, "clinical_error": self.clinical_error,
        }


def _clip(table, row: dict) -> dict:
    """Cut text values to their column's length (PostgreSQL enforces VARCHAR lengths; SQLite does not)."""
    limits = _TEXT_LIMITS.get(table.name)
    if limits is None:
        limits = _TEXT_LIMITS[table.name] = [(c.name, c.type.length) for c in table.columns
                                             if getattr(c.type, "length", None)]
    for name, n in limits:
        v = row.get(name)
        if isinstance(v, str) and len(v) > n:
            row[name] = v[:n]
    return row


_TEXT_LIMITS: dict[str, list[tuple[str, int]]] = {}


class _IngestCache:
    """Primary keys of sites, subjects and studies seen during one ingest (saves per-file queries)."""

    def __init__(self) -> None:
        self.sites: dict[str, int] = {}
        self.subjects: dict[str, list] = {}  # subject_id -> [pk, sex]
        self.studies: dict[str, int] = {}

    def clear(self) -> None:
        self.sites.clear()
        self.subjects.clear()
        self.studies.clear()


def _marked_deidentified(header: dict) -> bool:
    return str(header.get("patient_identity_removed") or "").upper() == "YES" and \
        str(header.get("deidentification_method") or "").startswith(DEID_MARK)


class Ingester:
    """Writes scanned files into the catalog (used by :class:`~sobre.catalog.Intake`; not public)."""

    def __init__(self, engine, layout: WorkspaceLayout) -> None:
        self.engine = engine
        self.layout = layout

    # ------------------------------------------------------------------ files
    def ingest_files(self, files: list[str], report: IngestReport, *, site: str | None = None,
                     copy: bool = False, progress: Progress = no_progress, workers: int | None = None,
                     require_deidentified: bool = False, compute: Compute | None = None) -> None:
        """Catalogue ``files`` (absolute paths) into ``report``; then assemble the pending series.

        ``require_deidentified``: DICOM files must carry Sobre's de-identification mark (the
        workspace de-identifies on the way in; files without it are refused, nothing stored).
        ``compute``: where headers are read and files hashed (default: ``workers`` local
        processes); on a cluster the workers must see the files at the same paths, which is
        checked on a sample of them before anything is written.
        """
        with self.engine.connect() as conn:
            known = {sp: (size, mt) for sp, size, mt in conn.execute(
                select(File.source_path, File.size, File.mtime_ns))}
        todo: list[str] = []
        for f in files:
            k = known.get(f)
            if k is not None:
                try:
                    st = os.stat(f)
                except OSError as exc:
                    report.problems.append(Problem("error", f"cannot read file ({exc.strerror})", path=f,
                                                   code="unreadable"))
                    continue
                if (st.st_size, st.st_mtime_ns) == k:
                    report.known += 1
                    continue
            todo.append(f)
        del known
        if compute is not None and compute.distributed and todo:
            step = max(1, len(todo) // 15)
            compute.check_shared(read=todo[::step] + todo[-1:])
        cache = _IngestCache()
        done = 0
        progress("reading headers", 0, len(todo))
        for records in _scan_stream(todo, workers, BATCH, compute, progress):
            self._write_batch(records, report, site=site, copy=copy, cache=cache,
                              require_deidentified=require_deidentified)
            done += len(records)
            progress("reading headers", done, len(todo))
        self.assemble_pending(report, progress=progress)

    def _refuse(self, rec: dict, report: IngestReport, require_deidentified: bool) -> bool:
        """Record the problem of a scan result that must not be stored; True when refused."""
        if rec.get("error"):
            report.problems.append(Problem("error", rec["error"], path=rec["path"],
                                           code=rec.get("code") or "unreadable"))
            return True
        if require_deidentified:
            if rec["kind"] not in ("dicom", "dicom-object"):
                report.problems.append(Problem(
                    "error", f"{rec['kind']} file not catalogued: this workspace requires de-identification "
                    "and only DICOM can be de-identified on the way in", path=rec["path"], code="not-deidentifiable",
                    fix="de-identify it with a tool that knows the format, then ingest it into a workspace "
                        "without [privacy] deidentify = true"))
                return True
            if not _marked_deidentified(rec["header"]):
                report.problems.append(Problem(
                    "error", "not de-identified by Sobre: this workspace stores de-identified instances only",
                    path=rec["path"], tag="(0012,0062) PatientIdentityRemoved", code="identifiable",
                    fix="ingest the original through the workspace (it de-identifies on the way in)"))
                return True
        return False

    def _write_batch(self, records: list[dict], report: IngestReport, *, site: str | None, copy: bool,
                     cache: _IngestCache, require_deidentified: bool = False) -> None:
        """Write one batch of scan results in one transaction (bulk statements, no per-file queries)."""
        good = [rec for rec in records if not self._refuse(rec, report, require_deidentified)]
        if not good:
            return
        ft = File.__table__
        try:
            with self.engine.begin() as conn:
                prev = {row.source_path: row for row in conn.execute(
                    select(ft.c.id, ft.c.source_path, ft.c.sha256, ft.c.series_uid)
                    .where(ft.c.source_path.in_([r["path"] for r in good])))}
                # files of this batch whose content changed: their old records go, so they hold nothing
                leaving = {r["path"] for r in good if r["path"] in prev and prev[r["path"]].sha256 != r["sha256"]}
                holder: dict[str, str] = {}  # sha256 -> the path that already holds this content
                for sha, sp in conn.execute(select(ft.c.sha256, ft.c.source_path)
                                            .where(ft.c.sha256.in_(sorted({r["sha256"] for r in good})))
                                            .order_by(ft.c.id)):
                    if sp not in leaving:
                        holder.setdefault(sha, sp)
                # SOP Instance UIDs already catalogued (by a file that stays): sop -> (path, sha256)
                sops = sorted({r["sop_uid"] for r in good if r.get("sop_uid")})
                owner: dict[str, tuple[str, str]] = {}
                for i in range(0, len(sops), 500):
                    for sop, sp, sha in conn.execute(select(ft.c.sop_uid, ft.c.source_path, ft.c.sha256)
                                                     .where(ft.c.sop_uid.in_(sops[i:i + 500]))):
                        if sp not in leaving:
                            owner.setdefault(sop, (sp, sha))
                pending: set[str] = set()
                touched, gone, inserts = [], [], []
                for rec in good:
                    path, sha = rec["path"], rec["sha256"]
                    old = prev.get(path)
                    if old is not None and old.sha256 == sha:  # touched, same bytes
                        touched.append({"b_id": old.id, "b_size": rec["size"], "b_mtime": rec["mtime_ns"]})
                        report.known += 1
                        continue
                    if old is not None:  # changed at the same path: the old record goes
                        gone.append(old.id)
                        pending.add(old.series_uid)
                    first = holder.get(sha)
                    if first is not None and first != path:
                        report.duplicates += 1
                        report.problems.append(Problem("warning", f"same content as {first} (already catalogued)",
                                                       path=path, code="duplicate"))
                        continue
                    sop = rec.get("sop_uid")
                    had = owner.get(sop) if sop else None
                    if had is not None and had[0] != path and had[1] != sha:
                        report.problems.append(Problem(
                            "error", f"SOP Instance UID {sop} is already catalogued with other content "
                            f"({had[0]}); the catalogued instance is kept", path=path,
                            tag="(0008,0018) SOPInstanceUID", code="uid-conflict",
                            details={"catalogued_path": had[0], "catalogued_sha256": had[1], "sha256": sha},
                            fix="two different files claim one instance UID: find out which is right; "
                                "a re-export with new UIDs can be ingested"))
                        continue
                    holder[sha] = path
                    if sop:
                        owner[sop] = (path, sha)
                    if old is not None:
                        report.changed += 1
                    else:
                        report.new += 1
                    inserts.append(rec)
                if touched:
                    conn.execute(update(ft).where(ft.c.id == bindparam("b_id"))
                                 .values(size=bindparam("b_size"), mtime_ns=bindparam("b_mtime")), touched)
                for i in range(0, len(gone), 500):
                    conn.execute(delete(ft).where(ft.c.id.in_(gone[i:i + 500])))
                if inserts:
                    study_pks = self._subjects_and_studies(conn, inserts, site, cache)
                    rows = []
                    for rec, study_pk in zip(inserts, study_pks):
                        h = rec["header"]
                        site_name = site or h.get("institution")
                        rows.append(_clip(ft, {
                            "path": self._store_copy(rec["path"], rec["sha256"]) if copy else rec["path"],
                            "source_path": rec["path"], "sha256": rec["sha256"], "size": rec["size"],
                            "mtime_ns": rec["mtime_ns"], "kind": rec["kind"], "series_uid": rec["series_uid"],
                            "sop_uid": rec.get("sop_uid"), "series_pk": None, "frames": rec.get("frames"),
                            "header": dict(h, _site=site_name, _study_pk=study_pk), "stored_copy": copy,
                        }))
                        pending.add(rec["series_uid"])
                    conn.execute(insert(ft), rows)
                if pending:
                    have = set(conn.execute(select(PendingSeries.series_uid)
                                            .where(PendingSeries.series_uid.in_(sorted(pending)))).scalars())
                    new = sorted(pending - have)
                    if new:
                        conn.execute(insert(PendingSeries), [{"series_uid": u} for u in new])
        except BaseException:
            cache.clear()  # ids seen inside a rolled-back transaction must not be reused
            raise

    def _subjects_and_studies(self, conn, recs: list[dict], site: str | None, cache: _IngestCache) -> list[int]:
        """Find or create the subject and study of each record (a few bulk statements); their study pks."""
        keys = []
        for rec in recs:
            h = rec["header"]
            sid = h.get("patient_id") or f"unknown-{rec['series_uid'][-12:]}"
            if rec["kind"] in ("dicom", "dicom-object"):
                study_uid = h.get("study_uid") or f"study-of-{rec['series_uid']}"
            else:
                study_uid = f"bids:{sid}:{h.get('session') or 'nosession'}" if h.get("bids_root") else \
                    f"file-study:{rec['series_uid']}"
            site_name = (site or h.get("institution") or "")[:_SITE_LEN] or None
            keys.append((sid[:_SUBJECT_ID_LEN], study_uid[:_STUDY_UID_LEN], site_name))
        for name in sorted({k[2] for k in keys if k[2] and k[2] not in cache.sites}):
            pk = conn.execute(select(Site.id).where(Site.name == name)).scalar_one_or_none()
            if pk is None:
                pk = conn.execute(insert(Site).values(name=name)).inserted_primary_key[0]
            cache.sites[name] = pk
        first_of: dict[str, tuple[dict, str | None]] = {}
        for rec, (sid, _, site_name) in zip(recs, keys):
            first_of.setdefault(sid, (rec, site_name))
        st = Subject.__table__
        missing = [sid for sid in first_of if sid not in cache.subjects]
        if missing:
            for pk, sid, sex in conn.execute(select(st.c.id, st.c.subject_id, st.c.sex)
                                             .where(st.c.subject_id.in_(missing))):
                cache.subjects[sid] = [pk, sex]
            new = [sid for sid in missing if sid not in cache.subjects]
            if new:
                conn.execute(insert(st), [_clip(st, {
                    "subject_id": sid, "sex": _scan.normalise_sex(first_of[sid][0]["header"].get("patient_sex")),
                    "site_id": cache.sites.get(first_of[sid][1]),
                }) for sid in new])
                for pk, sid, sex in conn.execute(select(st.c.id, st.c.subject_id, st.c.sex)
                                                 .where(st.c.subject_id.in_(new))):
                    cache.subjects[sid] = [pk, sex]
        for rec, (sid, _, _) in zip(recs, keys):  # sex learnt from a later file of the subject
            entry = cache.subjects[sid]
            sex = _scan.normalise_sex(rec["header"].get("patient_sex"))
            if entry[1] is None and sex is not None:
                conn.execute(update(st).where(st.c.id == entry[0]).values(sex=sex))
                entry[1] = sex
        sdt = Study.__table__
        first_study: dict[str, tuple[dict, str]] = {}
        for rec, (sid, study_uid, _) in zip(recs, keys):
            first_study.setdefault(study_uid, (rec, sid))
        missing = [u for u in first_study if u not in cache.studies]
        if missing:
            for pk, uid in conn.execute(select(sdt.c.id, sdt.c.study_uid).where(sdt.c.study_uid.in_(missing))):
                cache.studies[uid] = pk
            new = [u for u in missing if u not in cache.studies]
            if new:
                rows = []
                for u in new:
                    rec, sid = first_study[u]
                    h = rec["header"]
                    height, weight = h.get("patient_size_m"), h.get("patient_weight_kg")
                    bmi = round(weight / height**2, 2) if height and weight and height > 0.3 else None
                    rows.append(_clip(sdt, {
                        "study_uid": u, "subject_pk": cache.subjects[sid][0], "study_date": h.get("study_date"),
                        "age_years": h.get("age_years"), "height_m": height, "weight_kg": weight, "bmi": bmi,
                        "description": None}))
                conn.execute(insert(sdt), rows)
                for pk, uid in conn.execute(select(sdt.c.id, sdt.c.study_uid).where(sdt.c.study_uid.in_(new))):
                    cache.studies[uid] = pk
        return [cache.studies[k[1]] for k in keys]

    def _store_copy(self, src: str, sha: str) -> str:
        suffix = "".join(Path(src).suffixes[-2:]) if src.endswith(".nii.gz") else Path(src).suffix
        dest = self.layout.stored_copy(sha, suffix)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".copy-")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return str(dest)

    # ------------------------------------------------------------------ series
    def assemble_pending(self, report: IngestReport, *, progress: Progress = no_progress) -> None:
        with self.engine.connect() as conn:
            uids = list(conn.execute(select(PendingSeries.series_uid).order_by(PendingSeries.series_uid)).scalars())
        sites: dict[str, int | None] = {}
        progress("assembling series", 0, len(uids))
        for i, uid in enumerate(uids):
            with self.engine.begin() as conn:
                self._assemble_one(conn, uid, report, sites)
            progress("assembling series", i + 1, len(uids))

    def _assemble_one(self, conn, uid: str, report: IngestReport, sites: dict) -> None:
        """(Re)build the Series (or object) rows of one SeriesInstanceUID from its File rows; clears its mark.

        Volumes already catalogued in the ``ok`` state stay as they are when files are added to their
        series: newcomers may extend a volume (more slices of the same stack, at new positions in patient
        space: a volume without positions is never extended) but never split it, turn
        it into an error, give it another label or another layout. Newcomers that would are refused
        (removed again, reported with code ``series-conflict``), so that a damaged or foreign file
        never changes a good series.
        """
        ft, sr, ot = File.__table__, Series.__table__, DicomObject.__table__
        files = conn.execute(select(ft.c.id, ft.c.path, ft.c.kind, ft.c.frames)
                             .where(ft.c.series_uid == uid).order_by(ft.c.path)).all()
        old = [(row.id, row.label, row.status, row.shape, row.orientation) for row in conn.execute(
            select(sr.c.id, sr.c.label, sr.c.status, sr.c.shape, sr.c.orientation).where(sr.c.series_uid == uid))]
        members: dict[int, set[int]] = {pk: set() for pk, *_ in old}
        for fid, spk in conn.execute(select(ft.c.id, ft.c.series_pk).where(ft.c.series_uid == uid)):
            if spk in members:
                members[spk].add(fid)
        had = len(old) + conn.execute(select(func.count()).select_from(ot).where(ot.c.series_uid == uid)).scalar_one()
        if had:
            conn.execute(update(ft).where(ft.c.series_uid == uid).values(series_pk=None))
            conn.execute(delete(sr).where(sr.c.series_uid == uid))
            conn.execute(delete(ot).where(ot.c.series_uid == uid))

        def header(f) -> dict:  # only the first file of each volume's header is needed
            return conn.execute(select(ft.c.header).where(ft.c.id == f.id)).scalar_one() or {}

        objects = [f for f in files if f.kind == "dicom-object"]
        images = [f for f in files if f.kind != "dicom-object"]
        for f in objects:
            h = header(f)
            obj = h.get("object") or {}
            conn.execute(insert(ot).values(**_clip(ot, {
                "file_pk": f.id, "sop_uid": obj.get("sop_uid") or "", "sop_class_uid": h.get("sop_class_uid"),
                "kind": obj.get("kind") or "other", "modality": h.get("modality"), "series_uid": uid,
                "study_pk": h.get("_study_pk"), "references": obj.get("references"),
                "meta": {"site": h.get("_site"), "description": h.get("series_description"),
                         "label": obj.get("label")}})))
        if objects:
            report.objects += len(objects)
        volumes, problem = self._plan_volumes(uid, images, header)
        kept = {fid for pk, _, status, *_ in old if status == "ok" for fid in members[pk]}
        broken = self._broken_volumes(old, members, volumes, problem, {f.id for f in images})
        if broken:  # newcomers would change good volumes: refuse them, rebuild the series as it was
            newcomers = [f for f in images if f.id not in kept]
            for f in newcomers:
                report.problems.append(Problem(
                    "error", f"not catalogued: adding it to series {uid} would change its catalogued volume(s) "
                    f"({broken}); the catalogued volumes are kept", path=f.path, code="series-conflict",
                    details={"series_uid": uid},
                    fix="if the new file is right and the catalogued ones wrong, remove those and ingest again"))
                report.new -= 1
            ids = [f.id for f in newcomers]
            for i in range(0, len(ids), 500):
                conn.execute(delete(ft).where(ft.c.id.in_(ids[i:i + 500])))
            images = [f for f in images if f.id in kept]
            volumes, problem = self._plan_volumes(uid, images, header)
        if problem is not None:
            report.problems.append(Problem("error", str(problem), code="series", details={"series_uid": uid},
                                           fix=problem.fix))
        placed = set()
        for row, vf in volumes:
            name = (row["meta"].get("site") or "")[:_SITE_LEN]
            if name and name not in sites:
                sites[name] = conn.execute(select(Site.id).where(Site.name == name)).scalar_one_or_none()
            row["site_pk"] = sites.get(name) if name else None
            pk = conn.execute(insert(sr).values(**_clip(sr, row))).inserted_primary_key[0]
            ids = [f.id for f in vf]
            placed.update(ids)
            for i in range(0, len(ids), 5000):
                conn.execute(update(ft).where(ft.c.id.in_(ids[i:i + 5000])).values(series_pk=pk))
        for f in images:  # a file no volume took (e.g. a duplicate frame) is said, not silently kept
            if f.id not in placed:
                report.problems.append(Problem(
                    "warning", "catalogued but part of no volume of its series (a frame already given by "
                    "another file of the series)", path=f.path, code="unplaced", details={"series_uid": uid}))
        if volumes:
            if had:
                report.series_updated += 1
            else:
                report.series_new += 1
        conn.execute(delete(PendingSeries).where(PendingSeries.series_uid == uid))

    def _plan_volumes(self, uid: str, images: list, header) -> tuple[list[tuple[dict, list]], object]:
        """Series rows (with their files) for the image files of one series, and the geometry error if any."""
        from sobre.errors import GeometryError
        from sobre.image import Frame, assemble

        volumes: list[tuple[dict, list]] = []
        problem = None
        if images and images[0].kind == "dicom":
            frames = []
            by_path = {}
            for f in images:
                by_path[f.path] = f
                for fj in f.frames or []:
                    fr = Frame.from_dict(fj)
                    fr.path = f.path  # a copy may live elsewhere than the source
                    frames.append(fr)
            try:
                for plan in assemble(frames, on_warning=lambda m: None):
                    pf = [by_path[p] for p in plan.paths]
                    volumes.append((self._series_row(uid, plan.label, pf[0].kind, header(pf[0]), pf, plan=plan), pf))
            except GeometryError as exc:
                volumes = [(self._series_row(uid, "", images[0].kind, header(images[0]), images,
                                             problem=str(exc)), images)]
                problem = exc
        elif images:
            volumes.append((self._series_row(uid, "", images[0].kind, header(images[0]), images), images))
        return volumes, problem

    @staticmethod
    def _broken_volumes(old: list, members: dict, volumes: list, problem, present: set[int]) -> str:
        """Which catalogued ``ok`` volumes the new assembly would change ("" when none)."""
        if problem is not None:
            changed = [label for _, label, status, *_ in old if status == "ok"]
            return ", ".join(f"'{x}'" if x else "the volume" for x in changed) + " would become unreadable" \
                if changed else ""
        new = {row["label"]: (row, {f.id for f in vf}) for row, vf in volumes}
        out, unplaced = [], False
        for pk, label, status, shape, orientation in old:
            if status != "ok":
                continue
            before = members[pk] & present  # files changed since are gone, not held against the newcomers
            now = new.get(label)
            positioned = now is not None and _PIXEL_SPACE not in (orientation, now[0]["orientation"])
            if now is None or not before <= now[1] or now[0]["status"] != "ok" \
                    or not _extends(shape, now[0]["shape"], positioned=positioned):
                out.append(f"'{label}'" if label else "the volume")
                unplaced |= now is not None and not positioned and _extends(shape, now[0]["shape"])
        why = " (its frames have no patient positions: a newcomer cannot be placed among them)" if unplaced else ""
        return ", ".join(out) + " would be split, relabelled or re-shaped" + why if out else ""

    @staticmethod
    def _series_row(uid: str, label: str, kind: str, h: dict, files: list, *, plan=None,
                    problem: str | None = None) -> dict:
        if plan is not None:
            from sobre.image import affine_spacing, orientation_code

            shape, affine = list(plan.shape), plan.affine.tolist()
            spacing = [round(v, 6) for v in affine_spacing(plan.affine)[: plan.spatial_ndim]]
            orient = orientation_code(plan.affine) if plan.coordinate_system == "LPS" else "???"
            dtype = str(plan.dtype)
        else:
            shape, affine, spacing = h.get("shape"), h.get("affine"), h.get("spacing")
            orient, dtype = h.get("orientation"), h.get("dtype")
        fmt = kind if kind != "itk" else (h.get("format") or "nrrd")
        if kind == "optical":
            fmt = h.get("format") or "optical"
        return dict(
            series_uid=uid, label=label, study_pk=h.get("_study_pk"), site_pk=None,
            status="error" if problem else "ok", problem=problem, format=fmt,
            modality=h.get("modality"), manufacturer=h.get("manufacturer"), model=h.get("model"),
            field_strength=h.get("field_strength"), protocol=h.get("protocol"),
            description=h.get("series_description"), body_part=h.get("body_part"),
            shape=None if problem else shape, spacing=None if problem else spacing,
            affine=None if problem else affine, orientation=None if problem else orient,
            dtype=None if problem else dtype, n_files=len(files),
            meta={"site": h.get("_site"), "frame_of_reference_uid": h.get("frame_of_reference_uid"),
                  "transfer_syntax": h.get("transfer_syntax"), "photometric": h.get("photometric"),
                  "burned_in_annotation": h.get("burned_in_annotation"),
                  "simulated": str(h.get("synthetic_data") or "").upper() == "YES" or None,
                  **({"units": h["units"]} if h.get("units") else {}),
                  **(dict(getattr(plan, "meta", None) or {}) if plan is not None else {})},
        )


_PIXEL_SPACE = "???"  # the orientation of a volume without patient geometry (pixel coordinates)


def _extends(old_shape, new_shape, *, positioned: bool = True) -> bool:
    """Whether a volume of ``new_shape`` may replace one of ``old_shape``: the same, or more slices of a
    stack placed in patient space (``positioned``): the assembly then put each newcomer at a position
    of its own on the stack's regular grid (duplicate or irregular positions fail the assembly).
    Frames without positions (pixel coordinates) are only stacked in file order: a newcomer there
    (another copy of the same frames, a second multi-frame instance) is no evidence of new slices,
    so such a volume is never extended."""
    old, new = list(old_shape or ()), list(new_shape or ())
    if old == new:
        return True
    return positioned and len(old) == len(new) == 3 and old[:2] == new[:2] and new[2] >= old[2]


# --------------------------------------------------------------------------- header-reading processes
_CHUNK = 32  # files per task sent to a worker
shutdown_pool = shutdown_local_pool  # stop the header-reading processes (started again on demand)


def _crashed(path: str) -> dict:
    return {"path": path, "code": "crash", "error": "reading this file crashed the header-reading process "
                                                    "(corrupted or hostile content); it was left out"}


def _scan_stream(paths: list[str], workers: int | None, batch: int, compute: Compute | None = None,
                 progress: Progress = no_progress):
    """Yield the scan records of ``paths`` in order, ``batch`` at a time, reading ahead on workers.

    The workers are local processes (``workers`` of them) or, with a distributed ``compute``, the
    workers of a cluster; either way they only read and return records, and the caller alone writes.
    While the caller writes one batch to the catalog, the workers read the next files. A worker that
    dies on a file (segfault, out of memory) costs that file only: the files it held are read again
    in smaller tasks until the culprit is alone, and it is reported as skipped. ``progress`` hears of
    tasks retried and failed (``"reading headers (retried)"``); files read are the caller's to count.
    """
    if compute is None or not compute.distributed:
        compute = LocalCompute(workers if workers is not None else min(2, os.cpu_count() or 1))
        if compute.workers <= 1 or len(paths) < 2 * _CHUNK:
            for i in range(0, len(paths), batch):
                yield _scan.scan_many(paths[i:i + batch])
            return

    tasks = task_events(progress)

    def isolate(chunk: list[str]) -> list[dict]:
        if len(chunk) == 1:
            return [_crashed(chunk[0])]
        return [r for recs in compute.map(_scan.scan_many, [[p] for p in chunk], stage="reading headers",
                                          progress=tasks, on_crash=isolate) for r in recs]

    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    buf: list[dict] = []
    for recs in compute.map(_scan.scan_many, chunks, stage="reading headers", progress=tasks, on_crash=isolate):
        buf.extend(recs)
        while len(buf) >= batch:
            yield buf[:batch]
            buf = buf[batch:]
    if buf:
        yield buf

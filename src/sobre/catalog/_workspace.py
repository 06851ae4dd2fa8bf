"""The workspace: a folder with a catalog database (SQLite by default, PostgreSQL for teams).

Layout::

    WS/
      sobre.toml              workspace settings (database URL)
      catalog.sqlite          the catalog (default database)
      files/                  content-addressed copies (ingest --copy)
      datasets/NAME/vN.json   frozen dataset manifests (read-only)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sobre.catalog import _scan
from sobre.catalog._clinical import read_clinical
from sobre.catalog._models import (
    Cohort, DatasetVersion, File, PendingSeries, Series, Site, Study, Subject, SubjectValue, Variable,
)
from sobre.catalog._query import compile_filter
from sobre.errors import CatalogError, InputError, SobreError

CONFIG_NAME = "sobre.toml"
BATCH = 256
BASE_FIELDS = {
    "series_uid": "DICOM SeriesInstanceUID (or a content-derived UID)",
    "label": "what distinguishes volumes split from one series ('' if none)",
    "modality": "DICOM modality (CT, MR, US, ...)",
    "format": "dicom, nifti, nrrd, mha, png, ...",
    "manufacturer": "scanner manufacturer", "model": "scanner model", "field_strength": "tesla (MR)",
    "protocol": "protocol name", "series_description": "series description", "body_part": "body part",
    "site": "acquisition site", "subject_id": "subject identifier", "study_uid": "study UID",
    "study_date": "YYYYMMDD", "age": "years at the study", "sex": "M, F or O", "bmi": "kg/m²",
    "height": "m", "weight": "kg", "n_files": "number of files",
}


@dataclass
class IngestReport:
    """What one ingest did. ``skipped`` lists (path, reason); ``problems`` lists series that could not be assembled."""

    new: int = 0
    known: int = 0
    changed: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    series_new: int = 0
    series_updated: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    clinical: dict | None = None
    clinical_error: str | None = None

    def to_dict(self) -> dict:
        return {
            "new": self.new, "known": self.known, "changed": self.changed, "duplicates": self.duplicates,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "series_new": self.series_new, "series_updated": self.series_updated,
            "problems": [{"series_uid": u, "problem": r} for u, r in self.problems],
            "clinical": self.clinical, "clinical_error": self.clinical_error,
        }


@dataclass(frozen=True)
class DatasetRef:
    """A frozen dataset version as recorded in the catalog."""

    name: str
    version: int
    content_hash: str
    manifest_path: Path
    n_series: int
    n_files: int
    n_subjects: int
    created_at: str

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def to_dict(self) -> dict:
        return {"ref": self.ref, "name": self.name, "version": self.version, "content_hash": self.content_hash,
                "manifest": str(self.manifest_path), "n_series": self.n_series, "n_files": self.n_files,
                "n_subjects": self.n_subjects, "created_at": self.created_at}


def _atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _engine(url: str) -> Engine:
    engine = create_engine(url, future=True)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    return engine


class Workspace:
    """A Sobre workspace: folder + catalog. Create with :meth:`init`, reopen with :meth:`open`."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.db_url = db_url
        self.engine = _engine(db_url)
        self._Session = sessionmaker(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(cls, root: str | Path, db_url: str | None = None) -> Workspace:
        """Create a workspace folder (or re-open an existing one with the same settings)."""
        root = Path(root).absolute()
        cfg = root / CONFIG_NAME
        if cfg.exists():
            ws = cls.open(root)
            if db_url and db_url != ws.db_url:
                raise CatalogError("workspace already exists with another database", path=cfg,
                                   expected=db_url, found=ws.db_url)
            return ws
        if root.exists() and any(root.iterdir()):
            raise CatalogError("folder is not empty and is not a Sobre workspace", path=root,
                               fix="choose a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
        url = db_url or "sqlite:///catalog.sqlite"
        try:
            ws = cls(root, cls._resolve_url(root, url))
            _migrate(ws.engine)
        except SobreError:
            raise
        except Exception as exc:
            raise CatalogError(f"cannot create the catalog database ({type(exc).__name__}: {exc})",
                               found=url, fix="check the database URL and that the server is reachable") from None
        text = (
            "# Sobre workspace settings\n[workspace]\nformat = 1\n"
            f'database = "{url}"\ncreated = "{datetime.now(timezone.utc).isoformat(timespec="seconds")}"\n'
        )
        _atomic_write(cfg, text.encode())
        for sub in ("files", "datasets"):
            (root / sub).mkdir(exist_ok=True)
        return ws

    @staticmethod
    def _resolve_url(root: Path, url: str) -> str:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///"):]
            return f"sqlite:///{(root / rel).absolute()}"
        return url

    @classmethod
    def open(cls, root: str | Path) -> Workspace:
        """Open an existing workspace (``root`` or any folder below it)."""
        start = Path(root).absolute()
        for cand in (start, *start.parents):
            if (cand / CONFIG_NAME).exists():
                root = cand
                break
        else:
            raise CatalogError("not a Sobre workspace", path=start, expected=f"a folder holding {CONFIG_NAME}",
                               fix="create one with `sobre init DIR` or pass -w DIR")
        try:
            conf = tomllib.loads((root / CONFIG_NAME).read_text())
            url = conf["workspace"]["database"]
        except (tomllib.TOMLDecodeError, KeyError) as exc:
            raise CatalogError(f"workspace settings are unreadable ({exc})", path=root / CONFIG_NAME) from None
        ws = cls(root, cls._resolve_url(root, url))
        _migrate(ws.engine)  # no-op when up to date; upgrades older workspaces
        return ws

    def session(self) -> Session:
        return self._Session()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r}, db={self.db_url.split('://')[0]})"

    # ------------------------------------------------------------------ ingest
    def ingest(self, paths: Iterable[str | Path], *, site: str | None = None, clinical: str | Path | None = None,
               copy: bool = False, progress: bool = False, workers: int | None = None) -> IngestReport:
        """Catalogue every image below ``paths``; idempotent and crash-safe.

        Files are hashed and their headers read (no pixels) in worker processes; results are
        written in transactions of a few hundred files, and each touched series is recorded as
        *pending*. Volumes are then (re)assembled per series in one transaction each, which clears
        its pending mark. A run killed at any point leaves a consistent catalog; the next run
        finds the files already recorded and finishes the pending series.
        """
        report = IngestReport()
        files, missing = _scan.walk(paths)
        report.skipped.extend(missing)
        with self.session() as s:
            known = {row.source_path: (row.size, row.mtime_ns) for row in s.execute(
                select(File.source_path, File.size, File.mtime_ns)).all()}
        todo: list[str] = []
        for f in files:
            k = known.get(f)
            if k is not None:
                try:
                    st = os.stat(f)
                except OSError:
                    report.skipped.append((f, "cannot stat file"))
                    continue
                if (st.st_size, st.st_mtime_ns) == k:
                    report.known += 1
                    continue
            todo.append(f)
        bar = _progress(len(todo), "reading headers", progress)
        for chunk_start in range(0, len(todo), BATCH * 4):
            chunk = todo[chunk_start:chunk_start + BATCH * 4]
            for batch_start in range(0, len(chunk), BATCH):
                batch = chunk[batch_start:batch_start + BATCH]
                records = _scan_many(batch, workers)
                self._write_batch(records, report, site=site, copy=copy)
                bar.update(len(batch))
        bar.close()
        self._assemble_pending(report, progress=progress)
        if clinical is not None:
            try:
                report.clinical = self.add_clinical(clinical)
            except SobreError as exc:
                report.clinical_error = str(exc)
        else:
            for root in sorted({r for r in self._bids_roots()}):
                tsv = Path(root) / "participants.tsv"
                if tsv.exists():
                    try:
                        report.clinical = self.add_clinical(tsv)
                    except SobreError as exc:
                        report.clinical_error = str(exc)
        return report

    def _bids_roots(self) -> set[str]:
        with self.session() as s:
            roots = set()
            for (h,) in s.execute(select(File.header).where(File.kind != "dicom")).all():
                if h and h.get("bids_root"):
                    roots.add(h["bids_root"])
        return roots

    def _get_site(self, s: Session, name: str | None, cache: dict) -> int | None:
        if not name:
            return None
        if name in cache:
            return cache[name]
        row = s.execute(select(Site).where(Site.name == name)).scalar_one_or_none()
        if row is None:
            row = Site(name=name)
            s.add(row)
            s.flush()
        cache[name] = row.id
        return row.id

    def _write_batch(self, records: list[dict], report: IngestReport, *, site: str | None, copy: bool) -> None:
        with self.session() as s, s.begin():
            site_cache: dict = {}
            by_sha = defaultdict(list)
            for rec in records:
                if rec.get("sha256"):
                    by_sha[rec["sha256"]].append(rec)
            existing = {}
            if by_sha:
                for row in s.execute(select(File).where(File.sha256.in_(list(by_sha)))).scalars():
                    existing.setdefault(row.sha256, row)
            pending: set[str] = set()
            for rec in records:
                if rec.get("error"):
                    report.skipped.append((rec["path"], rec["error"]))
                    continue
                prev_same_path = s.execute(select(File).where(File.source_path == rec["path"])).scalar_one_or_none()
                dup = existing.get(rec["sha256"])
                if dup is not None and dup.source_path != rec["path"] and prev_same_path is None:
                    report.duplicates += 1
                    report.skipped.append((rec["path"], f"same content as {dup.source_path} (already catalogued)"))
                    continue
                header = rec["header"]
                stored = rec["path"]
                if copy:
                    stored = self._store_copy(rec["path"], rec["sha256"])
                sub_pk = self._upsert_subject_study(s, rec, site or header.get("institution"), site_cache)
                if prev_same_path is not None:
                    if prev_same_path.sha256 == rec["sha256"]:
                        prev_same_path.size, prev_same_path.mtime_ns = rec["size"], rec["mtime_ns"]
                        report.known += 1
                        continue
                    pending.add(prev_same_path.series_uid)
                    s.delete(prev_same_path)
                    s.flush()
                    report.changed += 1
                else:
                    report.new += 1
                s.add(File(
                    path=stored, source_path=rec["path"], sha256=rec["sha256"], size=rec["size"],
                    mtime_ns=rec["mtime_ns"], kind=rec["kind"], series_uid=rec["series_uid"],
                    sop_uid=rec.get("sop_uid"), frames=rec.get("frames"),
                    header=dict(header, _site=site or header.get("institution"), _study_pk=sub_pk),
                    stored_copy=copy,
                ))
                pending.add(rec["series_uid"])
            for uid in pending:
                if s.get(PendingSeries, uid) is None:
                    s.add(PendingSeries(series_uid=uid))

    def _store_copy(self, src: str, sha: str) -> str:
        suffix = "".join(Path(src).suffixes[-2:]) if src.endswith(".nii.gz") else Path(src).suffix
        dest = self.root / "files" / sha[:2] / f"{sha}{suffix}"
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

    def _upsert_subject_study(self, s: Session, rec: dict, site_name: str | None, site_cache: dict) -> int:
        h = rec["header"]
        site_pk = self._get_site(s, site_name, site_cache)
        sid = h.get("patient_id") or f"unknown-{rec['series_uid'][-12:]}"
        subj = s.execute(select(Subject).where(Subject.subject_id == sid)).scalar_one_or_none()
        if subj is None:
            subj = Subject(subject_id=sid, sex=_scan.normalise_sex(h.get("patient_sex")), site_id=site_pk)
            s.add(subj)
            s.flush()
        elif subj.sex is None and h.get("patient_sex"):
            subj.sex = _scan.normalise_sex(h.get("patient_sex"))
        if rec["kind"] == "dicom":
            study_uid = h.get("study_uid") or f"study-of-{rec['series_uid']}"
        else:
            study_uid = f"bids:{sid}:{h.get('session') or 'nosession'}" if h.get("bids_root") else \
                f"file-study:{rec['series_uid']}"
        study = s.execute(select(Study).where(Study.study_uid == study_uid)).scalar_one_or_none()
        if study is None:
            height, weight = h.get("patient_size_m"), h.get("patient_weight_kg")
            bmi = round(weight / height**2, 2) if height and weight and height > 0.3 else None
            study = Study(study_uid=study_uid, subject_pk=subj.id, study_date=h.get("study_date"),
                          age_years=h.get("age_years"), height_m=height, weight_kg=weight, bmi=bmi,
                          description=None)
            s.add(study)
            s.flush()
        return study.id

    def _assemble_pending(self, report: IngestReport, *, progress: bool = False) -> None:
        from sobre.errors import GeometryError
        from sobre.image._dicom import assemble

        with self.session() as s:
            uids = [u for (u,) in s.execute(select(PendingSeries.series_uid)).all()]
        bar = _progress(len(uids), "assembling series", progress)
        for uid in uids:
            with self.session() as s, s.begin():
                files = s.execute(select(File).where(File.series_uid == uid)).scalars().all()
                old = s.execute(select(Series).where(Series.series_uid == uid)).scalars().all()
                had = len(old)
                for f in files:
                    f.series_pk = None
                s.flush()
                for o in old:
                    s.delete(o)
                s.flush()
                volumes: list[tuple[Series, list[File]]] = []
                if files and files[0].kind == "dicom":
                    frames = []
                    by_path = {}
                    for f in files:
                        by_path[f.path] = f
                        for fj in f.frames or []:
                            fr = _scan.frame_from_json(fj)
                            fr.path = f.path  # a copy may live elsewhere than the source
                            frames.append(fr)
                    try:
                        plans = assemble(frames, on_warning=lambda m: None)
                        for plan in plans:
                            pf = [by_path[p] for p in plan.paths]
                            volumes.append((self._series_row(uid, plan.label, pf[0], pf, plan=plan), pf))
                    except GeometryError as exc:
                        row = self._series_row(uid, "", files[0], files, problem=str(exc))
                        volumes.append((row, files))
                        report.problems.append((uid, str(exc)))
                elif files:
                    f = files[0]
                    volumes.append((self._series_row(uid, "", f, files), files))
                for row, vf in volumes:
                    s.add(row)
                    s.flush()
                    for f in vf:
                        f.series_pk = row.id
                if volumes:
                    if had:
                        report.series_updated += 1
                    else:
                        report.series_new += 1
                s.execute(delete(PendingSeries).where(PendingSeries.series_uid == uid))
            bar.update(1)
        bar.close()

    @staticmethod
    def _series_row(uid: str, label: str, first: File, files: list[File], *, plan=None,
                    problem: str | None = None) -> Series:
        h = first.header or {}
        if plan is not None:
            from sobre.image import _geometry as geo

            shape, affine = list(plan.shape), plan.affine.tolist()
            spacing = [round(v, 6) for v in geo.spacing(plan.affine)[: plan.spatial_ndim]]
            orient = geo.orientation_code(plan.affine) if plan.coordinate_system == "LPS" else "???"
            dtype = str(plan.dtype)
        else:
            shape, affine, spacing = h.get("shape"), h.get("affine"), h.get("spacing")
            orient, dtype = h.get("orientation"), h.get("dtype")
        fmt = first.kind if first.kind != "itk" else (h.get("format") or "nrrd")
        if first.kind == "optical":
            fmt = h.get("format") or "optical"
        return Series(
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
                  "burned_in_annotation": h.get("burned_in_annotation")},
        )

    # ------------------------------------------------------------------ clinical
    def add_clinical(self, path: str | Path) -> dict:
        """Join a clinical table to known subjects, all rows or none (one transaction).

        Raises :class:`InputError` if a subject id is unknown or a value unparseable; the catalog is
        then unchanged.
        """
        table = read_clinical(path)
        with self.session() as s, s.begin():
            subjects = {sid: pk for pk, sid in s.execute(select(Subject.id, Subject.subject_id)).all()}
            unknown = [sid for sid in table.subject_lines if sid not in subjects]
            if unknown:
                lines = ", ".join(f"'{u}' (line {table.subject_lines[u]})" for u in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise InputError(
                    f"{len(unknown)} subject id(s) are not in the catalog: {lines}{more}", path=path,
                    expected="identifiers of ingested subjects (PatientID, or sub-XX for BIDS)",
                    fix="ingest the images first, or correct the identifiers; nothing from this table was stored",
                )
            for col in table.columns:
                var = s.execute(select(Variable).where(Variable.name == col.name)).scalar_one_or_none()
                if var is None:
                    if col.name in BASE_FIELDS and col.name not in ("age", "sex", "bmi", "height", "weight"):
                        raise InputError(f"column '{col.name}' would shadow a built-in field", path=path,
                                         fix="rename the column")
                    var = Variable(name=col.name, kind=col.kind, unit=col.unit, source=str(path))
                    s.add(var)
                    s.flush()
                elif var.kind != col.kind:
                    raise InputError(f"column '{col.name}' changes type", path=path,
                                     expected=f"{var.kind} (as stored from {var.source})", found=col.kind)
                for sid, value in col.values.items():
                    spk = subjects[sid]
                    row = s.execute(select(SubjectValue).where(
                        SubjectValue.subject_pk == spk, SubjectValue.variable_pk == var.id)).scalar_one_or_none()
                    if row is None:
                        row = SubjectValue(subject_pk=spk, variable_pk=var.id)
                        s.add(row)
                    row.num = value if col.kind == "numeric" else None
                    row.text = None if col.kind == "numeric" or value is None else str(value)
        return {"path": str(path), "subjects": len(table.subject_lines),
                "variables": [{"name": c.name, "kind": c.kind, "unit": c.unit} for c in table.columns]}

    # ------------------------------------------------------------------ queries
    def variables(self) -> dict[str, dict]:
        with self.session() as s:
            return {v.name: {"kind": v.kind, "unit": v.unit} for v in s.execute(select(Variable)).scalars()}

    def fields(self) -> list[str]:
        return sorted(set(BASE_FIELDS) | set(self.variables()))

    def records(self, *, include_errors: bool = False) -> list[dict]:
        """One dict per catalogued volume with every queryable field (base fields + clinical variables)."""
        with self.session() as s:
            variables = {v.id: v for v in s.execute(select(Variable)).scalars()}
            values: dict[int, dict] = defaultdict(dict)
            for row in s.execute(select(SubjectValue)).scalars():
                var = variables[row.variable_pk]
                values[row.subject_pk][var.name] = row.num if var.kind == "numeric" else row.text
            studies = {st.id: st for st in s.execute(select(Study)).scalars()}
            subjects = {sb.id: sb for sb in s.execute(select(Subject)).scalars()}
            out = []
            q = select(Series).order_by(Series.series_uid, Series.label)
            for ser in s.execute(q).scalars():
                if ser.status != "ok" and not include_errors:
                    continue
                st = studies.get(ser.study_pk)
                sb = subjects.get(st.subject_pk) if st else None
                clin = values.get(sb.id, {}) if sb else {}
                rec = {
                    "series_uid": ser.series_uid, "label": ser.label, "modality": ser.modality,
                    "format": ser.format, "manufacturer": ser.manufacturer, "model": ser.model,
                    "field_strength": ser.field_strength, "protocol": ser.protocol,
                    "series_description": ser.description, "body_part": ser.body_part,
                    "site": (ser.meta or {}).get("site") or clin.get("site"),
                    "subject_id": sb.subject_id if sb else None, "study_uid": st.study_uid if st else None,
                    "study_date": st.study_date if st else None,
                    "age": st.age_years if st and st.age_years is not None else clin.get("age"),
                    "sex": (sb.sex if sb and sb.sex else _scan.normalise_sex(clin.get("sex"))),
                    "bmi": st.bmi if st and st.bmi is not None else clin.get("bmi"),
                    "height": st.height_m if st else None, "weight": st.weight_kg if st else None,
                    "n_files": ser.n_files,
                    "status": ser.status, "problem": ser.problem,
                    "shape": ser.shape, "spacing": ser.spacing, "orientation": ser.orientation,
                }
                for k, v in clin.items():
                    rec.setdefault(k, v)
                out.append(rec)
        return out

    def query(self, where: str | None) -> list[dict]:
        recs = self.records()
        if not where:
            return recs
        pred = compile_filter(where, self.fields())
        return [r for r in recs if pred(r)]

    def series(self, uid: str) -> dict:
        """Catalog record of one volume by SeriesInstanceUID (``uid`` or ``uid#label``); unique prefixes work."""
        uid, _, label = uid.partition("#")
        recs = [r for r in self.records(include_errors=True) if r["series_uid"] == uid
                and (not label or r["label"] == label)]
        if not recs:
            recs = [r for r in self.records(include_errors=True) if r["series_uid"].startswith(uid)
                    and (not label or r["label"] == label)]
        if not recs:
            raise CatalogError(f"no series '{uid}' in the catalog", fix="list series with `sobre cohort show` "
                               "or `sobre info --json` on a file")
        if len(recs) > 1:
            opts = ", ".join(f"{r['series_uid']}#{r['label']}" for r in recs[:5])
            raise CatalogError(f"'{uid}' matches {len(recs)} volumes", found=opts,
                               fix="give the full UID, and #label for split series")
        return recs[0]

    def files_of(self, series_uid: str, label: str = "") -> list[str]:
        with self.session() as s:
            ser = s.execute(select(Series).where(Series.series_uid == series_uid,
                                                 Series.label == label)).scalar_one_or_none()
            if ser is None:
                raise CatalogError(f"no series '{series_uid}' in the catalog")
            return [f.path for f in s.execute(select(File).where(File.series_pk == ser.id)
                                               .order_by(File.path)).scalars()]

    def load(self, uid: str):
        """The :class:`~sobre.image.Image` of a catalogued volume (lazy)."""
        from sobre.image import load_all

        rec = self.series(uid)
        if rec["status"] != "ok":
            raise CatalogError(f"series {rec['series_uid']} could not be assembled: {rec['problem']}")
        images = load_all(self.files_of(rec["series_uid"], rec["label"]), on_warning=lambda m: None)
        if len(images) != 1:
            raise CatalogError(f"series {rec['series_uid']} reads as {len(images)} volumes",
                               fix="its files changed since ingest; run `sobre ingest` again")
        return images[0]

    # ------------------------------------------------------------------ cohorts
    def cohort_create(self, name: str, where: str, *, replace: bool = False) -> dict:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise CatalogError(f"invalid cohort name '{name}'", expected="letters, digits, '-', '_' or '.'")
        compile_filter(where, self.fields())  # validate now
        with self.session() as s, s.begin():
            row = s.execute(select(Cohort).where(Cohort.name == name)).scalar_one_or_none()
            if row is not None and not replace:
                raise CatalogError(f"cohort '{name}' exists", found=row.expression,
                                   fix="choose another name or pass --replace")
            if row is None:
                row = Cohort(name=name, expression=where, created_at=datetime.now(timezone.utc).replace(tzinfo=None))
                s.add(row)
            else:
                row.expression = where
        return self.cohort(name)

    def cohorts(self) -> list[dict]:
        with self.session() as s:
            names = [c.name for c in s.execute(select(Cohort).order_by(Cohort.name)).scalars()]
        return [self.cohort(n) for n in names]

    def cohort(self, name: str) -> dict:
        with self.session() as s:
            row = s.execute(select(Cohort).where(Cohort.name == name)).scalar_one_or_none()
            if row is None:
                known = [c for (c,) in s.execute(select(Cohort.name)).all()]
                raise CatalogError(f"no cohort '{name}'", expected="one of: " + (", ".join(known) or "(none yet)"))
            versions = s.execute(select(DatasetVersion).where(DatasetVersion.cohort_pk == row.id)
                                 .order_by(DatasetVersion.version)).scalars().all()
            members = self.query(row.expression)
            return {"name": row.name, "where": row.expression, "created_at": row.created_at.isoformat(),
                    "n_series": len(members), "n_subjects": len({m["subject_id"] for m in members}),
                    "members": members,
                    "versions": [{"ref": f"{row.name}@v{v.version}", "content_hash": v.content_hash,
                                  "n_series": v.n_series, "created_at": v.created_at.isoformat()} for v in versions]}

    # ------------------------------------------------------------------ dataset versions
    def freeze(self, name: str, *, progress: bool = False) -> DatasetRef:
        """Freeze a cohort into an immutable dataset version with one content hash.

        Every file is hashed again and compared with the catalog: a file changed since ingest is an
        error (re-ingest it first). The content hash covers series, file hashes, geometry, labels
        and metadata, not names, dates or paths: the same content always gives the same hash. If the
        latest version already has this hash it is returned unchanged.
        """
        cohort = self.cohort(name)
        members = cohort["members"]
        if not members:
            raise CatalogError(f"cohort '{name}' is empty", found=cohort["where"],
                               fix="nothing to freeze; check the filter with `sobre cohort show`")
        variables = self.variables()
        series_entries = []
        locations: dict[str, str] = {}
        n_files = 0
        bar = _progress(sum(m["n_files"] for m in members), "hashing files", progress)
        with self.session() as s:
            for m in members:
                ser = s.execute(select(Series).where(Series.series_uid == m["series_uid"],
                                                     Series.label == m["label"])).scalar_one()
                files = s.execute(select(File).where(File.series_pk == ser.id)).scalars().all()
                entries = []
                for f in files:
                    try:
                        sha = _scan.sha256_file(f.path)
                    except OSError as exc:
                        raise CatalogError("file of the cohort cannot be read", path=f.path,
                                           found=exc.strerror, fix="restore it, or re-ingest") from None
                    if sha != f.sha256:
                        raise CatalogError("file changed since it was ingested", path=f.path,
                                           expected=f"sha256 {f.sha256}", found=f"sha256 {sha}",
                                           fix="re-run `sobre ingest` on it (or restore the original)")
                    entries.append({"sha256": f.sha256, "size": f.size})
                    locations[f.sha256] = f.path
                    bar.update(1)
                entries.sort(key=lambda e: e["sha256"])
                n_files += len(entries)
                meta = {k: v for k, v in m.items() if k not in ("status", "problem", "shape", "spacing",
                                                                 "orientation", "n_files")}
                series_entries.append({
                    "series_uid": ser.series_uid, "label": ser.label, "format": ser.format,
                    "shape": ser.shape, "spacing": ser.spacing, "affine_lps": ser.affine,
                    "orientation": ser.orientation, "dtype": ser.dtype, "files": entries, "metadata": meta,
                })
        bar.close()
        series_entries.sort(key=lambda e: (e["series_uid"], e["label"]))
        content = {"format": "sobre.dataset/1", "series": series_entries, "variables": variables}
        content_hash = __import__("hashlib").sha256(canonical_json(content)).hexdigest()
        with self.session() as s, s.begin():
            crow = s.execute(select(Cohort).where(Cohort.name == name)).scalar_one()
            last = s.execute(select(DatasetVersion).where(DatasetVersion.cohort_pk == crow.id)
                             .order_by(DatasetVersion.version.desc())).scalars().first()
            if last is not None and last.content_hash == content_hash:
                return self._ref(name, last)
            version = (last.version + 1) if last else 1
            created = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
            manifest = {
                "name": name, "version": version, "ref": f"{name}@v{version}", "content_hash": content_hash,
                "created_at": created.isoformat() + "Z", "where": crow.expression,
                "n_series": len(series_entries), "n_files": n_files,
                "n_subjects": len({e["metadata"]["subject_id"] for e in series_entries}),
                "simulated": any(e["metadata"].get("simulated") in (True, "yes", "YES", 1)
                                 for e in series_entries),
                "locations": locations, "content": content,
            }
            mpath = self.root / "datasets" / name / f"v{version}.json"
            if mpath.exists():
                raise CatalogError("manifest already exists for a version the catalog does not know", path=mpath,
                                   fix="the catalog and datasets/ folder disagree; restore the catalog backup")
            _atomic_write(mpath, json.dumps(manifest, indent=1, sort_keys=True).encode(), mode=0o444)
            row = DatasetVersion(cohort_pk=crow.id, version=version, content_hash=content_hash,
                                 manifest_path=str(mpath.relative_to(self.root)), n_series=manifest["n_series"],
                                 n_files=n_files, n_subjects=manifest["n_subjects"], created_at=created)
            s.add(row)
            s.flush()
            return self._ref(name, row)

    def _ref(self, name: str, row: DatasetVersion) -> DatasetRef:
        return DatasetRef(name=name, version=row.version, content_hash=row.content_hash,
                          manifest_path=self.root / row.manifest_path, n_series=row.n_series, n_files=row.n_files,
                          n_subjects=row.n_subjects, created_at=row.created_at.isoformat())

    def datasets(self) -> list[DatasetRef]:
        with self.session() as s:
            rows = s.execute(select(DatasetVersion, Cohort.name).join(Cohort, Cohort.id == DatasetVersion.cohort_pk)
                             .order_by(Cohort.name, DatasetVersion.version)).all()
            return [self._ref(n, r) for r, n in rows]

    def dataset(self, ref: str) -> DatasetRef:
        """A frozen version by ``NAME@vN``, ``NAME`` (latest) or a content-hash prefix."""
        name, _, ver = ref.partition("@")
        cands = [d for d in self.datasets() if d.name == name]
        if ver:
            cands = [d for d in cands if f"v{d.version}" == ver or str(d.version) == ver]
        if not cands and len(ref) >= 8:
            cands = [d for d in self.datasets() if d.content_hash.startswith(ref)]
        if not cands:
            raise CatalogError(f"no dataset version '{ref}'",
                               expected="NAME@vN, NAME or a hash prefix; frozen: "
                               + (", ".join(d.ref for d in self.datasets()) or "(none yet)"))
        return cands[-1]

    def verify(self, ref: str) -> list[dict]:
        """Re-hash the files of a dataset version; returns the problems found (empty when intact)."""
        d = self.dataset(ref)
        man = d.manifest()
        problems = []
        digest = __import__("hashlib").sha256(canonical_json(man["content"])).hexdigest()
        if digest != d.content_hash or man["content_hash"] != d.content_hash:
            problems.append({"path": str(d.manifest_path), "problem": "manifest content does not match its hash"})
        for sha, path in sorted(man["locations"].items(), key=lambda kv: kv[1]):
            try:
                got = _scan.sha256_file(path)
            except OSError as exc:
                problems.append({"path": path, "problem": f"cannot read ({exc.strerror})"})
                continue
            if got != sha:
                problems.append({"path": path, "problem": f"content changed (expected sha256 {sha}, found {got})"})
        return problems

    def summary(self) -> dict:
        with self.session() as s:
            from sqlalchemy import func

            count = lambda m: s.execute(select(func.count()).select_from(m)).scalar_one()  # noqa: E731
            by_mod = defaultdict(int)
            for (mod,) in s.execute(select(Series.modality).where(Series.status == "ok")).all():
                by_mod[mod or "?"] += 1
            return {"workspace": str(self.root), "database": self.db_url.split("://")[0],
                    "subjects": count(Subject), "studies": count(Study), "series": count(Series),
                    "files": count(File), "sites": count(Site), "variables": count(Variable),
                    "cohorts": count(Cohort), "dataset_versions": count(DatasetVersion),
                    "series_by_modality": dict(sorted(by_mod.items())),
                    "series_with_problems": s.execute(select(func.count()).select_from(Series)
                                                      .where(Series.status != "ok")).scalar_one()}


def _scan_many(paths: list[str], workers: int | None) -> list[dict]:
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 16:
        return [_scan.scan_file(p) for p in paths]
    from concurrent.futures import ProcessPoolExecutor

    global _POOL
    if _POOL is None or _POOL[0] != workers:
        _POOL = (workers, ProcessPoolExecutor(max_workers=workers))
    return list(_POOL[1].map(_scan.scan_file, paths, chunksize=16))


_POOL = None


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file" if "file" in desc or "header" in desc else "series",
                leave=False, dynamic_ncols=True)

"""The workspace: a folder with a catalog database (SQLite by default, PostgreSQL for teams).

Layout::

    WS/
      sobre.toml              workspace settings (database URL)
      catalog.sqlite          the catalog (default database)
      files/                  content-addressed copies (ingest --copy)
      datasets/NAME/vN.json   frozen dataset manifests (read-only)
"""

from __future__ import annotations

import atexit
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

from sqlalchemy import bindparam, create_engine, delete, event, func, insert, select, update
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
    "simulated": "true for synthetic images (DICOM SyntheticData YES, or a 'simulated' clinical column)",
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


def _safe_url(url: str) -> str:
    """The URL with its password hidden (for messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"


def _db_problem(exc: Exception) -> str:
    """First line of a driver error, without SQLAlchemy's background link."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


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
            if db_url and cls._resolve_url(root, db_url) != ws.db_url:
                raise CatalogError("workspace already exists with another database", path=cfg,
                                   expected=_safe_url(db_url), found=_safe_url(ws.db_url))
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
            raise CatalogError(f"cannot create the catalog database ({_db_problem(exc)})",
                               found=_safe_url(url), fix="check the database URL and that the server is reachable"
                               ) from None
        text = (
            "# Sobre workspace settings\n[workspace]\nformat = 1\n"
            f'database = {json.dumps(url)}\ncreated = "{datetime.now(timezone.utc).isoformat(timespec="seconds")}"\n'
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
        try:
            _migrate(ws.engine)  # no-op when up to date; upgrades older workspaces
        except Exception as exc:
            ws.close()
            raise CatalogError(f"cannot open the catalog database ({_db_problem(exc)})", path=root / CONFIG_NAME,
                               found=_safe_url(url), fix="check that the database server is running and reachable"
                               ) from None
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
    def ingest(self, paths: str | Path | Iterable[str | Path], *, site: str | None = None,
               clinical: str | Path | None = None, copy: bool = False, progress: bool = False,
               workers: int | None = None) -> IngestReport:
        """Catalogue every image below ``paths``; idempotent and crash-safe.

        Files are hashed and their headers read (no pixels) in worker processes; results are
        written in transactions of a few hundred files, and each touched series is recorded as
        *pending*. Volumes are then (re)assembled per series in one transaction each, which clears
        its pending mark. A run killed at any point leaves a consistent catalog; the next run
        finds the files already recorded and finishes the pending series.

        A file that cannot be read is skipped and reported (``report.skipped``: path, reason); it
        never stops the others. A file with the same content as one already catalogued (at another
        path) is skipped as a duplicate.

        A path that does not exist is reported in ``report.skipped`` too (``sobre ingest`` refuses it
        before starting).

        Raises
        ------
        InputError
            Before anything is written, when the clinical table cannot be read or holds an
            unparseable value (named by line and column). Unknown subject identifiers in the
            clinical table are only known after the images are catalogued: they leave the table out
            (``report.clinical_error``), not the images.
        """
        report = IngestReport()
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        table = read_clinical(clinical) if clinical is not None else None
        files, missing = _scan.walk(paths, exclude=[self.root])
        report.skipped.extend(missing)
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
                    report.skipped.append((f, f"cannot read file ({exc.strerror})"))
                    continue
                if (st.st_size, st.st_mtime_ns) == k:
                    report.known += 1
                    continue
            todo.append(f)
        del known
        bar = _progress(len(todo), "reading headers", progress)
        cache = _IngestCache()
        for records in _scan_stream(todo, workers, BATCH):
            self._write_batch(records, report, site=site, copy=copy, cache=cache)
            bar.update(len(records))
        bar.close()
        self._assemble_pending(report, progress=progress)
        tables: list[tuple[Path, object]] = []
        if table is not None:
            tables.append((Path(clinical), table))
        else:
            given = [os.path.abspath(os.fspath(p)) for p in paths]
            for root in sorted(r for r in self._bids_roots()  # only BIDS datasets this ingest looked at
                               if any(g == r or g.startswith(r + os.sep) or r.startswith(g + os.sep) for g in given)):
                tsv = Path(root) / "participants.tsv"
                if tsv.exists():
                    tables.append((tsv, None))
        errors = []
        for path, tab in tables:
            try:
                added = self._add_table(tab if tab is not None else read_clinical(path), path)
            except SobreError as exc:
                errors.append(str(exc))
                continue
            if report.clinical is None:
                report.clinical = added
            else:  # several BIDS datasets in one ingest: one summary over their tables
                known = {v["name"] for v in report.clinical["variables"]}
                report.clinical = {
                    "path": f"{report.clinical['path']}; {added['path']}",
                    "subjects": report.clinical["subjects"] + added["subjects"],
                    "variables": report.clinical["variables"] + [v for v in added["variables"]
                                                                 if v["name"] not in known]}
        if errors:
            report.clinical_error = "; ".join(errors)
        return report

    def _bids_roots(self) -> set[str]:
        with self.engine.connect() as conn:
            roots = set()
            for (h,) in conn.execute(select(File.header).where(File.kind != "dicom")):
                if h and h.get("bids_root"):
                    roots.add(h["bids_root"])
        return roots

    def _write_batch(self, records: list[dict], report: IngestReport, *, site: str | None, copy: bool,
                     cache: _IngestCache) -> None:
        """Write one batch of scan results in one transaction (bulk statements, no per-file queries)."""
        good = []
        for rec in records:
            if rec.get("error"):
                report.skipped.append((rec["path"], rec["error"]))
            else:
                good.append(rec)
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
                        report.skipped.append((path, f"same content as {first} (already catalogued)"))
                        continue
                    holder[sha] = path
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
            if rec["kind"] == "dicom":
                study_uid = h.get("study_uid") or f"study-of-{rec['series_uid']}"
            else:
                study_uid = f"bids:{sid}:{h.get('session') or 'nosession'}" if h.get("bids_root") else \
                    f"file-study:{rec['series_uid']}"
            site_name = (site or h.get("institution") or "")[:_SITE_LEN] or None
            keys.append((sid[:_SUBJECT_ID_LEN], study_uid[:_STUDY_UID_LEN], site_name))
        # sites
        for name in sorted({k[2] for k in keys if k[2] and k[2] not in cache.sites}):
            pk = conn.execute(select(Site.id).where(Site.name == name)).scalar_one_or_none()
            if pk is None:
                pk = conn.execute(insert(Site).values(name=name)).inserted_primary_key[0]
            cache.sites[name] = pk
        # subjects
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
        # studies
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

    def _assemble_pending(self, report: IngestReport, *, progress: bool = False) -> None:
        with self.engine.connect() as conn:
            uids = list(conn.execute(select(PendingSeries.series_uid).order_by(PendingSeries.series_uid)).scalars())
        bar = _progress(len(uids), "assembling series", progress)
        sites: dict[str, int | None] = {}
        for uid in uids:
            with self.engine.begin() as conn:
                self._assemble_one(conn, uid, report, sites)
            bar.update(1)
        bar.close()

    def _assemble_one(self, conn, uid: str, report: IngestReport, sites: dict) -> None:
        """(Re)build the Series rows of one SeriesInstanceUID from its File rows; clears its pending mark."""
        from sobre.errors import GeometryError
        from sobre.image import Frame, assemble

        ft, sr = File.__table__, Series.__table__
        files = conn.execute(select(ft.c.id, ft.c.path, ft.c.kind, ft.c.frames)
                             .where(ft.c.series_uid == uid).order_by(ft.c.path)).all()
        had = conn.execute(select(func.count()).select_from(sr).where(sr.c.series_uid == uid)).scalar_one()
        if had:
            conn.execute(update(ft).where(ft.c.series_uid == uid).values(series_pk=None))
            conn.execute(delete(sr).where(sr.c.series_uid == uid))

        def header(f) -> dict:  # only the first file of each volume's header is needed
            return conn.execute(select(ft.c.header).where(ft.c.id == f.id)).scalar_one() or {}

        volumes: list[tuple[dict, list]] = []
        if files and files[0].kind == "dicom":
            frames = []
            by_path = {}
            for f in files:
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
                volumes.append((self._series_row(uid, "", files[0].kind, header(files[0]), files,
                                                 problem=str(exc)), files))
                report.problems.append((uid, str(exc)))
        elif files:
            volumes.append((self._series_row(uid, "", files[0].kind, header(files[0]), files), files))
        for row, vf in volumes:
            name = (row["meta"].get("site") or "")[:_SITE_LEN]
            if name and name not in sites:
                sites[name] = conn.execute(select(Site.id).where(Site.name == name)).scalar_one_or_none()
            row["site_pk"] = sites.get(name) if name else None
            pk = conn.execute(insert(sr).values(**_clip(sr, row))).inserted_primary_key[0]
            ids = [f.id for f in vf]
            for i in range(0, len(ids), 5000):
                conn.execute(update(ft).where(ft.c.id.in_(ids[i:i + 5000])).values(series_pk=pk))
        if volumes:
            if had:
                report.series_updated += 1
            else:
                report.series_new += 1
        conn.execute(delete(PendingSeries).where(PendingSeries.series_uid == uid))

    @staticmethod
    def _series_row(uid: str, label: str, kind: str, h: dict, files: list, *, plan=None,
                    problem: str | None = None) -> dict:
        if plan is not None:
            from sobre.image import _geometry as geo

            shape, affine = list(plan.shape), plan.affine.tolist()
            spacing = [round(v, 6) for v in geo.spacing(plan.affine)[: plan.spatial_ndim]]
            orient = geo.orientation_code(plan.affine) if plan.coordinate_system == "LPS" else "???"
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
                  "simulated": str(h.get("synthetic_data") or "").upper() == "YES" or None},
        )

    # ------------------------------------------------------------------ clinical
    def add_clinical(self, path: str | Path, *, subject_map=None) -> dict:
        """Join a clinical table to known subjects, all rows or none (one transaction).

        ``subject_map`` translates the table's identifiers into catalog subject ids (e.g. the
        keyed pseudonyms of a de-identified workspace).

        Raises :class:`InputError` if a subject id is unknown or a value unparseable; the catalog is
        then unchanged.
        """
        table = read_clinical(path)
        if subject_map is not None:
            table.subject_lines = {subject_map(k): v for k, v in table.subject_lines.items()}
            for col in table.columns:
                col.values = {subject_map(k): v for k, v in col.values.items()}
        return self._add_table(table, path)

    def _add_table(self, table, path: str | Path) -> dict:
        with self.session() as s, s.begin():
            subjects = {sid: pk for pk, sid in s.execute(select(Subject.id, Subject.subject_id)).all()}
            unknown = [sid for sid in table.subject_lines if sid not in subjects]
            if unknown:
                lines = ", ".join(f"'{u}' (line {table.subject_lines[u]})" for u in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise InputError(
                    f"{len(unknown)} subject id(s) in column '{table.id_column}' are not in the catalog: "
                    f"{lines}{more}", path=path,
                    expected="identifiers of ingested subjects (PatientID, or sub-XX for BIDS)",
                    fix="ingest the images first, or correct the identifiers; nothing from this table was stored",
                )
            vt = SubjectValue.__table__
            for col in table.columns:
                var = s.execute(select(Variable).where(Variable.name == col.name)).scalar_one_or_none()
                if var is None:
                    if col.name in BASE_FIELDS and col.name not in ("age", "sex", "bmi", "height", "weight", "site", "simulated"):
                        raise InputError(f"column '{col.name}' would shadow a built-in field", path=path,
                                         expected="a name other than: " + ", ".join(sorted(BASE_FIELDS)),
                                         fix="rename the column; nothing from this table was stored")
                    var = Variable(name=col.name, kind=col.kind, unit=col.unit, source=str(path))
                    s.add(var)
                    s.flush()
                elif var.kind != col.kind:
                    raise InputError(f"column '{col.name}' changes type", path=path,
                                     expected=f"{var.kind} (as stored from {var.source})", found=col.kind,
                                     fix="correct the column's values; nothing from this table was stored")
                existing = {spk: (pk, num, text) for pk, spk, num, text in s.execute(
                    select(vt.c.id, vt.c.subject_pk, vt.c.num, vt.c.text).where(vt.c.variable_pk == var.id))}
                inserts, updates = [], []
                for sid, value in col.values.items():
                    spk = subjects[sid]
                    num = value if col.kind == "numeric" else None
                    text = None if col.kind == "numeric" or value is None else str(value)
                    old = existing.get(spk)
                    if old is None:
                        inserts.append({"subject_pk": spk, "variable_pk": var.id, "num": num, "text": text})
                    elif (old[1], old[2]) != (num, text):
                        updates.append({"b_id": old[0], "b_num": num, "b_text": text})
                if inserts:
                    s.execute(insert(vt), inserts)
                if updates:
                    s.connection().execute(update(vt).where(vt.c.id == bindparam("b_id"))
                                           .values(num=bindparam("b_num"), text=bindparam("b_text")), updates)
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
            var_names = sorted(v.name for v in variables.values())
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
                    "simulated": bool((ser.meta or {}).get("simulated"))
                    or str(clin.get("simulated") or "").strip().lower() in ("yes", "true", "1", "1.0"),
                    "status": ser.status, "problem": ser.problem,
                    "shape": ser.shape, "spacing": ser.spacing, "orientation": ser.orientation,
                }
                for name in var_names:  # every clinical variable, None where the subject has no value
                    rec.setdefault(name, clin.get(name))
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
        if not name or len(name) > 100 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) \
                or name.startswith("."):
            raise CatalogError(f"invalid cohort name '{name}'",
                               expected="1 to 100 ASCII letters, digits, '-', '_' or '.' (not first)")
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
                "simulated": any(e["metadata"].get("simulated") is True
                                 for e in series_entries),
                "locations": locations, "content": content,
            }
            mpath = self.root / "datasets" / name / f"v{version}.json"
            if mpath.exists():  # left by a freeze killed between writing it and recording it
                try:
                    prior = json.loads(mpath.read_text())
                    same = prior["content_hash"] == content_hash and \
                        __import__("hashlib").sha256(canonical_json(prior["content"])).hexdigest() == content_hash
                    prior_created = datetime.fromisoformat(str(prior["created_at"]).removesuffix("Z"))
                except (OSError, ValueError, TypeError, KeyError):
                    same = False
                if same:  # the same version: record it as it was written
                    manifest, created = prior, prior_created
                else:  # another content: keep it aside, never overwrite it
                    os.replace(mpath, mpath.with_name(f"{mpath.name}.orphaned"))
            if not mpath.exists():
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


_SUBJECT_ID_LEN = Subject.__table__.c.subject_id.type.length
_STUDY_UID_LEN = Study.__table__.c.study_uid.type.length
_SITE_LEN = Site.__table__.c.name.type.length


_TEXT_LIMITS: dict[str, list[tuple[str, int]]] = {}


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


# --------------------------------------------------------------------------- header-reading processes
_CHUNK = 32  # files per task sent to a worker
_POOL: tuple[int, object] | None = None


def _worker_init(parent: int) -> None:  # pragma: no cover - runs in the worker processes
    """Leave when the ingesting process is gone (killed, crashed): never linger as an orphan."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _pool(workers: int, *, fresh: bool = False):
    global _POOL
    from concurrent.futures import ProcessPoolExecutor

    if fresh or _POOL is None or _POOL[0] != workers:
        _shutdown_pool()
        _POOL = (workers, ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                              initargs=(os.getpid(),)))
    return _POOL[1]


def _shutdown_pool(wait: bool = False) -> None:
    """Stop the header-reading processes (they are started again on demand)."""
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(wait=wait, cancel_futures=True)
        _POOL = None


atexit.register(_shutdown_pool)


def _crashed(path: str) -> dict:
    return {"path": path, "error": "reading this file crashed the header-reading process "
                                   "(corrupted or hostile content); it was left out"}


def _scan_isolated(paths: list[str], workers: int) -> list[dict]:
    """Scan files one task each, after a worker died: the file that kills a worker is the one reported."""
    from concurrent.futures.process import BrokenProcessPool

    out = []
    for p in paths:
        try:
            out.extend(_pool(workers).submit(_scan.scan_many, [p]).result())
        except BrokenProcessPool:
            _pool(workers, fresh=True)
            out.append(_crashed(p))
    return out


def _scan_stream(paths: list[str], workers: int | None, batch: int):
    """Yield the scan records of ``paths`` in order, ``batch`` at a time, reading ahead in worker processes.

    While the caller writes one batch to the catalog, the workers read the next files. A worker
    that dies on a file (segfault, out of memory) costs that file only: the in-flight files are
    re-read one by one in fresh workers and the culprit is reported as skipped.
    """
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 2 * _CHUNK:
        for i in range(0, len(paths), batch):
            yield _scan.scan_many(paths[i:i + batch])
        return
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    chunks = iter([paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)])
    window: deque = deque()

    def fill(pool) -> None:
        while len(window) < workers * 4:
            c = next(chunks, None)
            if c is None:
                return
            window.append((c, pool.submit(_scan.scan_many, c)))

    fill(_pool(workers))
    buf: list[dict] = []
    while window:
        chunk, fut = window.popleft()
        try:
            buf.extend(fut.result())
        except BrokenProcessPool:
            lost = chunk + [p for c, _ in window for p in c]
            window.clear()
            _pool(workers, fresh=True)
            buf.extend(_scan_isolated(lost, workers))
        fill(_pool(workers))
        while len(buf) >= batch:
            yield buf[:batch]
            buf = buf[batch:]
    if buf:
        yield buf


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

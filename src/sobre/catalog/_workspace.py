"""The workspace: a folder (:class:`WorkspaceLayout`), its settings (:class:`WorkspaceSettings`) and its
catalog database (SQLite by default, PostgreSQL for teams).

:class:`Workspace` is a thin front over the modules that do the work: the intake (``_intake``,
``_ingest``: every path by which data enters, with the privacy policy applied), clinical tables
(``_clinical``), records, queries and cohorts (``_cohorts``), frozen dataset versions (``_datasets``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sobre.base import Progress, no_progress
from sobre.errors import CatalogError, Problem, SobreError
from sobre.privacy import PrivacySettings

from . import _cohorts, _datasets
from ._clinical import read_clinical, store_table
from ._db import db_problem, migrate, open_engine, resolve_url, safe_url
from ._ingest import IngestReport
from ._layout import SETTINGS_NAME, WorkspaceLayout
from ._models import (
    Cohort, DatasetVersion, DicomObject, File, Series, Site, Study, Subject, Variable,
)
from ._settings import WorkspaceSettings

__all__ = ["Workspace"]


class Workspace:
    """A Sobre workspace: folder + settings + catalog. Create with :meth:`init`, reopen with :meth:`open`.

    Examples
    --------
    >>> import tempfile
    >>> ws = Workspace.init(tempfile.mkdtemp() + "/ws")
    >>> ws.summary()["series"], ws.settings.privacy.deidentify
    (0, False)
    >>> ws.close()
    """

    def __init__(self, layout: WorkspaceLayout, settings: WorkspaceSettings) -> None:
        self.layout = layout
        self.settings = settings
        self.db_url = resolve_url(layout.root, settings.workspace.database)
        self.engine = open_engine(self.db_url)
        self._Session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def root(self) -> Path:
        return self.layout.root

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(cls, root: str | os.PathLike, db_url: str | None = None, *,
             privacy: PrivacySettings | dict | None = None) -> Workspace:
        """Create a workspace folder (or re-open an existing one with the same settings).

        Parameters
        ----------
        root : path
            A new or empty folder.
        db_url : str, optional
            SQLAlchemy URL of the catalog (default: ``catalog.sqlite`` in the folder).
        privacy : PrivacySettings or dict, optional
            The ``[privacy]`` settings, e.g. ``{"deidentify": True}``.
        """
        layout = WorkspaceLayout(Path(root).absolute())
        if layout.settings.exists():
            ws = cls.open(layout.root)
            if db_url and resolve_url(layout.root, db_url) != ws.db_url:
                ws.close()
                raise CatalogError("workspace already exists with another database", path=layout.settings,
                                   expected=safe_url(db_url), found=safe_url(ws.db_url))
            if privacy is not None:
                ws.close()
                raise CatalogError("workspace already exists; its privacy settings are not changed by init",
                                   path=layout.settings, fix="edit the [privacy] table of sobre.toml")
            return ws
        if layout.root.exists() and any(layout.root.iterdir()):
            raise CatalogError("folder is not empty and is not a Sobre workspace", path=layout.root,
                               fix="choose a new or empty folder")
        settings = WorkspaceSettings.new(db_url, privacy)
        layout.root.mkdir(parents=True, exist_ok=True)
        try:
            ws = cls(layout, settings)
            migrate(ws.engine)
        except SobreError:
            raise
        except Exception as exc:
            raise CatalogError(f"cannot create the catalog database ({db_problem(exc)})",
                               found=safe_url(settings.workspace.database),
                               fix="check the database URL and that the server is reachable") from None
        settings.write(layout)
        for folder in layout.created_folders():
            folder.mkdir(exist_ok=True)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike) -> Workspace:
        """Open an existing workspace (``root`` or any folder below it)."""
        start = Path(root).absolute()
        for cand in (start, *start.parents):
            if (cand / SETTINGS_NAME).exists():
                layout = WorkspaceLayout(cand)
                break
        else:
            raise CatalogError("not a Sobre workspace", path=start, expected=f"a folder holding {SETTINGS_NAME}",
                               fix="create one with `sobre init DIR` or pass -w DIR")
        settings = WorkspaceSettings.read(layout)
        ws = cls(layout, settings)
        try:
            migrate(ws.engine)  # no-op when up to date; upgrades older workspaces
        except Exception as exc:
            ws.close()
            raise CatalogError(f"cannot open the catalog database ({db_problem(exc)})", path=layout.settings,
                               found=safe_url(settings.workspace.database),
                               fix="check that the database server is running and reachable") from None
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

    # ------------------------------------------------------------------ site key and audit trail
    def site_key(self, *, create: bool = True):
        """The site's Ed25519 signing key (``secrets/site.ed25519.pem``; created on first use)."""
        from sobre.base import SiteKey

        if create and not self.layout.site_key.exists():
            self.layout.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
            return SiteKey.load_or_create(self.layout.site_key)[0]
        return SiteKey.load(self.layout.site_key)

    @cached_property
    def audit(self):
        """The workspace's append-only, hash-chained audit log (checkpoints signed with the site key).

        One log for all of Sobre: the workstation logs every view of patient data and every annotation
        change, the inference service every decision (inputs, model, outputs, reviewer).
        """
        from sobre.base import AuditLog

        self.layout.audit.mkdir(mode=0o700, parents=True, exist_ok=True)
        return AuditLog(self.layout.audit_log, signer=self.site_key())

    # ------------------------------------------------------------------ people, projects, annotations
    @cached_property
    def accounts(self):
        """Accounts, projects (cohorts + label schema) and roles: :class:`~sobre.catalog.Accounts`."""
        from ._accounts import Accounts

        return Accounts(self)

    @cached_property
    def annotations(self):
        """Annotation versions (immutable, per annotator, reviewed): :class:`~sobre.catalog.Annotations`."""
        from ._annotations import Annotations

        return Annotations(self)

    # ------------------------------------------------------------------ intake
    @cached_property
    def intake(self):
        """The :class:`~sobre.catalog.Intake`: the one way data enters, with the privacy policy applied."""
        from ._intake import Intake

        return Intake(self)

    def ingest(self, paths: str | os.PathLike | Iterable[str | os.PathLike], *, site: str | None = None,
               clinical: str | os.PathLike | None = None, copy: bool = False, progress: Progress = no_progress,
               workers: int | None = None, deidentify: bool | None = None) -> IngestReport:
        """Catalogue every image below ``paths`` through the workspace's intake (see :meth:`Intake.ingest`).

        With ``[privacy] deidentify = true`` in ``sobre.toml`` every DICOM instance is de-identified
        before anything about it is stored, whoever calls this.
        """
        return self.intake.ingest(paths, site=site, clinical=clinical, copy=copy, progress=progress,
                                  workers=workers, deidentify=deidentify)

    def _bids_roots(self) -> set[str]:
        with self.engine.connect() as conn:
            roots = set()
            for (h,) in conn.execute(select(File.header).where(File.kind.in_(["nifti", "itk", "optical"]))):
                if h and h.get("bids_root"):
                    roots.add(h["bids_root"])
        return roots

    # ------------------------------------------------------------------ clinical
    def add_clinical(self, path: str | os.PathLike) -> dict:
        """Join a clinical table to known subjects, all rows or none (one transaction).

        In a de-identifying workspace the table's identifiers are original PatientIDs; they are
        translated into the keyed pseudonyms the de-identification gave (no original id is stored).

        Raises :class:`~sobre.errors.InputError` if a subject id is unknown or a value unparseable;
        the catalog is then unchanged.
        """
        table = read_clinical(path)
        if self.intake.required:
            with self.intake.deidentifier() as deid:
                table.map_subjects(deid.pseudonym_of)
        return store_table(self, table, path)

    def _add_table(self, table, path) -> dict:
        return store_table(self, table, path)

    def variables(self) -> dict[str, dict]:
        with self.session() as s:
            return {v.name: {"kind": v.kind, "unit": v.unit} for v in s.execute(select(Variable)).scalars()}

    def fields(self) -> list[str]:
        """Every name a filter may use: base fields, clinical variables, annotation fields."""
        ann = {k for values in self.annotations.fields().values() for k in values}
        return sorted(set(_cohorts.BASE_FIELDS) | set(self.variables()) | ann)

    # ------------------------------------------------------------------ records and series
    def records(self, *, include_errors: bool = False) -> list[dict]:
        """One dict per catalogued volume with every queryable field (base fields + clinical variables)."""
        return _cohorts.records(self, include_errors=include_errors)

    def geometry(self, uid: str) -> dict:
        """Shape, spacing, orientation, dtype and the 4×4 LPS affine of a catalogued volume (no file read)."""
        rec = self.series(uid)
        with self.session() as s:
            row = s.execute(select(Series).where(Series.series_uid == rec["series_uid"],
                                                 Series.label == rec["label"])).scalar_one()
            return {"series_uid": row.series_uid, "label": row.label, "shape": row.shape, "spacing": row.spacing,
                    "orientation": row.orientation, "dtype": row.dtype, "affine_lps": row.affine,
                    "format": row.format, "modality": row.modality}

    def query(self, where: str | None) -> list[dict]:
        """Records matching ``where``; :meth:`select` also says what was left out and why."""
        return _cohorts.query(self, where).records

    def select(self, where: str | None) -> _cohorts.QueryResult:
        """Records matching ``where`` and the matching volumes left out (error state), with reasons."""
        return _cohorts.query(self, where)

    def series(self, uid: str) -> dict:
        """Catalog record of one volume by SeriesInstanceUID (``uid`` or ``uid#label``); unique prefixes work."""
        uid, _, label = uid.partition("#")
        recs = [r for r in _cohorts.records(self, include_errors=True, series_uid=uid)
                if not label or r["label"] == label]
        if not recs:
            recs = [r for r in _cohorts.records(self, include_errors=True, uid_prefix=uid)
                    if not label or r["label"] == label]
        if not recs:
            raise CatalogError(f"no series '{uid}' in the catalog", found=repr(uid),
                               fix="list series with `sobre cohort show` or `sobre info --json` on a file")
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
                raise CatalogError(f"no series '{series_uid}' in the catalog", found=repr(series_uid))
            return [f.path for f in s.execute(select(File).where(File.series_pk == ser.id)
                                               .order_by(File.path)).scalars()]

    def volume_layout(self, series_uid: str, label: str = "") -> dict:
        """How a catalogued volume is laid out, from the catalog alone (no file is opened).

        ``shape``, ``dtype``, ``affine`` (4×4, LPS), ``spatial_ndim``, ``extra_axes``,
        ``coordinate_system`` and ``orientation``: what :meth:`load` would give as the image's
        ``shape``, ``dtype``, ... DICOM volumes are assembled again from the frame geometry stored at
        ingest (the assembly ingest and reading use); other formats from their stored header.
        Raises :class:`~sobre.errors.CatalogError` for an unknown series, one in the error state, or
        stored frames that no longer assemble into this volume.
        """
        import numpy as np

        from sobre.image import Frame, assemble, orientation_code

        with self.session() as s:
            ser = s.execute(select(Series).where(Series.series_uid == series_uid,
                                                 Series.label == label)).scalar_one_or_none()
            if ser is None:
                raise CatalogError(f"no series '{series_uid}' in the catalog", found=repr(series_uid))
            if ser.status != "ok":
                raise CatalogError(f"series {series_uid} could not be assembled at ingest", found=ser.problem)
            rows = s.execute(select(File.path, File.kind, File.frames, File.header).where(File.series_pk == ser.id)
                             .order_by(File.path)).all()
        if not rows:
            raise CatalogError(f"series {series_uid} has no files in the catalog", fix="run `sobre ingest` again")
        if rows[0].kind == "dicom":
            frames = []
            for path, _, stored, _ in rows:
                for fj in stored or []:
                    fr = Frame.from_dict(fj)
                    fr.path = path
                    frames.append(fr)
            try:
                plans = [p for p in assemble(frames, on_warning=lambda m: None) if p.label == label]
            except SobreError as exc:
                raise CatalogError(f"the stored frames of series {series_uid} no longer assemble",
                                   found=exc.what, fix="run `sobre ingest` again") from None
            if len(plans) != 1:
                raise CatalogError(f"the stored frames of series {series_uid} give {len(plans)} volumes labelled "
                                   f"'{label}'", expected="1", fix="run `sobre ingest` again")
            p = plans[0]
            shape, dtype, affine = list(p.shape), str(p.dtype), np.asarray(p.affine, dtype=float)
            spatial, extra, coords = p.spatial_ndim, list(p.extra_axes), p.coordinate_system
        else:
            h = rows[0].header or {}
            shape, dtype = list(h.get("shape") or ser.shape or []), str(h.get("dtype") or ser.dtype)
            affine = np.asarray(h.get("affine") or ser.affine, dtype=float)
            extra, coords = list(h.get("extra_axes") or []), h.get("coordinate_system") or "LPS"
            spatial = len(shape) - len(extra)
        orientation = orientation_code(affine)[: max(spatial, 3)] if coords == "LPS" else "???"
        return {"shape": shape, "dtype": dtype, "affine": affine.tolist(), "spatial_ndim": spatial,
                "extra_axes": extra, "coordinate_system": coords, "orientation": orientation}

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

    def objects(self, *, references: str | None = None) -> list[dict]:
        """Non-image DICOM objects (RT structure sets, plans, reports), optionally those referring to a series.

        Each dict: ``sop_uid``, ``kind`` (rtstruct, rtplan, sr, ...), ``modality``, ``series_uid``,
        ``references`` (``{"series": [...], "instances": [...]}``), ``path``, ``subject_id``,
        ``study_uid``, ``label``.
        """
        with self.session() as s:
            rows = s.execute(select(DicomObject, File.path, Study.study_uid, Subject.subject_id)
                             .join(File, File.id == DicomObject.file_pk)
                             .outerjoin(Study, Study.id == DicomObject.study_pk)
                             .outerjoin(Subject, Subject.id == Study.subject_pk)
                             .order_by(DicomObject.series_uid, DicomObject.sop_uid)).all()
        out = []
        for obj, path, study_uid, subject_id in rows:
            refs = obj.references or {"series": [], "instances": []}
            if references is not None and references not in refs.get("series", []):
                continue
            out.append({"sop_uid": obj.sop_uid, "kind": obj.kind, "modality": obj.modality,
                        "sop_class_uid": obj.sop_class_uid, "series_uid": obj.series_uid, "references": refs,
                        "path": path, "study_uid": study_uid, "subject_id": subject_id,
                        "label": (obj.meta or {}).get("label")})
        return out

    # ------------------------------------------------------------------ cohorts and dataset versions
    def cohort_create(self, name: str, where: str, *, replace: bool = False) -> dict:
        """Name a filter; the dict says how many series and subjects it selects, and what it left out."""
        return _cohorts.cohort_create(self, name, where, replace=replace)

    def cohorts(self) -> list[dict]:
        return _cohorts.cohorts(self)

    def cohort(self, name: str) -> dict:
        return _cohorts.cohort(self, name)

    def freeze(self, name: str, *, progress: Progress = no_progress) -> _datasets.DatasetRef:
        """Freeze a cohort into an immutable dataset version with one content hash.

        Every file is hashed again and compared with the catalog: a file changed since ingest is an
        error (re-ingest it first). The content hash covers series, file hashes, geometry, labels
        and metadata, not names, dates or paths: the same content always gives the same hash. If the
        latest version already has this hash it is returned unchanged.
        """
        return _datasets.freeze(self, name, progress=progress)

    def datasets(self) -> list[_datasets.DatasetRef]:
        """Every frozen version (cheap descriptors; ``.open()`` or :meth:`dataset` reads one)."""
        return _datasets.datasets(self)

    def dataset(self, ref: str) -> _datasets.Dataset:
        """Open a frozen version (``NAME@vN``, ``NAME`` for the latest, or a content-hash prefix).

        The manifest's hash is checked against the catalog on opening; file hashes when files are read.
        """
        return _datasets.find(self, ref).open()

    def verify(self, ref: str, progress: Progress = no_progress) -> list:
        """Re-hash the files of a dataset version; the :class:`~sobre.errors.Problem` s found (empty when intact)."""
        found = _datasets.find(self, ref)
        try:
            dataset = found.open()
        except CatalogError as exc:  # the manifest itself was changed or damaged
            return [Problem.from_error(exc, code="manifest")]
        return dataset.verify(progress=progress)

    def summary(self) -> dict:
        with self.session() as s:
            def count(m):
                return s.execute(select(func.count()).select_from(m)).scalar_one()

            by_mod: dict[str, int] = defaultdict(int)
            for (mod,) in s.execute(select(Series.modality).where(Series.status == "ok")).all():
                by_mod[mod or "?"] += 1
            return {"workspace": str(self.root), "database": self.db_url.split("://")[0],
                    "deidentify": self.settings.privacy.deidentify,
                    "subjects": count(Subject), "studies": count(Study), "series": count(Series),
                    "files": count(File), "objects": count(DicomObject), "sites": count(Site),
                    "variables": count(Variable), "cohorts": count(Cohort), "dataset_versions": count(DatasetVersion),
                    "series_by_modality": dict(sorted(by_mod.items())),
                    "series_with_problems": s.execute(select(func.count()).select_from(Series)
                                                      .where(Series.status != "ok")).scalar_one()}

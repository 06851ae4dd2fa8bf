"""Frozen dataset versions: the manifest type, freezing a cohort, and typed access to a version.

A dataset version (``NAME@vN``) is an immutable manifest file (``datasets/NAME/vN.json``, mode 0444)
listing every series with its files' SHA-256, geometry and metadata, and one content hash over all of
it (not over names, dates or paths: the same content always gives the same hash). Nothing but this
module reads manifests: everyone else opens a version with ``ws.dataset("name@v1")`` and gets a
:class:`Dataset` (subjects, series, Images, variables), its hash checked on opening and its files'
hashes checked when they are read.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from sobre.base import Progress, canonical_json, no_progress, sha256_bytes, sha256_file, write_atomic
from sobre.errors import CatalogError, InputError, Problem

from ._models import Cohort, DatasetVersion, File, Series

if TYPE_CHECKING:
    from sobre.image import Image

    from ._workspace import Workspace

__all__ = ["DatasetManifest", "ManifestSeries", "ManifestFile", "Dataset", "DatasetRef", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "sobre.dataset/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestFile(_Model):
    sha256: str
    size: int


class ManifestAnnotation(_Model):
    """An accepted annotation version frozen with its series (content hash in the dataset's hash)."""

    project: str
    name: str
    kind: str
    version: int
    sha256: str


class ManifestSeries(_Model):
    """One volume of a dataset version: its files (by content), geometry and catalogued metadata."""

    series_uid: str
    label: str = ""
    format: str
    shape: list[int] | None = None
    spacing: list[float] | None = None
    affine_lps: list[list[float]] | None = None
    orientation: str | None = None
    dtype: str | None = None
    files: list[ManifestFile]
    metadata: dict[str, Any]
    annotations: list[ManifestAnnotation] = []

    @property
    def key(self) -> str:
        """``series_uid`` or ``series_uid#label``."""
        return f"{self.series_uid}#{self.label}" if self.label else self.series_uid

    @property
    def subject_id(self) -> str | None:
        sid = self.metadata.get("subject_id")
        return None if sid is None else str(sid)


class ManifestContent(_Model):
    format: str
    series: list[ManifestSeries]
    variables: dict[str, dict[str, Any]]


class DatasetManifest(_Model):
    """The typed content of a manifest file (what :func:`DatasetManifest.read` returns, hash checked)."""

    name: str
    version: int
    ref: str
    content_hash: str
    created_at: str
    where: str
    n_series: int
    n_files: int
    n_subjects: int
    simulated: bool = False
    locations: dict[str, str]
    content: ManifestContent

    @classmethod
    def read(cls, path: str | os.PathLike, *, expected_hash: str | None = None) -> DatasetManifest:
        """Read and check a manifest: its content must hash to its ``content_hash`` (and to ``expected_hash``)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise CatalogError("manifest of a dataset version cannot be read", path=path, found=exc.strerror,
                               fix="restore it from a backup; versions cannot be re-created identically") from None
        except ValueError as exc:
            raise CatalogError("manifest of a dataset version is not valid JSON", path=path, found=str(exc),
                               fix="restore it from a backup") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("content"), dict):
            raise CatalogError("manifest of a dataset version has no content", path=path,
                               expected="a sobre.dataset/1 manifest", found=type(raw).__name__)
        digest = sha256_bytes(canonical_json(raw["content"]))
        for want, what in ((raw.get("content_hash"), "its own content_hash"), (expected_hash, "the catalog")):
            if want is not None and digest != want:
                raise CatalogError(f"manifest content does not match the hash recorded in {what}", path=path,
                                   expected=f"sha256 {want}", found=f"sha256 {digest}",
                                   fix="the manifest was modified; restore it from a backup")
        if raw["content"].get("format") != MANIFEST_FORMAT:
            raise CatalogError("unknown manifest format", path=path, expected=MANIFEST_FORMAT,
                               found=repr(raw["content"].get("format")))
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise CatalogError("manifest of a dataset version is malformed", path=path,
                               found=f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class DatasetRef:
    """A frozen version as the catalog lists it (cheap: no manifest read). ``open()`` gives the :class:`Dataset`."""

    def __init__(self, ws: Workspace, name: str, row: DatasetVersion) -> None:
        self._ws = ws
        self.name = name
        self.version = row.version
        self.content_hash = row.content_hash
        self.manifest_path = ws.root / row.manifest_path
        self.n_series = row.n_series
        self.n_files = row.n_files
        self.n_subjects = row.n_subjects
        self.created_at = row.created_at.isoformat()

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def open(self) -> Dataset:
        return Dataset(self)

    def to_dict(self) -> dict:
        return {"ref": self.ref, "name": self.name, "version": self.version, "content_hash": self.content_hash,
                "manifest": str(self.manifest_path), "n_series": self.n_series, "n_files": self.n_files,
                "n_subjects": self.n_subjects, "created_at": self.created_at}

    def __repr__(self) -> str:
        return f"DatasetRef({self.ref!r}, {self.content_hash[:12]})"

    def __eq__(self, other) -> bool:
        """The same version: same reference and content hash (a :class:`Dataset` of it compares equal)."""
        return isinstance(other, (DatasetRef, Dataset)) and (self.ref, self.content_hash) == \
            (other.ref, other.content_hash)

    def __hash__(self) -> int:
        return hash((self.ref, self.content_hash))

    def __getstate__(self) -> dict:
        """Sent to a worker of a cluster (preprocessing caches): everything but the workspace's connection."""
        return dict(self.__dict__, _ws=None)


class Dataset:
    """An opened, hash-checked dataset version: subjects, series, variables and their Images.

    >>> ds = ws.dataset("brains@v1")        # doctest: +SKIP
    >>> ds.n_series, ds.subjects[:2]        # doctest: +SKIP
    (120, ['sub-001', 'sub-002'])
    >>> img = ds.image(ds.series[0])        # doctest: +SKIP
    """

    def __init__(self, ref: DatasetRef) -> None:
        self._ref = ref
        self.manifest = DatasetManifest.read(ref.manifest_path, expected_hash=ref.content_hash)

    # -- identity
    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def content_hash(self) -> str:
        return self.manifest.content_hash

    @property
    def manifest_path(self) -> Path:
        return self._ref.manifest_path

    @property
    def simulated(self) -> bool:
        return self.manifest.simulated

    @property
    def n_series(self) -> int:
        return self.manifest.n_series

    @property
    def n_files(self) -> int:
        return self.manifest.n_files

    @property
    def n_subjects(self) -> int:
        return self.manifest.n_subjects

    # -- content
    @property
    def series(self) -> list[ManifestSeries]:
        return list(self.manifest.content.series)

    @property
    def subjects(self) -> list[str]:
        return sorted({s.subject_id for s in self.manifest.content.series if s.subject_id is not None})

    @property
    def variables(self) -> dict[str, dict]:
        """Clinical variables (name -> kind, unit) as they were when the version was frozen."""
        return {k: dict(v) for k, v in self.manifest.content.variables.items()}

    def records(self) -> list[dict]:
        """One dict per series: its frozen metadata, ``series_uid`` and ``series_label``."""
        out = []
        for s in self.manifest.content.series:
            meta = dict(s.metadata)
            meta["series_label"] = meta.pop("label", s.label)
            meta["series_uid"] = s.series_uid
            out.append(meta)
        return out

    def paths(self, series: ManifestSeries) -> list[str]:
        """Where the files of ``series`` were when the version was frozen."""
        out = []
        for f in series.files:
            p = self.manifest.locations.get(f.sha256)
            if p is None:
                raise CatalogError("a file of the dataset version has no recorded location", path=self.manifest_path,
                                   expected=f"a path for sha256 {f.sha256[:16]}…", found="none",
                                   fix=f"the manifest of {self.ref} is damaged; freeze the cohort again")
            out.append(p)
        return out

    def image(self, series: ManifestSeries | int | str, *, verify: bool = True) -> Image:
        """The Image of one series (an entry, its index, or its ``uid[#label]``).

        With ``verify`` (the default) every file is re-hashed first: a file changed since the
        freeze raises :class:`~sobre.errors.InputError` naming it.
        """
        from sobre.image import load_all

        entry = self.entry(series)
        paths = self.paths(entry)
        if verify:
            for f, p in zip(entry.files, paths):
                try:
                    digest = sha256_file(p)
                except OSError as exc:
                    raise InputError("a file of the dataset version cannot be read", path=p, found=exc.strerror,
                                     fix="restore the file, or re-ingest and freeze a new version") from None
                if digest != f.sha256:
                    raise InputError("a file changed since the dataset version was frozen", path=p,
                                     expected=f"sha256 {f.sha256}", found=f"sha256 {digest}",
                                     fix=f"restore the original file; {self.ref} must stay exactly as frozen")
        images = load_all(paths, on_warning=lambda m: None)
        if len(images) > 1 and entry.shape:
            match = [im for im in images if list(im.shape) == list(entry.shape)]
            if entry.affine_lps is not None:
                match = [im for im in match if np.allclose(im.affine, entry.affine_lps, atol=1e-3)] or match
            images = match[:1] or images
        if len(images) != 1:
            raise InputError(f"series {entry.series_uid} reads as {len(images)} volumes", path=paths[0],
                             expected="one volume", fix="re-ingest the files and freeze a new version")
        return images[0]

    def entry(self, series) -> ManifestSeries:
        """One series of the version: an entry, its index, or its ``uid`` / ``uid#label``.

        Raises :class:`~sobre.errors.CatalogError` naming the version when there is no such series.
        """
        if isinstance(series, ManifestSeries):
            return series
        entries = self.manifest.content.series
        if isinstance(series, int) and not isinstance(series, bool):
            if not -len(entries) <= series < len(entries):
                raise CatalogError(f"no series number {series} in {self.ref}",
                                   expected=f"an index from 0 to {len(entries) - 1}", found=str(series))
            return entries[series]
        uid, _, label = str(series).partition("#")
        for e in entries:
            if e.series_uid == uid and (e.label == label or not label and not e.label):
                return e
        raise CatalogError(f"no series '{series}' in {self.ref}", expected="a series of the version (entry, index "
                           "or uid[#label])", fix="list them with `sobre dataset show`")

    def annotation(self, series, name: str, *, project: str | None = None, verify: bool = True):
        """The frozen (accepted) annotation ``name`` of a series: an Image for a mask, the data otherwise."""
        import json

        entry = self.entry(series)
        found = [a for a in entry.annotations if a.name == name and (project is None or a.project == project)]
        if len(found) != 1:
            have = ", ".join(f"{a.project}/{a.name}" for a in entry.annotations) or "none"
            raise CatalogError(f"{'no' if not found else 'several'} frozen annotation '{name}' for series "
                               f"{entry.key} in {self.ref}", expected="exactly one", found=have,
                               fix="name the project, or freeze after the annotation was accepted")
        a = found[0]
        path = self.manifest.locations.get(a.sha256)
        if path is None:
            raise CatalogError("a frozen annotation has no recorded location", path=self.manifest_path)
        data = Path(path).read_bytes()
        if verify and sha256_bytes(data) != a.sha256:
            raise InputError("an annotation file changed since the dataset version was frozen", path=path,
                             expected=f"sha256 {a.sha256}", found=f"sha256 {sha256_bytes(data)}")
        if a.kind == "mask":
            import sobre

            return sobre.load(path)
        payload = json.loads(data)
        return payload["labels"] if a.kind == "labels" else payload["items"]

    def verify(self, progress: Progress = no_progress) -> list[Problem]:
        """Re-hash every file against the manifest; the problems found (empty when intact)."""
        problems = []
        items = sorted(self.manifest.locations.items(), key=lambda kv: kv[1])
        for i, (sha, path) in enumerate(items):
            try:
                got = sha256_file(path)
            except OSError as exc:
                problems.append(Problem("error", f"cannot read ({exc.strerror})", path=path, code="unreadable"))
            else:
                if got != sha:
                    problems.append(Problem("error", f"content changed (expected sha256 {sha}, found {got})",
                                            path=path, code="changed"))
            progress("hashing files", i + 1, len(items))
        return problems

    def to_dict(self) -> dict:
        return dict(self._ref.to_dict(), simulated=self.simulated)

    def __repr__(self) -> str:
        return f"Dataset({self.ref!r}, {self.n_series} series, {self.n_subjects} subjects, {self.content_hash[:12]})"

    def __eq__(self, other) -> bool:
        return isinstance(other, (DatasetRef, Dataset)) and (self.ref, self.content_hash) == \
            (other.ref, other.content_hash)

    def __hash__(self) -> int:
        return hash((self.ref, self.content_hash))


# ---------------------------------------------------------------------------------------------- freeze
def freeze(ws: Workspace, name: str, *, progress: Progress = no_progress) -> DatasetRef:
    """Freeze a cohort into an immutable dataset version with one content hash (see ``Workspace.freeze``)."""
    from sqlalchemy import select

    from ._cohorts import cohort

    c = cohort(ws, name)
    members = c["members"]
    if not members:
        raise CatalogError(f"cohort '{name}' is empty", found=c["where"],
                           fix="nothing to freeze; check the filter with `sobre cohort show`")
    variables = ws.variables()
    accepted = ws.annotations.accepted()
    series_entries = []
    locations: dict[str, str] = {}
    n_files = 0
    total = sum(m["n_files"] for m in members)
    done = 0
    with ws.session() as s:
        for m in members:
            ser = s.execute(select(Series).where(Series.series_uid == m["series_uid"],
                                                 Series.label == m["label"])).scalar_one()
            files = s.execute(select(File).where(File.series_pk == ser.id)).scalars().all()
            entries = []
            for f in files:
                try:
                    sha = sha256_file(f.path)
                except OSError as exc:
                    raise CatalogError("file of the cohort cannot be read", path=f.path,
                                       found=exc.strerror, fix="restore it, or re-ingest") from None
                if sha != f.sha256:
                    raise CatalogError("file changed since it was ingested", path=f.path,
                                       expected=f"sha256 {f.sha256}", found=f"sha256 {sha}",
                                       fix="re-run `sobre ingest` on it (or restore the original)")
                entries.append({"sha256": f.sha256, "size": f.size})
                locations[f.sha256] = f.path
                done += 1
                progress("hashing files", done, total)
            entries.sort(key=lambda e: e["sha256"])
            n_files += len(entries)
            meta = {k: v for k, v in m.items() if k not in ("status", "problem", "shape", "spacing",
                                                             "orientation", "n_files")}
            entry = {
                "series_uid": ser.series_uid, "label": ser.label, "format": ser.format,
                "shape": ser.shape, "spacing": ser.spacing, "affine_lps": ser.affine,
                "orientation": ser.orientation, "dtype": ser.dtype, "files": entries, "metadata": meta,
            }
            anns = accepted.get((ser.series_uid, ser.label), [])
            if anns:  # only when there are some: versions frozen before annotations keep their hashes
                entry["annotations"] = [{"project": a.project, "name": a.name, "kind": a.kind, "version": a.number,
                                         "sha256": a.sha256} for a in anns]
                for a in anns:
                    locations[a.sha256] = str(ws.root / a.path)
            series_entries.append(entry)
    series_entries.sort(key=lambda e: (e["series_uid"], e["label"]))
    content = {"format": MANIFEST_FORMAT, "series": series_entries, "variables": variables}
    content_hash = sha256_bytes(canonical_json(content))
    with ws.session() as s, s.begin():
        crow = s.execute(select(Cohort).where(Cohort.name == name)).scalar_one()
        last = s.execute(select(DatasetVersion).where(DatasetVersion.cohort_pk == crow.id)
                         .order_by(DatasetVersion.version.desc())).scalars().first()
        if last is not None and last.content_hash == content_hash:
            return DatasetRef(ws, name, last)
        version = (last.version + 1) if last else 1
        created = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        manifest = {
            "name": name, "version": version, "ref": f"{name}@v{version}", "content_hash": content_hash,
            "created_at": created.isoformat() + "Z", "where": crow.expression,
            "n_series": len(series_entries), "n_files": n_files,
            "n_subjects": len({e["metadata"]["subject_id"] for e in series_entries}),
            "simulated": any(e["metadata"].get("simulated") is True for e in series_entries),
            "locations": locations, "content": content,
        }
        mpath = ws.layout.manifest(name, version)
        if mpath.exists():  # left by a freeze killed between writing it and recording it
            try:
                prior = DatasetManifest.read(mpath, expected_hash=content_hash)
                same = True
                prior_raw = json.loads(mpath.read_text())
                prior_created = datetime.fromisoformat(prior.created_at.removesuffix("Z"))
            except (CatalogError, ValueError):
                same = False
            if same:  # the same version: record it as it was written
                manifest, created = prior_raw, prior_created
            else:  # another content: keep it aside, never overwrite it
                os.replace(mpath, mpath.with_name(f"{mpath.name}.orphaned"))
        if not mpath.exists():
            write_atomic(mpath, json.dumps(manifest, indent=1, sort_keys=True), mode=0o444, fsync=True)
        row = DatasetVersion(cohort_pk=crow.id, version=version, content_hash=content_hash,
                             manifest_path=str(mpath.relative_to(ws.root)), n_series=manifest["n_series"],
                             n_files=n_files, n_subjects=manifest["n_subjects"], created_at=created)
        s.add(row)
        s.flush()
        return DatasetRef(ws, name, row)


def datasets(ws: Workspace) -> list[DatasetRef]:
    from sqlalchemy import select

    with ws.session() as s:
        rows = s.execute(select(DatasetVersion, Cohort.name).join(Cohort, Cohort.id == DatasetVersion.cohort_pk)
                         .order_by(Cohort.name, DatasetVersion.version)).all()
        return [DatasetRef(ws, n, r) for r, n in rows]


def find(ws: Workspace, ref: str) -> DatasetRef:
    """A frozen version by ``NAME@vN``, ``NAME`` (latest) or a content-hash prefix (8+ characters)."""
    name, _, ver = ref.partition("@")
    known = datasets(ws)
    cands = [d for d in known if d.name == name]
    if ver:
        cands = [d for d in cands if f"v{d.version}" == ver or str(d.version) == ver]
    if not cands and len(ref) >= 8:
        cands = [d for d in known if d.content_hash.startswith(ref)]
    if not cands:
        raise CatalogError(f"no dataset version '{ref}'",
                           expected="NAME@vN, NAME or a hash prefix; frozen: "
                           + (", ".join(d.ref for d in known) or "(none yet)"))
    return cands[-1]

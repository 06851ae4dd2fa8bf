"""The one intake of a workspace: every path by which data enters it goes through here.

``Workspace.ingest`` (Python), ``sobre ingest``, ``sobre pull``, ``sobre listen`` — and later the
workstation server and the inference service — store data in a workspace only through
:class:`Intake`. The intake reads the workspace's ``[privacy]`` settings and applies them itself, so
that no caller can forget or bypass them:

- with ``[privacy] deidentify = true`` every DICOM instance is de-identified (PS3.15 Basic Profile
  with the workspace's options, keyed pseudonyms) and verified *before* anything about it is
  catalogued; the de-identified copy is written to ``incoming/deidentified/`` and only that copy is
  catalogued. Files already there are catalogued only if they carry Sobre's de-identification mark.
  Files that cannot be de-identified (NIfTI, NRRD, PNG... whose names and headers Sobre cannot vouch
  for) are refused with a problem, never stored. Clinical tables keyed by original patient ids are
  joined through the same keyed pseudonyms. Asking for ``deidentify=False`` is refused.
- otherwise files are catalogued where they are (or copied with ``copy=True``), and
  ``deidentify=True`` de-identifies this one intake.

The project key lives in ``secrets/project.key`` (created on first use) unless ``[privacy] key_file``
puts it elsewhere; the pseudonym map lives beside the key, its identities sealed with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sobre.base import Compute, ComputeSettings, Progress, no_progress, opened
from sobre.errors import ConfigError, InputError, Problem, SobreError
from sobre.image import discover
from sobre.privacy import Deidentifier, ProjectKey, PseudonymStore, load_key, load_or_create_key, map_path_for_key

from ._clinical import read_clinical
from ._ingest import Ingester, IngestReport

if TYPE_CHECKING:
    from ._workspace import Workspace

__all__ = ["Intake", "IntakeRoute"]


@dataclass
class IntakeRoute:
    """Where one receiving route (``pull``, ``listen``) stores instances, and how.

    Attributes
    ----------
    store : Path
        Folder to write received instances into (``incoming/deidentified`` when de-identifying).
    deidentifier : Deidentifier or None
        Apply to every instance before it is written (None: store as received).
    add : callable
        ``add(paths) -> IngestReport``: catalogue written instances (call in batches).
    """

    store: Path
    deidentifier: Deidentifier | None
    add: Callable[[list[str]], IngestReport]


class Intake:
    """The privacy-enforcing entry of one workspace (get it from :attr:`Workspace.intake`)."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self.layout = ws.layout
        self.settings = ws.settings.privacy
        self._ingester = Ingester(ws.engine, ws.layout)

    # ------------------------------------------------------------------ policy
    @property
    def required(self) -> bool:
        """``[privacy] deidentify = true``: nothing identifiable may be stored in this workspace."""
        return self.settings.deidentify

    def _deidentifying(self, deidentify: bool | None) -> bool:
        if deidentify is False and self.required:
            raise ConfigError("this workspace requires de-identification ([privacy] deidentify = true)",
                              path=self.layout.settings, expected="deidentify=None or True", found="False",
                              fix="drop --no-deidentify; data enters this workspace de-identified only")
        return self.required or bool(deidentify)

    @property
    def key_path(self) -> Path:
        if self.settings.key_file:
            p = Path(self.settings.key_file).expanduser()
            return p if p.is_absolute() else self.layout.root / p
        return self.layout.default_key

    @property
    def map_path(self) -> Path:
        return map_path_for_key(self.key_path)

    def key(self, *, create: bool = True) -> ProjectKey:
        """The project key (created on first use inside the workspace's ``secrets/`` folder)."""
        path = self.key_path
        if create and not path.exists() and not self.settings.key_file:
            self.layout.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
            return load_or_create_key(path)[0]
        return load_key(path)

    @contextmanager
    def deidentifier(self):
        """A :class:`~sobre.privacy.Deidentifier` with the workspace's key, profile and pseudonym map."""
        key = self.key()
        store = PseudonymStore(self.map_path, key)
        try:
            yield Deidentifier(key, self.settings.profile(), store)
        finally:
            store.close()

    # ------------------------------------------------------------------ files and folders
    def ingest(self, paths: str | os.PathLike | Iterable[str | os.PathLike], *, site: str | None = None,
               clinical: str | os.PathLike | None = None, copy: bool = False,
               progress: Progress = no_progress, workers: int | None = None,
               deidentify: bool | None = None, compute: Compute | str | None = None) -> IngestReport:
        """Catalogue every image (and non-image DICOM object) below ``paths``, applying the privacy policy.

        Idempotent and crash-safe (see :mod:`sobre.catalog._ingest`). Bad files are reported in
        ``report.problems`` and never stop the others.

        ``compute`` (a :class:`~sobre.base.Compute` or a scheduler address; default: the workspace's
        ``[compute]`` setting) says where headers are read, files hashed and instances
        de-identified. Workers only compute; this process alone writes the catalog, in transactions
        (docs/cluster.md). Reaching the cluster, checking its Sobre and that its workers see the
        files happen before anything is written.

        Raises
        ------
        InputError
            Before anything is written, when the clinical table cannot be read or holds an
            unparseable value (named by line and column).
        ConfigError
            ``deidentify=False`` in a workspace that requires de-identification; a cluster that
            cannot be reached or runs another Sobre.
        """
        deid = self._deidentifying(deidentify)
        if deid and copy:
            raise InputError("copy and de-identification together", expected="one of them",
                             found="copy=True (--copy) while de-identifying",
                             fix="de-identified instances are already written inside the workspace; drop copy")
        table = read_clinical(clinical) if clinical is not None else None  # bad tables: before any write
        report = IngestReport()
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        with self.compute(compute) as cluster:
            files: list[str] = []
            for p in paths:  # the workspace is not walked when a folder around it is ingested
                inside = self.layout.inside(p)
                found = discover(p, exclude=[] if inside else [self.layout.root])
                report.problems.extend(found.problems)
                files.extend(str(f) for f in found.files)
            if workers is None and cluster is None:
                workers = self._ws.settings.compute.workers
            if deid:
                self._ingest_deidentified(files, report, site=site, copy=copy, progress=progress, workers=workers,
                                          compute=cluster)
            else:
                self._ingester.ingest_files(files, report, site=site, copy=copy, progress=progress, workers=workers,
                                            compute=cluster)
        self._join_clinical(report, paths, clinical, table, deid)
        return report

    @contextmanager
    def compute(self, compute: Compute | str | None = None):
        """The cluster to use (a :class:`~sobre.base.DaskCompute`), or None to work locally as ever.

        ``compute``: a Compute, a scheduler address or ``"local"``; None reads ``[compute]`` of
        ``sobre.toml``. A cluster opened here is closed on leaving.
        """
        if isinstance(compute, Compute):
            yield compute if compute.distributed else None
            return
        settings = self._ws.settings.compute
        if compute is not None:
            settings = settings.model_copy(update={"scheduler": ComputeSettings(scheduler=compute).scheduler})
        if settings.scheduler == "local":
            yield None
            return
        with opened(settings) as cluster:
            yield cluster

    def _ingest_deidentified(self, files: list[str], report: IngestReport, *, site, copy, progress, workers,
                             compute=None) -> None:
        from sobre.image import looks_like_dicom

        store = self.layout.deidentified
        ready, raw = [], []
        for f in files:
            (ready if self.layout.inside(f) and Path(f).resolve().is_relative_to(store.resolve()) else raw).append(f)
        for f in [f for f in raw if not looks_like_dicom(f)]:
            raw.remove(f)
            report.problems.append(Problem(
                "error", "not catalogued: this workspace requires de-identification and only DICOM can be "
                "de-identified on the way in", path=f, code="not-deidentifiable",
                fix="de-identify it with a tool that knows its format and ingest it into another workspace"))
        if compute is not None and raw:  # workers read the originals and write into the store
            compute.check_shared(read=raw[::max(1, len(raw) // 15)] + raw[-1:], write=[store])
        if ready:
            self._ingester.ingest_files(ready, report, site=site, progress=progress, workers=workers,
                                        require_deidentified=True, compute=compute)
        if not raw:
            return
        with self.deidentifier() as deid:
            done = [0]

            def on_files(outputs: list[str]) -> None:
                part = IngestReport()
                self._ingester.ingest_files(outputs, part, site=site, workers=workers, require_deidentified=True,
                                            compute=compute)
                report.add(part)

            def step(i: int, n: int) -> None:
                done[0] = i
                progress("de-identifying", i, n)

            result = deid.deidentify_tree(raw, store, on_files=on_files, progress=step, compute=compute)
        report.deidentified += len(result.results)
        report.pixel_review.extend((r.output, r.pixel_review) for r in result.pixel_review)
        for prob in result.problems:
            report.problems.append(Problem(prob.level, f"not de-identified, not catalogued: {prob.message}",
                                           path=prob.path, tag=prob.tag, fix=prob.fix, code=prob.code or "deid-refused"))

    def _join_clinical(self, report: IngestReport, paths: list, clinical, table, deid: bool) -> None:
        tables: list[tuple[Path, object]] = []
        if table is not None:
            tables.append((Path(clinical), table))
        elif not deid:  # BIDS participants.tsv of the datasets this ingest looked at
            given = [os.path.abspath(os.fspath(p)) for p in paths]
            for root in sorted(r for r in self._ws._bids_roots()
                               if any(g == r or g.startswith(r + os.sep) or r.startswith(g + os.sep) for g in given)):
                tsv = Path(root) / "participants.tsv"
                if tsv.exists():
                    tables.append((tsv, None))
        errors = []
        for path, tab in tables:
            try:
                if tab is None:
                    tab = read_clinical(path)
                if deid:
                    with self.deidentifier() as d:
                        tab.map_subjects(d.pseudonym_of)
                added = self._ws._add_table(tab, path)
            except SobreError as exc:
                errors.append(str(exc))
                continue
            if report.clinical is None:
                report.clinical = added
            else:  # several BIDS datasets in one ingest: one summary over their tables
                names = {v["name"] for v in report.clinical["variables"]}
                report.clinical = {
                    "path": f"{report.clinical['path']}; {added['path']}",
                    "subjects": report.clinical["subjects"] + added["subjects"],
                    "variables": report.clinical["variables"] + [v for v in added["variables"]
                                                                 if v["name"] not in names]}
        if errors:
            report.clinical_error = "; ".join(errors)

    # ------------------------------------------------------------------ receiving routes
    @contextmanager
    def route(self, kind: str, *, deidentify: bool | None = None, site: str | None = None,
              workers: int | None = 1):
        """Open a receiving route (``"dicom"`` for C-STORE, ``"dicomweb"`` for pull).

        Yields an :class:`IntakeRoute`: write each received instance (through ``route.deidentifier``
        when there is one) into ``route.store``, then hand the written paths to ``route.add``.
        """
        deid = self._deidentifying(deidentify)
        if not deid:
            yield IntakeRoute(self.layout.incoming(kind), None,
                              lambda files: self._add(files, site=site, workers=workers, required=False))
            return
        with self.deidentifier() as d:
            yield IntakeRoute(self.layout.deidentified, d,
                              lambda files: self._add(files, site=site, workers=workers, required=True))

    def _add(self, files: list[str], *, site, workers, required: bool) -> IngestReport:
        report = IngestReport()
        inside = [str(f) for f in files if self.layout.inside(f)]
        for f in files:
            if str(f) not in inside:
                report.problems.append(Problem("error", "a receiving route catalogues files of its own store only",
                                               path=str(f), code="outside"))
        self._ingester.ingest_files(inside, report, site=site, workers=workers, require_deidentified=required)
        return report

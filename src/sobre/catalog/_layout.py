"""Where everything lives in a workspace: one object names every folder and file.

No other module builds a path inside a workspace by hand; they ask the :class:`WorkspaceLayout`.

::

    WS/
      sobre.toml                  settings (WorkspaceSettings: [workspace], [privacy], ...)
      catalog.sqlite              the catalog (default database; PostgreSQL for teams)
      files/                      content-addressed copies (ingest copy=True)
      datasets/NAME/vN.json       frozen dataset manifests (read-only)
      runs/RUN_ID/                training, pretraining and benchmark runs
      cache/learn/                preprocessed arrays of dataset versions (safe to delete)
      incoming/deidentified/      de-identified instances, the only DICOM a de-identifying workspace keeps
      incoming/dicom/             what the C-STORE listener received
      incoming/dicomweb/          what `sobre pull` fetched
      secrets/                    project key and pseudonym map (0700; see [privacy] key_file), site signing key
      models/NAME/VERSION/        registered model packages (signed manifests)
      annotations/ab/abcd….ext    annotation versions' contents (content-addressed, read-only)
      audit/audit.jsonl           the append-only, hash-chained audit log (and its signed head)
      service/                    the inference service's queue, outputs and dead letters
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["WorkspaceLayout", "SETTINGS_NAME"]

SETTINGS_NAME = "sobre.toml"


@dataclass(frozen=True)
class WorkspaceLayout:
    """The folders and files of the workspace at ``root``.

    >>> lay = WorkspaceLayout(Path("/data/ws"))
    >>> str(lay.manifest("brains", 2))
    '/data/ws/datasets/brains/v2.json'
    >>> str(lay.incoming("dicom"))
    '/data/ws/incoming/dicom'
    """

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_NAME

    @property
    def default_database(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def files(self) -> Path:
        return self.root / "files"

    def stored_copy(self, sha256: str, suffix: str = "") -> Path:
        """Content-addressed copy of a file: ``files/ab/abcdef....suffix``."""
        return self.files / sha256[:2] / f"{sha256}{suffix}"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def manifest(self, name: str, version: int) -> Path:
        return self.datasets / name / f"v{version}.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def cache_for(self, purpose: str) -> Path:
        """A cache folder for one purpose (``"learn"``, ...); everything in ``cache/`` may be deleted."""
        return self.cache / purpose

    @property
    def incoming_root(self) -> Path:
        return self.root / "incoming"

    def incoming(self, kind: str) -> Path:
        """Where one intake route stores what it receives (``"dicom"``, ``"dicomweb"``)."""
        if kind in ("", ".", "..") or "/" in kind or "\\" in kind:
            raise ValueError(f"not an intake route name: {kind!r}")
        return self.incoming_root / kind

    @property
    def deidentified(self) -> Path:
        """The store of de-identified instances (the only DICOM a de-identifying workspace keeps)."""
        return self.incoming_root / "deidentified"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def default_key(self) -> Path:
        return self.secrets / "project.key"

    @property
    def site_key(self) -> Path:
        """The site's Ed25519 signing key (model packages, audit checkpoints)."""
        return self.secrets / "site.ed25519.pem"

    @property
    def trusted_keys(self) -> Path:
        """Public keys of other sites whose model packages this workspace accepts."""
        return self.secrets / "trusted_keys"

    @property
    def annotations(self) -> Path:
        """Annotation contents, content-addressed and read-only (``annotations/ab/abcd….nii.gz``)."""
        return self.root / "annotations"

    def annotation_payload(self, sha256: str, suffix: str) -> Path:
        return self.annotations / sha256[:2] / f"{sha256}{suffix}"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_package(self, name: str, version: str) -> Path:
        return self.models / name / version

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit / "audit.jsonl"

    @property
    def service(self) -> Path:
        return self.root / "service"

    def created_folders(self) -> list[Path]:
        """Folders made by ``Workspace.init``."""
        return [self.files, self.datasets]

    def inside(self, path: str | Path) -> bool:
        """Whether ``path`` lies inside the workspace (after resolving links)."""
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

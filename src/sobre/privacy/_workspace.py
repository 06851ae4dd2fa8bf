"""Privacy settings of a workspace, and the one-call helpers that ingest and the PACS commands use.

A workspace keeps its key in ``<root>/secrets/project.key`` (folder 0700, file 0600), the pseudonym
map beside it, and its options in the ``[privacy]`` table of ``<root>/sobre.toml`` (see
:class:`~sobre.privacy.DeidProfile`). ``deidentify = true`` there makes ``sobre pull`` and
``sobre listen`` de-identify everything on the way in.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from sobre.errors import ConfigError

from ._engine import Deidentifier, DeidReport, DeidResult
from ._keys import ProjectKey, load_key, load_or_create_key
from ._profile import DeidProfile
from ._pseudonyms import PseudonymStore, map_path_for_key

__all__ = ["WorkspacePrivacy", "workspace_privacy", "deidentify_file", "DEID_SUBDIR"]

# Where de-identified copies of ingested files go inside a workspace.
DEID_SUBDIR = Path("incoming") / "deidentified"


@dataclass(frozen=True)
class WorkspacePrivacy:
    """The privacy settings of one workspace.

    Attributes
    ----------
    root : Path
        Workspace folder.
    required : bool
        ``[privacy] deidentify = true``: data must be de-identified before it is ingested.
    profile : DeidProfile
        Options from ``[privacy]``.
    key_path : Path
        ``root/secrets/project.key``.
    """

    root: Path
    required: bool
    profile: DeidProfile

    @property
    def key_path(self) -> Path:
        return self.root / "secrets" / "project.key"

    @property
    def map_path(self) -> Path:
        return map_path_for_key(self.key_path)

    def key(self, *, create: bool = True) -> ProjectKey:
        """The workspace key (created on first use when ``create``)."""
        if create:
            (self.root / "secrets").mkdir(mode=0o700, exist_ok=True)
            return load_or_create_key(self.key_path)[0]
        return load_key(self.key_path)

    def deidentifier(self) -> Deidentifier:
        """A :class:`Deidentifier` with the workspace key, profile and pseudonym map."""
        key = self.key()
        return Deidentifier(key, self.profile, PseudonymStore(self.map_path))

    def deidentify_into(self, paths, *, on_files=None, progress=None) -> DeidReport:
        """De-identify ``paths`` into ``root/incoming/deidentified`` and pass outputs to ``on_files``.

        This is what ``sobre ingest --deidentify`` needs: ``on_files`` is typically
        ``lambda files: ws.ingest(files, ...)``.
        """
        deid = self.deidentifier()
        try:
            return deid.deidentify_tree(paths, self.root / DEID_SUBDIR, on_files=on_files, progress=progress)
        finally:
            if deid.pseudonyms is not None:
                deid.pseudonyms.close()


def workspace_privacy(root: str | Path) -> WorkspacePrivacy:
    """Read the ``[privacy]`` table of ``root/sobre.toml`` (defaults when absent)."""
    root = Path(root)
    cfg_path = root / "sobre.toml"
    table: dict = {}
    if cfg_path.exists():
        try:
            with open(cfg_path, "rb") as fh:
                table = tomllib.load(fh).get("privacy", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("cannot parse workspace configuration", path=cfg_path, found=str(exc),
                              fix="fix the TOML syntax") from None
    if not isinstance(table, dict):
        raise ConfigError("[privacy] must be a table", path=cfg_path, found=type(table).__name__)
    required = table.get("deidentify", False)
    if not isinstance(required, bool):
        raise ConfigError("[privacy] deidentify must be true or false", path=cfg_path, found=repr(required))
    try:
        profile = DeidProfile.from_mapping(table, source=f"{cfg_path} [privacy]")
    except ConfigError as exc:
        if exc.path is None:
            exc.path = str(cfg_path)
        raise
    return WorkspacePrivacy(root, required, profile)


def deidentify_file(src, dst, profile: DeidProfile | None = None, *, key: ProjectKey | None = None,
                    key_file: str | Path | None = None, workspace: str | Path | None = None,
                    layout: bool | None = None) -> DeidResult:
    """De-identify one file with a key from ``key``, ``key_file`` or a ``workspace`` (in that order).

    Parameters
    ----------
    src, dst : path
        Source file; output file (``.dcm``) or folder (see :meth:`Deidentifier.deidentify_file`).
    profile : DeidProfile, optional
        Defaults to the workspace's profile, else :class:`DeidProfile` defaults.

    Examples
    --------
    ``deidentify_file("in.dcm", "out/", workspace=ws.root)`` writes
    ``out/SUBJ-XXXXXXXXXX/<study>/<series>/<sop>.dcm`` and returns a :class:`DeidResult`.
    """
    store = None
    if key is None and key_file is not None:
        key = load_key(key_file)
        store = PseudonymStore(map_path_for_key(key_file))
    if key is None and workspace is not None:
        wp = workspace_privacy(workspace)
        key = wp.key()
        profile = profile or wp.profile
        store = PseudonymStore(wp.map_path)
    if key is None:
        raise ConfigError("no project key given", fix="pass key=, key_file= or workspace=")
    try:
        return Deidentifier(key, profile, store).deidentify_file(src, dst, layout=layout)
    finally:
        if store is not None:
            store.close()

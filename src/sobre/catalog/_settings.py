"""The typed settings of a workspace: every table of ``sobre.toml`` is a section of one model.

``sobre.toml`` is read in one place (:meth:`WorkspaceSettings.read`) and checked like every other
configuration of Sobre: unknown tables or keys are refused with the nearest valid name, wrong types
name the key, the expected and the found value.

Example::

    [workspace]
    format = 1
    database = "sqlite:///catalog.sqlite"      # or postgresql+psycopg://user@host/db

    [privacy]
    deidentify = true                           # every intake de-identifies (see docs/privacy.md)
    retain_modified_dates = true

    [compute]
    scheduler = "tcp://10.0.0.5:8786"           # a Dask scheduler; "local" (default): this machine (docs/cluster.md)
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import ClassVar

from pydantic import Field

from sobre.base import ComputeSettings, Config, read_toml, validate_config, write_atomic
from sobre.errors import CatalogError, ConfigError
from sobre.privacy import PrivacySettings

from ._layout import WorkspaceLayout

__all__ = ["WorkspaceSettings", "WorkspaceSection", "WORKSPACE_FORMAT"]

WORKSPACE_FORMAT = 1


class WorkspaceSection(Config):
    """``[workspace]``: what kind of workspace this is and where its catalog lives."""

    format: int = Field(WORKSPACE_FORMAT, ge=1, le=WORKSPACE_FORMAT,
                        description="layout version of the workspace folder")
    database: str = Field(description="SQLAlchemy URL of the catalog; a relative sqlite path is relative to the "
                          "workspace. Required: a workspace that lost it must not open an empty catalog")
    created: str | None = Field(None, description="when the workspace was created (UTC, ISO 8601)")


class WorkspaceSettings(Config):
    """Every setting of a workspace (the whole ``sobre.toml``)."""

    docs: ClassVar[str] = "docs/ARCHITECTURE.md (workspace settings)"

    workspace: WorkspaceSection
    privacy: PrivacySettings = PrivacySettings()
    compute: ComputeSettings = ComputeSettings()

    @classmethod
    def read(cls, layout: WorkspaceLayout) -> WorkspaceSettings:
        """Read and check ``sobre.toml``; raise :class:`~sobre.errors.ConfigError` naming the key."""
        path = layout.settings
        if not path.exists():
            raise CatalogError("not a Sobre workspace", path=layout.root,
                               expected=f"a folder holding {path.name}",
                               fix="create one with `sobre init DIR` or pass -w DIR")
        data = read_toml(path)
        if "workspace" not in data:
            raise ConfigError("workspace settings have no [workspace] table", path=path,
                              expected="[workspace] with format and database", found=", ".join(data) or "nothing",
                              fix="restore the file; `sobre init` writes it")
        return validate_config(data, cls, path=path)

    def write(self, layout: WorkspaceLayout) -> None:
        """Write ``sobre.toml`` atomically (defaults left out, so that the file shows what was chosen)."""
        import tomli_w

        data = self.model_dump(mode="json", exclude_defaults=True)
        data["workspace"] = self.workspace.model_dump(mode="json", exclude_none=True)
        text = "# Sobre workspace settings (docs/ARCHITECTURE.md lists every key)\n" + tomli_w.dumps(data)
        write_atomic(layout.settings, text)

    @classmethod
    def new(cls, database: str | None = None, privacy: PrivacySettings | dict | None = None) -> WorkspaceSettings:
        section = WorkspaceSection(database=database or "sqlite:///catalog.sqlite",
                                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if isinstance(privacy, dict):
            privacy = validate_config(privacy, PrivacySettings, section="privacy")
        return cls(workspace=section, privacy=privacy or PrivacySettings())

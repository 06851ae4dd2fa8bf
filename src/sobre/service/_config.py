"""The typed configuration of the inference service: ``service.toml``.

The service's settings live in their own file, by default ``WS/service/service.toml`` beside the
queue (``sobre service init -w WS`` writes a commented one); ``sobre service --config FILE`` reads
another. Like every configuration of Sobre it is a :class:`~sobre.base.Config`: unknown keys are
refused with the nearest valid name, wrong types name the key.

Example::

    [receive]
    aet = "SOBRE"
    host = "127.0.0.1"
    port = 11112
    stow_port = 8042                 # STOW-RS endpoint (0: off)
    quiet_seconds = 10               # a study is complete after this long without a new instance

    [review]
    hold = false                     # true: nothing is sent before a radiologist accepts it
    project = "sobre-service"        # annotation project of AI proposals and corrections

    [[apps]]
    name = "ct-lesions"
    model = "ct-lesions@1.0"         # a registered package, a run folder or a run id
    destinations = ["pacs"]          # default: every destination

    [[destinations]]
    name = "pacs"
    kind = "dicom"                   # C-STORE; or "dicomweb" (STOW-RS, `url`)
    host = "127.0.0.1"
    port = 4242
    aet = "ORTHANC"
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from sobre.base import Config, read_toml, validate_config
from sobre.errors import ConfigError

__all__ = ["ServiceConfig", "ReceiveSettings", "ReviewSettings", "WorkerSettings", "DeliverySettings",
           "AppSettings", "Destination", "load_service_config", "CONFIG_NAME", "OUTPUT_KINDS"]

CONFIG_NAME = "service.toml"
OUTPUT_KINDS = ("seg", "sr", "sc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _ae_title(v: str) -> str:
    if not v or len(v) > 16 or not v.isascii() or "\\" in v or v != v.strip():
        raise ValueError(f"not a DICOM AE title: {v!r} (1 to 16 ASCII characters, no backslash, no spaces around)")
    return v


class ReceiveSettings(Config):
    """``[receive]``: how studies arrive (C-STORE and STOW-RS) and when a study counts as complete."""

    aet: str = Field("SOBRE", description="our AE title (C-STORE SCP)")
    host: str = Field("127.0.0.1", description="address to listen on (C-STORE and STOW-RS); loopback by default")
    port: int = Field(11112, ge=0, le=65535, description="C-STORE port (0: a free port)")
    stow_port: int | None = Field(None, ge=0, le=65535,
                                  description="STOW-RS port (POST /dicom-web/studies); none: no STOW-RS endpoint")
    allowed_calling_aets: list[str] | None = Field(None, description="only these peers may send (default: any)")
    quiet_seconds: float = Field(10.0, gt=0, le=86400,
                                 description="a study is complete when no instance arrived for this long")
    max_stow_mb: int = Field(2048, ge=1, description="largest STOW-RS request accepted, in MiB")

    @field_validator("aet")
    @classmethod
    def _aet(cls, v: str) -> str:
        return _ae_title(v)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _callers(cls, v):
        return [_ae_title(x) for x in v] if v is not None else v


class ReviewSettings(Config):
    """``[review]``: the human in the loop."""

    hold: bool = Field(False, description="hold every result until a radiologist accepts (or corrects) it: "
                       "nothing is sent before")
    project: str = Field("sobre-service", description="annotation project of AI proposals and corrections "
                         "(created on first use with the apps' segments)")
    send_corrections: bool = Field(True, description="send the SEG/SR/SC made from a corrected mask")

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"not a project name: {v!r} (letters, digits, '.', '_', '-')")
        return v


class WorkerSettings(Config):
    """``[workers]``: the pool that runs the apps."""

    count: int = Field(1, ge=1, le=64, description="jobs run at the same time")
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads of each model (default: CPU cores "
                                "divided by count)")
    attempts: int = Field(2, ge=1, le=20, description="tries of a job before it is marked failed (a crash "
                          "of the service counts as a try)")


class DeliverySettings(Config):
    """``[delivery]``: retries and back-off towards the destinations."""

    attempts: int = Field(6, ge=1, le=100, description="tries per instance and destination before the dead letter")
    backoff_seconds: float = Field(5.0, gt=0, description="wait after the first failure; doubled after each")
    max_backoff_seconds: float = Field(600.0, gt=0, description="longest wait between two tries")
    timeout_seconds: float = Field(30.0, gt=0, description="network timeout of one try")


class Destination(Config):
    """``[[destinations]]``: where results go."""

    name: str = Field(description="a short name (used by apps.destinations, status and dead letters)")
    kind: Literal["dicom", "dicomweb"] = Field(description="dicom: C-STORE; dicomweb: STOW-RS")
    host: str | None = Field(None, description="dicom: the PACS host")
    port: int | None = Field(None, ge=1, le=65535, description="dicom: the PACS port")
    aet: str | None = Field(None, description="dicom: the PACS AE title (called)")
    calling_aet: str | None = Field(None, description="dicom: our AE title when calling (default: receive.aet)")
    url: str | None = Field(None, description="dicomweb: base URL, e.g. http://pacs:8042/dicom-web")
    send: list[Literal["seg", "sr", "sc"]] = Field(default_factory=lambda: list(OUTPUT_KINDS),
                                                   description="which results this destination receives")

    @model_validator(mode="after")
    def _fields(self):
        if not _NAME.match(self.name):
            raise ValueError(f"destination name {self.name!r}: letters, digits, '.', '_', '-' (at most 64)")
        if self.kind == "dicom":
            missing = [k for k in ("host", "port", "aet") if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(f"destination {self.name!r} (dicom) needs {', '.join(missing)}")
            _ae_title(self.aet)
            if self.calling_aet is not None:
                _ae_title(self.calling_aet)
        else:
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(f"destination {self.name!r} (dicomweb) needs url = \"http(s)://host:port/dicom-web\"")
        if not self.send:
            raise ValueError(f"destination {self.name!r}: send lists nothing (seg, sr, sc)")
        return self


class AppSettings(Config):
    """``[[apps]]``: an application the service routes series to."""

    name: str = Field(description="an installed app (`sobre app list`)")
    model: str | None = Field(None, description="its model: a registered NAME@VERSION, a run folder or a run id "
                              "(default: the app's own)")
    config: dict = Field(default_factory=dict, description="overrides of the app's settings (AppConfig)")
    destinations: list[str] | None = Field(None, description="where its results go (default: every destination)")
    project: str | None = Field(None, description="annotation project (default: review.project)")


class ServiceConfig(Config):
    """Every setting of the inference service (the whole ``service.toml``)."""

    docs: ClassVar[str] = "docs/service.md"

    receive: ReceiveSettings = ReceiveSettings()
    review: ReviewSettings = ReviewSettings()
    workers: WorkerSettings = WorkerSettings()
    delivery: DeliverySettings = DeliverySettings()
    apps: list[AppSettings] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self):
        names = [d.name for d in self.destinations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"destination names must be unique: {', '.join(dup)} given twice")
        apps = [a.name for a in self.apps]
        dup = sorted({n for n in apps if apps.count(n) > 1})
        if dup:
            raise ValueError(f"each app is listed once: {', '.join(dup)} given twice")
        for a in self.apps:
            unknown = [d for d in (a.destinations or []) if d not in names]
            if unknown:
                raise ValueError(f"app {a.name!r}: unknown destination(s) {', '.join(unknown)}; "
                                 f"defined: {', '.join(names) or '(none)'}")
        return self

    def destinations_of(self, app: str) -> list[Destination]:
        """The destinations of an app's results."""
        entry = next((a for a in self.apps if a.name == app), None)
        if entry is None or entry.destinations is None:
            return list(self.destinations)
        return [d for d in self.destinations if d.name in entry.destinations]

    def destination(self, name: str) -> Destination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise ConfigError(f"no destination {name!r} in the service configuration",
                          expected="one of: " + (", ".join(d.name for d in self.destinations) or "(none)"))


def load_service_config(path: str | Path | None = None, *, default: Path | None = None) -> tuple[ServiceConfig, Path | None]:
    """``(config, file)``: ``path`` if given (it must exist), else ``default`` if it exists, else defaults."""
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError("service configuration not found", path=p,
                              fix="write one with `sobre service init -w WS` or pass --config FILE")
        return validate_config(read_toml(p), ServiceConfig, path=p), p
    if default is not None and default.exists():
        return validate_config(read_toml(default), ServiceConfig, path=default), default
    return ServiceConfig(), None


TEMPLATE = '''# Sobre inference service (docs/service.md lists every setting)

[receive]
aet = "SOBRE"
host = "127.0.0.1"          # listen on loopback only; the hospital network address to receive from PACS
port = 11112                # C-STORE
# stow_port = 8042          # STOW-RS endpoint: POST http://host:stow_port/dicom-web/studies
quiet_seconds = 10          # a study is complete after this long without a new instance

[review]
hold = false                # true: results wait for a radiologist (sobre review accept) before being sent
project = "sobre-service"   # annotation project of AI proposals and corrected masks
send_corrections = true

[workers]
count = 1                   # jobs at the same time (each uses cores / count threads)
attempts = 2

[delivery]
attempts = 6                # then the dead letter (WS/service/dead-letter/); `sobre service retry` re-sends
backoff_seconds = 5
max_backoff_seconds = 600

[[apps]]
name = "ct-lesions"
# model = "ct-lesions@1.0"  # a registered model package (sobre model register), a run folder or run id

# [[destinations]]
# name = "pacs"
# kind = "dicom"            # C-STORE
# host = "127.0.0.1"
# port = 4242
# aet = "ORTHANC"
# send = ["seg", "sr", "sc"]

# [[destinations]]
# name = "web"
# kind = "dicomweb"         # STOW-RS
# url = "http://127.0.0.1:8042/dicom-web"
'''

"""The server's settings: one typed section, filled from ``sobre serve`` options (or Python)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from sobre.base import Config

__all__ = ["STATIC_DIR", "ServerSettings"]

#: Where the web front end's build goes (``web/``: ``npm run build``); git-ignored.
STATIC_DIR = Path(__file__).parent / "static"


class ServerSettings(Config):
    """Settings of the workstation server (``sobre serve``). See ``docs/workstation.md``."""

    docs = "docs/workstation.md"

    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535)
    tls_cert: Path | None = Field(None, description="PEM certificate: serve HTTPS (cookies get Secure)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    behind_proxy: bool = Field(False, description="a TLS reverse proxy on this machine forwards to us: trust its "
                               "X-Forwarded-For/-Proto from 127.0.0.1, cookies get Secure")
    allowed_hosts: list[str] = Field([], description="Host header values accepted besides loopback names and the "
                                     "bound address (the proxy's public name)")
    idle_timeout_s: int = Field(1800, ge=10, description="a session unused this long expires")
    max_session_s: int = Field(12 * 3600, ge=60, description="a session expires this long after login, used or not")
    login_window_s: int = Field(900, ge=1, description="failed logins are counted over this window")
    login_max_per_user: int = Field(5, ge=1, description="failures for one user name in the window before 429")
    login_max_per_client: int = Field(20, ge=1, description="failures from one client address in the window before 429")
    max_json_bytes: int = Field(1 << 20, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(1 << 30, ge=1024, description="largest imported file (SEG, RTSTRUCT, NIfTI) or "
                                  "mask upload (a raw mask may not exceed the series' voxel count in any case)")
    cache_bytes: int = Field(1 << 30, ge=0, description="decoded volumes kept in memory (LRU)")
    decode_workers: int = Field(1, ge=1, le=64, description="processes that read headers and decode pixels "
                                "(first come first served; the server's own threads never decode)")
    threads: int = Field(100, ge=8, le=1000, description="threads that run requests (most of them wait: for a "
                         "decode, the audit log's fsync, the catalog)")
    catalog_ttl_s: float = Field(5.0, ge=0, description="how long a catalog snapshot (records, cohorts, scopes) "
                                 "is reused; the server's own changes refresh it at once")
    static_dir: Path | None = Field(None, description="front-end build to serve (default: the package's static/)")
    pacs_url: str | None = Field(None, description="DICOMweb base URL that `push` sends to (STOW-RS); none: push off")
    thumbnail_size: int = Field(160, ge=16, le=512)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def secure_cookies(self) -> bool:
        return self.tls or self.behind_proxy

    @property
    def static_root(self) -> Path:
        return Path(self.static_dir) if self.static_dir is not None else STATIC_DIR

"""Running the app: uvicorn, TLS, and the rule that a non-loopback address needs TLS or a proxy."""

from __future__ import annotations

import ipaddress
import logging

from sobre.errors import ConfigError

from ._settings import ServerSettings

__all__ = ["check_bind", "openapi_schema", "serve"]

log = logging.getLogger("sobre.server")


def _loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServerSettings) -> None:
    """Raise :class:`~sobre.errors.ConfigError` for an address other machines can reach, without TLS or a proxy."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("TLS needs both a certificate and its key", expected="--tls-cert and --tls-key",
                          found="only one")
    for p in (settings.tls_cert, settings.tls_key):
        if p is not None and not p.is_file():
            raise ConfigError("TLS file not found", path=p, fix="give the PEM files of the certificate and its key")
    if not _loopback(settings.host) and not settings.tls and not settings.behind_proxy:
        raise ConfigError(f"refusing to serve patient data in clear on {settings.host}",
                          expected="a loopback address (127.0.0.1), or --tls-cert/--tls-key, or --behind-proxy "
                          "(a TLS reverse proxy on this machine)", found=settings.host,
                          fix="see docs/workstation.md, 'Serving on a network'")


def serve(ws, settings: ServerSettings) -> None:  # pragma: no cover - exercised by the subprocess tests
    import uvicorn

    from ._app import create_app

    check_bind(settings)
    app = create_app(ws, settings)
    kwargs = {}
    if settings.tls:
        kwargs.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
    uvicorn.run(app, host=settings.host, port=settings.port, workers=1, proxy_headers=settings.behind_proxy,
                forwarded_allow_ips="127.0.0.1" if settings.behind_proxy else None, server_header=False,
                date_header=True, log_level="info", access_log=False, timeout_keep_alive=65, **kwargs)


def openapi_schema(ws=None) -> dict:
    """The OpenAPI document of the API (what ``/api/openapi.json`` serves)."""
    from ._app import create_app

    class _NoWorkspace:
        root = "."

    return create_app(ws or _NoWorkspace(), ServerSettings()).openapi()

"""``sobre serve``: the workstation (web API + the front end's files) on this machine."""

from __future__ import annotations

import sys

from sobre.cli._common import add_workspace_arg, open_workspace


def register(sub) -> None:
    p = sub.add_parser("serve", help="the workstation: browse, view, annotate, review (web app + API)",
                       description="Serve the workstation over the workspace. Binding to an address other than "
                       "loopback needs --tls-cert/--tls-key or --behind-proxy. See docs/workstation.md.")
    add_workspace_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--behind-proxy", action="store_true",
                   help="a TLS reverse proxy on this machine forwards to us (trust its X-Forwarded-* from 127.0.0.1)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host header to accept besides loopback names (the proxy's public name); repeatable")
    p.add_argument("--pacs", default=None, metavar="URL", help="DICOMweb base URL that `push` sends to (STOW-RS)")
    p.add_argument("--idle-timeout", type=int, default=1800, metavar="S", help="idle session expiry (default 1800 s)")
    p.add_argument("--cache-mb", type=int, default=1024, help="decoded volumes kept in memory (default 1024 MB)")
    p.add_argument("--decode-workers", type=_workers, default=1, metavar="N",
                   help="processes that read and decode series' pixels (1 to 64, default 1)")
    p.add_argument("--static", default=None, metavar="DIR", help="front-end build to serve (default: the package's)")
    p.add_argument("--openapi", default=None, metavar="FILE",
                   help="write the OpenAPI document of the API to FILE ('-': stdout) and exit")
    p.set_defaults(func=_serve)


def _workers(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 64, found {text!r}")
    return n


def _serve(ns) -> int:
    import json

    from sobre.server import ServerSettings, check_bind, openapi_schema, serve

    if ns.openapi:
        doc = json.dumps(openapi_schema(), indent=2)
        if ns.openapi == "-":
            print(doc)
        else:
            from pathlib import Path

            Path(ns.openapi).write_text(doc + "\n")
        return 0
    settings = ServerSettings(host=ns.host, port=ns.port, tls_cert=ns.tls_cert, tls_key=ns.tls_key,
                              behind_proxy=ns.behind_proxy, allowed_hosts=ns.allowed_host, pacs_url=ns.pacs,
                              idle_timeout_s=ns.idle_timeout, cache_bytes=max(0, ns.cache_mb) << 20,
                              decode_workers=ns.decode_workers, static_dir=ns.static)
    check_bind(settings)
    with open_workspace(ns) as ws:
        scheme = "https" if settings.tls else "http"
        print(f"Sobre workstation on {scheme}://{settings.host}:{settings.port}/ (workspace {ws.root}); "
              "Ctrl-C stops it", file=sys.stderr)
        serve(ws, settings)
    return 0

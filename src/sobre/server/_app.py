"""The FastAPI application: routes, error handlers, security headers, host check, the front end's files."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from ._context import Context, authenticated
from ._errors import ApiError, error_body, install_handlers
from ._settings import ServerSettings

__all__ = ["PUBLIC_ROUTES", "create_app"]

log = logging.getLogger("sobre.server")

#: The only API routes answered without a session.
PUBLIC_ROUTES = {("GET", "/api/health"), ("POST", "/api/auth/login")}

CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
       "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; font-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

ASSET_SUFFIXES = {".js", ".mjs", ".css", ".map", ".png", ".jpg", ".svg", ".ico", ".wasm", ".json", ".woff", ".woff2",
                  ".ttf", ".html", ".txt", ".webmanifest", ".gz"}

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sobre workstation</title></head>
<body style="font-family: sans-serif; max-width: 42em; margin: 3em auto">
<h1>Sobre workstation: the front end is not built</h1>
<p>The API is running (<code>/api/health</code>), but this server has no front-end files in
<code>src/sobre/server/static/</code>.</p>
<p>Build them once (Node.js 20 or later, packages from the npm registry):</p>
<pre>cd web
npm ci
npm run build        # writes ../src/sobre/server/static/</pre>
<p>then reload this page. See <code>docs/workstation.md</code>.</p>
</body></html>
"""


def create_app(ws, settings: ServerSettings | None = None) -> FastAPI:
    """The workstation app over workspace ``ws`` (a :class:`sobre.catalog.Workspace`)."""
    from . import _routes_annotations, _routes_auth, _routes_browse, _routes_service, _routes_voxels

    settings = settings or ServerSettings()
    app = FastAPI(title="Sobre workstation API", version=_version(), docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=_lifespan(settings),
                  description="See docs/workstation.md. Every route but login and health needs "
                  "a session; state-changing requests need the X-CSRF-Token header.")
    app.state.ctx = Context(ws, settings)
    install_handlers(app)
    for mod in (_routes_auth, _routes_browse, _routes_voxels, _routes_annotations, _routes_service):
        if hasattr(mod, "public"):
            app.include_router(mod.public)
        app.include_router(mod.router)

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(authenticated)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False,
                   dependencies=[Depends(authenticated)])
    def unknown_api(rest: str, request: Request):
        raise ApiError(404, "no such route", found=f"{request.method} /api/{rest[:200]}",
                       fix="see /api/openapi.json or docs/workstation.md")

    @app.get("/{path:path}", include_in_schema=False)
    def front_end(path: str):
        return _static(settings.static_root, path)

    _install_middleware(app, settings)
    return app


def _lifespan(settings: ServerSettings):
    """At start: as many request threads as ``settings.threads``, the decoding process started; at stop: stopped."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio.to_thread

        from . import _decode

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        _decode.start(settings.decode_workers)
        try:
            yield
        finally:
            _decode.shutdown()

    return lifespan


def _version() -> str:
    from sobre import __version__

    return __version__


def _static(root: Path, path: str) -> Response:
    """A file of the front end's build, else its index.html (client-side routes); never outside ``root``."""
    index = root / "index.html"
    if not index.is_file():
        return HTMLResponse(NOT_BUILT, status_code=200 if path in ("", "index.html") else 404)
    base = root.resolve()
    if path:
        cand = (root / path).resolve()
        try:
            cand.relative_to(base)
        except ValueError:
            return JSONResponse(error_body(404, "no such file", found=path[:200]), status_code=404)
        if cand.is_file():
            cache = "public, max-age=31536000, immutable" if "/assets/" in f"/{path}" else "no-cache"
            return FileResponse(cand, headers={"Cache-Control": cache})
        if path.startswith("assets/") or Path(path).suffix.lower() in ASSET_SUFFIXES:  # a missing file
            return JSONResponse(error_body(404, "no such file", found=path[:200]), status_code=404)
    return FileResponse(index, headers={"Cache-Control": "no-cache"})


def _allowed_hosts(settings: ServerSettings) -> set[str] | None:
    if "*" in settings.allowed_hosts:
        return None
    hosts = {"localhost", "127.0.0.1", "::1", "[::1]", "testserver", settings.host}
    hosts |= {h.lower() for h in settings.allowed_hosts}
    return {h.lower() for h in hosts}


def _install_middleware(app: FastAPI, settings: ServerSettings) -> None:
    hosts = _allowed_hosts(settings)
    hsts = settings.secure_cookies

    @app.middleware("http")
    async def security(request: Request, call_next):
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if hosts is not None and name not in hosts:
            return JSONResponse(error_body(400, "unexpected Host header", expected=", ".join(sorted(hosts)),
                                           found=host[:100], fix="add the name with --allowed-host"), status_code=400)
        response = await call_next(request)
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Cross-Origin-Embedder-Policy", "require-corp")
        h.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if hsts:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        if request.url.path.startswith("/api/"):
            h.setdefault("Cache-Control", "no-store")
        return response

"""The workstation server: a web API (FastAPI) over the catalog, and the front end's files.

Browse projects, cohorts, frozen dataset versions, subjects and series; stream voxels; read and save
annotation versions; import and export them (SEG, SR, RTSTRUCT, NIfTI, CSV). Sessions with CSRF
tokens, login rate limits, roles checked through :mod:`sobre.catalog` (``require``), every view of
patient data and every change written to the workspace's audit log. No policy lives here: it is a
thin layer over ``sobre.catalog`` and ``sobre.annotate``. See ``docs/workstation.md``.

``create_app(ws, settings)``
    The ASGI application.
``ServerSettings``
    Every setting (``sobre serve`` options).
``serve(ws, settings)``
    Run it with uvicorn (TLS when configured).
``check_bind(settings)``
    Refuse a non-loopback address without TLS or ``behind_proxy``.
"""

from __future__ import annotations

from ._app import PUBLIC_ROUTES, create_app
from ._serve import check_bind, openapi_schema, serve
from ._settings import STATIC_DIR, ServerSettings

__all__ = ["PUBLIC_ROUTES", "STATIC_DIR", "ServerSettings", "check_bind", "create_app", "openapi_schema", "serve"]

"""Every error the API returns is one JSON shape: ``{error, status, what, expected, found, fix}``.

Library errors (:class:`~sobre.errors.SobreError`) keep their message parts; the HTTP status says
whose problem it is (400 bad input, 401 no session, 403 not allowed, 404 unknown, 409 conflict with
the current state, 413 too large, 422 data that cannot be decoded, 429 slow down). Internal errors
say so without a traceback; the server goes on serving.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sobre.errors import (
    AccessError,
    CatalogError,
    ConfigError,
    ExpressionError,
    GeometryError,
    InputError,
    SobreError,
)

__all__ = ["ApiError", "error_body", "install_handlers"]

log = logging.getLogger("sobre.server")


class ApiError(Exception):
    """An HTTP error with the API's JSON body."""

    def __init__(self, status: int, what: str, *, expected: str | None = None, found: str | None = None,
                 fix: str | None = None, error: str | None = None, headers: dict | None = None,
                 extra: dict | None = None) -> None:
        self.status = status
        self.what = what
        self.expected = expected
        self.found = found
        self.fix = fix
        self.error = error or _NAMES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(what)

    @classmethod
    def of(cls, exc: SobreError, status: int, **kw) -> ApiError:
        return cls(status, exc.what, expected=exc.expected, found=exc.found, fix=exc.fix, error=type(exc).__name__,
                   **kw)

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.status, self.what, expected=self.expected, found=self.found,
                                       fix=self.fix, error=self.error, **self.extra),
                            status_code=self.status, headers=self.headers)


_NAMES = {400: "BadRequest", 401: "Unauthenticated", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
          409: "Conflict", 413: "TooLarge", 415: "UnsupportedMediaType", 422: "Undecodable", 429: "TooManyRequests",
          500: "InternalError", 503: "Unavailable"}


def error_body(status: int, what: str, *, expected=None, found=None, fix=None, error=None, **extra) -> dict:
    return {"error": error or _NAMES.get(status, "Error"), "status": status, "what": what, "expected": expected,
            "found": found, "fix": fix, **extra}


def status_of(exc: SobreError) -> int:
    """The HTTP status for a library error that no route mapped more precisely."""
    if isinstance(exc, AccessError):
        return 403
    if isinstance(exc, (ExpressionError, ConfigError, InputError, GeometryError)):
        return 400
    if isinstance(exc, CatalogError):
        return 404 if exc.what.startswith("no ") else 409
    return 400


def install_handlers(app) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(SobreError)
    async def _sobre(request: Request, exc: SobreError):
        return ApiError.of(exc, status_of(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "request"
        found = first.get("input")
        found = repr(found)[:200] if found is not None else "nothing"
        return ApiError(400, f"invalid {where}: {first.get('msg', 'invalid value')}", expected=_expected(first),
                        found=found, error="InvalidRequest").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        what = exc.detail if isinstance(exc.detail, str) else _NAMES.get(exc.status_code, "error")
        if exc.status_code == 404:
            what, found = "no such route", f"{request.method} {request.url.path}"
            return ApiError(404, what, found=found, fix="see /api/openapi.json or docs/workstation.md").response()
        if exc.status_code == 405:
            return ApiError(405, "method not allowed on this route", found=request.method,
                            headers=dict(exc.headers or {})).response()
        return ApiError(exc.status_code, str(what), headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal error", found=type(exc).__name__,
                        fix="this is a bug in Sobre; the server log has the details").response()


def _expected(err: dict) -> str | None:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return str(ctx["expected"])
    kind = err.get("type", "")
    return {"missing": "a value", "int_parsing": "a whole number", "bool_parsing": "true or false",
            "string_type": "text", "json_invalid": "valid JSON", "model_attributes_type": "a JSON object",
            "dict_type": "a JSON object", "list_type": "a JSON array"}.get(kind, kind or None)

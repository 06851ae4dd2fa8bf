"""The server's shared state and the dependencies every protected route uses (session, CSRF, roles)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from sobre.catalog import require
from sobre.errors import CatalogError, SobreError

from ._auth import COOKIE, CSRF_HEADER, LoginLimiter, Session, SessionStore, csrf_ok
from ._errors import ApiError
from ._settings import ServerSettings
from ._view import CatalogView, VolumeCache

__all__ = ["SAFE_METHODS", "Caller", "Context", "authenticated", "context"]

log = logging.getLogger("sobre.server")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Context:
    """Everything the routes share: the workspace, settings, sessions, limits, caches, the audit log."""

    def __init__(self, ws, settings: ServerSettings) -> None:
        self.ws = ws
        self.settings = settings
        self.sessions = SessionStore(settings.idle_timeout_s, settings.max_session_s)
        self.limiter = LoginLimiter(settings.login_window_s, settings.login_max_per_user,
                                    settings.login_max_per_client)
        self.view = CatalogView(ws, settings.catalog_ttl_s)
        self.volumes = VolumeCache(settings.cache_bytes)
        self._audit_writer = AuditWriter(ws)
        self._save_locks: dict[tuple, threading.Lock] = {}
        self._save_locks_lock = threading.Lock()

    def audit(self, actor: str, action: str, **data) -> None:
        """Append to the workspace's audit log before anything is shown or after anything is changed.

        Returns once the entry is on disk (fsynced). Concurrent requests share one write and one
        ``fsync`` (group commit, :meth:`AuditLog.append_many`). A failure to log is a failure of the
        request (503): patient data is never served unlogged.
        """
        self._audit_writer.append(actor, action, {k: v for k, v in data.items() if v is not None})

    def save_lock(self, key: tuple) -> threading.Lock:
        with self._save_locks_lock:
            return self._save_locks.setdefault(key, threading.Lock())


class AuditWriter:
    """Group commit of audit entries: callers wait for their entry, one writer thread writes batches."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self._cond = threading.Condition()
        self._queue: list[tuple[tuple, dict]] = []
        self._writing = False

    def append(self, actor: str, action: str, data: dict) -> None:
        slot: dict = {}
        with self._cond:
            self._queue.append(((actor, action, data), slot))
            while "done" not in slot:
                if not self._writing:  # become the writer for everything queued so far
                    self._writing = True
                    batch, self._queue = self._queue, []
                    self._cond.release()
                    try:
                        error = None
                        try:
                            self.ws.audit.append_many([rec for rec, _ in batch])
                        except SobreError as exc:
                            error = exc
                        except OSError as exc:
                            error = SobreError("the audit log cannot be written", found=str(exc))
                    finally:
                        self._cond.acquire()
                        self._writing = False
                    for _, s in batch:
                        s["done"] = True
                        s["error"] = error
                    self._cond.notify_all()
                else:
                    self._cond.wait()
        if slot.get("error") is not None:
            exc = slot["error"]
            log.error("audit log refused an entry: %s", exc)
            raise ApiError(503, "the audit log cannot be written, so nothing is served", found=exc.what,
                           fix="check the workspace's audit/ folder (disk space, permissions), then retry")


@dataclass
class Caller:
    account: object  # sobre.catalog.Account
    session: Session
    client: str

    @property
    def username(self) -> str:
        return self.account.username

    def require(self, action: str, project: str | None = None) -> str | None:
        return require(self.account, action, project)


def context(request: Request) -> Context:
    return request.app.state.ctx


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


_WHY = {"missing": ("no session", "log in first: POST /api/auth/login"),
        "unknown": ("the session is not known (logged out, or the server restarted)", "log in again"),
        "expired": ("the session expired", "log in again")}


def authenticated(request: Request) -> Caller:
    """The dependency of every protected route: a live session, a CSRF token on changes, an enabled account."""
    ctx = context(request)
    token = request.cookies.get(COOKIE)
    sess, why = ctx.sessions.get(token)
    if sess is None:
        what, fix = _WHY[why]
        raise ApiError(401, what, expected="a valid session cookie", found=why, fix=fix)
    if request.method not in SAFE_METHODS and not csrf_ok(sess, request.headers.get(CSRF_HEADER)):
        raise ApiError(403, "CSRF token missing or wrong", expected=f"the session's token in the {CSRF_HEADER} header",
                       found="missing" if not request.headers.get(CSRF_HEADER) else "another value",
                       fix="read csrf_token from POST /api/auth/login or GET /api/auth/session", error="CsrfError")
    try:
        account = ctx.ws.accounts.user(sess.username)
    except CatalogError:
        ctx.sessions.end(token)
        raise ApiError(401, "the account of this session no longer exists", fix="log in again") from None
    if account.disabled:
        ctx.sessions.end_user(account.username)
        raise ApiError(401, "this account is disabled", found=account.username,
                       fix="ask an administrator to enable it")
    caller = Caller(account, sess, client_of(request))
    request.state.caller = caller
    return caller


#: The annotation of a route's ``caller`` parameter.
CallerDep = Annotated[Caller, Depends(authenticated)]

"""Sessions, CSRF tokens and login rate limits (in the server's memory).

A login creates a session: a random 256-bit token in an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` under TLS or behind a TLS proxy) and a random CSRF token that the front end sends back in
the ``X-CSRF-Token`` header of every state-changing request. Only SHA-256 digests of session tokens
are kept. A session expires when unused for ``idle_timeout_s`` or ``max_session_s`` after login, on
logout, and when its account is disabled. Sessions live in the process: a restart logs everyone out.

Failed logins are counted per user name and per client address over ``login_window_s``; past the
limits the login answers 429 with ``Retry-After`` without checking the password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["COOKIE", "CSRF_HEADER", "LoginLimiter", "Session", "SessionStore"]

COOKIE = "sobre_session"
CSRF_HEADER = "X-CSRF-Token"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Session:
    username: str
    csrf: str
    client: str
    created: float
    last_seen: float
    id: str = field(default="")  # digest prefix, for logs


class SessionStore:
    def __init__(self, idle_timeout_s: int, max_session_s: int, clock=time.monotonic) -> None:
        self.idle = idle_timeout_s
        self.max = max_session_s
        self.clock = clock
        self._lock = threading.Lock()
        self._by_digest: dict[str, Session] = {}

    def create(self, username: str, client: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        digest = _digest(token)
        sess = Session(username=username, csrf=secrets.token_urlsafe(32), client=client, created=now, last_seen=now,
                       id=digest[:12])
        with self._lock:
            self._purge(now)
            self._by_digest[digest] = sess
        return token, sess

    def get(self, token: str | None) -> tuple[Session | None, str | None]:
        """``(session, None)``, or ``(None, why)`` with why = ``"missing"``, ``"unknown"`` or ``"expired"``."""
        if not token:
            return None, "missing"
        digest = _digest(token)
        now = self.clock()
        with self._lock:
            sess = self._by_digest.get(digest)
            if sess is None:
                return None, "unknown"
            if now - sess.last_seen > self.idle or now - sess.created > self.max:
                del self._by_digest[digest]
                return None, "expired"
            sess.last_seen = now
            return sess, None

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._by_digest.pop(_digest(token), None)

    def end_user(self, username: str) -> int:
        """End every session of ``username`` (account disabled or password changed)."""
        with self._lock:
            gone = [d for d, s in self._by_digest.items() if s.username == username]
            for d in gone:
                del self._by_digest[d]
        return len(gone)

    def _purge(self, now: float) -> None:
        for d in [d for d, s in self._by_digest.items()
                  if now - s.last_seen > self.idle or now - s.created > self.max]:
            del self._by_digest[d]

    def __len__(self) -> int:
        return len(self._by_digest)


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), sent.encode())


class LoginLimiter:
    """Sliding-window counts of failed logins per user name and per client address."""

    def __init__(self, window_s: int, max_per_user: int, max_per_client: int, clock=time.monotonic) -> None:
        self.window = window_s
        self.max_user = max_per_user
        self.max_client = max_per_client
        self.clock = clock
        self._lock = threading.Lock()
        self._user: dict[str, deque] = {}
        self._client: dict[str, deque] = {}

    def _recent(self, table: dict, key: str, now: float) -> deque:
        q = table.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, username: str, client: str) -> tuple[str, int] | None:
        """``(which, retry_after_s)`` when this login must be refused unheard, else None."""
        now = self.clock()
        with self._lock:
            for which, table, key, limit in (("user", self._user, username.lower(), self.max_user),
                                             ("client", self._client, client, self.max_client)):
                q = self._recent(table, key, now)
                if len(q) >= limit:
                    return which, max(1, int(self.window - (now - q[0])) + 1)
        return None

    def failed(self, username: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            self._recent(self._user, username.lower(), now).append(now)
            self._recent(self._client, client, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._user.pop(username.lower(), None)

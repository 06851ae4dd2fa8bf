"""The service's persistent queue: one SQLite file in ``WS/service/queue.sqlite``, outside the catalog.

Every change of state is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), so a crash (``kill -9``,
power cut) leaves the queue as it was before or after a change, never in between. What the audit
log must record about a change is written in the *same* transaction into the ``outbox`` table and
moved into the workspace's audit log afterwards (:func:`flush_audit`): a state change and its audit
entry are never half-written (the transactional-outbox pattern). Each entry carries the outbox
``event`` id, so an entry appended just before a crash is recognised and not appended twice.

Tables
------
``studies``      one row per study: ``receiving`` until ``quiet_seconds`` pass without a new instance,
                 then ``complete`` (routed); a new instance re-opens it.
``instances``    every received instance: UIDs, path in the intake's store, SHA-256, how it came.
``routes``       the verdict of every app on every series volume (accepted, or the rules it breaks).
``jobs``         one per (app, model, exact input instances): ``queued`` → ``running`` → ``proposed``
                 (or ``failed``); review ``pending`` → ``accepted`` | ``corrected`` | ``rejected``.
``deliveries``   one per (job, destination, output instance): ``pending`` → ``sent`` | ``dead``.
``outbox``       audit entries not yet in the audit log.
``meta``         format version and this queue's UID seed.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from sobre.errors import InputError

__all__ = ["Queue", "QUEUE_FORMAT", "JOB_STATES", "REVIEW_STATES", "DELIVERY_STATES", "flush_audit"]

log = logging.getLogger("sobre.service")

QUEUE_FORMAT = 1
JOB_STATES = ("queued", "running", "proposed", "failed")
REVIEW_STATES = ("pending", "accepted", "corrected", "rejected")
DELIVERY_STATES = ("pending", "sent", "dead")
STALE_OUTBOX_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    via TEXT NOT NULL,
    peer TEXT,
    patient_id TEXT,
    accession TEXT,
    modality TEXT,
    audited INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid, series_uid);
CREATE TABLE IF NOT EXISTS routes (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    volume TEXT NOT NULL,
    app TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    refusals TEXT NOT NULL,
    decided_at REAL NOT NULL,
    UNIQUE (series_uid, volume, app, input_digest)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    volume TEXT NOT NULL,
    app TEXT NOT NULL,
    app_version TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    inputs TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'proposed', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    error TEXT,
    result TEXT,
    review TEXT CHECK (review IS NULL OR review IN ('pending', 'accepted', 'corrected', 'rejected')),
    reviewer TEXT,
    reviewed_at REAL,
    review_comment TEXT,
    correction TEXT,
    annotation_version INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    destination TEXT NOT NULL,
    what TEXT NOT NULL,
    kind TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    sent_at REAL,
    status TEXT,
    last_error TEXT,
    UNIQUE (job_id, destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    event TEXT NOT NULL UNIQUE,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class Queue:
    """The queue file of one workspace's service (thread-safe; several processes may open it).

    Parameters
    ----------
    path : path
        ``WS/service/queue.sqlite`` (created with its folder on first use, mode 0600).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._local = threading.local()
        self._audit_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)  # idempotent (IF NOT EXISTS)
        with self.tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('format', ?)", (str(QUEUE_FORMAT),))
                c.execute("INSERT INTO meta VALUES ('uid_seed', ?)", (uuid.uuid4().hex,))
            elif int(row[0]) > QUEUE_FORMAT:
                raise InputError("the service queue was written by a newer Sobre", path=self.path,
                                 expected=f"format {QUEUE_FORMAT} or older", found=f"format {row[0]}",
                                 fix="run the newer Sobre, or move the queue aside")
        self.uid_seed = self.meta("uid_seed")

    def __repr__(self) -> str:
        return f"Queue({str(self.path)!r})"

    # ---------------------------------------------------------------------------- connections
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed change survives a power cut
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self):
        """One write transaction (``BEGIN IMMEDIATE``): everything inside commits together or not at all."""
        conn = self._conn()
        if conn.in_transaction:  # nested: part of the caller's transaction
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        """A connection for reading (each statement sees a consistent snapshot)."""
        return self._conn()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def meta(self, key: str) -> str | None:
        row = self.read().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ---------------------------------------------------------------------------- audit outbox
    @staticmethod
    def event(conn: sqlite3.Connection, actor: str, action: str, /, **data) -> str:
        """Record an audit entry in the caller's transaction; :func:`flush_audit` moves it to the log."""
        event = uuid.uuid4().hex
        conn.execute("INSERT INTO outbox (event, actor, action, data, created_at) VALUES (?, ?, ?, ?, ?)",
                     (event, actor, action, _dumps(data), time.time()))
        return event

    # ---------------------------------------------------------------------------- helpers
    @staticmethod
    def loads(text: str | None, default=None):
        return json.loads(text) if text else default

    dumps = staticmethod(_dumps)


def flush_audit(queue: Queue, audit, *, check_all: bool = False) -> int:
    """Move the outbox into the audit log (``ws.audit``), in order; returns the number of entries appended.

    Runs inside one queue transaction: the entries are appended to the log (one ``fsync``), then the
    outbox rows are deleted and the transaction commits. A crash in between leaves rows whose
    entries are already in the log: rows older than a minute (every row with ``check_all``, which
    the service uses when it starts) are first looked for in the log (by their ``event`` id) and only
    appended if they are not there.
    """
    with queue._audit_lock, queue.tx() as c:
        rows = c.execute("SELECT id, event, actor, action, data, created_at FROM outbox ORDER BY id").fetchall()
        if not rows:
            return 0
        stale = [r for r in rows if check_all or r["created_at"] < time.time() - STALE_OUTBOX_SECONDS]
        present: set[str] = set()
        if stale:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(r["created_at"] for r in stale) - 5))
            wanted = {r["event"] for r in stale}
            for entry in audit.entries(since=since):
                ev = entry.data.get("event") if isinstance(entry.data, dict) else None
                if ev in wanted:
                    present.add(ev)
            if present:
                log.warning("%d audit entr(ies) were already in the log (a crash after writing them); "
                            "not appended again", len(present))
        records = [(r["actor"], r["action"], dict(json.loads(r["data"]), event=r["event"]))
                   for r in rows if r["event"] not in present]
        if records:
            audit.append_many(records)
        c.execute("DELETE FROM outbox WHERE id <= ?", (rows[-1]["id"],))
        return len(records)

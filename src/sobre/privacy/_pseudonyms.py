"""The pseudonym map: which original subject got which pseudonym (re-identification, authorised only).

Pseudonyms are recomputed from the project key, so the map is not needed for consistency; it exists
so that an authorised person can go back from a pseudonym to the patient (e.g. to add follow-up
data or report an incidental finding). It lives beside the key (``<key>.pseudonyms.sqlite``, mode
0600) and leaves it only through :func:`export_map` (``sobre pseudonyms export``).

The identifying columns are stored *sealed* (AES-256-GCM with a key derived from the project key):
the file holds no readable name or identifier, and is useless without the key. Keep the key outside
the workspace (``[privacy] key_file``) and the workspace holds no identifying byte at all.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from sobre.errors import ConfigError

from ._keys import ProjectKey

__all__ = ["PseudonymStore", "map_path_for_key", "export_map"]

_PURPOSE = "pseudonym-map"


def map_path_for_key(key_path: str | Path) -> Path:
    """Where the map of the key at ``key_path`` lives: ``<stem>.pseudonyms.sqlite`` beside it."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.stem + ".pseudonyms.sqlite")


class PseudonymStore:
    """Thread-safe record of ``identity -> pseudonym`` (SQLite, owner-only file, identities sealed).

    Parameters
    ----------
    path : Path
        The SQLite file; created with mode 0600 if absent.
    key : ProjectKey
        The project key: it seals and opens the identifying values.
    """

    def __init__(self, path: str | Path, key: ProjectKey) -> None:
        self.path = Path(path)
        self.key = key
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(subjects)")]
        if "identity" in cols:  # a map written before identities were sealed: seal them now
            self._seal_legacy()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS subjects (pseudonym TEXT PRIMARY KEY, identity_hmac TEXT UNIQUE NOT NULL,"
            " sealed BLOB NOT NULL, date_shift_days INTEGER, first_seen TEXT)")
        self._db.commit()

    def _hmac(self, identity: str) -> str:
        return self.key.digest("pseudonym-map-identity", identity).hex()

    def _seal(self, identity: str, patient_id: str, patient_name: str, issuer: str) -> bytes:
        data = json.dumps({"identity": identity, "patient_id": patient_id, "patient_name": patient_name,
                           "issuer": issuer}, ensure_ascii=False).encode()
        return self.key.seal(_PURPOSE, data)

    def _seal_legacy(self) -> None:
        rows = self._db.execute("SELECT pseudonym, identity, patient_id, patient_name, issuer, date_shift_days,"
                                " first_seen FROM subjects").fetchall()
        self._db.execute("ALTER TABLE subjects RENAME TO subjects_legacy")
        self._db.execute(
            "CREATE TABLE subjects (pseudonym TEXT PRIMARY KEY, identity_hmac TEXT UNIQUE NOT NULL,"
            " sealed BLOB NOT NULL, date_shift_days INTEGER, first_seen TEXT)")
        self._db.executemany("INSERT INTO subjects VALUES (?, ?, ?, ?, ?)", [
            (ps, self._hmac(ident), self._seal(ident, pid or "", name or "", issuer or ""), shift, seen)
            for ps, ident, pid, name, issuer, shift, seen in rows])
        self._db.execute("DROP TABLE subjects_legacy")
        self._db.commit()
        self._db.execute("VACUUM")  # no plaintext left in free pages
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def record(self, pseudonym: str, identity: str, *, patient_id: str = "", patient_name: str = "",
               issuer: str = "", date_shift_days: int | None = None) -> None:
        """Record one subject (idempotent); raises if two identities collide on one pseudonym."""
        if identity in self._seen:
            return
        digest = self._hmac(identity)
        with self._lock:
            row = self._db.execute("SELECT identity_hmac FROM subjects WHERE pseudonym = ?", (pseudonym,)).fetchone()
            if row is not None and row[0] != digest:
                raise ConfigError(
                    "two subjects received the same pseudonym (hash collision)",
                    path=self.path, fix="raise the pseudonym length or report this to the Sobre developers",
                )
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO subjects VALUES (?, ?, ?, ?, ?)",
                    (pseudonym, digest, self._seal(identity, patient_id, patient_name, issuer), date_shift_days,
                     time.strftime("%Y-%m-%dT%H:%M:%S")),
                )
                self._db.commit()
            self._seen.add(identity)

    def rows(self) -> list[dict]:
        """All recorded subjects, ordered by pseudonym, identities opened with the key."""
        with self._lock:
            cur = self._db.execute(
                "SELECT pseudonym, sealed, date_shift_days, first_seen FROM subjects ORDER BY pseudonym")
            out = []
            for pseudonym, sealed, shift, seen in cur.fetchall():
                values = json.loads(self.key.unseal(_PURPOSE, sealed))
                out.append({"pseudonym": pseudonym, "patient_id": values["patient_id"],
                            "patient_name": values["patient_name"], "issuer": values["issuer"],
                            "date_shift_days": shift, "first_seen": seen})
            return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PseudonymStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def export_map(store_path: str | Path, out: str | Path, key: ProjectKey, *, overwrite: bool = False) -> int:
    """Write the pseudonym map as CSV (mode 0600); returns the number of subjects.

    This is the only way the map leaves the secrets folder: the CLI command that calls it is
    ``sobre pseudonyms export``, and it warns that the file re-identifies patients.
    """
    store_path, out = Path(store_path), Path(out)
    if not store_path.exists():
        raise ConfigError("no pseudonym map here", path=store_path,
                          fix="de-identify some data with this key first, or check --key-file / --workspace")
    if out.exists() and not overwrite:
        raise ConfigError("refusing to overwrite an existing file", path=out, fix="choose a new path")
    with PseudonymStore(store_path, key) as store:
        rows = store.rows()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["pseudonym", "patient_id", "patient_name", "issuer",
                                                "date_shift_days", "first_seen"])
        writer.writeheader()
        writer.writerows(rows)
    os.chmod(out, 0o600)
    return len(rows)

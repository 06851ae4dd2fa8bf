"""One append-only, hash-chained audit log for all of Sobre.

Every view of patient data, every annotation change and every AI decision (input UIDs and hashes →
model package hash → output UIDs and hashes → reviewer decision) is one entry of one log. The log is
tamper-evident: each entry holds the hash of the one before it, so a modified, deleted, inserted or
reordered entry breaks the chain at that entry, and a signed head file beside the log records the
last entry, so deleting entries at the end is seen too. See ``docs/audit.md`` for the format, what is
and is not detected, and measured speeds.

Files (for a log ``audit.jsonl``):

``audit.jsonl``
    One entry per line, canonical JSON (:func:`sobre.base.canonical_json`) ending in ``\\n``::

        {"action":…,"actor":…,"data":{…},"hash":…,"prev":…,"seq":…,"time":…}

    ``seq`` counts from 0; ``time`` is UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; ``prev`` is the
    ``hash`` of entry ``seq - 1`` (64 zeros for entry 0); ``hash`` is the SHA-256 (hex) of the
    canonical JSON of the entry without ``hash``.
``audit.jsonl.head``
    The last ``seq`` and ``hash``, signed with the site key when the log has a signer; rewritten
    (atomically) under the lock after every append.
``audit.jsonl.torn``
    Partial last lines left by a crash, moved out of the log (JSON lines with the bytes in base64).

Writers append under an exclusive ``fcntl.flock`` of the log file, re-reading the chain's last hash
under the lock, with one ``write`` and one ``fsync`` per call, so the worker processes of a server
can share one log. The log must sit on a local file system (flock over NFS is not reliable).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sobre.base._files import canonical_json, write_atomic
from sobre.base._signing import _verify_with, load_public_key, public_key_id
from sobre.errors import ConfigError, InputError

__all__ = ["AuditLog", "AuditEntry", "AuditVerification", "BadEntry", "verify_audit", "audit_entries",
           "find_audit"]

log = logging.getLogger("sobre.audit")

GENESIS = "0" * 64
"""The ``prev`` of entry 0."""
HEAD_FORMAT = "sobre.audit.head/1"
CHECKPOINT_FORMAT = "sobre.audit.checkpoint/1"
SYSTEM_ACTOR = "sobre.audit"
CHECKPOINT = "checkpoint"
TORN_TAIL = "torn-tail"
HEAD_RECOVERED = "head-recovered"
RESERVED_ACTIONS = frozenset({CHECKPOINT, TORN_TAIL, HEAD_RECOVERED})

_FIELDS = frozenset({"seq", "time", "actor", "action", "data", "prev", "hash"})
_HEAD_FIELDS = frozenset({"format", "seq", "hash", "time", "key_id", "signature"})
_CHECKPOINT_FIELDS = frozenset({"head_hash", "head_seq", "key_id", "signature"})
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_TAIL_BLOCK = 1 << 16
_DECODE = json.JSONDecoder().raw_decode
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ENCODE = _ENCODER.encode
"""The encoder of :func:`sobre.base.canonical_json`, built once."""
if json.encoder.c_make_encoder is not None:
    # What _ENCODE runs inside, built once, without the check for circular references (values that
    # come from the JSON decoder cannot be circular): 1.2 µs less for each entry verified.
    _encode_decoded = json.encoder.c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring, None,
                                                  ":", ",", True, False, False)

    def _ENCODE_DECODED(obj) -> str:
        return "".join(_encode_decoded(obj, 0))
else:  # pragma: no cover  (Python without its C accelerator)
    _ENCODE_DECODED = _ENCODE


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(h: object) -> str:
    return f"{h[:12]}…" if isinstance(h, str) and len(h) > 12 else repr(h)


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit log, as written (``data`` as it reads back from JSON).

    Examples
    --------
    >>> e = AuditEntry.build(seq=0, time="2025-01-02T03:04:05.000006Z", actor="alice", action="view",
    ...                      data={"series": "1.2.3"}, prev=AuditLog.GENESIS)
    >>> e.line()[:60]
    b'{"action":"view","actor":"alice","data":{"series":"1.2.3"},"'
    >>> e.hash == AuditEntry.from_line(e.line()).hash
    True
    """

    seq: int
    time: str
    actor: str
    action: str
    data: dict
    prev: str
    hash: str

    __hash__ = None  # type: ignore[assignment]  # holds a dict

    @classmethod
    def build(cls, *, seq: int, time: str, actor: str, action: str, data: Mapping, prev: str) -> AuditEntry:
        """The entry with these fields and its ``hash`` (SHA-256 of the canonical JSON without ``hash``).

        Raises ValueError or TypeError when ``data`` is not JSON (NaN, sets, objects, mixed keys).
        """
        return cls._build(seq, time, actor, action, data, prev)[0]

    @classmethod
    def _build(cls, seq: int, time: str, actor: str, action: str, data: Mapping, prev: str) -> tuple[AuditEntry, bytes]:
        """:meth:`build` and the entry's line, made from the one encoding of its content."""
        body = _ENCODE({"seq": seq, "time": time, "actor": actor, "action": action, "data": data,
                        "prev": prev}).encode()
        digest = _sha256(body)
        entry = cls(seq=seq, time=time, actor=actor, action=action, data=_DECODE(body.decode())[0]["data"],
                    prev=prev, hash=digest)
        if not (_TIME.match(time) and _HEX64.match(prev)):  # not as the log writes them: encode again
            return entry, entry.line()
        cut = len(body) - 119 - len(str(seq))  # "hash" goes before ',"prev":"…","seq":…,"time":"…"}'
        return entry, b"".join((body[:cut], b',"hash":"', digest.encode(), b'"', body[cut:], b"\n"))

    @classmethod
    def from_line(cls, line: bytes) -> AuditEntry:
        """The entry a log line holds (parsed, not verified: see :func:`verify_audit`)."""
        obj = json.loads(line)
        return cls(**{k: obj[k] for k in _FIELDS})

    def to_dict(self) -> dict:
        return {"seq": self.seq, "time": self.time, "actor": self.actor, "action": self.action,
                "data": self.data, "prev": self.prev, "hash": self.hash}

    def line(self) -> bytes:
        """The log line: canonical JSON and a newline."""
        return _ENCODE(self.to_dict()).encode() + b"\n"


class BadEntry(NamedTuple):
    """Where a log first goes wrong: the entry ``seq`` that should be at ``line`` (1-based; ``seq + 1``)."""

    seq: int
    line: int


@dataclass(frozen=True)
class AuditVerification:
    """What :func:`verify_audit` found (data, not exceptions).

    Attributes
    ----------
    path : str
        The log file.
    ok : bool
        The whole chain holds, the head file matches its last entry, and (when a public key was given)
        every checkpoint and the head are signed by that key.
    n_entries : int
        Entries read and found sound, from the start (all of them when ``ok``).
    first_bad : BadEntry or None
        The first entry that is wrong or missing (None when ``ok``, or when only the head file is
        wrong). For an entry that is missing (deleted, or cut off the end) it is the position where it
        should be.
    code : str or None
        Kind of problem: ``malformed``, ``modified``, ``not-canonical``, ``missing-entries``,
        ``out-of-order``, ``broken-chain``, ``bad-checkpoint``, ``torn-tail``, ``truncated``,
        ``head-mismatch``, ``head-behind``, ``head-missing``, ``head-malformed``, ``unsigned``,
        ``wrong-key``, ``bad-signature``.
    problem : str or None
        What was expected and what was found.
    checkpoints_verified : int
        Checkpoint entries that match the chain (and, with a public key, whose signature verifies).
    signatures_checked : bool
        A public key was given, so signatures were checked.
    last_checkpoint_seq : int or None
        The last checkpoint entry found sound: with ``signatures_checked``, every entry before it is
        vouched for by the site key's signature, even when the head file is lost or the log damaged
        after it.
    head_seq : int or None
        The last ``seq`` the head file records (None when it is missing or unreadable).
    head_time : str or None
        When the head file was written (signed with it): a head much older than the last activity
        you expect is worth a look (see "what is not detected" in docs/audit.md).
    last_hash : str
        Hash of the last sound entry (the chain head; 64 zeros when there is none).
    notes : tuple of str
        Things worth knowing that are not problems: torn lines moved aside, head recoveries.
    """

    path: str
    ok: bool
    n_entries: int
    first_bad: BadEntry | None = None
    code: str | None = None
    problem: str | None = None
    checkpoints_verified: int = 0
    signatures_checked: bool = False
    last_checkpoint_seq: int | None = None
    head_seq: int | None = None
    head_time: str | None = None
    last_hash: str = GENESIS
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        signed = ", signatures checked" if self.signatures_checked else ", signatures not checked"
        if self.ok:
            return (f"{self.path}: ok, {self.n_entries} entries, {self.checkpoints_verified} checkpoints"
                    f"{signed}")
        where = f" at entry {self.first_bad.seq} (line {self.first_bad.line})" if self.first_bad else ""
        return f"{self.path}: NOT OK{where}: [{self.code}] {self.problem}"

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "n_entries": self.n_entries,
                "first_bad": self.first_bad._asdict() if self.first_bad else None, "code": self.code,
                "problem": self.problem, "checkpoints_verified": self.checkpoints_verified,
                "signatures_checked": self.signatures_checked, "last_checkpoint_seq": self.last_checkpoint_seq,
                "head_seq": self.head_seq,
                "head_time": self.head_time, "last_hash": self.last_hash, "notes": list(self.notes)}


def _checkpoint_message(head_seq: int, head_hash: str) -> bytes:
    return canonical_json({"format": CHECKPOINT_FORMAT, "seq": head_seq, "hash": head_hash})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------
# Checking one line (shared by the writer, which checks the entry it chains onto, and by verify)
# ---------------------------------------------------------------------------------------------------

def _check_line(line: bytes) -> tuple[dict | None, str | None, str | None]:
    """``(entry, code, problem)`` for one line with its newline: the entry when it is sound on its own.

    Sound on its own: one JSON object with exactly the seven fields, of the right types, whose
    ``hash`` is the SHA-256 of its canonical JSON without ``hash``, written canonically. (Whether
    ``prev`` and ``seq`` fit the entries before it is the caller's business.) This runs once per
    entry when a log is verified, so it uses the json module's C scanner and encoder directly.
    """
    try:
        text = line.decode()
        obj, end = _DECODE(text)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return None, "malformed", f"the line is not JSON ({exc})"
    if end != len(text) - 1:
        return None, "malformed", f"the line has more than one JSON value (characters after position {end})"
    if type(obj) is not dict or obj.keys() != _FIELDS:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        return None, "malformed", f"expected an object with the fields {sorted(_FIELDS)}; found {found}"
    seq, time_, actor, action, stated = obj["seq"], obj["time"], obj["actor"], obj["action"], obj["hash"]
    if not (type(seq) is int and seq >= 0 and type(time_) is str and _TIME.match(time_) and type(actor) is str
            and actor and type(action) is str and action and type(obj["data"]) is dict
            and type(obj["prev"]) is str and type(stated) is str):
        return None, "malformed", ("a field has the wrong type or form (expected seq >= 0, time "
                                   "YYYY-MM-DDTHH:MM:SS.ffffffZ, non-empty actor and action, data an "
                                   "object, prev and hash strings)")
    del obj["hash"]
    try:
        body = _ENCODE_DECODED(obj).encode()
    except ValueError:  # NaN or Infinity, which the decoder accepts
        return None, "malformed", "the line holds NaN or Infinity, which canonical JSON refuses"
    computed = hashlib.sha256(body).hexdigest()
    if computed != stated:
        return None, "modified", (f"its content does not match its hash: expected hash {_short(computed)} "
                                  f"(of the content), found {_short(stated)} (the entry was modified)")
    # canonical JSON puts "hash" between "data" and "prev"; from ',"prev":' to the end there are
    # 9 + 64 + 8 + len(seq) + 9 + 27 + 2 bytes
    cut = len(body) - 119 - len(str(seq))
    if line != b"".join((body[:cut], b',"hash":"', stated.encode(), b'"', body[cut:], b"\n")):
        return None, "not-canonical", ("it is not written in canonical JSON (sorted keys, no spaces, one "
                                       "line): it was rewritten after it was logged")
    obj["hash"] = stated
    return obj, None, None


def _check_checkpoint(entry: dict, public_key, key_id: str | None) -> tuple[str | None, str | None]:
    data = entry["data"]
    if data.keys() != _CHECKPOINT_FIELDS:
        return "bad-checkpoint", f"expected the fields {sorted(_CHECKPOINT_FIELDS)}; found {sorted(data)}"
    if data["head_seq"] != entry["seq"] - 1 or data["head_hash"] != entry["prev"]:
        return "bad-checkpoint", (f"expected head_seq {entry['seq'] - 1} and head_hash {_short(entry['prev'])};"
                                  f" found {data['head_seq']!r} and {_short(data['head_hash'])}")
    if public_key is None:
        return None, None
    if data["key_id"] != key_id:
        return "wrong-key", (f"the checkpoint is signed by key {data['key_id']!r}, not by the given public key "
                             f"{key_id!r}")
    signature = _unb64(data["signature"])
    if signature is None or not _verify_with(public_key, signature,
                                             _checkpoint_message(data["head_seq"], data["head_hash"])):
        return "bad-signature", "the checkpoint's signature does not verify with the given public key"
    return None, None


def _read_head(path: Path) -> tuple[dict | None, str | None, str | None]:
    """``(head, code, problem)`` of a head file, checked for form only."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "head-missing", f"the head file {path.name} is missing (it is written with every append)"
    except OSError as exc:
        return None, "head-malformed", f"the head file {path.name} cannot be read ({exc.strerror})"
    try:
        head = json.loads(raw)
    except ValueError:
        return None, "head-malformed", f"the head file {path.name} is not JSON ({len(raw)} bytes)"
    if (not isinstance(head, dict) or head.keys() != _HEAD_FIELDS or head["format"] != HEAD_FORMAT
            or type(head["seq"]) is not int or head["seq"] < -1 or not isinstance(head["time"], str)
            or not isinstance(head["hash"], str)
            or not _HEX64.match(head["hash"])):
        return None, "head-malformed", (f"the head file {path.name} is not a {HEAD_FORMAT} record "
                                        f"(expected the fields {sorted(_HEAD_FIELDS)})")
    return head, None, None


def _check_head_signature(head: dict, public_key, key_id: str) -> tuple[str | None, str | None]:
    if head["signature"] is None:
        return "unsigned", "the head file is not signed (the log was written without a site key)"
    if head["key_id"] != key_id:
        return "wrong-key", f"the head file is signed by key {head['key_id']!r}, not by the given public key {key_id!r}"
    signature = _unb64(head["signature"])
    unsigned = {k: v for k, v in head.items() if k != "signature"}
    if signature is None or not _verify_with(public_key, signature, canonical_json(unsigned)):
        return "bad-signature", "the head file's signature does not verify with the given public key"
    return None, None


# ---------------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------------

class AuditLog:
    """The audit log at ``path``: append entries, checkpoint, verify, read.

    Opening creates the log (mode 0600) and its head file if they do not exist, moves a partial last
    line left by a crash into ``<log>.torn`` (recording that in the chain, as a ``torn-tail`` entry),
    and checks that the log still ends where its head file says; a log that lost entries at its end,
    whose last entry is damaged, or whose head file is missing is refused (:class:`InputError`).

    Parameters
    ----------
    path : path
        The log file (JSON lines). Missing folders are created.
    signer : SiteKey or object with ``sign(bytes) -> bytes`` and ``public_key_pem() -> bytes``, optional
        Signs checkpoints and the head file. Without one, the head file is unsigned and no
        checkpoints are written: the chain still shows edits, but whoever can write the files can
        rewrite the whole log undetected.
    checkpoint_every : int or None
        With a signer, a signed ``checkpoint`` entry is appended whenever the next ``seq`` is a
        multiple of this (entries 1000, 2000, … by default). None: only on :meth:`checkpoint`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sobre.base import SiteKey, verify_audit, find_audit
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> key = SiteKey.create(folder / "secrets" / "site.key")
    >>> audit = AuditLog(folder / "audit.jsonl", signer=key)
    >>> e = audit.append("dr.martin", "view", study="1.2.840.1", series=["1.2.840.1.1"])
    >>> e.seq, e.action, e.data
    (0, 'view', {'series': ['1.2.840.1.1'], 'study': '1.2.840.1'})
    >>> _ = audit.checkpoint()
    >>> result = verify_audit(audit, public_key_pem=key.public_key_pem())
    >>> result.ok, result.n_entries, result.checkpoints_verified
    (True, 2, 1)
    >>> [e.seq for e in find_audit(audit.path, "1.2.840.1.1")]
    [0]
    """

    GENESIS = GENESIS

    def __init__(self, path: str | os.PathLike, *, signer=None, checkpoint_every: int | None = 1000) -> None:
        self.path = Path(path)
        if signer is not None and not (callable(getattr(signer, "sign", None))
                                       and callable(getattr(signer, "public_key_pem", None))):
            raise ConfigError("the audit log's signer has no sign() and public_key_pem()", path=self.path,
                              found=type(signer).__name__, fix="pass a sobre.base.SiteKey")
        if checkpoint_every is not None and (type(checkpoint_every) is not int or checkpoint_every < 1):
            raise ConfigError("checkpoint_every must be a positive whole number or None", path=self.path,
                              found=repr(checkpoint_every))
        self.signer = signer
        self.key_id = public_key_id(signer.public_key_pem()) if signer is not None else None
        self.checkpoint_every = checkpoint_every
        self._state: tuple[int, int, int, int, str] | None = None  # dev, inode, size, last seq, last hash
        self._write([])

    @property
    def head_path(self) -> Path:
        """The head file: ``<log>.head``."""
        return self.path.with_name(self.path.name + ".head")

    @property
    def torn_path(self) -> Path:
        """Where partial lines left by a crash go: ``<log>.torn``."""
        return self.path.with_name(self.path.name + ".torn")

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, key_id={self.key_id!r}, checkpoint_every={self.checkpoint_every})"

    # -- public operations ------------------------------------------------------------------------

    def append(self, actor: str, action: str, /, **data: Any) -> AuditEntry:
        """Append one entry (one write, one fsync) and return it.

        Parameters
        ----------
        actor : str
            Who did it (user name, service name).
        action : str
            What was done (``"view"``, ``"annotation.save"``, ``"infer.decision"``, …); the names
            ``checkpoint``, ``torn-tail`` and ``head-recovered`` are the log's own.
        **data
            JSON-able values: UIDs, hashes, decisions.

        Raises
        ------
        InputError
            Bad actor, action or data (nothing written), or the log cannot be written (nothing
            left behind) or is damaged at its end.
        """
        return self._write([(actor, action, data)])[0]

    def append_many(self, records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[AuditEntry]:
        """Append several ``(actor, action, data)`` records with one lock, one write and one fsync.

        Faster than :meth:`append` in a loop (the fsync is shared), and all or nothing: a crash loses
        the whole batch (moved aside as a torn line at the next opening) rather than part of it.
        """
        try:
            batch = [(actor, action, data) for actor, action, data in records]
        except (TypeError, ValueError):
            raise InputError("append_many takes (actor, action, data) records", path=self.path,
                             fix="pass e.g. [('dr.b', 'view', {'series': uid}), ...]") from None
        return self._write(batch)

    def checkpoint(self) -> AuditEntry:
        """Append a signed ``checkpoint`` entry now (holding the chain head's seq and hash)."""
        if self.signer is None:
            raise ConfigError("a checkpoint needs a signer", path=self.path,
                              fix="open the log with signer=SiteKey.load(...)")
        return self._write([], checkpoint=True)[-1]

    def verify(self, *, public_key_pem: bytes | str | None = None) -> AuditVerification:
        """:func:`verify_audit` of this log."""
        return verify_audit(self, public_key_pem=public_key_pem)

    def entries(self, *, action: str | None = None, since: datetime | str | None = None) -> Iterator[AuditEntry]:
        """:func:`audit_entries` of this log."""
        return audit_entries(self, action=action, since=since)

    def find(self, value: Any) -> Iterator[AuditEntry]:
        """:func:`find_audit` in this log."""
        return find_audit(self, value)

    # -- the write path -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self):
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise InputError(f"cannot open the audit log ({exc.strerror})", path=self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _check_record(self, actor, action, data) -> None:
        if not isinstance(actor, str) or not actor.strip():
            raise InputError("an audit entry needs an actor (a non-empty string)", path=self.path,
                             found=repr(actor))
        if not isinstance(action, str) or not action.strip():
            raise InputError("an audit entry needs an action (a non-empty string)", path=self.path,
                             found=repr(action))
        if action in RESERVED_ACTIONS:
            raise InputError(f"the action {action!r} is the audit log's own", path=self.path,
                             fix="use checkpoint() for checkpoints, or another action name")
        if not isinstance(data, Mapping):
            raise InputError("audit entry data must be a mapping", path=self.path, found=type(data).__name__)

    def _build(self, seq: int, prev: str, actor: str, action: str, data: Mapping) -> tuple[AuditEntry, bytes]:
        try:
            return AuditEntry._build(seq, _now(), actor, action, dict(data), prev)
        except (TypeError, ValueError) as exc:
            raise InputError(f"audit entry data is not JSON ({exc})", path=self.path,
                             expected="strings, numbers, booleans, None, lists and string-keyed mappings",
                             fix="log UIDs, hashes and decisions as plain values") from None

    def _checkpoint_entry(self, seq: int, prev: str) -> tuple[AuditEntry, bytes]:
        signature = self.signer.sign(_checkpoint_message(seq - 1, prev))
        data = {"head_hash": prev, "head_seq": seq - 1, "key_id": self.key_id, "signature": _b64(signature)}
        return AuditEntry._build(seq, _now(), SYSTEM_ACTOR, CHECKPOINT, data, prev)

    def _head_bytes(self, seq: int, last_hash: str) -> bytes:
        head = {"format": HEAD_FORMAT, "seq": seq, "hash": last_hash, "time": _now(), "key_id": self.key_id}
        head["signature"] = _b64(self.signer.sign(canonical_json(head))) if self.signer is not None else None
        return canonical_json(head) + b"\n"

    def _write(self, records: list, *, checkpoint: bool = False) -> list[AuditEntry]:
        for actor, action, data in records:
            self._check_record(actor, action, data)
        with self._locked() as fd:
            st = os.fstat(fd)
            seq, prev, torn, head = self._tail(fd, st)
            written: list[tuple[AuditEntry, bytes]] = []  # everything appended, with its line
            if torn is not None:
                data = {"offset": torn[0], "length": len(torn[1]), "sha256": _sha256(torn[1]),
                        "moved_to": self.torn_path.name}
                written.append(AuditEntry._build(seq + 1, _now(), SYSTEM_ACTOR, TORN_TAIL, data, prev))
                seq, prev = seq + 1, written[-1][0].hash
            if head is not None and head["seq"] < seq - len(written):
                behind = {"head_seq": head["seq"], "head_hash": head["hash"], "log_seq": seq - len(written)}
                log.warning("%s: the head file recorded entry %d but the log ends at entry %d; recording "
                            "that in the log and signing the head again", self.path, head["seq"], behind["log_seq"])
                written.append(AuditEntry._build(seq + 1, _now(), SYSTEM_ACTOR, HEAD_RECOVERED, behind, prev))
                seq, prev = seq + 1, written[-1][0].hash
            entries: list[AuditEntry] = []
            every = self.checkpoint_every if self.signer is not None else None
            for actor, action, data in records:
                written.append(self._build(seq + 1, prev, actor, action, data))
                entries.append(written[-1][0])
                seq, prev = seq + 1, written[-1][0].hash
                if every and (seq + 1) % every == 0:
                    written.append(self._checkpoint_entry(seq + 1, prev))
                    seq, prev = seq + 1, written[-1][0].hash
            if checkpoint:
                written.append(self._checkpoint_entry(seq + 1, prev))
                entries.append(written[-1][0])
                seq, prev = seq + 1, written[-1][0].hash
            if written or head is None:
                head_bytes = self._head_bytes(seq, prev)  # signed before anything is written
                size = st.st_size if torn is None else self._move_torn_aside(fd, torn, seq - len(written))
                if written:
                    self._append_bytes(fd, size, b"".join(line for _, line in written))
                try:
                    write_atomic(self.head_path, head_bytes)
                except OSError as exc:
                    self._state = None
                    raise InputError(f"entry {seq} was written but the head file could not be updated "
                                     f"({exc.strerror})", path=self.head_path,
                                     fix="free space or fix permissions; the next append updates it") from None
            st = os.fstat(fd)
            self._state = (st.st_dev, st.st_ino, st.st_size, seq, prev)
        return entries

    def _append_bytes(self, fd: int, size: int, payload: bytes) -> None:
        """Append ``payload`` and fsync; on any failure cut the file back to ``size`` and raise."""
        try:
            view = memoryview(payload)
            done = 0
            while done < len(payload):  # one write() unless the kernel takes less
                done += os.write(fd, view[done:])
            os.fsync(fd)
        except BaseException as exc:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                pass  # a torn line remains; the next opening moves it aside
            self._state = None
            if isinstance(exc, OSError):
                raise InputError(f"the audit entry could not be written ({exc.strerror}); the log is unchanged",
                                 path=self.path, fix="free disk space or fix the file system, then retry") from None
            raise

    def _tail(self, fd: int, st: os.stat_result):
        """``(last seq, last hash, torn, head)`` under the lock: from the cache, or read and checked.

        ``torn`` is ``(offset, bytes)`` of a partial last line, else None; ``head`` the head record
        (None when missing: allowed only for an empty log).
        """
        state = self._state
        if state is not None and state[:3] == (st.st_dev, st.st_ino, st.st_size):
            return state[3], state[4], None, {"seq": state[3], "hash": state[4]}
        last, end, torn = _read_tail(fd, st.st_size)
        if last is None:
            seq, prev = -1, GENESIS
        else:
            entry, code, problem = _check_line(last)
            if entry is None:
                raise InputError(f"the last entry of the audit log is damaged ({code}: {problem})", path=self.path,
                                 fix="run sobre.base.verify_audit on it; nothing more is appended to a damaged log")
            seq, prev = entry["seq"], entry["hash"]
        head, code, problem = _read_head(self.head_path)
        if head is None:
            if code != "head-missing" or seq >= 0:
                raise InputError(f"the audit log cannot be checked against its head file: {problem}",
                                 path=self.path, fix="restore the head file from a backup (verify_audit tells "
                                 "what is wrong); a new log needs a new file name")
        elif head["seq"] > seq:
            raise InputError("the audit log ends before the entry its head file records: entries were deleted",
                             path=self.path, expected=f"entries up to {head['seq']}", found=f"entries up to {seq}",
                             fix="restore the log from a backup; nothing more is appended to a truncated log")
        elif head["seq"] == seq and head["hash"] != prev:
            raise InputError("the last entry of the audit log is not the one its head file records", path=self.path,
                             expected=f"hash {_short(head['hash'])}", found=f"hash {_short(prev)}",
                             fix="run sobre.base.verify_audit; restore the log from a backup")
        return seq, prev, (end, torn) if torn else None, head

    def _move_torn_aside(self, fd: int, torn: tuple[int, bytes], seq: int) -> int:
        """Record a partial last line in ``<log>.torn`` (fsynced), then cut it off the log; returns the new size."""
        offset, data = torn
        record = {"time": _now(), "log": self.path.name, "offset": offset, "after_seq": seq, "length": len(data),
                  "sha256": _sha256(data), "bytes_b64": _b64(data)}
        tfd = os.open(self.torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(tfd, canonical_json(record) + b"\n")
            os.fsync(tfd)
        finally:
            os.close(tfd)
        os.ftruncate(fd, offset)
        os.fsync(fd)
        log.warning("%s: a partial last line of %d bytes (a write interrupted by a crash) was moved to %s",
                    self.path, len(data), self.torn_path)
        return offset


def _read_tail(fd: int, size: int) -> tuple[bytes | None, int, bytes]:
    """``(last complete line or None, offset just after it, bytes after it)`` read backwards from the end."""
    buf = b""
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL_BLOCK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        last_nl = buf.rfind(b"\n")
        if last_nl >= 0 and (buf.rfind(b"\n", 0, last_nl) >= 0 or pos == 0):
            break
    last_nl = buf.rfind(b"\n")
    if last_nl < 0:
        return None, 0, buf
    line_start = buf.rfind(b"\n", 0, last_nl) + 1
    return buf[line_start:last_nl + 1], pos + last_nl + 1, buf[last_nl + 1:]


# ---------------------------------------------------------------------------------------------------
# Verifying and reading
# ---------------------------------------------------------------------------------------------------

def _path_of(path_or_log) -> Path:
    return path_or_log.path if isinstance(path_or_log, AuditLog) else Path(path_or_log)


def _open_log(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError("audit log not found", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read the audit log ({exc.strerror})", path=path) from None


def verify_audit(path_or_log, *, public_key_pem: bytes | str | None = None) -> AuditVerification:
    """Check a whole audit log: every entry, the chain, checkpoints, the head file, and signatures.

    The log and its head file are read as they stand at one moment (under a shared lock, so writers
    wait only for that instant); entries appended later are not looked at. Verification stops at the
    first problem and says where it is.

    Parameters
    ----------
    path_or_log : path or AuditLog
    public_key_pem : bytes or str, optional
        The site's public key: every checkpoint and the head file must then be signed by it. Without
        it, signatures are not checked (``signatures_checked`` is False).

    Returns
    -------
    AuditVerification
        ``ok``, ``n_entries``, ``first_bad`` (seq and line of the first wrong or missing entry),
        ``code`` and ``problem``, ``checkpoints_verified``, …

    Raises
    ------
    InputError
        The log file does not exist or cannot be read.
    ConfigError
        ``public_key_pem`` is not an Ed25519 public key.
    """
    path = _path_of(path_or_log)
    public_key = load_public_key(public_key_pem) if public_key_pem is not None else None
    key_id = public_key_id(public_key_pem) if public_key_pem is not None else None
    head_path = path.with_name(path.name + ".head")
    with _open_log(path) as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            size = os.fstat(fh.fileno()).st_size
            head, head_code, head_problem = _read_head(head_path)
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        if head is not None and public_key is not None:
            head_code, head_problem = _check_head_signature(head, public_key, key_id)
        trusted_head = head if head_code is None else None
        result = {"path": str(path), "signatures_checked": public_key is not None,
                  "head_seq": head["seq"] if head is not None else None,
                  "head_time": head["time"] if head is not None else None}

        expected, prev, checkpoints, read, last_checkpoint = 0, GENESIS, 0, 0, None
        notes: list[str] = []

        def found(**outcome) -> AuditVerification:
            return AuditVerification(n_entries=expected, checkpoints_verified=checkpoints,
                                     last_checkpoint_seq=last_checkpoint, last_hash=prev, notes=tuple(notes),
                                     **result, **outcome)

        def bad(code: str, problem: str) -> AuditVerification:
            return found(ok=False, first_bad=BadEntry(expected, expected + 1), code=code, problem=problem)

        for line in fh:
            read += len(line)
            if read > size:  # appended after the snapshot
                line = line[:len(line) - (read - size)]
                if not line:
                    break
            if not line.endswith(b"\n"):
                return bad("torn-tail", f"the last line is partial ({len(line)} bytes, no newline): a write "
                                        "interrupted by a crash. Opening the log with AuditLog moves it to "
                                        f"{path.name}.torn and records that in the log")
            entry, code, problem = _check_line(line)
            if entry is None:
                return bad(code, f"entry {expected}: {problem}")
            seq = entry["seq"]
            if seq != expected:
                if seq > expected:
                    missing = f"entry {expected}" if seq == expected + 1 else f"entries {expected} to {seq - 1}"
                    return bad("missing-entries", f"expected entry {expected}, found entry {seq}: {missing} "
                                                  "missing (deleted), or entries moved")
                return bad("out-of-order", f"expected entry {expected}, found entry {seq} (a line repeated, "
                                           "inserted or moved)")
            if entry["prev"] != prev:
                return bad("broken-chain", f"entry {seq} does not follow entry {seq - 1}: expected prev "
                                           f"{_short(prev)}, found {_short(entry['prev'])} (an entry was "
                                           "replaced, or one before it forged)")
            if entry["action"] == CHECKPOINT:
                code, problem = _check_checkpoint(entry, public_key, key_id)
                if code is not None:
                    return bad(code, f"checkpoint entry {seq}: {problem}")
                checkpoints += 1
                last_checkpoint = seq
            elif entry["action"] == TORN_TAIL and entry["actor"] == SYSTEM_ACTOR:
                notes.append(f"entry {seq}: a partial line of {entry['data'].get('length')} bytes left by a "
                             f"crash was moved to {entry['data'].get('moved_to')}")
            elif entry["action"] == HEAD_RECOVERED and entry["actor"] == SYSTEM_ACTOR:
                notes.append(f"entry {seq}: the head file recorded entry {entry['data'].get('head_seq')} while "
                             f"the log ended at entry {entry['data'].get('log_seq')} (a crash between the two "
                             "writes); the entries in between were not covered by a head signature until then")
            if trusted_head is not None and seq == trusted_head["seq"] and entry["hash"] != trusted_head["hash"]:
                return bad("head-mismatch", f"entry {seq} is not the entry the head file records: expected hash "
                                            f"{_short(trusted_head['hash'])}, found {_short(entry['hash'])}")
            prev = entry["hash"]
            expected += 1
            if read >= size:
                break

    last = expected - 1
    if head_code is not None:
        return found(ok=False, code=head_code, problem=head_problem)
    if head["seq"] > last:
        n_missing = head["seq"] - last
        return found(ok=False, first_bad=BadEntry(expected, expected + 1), code="truncated",
                     problem=f"the log ends at entry {last} but its head file records entry {head['seq']}: "
                             f"{n_missing} entr{'y' if n_missing == 1 else 'ies'} at the end deleted")
    if head["seq"] < last:
        return found(ok=False, first_bad=BadEntry(head["seq"] + 1, head["seq"] + 2), code="head-behind",
                     problem=f"the head file records entry {head['seq']} but the log goes on to entry {last}: "
                             f"entries after {head['seq']} are not covered by the head (a crash between writing "
                             "the log and the head, or entries added by someone else); the next opening of the "
                             "log records this")
    return found(ok=True)


def _since_text(since: datetime | str | None) -> str | None:
    if since is None:
        return None
    if isinstance(since, str):
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise InputError("'since' is not an ISO 8601 time", expected="e.g. 2025-01-31T08:00:00Z",
                             found=repr(since)) from None
    elif isinstance(since, datetime):
        when = since
    else:
        raise InputError("'since' must be a datetime or an ISO 8601 string", found=type(since).__name__)
    if when.tzinfo is None:
        raise InputError("'since' has no time zone", found=str(since),
                         fix="add one: 'Z' or '+00:00' for UTC, '+01:00' for Paris in winter")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with _open_log(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                return  # a partial last line is not an entry (verify_audit reports it)
            yield number, line


def _entry(path: Path, number: int, line: bytes) -> AuditEntry:
    try:
        return AuditEntry.from_line(line)
    except (ValueError, TypeError, KeyError):
        raise InputError(f"line {number} is not an audit entry", path=path,
                         fix="run sobre.base.verify_audit on the log") from None


def audit_entries(path_or_log, *, action: str | None = None,
                  since: datetime | str | None = None) -> Iterator[AuditEntry]:
    """The entries of a log in order, optionally only one ``action`` and those at or after ``since``.

    Entries are read, not verified: call :func:`verify_audit` to know they are genuine. A partial
    last line (crash) is skipped; a line that is not an entry raises :class:`InputError`.

    Parameters
    ----------
    action : str, optional
        Only entries of this action (``"checkpoint"`` for checkpoints).
    since : datetime or str, optional
        Only entries logged at or after this time (time zone required; ``"2025-01-31T08:00:00Z"``).
    """
    path = _path_of(path_or_log)
    floor = _since_text(since)
    prefix = b'{"action":' + json.dumps(action, ensure_ascii=False).encode() + b"," if action is not None else None
    for number, line in _lines(path):
        if prefix is not None and not line.startswith(prefix):
            continue
        entry = _entry(path, number, line)
        if floor is not None and entry.time < floor:
            continue
        yield entry


def _mentions(node: Any, value: Any) -> bool:
    if isinstance(node, dict):
        return any(_mentions(k, value) or _mentions(v, value) for k, v in node.items())
    if isinstance(node, list):
        return any(_mentions(v, value) for v in node)
    return node == value and isinstance(node, bool) == isinstance(value, bool)


def find_audit(path_or_log, value: str | int | float | bool) -> Iterator[AuditEntry]:
    """The entries whose ``data`` mentions ``value`` at any depth (as a value or a key), in order.

    What ``sobre audit trace UID`` builds on: every view, decision and review that names a study,
    series or instance UID, or a file hash. Entries are read, not verified (see :func:`verify_audit`).
    """
    if not isinstance(value, (str, int, float, bool)):
        raise InputError("find_audit looks for one string or number", found=type(value).__name__)
    path = _path_of(path_or_log)
    needle = json.dumps(value, ensure_ascii=False).encode() if isinstance(value, str) else None
    for number, line in _lines(path):
        if needle is not None and needle not in line:
            continue
        entry = _entry(path, number, line)
        if _mentions(entry.data, value):
            yield entry


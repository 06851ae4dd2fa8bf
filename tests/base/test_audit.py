"""The audit log: entry hashes checked by hand, chains, checkpoints, head file, crashes, concurrent writers."""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import json
import multiprocessing
import os
import stat
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sobre.base import (AuditEntry, AuditLog, BadEntry, SiteKey, audit_entries, canonical_json, find_audit,
                        verify_audit,
                        verify_signature)
from sobre.errors import ConfigError, InputError

ZEROS = "0" * 64


@pytest.fixture()
def key(tmp_path):
    return SiteKey.create(tmp_path / "secrets" / "site.key")


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


# --- one entry, checked by hand ----------------------------------------------------------------------

def test_entry_hash_checked_by_hand():
    entry = AuditEntry.build(seq=0, time="2025-01-02T03:04:05.000006Z", actor="alice", action="view",
                             data={"series": "1.2.3"}, prev=ZEROS)
    # printf '%s' '{"action":"view","actor":"alice","data":{"series":"1.2.3"},"prev":"000…0","seq":0,
    #              "time":"2025-01-02T03:04:05.000006Z"}' | sha256sum   (64 zeros, one line)
    assert entry.hash == "eb62c51b918b7778c2156f13ba6575ab42dd5fd4e07b3f645d357e53500de571"
    assert entry.line() == (b'{"action":"view","actor":"alice","data":{"series":"1.2.3"},'
                            b'"hash":"eb62c51b918b7778c2156f13ba6575ab42dd5fd4e07b3f645d357e53500de571",'
                            b'"prev":"' + ZEROS.encode() + b'","seq":0,"time":"2025-01-02T03:04:05.000006Z"}\n')


def test_appended_entry_is_one_canonical_line_whose_hash_covers_everything_but_itself(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    entry = audit.append("dr.martin", "view", study="1.2.840.99", instances=["1.2.840.99.1", "1.2.840.99.2"],
                         sha256="ab" * 32, n=3, reviewed=None)
    (line,) = lines_of(audit.path)
    obj = json.loads(line)
    assert set(obj) == {"seq", "time", "actor", "action", "data", "prev", "hash"}
    assert obj["seq"] == 0 and obj["prev"] == ZEROS and obj["actor"] == "dr.martin" and obj["action"] == "view"
    assert obj["data"] == {"study": "1.2.840.99", "instances": ["1.2.840.99.1", "1.2.840.99.2"],
                           "sha256": "ab" * 32, "n": 3, "reviewed": None}
    when = datetime.strptime(obj["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)
    body = {k: v for k, v in obj.items() if k != "hash"}
    independent = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert obj["hash"] == hashlib.sha256(independent).hexdigest() == entry.hash
    assert line == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    assert line == canonical_json(obj) + b"\n"
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600


# --- chains -------------------------------------------------------------------------------------------

def test_chain_of_100_entries_verifies_and_links(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    written = [audit.append(f"user{i % 3}", "view", series=f"1.2.3.{i}") for i in range(100)]
    result = verify_audit(audit.path)
    assert result.ok, result
    assert (result.n_entries, result.first_bad, result.code, result.head_seq) == (100, None, None, 99)
    assert result.last_hash == written[-1].hash
    assert [e.seq for e in written] == list(range(100))
    assert written[0].prev == ZEROS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(written))
    assert [e.to_dict() for e in audit_entries(audit.path)] == [e.to_dict() for e in written]


def test_verified_log_stays_verified_after_reopening(tmp_path, key):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, signer=key, checkpoint_every=25)
    audit.append_many([("svc", "infer.decision", {"i": i}) for i in range(60)])
    pub = key.public_key_pem()
    before = verify_audit(path, public_key_pem=pub)
    assert before.ok and before.checkpoints_verified == 2  # entries 25 and 50
    log_bytes, head_bytes = path.read_bytes(), audit.head_path.read_bytes()

    reopened = AuditLog(path, signer=SiteKey.load(key.path), checkpoint_every=25)
    assert (path.read_bytes(), reopened.head_path.read_bytes()) == (log_bytes, head_bytes)  # opening writes nothing
    assert verify_audit(path, public_key_pem=pub) == before
    nxt = reopened.append("svc", "infer.decision", i=60)
    assert nxt.seq == 62 and nxt.prev == before.last_hash
    after = verify_audit(reopened, public_key_pem=pub)
    assert after.ok and after.n_entries == 63 and after.head_seq == 62


# --- checkpoints and the head file --------------------------------------------------------------------

def test_checkpoints_every_n_entries_hold_the_signed_chain_head(tmp_path, key):
    audit = AuditLog(tmp_path / "audit.jsonl", signer=key, checkpoint_every=10)
    for i in range(25):
        audit.append("dr.b", "annotation.save", annotation=i)
    checkpoints = list(audit_entries(audit.path, action="checkpoint"))
    assert [c.seq for c in checkpoints] == [10, 20]
    everything = {e.seq: e for e in audit_entries(audit.path)}
    assert len(everything) == 27
    pub = key.public_key_pem()
    for c in checkpoints:
        assert c.actor == "sobre.audit"
        assert c.data["head_seq"] == c.seq - 1 and c.data["head_hash"] == everything[c.seq - 1].hash == c.prev
        assert c.data["key_id"] == key.key_id
        message = json.dumps({"format": "sobre.audit.checkpoint/1", "hash": c.prev, "seq": c.seq - 1},
                             sort_keys=True, separators=(",", ":")).encode()
        assert verify_signature(pub, base64.b64decode(c.data["signature"]), message)
    manual = audit.checkpoint()
    assert manual.seq == 27 and manual.data["head_seq"] == 26

    head = json.loads(audit.head_path.read_bytes())
    assert (head["seq"], head["hash"], head["key_id"]) == (27, manual.hash, key.key_id)
    signed = json.dumps({k: v for k, v in head.items() if k != "signature"}, sort_keys=True,
                        separators=(",", ":")).encode()
    assert verify_signature(pub, base64.b64decode(head["signature"]), signed)
    result = verify_audit(audit, public_key_pem=pub)
    assert result.ok and result.signatures_checked and result.checkpoints_verified == 3
    assert (result.head_seq, result.head_time) == (27, head["time"])


def test_wrong_public_key_is_reported_at_the_first_checkpoint_and_on_the_head(tmp_path, key):
    other = SiteKey.create(tmp_path / "secrets" / "other.key")
    audit = AuditLog(tmp_path / "a.jsonl", signer=key, checkpoint_every=5)
    audit.append_many([("u", "view", {"i": i}) for i in range(12)])
    result = verify_audit(audit, public_key_pem=other.public_key_pem())
    assert not result.ok
    assert (result.code, result.first_bad, result.n_entries) == ("wrong-key", BadEntry(5, 6), 5)
    assert key.key_id in result.problem and other.key_id in result.problem
    assert str(result).endswith(f"NOT OK at entry 5 (line 6): [wrong-key] {result.problem}")
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["first_bad"] == {"seq": 5, "line": 6} and as_json["signatures_checked"] is True
    # no checkpoint yet: the head file's signature is what says so
    small = AuditLog(tmp_path / "b.jsonl", signer=key, checkpoint_every=None)
    small.append("u", "view", i=0)
    result = verify_audit(small, public_key_pem=other.public_key_pem())
    assert (result.ok, result.code, result.first_bad, result.n_entries) == (False, "wrong-key", None, 1)
    assert verify_audit(small, public_key_pem=key.public_key_pem()).ok


def test_forged_signatures_and_unsigned_logs_fail_with_the_key(tmp_path, key):
    unsigned = AuditLog(tmp_path / "u.jsonl")
    unsigned.append("u", "view", i=0)
    assert verify_audit(unsigned).ok  # without a key: the chain and the head hold
    result = verify_audit(unsigned, public_key_pem=key.public_key_pem())
    assert (result.ok, result.code) == (False, "unsigned")
    with pytest.raises(ConfigError, match="a checkpoint needs a signer"):
        unsigned.checkpoint()

    audit = AuditLog(tmp_path / "s.jsonl", signer=key)
    audit.append("u", "view", i=0)
    head = json.loads(audit.head_path.read_bytes())
    sig = bytearray(base64.b64decode(head["signature"]))
    sig[10] ^= 0x40
    head["signature"] = base64.b64encode(bytes(sig)).decode()
    audit.head_path.write_text(json.dumps(head))
    assert verify_audit(audit).ok  # no key: signatures not checked, and says so
    assert not verify_audit(audit).signatures_checked
    result = verify_audit(audit, public_key_pem=key.public_key_pem())
    assert (result.ok, result.code) == (False, "bad-signature")
    with pytest.raises(ConfigError, match="public key is not PEM"):
        verify_audit(audit, public_key_pem=b"garbage")


def test_deleting_the_last_entries_is_detected_by_the_head_and_refused_by_the_writer(tmp_path, key):
    audit = AuditLog(tmp_path / "audit.jsonl", signer=key)
    audit.append_many([("u", "view", {"i": i}) for i in range(20)])
    lines = lines_of(audit.path)
    audit.path.write_bytes(b"".join(lines[:15]))
    result = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert (result.ok, result.code, result.first_bad, result.n_entries) == (False, "truncated", BadEntry(15, 16), 15)
    assert "5 entries at the end deleted" in result.problem
    with pytest.raises(InputError, match=r"entries were deleted \(expected entries up to 19; found entries up to 14\)"):
        AuditLog(audit.path, signer=key)
    audit.path.write_bytes(b"")
    assert verify_audit(audit.path).code == "truncated"


def test_rewritten_tail_with_recomputed_hashes_is_caught_by_signatures(tmp_path, key):
    """An attacker without the key rewrites entries 30.. and recomputes every hash, checkpoint and the head."""
    audit = AuditLog(tmp_path / "audit.jsonl", signer=key, checkpoint_every=20)
    audit.append_many([("u", "view", {"i": i}) for i in range(50)])
    entries = list(audit_entries(audit.path))
    forged, prev = entries[:30], entries[29].hash
    for e in entries[30:]:
        data = dict(e.data)
        if e.action == "checkpoint":
            data.update(head_hash=prev, head_seq=e.seq - 1)  # consistent, but the old signature
        else:
            data["i"] = -1
        forged.append(AuditEntry.build(seq=e.seq, time=e.time, actor=e.actor, action=e.action, data=data, prev=prev))
        prev = forged[-1].hash
    audit.path.write_bytes(b"".join(e.line() for e in forged))
    head = json.loads(audit.head_path.read_bytes())
    head["hash"] = prev  # its signature no longer matches
    audit.head_path.write_text(json.dumps(head))
    assert verify_audit(audit.path).ok  # without the public key the rewrite cannot be told apart
    result = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert (result.ok, result.code, result.first_bad) == (False, "bad-signature", BadEntry(40, 41))
    assert result.last_checkpoint_seq == 20  # entries 0-19 are still vouched for by a signature


def test_rollback_to_an_older_signed_head_is_not_detected_by_the_log_alone(tmp_path, key):
    """The documented limit: cutting the log back to where an old copy of the head file was taken, and
    putting that copy back, leaves a log that verifies; only a copy of a later head kept elsewhere, or
    the head's time, tells. (docs/audit.md, "What is not detected".)"""
    audit = AuditLog(tmp_path / "audit.jsonl", signer=key)
    audit.append_many([("u", "view", {"i": i}) for i in range(10)])
    old_log, old_head = audit.path.read_bytes(), audit.head_path.read_bytes()
    audit.append_many([("u", "view", {"i": i}) for i in range(10, 20)])
    now = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    audit.path.write_bytes(old_log)
    audit.head_path.write_bytes(old_head)
    rolled_back = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert rolled_back.ok and rolled_back.n_entries == 10
    assert (rolled_back.head_seq, now.head_seq) == (9, 19)
    assert rolled_back.head_time <= now.head_time


def test_last_entry_replaced_is_caught_by_the_head(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append_many([("u", "view", {"i": i}) for i in range(10)])
    last = list(audit_entries(audit.path))[-1]
    forged = AuditEntry.build(seq=9, time=last.time, actor="u", action="view", data={"i": 999}, prev=last.prev)
    audit.path.write_bytes(b"".join(lines_of(audit.path)[:9]) + forged.line())
    result = verify_audit(audit.path)
    assert (result.ok, result.code, result.first_bad) == (False, "head-mismatch", BadEntry(9, 10))
    with pytest.raises(InputError, match="not the one its head file records"):
        AuditLog(audit.path)


def test_missing_or_damaged_head_file(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    assert json.loads(audit.head_path.read_bytes())["seq"] == -1  # a new log has a head file already
    audit.append("u", "view", i=0)
    audit.head_path.unlink()
    result = verify_audit(audit.path)
    assert (result.ok, result.code, result.first_bad, result.n_entries) == (False, "head-missing", None, 1)
    with pytest.raises(InputError, match="head file audit.jsonl.head is missing"):
        AuditLog(audit.path)
    audit.head_path.write_text("{}")
    assert verify_audit(audit.path).code == "head-malformed"


# --- crashes --------------------------------------------------------------------------------------------

def test_torn_last_line_is_reported_then_moved_aside_and_recorded(tmp_path, key):
    audit = AuditLog(tmp_path / "audit.jsonl", signer=key)
    audit.append_many([("u", "view", {"i": i}) for i in range(5)])
    clean = audit.path.read_bytes()
    partial = b'{"action":"view","actor":"u","data":{"i":'  # a write cut short by a crash
    with open(audit.path, "ab") as fh:
        fh.write(partial)

    result = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert (result.ok, result.code, result.first_bad, result.n_entries) == (False, "torn-tail", BadEntry(5, 6), 5)
    assert [e.seq for e in audit_entries(audit.path)] == [0, 1, 2, 3, 4]  # readers skip it

    reopened = AuditLog(audit.path, signer=key)  # opening repairs: moves the bytes aside, records it
    torn_records = [json.loads(x) for x in reopened.torn_path.read_bytes().splitlines()]
    assert len(torn_records) == 1
    rec = torn_records[0]
    assert base64.b64decode(rec["bytes_b64"]) == partial
    assert (rec["offset"], rec["length"], rec["after_seq"]) == (len(clean), len(partial), 4)
    assert rec["sha256"] == hashlib.sha256(partial).hexdigest()
    assert stat.S_IMODE(reopened.torn_path.stat().st_mode) == 0o600
    assert audit.path.read_bytes().startswith(clean)
    entry5 = list(audit_entries(audit.path))[5]
    assert (entry5.seq, entry5.actor, entry5.action) == (5, "sobre.audit", "torn-tail")
    assert entry5.data == {"offset": len(clean), "length": len(partial), "sha256": rec["sha256"],
                           "moved_to": "audit.jsonl.torn"}
    reopened.append("u", "view", i=5)
    result = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert result.ok and result.n_entries == 7
    assert any("moved to audit.jsonl.torn" in n for n in result.notes)


def test_torn_line_found_by_an_append_of_another_writer(tmp_path):
    first = AuditLog(tmp_path / "audit.jsonl")
    first.append("u", "view", i=0)
    second = AuditLog(tmp_path / "audit.jsonl")  # e.g. another worker process, opened before the crash
    with open(first.path, "ab") as fh:
        fh.write(b'{"action":"vi')
    entry = second.append("u", "view", i=1)
    assert entry.seq == 2  # 1 is the torn-tail record
    assert [e.action for e in audit_entries(first.path)] == ["view", "torn-tail", "view"]
    assert verify_audit(first.path).ok


def test_failed_write_leaves_the_log_unchanged(tmp_path, monkeypatch):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("u", "view", i=0)
    before = (audit.path.read_bytes(), audit.head_path.read_bytes())
    real_write = os.write

    def half_then_disk_full(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_disk_full)
    with pytest.raises(InputError, match=r"could not be written \(No space left on device\); the log is unchanged"):
        audit.append("u", "view", i=1)
    monkeypatch.undo()
    assert (audit.path.read_bytes(), audit.head_path.read_bytes()) == before
    assert verify_audit(audit.path).ok
    assert audit.append("u", "view", i=1).seq == 1
    assert verify_audit(audit.path).ok


def test_crash_between_log_and_head_is_recorded_when_reopened(tmp_path, key):
    audit = AuditLog(tmp_path / "audit.jsonl", signer=key)
    audit.append("u", "view", i=0)
    old_head = audit.head_path.read_bytes()
    audit.append("u", "view", i=1)
    audit.head_path.write_bytes(old_head)  # as if the process died after the fsync, before the head rename
    result = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert (result.ok, result.code, result.first_bad) == (False, "head-behind", BadEntry(1, 2))
    AuditLog(audit.path, signer=key)
    recovered = list(audit_entries(audit.path))[-1]
    assert (recovered.seq, recovered.action) == (2, "head-recovered")
    assert recovered.data == {"head_seq": 0, "head_hash": list(audit_entries(audit.path))[0].hash, "log_seq": 1}
    result = verify_audit(audit.path, public_key_pem=key.public_key_pem())
    assert result.ok and any("not covered by a head signature" in n for n in result.notes)


def test_entries_longer_than_the_tail_block_are_chained_onto(tmp_path):
    first = AuditLog(tmp_path / "audit.jsonl")
    big = first.append("u", "report", text="x" * 300_000, uid="1.2.3")
    second = AuditLog(tmp_path / "audit.jsonl")  # reads the 300 kB last line back
    assert second.append("u", "view", uid="1.2.3").prev == big.hash
    with open(first.path, "ab") as fh:
        fh.write(b'{"action":"report","actor":"u","data":{"text":"' + b"y" * 200_000)  # a long torn line
    third = AuditLog(tmp_path / "audit.jsonl")
    assert third.append("u", "view", uid="1.2.3").seq == 3  # 2 records the torn line
    assert [e.action for e in audit_entries(first.path)] == ["report", "view", "torn-tail", "view"]
    assert [e.seq for e in find_audit(first.path, "1.2.3")] == [0, 1, 3]
    assert verify_audit(first.path).ok


def test_damaged_last_entry_stops_the_writer(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append_many([("u", "view", {"i": i}) for i in range(3)])
    raw = bytearray(audit.path.read_bytes())
    raw[-20] = ord("X")
    audit.path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"last entry of the audit log is damaged \((modified|malformed)"):
        AuditLog(audit.path).append("u", "view", i=3)


# --- several processes -------------------------------------------------------------------------------

def _worker(path, key_path, worker, n, barrier):
    audit = AuditLog(path, signer=SiteKey.load(key_path), checkpoint_every=16)
    barrier.wait()
    for i in range(n):
        audit.append(f"worker{worker}", "view", worker=worker, i=i)


def test_concurrent_appends_from_four_processes_form_one_chain(tmp_path, key):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    n = 40
    procs = [ctx.Process(target=_worker, args=(path, key.path, w, n, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    result = verify_audit(path, public_key_pem=key.public_key_pem())
    entries = list(audit_entries(path))
    views = [(e.data["worker"], e.data["i"]) for e in entries if e.action == "view"]
    assert sorted(views) == [(w, i) for w in range(4) for i in range(n)]  # every entry once
    checkpoints = [e.seq for e in entries if e.action == "checkpoint"]
    assert checkpoints == list(range(16, len(entries), 16))  # one per multiple of 16, whoever wrote it
    assert result.ok, result
    assert result.n_entries == 4 * n + len(checkpoints) == len(entries)
    assert result.checkpoints_verified == len(checkpoints)
    for w in range(4):  # each worker's own entries in its order
        mine = [e.data["i"] for e in entries if e.action == "view" and e.data["worker"] == w]
        assert mine == list(range(n))
    workers_seen = [e.data["worker"] for e in entries if e.action == "view"]
    assert sum(a != b for a, b in itertools.pairwise(workers_seen)) > 3  # they did interleave


# --- reading -------------------------------------------------------------------------------------------

def test_entries_by_action_and_time(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("u", "view", i=0)
    audit.append("u", "annotation.save", i=1)
    middle = list(audit_entries(audit.path))[-1].time
    audit.append("u", "view", i=2)
    assert [e.data["i"] for e in audit_entries(audit.path, action="view")] == [0, 2]
    assert [e.data["i"] for e in audit_entries(audit.path, since=middle)] == [1, 2]
    since = datetime.strptime(middle, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    paris = since.astimezone(timezone(timedelta(hours=1)))
    assert [e.data["i"] for e in audit.entries(action="view", since=paris)] == [2]
    assert list(audit_entries(audit.path, since="2999-01-01T00:00:00+00:00")) == []
    with pytest.raises(InputError, match="'since' has no time zone"):
        list(audit_entries(audit.path, since="2025-01-01T00:00:00"))
    with pytest.raises(InputError, match="audit log not found"):
        list(audit_entries(tmp_path / "none.jsonl"))


def test_find_follows_a_uid_through_decisions_at_any_depth(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("pacs", "ingest", study="1.2.3", series={"1.2.3.4": {"sha256": "aa" * 32}})
    audit.append("infer", "infer.decision", inputs=[{"series": "1.2.3.4", "instances": ["1.2.3.4.1"]}],
                 model={"sha256": "bb" * 32}, outputs=[{"uid": "1.2.3.9"}], score=0.87)
    audit.append("dr.b", "review", output="1.2.3.9", decision="accepted")
    audit.append("u", "view", study="1.2.34")  # "1.2.3" is a prefix here, not a mention
    assert [e.seq for e in find_audit(audit.path, "1.2.3")] == [0]
    assert [e.seq for e in find_audit(audit.path, "1.2.3.4")] == [0, 1]  # a key and a nested value
    assert [e.seq for e in find_audit(audit, "1.2.3.9")] == [1, 2]
    assert [e.seq for e in audit.find("bb" * 32)] == [1]
    assert [e.seq for e in find_audit(audit.path, 0.87)] == [1]
    assert list(find_audit(audit.path, "nothing")) == []
    with pytest.raises(InputError, match="looks for one string or number"):
        list(find_audit(audit.path, ["1.2.3"]))


# --- refusals ------------------------------------------------------------------------------------------

def test_bad_entries_are_refused_and_nothing_is_written(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(InputError, match="'checkpoint' is the audit log's own"):
        audit.append("u", "checkpoint")
    with pytest.raises(InputError, match="needs an actor"):
        audit.append("", "view")
    with pytest.raises(InputError, match=r"audit.jsonl: audit entry data is not JSON"):
        audit.append("u", "view", uids={"1.2.3"})
    with pytest.raises(InputError, match="audit entry data is not JSON"):
        audit.append("u", "view", score=float("nan"))
    with pytest.raises(InputError, match="audit entry data is not JSON"):
        audit.append_many([("u", "view", {"i": 0}), ("u", "view", {"x": object()})])  # all or nothing
    assert audit.path.read_bytes() == b""
    assert audit.append("u", "view", actor="x", action="y").data == {"actor": "x", "action": "y"}
    with pytest.raises(ConfigError, match="checkpoint_every must be a positive whole number"):
        AuditLog(tmp_path / "b.jsonl", checkpoint_every=0)
    with pytest.raises(ConfigError, match="no sign\\(\\) and public_key_pem\\(\\)"):
        AuditLog(tmp_path / "b.jsonl", signer="key")
    with pytest.raises(InputError, match="audit log not found"):
        verify_audit(tmp_path / "none.jsonl")

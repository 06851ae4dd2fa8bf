"""200 random tamperings of a 10,000-entry audit log: each is detected, at the entry pinned below.

The log (10,000 logged entries and 10 signed checkpoints, 10,010 lines) is written once per module.
Each case rewrites a copy of it with one change and runs :func:`verify_audit` with the public key.
``first_bad`` is the position (seq, line = seq + 1) of the first entry that is wrong or missing; pinned:

- one byte of line k replaced by another byte (anywhere in the line, its newline included): k;
- line k deleted: k (the position where entry k should be; for the last line, the head file says so);
- a copy of another line j != k inserted before line k (a replayed entry): k;
- lines a < b swapped: a;
- a well-formed forged entry k, with prev = hash of entry k - 1 and its own hash recomputed, inserted
  before entry k: k + 1 (the forgery is a sound entry k; the original entry k is then out of order).
"""

from __future__ import annotations

import random
import shutil

import pytest

from sobre.base import AuditEntry, AuditLog, BadEntry, SiteKey, audit_entries, verify_audit

SEED = 20250317
N_LOGGED = 10_000
CHECKPOINT_EVERY = 1000
N_CASES = 200

CODES = {
    "edit": {"malformed", "modified", "not-canonical", "torn-tail"},
    "delete": {"missing-entries", "truncated"},
    "insert": {"missing-entries", "out-of-order"},
    "swap": {"missing-entries"},
}


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit10k")
    key = SiteKey.create(folder / "secrets" / "site.key")
    audit = AuditLog(folder / "audit.jsonl", signer=key, checkpoint_every=CHECKPOINT_EVERY)
    rng = random.Random(SEED)
    records = [(f"dr.{rng.choice('abcdef')}", rng.choice(["view", "annotation.save", "infer.decision"]),
                {"series": f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(64)}",
                 "sha256": f"{rng.getrandbits(256):064x}"})
               for _ in range(N_LOGGED)]
    for start in range(0, N_LOGGED, 2500):
        audit.append_many(records[start:start + 2500])
    lines = audit.path.read_bytes().splitlines(keepends=True)
    return audit, key.public_key_pem(), lines


def test_the_generated_log_verifies(big_log):
    audit, pub, lines = big_log
    result = verify_audit(audit.path, public_key_pem=pub)
    assert result.ok, result
    assert result.n_entries == len(lines) == N_LOGGED + N_LOGGED // CHECKPOINT_EVERY
    assert (result.checkpoints_verified, result.last_checkpoint_seq) == (10, 10_000)
    assert [e.seq for e in audit_entries(audit.path, action="checkpoint")] == list(range(1000, 10_001, 1000))


def _cases(lines: list[bytes]):
    """``(kind, mutated lines, pinned seq, description)`` for N_CASES changes, fixed seed."""
    rng = random.Random(SEED)
    n = len(lines)
    kinds = ["edit", "delete", "insert", "swap"]
    for case in range(N_CASES):
        kind = kinds[case % 4]
        out = list(lines)
        if kind == "edit":
            k = rng.randrange(n)
            pos = rng.randrange(len(lines[k]))
            new = rng.choice([b for b in range(256) if b != lines[k][pos]])
            out[k] = lines[k][:pos] + bytes([new]) + lines[k][pos + 1:]
            yield kind, out, k, f"line of entry {k}, byte {pos}: {lines[k][pos]:#04x} -> {new:#04x}"
        elif kind == "delete":
            k = rng.randrange(n)
            del out[k]
            yield kind, out, k, f"entry {k} deleted"
        elif kind == "insert":
            k = rng.randrange(n + 1)
            j = rng.choice([i for i in (rng.randrange(n), rng.randrange(n)) if i != k] or [(k + 1) % n])
            out.insert(k, lines[j])
            yield kind, out, k, f"copy of entry {j} inserted before entry {k}"
        else:
            a, b = sorted(rng.sample(range(n), 2))
            out[a], out[b] = out[b], out[a]
            yield kind, out, a, f"entries {a} and {b} swapped"


def test_200_random_tamperings_are_each_detected_at_the_pinned_entry(big_log, tmp_path):
    audit, pub, lines = big_log
    target = tmp_path / "audit.jsonl"
    shutil.copy(audit.head_path, tmp_path / "audit.jsonl.head")
    seen = {kind: 0 for kind in CODES}
    wrong = []
    for kind, mutated, pinned, what in _cases(lines):
        target.write_bytes(b"".join(mutated))
        result = verify_audit(target, public_key_pem=pub)
        seen[kind] += 1
        if result.ok or result.first_bad != BadEntry(pinned, pinned + 1) or result.code not in CODES[kind]:
            wrong.append(f"{what}: ok={result.ok} first_bad={result.first_bad} code={result.code} ({result.problem})")
        elif result.n_entries != pinned:
            wrong.append(f"{what}: {result.n_entries} entries reported sound, expected {pinned}")
    assert seen == {"edit": 50, "delete": 50, "insert": 50, "swap": 50}
    assert wrong == []


def test_forged_well_formed_entry_is_detected_at_the_entry_after_it(big_log, tmp_path):
    audit, pub, lines = big_log
    shutil.copy(audit.head_path, tmp_path / "audit.jsonl.head")
    target = tmp_path / "audit.jsonl"
    rng = random.Random(SEED + 1)
    for k in sorted(rng.sample(range(1, len(lines)), 5)):
        before = AuditEntry.from_line(lines[k - 1])
        forged = AuditEntry.build(seq=k, time=before.time, actor="intruder", action="view",
                                  data={"series": "1.2.3"}, prev=before.hash)
        target.write_bytes(b"".join(lines[:k]) + forged.line() + b"".join(lines[k:]))
        result = verify_audit(target, public_key_pem=pub)
        assert (result.ok, result.first_bad, result.code) == (False, BadEntry(k + 1, k + 2), "out-of-order"), k
        assert f"expected entry {k + 1}, found entry {k}" in result.problem

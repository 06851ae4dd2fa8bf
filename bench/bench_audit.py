"""Benchmark: the audit log (``sobre.base.AuditLog``): append rates and verifying 1,000,000 entries.

Run ``.venv/bin/python bench/bench_audit.py`` from the repository root.

Every entry is a typical inference decision (study, series and output UIDs, the input and model
hashes, a score: about 450 bytes a line). The log is signed with a fresh site key and checkpointed
every 1,000 entries, as in production. Measured, in one run, in ``bench/out/audit/`` (gitignored,
removed afterwards unless ``--keep``):

1. ``append``: one entry per call, each with its own write, ``fsync`` and signed head file: the
   default, because a decision that was logged must still be in the log after a power cut. Entries
   per second over ``--appends`` calls (default 1,000).
2. ``append_many``: batches of ``--batch`` entries (default 100) with one write, one ``fsync`` and
   one head file per batch: what a busy service that can wait for a batch would get.
3. The fast path for bulk writing: ``append_many`` in batches of 10,000 up to ``--entries``
   (default 1,000,000); file size and seconds.
4. ``verify_audit`` of that log with the public key (every entry re-encoded and re-hashed, every
   checkpoint signature and the head checked): seconds, MB/s, and CPU seconds (less sensitive than
   wall time to the other processes of a shared machine).
5. ``find_audit`` of one series UID over the whole log (what ``sobre audit trace`` will do).

The 1-minute load average is printed before and after: on a shared machine, other processes take
cores and the timings with them. ``--json`` prints the figures as JSON; they also go to
``bench/out/audit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def decision(rng: random.Random, i: int) -> tuple[str, str, dict]:
    root = "1.2.826.0.1.3680043.8.498"
    return (f"infer-worker-{i % 4}", "infer.decision",
            {"study": f"{root}.{rng.getrandbits(60)}", "series": f"{root}.{rng.getrandbits(60)}",
             "input_sha256": f"{rng.getrandbits(256):064x}", "model_sha256": f"{rng.getrandbits(256):064x}",
             "output": f"{root}.{rng.getrandbits(60)}", "score": round(rng.random(), 4)})


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--appends", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep bench/out/audit/ (the 1M-entry log)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from sobre.base import AuditLog, SiteKey, find_audit, verify_audit

    work = OUT / "audit"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.chmod(work, 0o700)
    key = SiteKey.create(work / "secrets" / "site.key")
    pub = key.public_key_pem()
    rng = random.Random(20250317)
    res: dict = {"machine": f"{cpu_model()}, {os.cpu_count()} cores",
                 "python": platform.python_version(), "load_before": round(os.getloadavg()[0], 2)}

    try:
        # 1. one fsync per entry (the default)
        audit = AuditLog(work / "append.jsonl", signer=key)
        records = [decision(rng, i) for i in range(args.appends)]

        def one_by_one():
            for actor, action, data in records:
                audit.append(actor, action, **data)

        _, wall, cpu = timed(one_by_one)
        res["append"] = {"entries": args.appends, "seconds": round(wall, 3),
                         "entries_per_s": round(args.appends / wall),
                         "ms_per_entry": round(wall / args.appends * 1e3, 3),
                         "cpu_ms_per_entry": round(cpu / args.appends * 1e3, 3)}

        # 2. batches
        audit = AuditLog(work / "batched.jsonl", signer=key)
        n_batched = args.appends * 10
        records = [decision(rng, i) for i in range(n_batched)]

        def batched():
            for start in range(0, n_batched, args.batch):
                audit.append_many(records[start:start + args.batch])

        _, wall, cpu = timed(batched)
        res["append_many"] = {"entries": n_batched, "batch": args.batch, "seconds": round(wall, 3),
                              "entries_per_s": round(n_batched / wall),
                              "cpu_us_per_entry": round(cpu / n_batched * 1e6, 1)}

        # 3. the bulk path: 1,000,000 entries
        big = AuditLog(work / "audit.jsonl", signer=key, checkpoint_every=1000)
        chunk = 10_000

        wall = cpu = 0.0
        for start in range(0, args.entries, chunk):  # records made outside the timed calls
            batch = [decision(rng, start + i) for i in range(min(chunk, args.entries - start))]
            _, w, c = timed(lambda batch=batch: big.append_many(batch))
            wall, cpu = wall + w, cpu + c
        size = big.path.stat().st_size
        res["bulk_write"] = {"entries_requested": args.entries, "seconds": round(wall, 2),
                             "cpu_seconds": round(cpu, 2), "entries_per_s": round(args.entries / wall),
                             "MB": round(size / 1e6, 1), "bytes_per_line": None}

        # 4. verify it, with the public key
        result, wall, cpu = timed(lambda: verify_audit(big.path, public_key_pem=pub))
        if not result.ok:
            print(f"verification failed: {result}", file=sys.stderr)
            return 1
        res["bulk_write"]["bytes_per_line"] = round(size / result.n_entries)
        res["verify"] = {"entries": result.n_entries, "checkpoints_verified": result.checkpoints_verified,
                         "MB": round(size / 1e6, 1), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                         "MB_per_s": round(size / 1e6 / wall, 1), "entries_per_s": round(result.n_entries / wall),
                         "cpu_us_per_entry": round(cpu / result.n_entries * 1e6, 2)}

        # 5. trace one UID through the log
        probe = json.loads(big.path.open("rb").readlines(2000)[3])["data"]["series"]
        found, wall, cpu = timed(lambda: list(find_audit(big.path, probe)))
        res["find"] = {"matches": len(found), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = round(os.getloadavg()[0], 2)

    OUT.mkdir(exist_ok=True)
    (OUT / "audit.json").write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    a, m, w, v, f = res["append"], res["append_many"], res["bulk_write"], res["verify"], res["find"]
    print(f"machine: {res['machine']}, Python {res['python']}; 1-min load {res['load_before']} before, "
          f"{res['load_after']} after")
    print(f"append (fsync + signed head per entry, the default): {a['entries_per_s']:,} entries/s "
          f"({a['ms_per_entry']} ms each, {a['cpu_ms_per_entry']} ms CPU) over {a['entries']:,}")
    print(f"append_many, batches of {m['batch']}: {m['entries_per_s']:,} entries/s over {m['entries']:,}")
    print(f"bulk write (batches of 10,000): {w['entries_requested']:,} entries, {w['MB']} MB "
          f"({w['bytes_per_line']} B/line) in {w['seconds']} s ({w['entries_per_s']:,}/s; {w['cpu_seconds']} s CPU)")
    print(f"verify_audit with the public key: {v['entries']:,} entries ({v['checkpoints_verified']:,} signed "
          f"checkpoints), {v['MB']} MB in {v['seconds']} s ({v['MB_per_s']} MB/s, {v['entries_per_s']:,} entries/s; "
          f"{v['cpu_seconds']} s CPU, {v['cpu_us_per_entry']} µs CPU per entry)")
    print(f"find_audit of one series UID: {f['matches']} match(es) in {f['seconds']} s ({f['cpu_seconds']} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

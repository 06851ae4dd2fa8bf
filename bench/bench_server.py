"""Benchmark: the workstation server under 50 simulated users and 20 concurrent annotators (loopback).

Run ``.venv/bin/python bench/bench_server.py`` from the repository root.

A workspace is generated in ``bench/out/server/`` (removed afterwards unless ``--keep``): ``--subjects``
(default 40) MR series of 128×128×40 int16 as DICOM (one file per slice) with a clinical table, one
cohort, a frozen version, a project, 50 viewers and 20 annotators. The real server runs in a
subprocess (``sobre serve``, uvicorn, one process) and is driven over HTTP by an async client
(httpx) in this process; both share the machine's cores.

1. **Browsing**: ``--users`` (50) users log in, then for ``--seconds`` (30) each repeats, with a think
   time of 0.2–1 s between requests (a person clicking): list projects, list series (half of the
   time with a filter), list subjects, open a series' metadata, its thumbnail, and load its voxels
   (``/volume``, 1.3 MB). Latency per kind of request: p50, p95, p99, max; errors (any status other
   than 200).
2. **Annotating**: ``--annotators`` (20) save masks concurrently, 5 on each of 4 series, all on the
   same annotation, each starting from the version it last saw; a 409 (someone saved first) makes it
   reload the head and save again. Counted: saves answered 201, answered 409, anything else; then the
   catalog is read: every 201 must be a stored version with its hash, and nothing else stored
   (0 lost updates).

The 1-minute load average (``uptime``) is printed before and after. ``--json`` prints the figures
as JSON; they also go to ``bench/out/server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PASSWORD = "bench password 1234"
SCHEMA = {"segments": [{"name": "lesion", "value": 1}, {"name": "organ", "value": 2}],
          "labels": [{"name": "abnormal", "kind": "binary"}]}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build(root: Path, subjects: int, users: int, annotators: int) -> None:
    import sobre
    from sobre.catalog import Workspace

    data = root / "data"
    rng = np.random.default_rng(1)
    rows = ["subject_id,diagnosis,score"]
    for n in range(subjects):
        arr = (rng.normal(300, 80, (128, 128, 40))).astype(np.int16)
        aff = np.diag([1.2, 1.2, 3.0, 1.0])
        aff[:3, 3] = (-76.0, -76.0, -60.0)
        sid = f"B{n:03d}"
        sobre.write_dicom_series(sobre.Image(arr, aff, modality="MR"), data / sid,
                                 meta={"patient_id": sid, "patient_sex": "FM"[n % 2], "patient_age": f"{30 + n % 40:03d}Y",
                                       "study_date": "20240101"}, modality="MR", uid_seed=f"bench-{sid}")
        rows.append(f"{sid},{'healthy' if n % 3 else 'patient'},{n % 17}")
    (root / "clinical.csv").write_text("\n".join(rows) + "\n")
    ws = Workspace.init(root / "ws")
    ws.ingest([data], clinical=root / "clinical.csv")
    ws.cohort_create("all", 'modality == "MR"')
    ws.freeze("all")
    ws.accounts.create_project("bench", cohorts=["all"], schema=SCHEMA)
    for n in range(users):
        ws.accounts.add_user(f"user{n:02d}", PASSWORD)
        ws.accounts.grant(f"user{n:02d}", "bench", "viewer")
    for n in range(annotators):
        ws.accounts.add_user(f"ann{n:02d}", PASSWORD)
        ws.accounts.grant(f"ann{n:02d}", "bench", "annotator")
    ws.site_key()
    ws.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ws_root: Path, port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "sobre", "serve", "-w", str(ws_root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


async def login(base: str, user: str):
    import httpx

    c = httpx.AsyncClient(base_url=base, timeout=60)
    r = await c.post("/api/auth/login", json={"username": user, "password": PASSWORD})
    r.raise_for_status()
    c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return c


def pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1)}


async def browse(base: str, users: int, seconds: float, warmup: float) -> dict:
    lat: dict[str, list[float]] = {"list": [], "metadata": [], "thumbnail": [], "volume": []}
    warm: dict[str, list[float]] = {k: [] for k in lat}  # requests started after the first --warmup seconds
    errors: list[str] = []
    clients = []
    for n in range(users):  # logins one after another (Argon2 is meant to be slow)
        clients.append(await login(base, f"user{n:02d}"))
    keys = [s["key"] for s in (await clients[0].get("/api/projects/bench/series", params={"limit": 1000})).json()["items"]]
    begin = time.monotonic()
    stop = begin + seconds

    async def timed(kind: str, c, url: str, **kw):
        t = time.perf_counter()
        started = time.monotonic()
        import httpx

        try:
            r = await c.get(url, **kw)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__} {url}")
            return None
        lat[kind].append(time.perf_counter() - t)
        if started - begin >= warmup:
            warm[kind].append(lat[kind][-1])
        if r.status_code != 200:
            errors.append(f"{r.status_code} {url}")
        return r

    async def user(n: int, c):
        rng = random.Random(n)
        await asyncio.sleep(rng.random())
        while time.monotonic() < stop:
            key = rng.choice(keys)
            step = rng.randrange(6)
            if step == 0:
                await timed("list", c, "/api/projects")
            elif step == 1:
                params = {"where": f"age >= {rng.randrange(30, 70)} and sex == \"F\""} if rng.random() < 0.5 else {}
                await timed("list", c, "/api/projects/bench/series", params=params)
            elif step == 2:
                await timed("list", c, "/api/projects/bench/subjects")
            elif step == 3:
                await timed("metadata", c, f"/api/projects/bench/series/{key}")
            elif step == 4:
                await timed("thumbnail", c, f"/api/projects/bench/series/{key}/thumbnail.png")
            else:
                await timed("volume", c, f"/api/projects/bench/series/{key}/volume")
            await asyncio.sleep(0.2 + 0.8 * rng.random())

    t0 = time.perf_counter()
    await asyncio.gather(*(user(n, c) for n, c in enumerate(clients)))
    wall = time.perf_counter() - t0
    for c in clients:
        await c.aclose()
    total = sum(len(v) for v in lat.values())
    return {"users": users, "seconds": round(wall, 1), "requests": total, "requests_per_s": round(total / wall, 1),
            "errors": len(errors), "error_examples": errors[:5], **{k: pct(v) for k, v in lat.items()},
            "warm": {k: pct(v) for k, v in warm.items()}, "warmup_s": warmup}


async def annotate(base: str, annotators: int, saves: int, ws_root: Path) -> dict:
    clients = [await login(base, f"ann{n:02d}") for n in range(annotators)]
    keys = [s["key"] for s in (await clients[0].get("/api/projects/bench/series", params={"limit": 4})).json()["items"]]
    shape = (128, 128, 40)
    answered: list[tuple[int, str]] = []
    counts = {"201": 0, "409": 0, "other": 0}
    lat: list[float] = []

    async def annotator(n: int, c):
        rng = np.random.default_rng(n)
        key = keys[n % len(keys)]
        parent = None
        done = 0
        while done < saves:
            mask = np.zeros(shape, np.uint8)
            x, y, z = rng.integers(10, 100, 3)
            mask[x:x + 20, y:y + 20, z % 30:z % 30 + 8] = 1 + n % 2
            body = mask.tobytes(order="F")
            import gzip

            t = time.perf_counter()
            r = await c.post(f"/api/projects/bench/series/{key}/annotations/lesions", content=gzip.compress(body, 1),
                             params={"parent": parent} if parent else {},
                             headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
            lat.append(time.perf_counter() - t)
            if r.status_code == 201:
                counts["201"] += 1
                answered.append((r.json()["id"], r.json()["sha256"]))
                parent = r.json()["id"]
                done += 1
            elif r.status_code == 409:
                counts["409"] += 1
                parent = r.json()["head"]["id"]  # reload the newer version, then save again on top of it
            else:
                counts["other"] += 1
                done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(annotator(n, c) for n, c in enumerate(clients)))
    wall = time.perf_counter() - t0
    for c in clients:
        await c.aclose()
    from sobre.catalog import Workspace

    with Workspace.open(ws_root) as ws:
        stored = {v.id: v.sha256 for v in ws.annotations.versions(project="bench")}
    lost = [vid for vid, sha in answered if stored.get(vid) != sha]
    unanswered = sorted(set(stored) - {vid for vid, _ in answered})
    return {"annotators": annotators, "saves_each": saves, "seconds": round(wall, 1), "answered_201": counts["201"],
            "answered_409": counts["409"], "other": counts["other"], "stored_versions": len(stored),
            "lost_updates": len(lost), "stored_but_unanswered": len(unanswered), "save": pct(lat)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=10,
                    help="also report requests started after this many seconds (every series decoded once by then)")
    ap.add_argument("--annotators", type=int, default=20)
    ap.add_argument("--saves", type=int, default=10, help="saves each annotator makes")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    root = OUT / "server"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    result = {"load_before": uptime(), "cpus": os.cpu_count()}
    t = time.perf_counter()
    build(root, args.subjects, args.users, args.annotators)
    result["build_s"] = round(time.perf_counter() - t, 1)
    port = free_port()
    proc = start(root / "ws", port)
    base = f"http://127.0.0.1:{port}"
    try:
        result["browse"] = asyncio.run(browse(base, args.users, args.seconds, args.warmup))
        result["load_after_browse"] = uptime()
        result["annotate"] = asyncio.run(annotate(base, args.annotators, args.saves, root / "ws"))
    finally:
        proc.terminate()
        proc.wait(20)
    result["load_after"] = uptime()
    OUT.mkdir(exist_ok=True)
    (OUT / "server.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        b, a = result["browse"], result["annotate"]
        print(f"load before: {result['load_before']}")
        print(f"browsing: {b['users']} users, {b['seconds']} s, {b['requests']} requests "
              f"({b['requests_per_s']}/s), {b['errors']} errors")
        for title, stats in (("all requests", b), (f"after the first {b['warmup_s']:g} s", b["warm"])):
            print(f" {title}:")
            for kind in ("list", "metadata", "thumbnail", "volume"):
                s = stats[kind]
                if s.get("n"):
                    print(f"  {kind:9s} n={s['n']:5d}  p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms  "
                          f"p99 {s['p99_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms")
        print(f"annotating: {a['annotators']} annotators × {a['saves_each']} saves in {a['seconds']} s: "
              f"{a['answered_201']} stored (201), {a['answered_409']} conflicts (409), {a['other']} other; "
              f"{a['stored_versions']} versions in the catalog, {a['lost_updates']} lost, "
              f"{a['stored_but_unanswered']} stored but unanswered; save p50 {a['save']['p50_ms']} ms, "
              f"p99 {a['save']['p99_ms']} ms")
        print(f"load after: {result['load_after']}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    ok = result["browse"]["errors"] == 0 and result["annotate"]["lost_updates"] == 0 and \
        result["annotate"]["other"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

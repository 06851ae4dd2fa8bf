"""C-STORE receive throughput: ``sobre listen`` (de-identifying, ingesting) versus Orthanc.

dcmtk's ``storescu`` sends the same 1,000 instances (real CT pixels of pydicom's CT_small.dcm,
fake PHI, 4 series, about 40 kB each) over one association, first to a throw-away Orthanc, then to
``sobre listen`` on a workspace that requires de-identification (``[privacy] deidentify = true``),
alternately for ``--rounds`` rounds. Reported per run:

* ``receive``: instances / s while storescu sends (time until storescu exits: every instance
  acknowledged, i.e. stored by Orthanc, spooled or de-identified by Sobre);
* ``total`` (Sobre only): until the listener has stopped after SIGTERM, i.e. every instance is
  de-identified, verified, written and ingested into the catalog.

Both peers and storescu run with ``TCP_NODELAY=1`` (dcmtk's run-time switch to disable Nagle's
algorithm; without it every DIMSE exchange waits for a delayed ACK and both sides are capped near
10-15 instances/s). Needs the Debian packages orthanc, orthanc-dicomweb and dcmtk.

Usage::

    python bench/bench_listen.py [--instances 1000] [--rounds 2] [--json bench/out/listen.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_instances(folder: Path, n: int) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    root = "1.2.826.0.1.3680043.9.7780"
    for i in range(n):
        ds = src.copy()
        ds.PatientName = "Bench^Patient"
        ds.PatientID = "BENCH-0001"
        ds.PatientBirthDate = "19650101"
        ds.AccessionNumber = "BENCH-ACC"
        ds.InstitutionName = "Bench Hospital"
        ds.StudyInstanceUID = f"{root}.1"
        ds.SeriesInstanceUID = f"{root}.2.{i * 4 // n}"
        ds.SOPInstanceUID = f"{root}.3.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i % (n // 4 or 1) + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i % (n // 4 or 1))]
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def storescu(port: int, aec: str, folder: Path, env: dict) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(["storescu", "-aet", "BENCH", "-aec", aec, "+sd", "127.0.0.1", str(port), str(folder)],
                         capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"storescu failed ({run.returncode}): {run.stderr[-500:]}")
    return elapsed


def run_orthanc(folder: Path, n: int, env: dict, work: Path) -> dict:
    from sobre.pacs._peers import OrthancServer

    os.environ["TCP_NODELAY"] = env["TCP_NODELAY"]  # Orthanc's dcmtk reads it at start
    with OrthancServer(workdir=work) as orthanc:
        elapsed = storescu(orthanc.dicom_port, orthanc.aet, folder, env)
        stored = len(orthanc.rest("GET", "/instances"))
    if stored != n:
        raise SystemExit(f"Orthanc stored {stored} of {n} instances")
    return {"receive_s": elapsed, "receive_per_s": n / elapsed}


def run_sobre(folder: Path, n: int, env: dict, work: Path, workers: int) -> dict:
    from sobre.catalog import Workspace
    from sobre.pacs._peers import free_port

    ws = Workspace.init(work / "ws")
    with open(ws.root / "sobre.toml", "a") as fh:
        fh.write("\n[privacy]\ndeidentify = true\n")
    ws.close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sobre", "listen", "--aet", "SOBRE", "--port", str(port),
                             "-w", str(work / "ws"), "--deid-workers", str(workers), "--batch", "200"],
                            stderr=subprocess.PIPE, text=True, env=env)
    line = ""
    while "listening as SOBRE" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit("sobre listen did not start")
    t0 = time.perf_counter()
    elapsed = storescu(port, "SOBRE", folder, env)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1]
    total = time.perf_counter() - t0
    if proc.returncode != 0 or f"{n} received, 0 refused, {n} ingested" not in err:
        raise SystemExit(f"sobre listen did not ingest everything:\n{err[-800:]}")
    ws = Workspace.open(work / "ws")
    files = sum(r["n_files"] for r in ws.records(include_errors=True))
    ws.close()
    if files != n:
        raise SystemExit(f"the catalog holds {files} of {n} files")
    return {"receive_s": elapsed, "receive_per_s": n / elapsed, "total_s": total, "total_per_s": n / total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--deid-workers", type=int, default=1)
    ap.add_argument("--json", default=str(Path(__file__).parent / "out" / "listen.json"),
                    help="also write the results here (default bench/out/listen.json)")
    ns = ap.parse_args()
    for exe in ("storescu", "Orthanc"):
        if shutil.which(exe) is None:
            print(f"skipped: {exe} is not installed (Debian packages dcmtk, orthanc, orthanc-dicomweb)")
            return 0
    env = dict(os.environ, TCP_NODELAY="1", PYTHONUNBUFFERED="1")
    results: dict = {"instances": ns.instances, "machine": f"{platform.machine()}, {os.cpu_count()} CPU",
                     "load_before": os.getloadavg()[0], "orthanc": [], "sobre": []}
    with tempfile.TemporaryDirectory(prefix="sobre-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        make_instances(data, ns.instances)
        for r in range(ns.rounds):
            results["orthanc"].append(run_orthanc(data, ns.instances, env, tmp / f"orthanc{r}"))
            results["sobre"].append(run_sobre(data, ns.instances, env, tmp / f"sobre{r}", ns.deid_workers))
            o, s = results["orthanc"][-1], results["sobre"][-1]
            print(f"round {r + 1}: Orthanc {o['receive_per_s']:.0f}/s; sobre listen (de-identifying) "
                  f"{s['receive_per_s']:.0f}/s received, {s['total_per_s']:.0f}/s de-identified+ingested",
                  flush=True)
    orthanc = statistics.median(x["receive_per_s"] for x in results["orthanc"])
    sobre = statistics.median(x["receive_per_s"] for x in results["sobre"])
    total = statistics.median(x["total_per_s"] for x in results["sobre"])
    results.update(orthanc_per_s=orthanc, sobre_receive_per_s=sobre, sobre_total_per_s=total,
                   ratio_receive=sobre / orthanc, ratio_total=total / orthanc, load_after=os.getloadavg()[0])
    print(f"median of {ns.rounds}: Orthanc {orthanc:.0f} instances/s; sobre listen {sobre:.0f}/s received "
          f"({sobre / orthanc:.2f}x), {total:.0f}/s including de-identification and ingest ({total / orthanc:.2f}x); "
          f"load average {results['load_before']:.1f} -> {results['load_after']:.1f} on {os.cpu_count()} CPUs")
    if ns.json:
        Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

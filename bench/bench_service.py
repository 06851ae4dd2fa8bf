"""Benchmark: the inference service end to end, on a 300-slice 512×512 CT with a 3D segmentation model.

Run ``.venv/bin/python bench/bench_service.py`` from the repository root (needs Orthanc, dcmtk's
storescu; about 25 minutes on 2 shared cores). What it does:

1. the 300-slice 512×512 CT series of ``bench_load.py`` (``bench/out/ct300``, real lung CT anatomy);
2. a 3D lesion segmenter (MONAI U-Net, width 8) trained once on **simulated** CT lesions
   (``sobre.sim.insert_lesions``) inserted into the real pyradiomics ``lung1`` CT at 2×2×5 mm, and
   registered as the signed package ``ct-lesions-bench@1.0`` (cached in ``bench/out/service/``);
3. a throw-away Orthanc on loopback, and ``sobre service`` (one worker, the ct-lesions app with
   that package, C-STORE to Orthanc) as a separate process;
4. **latency**: ``--studies`` studies (each the CT series with new UIDs) sent one at a time with
   ``storescu``; for each, the time from the answer to its last C-STORE (the last instance
   received) to the moment the SEG is stored in Orthanc (polled every 50 ms through Orthanc's REST
   API), with the service's own breakdown (quiet period, the app's run, delivery);
5. **throughput**: ``--backlog`` studies sent back to back; studies per hour = studies / (time from
   the first instance sent to the last SEG stored) × 3600.

Results go to ``bench/out/service.json``; ``uptime`` load averages are recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "service"
SPACING = [2.0, 2.0, 5.0]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class _Done(Exception):
    """No backlog asked: the measurements end after the latency pass."""


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def train_ct_lesion_model(runs_dir: Path, *, cases: int = 12, epochs: int = 20, seed: int = 1) -> Path:
    """A 3D U-Net trained on simulated lesions inserted into the real lung1 CT at 2×2×5 mm; returns the run."""
    import sobre
    from sobre import samples
    from sobre.image import resample
    from sobre.learn import Cohort, PreprocessConfig, model_input, preprocess_image, train
    from sobre.sim import LesionConfig, insert_lesions

    lung = samples.path("pyradiomics-data") / "pyradiomics-3.1.0" / "data" / "lung1_image.nrrd"
    background = resample(sobre.load(lung), spacing=SPACING, order="linear")
    background = background.with_array(np.round(background.array).astype(np.int16))
    pre = {"resample": "spacing", "spacing": SPACING, "intensity": "percentile", "percentiles": [0.5, 99.5]}
    imgs, masks, meta, affines = [], [], [], []
    for i in range(cases):
        ct, mask, _ = insert_lesions(background, LesionConfig(lesions_per_case=(3, 5), sizes_mm=(8.0, 30.0)),
                                     seed=seed + i)
        arr, affine = model_input(ct, PreprocessConfig(**pre))  # reoriented to LPS, as predict will see it
        binary = mask.with_array((np.asarray(mask.array) > 0).astype(np.uint8))
        imgs.append(arr[0])
        masks.append(preprocess_image(binary, PreprocessConfig(**pre), mask=True)[0][0].astype(np.uint8))
        affines.append(affine)
        meta.append({"subject_id": f"sim-{i:03d}", "modality": "CT", "simulated": True})
    cohort = Cohort.from_arrays(np.stack(imgs), meta, masks=np.stack(masks), affines=affines, name="sim-ct-lesions")
    cfg = {"seed": seed, "data": {"dataset": "sim-ct-lesions"},
           "task": {"kind": "segmentation", "mask": {"equals": "mask"}, "patch": [48, 48, 16]},
           "preprocess": pre, "model": {"backbone": "unet", "width": 8, "depth": 3},
           "optim": {"epochs": epochs, "batch_size": 4, "lr": 1e-2}, "augment": [],
           "split": {"test_fraction": 0.25, "stratify": []}, "runtime": {"progress": False}}
    return train(cfg, cohort=cohort, runs_dir=runs_dir).run.path


def ensure_workspace() -> tuple[Path, str]:
    """The bench workspace with the registered package (trained once); returns (workspace, NAME@VERSION)."""
    from sobre.catalog import Workspace
    from sobre.models import Registry, register

    ws_dir = OUT / "model-ws"
    ref = "ct-lesions-bench@1.0"
    with Workspace.init(ws_dir) as ws:
        try:
            Registry(ws).get(ref)
            return ws_dir, ref
        except Exception:  # noqa: BLE001 - not there yet: train and register
            pass
        t0 = time.perf_counter()
        run = train_ct_lesion_model(ws.layout.runs)
        register(ws, run, "ct-lesions-bench", "1.0", measure=False)
        print(f"trained and registered {ref} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ws_dir, ref


def write_study(src: Path, dst: Path, n: int) -> tuple[str, int]:
    """The ct300 series with new study/series/instance UIDs (study ``n``); returns (study UID, files)."""
    import pydicom
    from pydicom.uid import generate_uid

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    files = sorted(src.glob("*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.AccessionNumber, ds.StudyID = f"BENCH-{n:03d}", f"B{n:06d}", str(n)
        ds.save_as(dst / f.name, enforce_file_format=True)
    return study, len(files)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seg_stored(orthanc, study: str) -> bool:
    found = orthanc.rest("POST", "/tools/find", json.dumps(
        {"Level": "Series", "Query": {"StudyInstanceUID": study, "Modality": "SEG"}}).encode())
    return bool(found)


def queue_breakdown(ws_dir: Path, study: str) -> dict:
    import sqlite3

    conn = sqlite3.connect(f"file:{ws_dir / 'service' / 'queue.sqlite'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        st = conn.execute("SELECT * FROM studies WHERE study_uid = ?", (study,)).fetchone()
        job = conn.execute("SELECT * FROM jobs WHERE study_uid = ?", (study,)).fetchone()
        seg = conn.execute("SELECT sent_at FROM deliveries d JOIN jobs j ON j.id = d.job_id "
                           "WHERE j.study_uid = ? AND d.kind = 'SEG'", (study,)).fetchone()
        result = json.loads(job["result"]) if job and job["result"] else {}
        return {"last_received": st["last_received"], "routed": st["completed_at"],
                "job_started": job["started_at"] if job else None, "job_finished": job["finished_at"] if job else None,
                "app_seconds": result.get("seconds"), "seg_sent": seg["sent_at"] if seg else None,
                "n_sc": sum(1 for o in result.get("outputs", []) if o["kind"] == "SC")}
    finally:
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=20, help="studies sent one at a time (latency)")
    ap.add_argument("--backlog", type=int, default=8, help="studies sent back to back (throughput)")
    ap.add_argument("--quiet", type=float, default=2.0, help="quiet period of a study (receive.quiet_seconds)")
    ap.add_argument("--min-volume", type=float, default=100.0, help="the app's min_volume_mm3 (smaller "
                    "components are dropped: the simulated-data model finds many small ones in real lungs)")
    ap.add_argument("--keep", action="store_true", help="keep the service workspace")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from bench_load import SERIES, ensure_series

    from sobre.pacs._peers import OrthancServer, free_port, orthanc_available

    why = orthanc_available()
    if why or shutil.which("storescu") is None:
        print(f"skipped: {why or 'dcmtk storescu is not installed'}")
        return 0
    desc = ensure_series()
    print(f"CT series: {desc}", flush=True)
    model_ws, ref = ensure_workspace()
    load_before = _uptime()
    work = OUT / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ws_dir = work / "ws"
    shutil.copytree(model_ws, ws_dir)  # the registered package and the site key that signed it
    shutil.rmtree(ws_dir / "service", ignore_errors=True)
    shutil.rmtree(ws_dir / "audit", ignore_errors=True)
    port = free_port()
    results = {"series": desc, "model": ref, "quiet_seconds": args.quiet, "min_volume_mm3": args.min_volume,
               "cpus": os.cpu_count(),
               "load_before": load_before}
    with OrthancServer() as orthanc:
        cfg = work / "service.toml"
        cfg.write_text(f'[receive]\nport = {port}\nquiet_seconds = {args.quiet}\n[workers]\ncount = 1\n'
                       f'[[apps]]\nname = "ct-lesions"\nmodel = "{ref}"\nconfig = {{ min_volume_mm3 = {args.min_volume:g} }}\n'
                       f'[[destinations]]\nname = "orthanc"\n'
                       f'kind = "dicom"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\naet = "ORTHANC"\n')
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        log = open(work / "service.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "sobre", "service", "-w", str(ws_dir), "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 300
            while subprocess.run(["echoscu", "-aec", "SOBRE", "127.0.0.1", str(port)],
                                 capture_output=True).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the service did not start: {(work / 'service.log').read_text()[-2000:]}")
                time.sleep(0.5)
            latencies, rows = [], []
            for n in range(args.studies):
                study, n_files = write_study(SERIES, work / "send", n)
                cpu0 = cpu_seconds(proc.pid)
                t_send = time.time()
                run = subprocess.run(["storescu", "-aet", "BENCH", "-aec", "SOBRE", "127.0.0.1", str(port),
                                      "+sd", str(work / "send")], capture_output=True, text=True)
                t_last = time.time()  # the answer to the last C-STORE: the last instance is received
                if run.returncode != 0:
                    raise SystemExit(f"storescu failed: {run.stderr[-1000:]}")
                while not seg_stored(orthanc, study):
                    if proc.poll() is not None:
                        raise SystemExit(f"the service stopped: {(work / 'service.log').read_text()[-2000:]}")
                    time.sleep(0.05)
                t_seg = time.time()
                time.sleep(1.0)  # let the SR and SC deliveries end before reading the CPU time
                cpu = cpu_seconds(proc.pid) - cpu0
                b = queue_breakdown(ws_dir, study)
                row = {"study": n, "send_s": round(t_last - t_send, 2), "latency_s": round(t_seg - t_last, 2),
                       "quiet_s": args.quiet, "app_s": b["app_seconds"],
                       "routing_s": round(b["job_started"] - b["routed"], 2) if b["job_started"] else None,
                       "proposal_to_seg_sent_s": round(b["seg_sent"] - b["job_finished"], 2) if b["seg_sent"] else None,
                       "sc_images": b["n_sc"], "service_cpu_s": round(cpu, 1)}
                rows.append(row)
                latencies.append(t_seg - t_last)
                print(f"study {n + 1:2d}/{args.studies}: sent {n_files} in {row['send_s']:.1f} s, SEG stored "
                      f"{row['latency_s']:.1f} s after the last instance (app {row['app_s']} s, {row['sc_images']} SC)",
                      flush=True)
                shutil.rmtree(work / "send")
            results["latency"] = {"n": len(latencies), "p50_s": round(float(np.percentile(latencies, 50)), 2),
                                  "p95_s": round(float(np.percentile(latencies, 95)), 2),
                                  "mean_s": round(statistics.mean(latencies), 2),
                                  "app_p50_s": round(float(np.median([r["app_s"] for r in rows])), 2),
                                  "service_cpu_s_p50": round(float(np.median([r["service_cpu_s"] for r in rows])), 1),
                                  "rows": rows}
            results["load_after_latency"] = _uptime()
            # throughput: a backlog of studies
            studies = []
            if not args.backlog:
                results["throughput"] = None
                raise _Done
            t0 = time.time()
            for n in range(args.backlog):
                study, _ = write_study(SERIES, work / "send", 1000 + n)
                if n == 0:
                    t0 = time.time()
                subprocess.run(["storescu", "-aet", "BENCH", "-aec", "SOBRE", "127.0.0.1", str(port), "+sd",
                                str(work / "send")], capture_output=True, check=True)
                studies.append(study)
            while not all(seg_stored(orthanc, s) for s in studies):
                if proc.poll() is not None:
                    raise SystemExit(f"the service stopped: {(work / 'service.log').read_text()[-2000:]}")
                time.sleep(0.2)
            elapsed = time.time() - t0
            results["throughput"] = {"studies": args.backlog, "elapsed_s": round(elapsed, 1),
                                     "studies_per_hour": round(args.backlog / elapsed * 3600, 1),
                                     "note": "includes sending each study (storescu writes are not overlapped with "
                                             "processing: one study is written to disk, then sent)"}
        except _Done:
            pass
        finally:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    results["load_after"] = _uptime()
    (HERE / "out" / "service.json").write_text(json.dumps(results, indent=2) + "\n")
    lat = results["latency"]
    print(f"\nlast instance received -> SEG stored in Orthanc, {lat['n']} studies of {desc.split(',')[0]} "
          f"(300 x 512 x 512), quiet period {args.quiet:g} s:\n  p50 {lat['p50_s']:.1f} s, p95 {lat['p95_s']:.1f} s "
          f"(the app's run: median {lat['app_p50_s']:.1f} s)")
    tp = results["throughput"]
    if tp:
        print(f"throughput: {tp['studies']} studies back to back in {tp['elapsed_s']:.0f} s = "
              f"{tp['studies_per_hour']:.0f} studies/hour on {os.cpu_count()} cores")
    cpu = lat["service_cpu_s_p50"]
    print(f"the service's CPU time per study: median {cpu:.0f} s (receive, route, run, write, send), i.e. at most "
          f"{3600 * (os.cpu_count() or 1) / cpu:.0f} studies/hour on {os.cpu_count()} cores it had to itself")
    print(f"load: before [{load_before}] after [{results['load_after']}]")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

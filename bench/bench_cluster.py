"""Cohort pipeline on this machine vs a 2-worker Dask cluster, and a projection to bigger clusters.

Run ``.venv/bin/python bench/bench_cluster.py`` from the repository root (``--sizes 1000 2000`` by default;
``--sizes 10000`` for the full cohort when the machine's time allows). Results are printed and written to
``bench/out/cluster.json``.

For each cohort size, a simulated brain cohort (DICOM, 4 mm, 2 sites, no per-subject truth files) goes through
**simulate → ingest → freeze → preprocessing cache** twice, in the same run:

``local``
    the defaults of this machine: ``simulate --jobs 1``, ingest with 2 header-reading processes, freeze, the
    cache built by 2 threads (what ``sobre train`` uses on 2 cores).
``cluster``
    a Dask scheduler and 2 single-threaded workers started as separate processes on loopback
    (``dask scheduler`` / ``dask worker``), every stage with ``compute=`` that cluster.

Measured per stage: wall time; peak memory (resident set of every process doing the job, sampled every 0.2 s:
this process and its children, which include the loopback scheduler and workers); CPU seconds of this
process's main thread and of the other processes. In the cluster run the main thread does the **serial**
work (catalog writes, series assembly, freeze hashing, cache writes, bookkeeping) and the workers (with the
scheduler) the **parallel** work: the serial fraction is ``serial / (serial + parallel)`` of that run.

The projection to 4, 16 and 64 workers is a **model, not a measurement**: per stage
``T(p) = S + P / p`` (Amdahl, S and P the measured serial and parallel CPU seconds) for stages whose
driver work follows the workers' (simulate, freeze), and ``T(p) = max(S, P / p)`` for the pipelined ones
(ingest, cache: this process writes one batch while the workers compute the next), plus the per-task
overhead measured on loopback. The single catalog writer becomes the bottleneck of ingest at
``p* = P / S`` workers, and of the whole pipeline where ``S_total`` exceeds ``P_total / p``. Network
transfer, shared-storage throughput and scheduler limits beyond 2 workers are not in the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE.parent / "tests"))  # the loopback cluster of the tests

from compute.cluster import LoopbackCluster  # noqa: E402

STAGES = ("simulate", "ingest", "freeze", "cache")
PIPELINED = ("ingest", "cache")


class Sampler:
    """Peak resident memory of a set of processes (this one, its children, extra pids), sampled in a thread."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.peak = 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        me = self.psutil.Process()
        procs = [me] + me.children(recursive=True)  # the cluster's processes are children of this one too
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.2)

    def __enter__(self) -> Sampler:
        self.peak = self._rss()
        self._th.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._th.join()


def _children_cpu() -> float:
    """User + system CPU seconds of every process started by this one (finished and running)."""
    import resource

    import psutil

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for q in psutil.Process().children(recursive=True):
        try:
            live += sum(q.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return r.ru_utime + r.ru_stime + live


def stage(name: str, results: dict, fn) -> object:
    """Run ``fn()`` as stage ``name``: wall, peak memory, this process's CPU (serial on a cluster), other
    processes' CPU (parallel: local worker processes, or the cluster's workers and scheduler)."""
    t0, c0 = time.process_time(), _children_cpu()
    start = time.perf_counter()
    with Sampler() as mem:
        rss0 = mem.peak
        out = fn()
    wall = time.perf_counter() - start
    serial = time.process_time() - t0
    parallel = _children_cpu() - c0
    results[name] = {"wall_s": round(wall, 2), "peak_rss_mib": round(mem.peak / 2**20, 1),
                     "rss_at_start_mib": round(rss0 / 2**20, 1),
                     "serial_cpu_s": round(serial, 2), "parallel_cpu_s": round(parallel, 2)}
    print(f"  {name:9s} wall {wall:8.1f} s  peak {mem.peak / 2**20:6.0f} MiB (from {rss0 / 2**20:6.0f})  "
          f"this process {serial:7.1f} s CPU  other processes {parallel:7.1f} s CPU", flush=True)
    return out


def pipeline(n: int, root: Path, compute=None) -> dict:
    from sobre.catalog import Workspace
    from sobre.learn import DataConfig, PreprocessConfig, load_cohort
    from sobre.sim import BrainCohortConfig, write_brain_cohort

    res: dict = {}
    cfg = BrainCohortConfig(subjects=n, sites=2, seed=11, resolution=4.0)
    sim_dir = root / "sim"
    rep = stage("simulate", res, lambda: write_brain_cohort(cfg, sim_dir, format="dicom", jobs=1, truth=False,
                                                            compute=compute))
    res["files"] = sum(1 for _ in (sim_dir / "dicom").rglob("*.dcm"))
    ws = Workspace.init(root / "ws")
    report = stage("ingest", res, lambda: ws.intake.ingest([sim_dir / "dicom"], compute=compute))
    assert report.new == res["files"] and not report.skipped, report.to_dict()["skipped"][:3]
    ws.cohort_create("all", 'modality == "MR"')
    ref = stage("freeze", res, lambda: ws.freeze("all"))
    res["content_hash"] = ref.content_hash
    pre = PreprocessConfig(resample="shape", shape=[40, 48, 40], intensity="zscore")
    cohort = stage("cache", res, lambda: load_cohort(ws, DataConfig(dataset="all@v1"), pre, threads=2,
                                                     compute=compute))
    res["cache_key"] = cohort.source["cache_key"]
    res["total_wall_s"] = round(sum(res[s]["wall_s"] for s in STAGES), 2)
    res["peak_rss_mib"] = max(res[s]["peak_rss_mib"] for s in STAGES)
    del rep
    ws.close()
    return res


def overhead(compute, n: int = 200) -> float:
    """Seconds per task of the cluster itself (an empty task), measured on loopback."""
    t = time.perf_counter()
    list(compute.map(abs, range(n)))
    return (time.perf_counter() - t) / n


def projection(run: dict, n_tasks: dict, per_task: float, workers=(1, 2, 4, 16, 64)) -> dict:
    """The model of the module docstring, per stage and in total, from one cluster run."""
    out = {}
    for p in workers:
        row, total = {}, 0.0
        for s in STAGES:
            S, P = run[s]["serial_cpu_s"], run[s]["parallel_cpu_s"]
            ov = n_tasks[s] * per_task / p
            t = (max(S, P / p) if s in PIPELINED else S + P / p) + ov
            row[s] = round(t, 1)
            total += t
        row["total"] = round(total, 1)
        out[p] = row
    S_all = sum(run[s]["serial_cpu_s"] for s in STAGES)
    P_all = sum(run[s]["parallel_cpu_s"] for s in STAGES)
    ing = run["ingest"]
    per_task = {"simulate_cpu_s_per_subject": round(run["simulate"]["parallel_cpu_s"] / n_tasks["simulate"], 4),
                "ingest_cpu_ms_per_file": round(1000 * ing["parallel_cpu_s"] / run["files"], 3),
                "writer_cpu_ms_per_file": round(1000 * ing["serial_cpu_s"] / run["files"], 3),
                "freeze_cpu_ms_per_file": round(1000 * run["freeze"]["serial_cpu_s"] / run["files"], 3),
                "cache_cpu_s_per_image": round(run["cache"]["parallel_cpu_s"] / n_tasks["cache"], 4)}
    return {"wall_s_model": out, "per_task": per_task, "serial_fraction": round(S_all / (S_all + P_all), 4),
            "writer_bound_at_workers": round(ing["parallel_cpu_s"] / max(ing["serial_cpu_s"], 1e-9), 1),
            "writer_files_per_s": round(run["files"] / max(ing["serial_cpu_s"], 1e-9)),
            "amdahl_limit_speedup": round((S_all + P_all) / S_all, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000], help="cohort sizes (subjects)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    import shutil

    from sobre.base import open_compute, shutdown_local_pool

    scratch = Path(args.workdir or tempfile.mkdtemp(prefix="sobre-bench-cluster-"))
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "sizes": {}}
    try:
        for n in args.sizes:
            print(f"{n} subjects (load {os.getloadavg()[0]:.1f})", flush=True)
            entry = {"load_before": round(os.getloadavg()[0], 2)}
            print(" local", flush=True)
            entry["local"] = pipeline(n, scratch / f"local-{n}")
            shutdown_local_pool(wait=True)  # its idle processes would count in the cluster run's memory
            print(" cluster (scheduler + 2 workers on loopback)", flush=True)
            with LoopbackCluster(workers=2, log_dir=scratch / f"cluster-{n}") as cluster:
                entry["cluster_idle_rss_mib"] = round(cluster.rss_bytes() / 2**20, 1)
                with open_compute(cluster.address) as compute:
                    entry["task_overhead_s"] = round(overhead(compute), 4)
                    entry["cluster"] = pipeline(n, scratch / f"cluster-{n}", compute)
            entry["load_after"] = round(os.getloadavg()[0], 2)
            same = all(entry["local"][k] == entry["cluster"][k] for k in ("files", "content_hash", "cache_key"))
            entry["identical_results"] = same
            files = entry["cluster"]["files"]
            n_tasks = {"simulate": n, "ingest": -(-files // 32), "freeze": 0, "cache": n}
            entry["projection_model"] = projection(entry["cluster"], n_tasks, entry["task_overhead_s"])
            results["sizes"][str(n)] = entry
            pm = entry["projection_model"]
            print(f"  same catalog content hash and cache key: {same}; serial fraction {pm['serial_fraction']}; "
                  f"catalog writer {pm['writer_files_per_s']} files/s, the bottleneck of ingest from "
                  f"{pm['writer_bound_at_workers']} workers", flush=True)
            for p, row in pm["wall_s_model"].items():
                print(f"  model, {p:2d} workers: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            OUT.mkdir(exist_ok=True)
            (OUT / "cluster.json").write_text(json.dumps(results, indent=1))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"written {OUT / 'cluster.json'}")
    return 0


if __name__ == "__main__":  # Dask needs the guard (worker processes may import this module)
    sys.exit(main())

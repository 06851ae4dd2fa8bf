"""A real Dask distributed cluster on loopback: one scheduler and N workers, each its own process.

Started with the ``dask scheduler`` / ``dask worker`` command lines of the test's Python, as an
administrator would start them on servers (docs/cluster.md). Used by tests/compute and by
bench/bench_cluster.py.

>>> with LoopbackCluster(workers=2) as cluster:          # doctest: +SKIP
...     cluster.address                                  # 'tcp://127.0.0.1:40123'
...     cluster.kill_worker(0)                           # SIGKILL (its nanny, if any, is killed too)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return (BIN / "dask").exists()


class LoopbackCluster:
    """Scheduler + ``workers`` worker processes on 127.0.0.1 (no nanny: a killed worker stays dead).

    ``worker_cmd_prefix``: a command each worker runs under (e.g. ``unshare`` to hide a folder),
    ``preload``: a Python file each worker imports at start (``dask worker --preload``).
    """

    def __init__(self, workers: int = 2, *, threads: int = 1, memory_limit: str = "0",
                 log_dir: str | os.PathLike | None = None, env: dict | None = None) -> None:
        self.n = workers
        self.threads = threads
        self.memory_limit = memory_limit
        self.dir = Path(log_dir or tempfile.mkdtemp(prefix="sobre-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.env.pop("PYTHONWARNINGS", None)
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    # -- lifecycle
    def start(self, timeout: float = 60.0) -> LoopbackCluster:
        sched_file = self.dir / "scheduler.json"
        sched_file.unlink(missing_ok=True)
        self.scheduler = self._spawn("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                                   "0", "--scheduler-file", str(sched_file), "--no-dashboard",
                                                   "--no-show"])
        end = time.monotonic() + timeout
        while not sched_file.exists():
            if self.scheduler.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"dask scheduler did not start: {(self.dir / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(sched_file.read_text())["address"]
        for _ in range(self.n):
            self.add_worker()
        self.wait_for_workers(self.n, timeout=end - time.monotonic())
        return self

    def add_worker(self, *, prefix: list[str] | None = None, preload: str | None = None,
                   name: str | None = None) -> subprocess.Popen:
        i = len(self.workers)
        cmd = [str(BIN / "dask"), "worker", self.address, "--nthreads", str(self.threads), "--no-nanny",
               "--no-dashboard", "--memory-limit", self.memory_limit, "--name", name or f"w{i}",
               "--local-directory", str(self.dir / f"w{i}")]
        if preload:
            cmd += ["--preload", preload]
        p = self._spawn(f"worker{i}", (prefix or []) + cmd)
        self.workers.append(p)
        return p

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s", set_as_default=False) as c:
            c.wait_for_workers(n, timeout=max(5.0, timeout))

    def kill_worker(self, i: int) -> None:
        p = self.workers[i]
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    def stop(self) -> None:
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.workers, self.scheduler = [], None

    def rss_bytes(self) -> int:
        """Resident memory of the scheduler and workers now (Linux /proc)."""
        total = 0
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.dir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

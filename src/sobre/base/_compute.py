"""Where cohort-level work runs: worker processes of this machine, or the workers of a Dask cluster.

One abstraction, :class:`Compute`, for every job that maps a function over many independent items
(header reading and hashing in ingest, de-identification, simulation, preprocessing caches of
dataset versions, batch prediction, bootstrap resamples):

``local`` (the default)
    Worker processes of this machine (:class:`LocalCompute`). Needs nothing beyond Sobre; Dask is
    never imported.
``tcp://host:8786`` (or ``tls://...``)
    The workers of a running Dask distributed scheduler (:class:`DaskCompute`), imported only then
    (``pip install 'sobre[cluster]'``).

The rules every job keeps (docs/cluster.md says why):

* **One writer.** Tasks compute and *return* results; the calling process (the driver) writes the
  catalog, in transactions, and publishes files. A worker lost mid-task leaves nothing
  half-registered: its tasks run again on another worker.
* **Shared storage.** Workers read inputs and write outputs at the same paths as the driver;
  :meth:`Compute.check_shared` proves it before anything is written.
* **Same code.** Workers must run the same Sobre version on the same Python minor version;
  checked on connection (other source files under the same version, a development checkout
  edited since the workers started, are logged as a warning).
* **Order.** :meth:`Compute.map` yields results in the order of the items, whatever order tasks
  finish in, so that a job's result does not depend on where it ran.

Progress: ``map`` calls ``progress(stage, done, total)`` as items finish, and
``progress(stage + RETRIED, n, total)`` / ``progress(stage + FAILED, n, total)`` when tasks are run
again (a lost worker, a crashed process, an exception retried) or fail for good.

>>> with open_compute("local", workers=1) as compute:
...     list(compute.map(abs, [-2, 3, -5]))
[2, 3, 5]
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import logging
import os
import platform
import re
import secrets
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sobre.errors import ConfigError, InputError, SobreError, describe_exception

from ._config import Config
from ._progress import Progress, no_progress

__all__ = ["Compute", "ComputeSettings", "LocalCompute", "DaskCompute", "open_compute", "current_compute",
           "use_compute", "opened", "shutdown_local_pool", "code_identity", "task_events", "RETRIED", "FAILED"]

log = logging.getLogger("sobre.compute")

#: Suffixes of the progress stages that count tasks run again, and tasks that failed for good.
RETRIED = " (retried)"
FAILED = " (failed)"

_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+(:\d{1,5})?$")
_NO_SHARED = object()


class ComputeSettings(Config):
    """``[compute]``: where cohort-level jobs run (see docs/cluster.md).

    Example::

        [compute]
        scheduler = "tcp://10.0.0.5:8786"   # a Dask distributed scheduler; "local" (default): this machine
        retries = 2
    """

    docs = "docs/cluster.md"

    scheduler: str = Field("local", description='"local" (worker processes of this machine) or the address of a '
                           'Dask distributed scheduler, "tcp://host:8786" or "tls://host:8786"')
    workers: int | None = Field(None, ge=1, le=1024, description="local worker processes (default: 2, at most the "
                                "cores); the cluster's workers are those started on it")
    retries: int = Field(2, ge=0, le=20, description="times a task that raised or lost its worker is run again "
                         "on a cluster before the job fails")
    connect_timeout: float = Field(10.0, gt=0, le=600, description="seconds to reach the scheduler and find a worker")

    @field_validator("scheduler")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v != "local" and not _ADDRESS.match(v):
            raise ValueError('"local" or a scheduler address such as "tcp://host:8786"')
        return v


# ----------------------------------------------------------------------------------------------- base
class Compute:
    """Maps functions over items on some workers; see the module docstring.

    Attributes
    ----------
    scheduler : str
        ``"local"`` or the scheduler's address.
    distributed : bool
        True for a Dask cluster (workers may be other machines).
    """

    scheduler = "local"
    distributed = False

    def map(self, fn: Callable, items: Iterable, *, shared: Any = _NO_SHARED, stage: str = "tasks",
            progress: Progress = no_progress, on_crash: Callable[[Any], Any] | None = None) -> Iterator:
        """Yield ``fn(item)`` (or ``fn(shared, item)``) for every item, in the order of ``items``.

        Parameters
        ----------
        fn : callable
            A module-level function (workers import it by name); with ``shared``, called as
            ``fn(shared, item)``.
        items : iterable
            Small, picklable task inputs (paths, indices, chunks of them).
        shared : object, optional
            One object every task needs (a model, a simulator, a manifest): sent once per worker,
            not once per task.
        stage, progress
            ``progress(stage, done, total)`` as items finish; ``stage + RETRIED`` and
            ``stage + FAILED`` count tasks run again and tasks failed for good.
        on_crash : callable, optional
            ``on_crash(item) -> result`` for an item whose task kills its worker process every time
            (a segfault in a decoder, memory exhausted); without it that is a
            :class:`~sobre.errors.SobreError`.

        Raises
        ------
        SobreError
            A task raised (after its retries): the task's own :class:`~sobre.errors.SobreError`, or
            one naming the exception.
        """
        raise NotImplementedError

    def check_shared(self, *, read: Iterable = (), write: Iterable = ()) -> None:
        """Prove that every worker sees ``read`` (files) and can write into ``write`` (folders) at the same paths.

        Raises :class:`~sobre.errors.InputError` naming the path and the workers that cannot,
        before anything is written. Local workers share this machine's files: nothing to check.
        """

    @property
    def n_workers(self) -> int:
        return 1

    @property
    def dashboard(self) -> str | None:
        """The address of the cluster's dashboard (None: local, or no dashboard)."""
        return None

    def describe(self) -> dict:
        """What a job ran on (recorded by runs and reports): scheduler, workers, dashboard."""
        return {"scheduler": self.scheduler, "workers": self.n_workers, "dashboard": self.dashboard}

    def close(self) -> None:
        """Let go of the workers (a cluster keeps running; local processes stay for the next job)."""

    def __enter__(self) -> Compute:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task_events(progress: Progress) -> Progress:
    """``progress`` for the retried/failed task counts of a job only (its caller counts the work done itself)."""
    def relay(stage: str, done: int, total: int | None) -> None:
        if stage.endswith((RETRIED, FAILED)):
            progress(stage, done, total)
    return relay


def _call(fn, shared, item):
    return fn(item) if shared is _NO_SHARED else fn(shared, item)


def _task_error(exc: BaseException, stage: str, item) -> SobreError:
    if isinstance(exc, SobreError):
        return exc
    return SobreError(f"a task of '{stage}' failed: {describe_exception(exc)}", found=f"item {_short(item)}",
                      fix="this is a bug in Sobre or in the function given to Compute.map; run with "
                          "scheduler = \"local\" to see the traceback")


def _short(item) -> str:
    text = repr(item)
    return text if len(text) <= 120 else text[:117] + "..."


class _Counts:
    """Done / retried / failed tasks of one map, reported through ``progress``."""

    def __init__(self, stage: str, total: int, progress: Progress) -> None:
        self.stage, self.total, self.progress = stage, total, progress
        self.done = self.retried = self.failed = 0
        self._lock = threading.Lock()
        progress(stage, 0, total)

    def finished(self) -> None:
        self.done += 1
        self.progress(self.stage, self.done, self.total)

    def retry(self, n: int = 1) -> None:
        with self._lock:
            self.retried += n
            value = self.retried
        self.progress(self.stage + RETRIED, value, self.total)

    def fail(self) -> None:
        self.failed += 1
        self.progress(self.stage + FAILED, self.failed, self.total)


# ---------------------------------------------------------------------------------------------- local
_POOL: tuple[int, object] | None = None
_LOCAL_TASK: dict = {}


def exit_with_parent(parent: int) -> None:  # pragma: no cover - runs in worker processes
    """In a worker process: leave as soon as process ``parent`` is gone (killed, crashed), never linger as an orphan.

    A daemon thread polls the parent's pid twice a second; use it as (or in) a process pool's initializer.
    """
    import time

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _worker_init(parent: int, fn=None, shared=_NO_SHARED) -> None:  # pragma: no cover - runs in the workers
    """Leave when the driver is gone (:func:`exit_with_parent`). Keep the job's function."""
    if fn is not None:
        _LOCAL_TASK["job"] = (fn, shared)
    exit_with_parent(parent)


def _local_job(item):  # pragma: no cover - runs in the workers
    fn, shared = _LOCAL_TASK["job"]
    return _call(fn, shared, item)


def _shared_pool(workers: int, *, fresh: bool = False):
    global _POOL
    from concurrent.futures import ProcessPoolExecutor

    if fresh or _POOL is None or _POOL[0] != workers:
        shutdown_local_pool()
        _POOL = (workers, ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                              initargs=(os.getpid(),)))
    return _POOL[1]


def shutdown_local_pool(wait: bool = False) -> None:
    """Stop the local worker processes kept between jobs (they are started again on demand)."""
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(wait=wait, cancel_futures=True)
        _POOL = None


atexit.register(shutdown_local_pool)


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


class LocalCompute(Compute):
    """Worker processes of this machine (``scheduler = "local"``).

    Without ``shared`` the processes are kept between jobs (started on first use, stopped at exit);
    with ``shared`` a job gets its own processes, forked with the shared object already in memory.
    A process that dies (segfault, out of memory) costs only the items that kill it: the items it
    held are run again one at a time in fresh processes, and an item that kills one alone goes to
    ``on_crash``. With ``workers=1`` everything runs in this process.
    """

    scheduler = "local"
    distributed = False

    def __init__(self, workers: int | None = None) -> None:
        self.workers = int(workers) if workers else default_workers()

    @property
    def n_workers(self) -> int:
        return self.workers

    def map(self, fn, items, *, shared=_NO_SHARED, stage="tasks", progress=no_progress, on_crash=None):
        items = list(items)
        counts = _Counts(stage, len(items), progress)
        if self.workers <= 1 or len(items) <= 1:
            for item in items:
                yield _call(fn, shared, item)
                counts.finished()
            return
        yield from self._pooled(fn, items, shared, counts, on_crash)

    def _pooled(self, fn, items, shared, counts: _Counts, on_crash):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        own: list = []

        def pool(fresh: bool = False):
            if shared is _NO_SHARED:
                return _shared_pool(self.workers, fresh=fresh)
            if fresh or not own:
                if own:
                    own.pop().shutdown(wait=False, cancel_futures=True)
                own.append(ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("fork"),
                                               initializer=_worker_init, initargs=(os.getpid(), fn, shared)))
            return own[0]

        def submit(p, item):
            return p.submit(fn, item) if shared is _NO_SHARED else p.submit(_local_job, item)

        def alone(item):
            """Run one item by itself in a fresh process; ``on_crash`` when it kills that one too."""
            try:
                return submit(pool(), item).result()
            except BrokenProcessPool:
                pool(fresh=True)
                counts.fail()
                if on_crash is None:
                    raise SobreError(f"a task of '{counts.stage}' killed its worker process", found=_short(item),
                                     fix="the item crashes the process that handles it (corrupt or hostile "
                                         "content, or memory exhausted); remove it and run again") from None
                return on_crash(item)

        window: deque = deque()
        todo = iter(items)
        try:
            def fill() -> None:
                p = pool()
                while len(window) < self.workers * 4:
                    item = next(todo, _NO_SHARED)
                    if item is _NO_SHARED:
                        return
                    window.append((item, submit(p, item)))

            fill()
            while window:
                item, fut = window.popleft()
                try:
                    results = [fut.result()]
                except BrokenProcessPool:
                    # a process died: which item killed it is unknown, so every item in flight runs again alone
                    lost = [item] + [it for it, _ in window]
                    window.clear()
                    pool(fresh=True)
                    counts.retry(len(lost))
                    results = [alone(it) for it in lost]
                except BaseException as exc:
                    counts.fail()
                    raise _task_error(exc, counts.stage, item) from exc
                fill()
                for res in results:
                    counts.finished()
                    yield res
        finally:
            for _, f in window:
                f.cancel()
            for p in own:
                p.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- dask
def code_identity() -> dict:
    """What must be equal on the driver and every worker: Sobre's version, a fingerprint of its source, Python.

    The fingerprint hashes every ``.py`` file of the installed ``sobre`` package (names and bytes), so
    that two checkouts of one version with different code are told apart.
    """
    global _IDENTITY
    sobre = sys.modules["sobre"]  # imported with this module (its parent package)
    if _IDENTITY is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
        _IDENTITY = {"source": h.hexdigest()[:16], "python": ".".join(platform.python_version_tuple()[:2])}
    return dict(_IDENTITY, sobre=sobre.__version__)  # read each time: what the process runs now


_IDENTITY: dict | None = None


def _dask_task(fn, item, shared=_NO_SHARED):  # pragma: no cover - runs on the workers
    try:
        from distributed import get_worker

        w = get_worker()
        w.log_event("sobre-task", {"key": str(w.get_current_task())})
    except Exception:  # noqa: BLE001 - counting retries is a courtesy, never a reason to fail
        pass
    return _call(fn, shared, item)


def _file_fact(path: str) -> tuple[int, int, str]:
    """Size, modification time and the hash of the first MiB: enough to tell the same file from another."""
    st = os.stat(path)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return st.st_size, st.st_mtime_ns, head


def _worker_sees(facts: dict, markers: dict, token: str, dask_worker=None) -> dict:  # pragma: no cover
    """On a worker: ``{path: problem}`` for the driver's files (``facts``) and folders (``markers``) it cannot see."""
    out = {}
    for path, fact in facts.items():
        try:
            mine = _file_fact(path)
        except OSError as exc:
            out[path] = exc.strerror or str(exc)
            continue
        if tuple(mine) != tuple(fact):
            out[path] = "another file at that path (size, time or content differ)"
    address = str(getattr(dask_worker, "address", os.getpid()))
    for folder, marker in markers.items():
        try:
            if Path(marker).read_text() != token:
                out[folder] = "another folder at that path (the driver's marker file differs)"
                continue
            Path(_reply_name(marker, address)).write_text(token)
        except OSError as exc:
            out[folder] = exc.strerror or str(exc)
    return out


def _reply_name(marker: str, address: str) -> str:
    return f"{marker}.{hashlib.sha256(address.encode()).hexdigest()[:12]}"


class DaskCompute(Compute):
    """The workers of a Dask distributed scheduler (``scheduler = "tcp://host:8786"``).

    Connecting checks, before anything is written, that the scheduler answers, that it has at least
    one worker, and that every worker runs the same Sobre (:func:`code_identity`) as this process.
    Tasks that raise or lose their worker run again (``retries``; a lost worker's tasks are
    rescheduled by Dask); results come back to this process, which alone writes.
    """

    distributed = True

    def __init__(self, address: str, *, retries: int = 2, timeout: float = 10.0) -> None:
        try:
            import distributed
        except ImportError:
            raise ConfigError(f"scheduler = {address!r} needs Dask distributed, which is not installed",
                              expected="the cluster extra", found="no module named 'distributed'",
                              fix="pip install 'sobre[cluster]' (on this machine and every worker), or use "
                                  "scheduler = \"local\"") from None
        self.scheduler = address
        self.retries = int(retries)
        self._starts: dict[str, int] = {}
        self._lock = threading.Lock()

        def unreachable(exc):
            return ConfigError(f"cannot reach the Dask scheduler at {address}", expected="a running scheduler",
                               found=describe_exception(exc) if isinstance(exc, BaseException) else exc,
                               fix="start it (`dask scheduler`, docs/cluster.md) and check the address and port, "
                                   "or use --scheduler local")

        host, _, port = address.split("://", 1)[1].rpartition(":")
        try:  # a refused connection is said at once (Dask would retry until its timeout)
            socket.create_connection((host or port, int(port) if host else 8786), timeout=timeout).close()
        except OSError as exc:
            raise unreachable(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        try:
            self.client = distributed.Client(address, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise unreachable(exc) from None
        try:
            try:
                self.client.wait_for_workers(1, timeout=timeout)
            except (TimeoutError, OSError):
                raise ConfigError(f"the Dask scheduler at {address} has no worker",
                                  expected="at least one worker", found=f"none after {timeout:g} s",
                                  fix="start workers: `dask worker " + address + "` on each machine") from None
            self._check_code()
            self.client.subscribe_topic("sobre-task", self._on_start)
        except BaseException:
            self.client.close()
            raise

    # -- connection checks
    def _check_code(self) -> None:
        mine = code_identity()
        try:
            theirs = self.client.run(code_identity)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot import Sobre at all
            raise ConfigError(f"the workers of {self.scheduler} cannot run Sobre", found=describe_exception(exc),
                              fix="install the same Sobre on every worker (pip install 'sobre[cluster]')") from None
        self.code_mismatch = sorted(addr for addr, ident in theirs.items() if ident.get("source") != mine["source"])
        if self.code_mismatch:  # same version, other files: a development checkout edited since (said, not refused)
            log.warning("%d worker(s) of %s run the same Sobre version from other source files than this process "
                        "(%s): a development checkout changed since they started? Restart them to be sure",
                        len(self.code_mismatch), self.scheduler, ", ".join(self.code_mismatch[:4]))
        for key, what in (("python", "Python"), ("sobre", "Sobre version")):
            odd = sorted(addr for addr, ident in theirs.items() if ident.get(key) != mine[key])
            if odd:
                found = ", ".join(f"{a}: {theirs[a].get(key)}" for a in odd[:4]) + (" ..." if len(odd) > 4 else "")
                raise ConfigError(f"{len(odd)} worker(s) of {self.scheduler} run another {what} than this process",
                                  expected=f"{what} {mine[key]} everywhere", found=found,
                                  fix="install the same Sobre and Python on the driver and every worker, then restart "
                                      "the workers")

    def _on_start(self, event) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        key = msg.get("key") if isinstance(msg, dict) else None
        if key:
            with self._lock:
                self._starts[key] = self._starts.get(key, 0) + 1

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    @property
    def dashboard(self) -> str | None:
        try:
            if "dashboard" not in self.client.scheduler_info(n_workers=0).get("services", {}):
                return None  # started with --no-dashboard
            return self.client.dashboard_link or None
        except Exception:  # noqa: BLE001 - no dashboard to show
            return None

    # -- shared storage
    def check_shared(self, *, read=(), write=()) -> None:
        read = [str(p) for p in dict.fromkeys(read)]
        write = [Path(p).absolute() for p in dict.fromkeys(write)]
        if not read and not write:
            return
        token = secrets.token_hex(16)
        facts = {p: _file_fact(p) for p in read}
        markers: dict[str, str] = {}
        created: list[Path] = []
        ok = False
        try:
            for d in write:
                q = d
                while not q.exists():
                    created.append(q)
                    q = q.parent
                d.mkdir(parents=True, exist_ok=True)
                m = d / f".sobre-shared-{token}"
                m.write_text(token)
                markers[str(d)] = str(m)
            seen = self.client.run(_worker_sees, facts, markers, token)
            problems: dict[str, list[str]] = {}
            for addr, probs in sorted(seen.items()):
                for path, prob in probs.items():
                    problems.setdefault(path, []).append(f"{addr}: {prob}")
                for folder, marker in markers.items():
                    if folder not in probs and not os.path.exists(_reply_name(marker, addr)):
                        problems.setdefault(folder, []).append(f"{addr}: wrote a file this machine cannot see")
            if problems:
                path, found = next(iter(problems.items()))
                more = f" (and {len(problems) - 1} other path(s))" if len(problems) > 1 else ""
                raise InputError(f"{len(found)} worker(s) of {self.scheduler} cannot see this path as this "
                                 f"machine does{more}", path=path,
                                 expected="the same files at the same path on every worker (shared storage)",
                                 found="; ".join(found[:4]),
                                 fix="mount the storage at the same path on every worker (docs/cluster.md), "
                                     "or use --scheduler local; nothing was written")
            ok = True
        finally:
            for folder in markers:
                for f in Path(folder).glob(f".sobre-shared-{token}*"):
                    with contextlib.suppress(OSError):
                        f.unlink()
            if not ok:  # folders made for the check go again: a refused job leaves nothing behind
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()

    # -- map
    def map(self, fn, items, *, shared=_NO_SHARED, stage="tasks", progress=no_progress, on_crash=None):
        from distributed import KilledWorker

        items = list(items)
        counts = _Counts(stage, len(items), progress)
        if not items:
            return
        client = self.client
        extra = () if shared is _NO_SHARED else (client.scatter(shared, hash=False),)
        name = re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")[:40] or "tasks"
        token = secrets.token_hex(6)
        window = max(8, 4 * sum(w.get("nthreads", 1) for w in
                                client.scheduler_info(n_workers=-1).get("workers", {}).values()))
        pending: deque = deque()
        todo = iter(enumerate(items))
        keys: list[str] = []

        def submit(i, item):
            key = f"sobre-{name}-{token}-{i}"
            keys.append(key)
            return client.submit(_dask_task, fn, item, *extra, key=key, retries=self.retries, pure=False)

        def fill() -> None:
            while len(pending) < window:
                nxt = next(todo, None)
                if nxt is None:
                    return
                pending.append((nxt[1], submit(*nxt)))

        reported = 0

        def report_retries() -> None:
            nonlocal reported
            with self._lock:
                again = sum(max(0, self._starts.get(k, 0) - 1) for k in keys)
            if again > reported:
                counts.retry(again - reported)
                reported = again

        try:
            fill()
            while pending:
                item, fut = pending.popleft()
                try:
                    res = fut.result()
                except KilledWorker:
                    counts.fail()
                    if on_crash is None:
                        raise SobreError(f"a task of '{stage}' killed every worker that ran it", found=_short(item),
                                         fix="the item crashes the process that handles it (corrupt or hostile "
                                             "content, or memory exhausted); remove it and run again") from None
                    res = on_crash(item)
                except BaseException as exc:
                    counts.fail()
                    if isinstance(exc, (OSError, TimeoutError)) and client.status != "running":
                        raise SobreError(f"lost the connection to the Dask scheduler at {self.scheduler}",
                                         found=describe_exception(exc),
                                         fix="nothing of the unfinished tasks was written; run the command again "
                                             "once the scheduler is back") from None
                    raise _task_error(exc, stage, item) from exc
                fut.release()
                fill()
                report_retries()
                counts.finished()
                yield res
            report_retries()
        finally:
            if pending:
                with contextlib.suppress(Exception):
                    client.cancel([f for _, f in pending])
            with self._lock:
                for k in keys:
                    self._starts.pop(k, None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic("sobre-task")
        with contextlib.suppress(Exception):
            self.client.close()


# --------------------------------------------------------------------------------------------- opening
def open_compute(scheduler: str | ComputeSettings | Compute | None = None, *, workers: int | None = None,
                 retries: int | None = None, timeout: float | None = None) -> Compute:
    """A :class:`Compute` for ``scheduler`` (``"local"``, an address, a ``[compute]`` section, or a Compute).

    ``workers`` (local processes), ``retries`` and ``timeout`` override the section's values.
    Connecting to a cluster checks the scheduler, its workers and their Sobre (see
    :class:`DaskCompute`); every failure is a :class:`~sobre.errors.ConfigError` raised before
    anything is written. Use it as a context manager.
    """
    if isinstance(scheduler, Compute):
        return scheduler
    if isinstance(scheduler, ComputeSettings):
        settings = scheduler
    else:
        settings = ComputeSettings(scheduler=scheduler or "local")
    if settings.scheduler == "local":
        return LocalCompute(workers if workers is not None else settings.workers)
    return DaskCompute(settings.scheduler, retries=settings.retries if retries is None else retries,
                       timeout=settings.connect_timeout if timeout is None else timeout)


@contextlib.contextmanager
def opened(scheduler, **kw):
    """``with opened(x) as compute``: opens ``x`` with :func:`open_compute` and closes it after, unless it was given open."""
    if isinstance(scheduler, Compute):
        yield scheduler
        return
    compute = open_compute(scheduler, **kw)
    try:
        yield compute
    finally:
        compute.close()


_CURRENT: contextvars.ContextVar[Compute | None] = contextvars.ContextVar("sobre_compute", default=None)


def current_compute() -> Compute | None:
    """The Compute set by the innermost :func:`use_compute` block (None: none, work runs locally as ever)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_compute(compute: Compute):
    """Within this block, jobs that take no explicit ``compute`` (e.g. bootstrap resampling deep inside
    ``sobre.validate.evaluate``) run on ``compute``. Scoped to the block and the current thread/context.
    """
    token = _CURRENT.set(compute)
    try:
        yield compute
    finally:
        _CURRENT.reset(token)

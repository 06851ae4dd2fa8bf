"""The running service: receivers, the study clock, the worker pool and the sender, in threads.

::

    storescu ─C-STORE─▶ Listener ─▶ ws.intake.route("dicom") ─┐
    STOW-RS  ─────────▶ StowServer ─▶ ws.intake.route("dicomweb") ┴▶ queue: instances, studies (receiving)
    clock:   quiet_seconds without a new instance ─▶ route the study: verdicts, jobs (queued)
    workers: claim a job ─▶ App.run ─▶ derived UIDs ─▶ AI annotation version ─▶ proposed (+ deliveries)
    review:  accepted | corrected | rejected (hold: deliveries only after acceptance)
    sender:  pending deliveries ─▶ C-STORE / STOW-RS ─▶ sent | retry (back-off) | dead letter

One service runs per workspace (``WS/service/service.lock``). Stopping (SIGTERM, Ctrl-C) stops
accepting, ingests what was received, lets running jobs finish for a grace period and flushes the
audit log; a job cut short is run again at the next start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from sobre.errors import SobreError, describe_exception

from ._config import CONFIG_NAME, ServiceConfig
from ._pipeline import Pipeline, ServiceError
from ._receive import StoreFailure, store_instance

__all__ = ["Service", "service_status", "retry_dead", "process_files"]

log = logging.getLogger("sobre.service")


def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise ServiceError("another inference service runs on this workspace", path=path,
                           found=f"process {holder}" if holder else None,
                           fix="stop it first (one service per workspace)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


class Service:
    """The inference service of one workspace.

    Parameters
    ----------
    ws : sobre.catalog.Workspace
    config : ServiceConfig
        See :mod:`sobre.service._config` (``service.toml``).

    Examples
    --------
    ::

        svc = Service(ws, config).start()     # listening; ports in svc.port, svc.stow_port
        ...
        svc.stop()
    """

    def __init__(self, ws, config: ServiceConfig | None = None) -> None:
        self.ws = ws
        self.config = config or ServiceConfig()
        self.pipeline: Pipeline | None = None
        self.listener = None
        self.stow = None
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._wake_workers = threading.Event()
        self._wake_sender = threading.Event()
        self._threads: list[threading.Thread] = []
        self._intake = threading.Lock()
        self._lockfile = None
        self._routes = {}
        self.started_at: float | None = None
        self.errors: list[str] = []

    @property
    def port(self) -> int | None:
        return self.listener.port if self.listener is not None else None

    @property
    def stow_port(self) -> int | None:
        return self.stow.port if self.stow is not None else None

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> "Service":
        """Load the apps and models, recover from a crash, start receiving, routing, running and sending."""
        from sobre.pacs import Listener

        cfg = self.config
        self._lockfile = _lock(self.ws.layout.service / "service.lock")
        try:
            self.pipeline = Pipeline(self.ws, cfg)
            _torch_threads(cfg.workers.threads or max(1, (os.cpu_count() or 1) // cfg.workers.count))
            self.pipeline.load_apps()
            self.pipeline.ensure_projects()
            self.pipeline.recover()
            self._routes["dicom"] = self._stack.enter_context(self.ws.intake.route("dicom"))
            self._routes["dicomweb"] = self._stack.enter_context(self.ws.intake.route("dicomweb"))
            self.pipeline.catalogue = self._catalogue
            route = self._routes["dicom"]
            self.listener = Listener(route.store, ae_title=cfg.receive.aet, host=cfg.receive.host,
                                     port=cfg.receive.port, deidentifier=route.deidentifier,
                                     on_files=self._on_cstore, batch_size=200, batch_seconds=0.5,
                                     allowed_calling_aets=cfg.receive.allowed_calling_aets)
            self.listener.start()
            if cfg.receive.stow_port is not None:
                from ._stow import StowServer

                self.stow = StowServer(self._on_stow, self.health, host=cfg.receive.host,
                                       port=cfg.receive.stow_port, max_mb=cfg.receive.max_stow_mb).start()
        except BaseException:
            self._teardown()
            raise
        self.started_at = time.time()
        self._spawn("sobre-clock", self._clock_loop)
        for i in range(cfg.workers.count):
            self._spawn(f"sobre-worker-{i + 1}", self._worker_loop)
        self._spawn("sobre-sender", self._sender_loop)
        log.info("service up: C-STORE %s on %s:%d%s; %d app(s); %d destination(s); review %s",
                 cfg.receive.aet, cfg.receive.host, self.port,
                 f", STOW-RS on :{self.stow_port}" if self.stow else "", len(self.pipeline.apps),
                 len(cfg.destinations), "holds results" if cfg.review.hold else "does not hold results")
        return self

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _guard(self, target) -> None:
        while not self._stop.is_set():
            try:
                target()
                return
            except Exception as exc:  # noqa: BLE001 - a loop must not die silently: log, pause, go on
                msg = f"{threading.current_thread().name}: {describe_exception(exc)}"
                log.exception("internal error in %s", msg)
                self.errors.append(msg)
                self._stop.wait(2.0)

    def stop(self, grace: float = 30.0) -> None:
        """Stop receiving, let running jobs finish within ``grace`` seconds, send what is due, release."""
        if self.listener is not None:
            self.listener.stop(grace=min(grace, 10.0))  # ingests what it acknowledged
        if self.stow is not None:
            self.stow.stop()
        self._stop.set()
        self._wake_workers.set()
        self._wake_sender.set()
        deadline = time.monotonic() + grace
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("still running after %.0f s: %s (their jobs run again at the next start)", grace,
                        ", ".join(alive))
        self._threads = []
        if self.pipeline is not None:
            try:
                self.pipeline.flush_audit()
            except SobreError as exc:
                log.error("audit entries left in the queue's outbox (written at the next start): %s", exc)
        self._teardown()

    def _teardown(self) -> None:
        self._stack.close()
        self._routes = {}
        if self.pipeline is not None:
            self.pipeline.queue.close()
        if self._lockfile is not None:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- receiving
    def _on_cstore(self, paths: list[str]) -> None:
        self.pipeline.receive(paths, via="C-STORE")  # catalogued when the study is complete

    def _catalogue(self, paths: list[str]):
        with self._intake:
            return self._routes["dicom"].add(paths)

    def _on_stow(self, parts: list[bytes], study: str | None, peer: str):
        stored, failed, written = [], [], []
        with self._intake:
            route = self._routes["dicomweb"]
            for data in parts:
                try:
                    path, sop_class, sop = store_instance(route, data, source=f"STOW-RS from {peer}", study=study)
                except StoreFailure as exc:
                    log.warning("STOW-RS from %s: instance refused (0x%04X): %s", peer, exc.code, exc.message)
                    failed.append((exc.sop_class, exc.sop_uid, exc.code))
                    continue
                written.append(str(path))
                stored.append((sop_class, sop))
        if written:
            self.pipeline.receive(written, via="STOW-RS", peer=peer)  # catalogued when the study is complete
        return stored, failed

    # ---------------------------------------------------------------------------- loops
    def _clock_loop(self) -> None:
        while not self._stop.is_set():
            for study in self.pipeline.due_studies():
                if self._stop.is_set():
                    break
                outcome = self.pipeline.route_study(study)
                if outcome.jobs:
                    self._wake_workers.set()
            self.pipeline.flush_audit()
            self._stop.wait(0.2)

    def _worker_loop(self) -> None:
        name = f"{os.getpid()}:{threading.current_thread().name}"
        while not self._stop.is_set():
            job = self.pipeline.claim(name)
            if job is None:
                self._wake_workers.wait(0.5)
                self._wake_workers.clear()
                continue
            self.pipeline.run_job(job)
            self._wake_sender.set()

    def _sender_loop(self) -> None:
        while not self._stop.is_set():
            self.pipeline.deliver_due()
            self._wake_sender.wait(0.25)
            self._wake_sender.clear()
        self.pipeline.deliver_due()  # what became due while stopping (one round)

    # ---------------------------------------------------------------------------- status
    def health(self) -> dict:
        st = service_status(self.pipeline.queue)
        st.update(up=True, since=self.started_at, c_store_port=self.port, stow_port=self.stow_port,
                  internal_errors=self.errors[-5:])
        return st

    def wait(self) -> None:
        """Block until :meth:`stop` is called from another thread (or a signal handler)."""
        while not self._stop.wait(0.5):
            pass


def _torch_threads(n: int) -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - apps without torch models
        return
    torch.set_num_threads(max(1, int(n)))


def service_status(queue) -> dict:
    """What the queue holds: studies, jobs by state, reviews pending, deliveries, dead letters, failures."""
    c = queue.read()

    def counts(sql):
        return {r[0]: r[1] for r in c.execute(sql).fetchall()}

    dead = [dict(r) for r in c.execute(
        "SELECT id, job_id, destination, kind, sop_uid, attempts, status, last_error FROM deliveries "
        "WHERE state = 'dead' ORDER BY id").fetchall()]
    failed = [dict(r) for r in c.execute(
        "SELECT id, app, study_uid, series_uid, attempts, error FROM jobs WHERE state = 'failed' ORDER BY id").fetchall()]
    unroutable = [dict(r) for r in c.execute(
        "SELECT study_uid, n_instances, note FROM studies WHERE state = 'complete' AND note IS NOT NULL "
        "ORDER BY completed_at").fetchall()]
    retrying = [dict(r) for r in c.execute(
        "SELECT id, job_id, destination, kind, sop_uid, attempts, next_at, last_error FROM deliveries "
        "WHERE state = 'pending' AND attempts > 0 ORDER BY id").fetchall()]
    return {
        "studies": counts("SELECT state, COUNT(*) FROM studies GROUP BY state"),
        "jobs": counts("SELECT state, COUNT(*) FROM jobs GROUP BY state"),
        "reviews": counts("SELECT review, COUNT(*) FROM jobs WHERE review IS NOT NULL GROUP BY review"),
        "deliveries": counts("SELECT state, COUNT(*) FROM deliveries GROUP BY state"),
        "dead_letters": dead, "failed_jobs": failed, "unroutable_studies": unroutable, "retrying": retrying,
        "audit_outbox": c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0],
        "ok": not (dead or failed or unroutable),
    }


def retry_dead(pipeline: Pipeline, *, destination: str | None = None, job: int | None = None) -> int:
    """Put dead deliveries back in the queue (after the destination was fixed); returns how many."""
    from ._queue import Queue

    where, args = "state = 'dead'", []
    if destination is not None:
        where += " AND destination = ?"
        args.append(destination)
    if job is not None:
        where += " AND job_id = ?"
        args.append(job)
    with pipeline.queue.tx() as c:
        rows = c.execute(f"SELECT id, job_id, destination, kind, sop_uid FROM deliveries WHERE {where}", args).fetchall()
        if not rows:
            return 0
        c.execute(f"UPDATE deliveries SET state='pending', attempts=0, next_at=0 WHERE {where}", args)
        Queue.event(c, "sobre.service", "service.retry", deliveries=[
            {"job": r["job_id"], "destination": r["destination"], "kind": r["kind"], "uid": r["sop_uid"]} for r in rows])
    pipeline.flush_audit()
    return len(rows)


def process_files(ws, config: ServiceConfig, paths: list[str], *, progress=None, deliver_rounds: bool = True) -> dict:
    """``sobre service process``: files in → through the intake → route now → run → deliver (with retries).

    The same steps as the running service, one after another, for the studies in ``paths``
    (without waiting for a quiet period). Returns a summary; raises :class:`ServiceError` when no
    series of any study is accepted by an app (after recording that, like the service).
    """
    from sobre.image import discover

    found = discover(paths)
    files = [str(f) for f in found.files]
    if not files:
        raise ServiceError("no file to process", found=", ".join(map(str, paths)), fix="give DICOM files or folders")
    lock = _lock(ws.layout.service / "service.lock")
    pipeline = Pipeline(ws, config)
    try:
        pipeline.load_apps()
        pipeline.ensure_projects()
        pipeline.recover()
        refused = []
        written = []
        with ws.intake.route("dicom") as route:
            for f in files:
                try:
                    written.append(str(store_instance(route, Path(f).read_bytes(), source=f"file {f}")[0]))
                except StoreFailure as exc:
                    refused.append({"path": f, "reason": exc.message})
            reg = pipeline.receive(written, via="file")
            pipeline.catalogue = route.add
            outcomes = [pipeline.route_study(s, warn=False) for s in dict.fromkeys(reg.studies)]
            pipeline.catalogue = None
        states = {}
        while True:
            job = pipeline.claim(f"{os.getpid()}:process")
            if job is None:
                break
            states[job["id"]] = pipeline.run_job(job)
            if states[job["id"]] == "queued":  # another try: run it at once
                with pipeline.queue.tx() as c:
                    c.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job["id"],))
        delivered = {"sent": 0, "retry": 0, "dead": 0}
        while deliver_rounds:
            pending = pipeline.queue.read().execute(
                "SELECT MIN(next_at) FROM deliveries WHERE state = 'pending'").fetchone()[0]
            if pending is None:
                break
            time.sleep(max(0.0, pending - time.time()))
            for k, v in pipeline.deliver_due().items():
                delivered[k] += v
        pipeline.flush_audit()
        summary = {"files": len(files), "stored": len(written), "refused": refused, "studies": [
            {"study": o.study, "jobs": o.jobs, "verdicts": o.verdicts, "message": o.message} for o in outcomes],
            "jobs": states, "delivered": delivered, "status": service_status(pipeline.queue)}
        unroutable = [o.message for o in outcomes if o.message]
        if unroutable and not any(o.jobs for o in outcomes):
            raise ServiceError("; ".join(unroutable),
                               fix="check the apps' rules (`sobre app check APP INPUT`) or send the series they accept")
        return summary
    finally:
        pipeline.queue.close()
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        lock.close()


def config_path(ws, given: str | Path | None) -> Path | None:
    if given is not None:
        return Path(given)
    default = ws.layout.service / CONFIG_NAME
    return default if default.exists() else None

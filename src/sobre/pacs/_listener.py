"""A DICOM C-STORE SCP (with C-ECHO) that stores, optionally de-identifies, and ingests what it receives.

Built on `pynetdicom <https://github.com/pydicom/pynetdicom>`_. For every C-STORE request the
listener decodes and checks the dataset (complete, SOP class as negotiated), de-identifies it in
memory when configured (identifiable data never reaches the disk), writes it atomically (temporary
file + rename) to ``STORE/STUDY/SERIES/SOP.dcm`` and only then answers *Success*; a bad instance
gets a failure status and leaves nothing behind. A worker thread hands the stored files to
``on_files`` (``Workspace.ingest``) in batches.

Datasets stored as received (de-identification workers, or no de-identification) are checked from
their bytes: every element within the stream, the UIDs, the pixel data length. Only when that
quick check is in doubt is the dataset decoded with pydicom, whose verdict (and failure status)
then applies; ``tests/pacs`` checks that the quick check never accepts what pydicom refuses.

With ``deid_workers=N`` (``sobre listen`` uses 1), de-identification runs in N separate processes so
that receiving and de-identifying use different CPU cores: the handler checks the instance, writes
the bytes as received to a spool folder (``STORE/.spool``, mode 0700, inside the secure zone) and
answers *Success*; a worker de-identifies, verifies, writes the result and deletes the spool file.
An instance that de-identification refuses is then moved to ``STORE/.refused`` (it cannot get a
failure status any more: it was acknowledged) and counted in :attr:`ListenerStats.refused_after_ack`.
With ``deid_workers=0`` everything happens before the answer (identifiable bytes never touch the
disk; a refusal is status 0xC212), at about half the throughput on two cores.

Shutdown (:meth:`Listener.stop`, called on SIGTERM by ``sobre listen``) stops accepting
associations, lets the open ones finish (up to a grace period), then ingests what is still queued.
A marker file (``STORE/.listener-dirty``) exists while the listener runs or while an ingest failed;
if the process died, the next start re-ingests the store (ingest is idempotent).

Status codes (PS3.4 GG.4): 0x0000 success; 0xA700 out of resources (disk); 0xA900 dataset does not
match SOP class; 0xC210 cannot understand (not decodable); 0xC211 truncated or incomplete instance;
0xC212 de-identification refused the instance (verification failed or cannot be applied).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sobre.errors import InputError, SobreError, describe_exception
from sobre.image import received_facts

from ._net import disable_nagle, on_connection
from ._workers import worker_deidentify, worker_init, worker_ready

__all__ = ["Listener", "ListenerStats", "STATUS"]

log = logging.getLogger("sobre.pacs.listener")

STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,
    "sop_class_mismatch": 0xA900,
    "cannot_understand": 0xC210,
    "incomplete": 0xC211,
    "deid_refused": 0xC212,
}
_DIRTY = ".listener-dirty"
_PARTIAL = ".partial"
_SPOOL = ".spool"
_REFUSED = ".refused"


@dataclass
class ListenerStats:
    """Counters since start (read them from any thread)."""

    received: int = 0
    failed: int = 0
    ingested: int = 0
    ingest_errors: list[str] = field(default_factory=list)
    pixel_review: list[tuple[str, list[str]]] = field(default_factory=list)
    refused_after_ack: list[tuple[str, str]] = field(default_factory=list)  # (spool file, reason)


class Listener:
    """C-STORE/C-ECHO service class provider feeding a store folder and an ingest callback.

    Parameters
    ----------
    store_dir : path
        Where received instances go (``<workspace>/incoming/dicom`` for a workspace).
    ae_title : str
        Our AE title; associations calling another title are rejected.
    host, port : str, int
        Address to listen on (``port=0`` picks a free port; see :attr:`port`).
    deidentifier : sobre.privacy.Deidentifier, optional
        De-identify every instance before it is written.
    on_files : callable, optional
        Receives lists of stored paths (batches), e.g. ``lambda p: ws.ingest(p)``.
    batch_size, batch_seconds : int, float
        A batch is handed over when it has ``batch_size`` files or ``batch_seconds`` after its
        first file.
    allowed_calling_aets : list of str, optional
        Only these peers may connect (default: any peer that calls our AE title).
    deid_workers : int
        Processes that de-identify after the answer (0: de-identify before answering; see the
        module docstring for the trade-off).
    """

    def __init__(self, store_dir: str | Path, *, ae_title: str = "SOBRE", host: str = "127.0.0.1",
                 port: int = 11112, deidentifier=None, on_files: Callable[[list[str]], object] | None = None,
                 batch_size: int = 100, batch_seconds: float = 1.0,
                 allowed_calling_aets: list[str] | None = None, deid_workers: int = 0) -> None:
        if not ae_title or len(ae_title) > 16 or not ae_title.isascii() or "\\" in ae_title:
            raise InputError("invalid AE title", expected="1 to 16 ASCII characters, no backslash",
                             found=repr(ae_title))
        self.store_dir = Path(store_dir)
        self.ae_title = ae_title
        self.host = host
        self._port = port
        self.deidentifier = deidentifier
        self.on_files = on_files
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.allowed_calling_aets = allowed_calling_aets
        self.stats = ListenerStats()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ae = None
        self._server = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.deid_workers = max(0, int(deid_workers)) if deidentifier is not None else 0
        self._pool = None
        self._inflight: threading.BoundedSemaphore | None = None
        self._pending: set = set()

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is not None:
            return self._server.server_address[1]
        return self._port

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Listener":
        """Recover leftovers of a crashed run, start the ingest worker and the server (non-blocking)."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.store_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.store_dir / _PARTIAL, ignore_errors=True)  # never acknowledged
        (self.store_dir / _PARTIAL).mkdir()
        dirty = self.store_dir / _DIRTY
        if dirty.exists() and self.on_files is not None:
            hidden = {_PARTIAL, _SPOOL, _REFUSED}
            leftovers = [str(p) for p in sorted(self.store_dir.rglob("*.dcm"))
                         if not hidden & set(p.relative_to(self.store_dir).parts)]
            if leftovers:
                log.warning("previous run did not stop cleanly: re-ingesting %d stored file(s)", len(leftovers))
                for p in leftovers:
                    self._queue.put(p)
        dirty.touch()
        spool = self.store_dir / _SPOOL
        if self.deid_workers:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            spool.mkdir(mode=0o700, exist_ok=True)
            deid = self.deidentifier
            store_path = getattr(deid.pseudonyms, "path", None)
            self._pool = ProcessPoolExecutor(
                max_workers=self.deid_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_init, initargs=(deid.key._secret, deid.profile,
                                                    str(store_path) if store_path else None))
            self._inflight = threading.BoundedSemaphore(4 * self.deid_workers + 4)
            # Start the workers now (spawn, imports) rather than on the first instance, which would
            # otherwise wait seconds while the sender's first instances pile up behind it.
            try:
                for f in [self._pool.submit(worker_ready) for _ in range(self.deid_workers)]:
                    f.result(timeout=300)
            except Exception as exc:  # noqa: BLE001 - the worker cannot start: say so before listening
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                raise SobreError("cannot start the de-identification worker process",
                                 found=f"{describe_exception(exc)}",
                                 fix="run with --deid-workers 0, or check the installation") from None
            leftovers = sorted(spool.glob("*.dcm"))
            if leftovers:
                log.warning("de-identifying %d instance(s) received before a crash", len(leftovers))
            for p in leftovers:
                self._submit(p)
        elif spool.exists() and any(spool.iterdir()):
            log.warning("%s holds instances received before a crash; start with deid workers to process them",
                        spool)

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        if self.allowed_calling_aets:
            ae.require_calling_aet = list(self.allowed_calling_aets)
        ae.maximum_pdu_size = 131072  # large PDUs: fewer, bigger reads (storescu and most SCUs honour it)
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        syntaxes = list(ALL_TRANSFER_SYNTAXES)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_OPEN, on_connection),
        ]
        self._ae = ae
        self._worker = threading.Thread(target=self._ingest_loop, name="sobre-ingest", daemon=True)
        self._worker.start()
        try:
            self._server = ae.start_server((self.host, self._port), block=False, evt_handlers=handlers)
        except OSError as exc:
            self._queue.put(None)
            raise InputError(f"cannot listen on {self.host}:{self._port}", found=str(exc),
                             fix="choose another --port, or stop the program using it") from None
        disable_nagle(self._server)
        log.info("listening as %s on %s:%d (de-identification %s)", self.ae_title, self.host, self.port,
                 "on" if self.deidentifier is not None else "off")
        return self

    def stop(self, grace: float = 10.0) -> ListenerStats:
        """Stop accepting, wait up to ``grace`` s for open associations, ingest what is queued."""
        if self._server is not None:
            self._server.shutdown()  # stops accepting; open associations keep running
            deadline = time.monotonic() + grace
            while self._ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in self._ae.active_associations:
                log.warning("aborting association with %s after %.0f s grace", assoc.requestor.ae_title, grace)
                assoc.abort()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # every acknowledged instance is de-identified and queued
            self._pool = None
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        if not self.stats.ingest_errors:
            (self.store_dir / _DIRTY).unlink(missing_ok=True)
        shutil.rmtree(self.store_dir / _PARTIAL, ignore_errors=True)
        log.info("stopped: %d received, %d refused, %d ingested", self.stats.received, self.stats.failed,
                 self.stats.ingested)
        return self.stats

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- handlers ----------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return 0x0000

    def _on_rejected(self, event) -> None:
        log.warning("association from %s:%s rejected (calling %s, called %s)",
                    event.assoc.requestor.address, event.assoc.requestor.port,
                    event.assoc.requestor.ae_title, event.assoc.acceptor.ae_title)

    def _fail(self, status: str, message: str, event) -> int:
        with self._lock:
            self.stats.failed += 1
        log.warning("C-STORE from %s refused (0x%04X): %s", event.assoc.requestor.ae_title, STATUS[status], message)
        return STATUS[status]

    def _on_store(self, event) -> int:
        ts = event.context.transfer_syntax
        facts = None
        if self._pool is not None or self.deidentifier is None:
            # the dataset is stored as received: check it from its bytes (pydicom only if in doubt)
            try:
                facts = received_facts(event.encoded_dataset(include_meta=False), ts)
            except Exception:  # noqa: BLE001 - the thorough check below decides
                facts = None
        if facts is None:
            checked = self._check_decoded(event, ts)
            if isinstance(checked, int):
                return checked
            ds, facts = checked
        else:
            ds = None
        sop_class, sop, study, series = facts
        if not sop or sop_class != str(event.context.abstract_syntax):
            return self._fail("sop_class_mismatch",
                              f"(0008,0016) SOPClassUID {sop_class or 'missing'} does not match the negotiated "
                              f"{event.context.abstract_syntax}", event)
        if sop != str(event.request.AffectedSOPInstanceUID):
            return self._fail("sop_class_mismatch", "(0008,0018) SOPInstanceUID differs from the request's", event)
        if ds is not None:
            from sobre.image import check_pixel_length

            try:
                check_pixel_length(ds, transfer_syntax=ts)
            except InputError as exc:
                return self._fail("incomplete", str(exc), event)
        return self._store(event, ds, ts, sop, study, series)

    def _check_decoded(self, event, ts):
        """Decode the received dataset and check it: ``(dataset, UIDs)`` or a failure status."""
        from sobre.image import check_raw_lengths

        try:
            ds = event.dataset  # decoded lazily: elements stay raw until a value is read
            if len(ds) == 0:
                raise ValueError("no data element")
        except Exception as exc:
            return self._fail("cannot_understand", f"undecodable dataset ({describe_exception(exc)})", event)
        try:
            check_raw_lengths(ds)  # a truncated stream: elements shorter than declared
        except InputError as exc:
            return self._fail("incomplete", str(exc), event)
        try:
            for _ in ds.iterall():  # every value decoded now: what is stored must read back
                pass
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            sop_class = str(ds.get("SOPClassUID", "") or "").strip()
            study = str(ds.get("StudyInstanceUID", "") or "no-study").strip()
            series = str(ds.get("SeriesInstanceUID", "") or "no-series").strip()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - pydicom raises many types on damaged values
            return self._fail("cannot_understand", f"undecodable dataset ({describe_exception(exc)})", event)
        return ds, (sop_class, sop, study, series)

    def _store(self, event, ds, ts, sop: str, study: str, series: str) -> int:
        from sobre.image import write_atomic

        source = f"C-STORE from {event.assoc.requestor.ae_title}"
        if self._pool is not None:
            spool_file = self.store_dir / _SPOOL / f"{sop}.dcm"
            try:
                write_atomic(spool_file, _part10(event, ts))
            except OSError as exc:
                return self._fail("out_of_resources", f"cannot write {spool_file}: {exc}", event)
            with self._lock:
                self.stats.received += 1
            self._submit(spool_file)
            return 0x0000
        try:
            if self.deidentifier is not None:
                if ds is None:
                    ds = event.dataset
                ds.file_meta = event.file_meta
                data, result = self.deidentifier.deidentify_to_bytes(ds, source=source, copy=False)
                rel = f"{result.subject}/{result.study_instance_uid}/{result.series_instance_uid}/" \
                      f"{result.sop_instance_uid}.dcm"
                if result.pixel_review:
                    with self._lock:
                        self.stats.pixel_review.append((rel, result.pixel_review))
            else:
                data = _part10(event, ts)  # the bytes as received
                rel = f"{study}/{series}/{sop}.dcm"
        except SobreError as exc:
            return self._fail("deid_refused", str(exc), event)
        except Exception as exc:
            return self._fail("deid_refused", f"{describe_exception(exc)}", event)
        target = self.store_dir / rel
        try:
            write_atomic(target, data)
        except OSError as exc:
            return self._fail("out_of_resources", f"cannot write {target}: {exc}", event)
        with self._lock:
            self.stats.received += 1
        self._queue.put(str(target))
        return 0x0000

    def _submit(self, spool_file: Path) -> None:
        self._inflight.acquire()  # back-pressure: the sender waits while workers are behind
        future = self._pool.submit(worker_deidentify, str(spool_file), str(self.store_dir))
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(lambda f, p=spool_file: self._deid_done(f, p))

    def _deid_done(self, future, spool_file: Path) -> None:
        self._inflight.release()
        with self._lock:
            self._pending.discard(future)
        try:
            target, review, error = future.result()
        except Exception as exc:  # the worker process died
            target, review, error = None, [], f"{describe_exception(exc)}"
        if error is not None:
            refused = self.store_dir / _REFUSED
            refused.mkdir(mode=0o700, exist_ok=True)
            try:
                spool_file.replace(refused / spool_file.name)
            except OSError:
                pass
            log.error("instance acknowledged but refused by de-identification, kept in %s: %s", refused, error)
            with self._lock:
                self.stats.refused_after_ack.append((str(refused / spool_file.name), error))
            return
        if review:
            with self._lock:
                self.stats.pixel_review.append((target, review))
        self._queue.put(target)

    # -- ingest worker -----------------------------------------------------------------------
    def _ingest_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            deadline = time.monotonic() + self.batch_seconds
            while len(batch) < self.batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            self._hand_over(batch)
        # drain whatever is left (stop() puts None after the last store)
        rest = []
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is not None:
                rest.append(nxt)
        for i in range(0, len(rest), self.batch_size):
            self._hand_over(rest[i:i + self.batch_size])

    def _hand_over(self, batch: list[str]) -> None:
        unique = list(dict.fromkeys(batch))
        if self.on_files is None:
            with self._lock:
                self.stats.ingested += len(unique)
            return
        try:
            self.on_files(unique)
        except Exception as exc:  # keep serving; the dirty marker makes the next start retry
            msg = f"ingest of {len(unique)} file(s) failed: {describe_exception(exc)}"
            log.error(msg)
            with self._lock:
                self.stats.ingest_errors.append(msg)
            return
        with self._lock:
            self.stats.ingested += len(unique)


def _part10(event, ts) -> bytes:
    """The received dataset as a Part 10 file: the bytes as received behind a file meta group.

    The same bytes as pynetdicom's ``event.encoded_dataset(include_meta=True)``, without building
    and encoding a file meta dataset through pydicom for every instance.
    """
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    from sobre.image import file_meta_bytes

    req = event.request
    meta = file_meta_bytes(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID), str(ts),
                           str(PYNETDICOM_IMPLEMENTATION_UID), PYNETDICOM_IMPLEMENTATION_VERSION)
    if meta is None:
        return event.encoded_dataset(include_meta=True)
    return b"".join((b"\x00" * 128, b"DICM", meta, event.encoded_dataset(include_meta=False)))

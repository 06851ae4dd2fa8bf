"""Pixel decodes in a worker process, so that they never hold the server's interpreter (GIL) or its threads.

Reading a DICOM series' headers is pure Python (tens of milliseconds per hundred files) and decoding
its pixels mostly numpy: done in the server's own threads, a few first views of series nobody had
opened yet slowed every other request (lists, metadata) behind them. Here they run in
``decode_workers`` spawned processes (1 by default), first come first served; the server's thread
that asked waits for the result without using the interpreter. The worker keeps the series' headers
(not their pixels) between decodes, as the server did.

The pool is shared by every app in the process, started on first use (or by :func:`start`), started
again if a worker dies, and stopped by :func:`shutdown` (also at exit).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import OrderedDict

from sobre.base import exit_with_parent

from ._errors import ApiError

__all__ = ["decode", "shutdown", "start"]

log = logging.getLogger("sobre.server")

_lock = threading.Lock()
_pool: tuple[int, object] | None = None


def _executor(workers: int, *, fresh: bool = False):
    global _pool
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _lock:
        if fresh or _pool is None or _pool[0] != workers:
            if _pool is not None:
                _pool[1].shutdown(wait=False, cancel_futures=False)
            ctx = multiprocessing.get_context("spawn")  # never fork a process with threads (uvicorn, sqlite)
            _pool = (workers, ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                                                  initargs=(os.getpid(),)))
        return _pool[1]


def start(workers: int = 1) -> None:
    """Start the worker processes now (they import the readers), without waiting for them."""
    _executor(workers).submit(_ready)


def shutdown() -> None:
    """Stop the worker processes (started again on the next decode)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool[1].shutdown(wait=False, cancel_futures=True)
            _pool = None


atexit.register(shutdown)


def decode(cache_key: tuple, files: list[str], t: int, *, series: str, workers: int = 1):
    """The :class:`~sobre.server._view.Volume` of ``files`` (one series), extra index ``t``; raises :class:`ApiError`.

    ``cache_key`` names the series' headers in the worker's cache (workspace, series key, file count).
    A worker that dies (a decoder's crash, the kernel's out-of-memory killer) is replaced and the
    decode tried once more; a second death is this series' problem (422).
    """
    from concurrent.futures.process import BrokenProcessPool

    for attempt in (1, 2):
        try:
            status, got = _executor(workers).submit(_decode, cache_key, files, t, series).result()
            break
        except BrokenProcessPool:
            log.warning("the decoding process stopped while decoding %s (attempt %d)", series, attempt)
            _executor(workers, fresh=True)
    else:
        raise ApiError(422, "the pixels of this series cannot be decoded",
                       found="the decoding process stopped (a decoder's crash, or out of memory)",
                       fix="check the files (sobre info); a very large series needs more memory")
    if status != "ok":
        raise ApiError(**got)
    return got


# ---------------------------------------------------------------------------------------- in the worker
_headers: OrderedDict = OrderedDict()  # cache_key -> Image (headers only)


def _ready() -> bool:  # pragma: no cover - runs in the worker
    from . import _view  # noqa: F401 - import the readers and numpy now, not on the first view
    import sobre.image  # noqa: F401
    import pydicom  # noqa: F401 - and pydicom's decoders, which sobre.image imports only when a file needs them

    return True


def _error(exc: ApiError) -> tuple[str, dict]:
    return "error", {"status": exc.status, "what": exc.what, "expected": exc.expected, "found": exc.found,
                     "fix": exc.fix, "error": exc.error, "extra": exc.extra or None}


def _decode(cache_key: tuple, files: list[str], t: int, series: str):  # pragma: no cover - runs in the worker
    try:
        img = _header_image(cache_key, files)
        return "ok", _build(img, t, series)
    except ApiError as exc:
        return _error(exc)


def _header_image(cache_key: tuple, files: list[str]):  # pragma: no cover - runs in the worker
    from sobre.errors import SobreError, describe_exception
    from sobre.image import load_all

    img = _headers.get(cache_key)
    if img is not None:
        _headers.move_to_end(cache_key)
        return img
    try:
        images = load_all(files, on_warning=lambda m: None)
    except SobreError as exc:
        raise ApiError.of(exc, 422) from None
    except Exception as exc:  # noqa: BLE001 - a reader's own error on damaged files
        raise ApiError(422, "the files of this series cannot be read", found=describe_exception(exc)) from None
    if len(images) != 1:
        raise ApiError(422, f"the files of this series read as {len(images)} volumes", expected="1",
                       found=str(len(images)), fix="its files changed since ingest; run `sobre ingest` again")
    _headers[cache_key] = images[0]
    while len(_headers) > 512:
        _headers.popitem(last=False)
    return images[0]


def _build(img, t: int, series: str):  # pragma: no cover - runs in the worker
    from sobre.errors import SobreError, describe_exception

    from ._view import build_volume

    try:
        return build_volume(img, t)
    except SobreError as exc:
        raise ApiError.of(exc, 422, extra={"series": series}) from None
    except MemoryError:
        raise ApiError(422, "this series is too large to decode in the memory available now",
                       found=f"{img.nbytes} bytes") from None
    except Exception as exc:  # noqa: BLE001 - a decoder's own error on damaged pixel data
        raise ApiError(422, "the pixels of this series cannot be decoded", found=describe_exception(exc),
                       fix="check the files (sobre info) and re-ingest them") from None
    finally:
        img.unload()

"""A small STOW-RS endpoint (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``, ``multipart/related;
type="application/dicom"``.

Every part is one Part 10 instance; each is checked, de-identified when the workspace says so and
written through the intake (:func:`~sobre.service._receive.store_instance`) before the answer, which
is the standard Store Instances Response Module (``application/dicom+json``): 200 when every
instance was stored, 202 when some failed (each with its failure reason), 409 when none was; 415
for another media type, 413 for a request larger than ``max_stow_mb``. ``GET /health`` says the
service is up. Built on FastAPI and run by uvicorn in a thread of the service.
"""


import logging
import re
import threading
import time

__all__ = ["StowServer", "parse_multipart", "MultipartError"]

log = logging.getLogger("sobre.service.stow")

_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MultipartError(ValueError):
    """A request body that is not a well-formed multipart/related message."""


def content_params(content_type: str) -> tuple[str, dict[str, str]]:
    """``("multipart/related", {"type": "application/dicom", "boundary": "..."})`` from a Content-Type."""
    main, _, rest = content_type.partition(";")
    params = {}
    for key, value in _PARAM.findall(";" + rest):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"')
        params[key.lower()] = value
    return main.strip().lower(), params


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body (RFC 2046): ``[(headers lower-cased, content), ...]``.

    >>> parse_multipart(b'--b\\r\\nContent-Type: application/dicom\\r\\n\\r\\nDATA\\r\\n--b--\\r\\n', "b")
    [({'content-type': 'application/dicom'}, b'DATA')]
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("no usable boundary in the Content-Type")
    delim = b"--" + boundary.encode("latin-1")
    pos = 0 if body.startswith(delim) else body.find(b"\r\n" + delim)
    if pos < 0:
        raise MultipartError("the body holds no part (boundary not found)")
    if pos > 0:
        pos += 2
    parts = []
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise MultipartError("a boundary line does not end")
        start = eol + 2
        end = body.find(b"\r\n" + delim, start)
        if end < 0:
            raise MultipartError("the last part is not closed by the boundary (truncated request?)")
        head_end = body.find(b"\r\n\r\n", start, end)
        headers = {}
        if body[start:start + 2] == b"\r\n":
            content_start = start + 2
        elif head_end < 0:
            raise MultipartError("a part has headers but no blank line after them")
        else:
            for line in body[start:head_end].decode("latin-1").split("\r\n"):
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip()
            content_start = head_end + 4
        parts.append((headers, body[content_start:end]))
        pos = end + 2


def store_response(stored: list[tuple[str, str]], failed: list[tuple[str, str, int]], base_url: str) -> dict:
    """PS3.18 Store Instances Response Module as DICOM JSON."""
    out: dict = {}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [uid]}}
            for cls, uid in stored]}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [cls]} if cls else {"vr": "UI"},
             "00081155": {"vr": "UI", "Value": [uid]} if uid else {"vr": "UI"},
             "00081197": {"vr": "US", "Value": [code]}} for cls, uid, code in failed]}
    out["00081190"] = {"vr": "UR", "Value": [base_url]}
    return out


class StowServer:
    """The endpoint, run by uvicorn in a background thread.

    Parameters
    ----------
    handler : callable
        ``handler(parts: list[bytes], study: str | None, peer: str) -> (stored, failed)`` with
        ``stored`` = ``[(sop_class, sop_uid)]`` and ``failed`` = ``[(sop_class, sop_uid, reason code)]``.
    health : callable
        ``health() -> dict`` for ``GET /health``.
    """

    def __init__(self, handler, health, *, host: str = "127.0.0.1", port: int = 0, max_mb: int = 2048) -> None:
        self.handler = handler
        self.health = health
        self.host = host
        self._port = port
        self.max_bytes = max_mb << 20
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is not None and getattr(self._server, "servers", None):
            return self._server.servers[0].sockets[0].getsockname()[1]
        return self._port

    def app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from starlette.concurrency import run_in_threadpool

        api = FastAPI(title="Sobre inference service (STOW-RS)", docs_url=None, redoc_url=None, openapi_url=None)

        def dicom_json(obj, status: int):
            return JSONResponse(obj, status_code=status, media_type="application/dicom+json")

        async def store(request: Request, study: str | None):
            main, params = content_params(request.headers.get("content-type", ""))
            if main != "multipart/related" or params.get("type", "application/dicom").lower() != "application/dicom":
                return JSONResponse({"error": "expected Content-Type multipart/related; type=\"application/dicom\"",
                                     "found": request.headers.get("content-type", "")}, status_code=415)
            size = int(request.headers.get("content-length") or 0)
            if size > self.max_bytes:
                return JSONResponse({"error": f"request of {size} bytes is larger than max_stow_mb"}, status_code=413)
            chunks, total = [], 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > self.max_bytes:
                    return JSONResponse({"error": "request larger than max_stow_mb"}, status_code=413)
                chunks.append(chunk)
            body = b"".join(chunks)
            try:
                parts = [content for headers, content in parse_multipart(body, params.get("boundary", ""))
                         if headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
                         == "application/dicom"]
            except MultipartError as exc:
                return JSONResponse({"error": f"not a multipart/related body: {exc}"}, status_code=400)
            del body, chunks
            peer = request.client.host if request.client else "unknown"
            stored, failed = await run_in_threadpool(self.handler, parts, study, peer)
            base = str(request.url)
            status = 200 if not failed else (202 if stored else 409)
            return dicom_json(store_response(stored, failed, base), status)

        @api.post("/dicom-web/studies")
        async def store_any(request: Request):
            return await store(request, None)

        @api.post("/dicom-web/studies/{study}")
        async def store_study(request: Request, study: str):
            return await store(request, study)

        @api.get("/health")
        async def health():
            return await run_in_threadpool(self.health)

        return api

    def start(self, timeout: float = 30) -> "StowServer":
        import uvicorn

        from sobre.errors import InputError

        config = uvicorn.Config(self.app(), host=self.host, port=self._port, log_level="warning", lifespan="off",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sobre-stow", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise InputError(f"cannot serve STOW-RS on {self.host}:{self._port}",
                                 fix="choose another --stow-port, or stop the program using it")
            if time.monotonic() > deadline:
                raise InputError("the STOW-RS endpoint did not start in time", found=f"{timeout:g} s")
            time.sleep(0.02)
        log.info("STOW-RS on http://%s:%d/dicom-web/studies", self.host, self.port)
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

"""What the browser tests and ``bench/bench_viewer.py`` share: chromium's flags and a real ``sobre serve``.

Chromium runs headless with software WebGL2 (SwiftShader); nothing downloads a browser.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = [
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",  # WebGL2 without a GPU
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic", "--disable-default-apps", "--mute-audio",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sobre_serve(ws: Path, log: Path):
    """``sobre serve -w WS`` in a subprocess on a free loopback port (its output in ``log``); yields the base URL
    once ``/api/health`` answers, and stops the server on exit."""
    port = free_port()
    with open(log, "w") as fh:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "sobre", "serve", "-w", str(ws), "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sobre serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

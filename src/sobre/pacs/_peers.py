"""Real DICOM peers on loopback, for tests and benchmarks: a throw-away Orthanc, free ports.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (and ``dcmtk`` for the senders).
:class:`OrthancServer` writes a temporary configuration (loopback only, no remote access, the
DICOMweb plugin loaded), starts ``Orthanc`` on free ports and removes everything on exit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from sobre.errors import SobreError

__all__ = ["OrthancServer", "free_port", "orthanc_available", "ORTHANC_PLUGINS"]

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_available() -> str | None:
    """``None`` if Orthanc with its DICOMweb plugin is installed, else why not (a skip message)."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package `orthanc`)"
    if not list(ORTHANC_PLUGINS.glob("libOrthancDicomWeb*")):
        return "the Orthanc DICOMweb plugin is not installed (Debian package `orthanc-dicomweb`)"
    return None


class OrthancServer:
    """A temporary Orthanc on 127.0.0.1 (context manager).

    Attributes
    ----------
    http_port, dicom_port : int
    aet : str
        Orthanc's AE title (``ORTHANC``).
    url : str
        REST root, e.g. ``http://127.0.0.1:PORT``; :attr:`dicomweb` is ``url + "/dicom-web"``.
    """

    def __init__(self, *, aet: str = "ORTHANC", modalities: dict | None = None, storage_compression: bool = False,
                 workdir: str | Path | None = None) -> None:
        why = orthanc_available()
        if why:
            raise SobreError(why, fix="apt-get install orthanc orthanc-dicomweb")
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self._modalities = modalities or {}
        self._compression = storage_compression
        self._workdir = Path(workdir) if workdir else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def start(self, timeout: float = 30) -> "OrthancServer":
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sobre-orthanc-")
            self._workdir = Path(self._tmp.name)
        root = self._workdir
        (root / "db").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "sobre-test",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "StorageCompression": self._compression,
            "Plugins": [str(ORTHANC_PLUGINS)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "DicomModalities": self._modalities,
            "DicomCheckCalledAet": True,
            "UnknownSopClassAccepted": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
            "SyncStorageArea": False,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=2))
        with open(root / "orthanc.log", "wb") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=log,
                                          stderr=subprocess.STDOUT, cwd=root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SobreError("Orthanc exited at start", found=(root / "orthanc.log").read_text()[-800:])
            try:
                with urllib.request.urlopen(self.url + "/system", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise SobreError("Orthanc did not start in time", found=f"{timeout:g} s")

    def rest(self, method: str, path: str, body: bytes | None = None):
        """Call Orthanc's REST API; returns the decoded JSON (or ``None``)."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def delete_all(self) -> None:
        """Remove every study (between tests)."""
        for sid in self.rest("GET", "/studies") or []:
            self.rest("DELETE", f"/studies/{sid}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

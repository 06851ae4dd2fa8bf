"""Helpers for the inference-service tests: generated CT studies, the service as a process, Orthanc look-ups."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from apps.helpers import phantom_image, write_ct_series

ROOT = Path(__file__).resolve().parents[2]


def ct_study(folder: Path, *, seed: int = 7, shape=(40, 36, 16), lesions: int = 2, **meta) -> list[Path]:
    """A generated CT series with ``lesions`` bright lesions (new random UIDs each call); its files."""
    img, _ = phantom_image(shape, seed=seed, lesions=lesions)
    return write_ct_series(folder, img, **meta)


def mr_study(folder: Path) -> list[Path]:
    """A generated MR series: the CT app refuses it."""
    img, _ = phantom_image((24, 24, 8), seed=3)
    return write_ct_series(folder, img.with_array(img.array - img.array.min(), modality="MR"),
                           series_description="T1 axial", body_part="HEAD")


def uid_of(path) -> str:
    from sobre.image import read_header

    return str(read_header(path).SOPInstanceUID)


def study_of(path) -> str:
    from sobre.image import read_header

    return str(read_header(path).StudyInstanceUID)


def write_config(path: Path, *, model, port: int, dest_port: int | None = None, stow_port: int | None = None,
                 quiet: float = 1.0, hold: bool = False, attempts: int = 3, backoff: float = 0.2,
                 extra: str = "") -> Path:
    text = f'''
[receive]
aet = "SOBRE"
port = {port}
quiet_seconds = {quiet}
{f"stow_port = {stow_port}" if stow_port else ""}

[review]
hold = {"true" if hold else "false"}

[delivery]
attempts = {attempts}
backoff_seconds = {backoff}
timeout_seconds = 10

[[apps]]
name = "ct-lesions"
model = "{model}"
'''
    if dest_port is not None:
        text += f'''
[[destinations]]
name = "pacs"
kind = "dicom"
host = "127.0.0.1"
port = {dest_port}
aet = "ORTHANC"
'''
    path.write_text(text + extra)
    return path


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the service exited ({proc.returncode}):\n{_tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout:g} s")


def _tail(proc) -> str:
    log = getattr(proc, "log_path", None)
    return Path(log).read_text()[-4000:] if log and Path(log).exists() else ""


def start_service(ws: Path, config: Path, port: int, log: Path) -> subprocess.Popen:
    """``sobre service -w WS --config FILE`` as a process (its stderr in ``log``); returns once it listens."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    with open(log, "ab") as fh:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "sobre", "service", "-w", str(ws), "--config", str(config)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    proc.log_path = log
    wait_port(port, proc)
    return proc


def stop_service(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the service did not stop on SIGTERM:\n{_tail(proc)}") from None
    return proc.returncode


def send_storescu(exe: str, port: int, files, aec: str = "SOBRE") -> subprocess.CompletedProcess:
    return subprocess.run([exe, "-aet", "TESTSCU", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


KINDS = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR",
         "1.2.840.10008.5.1.4.1.1.7": "SC", "1.2.840.10008.5.1.4.1.1.2": "CT"}


def orthanc_instances(orthanc, study_uid: str) -> dict[str, list[str]]:
    """``{"SEG"|"SR"|"SC"|"CT"|SOP class: [Orthanc instance ids]}`` of one study in Orthanc."""
    import json
    import urllib.request

    found = orthanc.rest("POST", "/tools/find", json.dumps(
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}).encode())
    out: dict[str, list[str]] = {}
    for iid in found or []:
        with urllib.request.urlopen(f"{orthanc.url}/instances/{iid}/metadata/SopClassUid", timeout=30) as resp:
            cls = resp.read().decode().strip()
        out.setdefault(KINDS.get(cls, cls), []).append(iid)
    return out


def orthanc_file(orthanc, instance_id: str, folder: Path) -> Path:
    import urllib.request

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{instance_id}.dcm"
    with urllib.request.urlopen(f"{orthanc.url}/instances/{instance_id}/file", timeout=30) as resp:
        path.write_bytes(resp.read())
    return path


def wait_for(predicate, timeout: float = 120, step: float = 0.2, what: str = "condition", proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the service exited ({proc.returncode}) while waiting for {what}:\n{_tail(proc)}")
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f"\n{_tail(proc)}" if proc else ""))


def queue_rows(ws_root: Path, sql: str, args=()) -> list[dict]:
    """Read the service queue from outside (as an operator would), one short connection."""
    import sqlite3

    path = ws_root / "service" / "queue.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()

"""Refused at start, with a clear message, exit status 2 and nothing written: a scheduler that does not
answer, workers with another Sobre version, files that workers cannot see."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess

import pytest

from catalog.conftest import build_cohort, dump_tables  # tests/ is on sys.path
from sobre.base import open_compute
from sobre.catalog import Workspace
from sobre.cli import main
from sobre.errors import ConfigError, InputError


def _snapshot(root) -> dict:
    """Every file under ``root`` with its content hash (SQLite side files aside: opening may create them)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal"))}


@pytest.fixture
def setup(tmp_path):
    data = build_cohort(tmp_path / "data")
    ws = Workspace.init(tmp_path / "ws")
    tables = dump_tables(ws)
    ws.close()
    before = (tables, _snapshot(tmp_path / "ws"), _snapshot(data))

    def unchanged() -> bool:
        ws = Workspace.open(tmp_path / "ws")
        try:
            tables = dump_tables(ws)
        finally:
            ws.close()
        return (tables, _snapshot(tmp_path / "ws"), _snapshot(data)) == before
    return data, tmp_path / "ws", unchanged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_refused_before_anything_is_written(setup, capsys):
    data, ws, unchanged = setup
    addr = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    assert main(["ingest", str(data), "-w", str(ws), "--scheduler", addr]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot reach the Dask scheduler at {addr}" in err and "dask scheduler" in err
    assert "Traceback" not in err
    assert unchanged()
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        open_compute(addr, timeout=2)


def test_a_malformed_scheduler_address_names_the_setting(setup, capsys):
    data, ws, unchanged = setup
    assert main(["ingest", str(data), "-w", str(ws), "--scheduler", "10.0.0.5:8786"]) == 2
    assert 'scheduler address such as "tcp://host:8786"' in capsys.readouterr().err
    assert unchanged()


def test_workers_with_another_sobre_version_are_refused(own_cluster, setup, tmp_path, capsys):
    data, ws, unchanged = setup
    preload = tmp_path / "other_version.py"
    preload.write_text("import sobre\nsobre.__version__ = '0.0.1'  # what an older installation would say\n")
    own_cluster.n = 1
    own_cluster.start()
    own_cluster.add_worker(preload=str(preload), name="old")
    own_cluster.wait_for_workers(2)
    assert main(["ingest", str(data), "-w", str(ws), "--scheduler", own_cluster.address]) == 2
    err = capsys.readouterr().err
    assert "1 worker(s) of" in err and "run another Sobre version than this process" in err
    assert "0.0.1" in err and "install the same Sobre" in err
    assert unchanged()


def _can_hide() -> list[str] | None:
    """A command prefix that runs a program in a mount namespace of its own (to hide a folder from it)."""
    if shutil.which("unshare") is None:
        return None
    base = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    ok = subprocess.run(base + ["true"], capture_output=True).returncode == 0
    return base if ok else None


def test_files_that_a_worker_cannot_see_are_refused(own_cluster, setup, capsys):
    """One worker runs where the data folder is an empty tmpfs: it does not share the driver's storage."""
    data, ws, unchanged = setup
    base = _can_hide()
    if base is None:
        pytest.skip("needs unshare (mount namespaces) to give a worker another view of the files")
    own_cluster.n = 1
    own_cluster.start()
    hide = base + ["sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(data)]
    own_cluster.add_worker(prefix=hide, name="elsewhere")
    own_cluster.wait_for_workers(2)
    assert main(["ingest", str(data), "-w", str(ws), "--scheduler", own_cluster.address]) == 2
    err = capsys.readouterr().err
    assert "1 worker(s) of" in err and "cannot see this path as this machine does" in err
    assert "No such file or directory" in err and "shared storage" in err and "nothing was written" in err
    assert unchanged()
    # a folder that workers must write into: the driver's marker file is not there for them
    with open_compute(own_cluster.address) as compute, pytest.raises(InputError, match="cannot see this path"):
        compute.check_shared(write=[data / "out"])
    assert not (data / "out").exists()  # made for the check, removed again

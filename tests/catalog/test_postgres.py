"""The same catalog on PostgreSQL: a throwaway server on a unix socket, the same scenario, the same hash.

Needs the PostgreSQL server binaries (Debian: ``apt-get install postgresql``) and psycopg 3; skipped
with a message otherwise. As root, the server runs as the ``postgres`` (or ``nobody``) user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pydicom
import pytest

import sobre
from sobre.catalog import Workspace
from sobre.errors import CatalogError

from .conftest import make_image, write_series

pytestmark = pytest.mark.peers
WHERE = 'modality == "MR" and age >= 20 and age < 40 and diagnosis == "healthy" or score > 15'


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).resolve().parent if which else None


@pytest.fixture(scope="module")
def pg_server():
    """A PostgreSQL server in a temporary folder, listening on a unix socket only; yields a URL factory."""
    pytest.importorskip("psycopg", reason="psycopg 3 is needed for PostgreSQL (pip install 'psycopg[binary]')")
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install the Debian package "
                    "'postgresql' to run the PostgreSQL catalog tests")
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="sobre-pg-"))  # under /tmp: reachable by the server's user
    sock = base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:  # the server refuses to run as root
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or shutil.which("runuser") is None:
            shutil.rmtree(base)
            pytest.skip("running as root without a 'postgres'/'nobody' user and runuser: cannot start PostgreSQL")
        pw = pwd.getpwnam(user)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", user, "--"]
    data, port = base / "data", 40000 + os.getpid() % 20000
    env = dict(os.environ, LC_ALL="C")
    try:
        subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "-E", "UTF8", "--no-locale", "-N"],
                       check=True, capture_output=True, env=env, timeout=120)
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                                 "-t", "60", "-o", f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off "
                                                   f"-c full_page_writes=off", "start"],
                       check=True, capture_output=True, env=env, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start a throwaway PostgreSQL server: {exc} {getattr(exc, 'stderr', b'')!r} {log}")

    import psycopg

    counter = iter(range(1000))

    def new_database() -> str:
        name = f"sobre_{next(counter)}"
        with psycopg.connect(host=str(sock), port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@/{name}?host={sock}&port={port}"

    yield new_database
    subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True, env=env, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _comparable(tables: dict) -> dict:
    """Natural-key dump without creation times (the two catalogs are built a few seconds apart)."""
    out = {}
    for name, rows in tables.items():
        out[name] = sorted(({k: v for k, v in r.items() if k != "created_at"} for r in rows), key=repr)
    return out


def test_same_scenario_same_hash_on_sqlite_and_postgresql(pg_server, cohort_dir, clinical_csv, tmp_path, dump):
    url = pg_server()
    hashes, dumps = {}, {}
    for kind, db in (("sqlite", None), ("postgresql", url)):
        ws = Workspace.init(tmp_path / kind, db)
        assert ws.summary()["database"] == ("sqlite" if db is None else "postgresql+psycopg")
        report = ws.ingest([cohort_dir], clinical=clinical_csv)
        assert (report.new, report.series_new, report.skipped, report.clinical_error) == (30, 5, [], None)
        c = ws.cohort_create("study-a", WHERE)
        assert sorted(m["subject_id"] for m in c["members"]) == ["S01", "S02"]
        ref = ws.freeze("study-a")
        assert ws.freeze("study-a") == ref  # unchanged: the same version
        assert ws.verify(ref.ref) == []
        hashes[kind] = ref.content_hash
        dumps[kind] = _comparable(dump(ws, natural=True))
        ws.close()
    assert hashes["sqlite"] == hashes["postgresql"]
    assert dumps["sqlite"] == dumps["postgresql"]


def test_postgresql_reopen_idempotent_and_changed_files(pg_server, cohort_copy, tmp_path, dump):
    url = pg_server()
    ws = Workspace.init(tmp_path / "ws", url)
    ws.ingest([cohort_copy])
    ws.close()
    ws = Workspace.open(tmp_path / "ws")  # the URL comes from sobre.toml
    assert ws.db_url == url
    before = dump(ws)
    report = ws.ingest([cohort_copy])
    assert (report.new, report.known) == (0, 30) and dump(ws) == before
    ws.cohort_create("ct", 'modality == "CT"')
    ws.freeze("ct")
    victim = sorted((cohort_copy / "S03_ct").iterdir())[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = bytes(len(ds.PixelData))
    ds.save_as(victim)
    with pytest.raises(CatalogError, match=rf"{victim}: file changed since it was ingested"):
        ws.freeze("ct")
    assert [p.path for p in ws.verify("ct@v1")] == [str(victim)]
    assert ws.ingest([cohort_copy]).changed == 1
    assert ws.freeze("ct").version == 2
    ws.close()


def test_postgresql_long_values_fit_their_columns(pg_server, tmp_path):
    """PostgreSQL enforces VARCHAR lengths (SQLite does not): long names and missing UIDs must still ingest."""
    url = pg_server()
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    files = write_series(deep / "nouid", {"patient_id": "L1", "series_description": "x" * 64,
                                          "institution": "I" * 64}, shape=(8, 8, 3))
    for f in files:  # no SeriesInstanceUID: a content-derived UID, not a 250-character 'file:' path
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom: invalid DA value (on purpose)
            ds.StudyDate = "2023-01-02"  # not a DICOM date; dropped rather than stored
        ds.save_as(f)
    sobre.save(make_image((6, 6, 4)), tmp_path / "vols" / (("n" * 230) + ".nii.gz"))
    ws = Workspace.init(tmp_path / "ws", url)
    report = ws.ingest([deep, tmp_path / "vols"])
    assert report.skipped == [] and report.new == 4 and report.series_new == 4  # one series per UID-less file
    recs = ws.records()
    assert all(r["series_uid"].startswith("2.25.") for r in recs)
    assert all(r["study_date"] is None for r in recs if r["format"] == "dicom")
    assert max(len(r["subject_id"]) for r in recs) == 200
    ws.close()


def test_cli_init_with_db_url(pg_server, cohort_dir, tmp_path, capsys):
    import json
    import tomllib

    from sobre.cli import main

    url = pg_server()
    assert main(["init", str(tmp_path / "ws"), "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["database"] == "postgresql+psycopg"
    assert tomllib.loads((tmp_path / "ws" / "sobre.toml").read_text())["workspace"]["database"] == url
    assert not (tmp_path / "ws" / "catalog.sqlite").exists()
    assert main(["ingest", str(cohort_dir), "-w", str(tmp_path / "ws"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new"] == 30
    assert main(["cohort", "create", "mr", "--where", 'modality == "MR"', "-w", str(tmp_path / "ws")]) == 0
    assert main(["cohort", "freeze", "mr", "-w", str(tmp_path / "ws"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["n_series"] == 4

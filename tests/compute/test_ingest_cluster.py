"""Ingest and freeze on a Dask cluster: the same catalog and content hashes as on this machine, one writer."""

from __future__ import annotations

import pytest

from catalog.conftest import build_cohort, check_consistent, dump_tables, write_series  # tests/ is on sys.path
from sobre.base import RETRIED, ProgressRecorder
from sobre.catalog import Workspace


def _data(root):
    build_cohort(root)
    for k in range(4):  # enough files for several tasks of 32 files per worker
        write_series(root / f"big{k}", {"patient_id": f"B{k}", "institution": f"Site{k % 2}"}, shape=(8, 8, 25),
                     seed=k, uid_seed=f"big{k}")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _data(tmp_path_factory.mktemp("ingest") / "data")


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    """The reference: the same folder ingested and frozen on this machine (the default)."""
    ws = Workspace.init(tmp_path_factory.mktemp("local") / "ws")
    report = ws.ingest([data], workers=2)
    tables = dump_tables(ws)
    ws.cohort_create("all", "subject_id != null")
    out = tables, report.to_dict(), ws.freeze("all").content_hash
    ws.close()
    return out


def test_ingest_and_freeze_on_the_cluster_equal_the_local_run(cluster, data, local, tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    rec = ProgressRecorder()
    report = ws.intake.ingest([data], compute=cluster.address, progress=rec)
    assert report.new == 130 and report.series_new == 9 and not report.skipped
    assert dump_tables(ws) == local[0]
    assert report.to_dict() == local[1]
    assert rec.last("reading headers") == (130, 130)
    ws.cohort_create("all", "subject_id != null")
    assert ws.freeze("all").content_hash == local[2]
    ws.close()


def test_the_workspace_setting_sends_ingest_to_the_cluster(cluster, data, local, tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    toml = ws.layout.settings
    toml.write_text(toml.read_text() + f'\n[compute]\nscheduler = "{cluster.address}"\n')
    ws.close()
    ws = Workspace.open(tmp_path / "ws")
    assert ws.settings.compute.scheduler == cluster.address
    ws.ingest([data])  # the plain Python API: the setting decides
    assert dump_tables(ws) == local[0]
    ws.close()


def test_a_worker_killed_mid_ingest_loses_and_duplicates_nothing(own_cluster, tmp_path):
    """SIGKILL one of two workers while headers are read: its tasks run again on the other one."""
    data = tmp_path / "data"
    for s in range(6):
        write_series(data / f"P{s}", {"patient_id": f"P{s}", "institution": "A"}, shape=(8, 8, 120), seed=s,
                     uid_seed=f"kill{s}")
    ref = Workspace.init(tmp_path / "ref")
    ref.ingest([data], workers=1)
    want = dump_tables(ref)
    ref.close()

    own_cluster.start()
    ws = Workspace.init(tmp_path / "ws")
    rec = ProgressRecorder()
    killed = []

    def progress(stage, done, total):
        rec(stage, done, total)
        if stage == "reading headers" and done >= 256 and not killed:  # one batch written, more in flight
            own_cluster.kill_worker(0)
            killed.append(done)

    report = ws.intake.ingest([data], compute=own_cluster.address, progress=progress)
    assert killed and report.new == 720 and not report.skipped and report.series_new == 6
    assert dump_tables(ws) == want  # nothing lost, nothing twice
    check_consistent(tmp_path / "ws" / "catalog.sqlite")
    assert (rec.last("reading headers" + RETRIED) or (0, 0))[0] >= 1  # the killed worker's task was run again
    ws.close()

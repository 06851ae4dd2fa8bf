"""When things go wrong: Orthanc down (retries, dead letter, nothing lost, a clear status, then a retry
delivers), a kill -9 of the service in the middle of a job (it runs again, nothing is sent twice), a
PACS that refuses the SEG, a study no app accepts (one clear message, a non-zero exit, nothing
half-written in the queue or the audit log)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from sobre.base import verify_audit
from sobre.pacs._peers import OrthancServer, free_port, orthanc_available

from .helpers import (
    ct_study, mr_study, orthanc_instances, queue_rows, send_storescu, start_service, stop_service, study_of,
    wait_for, write_config,
)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sobre", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_consistent(ws_root) -> None:
    """Nothing half-written: no job running, no audit entry left in the outbox, the audit chain intact."""
    assert queue_rows(ws_root, "SELECT id FROM jobs WHERE state = 'running'") == []
    assert queue_rows(ws_root, "SELECT id FROM outbox") == []
    v = verify_audit(ws_root / "audit" / "audit.jsonl")
    assert v.ok, v.problem


@pytest.mark.peers
def test_orthanc_down_retries_then_dead_letter_then_retry_delivers(tmp_path, ws, config):
    from sobre.service import process_files

    why = orthanc_available()
    if why:
        pytest.skip(why)
    pacs = OrthancServer()  # its ports are chosen; it is not started yet: nothing answers there
    cfg = config(delivery={"attempts": 3, "backoff_seconds": 0.05},
                 destinations=[{"name": "pacs", "kind": "dicom", "host": "127.0.0.1", "port": pacs.dicom_port,
                                "aet": "ORTHANC"}])
    (ws.layout.service).mkdir(parents=True, exist_ok=True)
    (ws.layout.service / "service.toml").write_text(
        f'[delivery]\nattempts = 3\nbackoff_seconds = 0.05\n[[apps]]\nname = "ct-lesions"\n'
        f'model = "{cfg.apps[0].model}"\n[[destinations]]\nname = "pacs"\nkind = "dicom"\nhost = "127.0.0.1"\n'
        f'port = {pacs.dicom_port}\naet = "ORTHANC"\n')
    files = ct_study(tmp_path / "ct", seed=5)
    summary = process_files(ws, cfg, [tmp_path / "ct"])
    assert summary["jobs"] == {1: "proposed"}
    n = summary["delivered"]["dead"]
    assert n >= 3 and summary["delivered"]["sent"] == 0  # SEG, SR and the SCs: every one dead after 3 tries
    dead = queue_rows(ws.root, "SELECT * FROM deliveries WHERE state = 'dead'")
    assert len(dead) == n and all(d["attempts"] == 3 for d in dead)
    assert all(d["last_error"].startswith(f"cannot connect to ORTHANC@127.0.0.1:{pacs.dicom_port} (Connection refused)")
               for d in dead)
    letters = sorted((ws.layout.service / "dead-letter" / "pacs").glob("*.dcm"))
    assert len(letters) == n  # nothing lost: each instance kept with a note saying why
    note = json.loads(letters[0].with_suffix(".json").read_text())
    assert note["attempts"] == 3 and note["destination"] == "pacs" and "gave up after 3 tries" in note["reason"]
    st = cli("service", "status", "-w", ws.root)
    assert st.returncode == 1
    assert f"deliveries  {n} dead" in st.stdout and "DEAD LETTER job 1 SEG" in st.stdout
    assert "sobre service retry" in st.stdout
    assert_consistent(ws.root)

    with pacs:  # the PACS is back
        r = cli("service", "retry", "--now", "-w", ws.root)
        assert r.returncode == 0, r.stdout + r.stderr
        got = orthanc_instances(pacs, study_of(files[0]))
        assert len(got["SEG"]) == 1 and len(got["SR"]) == 1 and len(got["SC"]) == n - 2
    assert queue_rows(ws.root, "SELECT id FROM deliveries WHERE state != 'sent'") == []
    assert not list((ws.layout.service / "dead-letter" / "pacs").glob("*"))
    assert cli("service", "status", "-w", ws.root).returncode == 0
    actions = [json.loads(x)["action"] for x in (ws.layout.audit_log).read_text().splitlines()]
    assert actions.count("service.dead-letter") == n and "service.retry" in actions and "service.sent" in actions
    assert_consistent(ws.root)


@pytest.mark.peers
def test_kill_9_during_a_job_runs_it_again_and_sends_nothing_twice(tmp_path, seg_run, orthanc_empty, storescu, ws):
    from sobre.service import derived_uid

    files = ct_study(tmp_path / "ct", seed=9)
    study = study_of(files[0])
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", model=seg_run, port=port, dest_port=orthanc_empty.dicom_port,
                       quiet=0.5)
    proc = start_service(ws.root, cfg, port, tmp_path / "service-1.log")
    try:
        assert send_storescu(storescu, port, files).returncode == 0
        wait_for(lambda: queue_rows(ws.root, "SELECT id FROM jobs WHERE state = 'running'"), step=0.01,
                 what="the job to start", proc=proc)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the job
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    job = queue_rows(ws.root, "SELECT * FROM jobs")[0]
    assert job["state"] == "running" and job["attempts"] == 1
    assert not orthanc_instances(orthanc_empty, study)  # nothing was sent
    proc = start_service(ws.root, cfg, port, tmp_path / "service-2.log")
    try:
        wait_for(lambda: (lambda rows: rows and all(r["state"] == "sent" for r in rows))(
            queue_rows(ws.root, "SELECT state FROM deliveries")), what="deliveries after the restart", proc=proc)
    finally:
        assert stop_service(proc) == 0
    job = queue_rows(ws.root, "SELECT * FROM jobs")[0]
    assert job["state"] == "proposed" and job["attempts"] == 2  # the interrupted try counts
    result = json.loads(job["result"])
    got = orthanc_instances(orthanc_empty, study)
    n_sc = sum(1 for o in result["outputs"] if o["kind"] == "SC")
    assert len(got["SEG"]) == 1 and len(got["SR"]) == 1 and len(got["SC"]) == n_sc  # once each
    seed = queue_rows(ws.root, "SELECT value FROM meta WHERE key = 'uid_seed'")[0]["value"]
    seg = next(o for o in result["outputs"] if o["kind"] == "SEG")
    assert seg["sop_instance_uid"] == derived_uid(f"{seed}/{job['key']}", "SEG/seg.dcm/SOPInstanceUID/0")
    entries = [json.loads(x) for x in ws.layout.audit_log.read_text().splitlines()]
    assert [e["action"] for e in entries].count("infer.decision") == 1
    recovered = [e for e in entries if e["action"] == "service.recovered"]
    assert recovered and recovered[0]["data"]["jobs_requeued"] == [job["id"]]
    assert not list((ws.layout.service / "jobs" / f"{job['id']:08d}").glob(".attempt-*"))  # no partial left
    assert_consistent(ws.root)


@pytest.mark.peers
def test_an_instance_sent_but_not_recorded_is_sent_again_as_the_same_instance(tmp_path, orthanc_empty, ws, config):
    """A crash between the PACS's answer and the queue's commit: the instance goes again, the PACS keeps one."""
    from sobre.service import Pipeline, process_files

    files = ct_study(tmp_path / "ct", seed=13)
    cfg = config(destinations=[{"name": "pacs", "kind": "dicom", "host": "127.0.0.1",
                                "port": orthanc_empty.dicom_port, "aet": "ORTHANC"}])
    process_files(ws, cfg, [tmp_path / "ct"])
    before = orthanc_instances(orthanc_empty, study_of(files[0]))
    p = Pipeline(ws, cfg)
    with p.queue.tx() as c:  # as if the service died right after sending, before recording it
        c.execute("UPDATE deliveries SET state = 'pending', sent_at = NULL")
    counts = p.deliver_due()
    assert counts["sent"] == sum(len(v) for v in before.values())
    assert orthanc_instances(orthanc_empty, study_of(files[0])) == before  # the same instances, stored once
    p.queue.close()


def _refusing_pacs(refuse_class: str):
    """A C-STORE SCP that answers 0xC000 to instances of ``refuse_class`` and stores nothing."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, StoragePresentationContexts, evt

    got = []

    def on_store(event):
        cls = str(event.context.abstract_syntax)
        got.append(cls)
        return 0xC000 if cls == refuse_class else 0x0000

    ae = AE(ae_title="PICKY")
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return server, port, got


def test_a_pacs_that_refuses_the_seg(tmp_path, seg_run, ws):
    from sobre.apps import ct_lesions  # noqa: F401  (the app the service runs)

    seg_class = "1.2.840.10008.5.1.4.1.1.66.4"
    server, port, got = _refusing_pacs(seg_class)
    try:
        ct_study(tmp_path / "ct", seed=17)
        cfg = tmp_path / "service.toml"
        cfg.write_text(f'[delivery]\nattempts = 4\nbackoff_seconds = 0.05\n[[apps]]\nname = "ct-lesions"\n'
                       f'model = "{seg_run}"\n[[destinations]]\nname = "picky"\nkind = "dicom"\nhost = "127.0.0.1"\n'
                       f'port = {port}\naet = "PICKY"\n')
        run = cli("service", "process", tmp_path / "ct", "-w", ws.root, "--config", cfg)
    finally:
        server.shutdown()
    assert run.returncode == 1, run.stdout + run.stderr
    err = [x for x in run.stderr.splitlines() if x.startswith("dead letter")]
    assert len(err) == 1  # one clear message
    assert "SEG to picky" in err[0] and "refused the instance: C-STORE 0xC000 (cannot understand)" in err[0]
    assert got.count(seg_class) == 1  # a refusal is final: no retry
    dead = queue_rows(ws.root, "SELECT * FROM deliveries WHERE state = 'dead'")
    assert [d["kind"] for d in dead] == ["SEG"] and dead[0]["attempts"] == 1 and dead[0]["status"].startswith("0xC000")
    assert {d["state"] for d in queue_rows(ws.root, "SELECT state FROM deliveries WHERE kind != 'SEG'")} == {"sent"}
    assert (ws.layout.service / "dead-letter" / "picky").is_dir()
    st = cli("service", "status", "-w", ws.root)
    assert st.returncode == 1 and "DEAD LETTER job 1 SEG" in st.stdout and "0xC000" in st.stdout
    assert_consistent(ws.root)


def test_a_study_no_app_accepts_is_one_clear_message_and_a_non_zero_exit(tmp_path, seg_run, ws):
    mr_study(tmp_path / "mr")
    cfg = tmp_path / "service.toml"
    cfg.write_text(f'[[apps]]\nname = "ct-lesions"\nmodel = "{seg_run}"\n')
    run = cli("service", "process", tmp_path / "mr", "-w", ws.root, "--config", cfg)
    assert run.returncode == 2
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: study ")
    assert "no series that an app accepts" in lines[0]
    assert "ct-lesions rule 'modality': expected modality CT; found MR" in lines[0]
    assert queue_rows(ws.root, "SELECT id FROM jobs") == []
    routes = queue_rows(ws.root, "SELECT * FROM routes")
    assert len(routes) == 1 and routes[0]["accepted"] == 0 and "modality" in routes[0]["refusals"]
    st = cli("service", "status", "-w", ws.root)
    assert st.returncode == 1 and "NOT ROUTED  study" in st.stdout
    entries = [json.loads(x) for x in ws.layout.audit_log.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["service.received", "service.route"]
    assert "no series that an app accepts" in entries[1]["data"]["message"]
    assert_consistent(ws.root)

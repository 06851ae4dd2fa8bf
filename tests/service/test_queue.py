"""The queue and its parts, without peers: transactions with their audit entries, the outbox after a crash,
derived UIDs, the multipart parser of STOW-RS, configuration errors, idempotent registration."""

from __future__ import annotations

import json
import shutil

import pytest

from sobre.base import AuditLog
from sobre.errors import ConfigError
from sobre.service import Queue, ServiceConfig, derived_uid
from sobre.service._queue import flush_audit
from sobre.service._stow import MultipartError, content_params, parse_multipart

from .helpers import ct_study


def test_a_change_and_its_audit_entry_commit_together_or_not_at_all(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(RuntimeError):
        with q.tx() as c:
            c.execute("INSERT INTO studies (study_uid, state, first_received, last_received) VALUES ('1.2', "
                      "'receiving', 0, 0)")
            Queue.event(c, "t", "x.happened", study="1.2")
            raise RuntimeError("crash inside the transaction")
    assert q.read().execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
    assert flush_audit(q, log) == 0 and list(log.entries()) == []
    with q.tx() as c:
        c.execute("INSERT INTO studies (study_uid, state, first_received, last_received) VALUES ('1.2', "
                  "'receiving', 0, 0)")
        Queue.event(c, "t", "x.happened", study="1.2")
    assert flush_audit(q, log) == 1
    [e] = list(log.entries())
    assert e.action == "x.happened" and e.data["study"] == "1.2" and len(e.data["event"]) == 32
    assert q.read().execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_entries_written_just_before_a_crash_are_not_written_twice(tmp_path):
    q = Queue(tmp_path / "q.sqlite")
    log = AuditLog(tmp_path / "audit.jsonl")
    with q.tx() as c:
        for i in range(3):
            Queue.event(c, "t", "x.step", n=i)
    rows = q.read().execute("SELECT event, actor, action, data FROM outbox ORDER BY id").fetchall()
    # the crash: the first two entries reached the log, the outbox rows were not deleted
    log.append_many([(r["actor"], r["action"], dict(json.loads(r["data"]), event=r["event"])) for r in rows[:2]])
    assert flush_audit(q, log, check_all=True) == 1
    assert [e.data["n"] for e in log.entries()] == [0, 1, 2]
    assert log.verify().ok


def test_derived_uids_are_the_same_for_the_same_job_and_follow_references(tmp_path, seg_run):
    import pydicom

    from sobre.apps import get_app
    from sobre.service._uids import remap_outputs, source_uids

    files = ct_study(tmp_path / "ct", seed=3)
    app = get_app("ct-lesions")
    res = app.run([tmp_path / "ct"], tmp_path / "out", model=str(seg_run))
    runs = []
    for k in range(2):  # the same outputs remapped twice (a second attempt of the same job)
        shutil.copytree(tmp_path / "out", tmp_path / f"copy{k}")
        outs = [(f"{o['kind']}/{o['path'].split('/')[-1]}", tmp_path / f"copy{k}" / o["path"])
                for o in res.cases[0].outputs if o["kind"] in ("SEG", "SR", "SC")]
        mapping = remap_outputs(outs, "seed/job", keep=source_uids(files))
        runs.append({role: pydicom.dcmread(p) for role, p in outs})
        assert set(mapping.values()) and all(v.startswith("2.25.") for v in mapping.values())
    a, b = runs
    assert {k: str(v.SOPInstanceUID) for k, v in a.items()} == {k: str(v.SOPInstanceUID) for k, v in b.items()}
    seg, sr = a["SEG/seg.dcm"], a["SR/sr.dcm"]
    assert str(seg.SOPInstanceUID) == derived_uid("seed/job", "SEG/seg.dcm/SOPInstanceUID/0")
    assert seg.file_meta.MediaStorageSOPInstanceUID == seg.SOPInstanceUID
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    sources = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    assert evidence == sources | {str(seg.SOPInstanceUID)}  # sources kept, the SEG followed
    assert seg.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID


def test_multipart_related_bodies():
    main, params = content_params('multipart/related; type="application/dicom"; boundary="a b"')
    assert main == "multipart/related" and params == {"type": "application/dicom", "boundary": "a b"}
    body = b"preamble\r\n--B\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--B\r\n\r\nTWO\r\n--B--"
    assert parse_multipart(body, "B") == [({"content-type": "application/dicom"}, b"ONE"), ({}, b"TWO")]
    with pytest.raises(MultipartError, match="not closed"):
        parse_multipart(b"--B\r\nContent-Type: application/dicom\r\n\r\nONE", "B")
    with pytest.raises(MultipartError, match="boundary not found"):
        parse_multipart(b"nothing here", "B")


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="app 'ct-lesions': unknown destination\\(s\\) pacs"):
        ServiceConfig(apps=[{"name": "ct-lesions", "destinations": ["pacs"]}])
    with pytest.raises(ConfigError, match="not a DICOM AE title"):
        ServiceConfig(receive={"aet": "A" * 17})
    with pytest.raises(ConfigError, match="did you mean 'quiet_seconds'"):
        ServiceConfig(receive={"quiet_second": 3})
    with pytest.raises(ConfigError, match="needs url"):
        ServiceConfig(destinations=[{"name": "web", "kind": "dicomweb"}])


def test_the_service_refuses_a_configuration_without_apps(ws):
    from sobre.service import Pipeline

    with pytest.raises(ConfigError, match="names no app"):
        Pipeline(ws, ServiceConfig()).load_apps()


def test_receiving_the_same_instances_again_does_not_reopen_the_study(tmp_path, ws, config):
    from sobre.service import Pipeline

    files = ct_study(tmp_path / "ct", seed=4)
    p = Pipeline(ws, config())
    with ws.intake.route("dicom") as route:
        from sobre.service._receive import store_instance

        stored = [str(store_instance(route, f.read_bytes(), source="test")[0]) for f in files]
    p.receive(stored, via="C-STORE")
    [study] = p.due_studies(now=1e12)
    p.load_apps()
    assert p.route_study(study).jobs == [1]
    p.receive(stored, via="C-STORE")  # a listener re-ingesting its store after a crash
    assert p.due_studies(now=1e12) == []
    n_events = len(ws.layout.audit_log.read_text().splitlines())
    assert p.route_study(study).jobs == []  # routed again on purpose: no new job, no new verdict entry
    assert len(ws.layout.audit_log.read_text().splitlines()) == n_events
    p.queue.close()

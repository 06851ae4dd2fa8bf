"""End to end with real peers: storescu sends a CT study to `sobre service`, the segmentation app runs, and
SEG, SR and SC arrive in Orthanc; highdicom reads them, they refer to the received instances, dciodvfy
accepts them; the trace names the model, the images and the reviewer; STOW-RS is an entry too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sobre.pacs._peers import free_port

from image.test_dicom_objects import iod_check  # one dciodvfy rule set for every DICOM output

from .helpers import (
    ct_study, orthanc_file, orthanc_instances, queue_rows, send_storescu, start_service, stop_service, study_of, uid_of,
    wait_for, write_config,
)

pytestmark = pytest.mark.peers


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sobre", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_storescu_to_service_to_orthanc_seg_sr_sc_read_back_and_traced(tmp_path, seg_run, orthanc_empty,
                                                                       storescu, ws):
    import highdicom as hd

    files = ct_study(tmp_path / "ct")
    study = study_of(files[0])
    sent = sorted(uid_of(f) for f in files)
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", model=seg_run, port=port, dest_port=orthanc_empty.dicom_port)
    proc = start_service(ws.root, cfg, port, tmp_path / "service.log")
    try:
        run = send_storescu(storescu, port, files)
        assert run.returncode == 0, run.stderr
        found = wait_for(lambda: (lambda m: m if {"SEG", "SR", "SC"} <= set(m) else None)(
            orthanc_instances(orthanc_empty, study)), what="SEG, SR and SC in Orthanc", proc=proc, timeout=180)
        wait_for(lambda: not queue_rows(ws.root, "SELECT id FROM deliveries WHERE state != 'sent'")
                 and queue_rows(ws.root, "SELECT id FROM deliveries"), what="every delivery sent", proc=proc)
        status = cli("service", "status", "-w", ws.root)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "1 proposed" in status.stdout and "sent" in status.stdout
    finally:
        code = stop_service(proc)
    assert code == 0, (tmp_path / "service.log").read_text()[-3000:]
    got = orthanc_instances(orthanc_empty, study)
    assert len(got["SEG"]) == 1 and len(got["SR"]) == 1 and len(got["SC"]) >= 1
    assert "CT" not in got  # the study itself was sent to the service only

    seg_path = orthanc_file(orthanc_empty, got["SEG"][0], tmp_path / "back")
    sr_path = orthanc_file(orthanc_empty, got["SR"][0], tmp_path / "back")
    sc_paths = [orthanc_file(orthanc_empty, i, tmp_path / "back") for i in got["SC"]]
    seg = hd.seg.segread(str(seg_path))
    assert seg.SegmentationType == "BINARY" and seg.StudyInstanceUID == study
    refs = sorted({f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                   for f in seg.PerFrameFunctionalGroupsSequence})
    assert set(refs) <= set(sent) and refs  # every SEG frame derives from a received instance
    assert sorted(u[2] for u in seg.get_source_image_uids()) == sent
    sr = hd.sr.srread(str(sr_path))
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == set(sent) | {str(seg.SOPInstanceUID)}  # every source instance, and the SEG
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [q.value.meaning for q in groups[0].get_qualitative_evaluations()] == ["Present"]
    for sc in sc_paths:
        import pydicom

        ds = pydicom.dcmread(sc)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in sent
    for p in [seg_path, sr_path, *sc_paths]:
        iod_check(p)

    # the queue's record and the audit trail agree with what Orthanc holds
    job = queue_rows(ws.root, "SELECT * FROM jobs")[0]
    result = json.loads(job["result"])
    seg_uid = str(seg.SOPInstanceUID)
    assert next(o for o in result["outputs"] if o["kind"] == "SEG")["sop_instance_uid"] == seg_uid
    review = cli("review", "accept", job["id"], "--reviewer", "dr.martin", "-w", ws.root)
    assert review.returncode == 0, review.stderr
    t = cli("service", "trace", seg_uid, "-w", ws.root)
    assert t.returncode == 0, t.stderr
    text = t.stdout
    assert f"{seg_uid}: output SEG" in text
    assert result["models"][0]["sha256"] in text                           # which model
    assert study in text and f"{len(files)} instance(s)" in text           # from which images
    assert "received" in text and "C-STORE" in text
    assert "sent" in text and "to pacs" in text
    assert "accepted by dr.martin" in text                                 # who accepted it
    entries = json.loads(cli("audit", "trace", seg_uid, "-w", ws.root, "--json").stdout)
    actions = [e["action"] for e in entries]
    assert actions == ["infer.decision", "service.sent", "review"], actions
    decision = entries[0]["data"]
    assert sorted(i["uid"] for i in decision["inputs"]["instances"]) == sent
    assert all(len(i["sha256"]) == 64 for i in decision["inputs"]["instances"])
    assert decision["model"]["sha256"] == result["models"][0]["sha256"]
    assert cli("audit", "verify", "-w", ws.root).returncode == 0


def test_stow_rs_in_and_stow_rs_out(tmp_path, seg_run, orthanc_empty, ws, config):
    """A study stored with STOW-RS goes through the intake; results are stored in Orthanc with STOW-RS."""
    from sobre.pacs import DicomWebPacs
    from sobre.service import Service

    files = ct_study(tmp_path / "ct", seed=11)
    study = study_of(files[0])
    cfg = config(receive={"stow_port": 0, "quiet_seconds": 0.3},
                 destinations=[{"name": "web", "kind": "dicomweb", "url": orthanc_empty.dicomweb,
                                "send": ["seg", "sr"]}])
    svc = Service(ws, cfg).start()
    try:
        report = DicomWebPacs(f"http://127.0.0.1:{svc.stow_port}/dicom-web").push(files)
        assert len(report.stored) == len(files) and not report.failed
        found = wait_for(lambda: (lambda m: m if {"SEG", "SR"} <= set(m) else None)(
            orthanc_instances(orthanc_empty, study)), what="SEG and SR stored by STOW-RS")
        assert "SC" not in found  # this destination takes SEG and SR only
        # a part that is not DICOM is refused with a failure reason, the others are stored
        import requests

        body = (b"--XX\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--XX--\r\n")
        r = requests.post(f"http://127.0.0.1:{svc.stow_port}/dicom-web/studies", data=body, timeout=30,
                          headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XX'})
        assert r.status_code == 409
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        r = requests.post(f"http://127.0.0.1:{svc.stow_port}/dicom-web/studies", data=b"{}", timeout=30,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 415
        assert requests.get(f"http://127.0.0.1:{svc.stow_port}/health", timeout=30).json()["up"] is True
    finally:
        svc.stop()
    rows = ws.records()
    assert any(r["series_uid"] == str(__import__("pydicom").dcmread(files[0]).SeriesInstanceUID) for r in rows)
    assert (ws.layout.incoming("dicomweb")).exists()  # stored by the intake's route, catalogued


def test_a_deidentifying_workspace_runs_the_app_on_what_its_intake_stored(tmp_path, seg_run, storescu, config):
    """C-STORE into a workspace with [privacy] deidentify = true: the apps read the de-identified instances,
    the results refer to them, and no identifying value of the sender's study reaches any output."""
    import pydicom

    from sobre.catalog import Workspace
    from sobre.service import Service

    phi = {"patient_id": "PID-778812", "patient_name": "Martin^Sophie", "accession_number": "ACC-5521"}
    files = ct_study(tmp_path / "ct", seed=19, **phi)
    ws = Workspace.init(tmp_path / "ws", privacy={"deidentify": True})
    try:
        svc = Service(ws, config(receive={"quiet_seconds": 0.3})).start()
        try:
            assert send_storescu(storescu, svc.port, files).returncode == 0
            wait_for(lambda: queue_rows(ws.root, "SELECT id FROM jobs WHERE state = 'proposed'"), what="a proposal")
        finally:
            svc.stop()
        job = queue_rows(ws.root, "SELECT * FROM jobs")[0]
        inputs = json.loads(job["inputs"])
        assert all(i["path"].startswith(str(ws.layout.deidentified)) for i in inputs)
        stored = {str(pydicom.dcmread(i["path"]).SOPInstanceUID) for i in inputs}
        assert not stored & {uid_of(f) for f in files}  # new UIDs: the de-identified instances
        result = json.loads(job["result"])
        seg = next(o for o in result["outputs"] if o["kind"] == "SEG")
        assert set(seg["references"]) == stored
        folder = ws.layout.service / result["folder"]
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for value in (*phi.values(), "Martin", "Sophie"):
                    assert value.encode() not in data, (p.name, value)
    finally:
        ws.close()

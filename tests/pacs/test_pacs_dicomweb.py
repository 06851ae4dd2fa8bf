"""DICOMweb pull/push against a real Orthanc (with its DICOMweb plugin), and against failing servers."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from sobre.cli import main
from sobre.errors import InputError
from sobre.pacs import DicomWebPacs, PacsError, parse_query
from sobre.pacs._peers import free_port

from .pacs_helpers import PHI, make_study


def _send(storescu, orthanc, files):
    run = subprocess.run([storescu, "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def _by_sop(paths):
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        out[ds.SOPInstanceUID] = ds
    return out


def test_pull_then_push_round_trips(orthanc_empty, storescu, tmp_path):
    orthanc = orthanc_empty
    study, files = make_study(tmp_path / "src", 3)
    _send(storescu, orthanc, files)
    pacs = DicomWebPacs(orthanc.dicomweb)
    assert [s["StudyInstanceUID"] for s in pacs.search_studies({"PatientID": "PID-778812"})] == [study]

    seen = []
    first = pacs.pull(tmp_path / "pulled", studies=[study], on_files=seen.append)
    assert first.studies == [study] and not first.failed and len(seen) == 1
    originals = _by_sop(files)
    pulled = _by_sop(first.files)
    assert pulled.keys() == originals.keys()
    for uid, ds in pulled.items():
        assert ds.PixelData == originals[uid].PixelData
        assert ds.PatientID == "PID-778812"  # no de-identification asked
    assert not (tmp_path / "pulled" / ".partial").exists()

    orthanc.delete_all()
    pushed = pacs.push([tmp_path / "pulled"])
    assert sorted(pushed.stored) == sorted(originals) and not pushed.failed and not pushed.skipped
    again = _by_sop(pacs.pull(tmp_path / "again", studies=[study]).files)
    assert again.keys() == originals.keys()
    for uid, ds in again.items():
        assert ds.PixelData == originals[uid].PixelData
        assert ds.SeriesInstanceUID == originals[uid].SeriesInstanceUID


def test_cli_pull_into_workspace_deidentifies_and_ingests(orthanc_empty, storescu, workspace, tmp_path, capsys):
    study, files = make_study(tmp_path / "src", 2, tag="2")
    _send(storescu, orthanc_empty, files)
    assert main(["pull", "--dicomweb", orthanc_empty.dicomweb, "--query", "PatientID=PID-778812",
                 "-w", str(workspace.root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deidentified"] and report["instances"] == 2 and report["studies"] == [study]
    key_file = workspace.root / "secrets" / "project.key"  # created on first use, owner only
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.parent.stat().st_mode & 0o777 == 0o700
    records = workspace.records()
    assert len(records) == 1 and records[0]["n_files"] == 2
    assert records[0]["subject_id"].startswith("SUBJ-")
    for path in report["files"]:
        data = Path(path).read_bytes()
        for value in PHI:
            assert value.encode() not in data, value
        assert str(workspace.root / "incoming" / "deidentified") in path  # the only DICOM it keeps
    # the workspace demands de-identification: it cannot be switched off
    assert main(["pull", "--dicomweb", orthanc_empty.dicomweb, "--study", study, "-w", str(workspace.root),
                 "--no-deidentify"]) == 2
    assert "requires de-identification" in capsys.readouterr().err


def test_unreachable_pacs_is_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(PacsError, match=r"cannot reach the DICOMweb server"):
        DicomWebPacs(url, timeout=5).search_studies({"PatientID": "x"})
    assert main(["pull", "--dicomweb", url, "--study", "1.2.3", "--out", str(tmp_path / "o")]) == 1
    assert "cannot reach the DICOMweb server" in capsys.readouterr().err
    report = DicomWebPacs(url, timeout=5).push([make_study(tmp_path / "s", 1)[1][0]])
    assert not report.stored and "cannot reach" in report.failed[0][1]


class _Stub(BaseHTTPRequestHandler):
    """A broken DICOMweb server: QIDO lists two instances, WADO sends one (or fails)."""

    mode = "500"
    part = b""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"database is on fire")
            return
        if self.path.split("?")[0].endswith("/instances"):
            from urllib.parse import parse_qs, urlparse

            offset = int(parse_qs(urlparse(self.path).query).get("offset", ["0"])[0])
            uids = ("1.2.3.4.1", "1.2.3.4.2")[offset:]
            body = json.dumps([{"00080018": {"vr": "UI", "Value": [uid]}} for uid in uids])
            self._reply(200, "application/dicom+json", body.encode())
            return
        boundary = b"sobreboundary"
        body = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + self.part + b"\r\n--" + \
            boundary + b"--\r\n"
        self._reply(200, f'multipart/related; type="application/dicom"; boundary={boundary.decode()}', body)

    def _reply(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_failing_pacs_reports_http_status(stub):
    _Stub.mode = "500"
    url = f"http://127.0.0.1:{stub.server_address[1]}/dicom-web"
    with pytest.raises(PacsError, match=r"study search \(QIDO-RS\) failed with HTTP 500.*database is on fire"):
        DicomWebPacs(url).search_studies({"PatientID": "1"})


def test_incomplete_study_is_not_kept(stub, tmp_path):
    import io

    _, files = make_study(tmp_path / "src", 1)
    ds = pydicom.dcmread(files[0])
    ds.StudyInstanceUID = "1.2.3"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    _Stub.mode, _Stub.part = "partial", buf.getvalue()
    url = f"http://127.0.0.1:{stub.server_address[1]}/dicom-web"
    called = []
    report = DicomWebPacs(url).pull(tmp_path / "dest", studies=["1.2.3"], on_files=called.append)
    assert report.studies == [] and called == []
    assert "study retrieval incomplete" in report.failed[0][1] and "expected 2 instances" in report.failed[0][1]
    assert not any(p.is_file() for p in (tmp_path / "dest").rglob("*"))  # nothing partially kept


def test_bad_queries_and_objects(tmp_path):
    assert parse_query(["PatientID=12", "ModalitiesInStudy=CT"]) == {"PatientID": "12", "ModalitiesInStudy": "CT"}
    with pytest.raises(InputError, match=r"unknown DICOM attribute in query: Patient"):
        parse_query(["Patient=12"])
    with pytest.raises(InputError, match=r"KEY=VALUE"):
        parse_query(["PatientID"])
    with pytest.raises(InputError, match=r"http:// or https://"):
        DicomWebPacs("pacs.local:8042")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)
    report = DicomWebPacs("http://127.0.0.1:9/dicom-web").push([junk])
    assert report.skipped and "not a DICOM file" in report.skipped[0][1] and not report.failed

"""``sobre deid`` and ``sobre pseudonyms export`` end to end (through ``sobre.cli.main``)."""

from __future__ import annotations

import csv
import json
import stat
from pathlib import Path

import pydicom

from sobre.cli import main

from .deid_helpers import KEY_HEX, write_phi_file


def test_deid_creates_key_beside_output_and_is_consistent(tmp_path, capsys):
    write_phi_file(tmp_path / "in" / "a.dcm")
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    first = capsys.readouterr()
    key_path = tmp_path / "out.project.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert "created a new project key" in first.err
    secret = key_path.read_text().strip()
    assert secret not in first.out + first.err
    (out,) = sorted((tmp_path / "out").rglob("*.dcm"))
    assert secret.encode() not in out.read_bytes()
    assert not any(secret in p.read_text(errors="ignore") for p in (tmp_path / "out").glob("*.json"))
    # a second run with the same key gives the same UIDs and pseudonym
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "again"), "--key-file", str(key_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (again,) = sorted((tmp_path / "again").rglob("*.dcm"))
    assert again.relative_to(tmp_path / "again") == out.relative_to(tmp_path / "out")
    assert report["written"] == 1 and report["key_id"] and secret not in json.dumps(report)


def test_deid_options_and_partial_failure(tmp_path, capsys, key_file):
    write_phi_file(tmp_path / "in" / "a.dcm")
    (tmp_path / "in" / "notes.bin").write_text("hello")  # (a .txt sidecar would be left out by discovery)
    status = main(["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key_file),
                   "--no-patient-characteristics", "--no-dates"])
    captured = capsys.readouterr()
    assert status == 1 and "1 skipped" in captured.out and "not a DICOM file" in captured.err
    (out,) = (tmp_path / "out").rglob("*.dcm")
    ds = pydicom.dcmread(out)
    assert ds.PatientSex == "" and "PatientAge" not in ds and ds.StudyDate == ""


def test_deid_bad_option_is_an_error(tmp_path, capsys, key_file):
    write_phi_file(tmp_path / "in" / "a.dcm")
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key_file),
                 "--blank", "1,2,3"]) == 2
    assert "error: cannot read blank region" in capsys.readouterr().err
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "in" / "sub")]) == 2
    assert "must not be inside the input" in capsys.readouterr().err


def test_pseudonym_map_export_is_explicit(tmp_path, capsys, key_file):
    write_phi_file(tmp_path / "in" / "a.dcm")
    assert main(["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key_file)]) == 0
    capsys.readouterr()
    assert not list((tmp_path / "out").rglob("*.csv"))  # no map in the export
    target = tmp_path / "map.csv"
    assert main(["pseudonyms", "export", str(target), "--key-file", str(key_file)]) == 0
    err = capsys.readouterr().err
    assert "re-identifies patients" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    rows = list(csv.DictReader(Path(target).read_text().splitlines()))
    assert rows[0]["patient_id"] == "IPP0042137" and rows[0]["pseudonym"].startswith("SUBJ-")
    assert KEY_HEX not in target.read_text()
    assert main(["pseudonyms", "export", str(target), "--key-file", str(key_file)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err

"""The workspace's intake enforces its privacy policy, whoever calls it (Python API, CLI, receiving routes)."""

from __future__ import annotations

import re
import shutil

import pydicom
import pytest

import sobre
from sobre.catalog import Workspace
from sobre.cli import main
from sobre.errors import ConfigError
from sobre.privacy import identifying_values


def _phi_sources(sample, tmp_path):
    """Real files full of fake PHI (deid-data), copied to an input folder; their identifying values."""
    root = sample("deid-data")
    files = sorted(root.rglob("dicom-cookies/*.dcm"))[:4] + sorted(root.rglob("humans/ctbrain1.dcm"))
    assert files, "deid-data holds the dicom-cookies and humans samples"
    src = tmp_path / "in"
    src.mkdir()
    values = {}
    for i, f in enumerate(files):
        dst = src / f"{i:02d}_{f.name}"
        shutil.copyfile(f, dst)
        ds = pydicom.dcmread(dst)
        ident = identifying_values(ds)
        values.update({v: k for v, k in ident.values.items() if len(v) >= 4})
        values.update({u: k for u, k in ident.uids.items()})
    return src, values


def _header_bytes(path) -> bytes:
    """A DICOM file's bytes before its pixel data (pixels are random-looking bytes: no text search there)."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        return data
    ds = sobre.image.read_header(path)
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    at = getattr(elem, "value_tell", None)
    return data[:at] if at else data


def _leaks(root, values: dict) -> list[tuple[str, str]]:
    """(file, value) for every identifying value found in any byte of the workspace folder."""
    found = []
    patterns = {v: re.compile(rb"(?<![A-Za-z0-9])" + re.escape(v.encode()) + rb"(?![A-Za-z0-9])", re.I)
                for v in values}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        data = _header_bytes(f) if f.suffix == ".dcm" else f.read_bytes()
        for v, pat in patterns.items():
            if pat.search(data):
                found.append((str(f.relative_to(root)), v))
    return found


def test_python_api_ingest_of_identifiable_files_leaves_no_identifying_byte(sample, tmp_path):
    src, values = _phi_sources(sample, tmp_path)
    assert any(k.endswith("PatientName") for k in values.values()) and len(values) > 10
    assert len(_leaks(src, values)) > 20  # the scan finds them where they are
    ws = Workspace.init(tmp_path / "ws", privacy={"deidentify": True})
    report = ws.ingest([src])  # plain Python: no CLI flag says "de-identify"
    assert report.deidentified == 5 and report.new == 5 and not report.skipped, report.problems
    ws.close()
    # nowhere: not in the catalog database (and its WAL), not in file names, not in the stored files,
    # not in the pseudonym map (sealed), not in sobre.toml
    assert _leaks(tmp_path / "ws", values) == []
    ws = Workspace.open(tmp_path / "ws")
    recs = ws.records()
    assert recs and all(r["subject_id"].startswith("SUBJ-") for r in recs)
    assert all(str(tmp_path / "ws" / "incoming" / "deidentified") in p
               for r in recs for p in ws.files_of(r["series_uid"], r["label"]))
    # the original stays where it was, untouched; the catalog knows only the de-identified copy
    assert sorted(p.name for p in src.iterdir())[0].startswith("00_")


def test_a_de_identifying_workspace_refuses_what_it_cannot_de_identify(sample, tmp_path):
    src, _ = _phi_sources(sample, tmp_path)
    ws = Workspace.init(tmp_path / "ws", privacy={"deidentify": True})
    with pytest.raises(ConfigError, match=r"requires de-identification.*expected deidentify=None or True"):
        ws.ingest([src], deidentify=False)
    assert ws.summary()["files"] == 0
    # a NIfTI file: its name and header cannot be vouched for
    nii = tmp_path / "nii" / "DOE_JOHN_t1.nii.gz"
    nii.parent.mkdir()
    sobre.save(sobre.Image.from_ras(__import__("numpy").zeros((4, 4, 4), "int16"), __import__("numpy").eye(4)), nii)
    report = ws.ingest([nii.parent])
    assert [p.code for p in report.problems] == ["not-deidentifiable"] and report.new == 0
    # identifiable files dropped into the workspace's own store are not taken for de-identified ones
    store = ws.layout.deidentified / "manual"
    store.mkdir(parents=True)
    shutil.copyfile(next(src.iterdir()), store / "raw.dcm")
    report = ws.ingest([store])
    assert [p.code for p in report.problems] == ["identifiable"] and report.new == 0
    assert ws.summary()["files"] == 0


def test_clinical_table_with_original_ids_joins_through_pseudonyms(sample, tmp_path):
    src, _ = _phi_sources(sample, tmp_path)
    pids = sorted({str(pydicom.dcmread(f).PatientID) for f in src.iterdir()})
    table = tmp_path / "clinical.csv"
    table.write_text("PatientID,score\n" + "".join(f"{p},{i}\n" for i, p in enumerate(pids)))
    ws = Workspace.init(tmp_path / "ws", privacy={"deidentify": True})
    report = ws.ingest([src], clinical=table)
    assert report.clinical_error is None and report.clinical["subjects"] == len(pids)
    assert {r["score"] for r in ws.records()} <= set(range(len(pids)))
    assert all(p.encode() not in (tmp_path / "ws" / "catalog.sqlite").read_bytes() for p in pids if len(p) > 3)


def test_cli_ingest_follows_the_workspace_policy(sample, tmp_path, capsys):
    src, values = _phi_sources(sample, tmp_path)
    assert main(["init", str(tmp_path / "ws")]) == 0
    (tmp_path / "ws" / "sobre.toml").write_text(
        (tmp_path / "ws" / "sobre.toml").read_text() + "\n[privacy]\ndeidentify = true\n")
    assert main(["ingest", str(src), "-w", str(tmp_path / "ws"), "--json"]) == 0
    assert '"deidentified": 5' in capsys.readouterr().out
    assert _leaks(tmp_path / "ws", values) == []


def test_receiving_route_stores_de_identified_only(sample, tmp_path):
    """What pull and listen use: a route yields the store, the de-identifier and the catalogue call."""
    src, values = _phi_sources(sample, tmp_path)
    ws = Workspace.init(tmp_path / "ws", privacy={"deidentify": True})
    with ws.intake.route("dicom") as route:
        assert route.store == ws.layout.deidentified and route.deidentifier is not None
        written = [str(route.store / f"{i}.dcm") for i, _ in enumerate(src.iterdir())]
        for f, target in zip(sorted(src.iterdir()), written):
            data, _ = route.deidentifier.deidentify_to_bytes(pydicom.dcmread(f), source=str(f))
            sobre.image.write_atomic(target, data)
        report = route.add(written)
        outside = route.add([str(next(src.iterdir()))])
    assert report.new == 5 and not report.skipped
    assert [p.code for p in outside.problems] == ["outside"]
    ws.close()
    assert _leaks(tmp_path / "ws", values) == []
    with Workspace.init(tmp_path / "plain") as plain, plain.intake.route("dicom", deidentify=None) as r:
        assert r.deidentifier is None and r.store == plain.layout.incoming("dicom")

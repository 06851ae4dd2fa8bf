"""The ``sobre`` command line over a workspace: init, ingest, info, export, cohort, dataset.

Every command is run through :func:`sobre.cli.main` in-process. Bad input must give one clear
``error: ...`` line naming the file (and line/column), exit status 2, no traceback, and leave the
catalog as it was.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest

from sobre.catalog import Workspace
from sobre.cli import main

from catalog.conftest import CLINICAL_CSV, SEED, build_cohort, dump_tables, make_image  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_cohort(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture
def ws(tmp_path, data, capsys):
    """A workspace with the cohort and its clinical table ingested through the CLI; returns its folder."""
    root = tmp_path / "ws"
    assert main(["init", str(root)]) == 0
    csv = tmp_path / "clinical.csv"
    csv.write_text(CLINICAL_CSV)
    assert main(["ingest", str(data), "-w", str(root), "--clinical", str(csv)]) == 0
    capsys.readouterr()
    return root


def run(capsys, *args):
    """(status, stdout, stderr) of ``sobre ARGS``; a traceback on stderr is a failure in itself."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def tables(root):
    ws = Workspace.open(root)
    try:
        return dump_tables(ws)
    finally:
        ws.close()


def one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return err[err.index("error: "):]


# --------------------------------------------------------------------------- init / ingest
def test_init_and_ingest_summary(tmp_path, data, capsys):
    status, out, _ = run(capsys, "init", tmp_path / "w")
    assert status == 0 and out == f"workspace ready: {tmp_path / 'w'} (sqlite)\n"
    status, out, _ = run(capsys, "ingest", data, "-w", tmp_path / "w")
    assert status == 0
    assert out.splitlines()[:2] == ["files: 30 new, 0 already known, 0 changed, 0 skipped",
                                    "series: 5 new, 0 updated, 0 with problems"]
    status, out, _ = run(capsys, "ingest", data, "-w", tmp_path / "w", "--json")
    report = json.loads(out)
    assert status == 0 and (report["new"], report["known"], report["skipped"]) == (0, 30, [])


def test_ingest_reports_skipped_files(tmp_path, data, capsys):
    d = tmp_path / "mixed"
    shutil.copytree(data / "S01_mr", d)
    (d / "readme.bin").write_bytes(b"hello")
    (d / "empty.dcm").write_bytes(b"")
    run(capsys, "init", tmp_path / "w")
    status, out, _ = run(capsys, "ingest", d, "-w", tmp_path / "w")
    assert status == 0
    assert "files: 6 new, 0 already known, 0 changed, 2 skipped" in out
    assert f"  skipped {d / 'empty.dcm'}: empty file (0 bytes)" in out
    assert f"  skipped {d / 'readme.bin'}: not an image file" in out


def test_ingest_site_option_from_inside_the_workspace(tmp_path, data, capsys, monkeypatch):
    run(capsys, "init", tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")  # -w defaults to the current folder
    assert run(capsys, "ingest", data / "S03_ct", "--site", "Lyon-2")[0] == 0
    status, out, _ = run(capsys, "cohort", "create", "lyon", "--where", 'site == "Lyon-2"', "--json")
    assert status == 0 and json.loads(out)["n_series"] == 1


def test_ingest_nonexistent_path(ws, tmp_path, data, capsys):
    before = tables(ws)
    status, out, err = run(capsys, "ingest", data, tmp_path / "no" / "such", "-w", ws)
    assert status == 2 and out == ""
    assert one_error(err).startswith(f"error: {tmp_path / 'no' / 'such'}: no such file or folder")
    assert tables(ws) == before


def test_ingest_csv_with_unparseable_value(ws, tmp_path, data, capsys):
    before = tables(ws)
    bad = tmp_path / "bad.csv"
    bad.write_text("subject_id,bmi_baseline [kg/m2]\nS01,22.5\nS02,23;1\nS03,21\n")
    status, _, err = run(capsys, "ingest", data, "-w", ws, "--clinical", bad)
    assert status == 2
    assert one_error(err) == (
        f"error: {bad}: unparseable value in numeric column 'bmi_baseline [kg/m2]' (expected a number (use a dot "
        f"for decimals; leave empty or write NA when missing); found '23;1' on line 3)\n")
    assert tables(ws) == before


def test_ingest_csv_with_unknown_subjects(ws, tmp_path, data, capsys):
    before = tables(ws)
    bad = tmp_path / "ids.csv"
    bad.write_text("subject_id,smoker\nS01,yes\nS1,no\nS05,no\n")
    status, out, err = run(capsys, "ingest", data, "-w", ws, "--clinical", bad)
    assert status == 2
    assert "files: 0 new, 30 already known" in out  # the images were there already
    msg = one_error(err)
    assert msg.startswith(f"error: {bad}: 1 subject id(s) in column 'subject_id' are not in the catalog: "
                          f"'S1' (line 3)")
    assert "nothing from this table was stored" in msg
    assert tables(ws) == before


def test_ingest_csv_missing(ws, tmp_path, data, capsys):
    before = tables(ws)
    status, _, err = run(capsys, "ingest", data, "-w", ws, "--clinical", tmp_path / "nope.csv")
    assert status == 2 and one_error(err) == f"error: {tmp_path / 'nope.csv'}: no such file\n"
    assert tables(ws) == before


def test_commands_outside_a_workspace(tmp_path, capsys):
    status, _, err = run(capsys, "cohort", "list", "-w", tmp_path)
    assert status == 2 and one_error(err).startswith(f"error: {tmp_path}: not a Sobre workspace")


# --------------------------------------------------------------------------- cohorts
def test_cohort_create_list_show(ws, capsys):
    status, out, _ = run(capsys, "cohort", "create", "young", "--where",
                         'modality == "MR" and age >= 20 and age < 40 and diagnosis == "healthy"', "-w", ws)
    assert status == 0 and out == "cohort young: 1 series from 1 subjects\n"
    assert run(capsys, "cohort", "create", "women", "--where", 'sex == "F"', "-w", ws)[0] == 0
    status, out, _ = run(capsys, "cohort", "list", "-w", ws, "--json")
    listed = json.loads(out)
    assert status == 0 and [(c["name"], c["n_series"], c["n_subjects"]) for c in listed] == \
        [("women", 3, 3), ("young", 1, 1)]
    assert all("members" not in c for c in listed)
    status, out, _ = run(capsys, "cohort", "show", "women", "-w", ws, "--json")
    shown = json.loads(out)
    assert status == 0 and sorted(m["subject_id"] for m in shown["members"]) == ["S01", "S03", "S05"]
    assert shown["where"] == 'sex == "F"' and shown["versions"] == []
    status, out, _ = run(capsys, "cohort", "show", "women", "-w", ws)
    assert out.splitlines()[:2] == ['cohort women  where: sex == "F"', "3 series from 3 subjects"]
    assert sum(" S01 " in ln or " S03 " in ln or " S05 " in ln for ln in out.splitlines()) == 3
    status, out, _ = run(capsys, "cohort", "fields", "-w", ws, "--json")
    fields = json.loads(out)
    assert "age" in fields["base"] and fields["clinical"]["score"] == {"kind": "numeric", "unit": "points"}


@pytest.mark.parametrize("where, message", [
    ('modality == "MR" and age >= 20 and', r"syntax error in filter expression at column 35: the expression ends "
                                           r"too early\n  modality == \"MR\" and age >= 20 and\n {36}\^"),
    ('modality = "MR"', r"syntax error in filter expression at column 10"),
    ("__import__('os').system('touch /tmp/x')", r"is not allowed in a filter expression"),
    ('"x" or 1; DROP TABLE series', r"syntax error in filter expression at column 9"),
    ("diagnoses == 'healthy'", r"unknown field 'diagnoses'\. Did you mean diagnosis\? \(expected one of: age, bmi, "),
])
def test_cohort_create_bad_expression(ws, capsys, where, message):
    before = tables(ws)
    status, out, err = run(capsys, "cohort", "create", "bad", "--where", where, "-w", ws)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and err.count("error: ") == 1
    import re

    assert re.search(message, err), err
    assert tables(ws) == before


def test_cohort_show_unknown(ws, capsys):
    status, out, err = run(capsys, "cohort", "show", "nope", "-w", ws, "--json")
    assert status == 2
    assert json.loads(out)["error"] == "CatalogError"  # --json: the error as JSON on stdout too
    assert one_error(err) == "error: no cohort 'nope' (expected one of: (none yet))\n"


# --------------------------------------------------------------------------- freeze / datasets
def test_freeze_verify_and_changed_file(tmp_path, data, capsys):
    d = tmp_path / "data"
    shutil.copytree(data, d)
    root = tmp_path / "ws"
    run(capsys, "init", root)
    run(capsys, "ingest", d, "-w", root)
    run(capsys, "cohort", "create", "mr", "--where", 'modality == "MR"', "-w", root)
    status, out, _ = run(capsys, "cohort", "freeze", "mr", "-w", root, "--json")
    ref = json.loads(out)
    assert status == 0 and (ref["ref"], ref["n_series"], ref["n_files"], ref["n_subjects"]) == ("mr@v1", 4, 24, 4)
    status, out, _ = run(capsys, "cohort", "freeze", "mr", "-w", root)
    assert status == 0 and out.splitlines()[:2] == ["mr@v1: 4 series, 24 files, 4 subjects",
                                                    f"content hash {ref['content_hash']}"]
    status, out, _ = run(capsys, "dataset", "verify", "mr@v1", "-w", root)
    assert status == 0 and out == "mr@v1: intact\n"
    status, out, _ = run(capsys, "dataset", "list", "-w", root, "--json")
    assert [x["ref"] for x in json.loads(out)] == ["mr@v1"]
    status, out, _ = run(capsys, "dataset", "show", "mr", "-w", root, "--json")
    assert json.loads(out)["manifest_content"]["content_hash"] == ref["content_hash"]

    victim = sorted((d / "S04_mr").iterdir())[0]
    ds = pydicom.dcmread(victim)
    ds.PatientWeight = "99"
    ds.save_as(victim)
    before = tables(root)
    status, _, err = run(capsys, "cohort", "freeze", "mr", "-w", root)
    assert status == 2
    assert one_error(err).startswith(f"error: {victim}: file changed since it was ingested (expected sha256 ")
    assert tables(root) == before
    status, out, _ = run(capsys, "dataset", "verify", "mr@v1", "-w", root)
    assert status == 1
    assert out.splitlines()[0].startswith(f"  {victim}: content changed (expected sha256 ")
    assert out.splitlines()[-1] == "mr@v1: 1 problem(s)"
    status, out, _ = run(capsys, "dataset", "verify", "mr@v1", "-w", root, "--json")
    res = json.loads(out)
    assert status == 1 and res["ok"] is False and [p["path"] for p in res["problems"]] == [str(victim)]


def test_dataset_unknown_ref(ws, capsys):
    status, _, err = run(capsys, "dataset", "verify", "nothing@v1", "-w", ws)
    assert status == 2 and "no dataset version 'nothing@v1'" in one_error(err)


# --------------------------------------------------------------------------- info / export
def test_info_path_json(data, capsys):
    status, out, _ = run(capsys, "info", data / "S04_mr", "--json")
    info = json.loads(out)
    expected = make_image(seed=SEED + 3)
    assert status == 0
    assert info["shape"] == [16, 16, 6] and info["spacing"] == [0.9, 0.9, 2.0]
    assert info["orientation"] == "LPS" and info["modality"] == "MR" and info["coordinate_system"] == "LPS"
    np.testing.assert_allclose(info["affine_lps"], expected.affine, atol=1e-6)
    np.testing.assert_allclose(info["affine_ras"], expected.affine_ras, atol=1e-6)
    assert info["metadata"]["patient_id"] == "S04" and info["metadata"]["patient_age"] == "045Y"
    status, out, _ = run(capsys, "info", data / "S04_mr")
    assert status == 0 and out.startswith("shape [16, 16, 6]  spacing [0.9, 0.9, 2.0]  orientation LPS  modality MR")
    assert out.splitlines()[1] == "affine (LPS):"


def test_info_catalogued_series(ws, capsys):
    w = Workspace.open(ws)
    uid = next(r["series_uid"] for r in w.records() if r["subject_id"] == "S02")
    w.close()
    status, out, _ = run(capsys, "info", uid, "-w", ws, "--json")
    info = json.loads(out)
    assert status == 0 and info["subject_id"] == "S02" and info["diagnosis"] == "patient"
    assert info["image"]["shape"] == [16, 16, 6] and info["image"]["orientation"] == "LPS"
    assert info["image"]["affine_lps"][2][2] == pytest.approx(2.0)


def test_info_and_export_bad_targets(ws, tmp_path, capsys):
    status, _, err = run(capsys, "info", tmp_path / "missing.dcm", "-w", ws)
    assert status == 2 and one_error(err).startswith(f"error: {tmp_path / 'missing.dcm'}: no such file or folder")
    status, _, err = run(capsys, "info", "1.2.3.4.5", "-w", ws)
    assert status == 2 and one_error(err).startswith("error: no series '1.2.3.4.5' in the catalog")
    status, _, err = run(capsys, "export", "./nope", "--to", tmp_path / "x.nii.gz", "-w", ws)
    assert status == 2 and "nope: no such file or folder" in one_error(err)
    assert not (tmp_path / "x.nii.gz").exists()


def test_export_series_to_nifti(ws, tmp_path, capsys):
    import nibabel as nib

    w = Workspace.open(ws)
    uid = next(r["series_uid"] for r in w.records() if r["subject_id"] == "S01")
    img = w.load(uid)
    w.close()
    out_file = tmp_path / "out" / "s01.nii.gz"
    status, out, _ = run(capsys, "export", uid, "--to", out_file, "-w", ws, "--json")
    assert status == 0 and json.loads(out)["written"] == str(out_file)
    nimg = nib.load(out_file)
    np.testing.assert_allclose(nimg.affine, img.affine_ras, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(nimg.dataobj), img.array)
    np.testing.assert_array_equal(img.array, make_image(seed=SEED).array)
    status, _, err = run(capsys, "export", uid, "--to", tmp_path / "x.txt", "-w", ws)
    assert status == 2 and "unknown output format" in one_error(err)


# --------------------------------------------------------------------------- ingest --deidentify
def test_ingest_deidentify_keeps_no_identifier_and_joins_clinical(tmp_path, data, capsys):
    root = tmp_path / "ws"
    assert main(["init", str(root)]) == 0
    csv = tmp_path / "clinical.csv"
    csv.write_text(CLINICAL_CSV)  # keyed by the original PatientIDs S01..S05
    status, out, err = run(capsys, "ingest", data, "-w", root, "--deidentify", "--clinical", csv, "--site", "north")
    assert status == 0, err
    assert "files: 30 new" in out
    ws = Workspace.open(root)
    try:
        recs = ws.records()
    finally:
        ws.close()
    assert len(recs) == 5
    ids = {r["subject_id"] for r in recs}
    assert not ids & {"S01", "S02", "S03", "S04", "S05"}
    assert all(i.startswith("SUBJ-") for i in ids)
    # clinical values arrived through the keyed pseudonyms, age and sex were retained
    assert sorted(r["diagnosis"] for r in recs) == ["healthy", "healthy", "healthy", "patient", "patient"]
    assert sorted(r["sex"] for r in recs) == ["F", "F", "F", "M", "M"]
    assert {round(r["age"]) for r in recs if r["age"] is not None} >= {25, 30, 45, 50}
    # nothing identifying in the catalog database or the stored files
    blob = (root / "catalog.sqlite").read_bytes()
    for f in (root / "incoming").rglob("*.dcm"):
        blob += f.read_bytes()
    for needle in (b"Hopital Nord", b"Clinique Sud", b"19880301"):
        assert needle not in blob
    # the key stays private to the owner
    assert oct((root / "secrets" / "project.key").stat().st_mode & 0o777) == "0o600"


def test_ingest_deidentify_keeps_sites_apart_under_keyed_pseudonyms(tmp_path, data, capsys):
    root = tmp_path / "ws"
    assert main(["init", str(root)]) == 0
    status, _, err = run(capsys, "ingest", data, "-w", root, "--deidentify")  # no --site: from the files
    assert status == 0, err
    ws = Workspace.open(root)
    try:
        sites = {r["subject_id"]: r["site"] for r in ws.records()}
    finally:
        ws.close()
    named = {s for s in sites.values() if s is not None}  # one generated subject carries no InstitutionName
    assert len(named) == 2 and all(s.startswith("SITE-") for s in named)
    blob = (root / "catalog.sqlite").read_bytes()
    assert b"Hopital Nord" not in blob and b"Clinique Sud" not in blob


def test_ingest_deidentify_refuses_copy(tmp_path, data, capsys):
    root = tmp_path / "ws"
    assert main(["init", str(root)]) == 0
    status, out, err = run(capsys, "ingest", data, "-w", root, "--deidentify", "--copy")
    assert status == 2
    assert "copy and de-identification together" in one_error(err)


def test_a_closed_output_pipe_is_not_an_internal_error(tmp_path):
    """`sobre ... | head` closes the pipe early: no traceback, no 'internal error', SIGPIPE's status."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sobre_bin = Path(sys.executable).parent / "sobre"
    if not sobre_bin.exists():
        pytest.skip("the sobre entry point is not installed next to this Python")
    r, w = os.pipe()
    os.close(r)  # nobody reads: the first write fails with EPIPE
    try:
        proc = subprocess.run([str(sobre_bin), "init", str(tmp_path / "ws")], stdout=w, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 141, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "ws" / "sobre.toml").exists()  # the work itself was done

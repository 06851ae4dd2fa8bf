"""``sobre simulate``: runs, JSON output, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sobre
from sobre.cli import main

from .conftest import phantom_ct


def test_brain_nifti_json(brain_template, calib_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sobre.sim._brain._default_cache_dir", lambda: calib_cache)
    rc = main(["simulate", "brain", str(tmp_path / "c"), "--subjects", "2", "--sites", "2", "--seed", "1",
               "--format", "nifti", "--resolution", "4", "--disease", "schizophrenia-like",
               "--disease-strength", "1", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["subjects"] == 2 and rep["format"] == "nifti"
    cfg = json.loads((tmp_path / "c" / "simulation.json").read_text())["config"]
    assert cfg["disease"]["name"] == "accelerated-ageing" and cfg["disease"]["strength"] == 1.0
    assert len(list((tmp_path / "c" / "nifti").glob("sub-*.nii.gz"))) == 2


@pytest.mark.parametrize("args, message", [
    (["--disease", "flu"], "unknown disease preset 'flu'"),
    (["--disease-strength", "2"], "--disease-strength needs a disease"),
    (["--disease-regions", "hipocampus=-5"], "unknown brain region 'hipocampus'"),
])
def test_brain_errors(brain_template, tmp_path, capsys, args, message):
    rc = main(["simulate", "brain", str(tmp_path / "x"), "--subjects", "1"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "wrong value for 'seed' (expected a whole number >= 0; found -1)"),
    (["--subjects", "0"], "wrong value for 'subjects' (expected at least 1 subject (an empty cohort is not a cohort); "
                          "found 0)"),
    (["--disease", "visual", "--disease-strength", "inf"],
     "wrong value for 'disease.strength' (expected a finite number; found inf)"),
    (["--disease", "visual", "--disease-strength", "nan"],
     "wrong value for 'disease.strength' (expected a finite number; found nan)"),
    (["--disease-regions", "hippocampus=-8", "--disease-strength=-inf"],
     "wrong value for 'disease.strength' (expected a finite number; found -inf)"),
    (["--disease-regions", "hippocampus=-150"], "disease effect on 'hippocampus' must be above -100 % (found -150)"),
    (["--disease-regions", "hippocampus:-8"], "cannot read disease region 'hippocampus:-8' (expected REGION=PERCENT"),
    (["--resolution", "0.1"], "wrong value for 'resolution' (expected 0.5 to 8 mm; found 0.1)"),
    (["--sites", "0"], "wrong value for 'sites' (expected 1 to 64 sites; found 0)"),
    (["--patient-fraction", "2"], "wrong value for 'patient_fraction' (expected less than or equal to 1; found 2.0)"),
    (["--id-prefix", "a_b"], "wrong value for 'id_prefix' (expected letters and digits only"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    # no template needed: the configuration is checked before the simulator is built
    out = tmp_path / "x"
    rc = main(["simulate", "brain", str(out)] + args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and "internal error" not in err
    assert not out.exists()


def test_unwritable_output_is_refused_before_simulating(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(afile, "the output path is a file, not a folder (expected a new or empty folder; found an existing "
                     "file)"),
             (afile / "out", "the output folder cannot be created: a parent is a file"),
             (tmp_path / "full", "output folder is not empty")]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    cases.append((Path("/proc/sobre-test/out"), "the output folder is not writable"))  # even root cannot write there
    for out, message in cases:
        rc = main(["simulate", "brain", str(out), "--subjects", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "internal error" not in err, (out, err)
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    rc = main(["simulate", "ct-lesions", str(afile / "out"), "--backgrounds", str(afile)])
    assert rc == 2 and "a parent is a file" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--seed", "-3"], "wrong value for 'seed' (expected greater than or equal to 0; found -3)"),
    (["--cases", "0"], "wrong value for 'cases' (expected greater than or equal to 1; found 0)"),
    (["--sizes", "1.2.3mm"], "cannot read lesion sizes '1.2.3mm' (expected N or A-Bmm"),
    (["--lesions-per-case", "2.5"], "cannot read lesions per case '2.5' (expected whole numbers N or A-B"),
    (["--sizes", "30-3mm"], "lesion sizes must satisfy 0 < min <= max (found 30-3 mm)"),
    (["--kinds", "solid,cyst"], "wrong value for 'lesions.kinds[1]'"),
])
def test_ct_lesions_bad_values(tmp_path, capsys, args, message):
    src = tmp_path / "bg.nii.gz"
    sobre.save(phantom_ct(shape=(8, 8, 4)), src)
    out = tmp_path / "o"
    rc = main(["simulate", "ct-lesions", str(out), "--backgrounds", str(src)] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_ct_lesions_cli(tmp_path, capsys):
    src = tmp_path / "bg.nii.gz"
    sobre.save(phantom_ct(), src)
    rc = main(["simulate", "ct-lesions", str(tmp_path / "o"), "--backgrounds", str(src), "--lesions-per-case",
               "2-3", "--sizes", "4-25mm", "--seed", "3", "--cases", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "SIMULATED lesions" in out
    assert (tmp_path / "o" / "lesions.tsv").exists() and (tmp_path / "o" / "masks" / "case-0002.nii.gz").exists()
    rc = main(["simulate", "ct-lesions", str(tmp_path / "p"), "--backgrounds", str(src), "--sizes", "big"])
    assert rc == 2 and "cannot read lesion sizes 'big'" in capsys.readouterr().err
    rc = main(["simulate", "ct-lesions", str(tmp_path / "q"), "--backgrounds", str(tmp_path / "missing.nii")])
    assert rc == 2 and "no such file" in capsys.readouterr().err

"""``sobre simulate``: runs, JSON output, and one-line errors with exit status 2."""

from __future__ import annotations

import json

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
    (["--resolution", "0.1"], "resolution out of range"),
])
def test_brain_errors(brain_template, tmp_path, capsys, args, message):
    rc = main(["simulate", "brain", str(tmp_path / "x"), "--subjects", "1"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


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

"""``sobre normative`` and ``sobre subtypes`` on a real workspace: generated BIDS NIfTI ingested and frozen."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sobre.cli import main

from .conftest import cohort_rows, write_bids


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from sobre.catalog import Workspace

    root = tmp_path_factory.mktemp("normative-cli")
    healthy = write_bids(root / "healthy", cohort_rows(21, 48, prefix="H"), seed=21)
    test = write_bids(root / "test", cohort_rows(22, 40, prefix="T", patients=30), seed=22, effect=-0.45)
    ws = Workspace.init(root / "ws")
    for name, folder in (("healthy", healthy), ("test", test)):
        rep = ws.ingest([folder], clinical=folder / "participants.tsv")
        assert not rep.problems and rep.clinical_error is None, (rep.problems, rep.clinical_error)
        ws.cohort_create(name, f'subject_id.startswith("sub-{name[0].upper()}")')
        ws.freeze(name)
    return root


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_score_list_show_and_subtypes(workspace, capsys, tmp_path):
    ws = str(workspace / "ws")
    cfg = tmp_path / "normative.toml"
    cfg.write_text('[model]\nage_df = 1\nmin_subjects = 20\nmin_per_site = 5\n')
    code, out, err = _run(["normative", "fit", "healthy@v1", "-w", ws, "--config", str(cfg), "--atlas",
                           str(workspace / "healthy" / "regions.tsv"), "--maps", "logjac", "--json"], capsys)
    assert code == 0, err
    fit = json.loads(out)
    assert fit["measures"] == 10 and fit["voxels"] == 512 and fit["dataset"]["ref"] == "healthy@v1"
    model = fit["model_id"]
    code, out, err = _run(["normative", "list", "-w", ws], capsys)
    assert code == 0 and model in out
    code, out, err = _run(["normative", "show", model, "-w", ws, "--json"], capsys)
    assert json.loads(out)["training_subjects"] == 48
    code, out, err = _run(["normative", "score", model, "test@v1", "-w", ws], capsys)
    assert code == 0, err
    assert "40 subjects of test@v1" in out and "volume    Beta" in out
    scores = workspace / "ws" / "normative" / model / "scores" / "test-v1"
    assert (scores / "maps" / "sub-T001_desc-volume_zmap.nii.gz").exists()
    assert (scores / "maps" / "sub-T001_space-template_zmap.nii.gz").exists()
    code, out, err = _run(["subtypes", "discover", str(scores), "--k", "2-3", "--resamples", "10", "--json",
                           "--holdout", "0.2"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["patients"] == 30 and res["held_out"] == 6 and res["k"] in (1, 2, 3)
    assert (scores / "subtypes" / "clusters.tsv").exists()


def test_bad_input_exits_2_and_writes_nothing(workspace, capsys, tmp_path):
    ws = str(workspace / "ws")
    before = sorted(p.name for p in (workspace / "ws" / "normative").glob("*")) if \
        (workspace / "ws" / "normative").exists() else []
    code, out, err = _run(["normative", "fit", "test@v1", "-w", ws, "--atlas",
                           str(workspace / "healthy" / "regions.tsv")], capsys)
    assert code == 2 and "test@v1 is not a healthy reference: 30 subject(s) have diagnosis = patient" in err
    code, out, err = _run(["normative", "fit", "healthy@v1", "-w", ws], capsys)
    assert code == 2 and "regional measures need the names of the labels" in err
    code, out, err = _run(["normative", "fit", "healthy@v1", "-w", ws, "--atlas",
                           str(workspace / "healthy" / "regions.tsv")], capsys)
    assert code == 2 and "the healthy cohort healthy@v1 is too small for the normative model: 48 subjects" in err
    after = sorted(p.name for p in (workspace / "ws" / "normative").glob("*")) if \
        (workspace / "ws" / "normative").exists() else []
    assert [a for a in after if not a.startswith(".")] == [b for b in before if not b.startswith(".")]
    code, out, err = _run(["normative", "score", "nope", "test@v1", "-w", ws], capsys)
    assert code == 2 and "no normative model 'nope'" in err
    code, out, err = _run(["subtypes", "discover", str(tmp_path), "-w", ws], capsys)
    assert code == 2 and "not a normative scores folder" in err
    assert np.isfinite(1.0)


@pytest.mark.slow
def test_subtypes_from_learned_features(workspace, capsys):
    """--features RUN: the encoder's features of the patients, z-scored against the controls' (fitted on them only)."""
    pytest.importorskip("torch")
    from sobre.catalog import Workspace
    from sobre.learn import pretrain

    ws = Workspace.open(workspace / "ws")
    cfg = {"seed": 0, "data": {"dataset": "healthy@v1", "where": 'protocol == "T1w"'},
           "preprocess": {"resample": "none", "intensity": "zscore"},
           "method": {"kind": "simclr"}, "model": {"width": 4, "depth": 2},
           "optim": {"epochs": 1, "batch_size": 16, "lr": 3e-3},
           "augment": [{"kind": "flip", "prob": 0.5, "axes": [0]}],
           "monitor": {"val_fraction": 0.25, "every": 1, "regress": ["age"], "classify": []},
           "runtime": {"progress": False, "threads": 2}}
    run = pretrain(cfg, workspace=ws).run.run_id
    toml = workspace / "maps-only.toml"
    toml.write_text('[model]\nage_df = 1\nmin_subjects = 20\nmin_per_site = 5\n')
    assert main(["normative", "fit", "healthy@v1", "-w", str(workspace / "ws"), "--config", str(toml),
                 "--no-labels", "--maps", "logjac", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model_id"]
    folder = workspace / "scores-maps"
    assert main(["normative", "score", model, "test@v1", "-w", str(workspace / "ws"), "--no-images",
                 "--out", str(folder)]) == 0
    capsys.readouterr()
    code, out, err = _run(["subtypes", "discover", str(folder), "-w", str(workspace / "ws"), "--features", run,
                           "--dataset", "test@v1", "--reference", "healthy@v1", "--k", "2-3", "--resamples", "10",
                           "--json", "--out", str(workspace / "learned")], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["source"] == "learned features" and res["patients"] == 30 and res["features"] > 0

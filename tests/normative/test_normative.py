"""Normative models on dataset versions: fit, freeze, score; leakage, provenance and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sobre.errors import CatalogError, InputError
from sobre.normative import fit_normative, list_normative, load_normative, normative_root

from .conftest import FakeWorkspace, cohort_rows, fake_dataset, normative_config


def test_fit_freezes_an_artefact_with_provenance(fake_ws, atlas):
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    folder = model.folder
    assert folder.parent == normative_root(fake_ws) and folder.name.startswith("healthy-v1-")
    rec = json.loads((folder / "model.json").read_text())
    assert rec["dataset"]["ref"] == "healthy@v1" and rec["dataset"]["content_hash"] == "hash-healthy@v1-1"
    assert len(rec["training_subjects"]) == 60 and rec["code"]["sobre_version"]
    assert rec["config"]["model"]["age_df"] == 1 and rec["atlas"]["digest"] == atlas.digest
    assert rec["maps"]["grid"]["shape"] == [8, 8, 8] and rec["maps"]["n_voxels"] == 512
    assert len(model.measures) == 10 and rec["modalities"] == ["MR"]
    for f in ("model.json", "params.npz"):
        assert not os.access(folder / f, os.W_OK) or os.geteuid() == 0
        assert oct((folder / f).stat().st_mode)[-3:] == "444"
    # deterministic: the same fit is the same model (same id, same parameters)
    again = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    assert again.model_id == model.model_id and again.record["params_sha256"] == rec["params_sha256"]
    assert [m["model_id"] for m in list_normative(fake_ws)] == [model.model_id]


def test_score_finds_the_deviating_region(fake_ws, atlas, tmp_path):
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    scores = model.score(fake_ws, "test@v1")
    assert scores.patients.sum() == 15 and scores.controls.sum() == 15
    top = scores.group_table()[0]
    assert (top["kind"], top["region"]) == ("volume", "Beta") and top["mean_z"] < -3 and top["q"] < 1e-6
    ranked = scores.ranked_regions(scores.subjects[0])
    assert ranked[0]["rank"] == 1 and abs(ranked[0]["z"]) >= abs(ranked[-1]["z"])
    assert ranked[0]["z_low"] <= ranked[0]["z"] <= ranked[0]["z_high"]
    rows = scores.subject_table()
    assert {"regions_extreme", "regions_expected", "voxels_extreme", "flags"} <= set(rows[0])
    out = scores.write(fake_ws, tmp_path / "scores")
    names = {p.name for p in out.iterdir()}
    assert {"subjects.tsv", "regions.tsv", "group.tsv", "scores.json", "maps", "group_space-template_q.nii.gz"} <= names
    sid = scores.subjects[0]
    import sobre

    zmap = sobre.load(out / "maps" / f"{sid}_desc-volume_zmap.nii.gz")
    lab = np.asarray(fake_ws.dataset("test@v1").image(f"{sid}-dseg").array)
    beta = next(r for r in ranked if r["region"] == "Beta" and r["kind"] == "volume")
    assert np.allclose(np.asarray(zmap.array)[lab == 2], beta["z"], atol=1e-5)  # painted on the subject's labels
    summary = json.loads((out / "scores.json").read_text())
    assert summary["model"] == model.model_id and summary["simulated"] is True


def test_no_test_subject_reaches_a_fit(fake_ws, atlas, tmp_path):
    """Leakage: a version sharing subjects with the training version is refused; scoring changes nothing."""
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    before = (model.folder / "params.npz").read_bytes()
    overlap = fake_dataset("mixed@v1", cohort_rows(1, 60, prefix="H")[:5] + cohort_rows(9, 5, prefix="N"), seed=9)
    fake_ws._ds["mixed@v1"] = overlap
    with pytest.raises(InputError, match=r"5 subject\(s\) of mixed@v1 were in the normative sample of healthy-v1-.*"
                                         r"\(healthy@v1\): sub-H001"):
        model.score(fake_ws, "mixed@v1")
    with pytest.raises(InputError, match="is the version the normative model .* was fitted on"):
        model.score(fake_ws, "healthy@v1")
    model.score(fake_ws, "test@v1").write(fake_ws, tmp_path / "s")
    assert (model.folder / "params.npz").read_bytes() == before  # site effects (the harmonisation) untouched


def test_fit_refuses_patients_small_cohorts_and_missing_covariates(fake_ws, atlas, tmp_path):
    with pytest.raises(InputError, match=r"test@v1 is not a healthy reference: 15 subject\(s\) have diagnosis = "
                                         r"patient"):
        fit_normative(fake_ws, "test@v1", normative_config(), atlas=atlas)
    small = fake_dataset("small@v1", cohort_rows(3, 12, prefix="S"), seed=3)
    fake_ws._ds["small@v1"] = small
    with pytest.raises(InputError, match=r"the healthy cohort small@v1 is too small for the normative model: 12 "
                                         r"subjects \(expected at least 40 .*10 per parameter"):
        fit_normative(fake_ws, "small@v1", normative_config(model={"min_subjects": 5}), atlas=atlas)
    rows = cohort_rows(4, 60, prefix="M")
    rows[7]["age"] = None
    fake_ws._ds["noage@v1"] = ds = fake_dataset("noage@v1", cohort_rows(4, 60, prefix="M"), seed=4)
    for r in ds.recs:
        if r["subject_id"] == "sub-M008":
            r["age"] = None
    with pytest.raises(InputError, match=r"covariate 'age' is missing for 1 subject\(s\) of noage@v1 \(sub-M008\)"):
        fit_normative(fake_ws, "noage@v1", normative_config(), atlas=atlas)
    uneven = cohort_rows(5, 60, prefix="U", sites=("north",) * 19 + ("east",))
    fake_ws._ds["uneven@v1"] = fake_dataset("uneven@v1", uneven, seed=5)
    with pytest.raises(InputError, match=r"site\(s\) of uneven@v1 with too few reference subjects .*east \(3\)"):
        fit_normative(fake_ws, "uneven@v1", normative_config(), atlas=atlas)
    assert not normative_root(fake_ws).exists() or not any(normative_root(fake_ws).glob("*/model.json"))


def test_extrapolation_is_flagged_per_subject_or_refused(fake_ws, atlas, tmp_path):
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    rows = cohort_rows(6, 20, prefix="O", patients=10, ages=(40, 60))
    rows[0]["age"], rows[11]["age"] = 95.0, 5.0
    fake_ws._ds["old@v1"] = fake_dataset("old@v1", rows, seed=6)
    scores = model.score(fake_ws, "old@v1")
    flags = dict(zip(scores.subjects, scores.flags))
    assert flags["sub-O001"].startswith("age 95 outside the fitted range") and flags["sub-O012"].startswith("age 5 ")
    assert sum(1 for f in scores.flags if f) == 2
    assert not scores.patients[scores.subjects.index("sub-O001")]  # left out of group tests
    assert any(p.code == "extrapolation" for p in scores.problems)
    refuse = load_normative(fake_ws, model.model_id)
    refuse.config.scoring.extrapolation = "refuse"
    with pytest.raises(InputError, match=r"2 subject\(s\) of old@v1 lie outside the normative sample of healthy-v1-"
                                         r".*sub-O001: age 95 outside the fitted range"):
        refuse.score(fake_ws, "old@v1")


def test_another_atlas_space_or_modality_is_refused(fake_ws, atlas, tmp_path):
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    rows = cohort_rows(7, 10, prefix="X")
    fake_ws._ds["atlas2@v1"] = fake_dataset("atlas2@v1", rows, seed=7, labels_extra=9)
    with pytest.raises(InputError, match=r"the label maps of atlas2@v1 hold labels the atlas of healthy-v1-\w+ does "
                                         r"not have: 9 \(expected label maps of the atlas 'generated'"):
        model.score(fake_ws, "atlas2@v1")
    fake_ws._ds["space2@v1"] = fake_dataset("space2@v1", rows, seed=7, map_shape=(9, 8, 8))
    with pytest.raises(InputError, match=r"space2@v1, subject sub-X001: its map is not in the template space of the "
                                         r"model \(expected shape \(8, 8, 8\)"):
        model.score(fake_ws, "space2@v1")
    moved = np.diag([4.0, 4.0, 4.0, 1.0])
    moved[:3, 3] = 10
    fake_ws._ds["space3@v1"] = fake_dataset("space3@v1", rows, seed=7, map_affine=moved)
    with pytest.raises(InputError, match=r"space3@v1.*not in the template space.*with another affine"):
        model.score(fake_ws, "space3@v1")
    fake_ws._ds["ct@v1"] = fake_dataset("ct@v1", rows, seed=7, modality="CT")
    with pytest.raises(InputError, match=r"the images of ct@v1 are CT; the normative model healthy-v1-\w+ was fitted "
                                         r"on MR"):
        model.score(fake_ws, "ct@v1")


def test_tampered_model_and_unknown_model_are_refused(fake_ws, atlas):
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    p = model.folder / "params.npz"
    os.chmod(p, 0o644)
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InputError, match="the parameters of the normative model changed since it was frozen"):
        load_normative(fake_ws, model.model_id)
    with pytest.raises(CatalogError, match="no normative model 'nope'"):
        load_normative(fake_ws, "nope")


def test_unseen_sites_are_flagged(fake_ws, atlas):
    model = fit_normative(fake_ws, "healthy@v1", normative_config(), atlas=atlas)
    fake_ws._ds["east@v1"] = fake_dataset("east@v1", cohort_rows(8, 10, prefix="E", sites=("east",)), seed=8)
    scores = model.score(fake_ws, "east@v1")
    assert not scores.seen_site.any() and all("site 'east' not in the normative sample" in f for f in scores.flags)
    model.config.scoring.unseen_sites = "refuse"
    with pytest.raises(InputError, match=r"site\(s\) of east@v1 not in the normative sample .*: east"):
        model.score(fake_ws, "east@v1")


def test_healthy_controls_are_calibrated(tmp_path, atlas):
    """Held-out controls: |z| > 2.6 within twice the nominal rate (0.93 %)."""
    from sobre.normative import nominal_rate

    ws = FakeWorkspace(tmp_path / "ws", {
        "h@v1": fake_dataset("h@v1", cohort_rows(11, 200, prefix="A"), seed=11),
        "c@v1": fake_dataset("c@v1", cohort_rows(12, 150, prefix="B"), seed=12)})
    model = fit_normative(ws, "h@v1", normative_config(model={"age_df": 2}), atlas=atlas)
    s = model.score(ws, "c@v1")
    rate = np.mean(np.abs(s.region_z[np.isfinite(s.region_z)]) > 2.6)
    rate_vox = np.mean(np.abs(s.map_z) > 2.6)
    assert rate < 2 * nominal_rate(2.6) and rate_vox < 2 * nominal_rate(2.6)

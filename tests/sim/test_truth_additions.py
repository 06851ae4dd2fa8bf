"""The simulator's newer truth: clinical variables with known links and missingness, disease subtypes,
template-space log-Jacobian maps, and the second real anatomy (the ITK examples' T1 head)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sobre.errors import ConfigError
from sobre.sim import REGION_GROUPS, BrainCohortConfig, BrainSimulator, DiseaseModel


def _sim(calib_cache, **kw) -> BrainSimulator:
    base = dict(subjects=400, seed=5, sites=2)
    base.update(kw)
    return BrainSimulator(BrainCohortConfig(**base), cache_dir=calib_cache)


# ------------------------------------------------------------------------------------ clinical variables
def test_clinical_links_and_missingness(brain_template, calib_cache):
    sim = _sim(calib_cache, disease=DiseaseModel.preset("visual"), clinical={
        "missing": {"nfl": {"mechanism": "MAR", "rate": 0.3, "depends_on": "age", "strength": 1.0},
                    "sodium": {"mechanism": "MCAR", "rate": 0.2}}})
    demo = [sim.demographics(i) for i in range(400)]
    cl = [d["_clinical"] for d in demo]
    patient = np.array([d["diagnosis"] == "patient" for d in demo])
    age = np.array([d["age"] for d in demo], float)
    nfl = np.log([c["values"]["nfl"] for c in cl])
    sodium = np.array([c["values"]["sodium"] for c in cl])
    # NfL: higher in patients (configured +0.5 log units x multiplier of mean 1) and with age (0.022/year)
    adj = nfl - 0.022 * (age - 40)
    assert 0.35 < adj[patient].mean() - adj[~patient].mean() < 0.65
    assert np.polyfit(age[~patient], nfl[~patient], 1)[0] == pytest.approx(0.022, abs=0.01)
    # sodium: no link to anything
    assert abs(np.corrcoef(sodium, age)[0, 1]) < 0.15 and abs(sodium[patient].mean() - sodium[~patient].mean()) < 0.7
    # MCAR: about 20 % everywhere; MAR: the probability follows age (observed), not the value
    miss_na = np.array([c["missing"]["sodium"] for c in cl])
    miss_nfl = np.array([c["missing"]["nfl"] for c in cl])
    assert 0.14 < miss_na.mean() < 0.26
    p = np.array([c["missing_probability"]["nfl"] for c in cl])
    assert np.allclose(p, np.clip(0.3 * (1 + (age - 50) / 30), 0, 1))
    assert miss_nfl[age >= 60].mean() > miss_nfl[age < 40].mean() + 0.15
    assert not any(c["missing"]["bmi"] for c in cl)  # no missingness configured for BMI


def test_clinical_observed_values_and_bmi_volume_link(brain_template, calib_cache):
    """Observed values are None where withheld; BMI changes the configured region's volume, nothing else."""
    clin = {"bmi_region": "hippocampus", "bmi_effect": -10.0,
            "missing": {"bmi": {"mechanism": "MCAR", "rate": 0.5}, "nfl": {"mechanism": "MCAR", "rate": 0.5}}}
    on = _sim(calib_cache, subjects=40, clinical=clin)
    off = _sim(calib_cache, subjects=40)
    shown = None
    for i in range(40):
        d_on, d_off = on.demographics(i), off.demographics(i)
        for k in ("age", "sex", "site", "height_m", "diagnosis"):  # the existing draws do not change
            assert d_on[k] == d_off[k]
        if abs(d_on["_clinical"]["values"]["bmi"] - 25) > 4 and shown is None:
            shown = i
    i = shown
    a, b = on.subject(i, image=False), off.subject(i, image=False)
    c = a.truth.clinical
    bmi = c["values"]["bmi"]
    assert a.metadata["bmi"] == (None if c["missing"]["bmi"] else bmi)
    assert a.metadata["nfl"] == (None if c["missing"]["nfl"] else c["values"]["nfl"])
    if c["missing"]["bmi"]:
        assert a.metadata["weight_kg"] is None
    want = math.log1p(-0.10) * (bmi - 25) / 5
    assert a.truth.targets["clinical"]["hippocampus"] == pytest.approx(want, abs=1e-6)
    names = brain_template.names
    hip = sum(a.truth.volumes[names[lab]] for lab in REGION_GROUPS["hippocampus"])
    hip0 = sum(b.truth.volumes[names[lab]] for lab in REGION_GROUPS["hippocampus"])
    assert math.log(hip / hip0) == pytest.approx(want, abs=0.35 * abs(want) + 0.01)
    front = sum(a.truth.volumes[names[lab]] for lab in REGION_GROUPS["frontal"])
    front0 = sum(b.truth.volumes[names[lab]] for lab in REGION_GROUPS["frontal"])
    assert abs(math.log(front / front0)) < 0.01


def test_clinical_config_errors():
    with pytest.raises(ConfigError, match=r"unknown clinical variable\(s\) in missing: crp"):
        BrainCohortConfig.from_dict({"clinical": {"missing": {"crp": {"mechanism": "MCAR", "rate": 0.1}}}})
    with pytest.raises(ConfigError, match=r"unknown region group\(s\) in clinical.bmi_region: brain"):
        BrainCohortConfig.from_dict({"clinical": {"bmi_region": "brain"}})
    with pytest.raises(ConfigError, match=r"clinical\.missing\.nfl\.mechanism"):
        BrainCohortConfig.from_dict({"clinical": {"missing": {"nfl": {"mechanism": "MNAR"}}}})


# ------------------------------------------------------------------------------------ subtypes
def test_subtypes_drawn_by_weight_and_recorded(brain_template, calib_cache):
    cfg = BrainCohortConfig(subjects=600, seed=2, sites=2, patient_fraction=0.7, disease={
        "subtypes": [{"name": "a", "effects": {"hippocampus": -20}, "weight": 3},
                     {"name": "b", "effects": {"visual": -20}, "weight": 1}]})
    sim = BrainSimulator(cfg, cache_dir=calib_cache)
    demo = [sim.demographics(i) for i in range(600)]
    st = [d["_subtype"] for d in demo]
    pat = [d["diagnosis"] == "patient" for d in demo]
    assert all((s is None) == (not p) for s, p in zip(st, pat))
    share_a = sum(s == "a" for s in st) / sum(pat)
    assert 0.68 < share_a < 0.82  # weight 3 : 1
    assert cfg.disease.effects == {}  # subtypes alone: no shared pattern


def test_subtype_patterns_reach_the_anatomy(brain_template, calib_cache):
    """A patient's atrophy follows its subtype: against the same subject as a control (paired)."""
    dis = DiseaseModel.preset("three-subtypes", strength=1.0)
    pts = _sim(calib_cache, subjects=30, patient_fraction=1.0, disease=dis)
    ctl = _sim(calib_cache, subjects=30, patient_fraction=0.0, disease=dis)
    names = brain_template.names
    seen = {}
    for i in range(30):
        st = pts.demographics(i)["_subtype"]
        if st not in seen:
            seen[st] = i
        if len(seen) == 3:
            break
    assert set(seen) == {"limbic", "cortical", "subcortical"}

    def group(truth, g):
        return sum(truth.volumes[names[lab]] for lab in REGION_GROUPS[g])

    for st, i in seen.items():
        a, b = pts.subject(i, image=False), ctl.subject(i, image=False)
        assert a.truth.subtype == st and b.truth.subtype is None and b.truth.disease_map is None
        s = a.metadata["disease_strength"]
        effects = dis.subtype_effects()[st]
        for g in ("hippocampus", "parietal", "thalamus", "frontal"):
            want = s * math.log1p(effects.get(g, 0.0) / 100)
            assert a.truth.targets["disease"][g] == pytest.approx(want, abs=1e-5)
            got = math.log(group(a.truth, g) / group(b.truth, g))
            assert got == pytest.approx(want, abs=0.3 * abs(want) + 0.035), (st, g, got, want)  # neighbours spill a little
        # the disease map is the subtype's pattern on the subject's labels
        dm = np.asarray(a.truth.disease_map.array)
        lab = np.asarray(a.truth.labels.array)
        hip = np.isin(lab, REGION_GROUPS["hippocampus"])
        assert np.allclose(dm[hip], s * math.log1p(effects.get("hippocampus", 0.0) / 100), atol=1e-5)


# ------------------------------------------------------------------------------------ template maps
def test_template_logjac_maps_match_regional_volumes(brain_template, calib_cache):
    sim = _sim(calib_cache, subjects=4, template_maps=True, disease=DiseaseModel.preset("three-subtypes"),
               patient_fraction=1.0)
    a = sim.subject(1, image=False)
    m = a.truth.template_map
    fg = sim.core.grid
    assert m.shape == fg.shape and np.allclose(m.affine, fg.affine)
    lmap = np.asarray(m.array)
    idx = np.rint(fg.node_coords()).astype(int)
    ok = np.all([(idx[k] >= 0) & (idx[k] < brain_template.shape[k]) for k in range(3)], axis=0)
    lab = np.zeros(fg.shape, int)
    lab[ok] = brain_template.labels[idx[0][ok], idx[1][ok], idx[2][ok]]
    assert np.mean(lmap[lab == 0] != 0) < 0.1 and np.mean(lmap[lab > 0] != 0) > 0.9  # masked to the head
    s3 = a.truth.latent["scale"] ** 3
    for g in ("frontal", "hippocampus", "thalamus", "parietal", "white_matter"):
        labs = list(REGION_GROUPS[g])
        est = math.log(float(np.exp(lmap[np.isin(lab, labs)]).mean()))
        true = math.log(sum(a.truth.volumes[brain_template.names[k]] for k in labs) / s3
                        / sum(brain_template.volumes_mm3[k] for k in labs))
        assert est == pytest.approx(true, abs=0.03), g


# ------------------------------------------------------------------------------------ the second anatomy
@pytest.fixture(scope="module")
def itk_template(brain_template):
    from sobre import samples
    from sobre.sim import load_brain_template

    if not samples.is_available("itk-examples"):
        pytest.skip("sample 'itk-examples' (ITK T1 head) is not fetched; run `sobre samples fetch itk-examples`")
    return load_brain_template(substrate="itk-head")


@pytest.mark.slow
def test_itk_head_carries_the_atlas(itk_template, brain_template):
    t = itk_template
    assert t.substrate == "itk-head" and t.shape == brain_template.shape
    assert np.allclose(t.affine, brain_template.affine) and t.digest != brain_template.digest
    q = t.notes["quality"]
    # registration quality, measured: the non-linear stage beats the similarity alone on every class
    assert q["nonlinear_dice_brain"] > 0.95 and q["itk_gm_with_aal"] > 0.85
    for tissue in ("brain", "csf", "gm", "wm"):
        assert q[f"nonlinear_dice_{tissue}"] > q[f"similarity_dice_{tissue}"]
    present = np.bincount(t.labels.ravel(), minlength=120)
    assert (present[1:] > 0).all()  # every AAL region, ventricles, white matter, CSF
    # another anatomy: regional proportions differ from Colin27's
    ratio = t.volumes_mm3[117] / brain_template.volumes_mm3[117]
    assert not 0.8 < ratio < 1.25


@pytest.mark.slow
def test_subjects_on_the_itk_head(itk_template, calib_cache):
    sim = _sim(calib_cache, subjects=3, substrate="itk-head", template_maps=True)
    a = sim.subject(0)
    b = sim.subject(0)
    assert np.array_equal(np.asarray(a.image.array), np.asarray(b.image.array))  # deterministic
    assert a.truth.latent["substrate"] == "itk-head"
    colin = _sim(calib_cache, subjects=3, template_maps=True).subject(0)
    assert a.image.shape == colin.image.shape and np.allclose(a.image.affine, colin.image.affine)
    assert not np.array_equal(np.asarray(a.truth.labels.array), np.asarray(colin.truth.labels.array))
    assert a.truth.template_map.shape == colin.truth.template_map.shape  # one template space for both
    from sobre.sim import warp_labels

    again = warp_labels(a.truth.deformation, a.truth.latent["pre_affine"], a.image, substrate="itk-head")
    assert np.mean(np.asarray(again.array) == np.asarray(a.truth.labels.array)) > 0.999


# ------------------------------------------------------------------------------------ on disk
def test_written_truth_and_clinical_join(brain_template, calib_cache, tmp_path):
    """participants.tsv shows withheld values as n/a (the catalog reads them as missing); the truth keeps
    them, with subtypes and the template maps."""
    import csv

    from sobre.catalog import Workspace
    from sobre.sim import write_brain_cohort

    cfg = BrainCohortConfig(subjects=5, seed=4, sites=2, patient_fraction=1.0, template_maps=True,
                            disease=DiseaseModel.preset("three-subtypes"),
                            clinical={"missing": {"nfl": {"mechanism": "MCAR", "rate": 0.5}}})
    out = tmp_path / "sim"
    write_brain_cohort(cfg, out, format="bids", cache_dir=calib_cache)
    rows = list(csv.DictReader((out / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    truth = {r["participant_id"]: r for r in csv.DictReader(
        (out / "derivatives/sobre-sim/participants_truth.tsv").read_text().splitlines(), delimiter="\t")}
    assert {"nfl", "sodium", "simulated"} <= set(rows[0])
    withheld = [r["participant_id"] for r in rows if r["nfl"] == "n/a"]
    assert withheld and all(truth[s]["nfl_missing"] == "yes" and float(truth[s]["nfl"]) > 0 for s in withheld)
    assert {truth[r["participant_id"]]["subtype"] for r in rows} <= {"limbic", "cortical", "subcortical"}
    sid = rows[0]["participant_id"]
    assert (out / f"derivatives/sobre-sim/{sid}/{sid}_space-colin27_logjac.nii.gz").exists()
    assert (out / "derivatives/sobre-sim/subtype-limbic_pattern.nii.gz").exists()
    ws = Workspace.init(tmp_path / "ws")
    report = ws.ingest([out / r["participant_id"] for r in rows], clinical=out / "participants.tsv")
    assert not report.problems and not report.clinical_error
    recs = {r["subject_id"]: r for r in ws.records()}
    for r in rows:
        got = recs[r["participant_id"]].get("nfl")
        assert (got is None) if r["nfl"] == "n/a" else got == pytest.approx(float(r["nfl"]))


def test_new_truth_is_deterministic_for_a_seed(brain_template, calib_cache):
    kw = dict(subjects=6, seed=9, template_maps=True, clinical={}, patient_fraction=0.7,
              disease=DiseaseModel.preset("three-subtypes"))
    a = _sim(calib_cache, **kw).subject(4, image=False)
    b = _sim(calib_cache, **kw).subject(4, image=False)
    assert a.truth.clinical == b.truth.clinical and a.truth.subtype == b.truth.subtype
    assert np.array_equal(np.asarray(a.truth.template_map.array), np.asarray(b.truth.template_map.array))
    c = _sim(calib_cache, **dict(kw, seed=10)).subject(4, image=False)
    assert c.truth.clinical != a.truth.clinical

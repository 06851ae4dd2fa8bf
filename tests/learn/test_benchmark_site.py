"""Site-robust arms of the label-efficiency benchmark: site-nuisance pretraining, ComBat in repeats, LOSO.

Tiny in-memory cohorts (16³ blobs, three sites whose intensity scale and offset differ).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sobre.errors import ConfigError, InputError
from sobre.learn import LabelEfficiencyConfig, load_config
from sobre.learn import _harmonize
from sobre.learn._benchmark import label_efficiency

from .helpers import bench_cohorts
from .test_benchmark import bench_config

SITE_ARMS = ["yaware_probe", "yaware_site_probe", "yaware_combat_probe", "classical"]


def site_config(**over):
    cfg = bench_config(n_labels=[24], repeats=2, methods=SITE_ARMS,
                       yaware_site={"variable": "site", "method": "both", "weight": 0.5},
                       site_analysis={"loso_n": 24}, targets=bench_config()["targets"][:1])
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def cohorts():
    pre, tgt = bench_cohorts()
    return pre, {"disease": tgt}


# ----------------------------------------------------------------------------------------- ComBat
def _features(n=90, seed=0):
    rng = np.random.default_rng(seed)
    site = np.array(["a", "b", "c"])[np.arange(n) % 3]
    age = rng.uniform(20, 80, n)
    shift = np.array([{"a": 0.0, "b": 1.0, "c": -1.0}[s] for s in site])
    x = rng.normal(size=(n, 6)) + shift[:, None] * np.array([1, 2, 0, 0.5, 1, 3]) + 0.03 * age[:, None]
    x[:, 2] = 0.0  # a dead channel: passed through, not divided by its zero variance
    return x, site, age[:, None]


def test_combat_fit_uses_training_rows_only():
    x, site, age = _features()
    fit, test = np.arange(0, 60), np.arange(60, 90)
    h_fit, h_test, model = _harmonize.combat_train_test(x, site, age, fit, test, ["age"])
    x2, age2 = x.copy(), age.copy()
    x2[test] = 100.0 + 50 * np.random.default_rng(9).normal(size=(len(test), x.shape[1]))
    age2[test] = 5.0
    h_fit2, h_test2, model2 = _harmonize.combat_train_test(x2, site, age2, fit, test, ["age"])
    np.testing.assert_array_equal(h_fit, h_fit2)  # the test rows changed nothing of the fit
    for k in ("gamma_star", "delta_star", "B_hat", "var_pooled", "stand_mean"):
        np.testing.assert_array_equal(np.asarray(model.model[k]), np.asarray(model2.model[k]))
    assert not np.allclose(h_test, h_test2)
    # each applied row depends on its own values only
    h_one = _harmonize.combat_apply(x[test[:1]], site[test[:1]], model, age[test[:1]])
    np.testing.assert_allclose(h_one, h_test[:1])
    assert model.kept.tolist() == [True, True, False, True, True, True]
    np.testing.assert_array_equal(h_test[:, 2], 0.0)
    # site offsets of the training rows are removed: site means much closer than before
    before = np.ptp([x[fit][site[fit] == s, 5].mean() for s in "abc"])
    after = np.ptp([h_fit[site[fit] == s, 5].mean() for s in "abc"])
    assert before > 3 and after < 0.5 * before


def test_combat_refuses_an_unseen_site_and_too_few_subjects():
    x, site, age = _features()
    fit = np.flatnonzero(site != "c")
    with pytest.raises(InputError, match="cannot harmonise site"):
        _harmonize.combat_train_test(x, site, age, fit, np.flatnonzero(site == "c"), ["age"])
    with pytest.raises(InputError, match="two or more training subjects") as e:
        _harmonize.combat_fit(x[:4], site[:4], age[:4], ["age"])
    assert "a: 2, b: 1, c: 1" in str(e.value)


def test_no_test_subject_reaches_a_combat_fit(cohorts, tmp_path, monkeypatch):
    pre, targets = cohorts
    fits = []
    real = _harmonize.combat_train_test

    def spy(x, site, cov, fit_rows, apply_rows, names=None):
        fits.append((np.array(fit_rows), np.array(apply_rows), list(names or [])))
        return real(x, site, cov, fit_rows, apply_rows, names)

    monkeypatch.setattr(_harmonize, "combat_train_test", spy)
    res = label_efficiency(site_config(methods=["yaware_combat_probe"], n_labels=[12, 24]), pretrain_cohort=pre,
                           target_cohorts=targets, runs_dir=tmp_path, log=None)
    d = res["targets"]["disease"]
    tgt = targets["disease"]
    test_rows = set(tgt.rows_of(d["test_subjects"]).tolist())
    target_fits = [f for f in fits if len(f[0]) + len(f[1]) <= len(tgt)][-4:]  # 2 N x 2 repeats
    assert len(target_fits) == 4 and {len(f[0]) for f in target_fits} <= {11, 12, 13, 23, 24, 25}
    for fit_rows, apply_rows, names in target_fits:
        assert not set(fit_rows.tolist()) & test_rows  # no test subject in any ComBat fit
        assert set(apply_rows.tolist()) == test_rows
        assert names == ["age"]  # the target's covariates; never the label
    # the pretraining probe of ComBat: fitted on the encoder's training subjects, not the held-out ones
    assert res["site_probe"]["yaware_combat"]["combat"]["covariates"] == ["age"]
    recs = [r for r in d["records"] if r["method"] == "yaware_combat_probe"]
    assert {r["combat_fit_subjects"] for r in recs} <= {11, 12, 13, 23, 24, 25} and len(recs) == 4


def test_leace_equalises_the_site_means_of_the_rows_it_was_fitted_on():
    x, site, _ = _features(150, seed=3)
    fit = np.arange(120)
    e = _harmonize.leace_fit(x[fit], site[fit])
    assert e.rank == 2  # three sites: two directions
    xe = e(x)
    means = np.stack([xe[fit][site[fit] == s].mean(0) for s in "abc"])
    np.testing.assert_allclose(means, np.broadcast_to(means[0], means.shape), atol=1e-9)
    # the least change: directions without site information are left as they are
    rest = xe - x
    assert np.linalg.matrix_rank(rest - rest.mean(0), tol=1e-8) <= 2
    with pytest.raises(InputError, match="at least two sites"):
        _harmonize.leace_fit(x[:5], np.array(["a"] * 5))


# ------------------------------------------------------------------------------------- end to end
def test_site_arms_report_site_probe_auc_and_loso(cohorts, tmp_path):
    pre, targets = cohorts
    base = label_efficiency(site_config(methods=["yaware_probe", "classical"]), pretrain_cohort=pre,
                            target_cohorts=targets, runs_dir=tmp_path, log=None)
    res = label_efficiency(site_config(), pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path,
                           log=None)
    # the existing arms' results do not change when the site arms run beside them
    old = {(r["method"], r["repeat"]): r["auc"] for r in base["targets"]["disease"]["records"]}
    new = {(r["method"], r["repeat"]): r["auc"] for r in res["targets"]["disease"]["records"]
           if r["method"] in ("yaware_probe", "classical")}
    assert old == new
    assert res["pretraining"]["yaware"]["reused"] and not res["pretraining"]["yaware_site"]["reused"]
    sp = res["site_probe"]
    for rep in ("yaware", "yaware_site", "yaware_combat"):
        assert 0 <= sp[rep]["ci_low"] <= sp[rep]["balanced_accuracy"] <= sp[rep]["ci_high"] <= 1, rep
        assert sp[rep]["chance"] == pytest.approx(1 / 3) and sp[rep]["n_sites"] == 3
        assert 0 <= sp[rep]["knn"]["balanced_accuracy"] <= 1 and sp[rep]["knn"]["k"] == 15, rep
        assert sp[rep]["cv_held_out"]["n_test"] == sp[rep]["n_test"], rep  # every held-out subject, out of fold
    assert "simclr" not in res["pretraining"]  # no arm needs it
    # the nuisance reached the pretraining run's config
    run = json.loads((tmp_path / res["pretraining"]["yaware_site"]["run_id"] / "run.json").read_text())
    assert run["config"]["method"]["nuisance"] == {"variable": "site", "method": "both", "weight": 0.5}
    se = res["targets"]["disease"]["site_effects"]
    assert set(se["loso"]) == {"yaware_probe", "yaware_site_probe", "classical"}
    for m, lo in se["loso"].items():
        assert lo["repeats"] == 2 and 0 <= lo["mean"] <= 1 and lo["in_distribution_mean"] is not None, m
    assert "absent from its fit" in se["not_computed"]["yaware_combat_probe"]
    assert len(se["loso_records"]) == 2 * 3
    for r in se["loso_records"]:
        assert set(r["per_site"]) == {"north", "south", "east"} and r["n_scored"] == res["targets"]["disease"][
            "n_test"]
    assert set(se["test_site_probe"]) == set(SITE_ARMS)
    assert se["test_site_probe"]["yaware_combat_probe"]["repeats"] == 2
    checks = res["targets"]["disease"]["checks"]
    assert "yaware_site_probe_minus_yaware_probe_at_100" not in checks  # only at N = 100
    md = (res.run.path / "results.md").read_text()
    assert "Site effects (site; chance balanced accuracy 0.333)" in md
    assert "| y-aware + ComBat + probe |" in md and "ComBat cannot harmonise a site absent from its fit" in md
    assert "LOSO AUC at N = 24" in md and "same, kNN probe (non-linear)" in md


def test_erasure_of_the_yaware_encoder_needs_no_second_pretraining(cohorts, tmp_path):
    pre, targets = cohorts
    res = label_efficiency(site_config(methods=["yaware_probe", "yaware_site_probe"],
                                       yaware_site={"method": "none", "erase": "leace"}),
                           pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path, log=None)
    p = res["pretraining"]
    assert p["yaware_site"]["run_id"] == p["yaware"]["run_id"] and p["yaware_site"]["seconds"] == 0.0
    sp = res["site_probe"]
    assert sp["yaware_site"]["n_test"] == sp["yaware"]["n_test"] > 0  # the same held-out pretraining subjects
    # fitted on the subjects that pretrained the encoder only, never on the held-out ones the probe scores
    assert p["yaware_site"]["erase"] == {"method": "leace", "variable": "site", "rank": 2,
                                         "fitted_on": 64 - sp["yaware"]["n_test"]}
    md = (res.run.path / "results.md").read_text()
    assert "LEACE erasure of 2 directions" in md


def test_site_arms_are_deterministic_for_a_seed(cohorts, tmp_path):
    pre, targets = cohorts
    cfg = site_config(methods=["yaware_site_probe", "yaware_combat_probe"])
    a = label_efficiency(cfg, pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path / "a", log=None)
    b = label_efficiency(cfg, pretrain_cohort=pre, target_cohorts=targets, runs_dir=tmp_path / "b", log=None)
    assert not b["pretraining"]["yaware_site"]["reused"]  # pretrained again, not read back

    def numbers(res):
        d = res["targets"]["disease"]
        return ([(r["method"], r["n"], r["repeat"], r["auc"]) for r in d["records"]],
                {k: v["balanced_accuracy"] for k, v in res["site_probe"].items() if isinstance(v, dict)},
                [(r["method"], r["auc"]) for r in d["site_effects"]["loso_records"]],
                {k: v["balanced_accuracy"] for k, v in d["site_effects"]["test_site_probe"].items()})

    assert numbers(a) == numbers(b)
    assert len(numbers(a)[0]) == 2 * 2


# ---------------------------------------------------------------------------------------- config
BASE = """
pretrain_data = { dataset = "h@v1" }
methods = ["yaware_probe", "yaware_site_probe", "yaware_combat_probe"]
[[targets]]
name = "t"
data = { dataset = "t@v1" }
task = { kind = "binary", label = "diagnosis", positive = "patient" }
"""


def test_config_of_the_site_arms(tmp_path):
    p = tmp_path / "le.toml"
    p.write_text(BASE + '[yaware_site]\nvariable = "site"\nmethod = "conditional"\n[site_analysis]\nloso_n = 50\n')
    cfg = load_config(p, LabelEfficiencyConfig)
    assert cfg.yaware_site.method == "conditional" and cfg.yaware_site.weight == 1.0
    assert cfg.site_analysis.loso_n == 50 and cfg.site_analysis.combat_covariates is None
    p.write_text(BASE + '[yaware_site]\nmethod = "none"\n')
    with pytest.raises(ConfigError, match="is the y-aware arm itself"):
        load_config(p, LabelEfficiencyConfig)
    p.write_text(BASE.replace('"yaware_combat_probe"]', '"yaware_site_finetune"]') + '[yaware_site]\nerase = "leace"\n')
    with pytest.raises(ConfigError, match="without the erasure"):
        load_config(p, LabelEfficiencyConfig)
    p.write_text(BASE + '[yaware_site]\nvariable = "site"\nwieght = 2.0\n')
    with pytest.raises(ConfigError, match=r"unknown key 'yaware_site\.wieght'; did you mean 'weight'\?"):
        load_config(p, LabelEfficiencyConfig)
    p.write_text(BASE + '[site_analysis]\nloso = 100\n')
    with pytest.raises(ConfigError, match=r"unknown key 'site_analysis\.loso'; did you mean 'loso_n'\?"):
        load_config(p, LabelEfficiencyConfig)
    p.write_text(BASE + '[yaware_site]\nvariable = "site"\nmethod = "adverserial"\n')
    with pytest.raises(ConfigError, match=r"yaware_site\.method") as e:
        load_config(p, LabelEfficiencyConfig)
    assert "both" in str(e.value) and "adversarial" in str(e.value)
    p.write_text(BASE.replace('"yaware_combat_probe"', '"yaware_combat_prob"'))
    with pytest.raises(ConfigError, match="unknown method 'yaware_combat_prob' \\(did you mean "
                                          "'yaware_combat_probe'\\?\\)"):
        load_config(p, LabelEfficiencyConfig)
    p.write_text(BASE + '[yaware]\nkind = "yaware"\nvariables = ["age"]\nbandwidth = [5.0]\n'
                        'nuisance = { variable = "site" }\n')
    with pytest.raises(ConfigError, match=r"put the nuisance in the \[yaware_site\] section"):
        load_config(p, LabelEfficiencyConfig)

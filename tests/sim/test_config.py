"""Configuration: presets, validation with actionable errors, TOML, default sites."""

from __future__ import annotations

import pytest

from sobre.errors import ConfigError
from sobre.sim import (
    DISEASE_PRESETS,
    REGION_GROUPS,
    BrainCohortConfig,
    DiseaseModel,
    SiteConfig,
    default_sites,
)
from sobre.sim._config import DEFAULT_AGE_RATES, resolve_sites


def test_presets_overlap_ageing_or_not(brain_template):
    ageing = {g for g, r in DEFAULT_AGE_RATES.items() if r != 0}
    acc = DiseaseModel.preset("accelerated-ageing")
    assert set(acc.effects) <= ageing and len(acc.effects) >= 4
    vis = DiseaseModel.preset("non-ageing")  # alias
    assert vis.name == "visual"
    for spec in vis.effects:
        for lab in brain_template.resolve_regions(spec):
            group = next(g for g, labs in REGION_GROUPS.items() if lab in labs)
            assert DEFAULT_AGE_RATES[group] == 0, f"{spec} ages"
    assert DiseaseModel.preset("schizophrenia-like", strength=0.4).strength == 0.4
    assert set(DISEASE_PRESETS) == {"accelerated-ageing", "visual"}


def test_unknown_preset_and_keys_are_refused():
    with pytest.raises(ConfigError, match="unknown disease preset 'flu'"):
        DiseaseModel.preset("flu")
    with pytest.raises(ConfigError, match=r"unknown key 'subjcts'; did you mean 'subjects'\?.*expected one of: age, "
                                          r"anatomy.*found 'subjcts'.*docs/simulation\.md"):
        BrainCohortConfig.from_dict({"subjcts": 3})
    with pytest.raises(ConfigError, match=r"unknown key 'anatomy\.warp'.*expected one of: female_volume_ratio"):
        BrainCohortConfig.from_dict({"anatomy": {"warp": 1}})
    with pytest.raises(ConfigError, match=r"wrong value for 'resolution' \(expected 0\.5 to 8 mm; found 0\.1\)"):
        BrainCohortConfig(resolution=0.1)
    with pytest.raises(ConfigError, match=r"unknown region group\(s\) in age rates: hipocampus \(expected region "
                                          r"groups frontal"):
        BrainCohortConfig.from_dict({"age": {"rates": {"hipocampus": -5}}})
    with pytest.raises(ConfigError, match=r"\[disease\] unknown disease preset 'flu' \(expected one of "
                                          r"accelerated-ageing, visual"):
        BrainCohortConfig.from_dict({"disease": "flu"})


@pytest.mark.parametrize("data, message", [
    ({"subjects": 0}, r"wrong value for 'subjects' \(expected at least 1 subject.*found 0\)"),
    ({"seed": -1}, r"wrong value for 'seed' \(expected a whole number >= 0; found -1\)"),
    ({"seed": 1.5}, r"wrong value for 'seed'.*found 1\.5"),
    ({"disease": {"preset": "visual", "strength": float("inf")}},
     r"wrong value for 'disease\.strength' \(expected a finite number; found inf\)"),
    ({"disease": {"preset": "visual", "strength": float("nan")}},
     r"wrong value for 'disease\.strength' \(expected a finite number; found nan\)"),
    ({"disease": {"preset": "visual", "strength": 50}},
     r"wrong value for 'disease\.strength' \(expected a finite number from -10 to 10.*found 50\)"),
    ({"disease": {"effects": {"hippocampus": -120}}}, r"disease effect on 'hippocampus' must be above -100 %"),
    ({"patient_fraction": 1.5}, r"wrong value for 'patient_fraction' \(expected less than or equal to 1; found 1\.5\)"),
    ({"sites": 0}, r"wrong value for 'sites' \(expected 1 to 64 sites; found 0\)"),
    ({"sites": "two"}, r"wrong value for 'sites' \(expected a number of sites \(1 to 64\) or a list"),
    ({"sites": []}, r"wrong value for 'sites' \(expected at least one site"),
    ({"sites": [{"name": "a"}, {"name": "a"}]}, r"expected unique site names \(found a, a\)"),
    ({"sites": [{"name": "a", "noise": -1}]}, r"wrong value for 'sites\[0\]\.noise' \(expected greater than or "
                                              r"equal to 0; found -1\)"),
    ({"sites": [{"name": "a", "orientation": "oblique"}]}, r"wrong value for 'sites\[0\]\.orientation'.*'axial', "
                                                           r"'sagittal' or 'coronal'.*found 'oblique'"),
    ({"sites": [{"nme": "a"}]}, r"unknown key 'sites\[0\]\.nme'; did you mean 'name'\?"),
    ({"sites": [{"name": "old", "age_min": 70, "age_max": 60}]}, r"site old: age_min must be below age_max "
                                                                 r"\(found 70 >= 60\)"),
    ({"output_grid": "both"}, r"wrong value for 'output_grid' \(expected 'site' or 'common'; found 'both'\)"),
    ({"anatomy": {"group_sd": {"hippocampus": -0.1}}}, r"group_sd of hippocampus must be >= 0"),
])
def test_every_value_is_checked_with_key_expected_found(data, message):
    with pytest.raises(ConfigError, match=message):
        BrainCohortConfig.from_dict(data)


def test_direct_construction_and_assignment_are_checked_too():
    with pytest.raises(ConfigError, match=r"wrong value for 'sites\[1\]\.noise'"):
        BrainCohortConfig(sites=[SiteConfig(name="a"), {"name": "b", "noise": -1}])
    with pytest.raises(ConfigError, match=r"wrong value for 'voxel_size\[1\]' \(expected greater than 0; found 0\)"):
        SiteConfig(name="a", voxel_size=(2, 0, 2))
    cfg = BrainCohortConfig(subjects=2)
    cfg.subjects = 0  # attributes are plain; validate() (and every simulator) checks them again
    with pytest.raises(ConfigError, match="wrong value for 'subjects'"):
        cfg.validate()


def test_toml_errors_name_the_file_and_the_table(tmp_path):
    p = tmp_path / "sim.toml"
    p.write_text("[brain]\nsubjects = 3\nresolutoin = 2\n")
    with pytest.raises(ConfigError, match=r"sim\.toml: unknown key 'brain\.resolutoin'; did you mean 'resolution'"):
        BrainCohortConfig.from_toml(p)
    p.write_text("[brain\nsubjects = 3\n")
    with pytest.raises(ConfigError, match=r"sim\.toml: not valid TOML.*line 1"):
        BrainCohortConfig.from_toml(p)


def test_toml_roundtrip(tmp_path):
    p = tmp_path / "sim.toml"
    p.write_text("""
[brain]
subjects = 7
seed = 3
disease = {preset = "visual", strength = 0.5}
[[brain.sites]]
name = "paris"
age_min = 60
age_max = 85
patient_fraction = 0.8
[[brain.sites]]
name = "lyon"
orientation = "sagittal"
voxel_size = [2, 2, 3]
""")
    cfg = BrainCohortConfig.from_toml(p)
    assert cfg.subjects == 7 and cfg.disease.name == "visual" and cfg.disease.strength == 0.5
    sites = resolve_sites(cfg)
    assert [s.name for s in sites] == ["paris", "lyon"] and sites[1].voxel_size == (2.0, 2.0, 3.0)
    again = BrainCohortConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_default_sites_are_deterministic_and_off_means_identical():
    a = default_sites(4, seed=1, resolution=2.0)
    assert a == default_sites(4, seed=1, resolution=2.0)
    assert len({s.model for s in a}) == 4 and len({s.intensity_scale for s in a}) == 4
    off = default_sites(4, seed=1, resolution=2.0, site_effects=False)
    keys = ("intensity_scale", "intensity_offset", "gamma", "bias_strength", "noise", "voxel_size", "orientation")
    assert len({tuple(getattr(s, k) for k in keys) for s in off}) == 1
    assert [s.manufacturer for s in off] == [s.manufacturer for s in a]


def test_id_prefix_keeps_cohorts_apart(brain_template, calib_cache):
    from sobre.sim._brain import BrainSimulator

    a = BrainSimulator(BrainCohortConfig(subjects=3, seed=4, id_prefix="H"), cache_dir=calib_cache)
    b = BrainSimulator(BrainCohortConfig(subjects=3, seed=4), cache_dir=calib_cache)
    da, db = a.demographics(1), b.demographics(1)
    assert da["subject_id"] == "sub-H0002" and db["subject_id"] == "sub-0002"
    assert {k: v for k, v in da.items() if k != "subject_id"} == {k: v for k, v in db.items() if k != "subject_id"}
    with pytest.raises(ConfigError, match=r"wrong value for 'id_prefix' \(expected letters and digits only.*found "
                                          r"'H-1'\)"):
        BrainCohortConfig(id_prefix="H-1")

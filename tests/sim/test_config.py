"""Configuration: presets, validation with actionable errors, TOML, default sites."""

from __future__ import annotations

import pytest

from sobre.errors import ConfigError
from sobre.sim import DISEASE_PRESETS, REGION_GROUPS, BrainCohortConfig, DiseaseModel, default_sites
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
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[simulation\]: subjcts"):
        BrainCohortConfig.from_dict({"subjcts": 3})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[anatomy\]"):
        BrainCohortConfig.from_dict({"anatomy": {"warp": 1}})
    with pytest.raises(ConfigError, match="resolution out of range"):
        BrainCohortConfig(resolution=0.1).validate()
    with pytest.raises(ConfigError, match="unknown region group"):
        BrainCohortConfig.from_dict({"age": {"rates": {"hipocampus": -5}}})


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
    with pytest.raises(ConfigError, match="id_prefix must be letters and digits"):
        BrainCohortConfig(id_prefix="H-1").validate()

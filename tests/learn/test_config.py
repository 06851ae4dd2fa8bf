"""Typed configs: every bad key or value is refused with the file, the key, expected vs found, a fix."""

from __future__ import annotations

import pytest

from sobre.errors import ConfigError
from sobre.learn import LabelEfficiencyConfig, PretrainConfig, TrainConfig, load_config, resolved

GOOD = """
seed = 3
[data]
dataset = "target@v1"
[task]
kind = "binary"
label = "diagnosis"
positive = "patient"
[model]
backbone = "compact3d"
width = 8
[optim]
epochs = 5
[[augment]]
kind = "flip"
axes = [0, 1]
[[augment]]
kind = "affine"
rotate_deg = 5.0
"""


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_resolves_every_default(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), TrainConfig)
    r = resolved(cfg)
    assert r["seed"] == 3 and r["model"]["width"] == 8 and r["model"]["depth"] == 4
    assert r["split"] == {"test_fraction": 0.2, "test_column": None, "test_values": ["test"], "val_fraction": 0.2,
                          "folds": 1, "stratify": ["label", "site"], "seed": None}
    assert [a["kind"] for a in r["augment"]] == ["flip", "affine"]
    assert TrainConfig.model_validate(r) == cfg  # the resolved config is itself a valid config


def test_unknown_key_names_file_key_and_nearest_valid_key(tmp_path):
    p = write(tmp_path, GOOD.replace("width = 8", "widht = 8"))
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key 'model\.widht'; did you mean 'width'\?") as e:
        load_config(p, TrainConfig)
    assert "expected one of: " in str(e.value) and "width" in str(e.value.expected)
    assert e.value.found == "'widht'" and "remove or rename" in str(e.value)


def test_unknown_key_inside_an_augmentation_lists_that_augmentation_keys(tmp_path):
    p = write(tmp_path, GOOD.replace("rotate_deg = 5.0", "rotate = 5.0"))
    with pytest.raises(ConfigError, match=r"unknown key 'augment\[1\]\.rotate'; did you mean 'rotate_deg'") as e:
        load_config(p, TrainConfig)
    assert e.value.expected == "one of: kind, prob, rotate_deg, scale, translate"


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'optimizer'; did you mean 'optim'"):
        load_config(write(tmp_path, GOOD + "\n[optimizer]\nlr = 1\n"), TrainConfig)


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"wrong value for 'optim\.epochs'") as e:
        load_config(write(tmp_path, GOOD.replace("epochs = 5", 'epochs = "many"')), TrainConfig)
    assert "'many'" in e.value.found
    with pytest.raises(ConfigError, match=r"wrong value for 'model\.backbone'") as e:
        load_config(write(tmp_path, GOOD.replace('"compact3d"', '"vgg"')), TrainConfig)
    assert "'compact3d'" in e.value.expected and e.value.found == "'vgg'"


def test_several_problems_are_listed_together(tmp_path):
    text = GOOD.replace("width = 8", "widht = 8").replace("epochs = 5", "epochs = -1")
    with pytest.raises(ConfigError, match="2 problems in the config") as e:
        load_config(write(tmp_path, text), TrainConfig)
    assert "model.widht" in str(e.value) and "optim.epochs" in str(e.value)


def test_missing_required_and_rule_violations(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'data'"):
        load_config(write(tmp_path, '[task]\nkind = "regression"\nlabel = "age"\n'), TrainConfig)
    with pytest.raises(ConfigError, match=r"\[task\] a binary task needs `label`"):
        load_config(write(tmp_path, '[data]\ndataset = "x"\n[task]\nkind = "binary"\n'), TrainConfig)
    with pytest.raises(ConfigError, match="unknown or missing `kind`") as e:
        load_config(write(tmp_path, GOOD + '[[augment]]\nkind = "zoom"\n'), TrainConfig)
    assert "'zoom'" in str(e.value)
    with pytest.raises(ConfigError, match="segmentation needs backbone"):
        load_config(write(tmp_path, '[data]\ndataset = "x"\n[task]\nkind = "segmentation"\n'
                                    'mask = {equals = "mask"}\n'), TrainConfig)
    with pytest.raises(ConfigError, match='resample = "shape" needs `shape`'):
        load_config(write(tmp_path, GOOD + '[preprocess]\nresample = "shape"\n'), TrainConfig)


def test_yaware_needs_one_bandwidth_per_variable():
    base = {"data": {"dataset": "h@v1"}}
    with pytest.raises(Exception, match="one value per variable"):
        PretrainConfig.model_validate(base | {"method": {"kind": "yaware", "variables": ["age", "bmi"],
                                                         "bandwidth": [5.0]}})
    cfg = PretrainConfig.model_validate(base | {"method": {"kind": "yaware", "variables": ["age"], "bandwidth": [5]}})
    assert cfg.method.bandwidth == [5.0] and cfg.optim.batch_size == 32


def test_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[data\n"), TrainConfig)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml", TrainConfig)


def test_benchmark_config_defaults_and_unknown_method():
    base = {"pretrain_data": {"dataset": "h@v1"},
            "targets": [{"name": "t", "data": {"dataset": "t@v1"},
                         "task": {"kind": "binary", "label": "diagnosis", "positive": "patient"}}]}
    cfg = LabelEfficiencyConfig.model_validate(base)
    assert cfg.n_labels == [25, 50, 100, 200, 400] and cfg.repeats == 5
    assert cfg.methods == ["scratch", "simclr_probe", "yaware_probe", "yaware_finetune", "classical"]
    with pytest.raises(Exception, match="unknown method 'magic'"):
        LabelEfficiencyConfig.model_validate(base | {"methods": ["magic"]})

"""``sobre train|pretrain|probe|runs|benchmark`` on a workspace with a frozen dataset version."""

from __future__ import annotations

import json


from sobre.cli import main

TRAIN = """
seed = 1
name = "cli-binary"
[data]
dataset = "all@v1"
[task]
kind = "binary"
label = "diagnosis"
positive = "patient"
[split]
test_fraction = 0.25
[model]
width = 4
depth = 2
[optim]
epochs = 2
batch_size = 8
[runtime]
progress = false
"""

PRETRAIN = """
[data]
dataset = "all@v1"
[method]
kind = "yaware"
variables = ["age"]
bandwidth = [5.0]
[model]
width = 4
depth = 2
[optim]
epochs = 1
batch_size = 8
[[augment]]
kind = "flip"
[monitor]
val_fraction = 0.2
regress = ["age"]
[runtime]
progress = false
"""

BENCH = """
name = "cli-bench"
n_labels = [10]
repeats = 1
methods = ["yaware_probe", "classical"]
[pretrain_data]
dataset = "all@v1"
[model]
width = 4
depth = 2
[pretrain_optim]
epochs = 1
batch_size = 8
[baseline]
grid = [2, 2, 2]
[[targets]]
name = "dx"
data = { dataset = "all@v1" }
task = { kind = "binary", label = "diagnosis", positive = "patient" }
test_size = 12
[runtime]
progress = false
"""


def run_cli(capsys, *args):
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_runs_list_show(blob_workspace, tmp_path, capsys):
    ws, _ = blob_workspace
    cfg = tmp_path / "train.toml"
    cfg.write_text(TRAIN)
    code, out, err = run_cli(capsys, "train", cfg, "-w", ws.root, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "completed" and 0 <= res["metrics"]["test"]["auc"] <= 1
    code, out, _ = run_cli(capsys, "runs", "list", "-w", ws.root, "--json")
    runs = json.loads(out)
    assert any(r["run_id"] == res["run_id"] and r["kind"] == "train" and r["dataset"] == "all@v1" for r in runs)
    code, out, _ = run_cli(capsys, "runs", "show", res["run_id"][:22], "-w", ws.root, "--epochs")
    assert code == 0 and f"run {res['run_id']} (train, completed)" in out
    assert "dataset all@v1" in out and "epoch 2" in out and "predictions.csv" in out
    code, out, _ = run_cli(capsys, "runs", "list", "-w", ws.root)
    assert res["run_id"] in out and "test auc" in out
    code, _, err = run_cli(capsys, "runs", "show", "no-such-run", "-w", ws.root)
    assert code == 2 and "no run 'no-such-run'" in err


def test_bad_config_and_bad_data_exit_2_with_a_clear_message(blob_workspace, tmp_path, capsys):
    ws, _ = blob_workspace
    cfg = tmp_path / "bad.toml"
    cfg.write_text(TRAIN.replace("epochs = 2", "epoch = 2"))
    code, _, err = run_cli(capsys, "train", cfg, "-w", ws.root)
    assert code == 2 and f"error: {cfg}: unknown key 'optim.epoch'; did you mean 'epochs'?" in err
    assert "Traceback" not in err
    cfg.write_text(TRAIN.replace('label = "diagnosis"', 'label = "dx"'))
    code, _, err = run_cli(capsys, "train", cfg, "-w", ws.root)
    assert code == 2 and "task.label = 'dx': no such column in dataset version all@v1" in err
    cfg.write_text(TRAIN.replace('dataset = "all@v1"', 'dataset = "all@v9"'))
    code, _, err = run_cli(capsys, "train", cfg, "-w", ws.root)
    assert code == 2 and "no dataset version 'all@v9'" in err
    cfg.write_text(TRAIN.replace("[split]", "[split]\nfolds = 20"))
    code, _, err = run_cli(capsys, "train", cfg, "-w", ws.root)
    assert code == 2 and "too few for a held-out test set and 20-fold cross-validation" in err
    code, _, err = run_cli(capsys, "train", "-w", ws.root)
    assert code == 2 and "no config given" in err


def test_pretrain_probe_and_benchmark(blob_workspace, tmp_path, capsys):
    ws, _ = blob_workspace
    p = tmp_path / "pre.toml"
    p.write_text(PRETRAIN)
    code, out, err = run_cli(capsys, "pretrain", p, "-w", ws.root, "--json")
    assert code == 0, err
    pre = json.loads(out)
    assert "monitor_age_mae" in pre["metrics"]
    t = tmp_path / "probe.toml"
    t.write_text(TRAIN.replace("depth = 2", f'depth = 2\ninit_from = "{pre["run_id"]}"'))
    code, out, err = run_cli(capsys, "probe", t, "-w", ws.root)
    assert code == 0, err
    assert "completed" in out and "test auc" in out
    b = tmp_path / "bench.toml"
    b.write_text(BENCH)
    code, out, err = run_cli(capsys, "benchmark", "label-efficiency", b, "-w", ws.root)
    assert code == 0, err
    assert "| y-aware + probe |" in out and "results in" in out
    code, out, _ = run_cli(capsys, "runs", "list", "--kind", "benchmark", "-w", ws.root, "--json")
    assert len(json.loads(out)) == 1


def test_epoch_records_are_rendered_on_stderr(capsys):
    from sobre.cli._learn import _Epochs

    _Epochs(True)({"epoch": 3, "train_loss": 0.69314, "val_loss": 0.7, "val_auc": 0.75, "lr": 0.001,
                   "group": "fold0", "monitor": "val_auc"})
    _Epochs(True)({"epoch": 1, "train_loss": 4.2, "monitor_age_mae": 9.87, "group": "pretrain"})
    _Epochs(False)({"epoch": 1, "group": "fold0"})
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == ["[fold0] epoch 3  train_loss 0.6931  val_loss 0.7  val_auc 0.75",
                                    "[pretrain] epoch 1  train_loss 4.2  monitor_age_mae 9.87"]

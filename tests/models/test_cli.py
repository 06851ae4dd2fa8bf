"""``sobre model ...``: thin over the registry; one clear error line and exit 2 for bad input, 1 for a failed check."""

from __future__ import annotations

import json
import shutil

from sobre.cli import main


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_register_list_show_verify_export(site, tmp_path, capsys):
    ws, run = site
    w = ("-w", ws.root)
    status, out, err = run_cli(capsys, "model", "register", run.run_id, "--name", "cli", "--version", "1", *w,
                               "--purpose", "a test", "--contraindication", "children", "--contraindication",
                               "implants", "--no-measure", "--json")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["ref"] == "cli@1" and summary["run_id"] == run.run_id
    status, out, _ = run_cli(capsys, "model", "list", *w, "--json")
    assert "cli@1" in [r["ref"] for r in json.loads(out)]
    status, out, _ = run_cli(capsys, "model", "show", "cli@1", *w, "--json")
    card = json.loads(out)["card"]["sections"]["intended_use"]
    assert card["purpose"] == "a test" and card["contraindications"] == ["children", "implants"]
    status, out, _ = run_cli(capsys, "model", "show", "cli@1", *w, "--card")
    assert out.startswith("# Model card: cli 1") and "## Caveats and recommendations" in out
    status, out, _ = run_cli(capsys, "model", "verify", "cli@1", *w)
    assert status == 0 and "intact, signed by this site" in out
    status, out, _ = run_cli(capsys, "model", "export", "cli@1", *w, "--to", tmp_path)
    assert status == 0 and (tmp_path / "cli@1.tar").is_file()
    status, out, _ = run_cli(capsys, "model", "key", *w, "--out", tmp_path / "site.pem")
    assert status == 0 and (tmp_path / "site.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")

    # a changed byte: verify fails (exit 1) naming the file
    p = ws.layout.model_package("cli", "1") / "config.json"
    p.write_text(p.read_text() + " ")
    status, out, err = run_cli(capsys, "model", "verify", "cli@1", *w)
    assert status == 1 and "config.json: differs from the signed manifest" in err


def test_bad_input_one_line_exit_2(site, package, capsys):
    ws, run = site
    w = ("-w", ws.root)
    running = ws.layout.run("20990101-000000-train-cli")
    shutil.copytree(run.path, running)
    rec = json.loads((running / "run.json").read_text())
    rec.update(run_id=running.name, status="interrupted", resume_hint=f"sobre train --resume {running.name}")
    (running / "run.json").write_text(json.dumps(rec))
    before = sorted(p.name for p in ws.layout.models.rglob("*"))
    cases = [
        (("model", "register", running.name, "--name", "x", "--version", "1", *w),
         "is not completed (expected status completed; found status interrupted). finish it first (sobre train"),
        (("model", "register", "nope", "--name", "x", "--version", "1", *w), "no run 'nope'"),
        (("model", "register", run.run_id, "--name", "blobs", "--version", "1.0", *w), "already registered"),
        (("model", "show", "ghost@1", *w), "no model ghost"),
        (("model", "verify", "blobs@7", *w), "no version 7 of model blobs"),
        (("model", "import", ws.root / "sobre.toml", *w), "not a tar archive"),
    ]
    for args, msg in cases:
        status, _, err = run_cli(capsys, *args)
        assert status == 2, (args, err)
        assert err.startswith("error: ") and msg in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    shutil.rmtree(running)
    assert sorted(p.name for p in ws.layout.models.rglob("*")) == before  # nothing half-written

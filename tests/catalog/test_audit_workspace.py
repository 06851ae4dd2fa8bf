"""The workspace's audit log: one log, signed with the site key, read by `sobre audit`."""

from __future__ import annotations

import json
import stat

from sobre.catalog import Workspace
from sobre.cli import main


def test_workspace_audit_log_is_signed_and_verified_by_the_cli(tmp_path, capsys):
    ws = Workspace.init(tmp_path / "ws")
    ws.audit.append("alice", "view-series", series_uid="1.2.3.4", study_uid="1.2.3")
    ws.audit.append("sobre.service", "decision", inputs=["1.2.3.4"], model="sha256:ab12", outputs=["1.2.9"])
    ws.audit.checkpoint()
    key = ws.layout.site_key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    root = str(ws.root)
    ws.close()
    assert main(["audit", "verify", "-w", root, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["n_entries"] == 3 and result["checkpoints_verified"] == 1
    assert main(["audit", "trace", "1.2.3.4", "-w", root, "--json"]) == 0
    assert [e["action"] for e in json.loads(capsys.readouterr().out)] == ["view-series", "decision"]
    # one changed byte: verify names the entry and exits 1
    log = tmp_path / "ws" / "audit" / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"1.2.9", b"1.2.8")
    log.write_bytes(b"".join(lines))
    assert main(["audit", "verify", "-w", root]) == 1
    assert "entry 1 (line 2)" in capsys.readouterr().err


def test_audit_commands_without_a_log_say_so(tmp_path, capsys):
    Workspace.init(tmp_path / "ws").close()
    assert main(["audit", "verify", "-w", str(tmp_path / "ws")]) == 2
    assert "no audit log yet" in capsys.readouterr().err

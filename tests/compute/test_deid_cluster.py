"""De-identification on a Dask cluster: the same outputs, pseudonyms and catalog as on this machine."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from catalog.conftest import build_cohort, dump_tables, write_series  # tests/ is on sys.path
from sobre.base import open_compute
from sobre.catalog import Workspace
from sobre.privacy import DeidProfile, Deidentifier, ProjectKey, PseudonymStore


def _tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _subjects(map_path):
    con = sqlite3.connect(map_path)
    try:
        return sorted(con.execute("SELECT pseudonym, identity_hmac, date_shift_days FROM subjects").fetchall())
    finally:
        con.close()


def _portable(tables: dict, root) -> dict:
    """Catalog rows with the workspace folder as ``WS`` and without file times (two workspaces, written apart)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k != "mtime_ns"}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v.replace(str(root), "WS") if isinstance(v, str) else v

    return clean(tables)


def test_deidentify_tree_on_the_cluster_equals_the_local_run(cluster, tmp_path):
    data = build_cohort(tmp_path / "data")
    write_series(tmp_path / "data" / "dup", {"patient_id": "S01"}, uid_seed="catalog-S01_mr",  # same SOP UIDs
                 seed=99)
    key = ProjectKey(bytes(range(32)))
    outs = {}
    for where in ("local", cluster.address):
        out = tmp_path / f"out-{where[:5]}"
        store = PseudonymStore(tmp_path / f"map-{where[:5]}.sqlite", key)
        with open_compute(where) as compute:
            report = Deidentifier(key, DeidProfile(), store).deidentify_tree(data, out, compute=compute)
        store.close()
        outs[where] = (_tree(out), [(p.code, p.message, p.path) for p in report.problems],
                       [dict(r.to_dict(), output=str(Path(r.output).relative_to(out))) for r in report.results],
                       _subjects(tmp_path / f"map-{where[:5]}.sqlite"))
    local, dist = outs["local"], outs[cluster.address]
    assert len(local[0]) == 30 and sum(p[0] == "duplicate" for p in local[1]) == 6
    assert dist == local  # same files (bytes), same problems, same results, same pseudonym map


def test_ingest_with_deidentification_on_the_cluster_equals_the_local_run(cluster, tmp_path):
    data = build_cohort(tmp_path / "data")
    dumps = []
    for where in ("local", cluster.address):
        ws = Workspace.init(tmp_path / f"ws-{where[:5]}", privacy={"deidentify": True})
        key = ws.intake.key_path
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key.write_text(bytes(range(32)).hex())  # one project key for both workspaces: the same pseudonyms
        key.chmod(0o600)
        report = ws.intake.ingest([data], compute=where)
        assert report.deidentified == 30 and report.new == 30 and not report.skipped
        dumps.append((_portable(dump_tables(ws, natural=True), ws.root), _tree(ws.layout.deidentified)))
        ws.close()
    assert dumps[0] == dumps[1]


"""Workspace creation and opening: folder layout, SQLite default, Alembic migrations, refusals."""

from __future__ import annotations

import sqlite3
import tomllib

import pytest

from sobre.catalog import Workspace
from sobre.errors import CatalogError, ConfigError


def test_init_creates_sqlite_workspace(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    root = tmp_path / "ws"
    assert ws.root == root
    assert (root / "catalog.sqlite").is_file()
    assert (root / "files").is_dir() and (root / "datasets").is_dir()
    conf = tomllib.loads((root / "sobre.toml").read_text())
    assert conf["workspace"]["database"] == "sqlite:///catalog.sqlite"  # relative: the folder can move
    assert ws.db_url == f"sqlite:///{root / 'catalog.sqlite'}"
    assert repr(ws) == f"Workspace({str(root)!r}, db=sqlite)"
    s = ws.summary()
    assert s["database"] == "sqlite"
    assert {k: s[k] for k in ("subjects", "studies", "series", "files", "cohorts", "dataset_versions")} == \
        dict.fromkeys(("subjects", "studies", "series", "files", "cohorts", "dataset_versions"), 0)
    ws.close()


def test_schema_comes_from_alembic_migrations(tmp_path):
    from alembic.script import ScriptDirectory
    from alembic.config import Config
    from pathlib import Path

    import sobre.catalog

    Workspace.init(tmp_path / "ws").close()
    con = sqlite3.connect(tmp_path / "ws" / "catalog.sqlite")
    version = con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    con.close()
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(sobre.catalog.__file__).parent / "migrations"))
    assert version == ScriptDirectory.from_config(cfg).get_current_head()
    assert {"site", "subject", "study", "series", "file", "pending_series", "variable", "subject_value",
            "cohort", "dataset_version"} <= tables
    assert mode == "wal"  # readers never block the ingest, and a killed writer leaves a consistent file


def test_init_twice_reopens_and_open_finds_parent(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    ws.close()
    again = Workspace.init(tmp_path / "ws")  # same settings: just opens it
    assert again.db_url == ws.db_url
    again.close()
    (tmp_path / "ws" / "datasets" / "deep").mkdir()
    opened = Workspace.open(tmp_path / "ws" / "datasets" / "deep")
    assert opened.root == tmp_path / "ws"
    opened.close()
    # the same URL written relative or resolved is the same database
    Workspace.init(tmp_path / "ws", "sqlite:///catalog.sqlite").close()


def test_init_refuses_other_database_for_existing_workspace(tmp_path):
    Workspace.init(tmp_path / "ws").close()
    with pytest.raises(CatalogError, match=r"workspace already exists with another database"):
        Workspace.init(tmp_path / "ws", "sqlite:////somewhere/else.sqlite")


def test_init_refuses_non_empty_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(CatalogError, match=r"busy: folder is not empty and is not a Sobre workspace"):
        Workspace.init(tmp_path / "busy")
    assert not (tmp_path / "busy" / "sobre.toml").exists()


def test_open_outside_workspace(tmp_path):
    with pytest.raises(CatalogError, match=r"not a Sobre workspace.*sobre init DIR"):
        Workspace.open(tmp_path)


def test_unreachable_database_is_a_clear_error_without_password(tmp_path):
    url = f"postgresql+psycopg://alice:s3cret@/sobre?host={tmp_path / 'nosocket'}"
    with pytest.raises(CatalogError, match=r"cannot create the catalog database \(OperationalError") as err:
        Workspace.init(tmp_path / "ws", url)
    assert "s3cret" not in str(err.value) and "alice:***@" in str(err.value)
    assert not (tmp_path / "ws" / "sobre.toml").exists()


def test_unreadable_settings(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "sobre.toml").write_text("[workspace]\nformat = 1\n")
    with pytest.raises(ConfigError, match=r"sobre.toml: missing required key 'workspace.database'"):
        Workspace.open(tmp_path / "ws")
    (tmp_path / "ws" / "sobre.toml").write_text('[workspace]\ndatabase = "sqlite:///c.sqlite"\nformatt = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key 'workspace.formatt'; did you mean 'format'\?"):
        Workspace.open(tmp_path / "ws")
    (tmp_path / "ws" / "sobre.toml").write_text('[workspace]\ndatabase = "sqlite:///c.sqlite"\n[privacy]\n'
                                                'deidentify = "yes"\n')
    with pytest.raises(ConfigError, match=r"wrong value for 'privacy.deidentify' \(expected a valid boolean"):
        Workspace.open(tmp_path / "ws")
    (tmp_path / "ws" / "sobre.toml").write_text('[workspace\n')
    with pytest.raises(ConfigError, match=r"sobre.toml: not valid TOML"):
        Workspace.open(tmp_path / "ws")


def test_database_url_with_quotes_round_trips(tmp_path):
    """The URL is written as a TOML string: quotes and backslashes must not break the settings file."""
    db = tmp_path / 'we"ird\\name.sqlite'
    ws = Workspace.init(tmp_path / "ws", f"sqlite:///{db}")
    ws.close()
    conf = tomllib.loads((tmp_path / "ws" / "sobre.toml").read_text())
    assert conf["workspace"]["database"] == f"sqlite:///{db}"
    assert db.is_file()
    Workspace.open(tmp_path / "ws").close()


def test_context_manager_disposes_engine(tmp_path):
    with Workspace.init(tmp_path / "ws") as ws:
        assert ws.summary()["files"] == 0
    assert ws.engine.pool.checkedout() == 0

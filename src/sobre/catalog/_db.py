"""The catalog database: engine, migrations, and messages that never show a password."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

__all__ = ["open_engine", "migrate", "safe_url", "db_problem", "resolve_url"]


def resolve_url(root: Path, url: str) -> str:
    """A relative SQLite path (``sqlite:///catalog.sqlite``) is relative to the workspace folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///"):]
        return f"sqlite:///{(root / rel).absolute()}"
    return url


def safe_url(url: str) -> str:
    """The URL with its password hidden (for messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any unparseable URL
        return "(unparseable URL)"


def db_problem(exc: Exception) -> str:
    """First line of a driver error, without SQLAlchemy's background link."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def open_engine(url: str) -> Engine:
    engine = create_engine(url, future=True)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision (a no-op when up to date)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

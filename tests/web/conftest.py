"""Browser tests: Debian chromium driven by Playwright against a real ``sobre serve`` subprocess.

Skipped, with the reason, when chromium, Playwright or the built front end (``make web``) is absent.
Chromium runs headless with software WebGL2 (SwiftShader, ``--enable-unsafe-swiftshader``); no browser is
downloaded. The server runs on a free loopback port over the workspace of :mod:`tests.web.workspace`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.web.serve import CHROMIUM_ARGS, sobre_serve

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "src" / "sobre" / "server" / "static"
TIMEOUT_S = 60.0  # Playwright's actions and Session.wait (seconds)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        exe = shutil.which(name)
        if exe:
            return exe
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def skip_reason() -> str | None:
    if chromium_path() is None:
        return "Debian chromium is not installed (apt-get install chromium; scripts/system-deps.sh does it as root)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]'; it drives the system chromium, downloads none)"
    if not (STATIC / "index.html").exists() or not any((STATIC / "assets").glob("*.js")):
        return f"the web front end is not built in {STATIC} (make web)"
    return None


def pytest_collection_modifyitems(config, items):
    why = skip_reason()
    if why:
        for item in items:
            if Path(str(item.fspath)).parent == Path(__file__).parent:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def web_workspace(tmp_path_factory) -> Path:
    from sobre.base import shutdown_local_pool
    from tests.web.workspace import build

    ws = build(tmp_path_factory.mktemp("web"))
    # ingest's header-reading processes are forked (no exec) and kept between jobs: stop them now, so that
    # none is forked after the Playwright driver starts and keeps its pipe open (its exit then never ends)
    shutdown_local_pool(wait=True)
    return ws


@pytest.fixture(scope="module")
def server(web_workspace, tmp_path_factory):
    """``sobre serve`` in a subprocess on a free port; yields its base URL."""
    with sobre_serve(web_workspace, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, launched by Playwright (module scope: the driver, a node process, is stopped
    before the worker runs other modules, whose forked processes would otherwise inherit its pipe)."""
    from playwright.sync_api import sync_playwright

    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=args, headless=True, timeout=120_000)
        try:
            yield b
        finally:
            b.close()


class Session:
    """One user's browser context and page, with helpers that work under the app's strict CSP."""

    def __init__(self, browser, base: str, user: str) -> None:
        self.base = base
        self.user = user
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        # generous: the suite runs with pytest -n 2 on 2 shared cores, chromium rendering WebGL in software
        self.context.set_default_timeout(TIMEOUT_S * 1000)
        self.context.set_default_navigation_timeout(TIMEOUT_S * 1000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: self.errors.append(f"unexpected dialog: {d.message}") or d.dismiss())

    def login(self) -> None:
        from tests.web.workspace import PASSWORD

        self.page.goto(self.base + "/")
        self.page.fill("input[name=username]", self.user)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("form.login button[type=submit]")
        self.page.wait_for_selector("a.card.project")

    def js(self, expr: str):
        return self.page.evaluate(expr)

    def wait(self, expr: str, timeout: float = TIMEOUT_S, what: str | None = None):
        """Poll a JS expression until truthy (``page.wait_for_function`` evaluates strings, which the CSP forbids)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.page.evaluate(expr)
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or expr}; page errors: {self.errors}")
            time.sleep(0.1)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def session_of(server, browser):
    """``session_of(user)`` -> a logged-in :class:`Session` (one per user for the module).

    ``server`` is named first so that the workspace is built before the browser starts (see ``web_workspace``).
    """
    sessions: dict[str, Session] = {}

    def get(user: str) -> Session:
        if user not in sessions:
            s = sessions[user] = Session(browser, server, user)
            s.login()
        return sessions[user]

    yield get
    for s in sessions.values():
        s.close()


@pytest.fixture(scope="module")
def web_orthanc():
    """A throw-away Orthanc (the PACS tests' peer), or None when it is not installed (the check is then left out)."""
    from sobre.pacs._peers import OrthancServer, orthanc_available

    if orthanc_available():
        yield None
        return
    with OrthancServer() as server:
        yield server


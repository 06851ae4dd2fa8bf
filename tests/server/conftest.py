"""A workspace with a project, one account per role, and a client per account (FastAPI TestClient).

The data is the catalog tests' generated five-subject cohort (4 MR, 1 CT, 16×16×6 each).
"""

from __future__ import annotations

import shutil

import pytest

from tests.catalog.conftest import CLINICAL_CSV, build_cohort

PASSWORD = "correct horse battery staple"
SCHEMA = {"segments": [{"name": "lesion", "value": 1, "color": [255, 0, 0],
                        "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"},
                        "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}},
                       {"name": "<b>liver</b>", "value": 2, "color": [0, 200, 0]}],
          "labels": [{"name": "pneumonia", "kind": "binary"},
                     {"name": "quality", "kind": "multiclass", "classes": ["good", "<img src=x onerror=alert(1)>"]},
                     {"name": "note", "kind": "text"}, {"name": "volume_ml", "kind": "numeric", "unit": "ml"}],
          "points": ["apex"], "boxes": ["nodule"]}
ROLES = ("data_manager", "annotator", "reviewer", "viewer")


@pytest.fixture(scope="session")
def server_template(tmp_path_factory):
    """A ready workspace folder (copied for each test that writes)."""
    from sobre.catalog import Workspace

    root = tmp_path_factory.mktemp("server")
    data = build_cohort(root / "data")
    (root / "clinical.csv").write_text(CLINICAL_CSV)
    ws = Workspace.init(root / "ws")
    ws.ingest([data], clinical=root / "clinical.csv")
    ws.cohort_create("mr", 'modality == "MR"')
    ws.cohort_create("ct", 'modality == "CT"')
    ws.freeze("mr")
    ws.accounts.create_project("demo", cohorts=["mr"], schema=SCHEMA, description="<script>alert(1)</script>")
    ws.accounts.create_project("other", cohorts=["ct"], schema=SCHEMA)
    ws.accounts.add_user("admin", PASSWORD, admin=True)
    for role in ROLES:
        ws.accounts.add_user(role.replace("_", "-"), PASSWORD)
        ws.accounts.grant(role.replace("_", "-"), "demo", role)
    ws.accounts.add_user("ann2", PASSWORD)
    ws.accounts.grant("ann2", "demo", "annotator")
    ws.accounts.add_user("outsider", PASSWORD)
    ws.accounts.grant("outsider", "other", "data_manager")
    ws.site_key()
    ws.close()
    return root / "ws"


@pytest.fixture
def ws(server_template, tmp_path):
    from sobre.catalog import Workspace

    dst = tmp_path / "ws"
    shutil.copytree(server_template, dst, symlinks=True)
    w = Workspace.open(dst)
    yield w
    w.close()


@pytest.fixture
def app(ws):
    from sobre.server import ServerSettings, create_app

    return create_app(ws, ServerSettings(catalog_ttl_s=0))


class Client:
    """A TestClient logged in as one user, sending its CSRF token on every change."""

    def __init__(self, app, username: str | None) -> None:
        from fastapi.testclient import TestClient

        self.http = TestClient(app, base_url="http://127.0.0.1")
        self.csrf = None
        self.username = username
        if username:
            r = self.http.post("/api/auth/login", json={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            self.csrf = r.json()["csrf_token"]

    def request(self, method: str, url: str, *, csrf: bool = True, **kw):
        headers = dict(kw.pop("headers", None) or {})
        if csrf and self.csrf and method.upper() not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf)
        return self.http.request(method, url, headers=headers, **kw)

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)


@pytest.fixture
def login(app):
    """``login(username)`` -> a :class:`Client`."""
    return lambda username: Client(app, username)


def series_keys(ws, modality="MR") -> list[str]:
    return sorted(r["series_uid"] for r in ws.query(f'modality == "{modality}"'))

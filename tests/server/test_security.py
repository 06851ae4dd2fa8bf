"""Security of the workstation API, enumerated from the app's own route table.

- every route but login and health: 401 without a session;
- every state-changing route: 403 without the CSRF token;
- each role against each route: the documented 403s (the action of each route is listed here, so a new
  route must be classified before this test passes);
- traversal and injection strings through every parameter that reaches a file or a query: refused,
  nothing read, nothing changed;
- HTML/JS in names and free text: returned as JSON data, never rendered.
"""

from __future__ import annotations

import re
import sqlite3
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.routing import APIRoute

from sobre.catalog import PERMISSIONS
from tests.server.conftest import PASSWORD, ROLES, Client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: (method, path) -> the action it needs: a project action, "admin:<action>", "session" or "public".
ROUTE_ACTIONS = {
    ("GET", "/api/health"): "public",
    ("POST", "/api/auth/login"): "public",
    ("GET", "/api/auth/session"): "session",
    ("POST", "/api/auth/logout"): "session",
    ("POST", "/api/auth/password"): "session",
    ("GET", "/api/permissions"): "session",
    ("GET", "/api/openapi.json"): "session",
    ("GET", "/api/{rest:path}"): "session",
    ("POST", "/api/{rest:path}"): "session",
    ("PUT", "/api/{rest:path}"): "session",
    ("PATCH", "/api/{rest:path}"): "session",
    ("DELETE", "/api/{rest:path}"): "session",
    ("GET", "/api/users"): "admin:users.manage",
    ("POST", "/api/users"): "admin:users.manage",
    ("PATCH", "/api/users/{username}"): "admin:users.manage",
    ("GET", "/api/projects"): "session",
    ("POST", "/api/projects"): "admin:projects.create",
    ("GET", "/api/projects/{project}/members"): "project.manage",
    ("PUT", "/api/projects/{project}/members/{username}"): "project.manage",
    ("DELETE", "/api/projects/{project}/members/{username}"): "project.manage",
    ("GET", "/api/projects/{project}"): "project.view",
    ("GET", "/api/projects/{project}/fields"): "project.view",
    ("GET", "/api/projects/{project}/cohorts"): "project.view",
    ("GET", "/api/projects/{project}/datasets"): "project.view",
    ("GET", "/api/projects/{project}/series"): "project.view",
    ("GET", "/api/projects/{project}/subjects"): "project.view",
    ("GET", "/api/projects/{project}/subjects/{subject_id}"): "project.view",
    ("GET", "/api/projects/{project}/series/{series}"): "series.view",
    ("GET", "/api/projects/{project}/series/{series}/volume"): "series.view",
    ("GET", "/api/projects/{project}/series/{series}/slices/{index}"): "series.view",
    ("GET", "/api/projects/{project}/series/{series}/thumbnail.png"): "series.view",
    ("GET", "/api/projects/{project}/annotations"): "annotation.view",
    ("GET", "/api/projects/{project}/review-queue"): "annotation.review",
    ("GET", "/api/projects/{project}/series/{series}/annotations"): "annotation.view",
    ("GET", "/api/projects/{project}/annotations/{version}"): "annotation.view",
    ("GET", "/api/projects/{project}/annotations/{version}/content"): "annotation.view",
    ("POST", "/api/projects/{project}/series/{series}/annotations/{name}"): "annotation.save",
    ("POST", "/api/projects/{project}/annotations/{version}/submit"): "annotation.submit",
    ("POST", "/api/projects/{project}/annotations/{version}/review"): "annotation.review",
    ("GET", "/api/projects/{project}/annotations/{version}/export"): "annotation.export",
    ("POST", "/api/projects/{project}/series/{series}/annotations/{name}/import"): "annotation.save",
    ("POST", "/api/projects/{project}/annotations/{version}/push"): "annotation.push",
    ("GET", "/api/projects/{project}/service-results"): "annotation.review",
    ("GET", "/api/projects/{project}/service-results/{job}"): "annotation.review",
    ("POST", "/api/projects/{project}/service-results/{job}/accept"): "annotation.review",
    ("POST", "/api/projects/{project}/service-results/{job}/reject"): "annotation.review",
}

USERS = {"data_manager": "data-manager", "annotator": "annotator", "reviewer": "reviewer", "viewer": "viewer"}


def api_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the API: the routes FastAPI lists in its OpenAPI document (generated from the
    route table), and the routes kept out of it (the OpenAPI document itself, the catch-all 404)."""
    out = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    for r in app.routes:
        if isinstance(r, APIRoute) and r.path.startswith("/api"):
            out |= {(m, r.path) for m in r.methods if m != "HEAD"}
    return sorted(out)


@pytest.fixture
def sample(ws):
    """Values for path parameters, and a version (a draft by 'annotator') to act on."""
    rec = min(ws.query('modality == "MR"'), key=lambda r: r["subject_id"])
    v = ws.annotations.save("demo", rec["series_uid"], "labels", "labels", {"pneumonia": 1}, author="annotator")
    return {"project": "demo", "series": rec["series_uid"], "subject_id": rec["subject_id"], "version": str(v.id),
            "username": "viewer", "index": "0", "name": "labels", "rest": "nothing/here", "job": "1"}


def fill(path: str, values: dict) -> str:
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m.group(1)], path)


BODIES = {
    "/api/auth/login": {"username": "viewer", "password": PASSWORD},
    "/api/auth/password": {"current": "wrong password!!", "new": "another long password"},
    "/api/users": {"username": "newcomer", "password": PASSWORD},
    "/api/users/{username}": {"disabled": False},
    "/api/projects": {"name": "p2", "cohorts": ["mr"], "schema": {}},
    "/api/projects/{project}/members/{username}": {"role": "viewer"},
    "/api/projects/{project}/series/{series}/annotations/{name}": {"kind": "labels", "content": {"pneumonia": 0}},
    "/api/projects/{project}/annotations/{version}/review": {"decision": "accept"},
    "/api/projects/{project}/annotations/{version}/push": {"format": "seg"},
    "/api/projects/{project}/service-results/{job}/accept": {"comment": "ok"},
    "/api/projects/{project}/service-results/{job}/reject": {"reason": "wrong side"},
}


def call(client: Client, method: str, path: str, values: dict, *, csrf: bool = True):
    url = fill(path, values)
    body = BODIES.get(path)
    if path.endswith("/import"):
        return client.request(method, url, content=b"not a file", csrf=csrf,
                              headers={"Content-Type": "application/octet-stream"})
    return client.request(method, url, json=body, csrf=csrf) if body is not None or method != "GET" else \
        client.request(method, url, csrf=csrf)


def test_every_route_is_classified(app):
    routes = set(api_routes(app))
    assert routes == set(ROUTE_ACTIONS), (f"unclassified: {sorted(routes - set(ROUTE_ACTIONS))}; "
                                          f"gone: {sorted(set(ROUTE_ACTIONS) - routes)}")


def test_every_route_needs_a_session(app, sample):
    anonymous = Client(app, None)
    seen = 0
    for method, path in api_routes(app):
        r = call(anonymous, method, path, sample)
        anonymous.http.cookies.clear()  # the login route logs in
        if ROUTE_ACTIONS[(method, path)] == "public":
            assert r.status_code != 401, (method, path)
            continue
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        body = r.json()
        assert body["what"] and body["found"] == "missing" and body["status"] == 401
        seen += 1
    assert seen >= 35


def test_state_changing_routes_need_the_csrf_token(app, sample, login, ws):
    admin = login("admin")
    before = _counts(ws)
    n = 0
    for method, path in api_routes(app):
        if method == "GET" or ROUTE_ACTIONS[(method, path)] == "public":
            continue
        r = call(admin, method, path, sample, csrf=False)
        assert r.status_code == 403 and r.json()["error"] == "CsrfError", (method, path, r.status_code, r.text)
        wrong = admin.request(method, fill(path, sample), headers={"X-CSRF-Token": "forged"}, json=BODIES.get(path))
        assert wrong.status_code == 403 and wrong.json()["error"] == "CsrfError", (method, path)
        n += 1
    assert n >= 12
    assert _counts(ws) == before  # nothing changed
    assert admin.get("/api/auth/session").status_code == 200  # the session was not ended either


def _allowed(role: str | None, admin: bool, action: str) -> bool:
    if action in ("public", "session"):
        return True
    if action.startswith("admin:"):
        return admin
    if admin:
        return True
    return role is not None and action in PERMISSIONS[role]


@pytest.mark.parametrize("who", [*ROLES, "outsider", "admin"])
def test_roles_against_routes(app, sample, login, who):
    username = USERS.get(who, who)
    client = login(username)
    role = who if who in ROLES else None
    admin = who == "admin"
    denied = []
    for method, path in api_routes(app):
        action = ROUTE_ACTIONS[(method, path)]
        if action == "public" or path == "/api/auth/logout":
            continue  # logout would end this client's session; covered elsewhere
        r = call(client, method, path, sample)
        access = r.status_code == 403 and r.json().get("error") == "AccessError"
        if _allowed(role, admin, action):
            assert not access, (who, method, path, r.text)
            assert r.status_code < 500, (who, method, path, r.status_code, r.text)
        else:
            assert access, (who, method, path, r.status_code, r.text)
            denied.append((method, path))
    expected = {k for k, a in ROUTE_ACTIONS.items() if a not in ("public", "session") and not _allowed(role, admin, a)}
    assert set(denied) == expected


def _counts(ws) -> dict:
    db = ws.root / "catalog.sqlite"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("series", "file", "user_account", "project", "membership", "annotation",
                          "annotation_version", "review", "cohort", "subject")}
    finally:
        con.close()


ATTACKS = ["../../../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
           "' OR '1'='1", "1; DROP TABLE series; --", "\" OR 1=1 --", "x\x00y", "/etc/passwd",
           "..\\..\\windows\\win.ini", "a" * 400, "{{7*7}}", "$(touch /tmp/sobre-pwned)"]


def test_traversal_and_injection_are_refused(app, sample, login, ws, tmp_path):
    client = login("data-manager")
    before = _counts(ws)
    params = ("project", "series", "subject_id", "version", "username", "name", "index")
    for method, path in api_routes(app):
        if path.startswith("/api/auth") or path == "/api/{rest:path}":
            continue
        for p in params:
            if "{" + p not in path:
                continue
            for bad in ATTACKS:
                for text in {quote(bad, safe=""), quote(bad, safe="/%")}:
                    r = call(client, method, path, dict(sample, **{p: text}))
                    assert b"root:x:0:0" not in r.content and b"[fonts]" not in r.content
                    if not r.url.path.startswith("/api/"):
                        continue  # the client resolved the dot segments: the request left the API (front end)
                    assert r.status_code in (400, 403, 404, 405, 409, 413, 422), (method, path, p, bad, r.status_code)
                    assert b"root:x:0:0" not in r.content and b"[fonts]" not in r.content
    # query parameters that reach a query or a file
    base = f"/api/projects/demo/series/{sample['series']}"
    for bad in ATTACKS:
        for url, key in (("/api/projects/demo/series", "where"), ("/api/projects/demo/series", "cohort"),
                         ("/api/projects/demo/series", "dataset"), ("/api/projects/demo/subjects", "where"),
                         (f"{base}/slices/0", "window"), (f"{base}/slices/0", "axis"), (f"{base}/slices/0", "format"),
                         (f"/api/projects/demo/annotations/{sample['version']}/export", "format"),
                         ("/api/projects/demo/annotations", "series")):
            r = client.get(url, params={key: bad})
            assert r.status_code in (400, 404), (url, key, bad, r.status_code, r.text)
            assert set(r.json()) >= {"what", "expected", "found"}
    for where in ('__import__("os").system("touch /tmp/sobre-pwned")', "modality == 'MR' or 1==1; DROP TABLE series",
                  "subject_id.__class__", "(lambda: 1)()", "modality == \"MR\" or [].__class__"):
        r = client.get("/api/projects/demo/series", params={"where": where})
        assert r.status_code == 400 and r.json()["error"] == "ExpressionError", (where, r.text)
    # the static route never leaves its folder
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>app</title>")
    from sobre.server import ServerSettings, create_app

    app2 = create_app(ws, ServerSettings(static_dir=static))
    anon = Client(app2, None)
    for bad in ("/../../../../etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
                "/assets/../../../etc/passwd", "//etc/passwd"):
        r = anon.get(bad)
        assert b"root:x:0:0" not in r.content, bad
    assert _counts(ws) == before
    import os

    assert not os.path.exists("/tmp/sobre-pwned")


def test_html_and_script_come_back_as_data(app, sample, login, ws):
    ann = login("annotator")
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    r = ann.post(f"/api/projects/demo/series/{sample['series']}/annotations/notes",
                 json={"kind": "labels", "content": {"note": evil, "quality": "<img src=x onerror=alert(1)>"},
                       "comment": evil})
    assert r.status_code == 201, r.text
    vid = r.json()["id"]
    assert r.json()["comment"] == evil
    got = ann.get(f"/api/projects/demo/annotations/{vid}/content")
    assert got.headers["content-type"].startswith("application/json")
    assert got.json()["content"]["note"] == evil
    proj = ann.get("/api/projects/demo").json()
    assert proj["description"] == "<script>alert(1)</script>"
    assert proj["schema"]["segments"][1]["name"] == "<b>liver</b>"
    # a name with markup in a path is refused as data, and the error is JSON
    r = ann.post(f"/api/projects/demo/series/{sample['series']}/annotations/<script>",
                 json={"kind": "labels", "content": {"pneumonia": 1}})
    assert r.status_code in (400, 404) and r.headers["content-type"].startswith("application/json")
    # no API response is HTML, and every response forbids sniffing and framing
    for url in ("/api/projects", "/api/projects/demo", f"/api/projects/demo/annotations/{vid}", "/api/nope"):
        r = ann.get(url)
        assert "html" not in r.headers["content-type"]
        assert r.headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in \
            r.headers["content-security-policy"]
    # CSV export neutralises formulas
    csv = ann.get(f"/api/projects/demo/annotations/{vid}/export?format=csv")
    assert csv.status_code == 200
    bad = ann.post(f"/api/projects/demo/series/{sample['series']}/annotations/f",
                   json={"kind": "labels", "content": {"note": "=HYPERLINK(\"http://x\")"}})
    out = ann.get(f"/api/projects/demo/annotations/{bad.json()['id']}/export?format=csv").text
    assert "'=HYPERLINK" in out


def test_session_cookie_flags_and_logout(app, login):
    anon = Client(app, None)
    r = anon.http.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    csrf = r.json()["csrf_token"]
    assert anon.http.get("/api/auth/session").status_code == 200
    assert anon.http.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    r = anon.http.get("/api/auth/session")
    assert r.status_code == 401


def test_secure_cookie_under_tls(ws, tmp_path):
    from sobre.server import ServerSettings, create_app

    app = create_app(ws, ServerSettings(behind_proxy=True))
    c = Client(app, None)
    r = c.http.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
    assert "Secure" in r.headers["set-cookie"] and "strict-transport-security" in r.headers


def test_login_requires_json(app):
    c = Client(app, None)
    r = c.http.post("/api/auth/login", data={"username": "viewer", "password": PASSWORD})
    assert r.status_code in (400, 415)  # a cross-site HTML form cannot log anyone in


def test_host_header_is_checked(app):
    c = Client(app, None)
    r = c.http.get("/api/health", headers={"Host": "evil.example"})
    assert r.status_code == 400 and r.json()["what"] == "unexpected Host header"


def test_bind_rules():
    from sobre.errors import ConfigError
    from sobre.server import ServerSettings, check_bind

    check_bind(ServerSettings(host="127.0.0.1"))
    check_bind(ServerSettings(host="0.0.0.0", behind_proxy=True))
    with pytest.raises(ConfigError, match="refusing to serve patient data in clear on 0.0.0.0"):
        check_bind(ServerSettings(host="0.0.0.0"))
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        check_bind(ServerSettings(host="0.0.0.0", tls_cert="/nonexistent.pem"))


def test_mask_bytes_are_not_accepted_from_a_viewer(app, sample, login, ws):
    v = login("viewer")
    shape = ws.series(sample["series"])["shape"]
    r = v.post(f"/api/projects/demo/series/{sample['series']}/annotations/lesions",
               content=np.zeros(shape, np.uint8).tobytes(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 403 and r.json()["error"] == "AccessError"

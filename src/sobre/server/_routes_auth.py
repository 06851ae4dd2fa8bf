"""Log in, log out, the current session; accounts and project membership (administration)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from sobre.catalog import PERMISSIONS, ROLES, actions_of
from sobre.errors import SobreError

from ._auth import COOKIE
from ._context import CallerDep, authenticated, client_of, context
from ._errors import ApiError

public = APIRouter(prefix="/api", tags=["public"])
router = APIRouter(prefix="/api", dependencies=[Depends(authenticated)], tags=["auth and accounts"])


class LoginBody(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class PasswordBody(BaseModel):
    current: str = Field(max_length=1024)
    new: str = Field(max_length=1024)


class NewUser(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    display_name: str | None = Field(None, max_length=200)
    admin: bool = False
    must_change_password: bool = True


class UserChange(BaseModel):
    disabled: bool | None = None
    password: str | None = Field(None, max_length=1024)
    must_change_password: bool | None = None


class Grant(BaseModel):
    role: Literal["data_manager", "annotator", "reviewer", "viewer"]


class NewProject(BaseModel):
    name: str = Field(max_length=100)
    cohorts: list[str] = []
    schema_: dict = Field({}, alias="schema")
    description: str | None = Field(None, max_length=2000)


def session_body(ctx, account, sess) -> dict:
    return {"user": account.to_dict(), "csrf_token": sess.csrf, "idle_timeout_s": ctx.settings.idle_timeout_s,
            "max_session_s": ctx.settings.max_session_s,
            "projects": {p: sorted(actions_of(r)) for p, r in account.roles.items()},
            "admin_actions": ["users.manage", "projects.create"] if account.admin else []}


@public.get("/health", summary="liveness (no session needed)")
def health() -> dict:
    from sobre import __version__

    return {"status": "ok", "version": __version__}


@public.post("/auth/login", summary="log in: sets the session cookie, returns the CSRF token")
def login(*, body: LoginBody, request: Request, response: Response) -> dict:
    ctx = context(request)
    client = client_of(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "log in with a JSON body", expected="Content-Type: application/json",
                       found=request.headers.get("content-type") or "none")
    blocked = ctx.limiter.blocked(body.username, client)
    if blocked is not None:
        which, retry = blocked
        ctx.audit(body.username[:64] or "?", "auth.login_refused", client=client, why=f"too many failures ({which})")
        raise ApiError(429, "too many failed logins", expected=f"at most {ctx.settings.login_max_per_user} per user "
                       f"and {ctx.settings.login_max_per_client} per client in {ctx.settings.login_window_s} s",
                       found=f"the limit per {which} is reached", fix=f"wait {retry} s",
                       headers={"Retry-After": str(retry)})
    try:
        account = ctx.ws.accounts.authenticate(body.username, body.password)
    except SobreError:
        account = None
    if account is None:
        ctx.limiter.failed(body.username, client)
        ctx.audit(body.username[:64] or "?", "auth.login_failed", client=client)
        raise ApiError(401, "wrong user name or password (or the account is disabled)",
                       fix="check both; after several failures logins are refused for a while")
    ctx.limiter.succeeded(body.username)
    token, sess = ctx.sessions.create(account.username, client)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=ctx.settings.secure_cookies,
                        path="/", max_age=ctx.settings.max_session_s)
    ctx.audit(account.username, "auth.login", client=client, session=sess.id)
    return session_body(ctx, account, sess)


@router.get("/auth/session", summary="the current session: user, roles, CSRF token")
def session(*, request: Request, caller: CallerDep) -> dict:
    return session_body(context(request), caller.account, caller.session)


@router.post("/auth/logout", status_code=204, summary="end the session")
def logout(*, request: Request, response: Response, caller: CallerDep) -> Response:
    ctx = context(request)
    ctx.sessions.end(request.cookies.get(COOKIE))
    ctx.audit(caller.username, "auth.logout", client=caller.client, session=caller.session.id)
    out = Response(status_code=204)
    out.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=ctx.settings.secure_cookies)
    return out


@router.post("/auth/password", status_code=204, summary="change one's own password (ends other sessions)")
def change_password(*, body: PasswordBody, request: Request, caller: CallerDep) -> Response:
    ctx = context(request)
    if ctx.ws.accounts.authenticate(caller.username, body.current) is None:
        raise ApiError(403, "the current password is wrong", fix="type your current password")
    ctx.ws.accounts.set_password(caller.username, body.new)
    ctx.sessions.end_user(caller.username)
    token, sess = ctx.sessions.create(caller.username, caller.client)
    ctx.audit(caller.username, "auth.password_changed", client=caller.client)
    out = Response(status_code=204)
    out.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=ctx.settings.secure_cookies, path="/",
                   max_age=ctx.settings.max_session_s)
    out.headers["X-CSRF-Token"] = sess.csrf
    return out


# ---------------------------------------------------------------------------------------------- admin
@router.get("/users", summary="every account (admin)")
def users(*, request: Request, caller: CallerDep) -> list[dict]:
    caller.require("users.manage")
    return [a.to_dict() for a in context(request).ws.accounts.users()]


@router.post("/users", status_code=201, summary="create an account (admin)")
def add_user(*, body: NewUser, request: Request, caller: CallerDep) -> dict:
    caller.require("users.manage")
    ctx = context(request)
    acc = ctx.ws.accounts.add_user(body.username, body.password, display_name=body.display_name, admin=body.admin,
                                   must_change_password=body.must_change_password)
    ctx.audit(caller.username, "users.add", user=acc.username, admin=acc.admin)
    return acc.to_dict()


@router.patch("/users/{username}", summary="disable/enable an account or reset its password (admin)")
def change_user(*, username: str, body: UserChange, request: Request, caller: CallerDep) -> dict:
    caller.require("users.manage")
    ctx = context(request)
    ctx.ws.accounts.user(username)  # 404 when unknown
    if body.password is not None:
        ctx.ws.accounts.set_password(username, body.password, must_change=bool(body.must_change_password))
        ctx.sessions.end_user(username)
        ctx.audit(caller.username, "users.reset_password", user=username)
    if body.disabled is not None:
        ctx.ws.accounts.set_disabled(username, body.disabled)
        if body.disabled:
            ctx.sessions.end_user(username)
        ctx.audit(caller.username, "users.disable" if body.disabled else "users.enable", user=username)
    return ctx.ws.accounts.user(username).to_dict()


@router.post("/projects", status_code=201, summary="create a project from cohorts and a label schema (admin)")
def create_project(*, body: NewProject, request: Request, caller: CallerDep) -> dict:
    caller.require("projects.create")
    ctx = context(request)
    info = ctx.ws.accounts.create_project(body.name, cohorts=body.cohorts, schema=body.schema_,
                                          description=body.description)
    ctx.view.invalidate()
    ctx.audit(caller.username, "project.create", project=info.name, cohorts=info.cohorts)
    return info.to_dict()


@router.get("/projects/{project}/members", summary="who has which role in the project (project.manage)")
def members(*, project: str, request: Request, caller: CallerDep) -> list[dict]:
    caller.require("project.manage", project)
    ctx = context(request)
    ctx.ws.accounts.project(project)
    return [{"username": a.username, "display_name": a.display_name, "role": a.roles[project],
             "disabled": a.disabled} for a in ctx.ws.accounts.users() if project in a.roles]


@router.put("/projects/{project}/members/{username}", summary="grant a role in the project (project.manage)")
def grant(*, project: str, username: str, body: Grant, request: Request, caller: CallerDep) -> dict:
    caller.require("project.manage", project)
    ctx = context(request)
    ctx.ws.accounts.grant(username, project, body.role)
    ctx.audit(caller.username, "project.grant", project=project, user=username, role=body.role)
    return {"username": username, "project": project, "role": body.role}


@router.delete("/projects/{project}/members/{username}", status_code=204, summary="revoke a role (project.manage)")
def revoke(*, project: str, username: str, request: Request, caller: CallerDep) -> Response:
    caller.require("project.manage", project)
    ctx = context(request)
    ctx.ws.accounts.user(username)
    ctx.ws.accounts.revoke(username, project)
    ctx.audit(caller.username, "project.revoke", project=project, user=username)
    return Response(status_code=204)


@router.get("/permissions", summary="the role rule table")
def permissions() -> dict:
    return {"roles": list(ROLES), "table": {r: sorted(a) for r, a in PERMISSIONS.items()}}

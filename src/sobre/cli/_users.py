"""``sobre users``: accounts, projects and roles of the workstation (thin over ``ws.accounts``)."""

from __future__ import annotations

import getpass
import sys

from sobre.cli._common import add_json_arg, add_workspace_arg, emit_json, open_workspace


def register(sub) -> None:
    u = sub.add_parser("users", help="workstation accounts, projects and roles")
    us = u.add_subparsers(dest="users_cmd", metavar="ACTION", required=True)

    p = us.add_parser("add", help="create an account (the password is asked, or read from --password-file)")
    p.add_argument("username")
    p.add_argument("--display-name", default=None)
    p.add_argument("--admin", action="store_true", help="may manage accounts and projects everywhere")
    _password_args(p)
    p.set_defaults(func=_add)
    p = us.add_parser("list", help="every account with its roles")
    p.set_defaults(func=_list)
    for name, helptext, func in (("disable", "disable an account (its sessions end)", _disable),
                                 ("enable", "enable a disabled account", _enable)):
        p = us.add_parser(name, help=helptext)
        p.add_argument("username")
        p.set_defaults(func=func)
    p = us.add_parser("reset-password", help="set a new password (the user must change it at next login)")
    p.add_argument("username")
    p.add_argument("--keep", action="store_true", help="do not ask the user to change it")
    _password_args(p)
    p.set_defaults(func=_reset)

    p = us.add_parser("project", help="projects: create, list, grant, revoke")
    ps = p.add_subparsers(dest="project_cmd", metavar="ACTION", required=True)
    q = ps.add_parser("create", help="a project from cohorts and a label schema (TOML)")
    q.add_argument("name")
    q.add_argument("--cohort", action="append", default=[], help="a cohort of the workspace; repeatable")
    q.add_argument("--schema", default=None, help="label schema TOML (segments, labels, points, boxes)")
    q.add_argument("--description", default=None)
    q.set_defaults(func=_project_create)
    q = ps.add_parser("list", help="every project")
    q.set_defaults(func=_project_list)
    q = ps.add_parser("grant", help="give USER a ROLE in PROJECT (data_manager, annotator, reviewer, viewer)")
    q.add_argument("username")
    q.add_argument("project")
    q.add_argument("role")
    q.set_defaults(func=_grant)
    q = ps.add_parser("revoke", help="remove USER's role in PROJECT")
    q.add_argument("username")
    q.add_argument("project")
    q.set_defaults(func=_revoke)
    for parser in (*us.choices.values(), *ps.choices.values()):
        add_workspace_arg(parser)
        add_json_arg(parser)


def _password_args(p) -> None:
    p.add_argument("--password-file", default=None,
                   help="read the password from the first line of this file ('-': standard input)")


def _password(ns) -> str:
    from sobre.errors import InputError

    if ns.password_file:
        if ns.password_file == "-":
            return sys.stdin.readline().rstrip("\n")
        from pathlib import Path

        try:
            return Path(ns.password_file).read_text().splitlines()[0]
        except (OSError, IndexError):
            raise InputError("cannot read a password from the file", path=ns.password_file,
                             expected="a file whose first line is the password") from None
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise InputError("the two passwords differ", fix="type the same password twice")
    return first


def _out(ns, obj, text: str) -> int:
    if ns.json:
        emit_json(obj)
    else:
        print(text)
    return 0


def _audit(ws, action: str, **data) -> None:
    ws.audit.append(f"cli:{getpass.getuser()}", action, **data)


def _add(ns) -> int:
    with open_workspace(ns) as ws:
        acc = ws.accounts.add_user(ns.username, _password(ns), display_name=ns.display_name, admin=ns.admin)
        _audit(ws, "users.add", user=acc.username, admin=acc.admin)
    return _out(ns, acc.to_dict(), f"added {acc.username}" + (" (admin)" if acc.admin else ""))


def _list(ns) -> int:
    with open_workspace(ns) as ws:
        accounts = ws.accounts.users()
    if ns.json:
        emit_json([a.to_dict() for a in accounts])
        return 0
    for a in accounts:
        flags = ",".join(f for f, on in (("admin", a.admin), ("disabled", a.disabled)) if on)
        roles = " ".join(f"{p}:{r}" for p, r in sorted(a.roles.items()))
        print(f"{a.username:24s} {flags:15s} {roles}")
    return 0


def _disable(ns) -> int:
    with open_workspace(ns) as ws:
        ws.accounts.set_disabled(ns.username, True)
        _audit(ws, "users.disable", user=ns.username)
    return _out(ns, {"username": ns.username, "disabled": True}, f"disabled {ns.username}")


def _enable(ns) -> int:
    with open_workspace(ns) as ws:
        ws.accounts.set_disabled(ns.username, False)
        _audit(ws, "users.enable", user=ns.username)
    return _out(ns, {"username": ns.username, "disabled": False}, f"enabled {ns.username}")


def _reset(ns) -> int:
    with open_workspace(ns) as ws:
        ws.accounts.user(ns.username)
        ws.accounts.set_password(ns.username, _password(ns), must_change=not ns.keep)
        _audit(ws, "users.reset_password", user=ns.username)
    return _out(ns, {"username": ns.username}, f"new password set for {ns.username}")


def _project_create(ns) -> int:
    from sobre.base import read_toml

    schema = {}
    description = ns.description
    if ns.schema:
        schema = dict(read_toml(ns.schema))
        description = description or schema.pop("description", None)
        schema.pop("description", None)
    with open_workspace(ns) as ws:
        info = ws.accounts.create_project(ns.name, cohorts=ns.cohort, schema=schema, description=description)
        _audit(ws, "project.create", project=info.name, cohorts=info.cohorts)
    return _out(ns, info.to_dict(), f"project {info.name}: cohorts {', '.join(info.cohorts) or '(none)'}, "
                f"{len(info.schema.segments)} segment(s), {len(info.schema.labels)} label(s)")


def _project_list(ns) -> int:
    with open_workspace(ns) as ws:
        projects = ws.accounts.projects()
    if ns.json:
        emit_json([p.to_dict() for p in projects])
        return 0
    for p in projects:
        print(f"{p.name:24s} cohorts: {', '.join(p.cohorts) or '-'}")
    return 0


def _grant(ns) -> int:
    with open_workspace(ns) as ws:
        ws.accounts.grant(ns.username, ns.project, ns.role)
        _audit(ws, "project.grant", project=ns.project, user=ns.username, role=ns.role)
    return _out(ns, {"username": ns.username, "project": ns.project, "role": ns.role},
                f"{ns.username} is {ns.role} in {ns.project}")


def _revoke(ns) -> int:
    with open_workspace(ns) as ws:
        ws.accounts.revoke(ns.username, ns.project)
        _audit(ws, "project.revoke", project=ns.project, user=ns.username)
    return _out(ns, {"username": ns.username, "project": ns.project}, f"{ns.username} has no role in {ns.project}")

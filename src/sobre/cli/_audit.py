"""``sobre audit verify|trace|entries``: the workspace's tamper-evident record of decisions."""

from __future__ import annotations

import sys

from sobre.cli._common import add_json_arg, add_workspace_arg, emit_json, open_workspace


def register(sub) -> None:
    a = sub.add_parser("audit", help="the append-only, hash-chained audit log of the workspace")
    asub = a.add_subparsers(dest="audit_cmd", metavar="ACTION", required=True)
    p = asub.add_parser("verify", help="check every entry, the chain, the signed checkpoints and head")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_verify)
    p = asub.add_parser("trace", help="every entry that mentions a UID or hash (inputs, model, outputs, reviewer)")
    p.add_argument("value", help="a study/series/instance UID, a file or package SHA-256, a user name ...")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_trace)
    p = asub.add_parser("entries", help="list entries (optionally of one action)")
    p.add_argument("--action", default=None)
    p.add_argument("--since", default=None, help="UTC ISO time, e.g. 2026-12-01T00:00:00Z")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_entries)


def _log(ws):
    from sobre.errors import CatalogError

    if not ws.layout.audit_log.exists():
        raise CatalogError("this workspace has no audit log yet", path=ws.layout.audit_log,
                           fix="it is created by the first audited action (workstation, inference service)")
    return ws.layout.audit_log


def _verify(ns) -> int:
    from sobre.base import verify_audit

    with open_workspace(ns) as ws:
        path = _log(ws)
        key = ws.site_key(create=False).public_key_pem() if ws.layout.site_key.exists() else None
        result = verify_audit(path, public_key_pem=key)
    if ns.json:
        emit_json(result.to_dict())
    elif result.ok:
        print(f"{path}: {result.n_entries} entries, chain intact, {result.checkpoints_verified} signed "
              f"checkpoint(s) verified")
    else:
        bad = result.first_bad
        where = f"entry {bad.seq} (line {bad.line})" if bad is not None else "the log"
        print(f"error: {path}: {where}: {result.problem}", file=sys.stderr)
    return 0 if result.ok else 1


def _trace(ns) -> int:
    from sobre.base import find_audit

    with open_workspace(ns) as ws:
        found = list(find_audit(_log(ws), ns.value))
    if ns.json:
        emit_json([e.to_dict() for e in found])
    else:
        for e in found:
            print(f"{e.seq:8d}  {e.time}  {e.actor:16s} {e.action:20s} {_short(e.data)}")
        if not found:
            print(f"no entry mentions {ns.value}", file=sys.stderr)
    return 0 if found else 1


def _entries(ns) -> int:
    from sobre.base import audit_entries

    with open_workspace(ns) as ws:
        found = list(audit_entries(_log(ws), action=ns.action, since=ns.since))
    if ns.json:
        emit_json([e.to_dict() for e in found])
    else:
        for e in found:
            print(f"{e.seq:8d}  {e.time}  {e.actor:16s} {e.action:20s} {_short(e.data)}")
    return 0


def _short(data: dict) -> str:
    import json

    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."

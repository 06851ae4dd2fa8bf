"""``sobre cohort create|list|show|freeze`` and ``sobre dataset list|show|verify``."""

from __future__ import annotations

from sobre.cli._common import add_json_arg, add_workspace_arg, emit_json, open_workspace, progress_bars


def register(sub) -> None:
    c = sub.add_parser("cohort", help="define cohorts with a filter and freeze them into dataset versions")
    cs = c.add_subparsers(dest="cohort_cmd", metavar="ACTION", required=True)
    p = cs.add_parser("create", help="define a cohort by a filter expression")
    p.add_argument("name")
    p.add_argument("--where", required=True,
                   help='filter, e.g. \'modality == "MR" and age >= 20 and diagnosis == "healthy"\'')
    p.add_argument("--replace", action="store_true", help="replace the filter of an existing cohort")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_create)
    p = cs.add_parser("list", help="list cohorts")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_list)
    p = cs.add_parser("show", help="show a cohort's filter, members and versions")
    p.add_argument("name")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_show)
    p = cs.add_parser("freeze", help="freeze a cohort into an immutable, hashed dataset version")
    p.add_argument("name")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_freeze)
    p = cs.add_parser("fields", help="list the fields a filter may use")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_fields)

    d = sub.add_parser("dataset", help="frozen dataset versions")
    ds = d.add_subparsers(dest="dataset_cmd", metavar="ACTION", required=True)
    p = ds.add_parser("list", help="list dataset versions")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_dlist)
    p = ds.add_parser("show", help="show a dataset version (NAME@vN)")
    p.add_argument("ref")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_dshow)
    p = ds.add_parser("verify", help="re-hash every file of a dataset version")
    p.add_argument("ref")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_dverify)


def _row(m: dict) -> str:
    age = f"{m['age']:.0f}" if isinstance(m.get("age"), (int, float)) else "-"
    return (f"  {m['series_uid'][:40]:40s} {m['label'][:10]:10s} {m['modality'] or '-':4s} "
            f"{m['subject_id'] or '-':16s} age {age:>3s} sex {m['sex'] or '-'} site {m['site'] or '-'}")


def _create(ns) -> int:
    ws = open_workspace(ns)
    c = ws.cohort_create(ns.name, ns.where, replace=ns.replace)
    if ns.json:
        emit_json({k: v for k, v in c.items() if k != "members"})
    else:
        print(f"cohort {c['name']}: {c['n_series']} series from {c['n_subjects']} subjects")
    _left_out(c)
    return 0


def _left_out(c: dict) -> None:
    """Say on stderr which matching volumes a cohort cannot hold (error state), never drop them silently."""
    if c.get("note"):
        import sys

        print(f"note: {c['note']}", file=sys.stderr)


def _list(ns) -> int:
    cs = open_workspace(ns).cohorts()
    if ns.json:
        emit_json([{k: v for k, v in c.items() if k != "members"} for c in cs])
    else:
        for c in cs:
            print(f"{c['name']:20s} {c['n_series']:5d} series {c['n_subjects']:5d} subjects  "
                  f"versions: {len(c['versions'])}  where: {c['where']}")
    return 0


def _show(ns) -> int:
    c = open_workspace(ns).cohort(ns.name)
    if ns.json:
        emit_json(c)
    else:
        print(f"cohort {c['name']}  where: {c['where']}")
        print(f"{c['n_series']} series from {c['n_subjects']} subjects")
        for m in c["members"]:
            print(_row(m))
        for v in c["versions"]:
            print(f"version {v['ref']}  {v['content_hash']}  {v['n_series']} series  {v['created_at']}")
    _left_out(c)
    return 0


def _freeze(ns) -> int:
    with open_workspace(ns) as ws, progress_bars(ns) as progress:
        ref = ws.freeze(ns.name, progress=progress)
    if ns.json:
        emit_json(ref.to_dict())
    else:
        print(f"{ref.ref}: {ref.n_series} series, {ref.n_files} files, {ref.n_subjects} subjects")
        print(f"content hash {ref.content_hash}")
        print(f"manifest {ref.manifest_path}")
    return 0


def _fields(ns) -> int:
    from sobre.catalog import BASE_FIELDS

    ws = open_workspace(ns)
    variables = ws.variables()
    if ns.json:
        emit_json({"base": BASE_FIELDS, "clinical": variables})
    else:
        for k, v in BASE_FIELDS.items():
            print(f"{k:20s} {v}")
        for k, v in variables.items():
            print(f"{k:20s} clinical {v['kind']}{' [' + v['unit'] + ']' if v['unit'] else ''}")
    return 0


def _dlist(ns) -> int:
    ds = open_workspace(ns).datasets()
    if ns.json:
        emit_json([d.to_dict() for d in ds])
    else:
        for d in ds:
            print(f"{d.ref:24s} {d.content_hash[:16]}  {d.n_series:5d} series {d.n_subjects:5d} subjects  {d.created_at}")
    return 0


def _dshow(ns) -> int:
    d = open_workspace(ns).dataset(ns.ref)
    if ns.json:
        emit_json(dict(d.to_dict(), manifest_content=d.manifest.model_dump(mode="json")))
    else:
        for k, v in d.to_dict().items():
            print(f"{k:14s} {v}")
    return 0


def _dverify(ns) -> int:
    with open_workspace(ns) as ws, progress_bars(ns) as progress:
        d = ws.dataset(ns.ref)
        problems = d.verify(progress=progress)
    if ns.json:
        emit_json({"ref": d.ref, "ok": not problems, "problems": [p.to_dict() for p in problems]})
    else:
        if problems:
            for p in problems:
                print(f"  {p.path}: {p.message}")
        print(f"{d.ref}: {'intact' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1

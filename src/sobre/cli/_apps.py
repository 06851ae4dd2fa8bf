"""``sobre app list|check|run`` and ``sobre predict``: applications and batch prediction."""

from __future__ import annotations

import sys

from sobre.cli._common import add_json_arg, add_scheduler_arg, emit_json, open_compute_of, progress_bars


def register(sub) -> None:
    a = sub.add_parser("app", help="applications: list them, check which series they accept, run them")
    asub = a.add_subparsers(dest="app_command", metavar="SUBCOMMAND", required=True)

    p = asub.add_parser("list", help="installed applications (entry points 'sobre.apps' and built-in ones)")
    add_json_arg(p)
    p.set_defaults(func=_list)

    p = asub.add_parser("check", help="which input series an application accepts, and why it refuses the others")
    p.add_argument("app", metavar="APP")
    _inputs(p)
    p.add_argument("--dicom", action="store_true", help="also require DICOM sources (for SEG/SR/SC outputs)")
    add_json_arg(p)
    p.set_defaults(func=_check)

    p = asub.add_parser("run", help="run an application: SEG, SR, SC and JSON outputs per accepted series")
    p.add_argument("app", metavar="APP")
    _inputs(p)
    _run_args(p)
    p.add_argument("--skip-refused", action="store_true",
                   help="process the accepted series and list the refused ones (default: refuse the whole run)")
    p.set_defaults(func=_run)

    p = sub.add_parser("predict", help="predict with a model or an application: predictions.csv (+ DICOM outputs)",
                       description="MODEL is a run folder, a run id (with -w) or a registered model NAME@VERSION; "
                                   "APP an application name (`sobre app list`). Writes OUT/predictions.csv with the "
                                   "columns `sobre evaluate` reads, and per-series outputs.")
    p.add_argument("source", metavar="MODEL|APP")
    _inputs(p)
    _run_args(p)
    p.add_argument("--dicom", action="store_true", help="also write the DICOM outputs (SEG, SR, SC); DICOM inputs only")
    add_scheduler_arg(p)
    p.set_defaults(func=_predict)


def _inputs(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files or folders; with -w also series UIDs and dataset versions NAME@vN")
    p.add_argument("-w", "--workspace", help="workspace for series UIDs, dataset versions, run ids and registered "
                                             "models")


def _run_args(p) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output folder")
    p.add_argument("--model", help="the application's model: run folder, run id (with -w) or NAME@VERSION")
    p.add_argument("--config", metavar="TOML", help="application settings (keys of the app's config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one setting, value in TOML syntax (e.g. --set min_volume_mm3=50 --set window='\"lung\"')")
    add_json_arg(p)


def _workspace(ns):
    if not getattr(ns, "workspace", None):
        return None
    from sobre.catalog import Workspace

    from ._common import track

    return track(Workspace.open(ns.workspace))


def _overrides(ns) -> dict | None:
    import tomllib

    from sobre.base import read_toml
    from sobre.errors import ConfigError

    out: dict = {}
    if ns.config:
        out.update(read_toml(ns.config))
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("a setting is KEY=VALUE", found=repr(item), fix="e.g. --set min_volume_mm3=50")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word: a string
    return out or None


def _list(ns) -> int:
    from sobre.apps import list_apps

    rows = list_apps()
    if ns.json:
        emit_json(rows)
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<20} BROKEN ({r['origin']}): {r['error']}")
            continue
        print(f"{r['name']:<20} {r['version']:<10} {r['origin']:<16} {r['description']}")
    return 0


def _check(ns) -> int:
    from sobre.apps import get_app, resolve_inputs

    app = get_app(ns.app)
    ws = _workspace(ns)
    verdicts = [app.check(c.image, dicom=ns.dicom, series=c.id, catalogued=c.meta)
                for c in resolve_inputs(ns.inputs, workspace=ws)]
    if ns.json:
        emit_json([v.to_dict() for v in verdicts])
    else:
        for v in verdicts:
            print(("accepted " if v.accepted else "REFUSED  ") + v.series + ("" if v.accepted else f": {v.reason()}"))
    return 0 if all(v.accepted for v in verdicts) else 1


def _summary(result) -> None:
    for c in result.cases:
        print(f"{c.folder}: series {c.id}" + (f" (subject {c.subject})" if c.subject else ""))
        for f in c.findings:
            seg = f" [{f['segment']}]" if f.get("segment") else ""
            print(f"  {f['name']['meaning']}{seg}: {f['value']['meaning']}")
        for m in c.measurements:
            seg = f" [{m['segment']}]" if m.get("segment") else ""
            unit = m["unit"] if isinstance(m["unit"], str) else m["unit"]["value"]
            print(f"  {m['name']['meaning']}{seg}: {m['value']:.6g} {unit}")
        for o in c.outputs:
            print(f"  {o['kind']:<5} {o['path']}")
    for v in result.refused:
        print(f"refused {v.series}: {v.reason()}", file=sys.stderr)
    print(f"outputs: {result.out}")


def _run(ns) -> int:
    from sobre.apps import get_app

    app = get_app(ns.app)
    ws = _workspace(ns)
    with progress_bars(ns) as progress:
        result = app.run(ns.inputs, ns.out, model=ns.model, workspace=ws, config=_overrides(ns),
                         strict=not ns.skip_refused, progress=progress)
    if ns.json:
        emit_json(result.to_dict())
    else:
        _summary(result)
    return 0


def _predict(ns) -> int:
    from sobre.apps import predict

    ws = _workspace(ns)
    with open_compute_of(ns, ws) as compute, progress_bars(ns) as progress:
        res = predict(ns.source, ns.inputs, ns.out, model=ns.model, workspace=ws, dicom=ns.dicom,
                      config=_overrides(ns), progress=progress, compute=compute)
    if ns.json:
        emit_json(dict(res.result.to_dict(), predictions=str(res.path)))
    else:
        _summary(res.result)
        print(f"predictions: {res.path} ({len(res.frame)} rows; `sobre evaluate {res.path}` when labels are known)")
    return 0

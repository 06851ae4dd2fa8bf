"""Finding applications: Python entry points of group ``sobre.apps``, plus the built-in examples.

A package ships an application by declaring an entry point whose object is an :class:`App` or a
function returning one::

    [project.entry-points."sobre.apps"]
    liver-lesions = "my_package.apps:liver_lesions"

:func:`list_apps` lists them (a broken entry point is listed with its error, not fatal);
:func:`get_app` loads one by name.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib import metadata

from sobre.errors import InputError

__all__ = ["ENTRY_POINT_GROUP", "AppEntry", "app_entries", "list_apps", "get_app"]

ENTRY_POINT_GROUP = "sobre.apps"
BUILTIN = {"ct-lesions": "sobre.apps:ct_lesions"}


@dataclass
class AppEntry:
    """An application found, not yet loaded: its name, where it comes from and its ``module:attr``."""

    name: str
    origin: str  # "built-in" or the distribution "name version"
    value: str

    def load(self):
        from sobre.apps._app import App

        try:
            module, _, attr = self.value.partition(":")
            obj = importlib.import_module(module)
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
            app = obj() if callable(obj) and not isinstance(obj, App) else obj
        except Exception as exc:  # noqa: BLE001 - a third-party app failing to import is that app's error
            raise InputError(f"app '{self.name}' cannot be loaded ({type(exc).__name__}: {exc})",
                             found=f"entry point {self.value} from {self.origin}",
                             fix="fix or reinstall the package that provides it") from None
        if not isinstance(app, App):
            raise InputError(f"app '{self.name}' is not a sobre.apps.App", found=type(app).__name__,
                             fix=f"entry point {self.value} ({self.origin}) must give an App or a function "
                                 "returning one")
        return app


def app_entries() -> dict[str, AppEntry]:
    """Every application by name: built-in ones, then entry points (which may not override a built-in)."""
    out = {name: AppEntry(name, "built-in", value) for name, value in BUILTIN.items()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in out:
            continue
        dist = getattr(ep, "dist", None)
        origin = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "entry point"
        out[ep.name] = AppEntry(ep.name, origin, ep.value)
    return out


def list_apps() -> list[dict]:
    """Name, version, description, origin and rules of every application (``error`` for a broken one)."""
    rows = []
    for name, e in sorted(app_entries().items()):
        try:
            app = e.load()
        except InputError as exc:
            rows.append({"name": name, "origin": e.origin, "error": str(exc)})
            continue
        rows.append(dict(app.describe(), name=name, origin=e.origin))
    return rows


def get_app(name: str):
    """The application called ``name`` (:class:`InputError` naming the known ones otherwise)."""
    entries = app_entries()
    if name not in entries:
        near = difflib.get_close_matches(name, list(entries), n=1)
        raise InputError(f"unknown app '{name}'" + (f"; did you mean '{near[0]}'?" if near else ""),
                         expected="one of: " + ", ".join(sorted(entries)), found=repr(name),
                         fix="list them with `sobre app list`; apps are installed as Python packages declaring "
                             f"an entry point in group '{ENTRY_POINT_GROUP}'")
    return entries[name].load()


def is_app(name) -> bool:
    return isinstance(name, str) and name in app_entries()

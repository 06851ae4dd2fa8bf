"""One configuration mechanism for all of Sobre: typed pydantic models read from TOML.

Every configuration (workspace settings, experiment configs, simulator and validation options) is a
:class:`Config`: ``extra="forbid"``, so an unknown or misspelt key is an error that names the file,
the key, the keys allowed there (with the nearest match) and the fix. Configurations hold values,
never code. The resolved configuration (every default filled in, :func:`resolved`) is what runs and
reports record.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sobre.errors import ConfigError

__all__ = ["Config", "validate_config", "load_config", "config_from", "resolved", "read_toml"]


class _RaisesConfigError(type(BaseModel)):  # type: ignore[misc]
    """Direct construction (``Section(key=...)``) raises the same ConfigError as a TOML file would.

    Only the call of the class itself is wrapped: pydantic's own validation (of nested sections, of
    mappings) never goes through it, so a problem is described once, with its full key path.
    """

    def __call__(cls, *args, **data):
        try:
            return super().__call__(*args, **data)
        except ValidationError:
            if args:
                raise
            check = getattr(cls, "from_dict", None) or (lambda d: validate_config(d, cls))
            check(data)  # raises ConfigError: key, expected, found, fix
            raise


class Config(BaseModel, metaclass=_RaisesConfigError):
    """Base of every typed configuration section.

    Unknown keys are refused, defaults validated, NaN and infinities refused; building a section in
    Python (``Section(key=value)``) raises the same :class:`~sobre.errors.ConfigError` as reading it
    from TOML. ``docs`` (a class variable) names the page that lists every setting; error messages
    point to it.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
    docs: ClassVar[str | None] = None


M = TypeVar("M", bound=BaseModel)


def _as_model(ann):
    """The single pydantic model an annotation stands for (Optional[M], list[M], M), else None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    members = _union_members(ann)
    return members[0] if len(members) == 1 else None


def _union_members(ann) -> list:
    out = []
    for a in typing.get_args(ann):
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
        else:
            out.extend(_union_members(a))
    return out


def _kind_of(model) -> str | None:
    f = getattr(model, "model_fields", {}).get("kind")
    if f is None:
        return None
    args = typing.get_args(f.annotation)
    return args[0] if args else None


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any]:
    """(readable path parts, the annotation reached) for a pydantic error location.

    Discriminated-union tags that pydantic inserts in locations are dropped from the path.
    """
    cur: Any = model
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        m = _as_model(cur)
        if m is not None and part in m.model_fields:
            cur = m.model_fields[part].annotation
            parts.append(str(part))
            continue
        member = next((u for u in _union_members(cur) if _kind_of(u) == part), None)
        if member is not None:  # a union tag: not a key the user wrote
            cur = member
            continue
        if typing.get_origin(cur) in (typing.Union, types.UnionType) and not str(part).isidentifier() \
                or part in {getattr(a, "__name__", None) for a in typing.get_args(cur)}:
            # pydantic names the union member it tried ("int", "list[SiteConfig]"): not a key either
            member = next((a for a in typing.get_args(cur) if getattr(a, "__name__", None) == part
                           or str(part).startswith(getattr(typing.get_origin(a), "__name__", "?") + "[")), None)
            cur = member if member is not None else Any
            continue
        if isinstance(cur, type) or typing.get_origin(cur) in (dict, typing.Union) or cur is Any:
            parts.append(str(part))
            cur = Any
            continue
        parts.append(str(part))
        cur = Any
    return parts, cur


def _dotted(parts: list[str]) -> str:
    out = ""
    for p in parts:
        out += p if p.startswith("[") else ("." if out else "") + p
    return out or "(top level)"


def _describe(err: dict, model: type[BaseModel]) -> tuple[str, str, str | None, str | None]:
    """(key, what, expected, found) for one pydantic error."""
    loc = tuple(err.get("loc", ()))
    parts, _ = _walk(model, loc)
    key = _dotted(parts)
    typ = err.get("type", "")
    found = repr(err.get("input"))
    if len(found) > 80:
        found = found[:77] + "..."
    if typ == "extra_forbidden":
        _, parent = _walk(model, loc[:-1])
        pm = _as_model(parent) if parent is not model else model
        if not loc[:-1]:
            pm = model
        allowed = sorted(pm.model_fields) if pm is not None else []
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return key, f"unknown key '{key}'{hint}", "one of: " + ", ".join(allowed), repr(loc[-1])
    if typ == "missing":
        return key, f"missing required key '{key}'", "a value", "nothing"
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        return key, f"'{key}': unknown or missing `kind`", ctx.get("expected_tags", "a kind"), \
            repr(ctx.get("tag", None))
    if typ == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        where = f"[{key}] " if loc else ""
        return key, where + msg, None, None
    ctx = err.get("ctx") or {}
    expected = ctx.get("expected") or str(err.get("msg", "")).removeprefix("Input should be ").rstrip(".")
    return key, f"wrong value for '{key}'", str(expected), found


def validate_config(data: dict, model: type[M], *, path: str | Path | None = None, section: str | None = None) -> M:
    """Validate a parsed mapping against ``model``; raise :class:`~sobre.errors.ConfigError` listing every problem.

    ``section`` (e.g. ``"privacy"``) prefixes the keys named in messages, for a table of a larger file.

    Examples
    --------
    >>> class Opts(Config):
    ...     seed: int = 0
    >>> validate_config({"sed": 1}, Opts)
    Traceback (most recent call last):
    ...
    sobre.errors.ConfigError: unknown key 'sed'; did you mean 'seed'? (expected one of: seed; found 'sed'). remove or rename the key
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errs = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
        problems = [_describe(e, model) for e in errs]
        if section:
            problems = [(k, w.replace(f"'{k}'", f"'{section}.{k}'", 1), e, f) for k, w, e, f in problems]
        unknown = any(p[1].startswith("unknown key") for p in problems)
        fix = "remove or rename the key" if unknown else "correct the value"
        docs = getattr(model, "docs", None)
        if docs:
            fix += f"; {docs} lists every setting with its type and default"
        if len(problems) == 1:
            _, what, expected, found = problems[0]
            raise ConfigError(what, path=path, expected=expected, found=found, fix=fix) from None
        lines = [f"{len(problems)} problems in the config"]
        for _, what, expected, found in problems[:10]:
            detail = f" (expected {expected}; found {found})" if expected is not None and found is not None else ""
            lines.append(f"  - {what}{detail}")
        if len(problems) > 10:
            lines.append(f"  - and {len(problems) - 10} more")
        lines.append(f"fix: {fix}")
        raise ConfigError("\n".join(lines), path=path) from None


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file, or raise :class:`~sobre.errors.ConfigError` naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("cannot read the config file", path=path, found=exc.strerror,
                          fix="check the path") from None
    except UnicodeDecodeError:
        raise ConfigError("the config file is not UTF-8 text", path=path, fix="save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", path=path, fix="fix the syntax at the line shown") from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read a TOML file into a typed config.

    Raises
    ------
    ConfigError
        Unreadable TOML (with the line), unknown keys (with the nearest valid key), wrong types or
        values, missing required keys.
    """
    return validate_config(read_toml(path), model, path=path)


def config_from(config, model: type[M], config_path: str | Path | None = None) -> tuple[M, Path | None]:
    """``(typed config, the file it came from)`` for a ``model`` instance, a parsed mapping or a TOML path."""
    if isinstance(config, model):
        return config, Path(config_path) if config_path is not None else None
    if isinstance(config, dict):
        return validate_config(config, model, path=config_path), Path(config_path) if config_path else None
    return load_config(config, model), Path(config)


def resolved(config: BaseModel) -> dict:
    """The configuration with every default filled in, as JSON-able data (what a run records)."""
    return config.model_dump(mode="json")

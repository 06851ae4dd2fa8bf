"""Errors a person can act on.

Every error Sobre raises for bad input is a :class:`SobreError`. Its message
names the file (and the DICOM tag where there is one), says what was expected,
what was found, and what to do. The CLI prints ``error: <message>`` and exits
with status 2; it never shows a traceback for a :class:`SobreError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SobreError",
    "InputError",
    "GeometryError",
    "CatalogError",
    "ExpressionError",
    "ConfigError",
    "AccessError",
    "Problem",
    "Problems",
    "ProblemError",
    "describe_exception",
]


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    r"""``"TypeName: first line of the message"`` for a third-party exception, short and traceback-free.

    Some libraries put whole tracebacks or multi-line dumps into their messages (pydicom's
    ``tag_in_exception``); a message shown to a user keeps the exception's type and its first
    meaningful line only.

    >>> describe_exception(ValueError("bad value\nTraceback (most recent call last):\n  ..."))
    'ValueError: bad value'
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = ""
    for ln in lines:
        if ln.startswith("Traceback (most recent call last)"):
            break
        text = ln
        break
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class SobreError(Exception):
    """Base class of every error Sobre raises on purpose.

    Parameters
    ----------
    what : str
        One sentence saying what is wrong.
    path : str or Path, optional
        The file concerned.
    tag : str, optional
        DICOM tag concerned, written ``(gggg,eeee) Keyword``.
    expected, found : str, optional
        What was expected and what was found instead.
    fix : str, optional
        What the user can do about it.
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | Path | None = None,
        tag: str | None = None,
        expected: str | None = None,
        found: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.path = str(path) if path is not None else None
        self.tag = tag
        self.expected = expected
        self.found = found
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: ")
        if self.tag:
            parts.append(f"{self.tag}: ")
        parts.append(self.what)
        if self.expected is not None and self.found is not None:
            parts.append(f" (expected {self.expected}; found {self.found})")
        elif self.expected is not None:
            parts.append(f" (expected {self.expected})")
        elif self.found is not None:
            parts.append(f" (found {self.found})")
        if self.fix:
            parts.append(f". {self.fix}")
        text = "".join(parts)
        return text

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": str(self),
            "path": self.path,
            "tag": self.tag,
            "expected": self.expected,
            "found": self.found,
            "fix": self.fix,
        }


class InputError(SobreError):
    """A file or table could not be read or does not hold what it should."""


class GeometryError(SobreError):
    """Image geometry is inconsistent (e.g. uneven slices) and cannot be stacked safely."""


class CatalogError(SobreError):
    """The workspace catalog refuses an operation (unknown series, frozen version, ...)."""


class ExpressionError(SobreError):
    """A cohort filter expression is malformed or names unknown fields."""


class ConfigError(SobreError):
    """A configuration file has unknown keys or values of the wrong type."""


class AccessError(SobreError):
    """The person (or service) is not allowed to do this: no role in the project, or a role without the right.

    Raised by :func:`sobre.catalog.require`; the workstation server answers it with HTTP 403.
    """


LEVELS = ("info", "warning", "error")


@dataclass(frozen=True)
class Problem:
    """One finding of a check, returned as data rather than raised (validation as data).

    Ingest, dataset verification, de-identification and evaluation all report what they found as
    :class:`Problem` s; the caller chooses per call how strict to be (:class:`Problems`).

    Attributes
    ----------
    level : str
        ``"error"`` (the item was refused or is wrong), ``"warning"`` (kept, but look at it) or
        ``"info"``.
    message : str
        What is wrong, with what was expected and what was found.
    path, tag : str, optional
        The file, and the DICOM tag ``(gggg,eeee) Keyword``, concerned.
    fix : str, optional
        What the user can do about it.
    code : str
        A stable short name of the kind of problem (``"not-dicom"``, ``"uid-conflict"``, ...) for
        scripts that filter problems.
    details : dict
        Anything else worth keeping (JSON-able).

    Examples
    --------
    >>> p = Problem("error", "pixel data is truncated", path="a.dcm", code="truncated")
    >>> str(p)
    '[error] a.dcm: pixel data is truncated'
    """

    level: str
    message: str
    path: str | None = None
    tag: str | None = None
    fix: str | None = None
    details: dict = field(default_factory=dict)
    code: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Problem level must be one of {LEVELS}, not {self.level!r}")

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        tag = f"{self.tag}: " if self.tag else ""
        fix = f" ({self.fix})" if self.fix else ""
        return f"[{self.level}] {where}{tag}{self.message}{fix}"

    @classmethod
    def from_error(cls, exc: SobreError, *, level: str = "error", code: str = "", path: str | None = None) -> Problem:
        """The problem an error describes (its message without the path, which becomes ``path``)."""
        text = exc.what
        if exc.expected is not None and exc.found is not None:
            text += f" (expected {exc.expected}; found {exc.found})"
        elif exc.expected is not None:
            text += f" (expected {exc.expected})"
        elif exc.found is not None:
            text += f" (found {exc.found})"
        return cls(level, text, path=path or exc.path, tag=exc.tag, fix=exc.fix, code=code or _code_of(exc))

    def to_dict(self) -> dict:
        out = {"level": self.level, "code": self.code, "message": self.message, "path": self.path,
               "tag": self.tag, "fix": self.fix}
        if self.details:
            out["details"] = self.details
        return out


def _code_of(exc: SobreError) -> str:
    name = type(exc).__name__.removesuffix("Error")
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-") or "error"


class ProblemError(SobreError):
    """Raised by :class:`Problems` when a problem reaches the level the caller chose to refuse."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(problem.message, path=problem.path, tag=problem.tag, fix=problem.fix)


class Problems:
    """The problems of one call, with the strictness that call chose.

    Parameters
    ----------
    raise_at : {"error", "warning", "info"} or None
        The first problem at this level or above raises :class:`ProblemError`; None (the
        default) collects everything and raises nothing.

    Examples
    --------
    >>> found = Problems()
    >>> found.add(Problem("warning", "series split in two"))
    >>> [p.level for p in found], found.has_errors
    (['warning'], False)
    >>> strict = Problems(raise_at="warning")
    >>> strict.add(Problem("warning", "series split in two"))
    Traceback (most recent call last):
    ...
    sobre.errors.ProblemError: series split in two
    """

    def __init__(self, raise_at: str | None = None) -> None:
        if raise_at is not None and raise_at not in LEVELS:
            raise ValueError(f"raise_at must be one of {LEVELS} or None, not {raise_at!r}")
        self.raise_at = raise_at
        self.items: list[Problem] = []

    def add(self, problem: Problem) -> None:
        self.items.append(problem)
        if self.raise_at is not None and LEVELS.index(problem.level) >= LEVELS.index(self.raise_at):
            raise ProblemError(problem)

    def extend(self, problems) -> None:
        for p in problems:
            self.add(p)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def at(self, level: str) -> list[Problem]:
        return [p for p in self.items if p.level == level]

    @property
    def has_errors(self) -> bool:
        return any(p.level == "error" for p in self.items)

    def to_list(self) -> list[dict]:
        return [p.to_dict() for p in self.items]

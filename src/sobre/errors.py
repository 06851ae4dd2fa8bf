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
    "Problem",
]


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


@dataclass(frozen=True)
class Problem:
    """One finding of a validation pass, returned as data rather than raised.

    ``level`` is ``"error"``, ``"warning"`` or ``"info"``.
    """

    level: str
    message: str
    path: str | None = None
    tag: str | None = None
    fix: str | None = None
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        tag = f"{self.tag}: " if self.tag else ""
        fix = f" ({self.fix})" if self.fix else ""
        return f"[{self.level}] {where}{tag}{self.message}{fix}"

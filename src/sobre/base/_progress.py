"""Progress of long work, reported by the library and rendered by whoever calls it.

Library code never prints. A long operation takes ``progress``: a callable
``progress(stage, done, total)`` called as work advances (``total`` may be None when unknown). The CLI
turns these calls into progress bars; the server into events; tests into lists.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress", "no_progress", "ProgressRecorder"]


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


def no_progress(stage: str, done: int, total: int | None) -> None:
    """The default: report nothing."""


class ProgressRecorder:
    """Keeps every call (for tests and scripts).

    >>> rec = ProgressRecorder()
    >>> rec("hashing", 1, 2); rec("hashing", 2, 2)
    >>> rec.last("hashing")
    (2, 2)
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        self.calls.append((stage, done, total))

    def last(self, stage: str) -> tuple[int, int | None] | None:
        for s, d, t in reversed(self.calls):
            if s == stage:
                return d, t
        return None

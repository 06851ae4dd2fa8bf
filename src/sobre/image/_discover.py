"""File discovery: the one walk of files and folders behind load, ingest, de-identification, pull and listen.

Every command that takes "files or folders" sees the same files in the same folder:

- a path given explicitly is taken as it is (a missing one is a problem);
- folders are walked recursively in sorted order; hidden files and folders (``.name``) are left out;
- index and sidecar files are left out on purpose and listed in ``ignored``: ``DICOMDIR`` (an index of
  the files beside it, which are walked anyway), BIDS sidecars (``participants.tsv``,
  ``dataset_description.json``, ``*.json``, ``*.tsv``), ``README``, ``LICENSE``, text and tables;
- in a BIDS dataset (a folder holding ``dataset_description.json`` or ``participants.tsv``) the
  ``derivatives/`` and ``sourcedata/`` folders are not walked: raw data only;
- a link whose target lies outside the folder being walked is not followed (a problem says so): a
  folder given to Sobre never leads it to files elsewhere; links to folders are not followed;
- folders to ``exclude`` (e.g. the workspace itself when it lies inside the folder ingested) are skipped.

What is left are *candidates*: each reader then decides by content (a ``.dcm`` name proves nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sobre.errors import Problem

__all__ = ["discover", "Discovery", "IGNORED_NAMES", "IGNORED_SUFFIXES"]

IGNORED_NAMES = frozenset({"DICOMDIR", "participants.tsv", "participants.json", "dataset_description.json",
                           "README", "CHANGES", "LICENSE", "Thumbs.db", "desktop.ini"})
IGNORED_SUFFIXES = (".json", ".tsv", ".csv", ".txt", ".md")
_BIDS_MARKERS = ("participants.tsv", "dataset_description.json")
_BIDS_SKIPPED = ("derivatives", "sourcedata")


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes
    ----------
    files : list of Path
        Candidate files (absolute paths, in walk order, each once).
    ignored : list of Path
        Index and sidecar files left out on purpose.
    problems : list of Problem
        Paths that do not exist, links not followed, folders that cannot be read.
    """

    files: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def missing(self) -> list[Path]:
        return [Path(p.path) for p in self.problems if p.code == "missing"]


def _ignored_name(name: str) -> bool:
    return name in IGNORED_NAMES or name.upper() == "DICOMDIR" or name.endswith(IGNORED_SUFFIXES)


def discover(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
             exclude: Iterable[str | os.PathLike] = ()) -> Discovery:
    """List the candidate files below ``paths`` (files or folders).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.dcm", "a.dcm", ".hidden", "DICOMDIR", "notes.txt"):
    ...     _ = (d / name).write_bytes(b"")
    >>> found = discover(d)
    >>> [p.name for p in found.files], sorted(p.name for p in found.ignored)
    (['a.dcm', 'b.dcm'], ['DICOMDIR', 'notes.txt'])
    >>> discover(d / "nope").problems[0].code
    'missing'
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = Discovery()
    seen: set[str] = set()
    excluded = {os.path.abspath(os.fspath(e)) for e in exclude}

    def take(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.files.append(Path(path))

    for raw in paths:
        p = os.path.abspath(os.fspath(raw))
        if not os.path.lexists(p):
            out.problems.append(Problem("error", "no such file or folder", path=p, code="missing",
                                        fix="check the path"))
            continue
        if not os.path.isdir(p):
            if not os.path.exists(p):
                out.problems.append(Problem("error", "broken link: its target does not exist", path=p,
                                            code="broken-link"))
            else:
                take(p)
            continue
        root_real = os.path.realpath(p)

        def onerror(exc: OSError) -> None:
            out.problems.append(Problem("warning", f"folder cannot be read ({exc.strerror})",
                                        path=getattr(exc, "filename", None), code="unreadable"))

        for folder, dirs, names in os.walk(p, onerror=onerror):
            if folder in excluded:
                dirs[:] = []
                continue
            bids_root = any(m in names for m in _BIDS_MARKERS)
            keep = []
            for d in sorted(dirs):
                full = os.path.join(folder, d)
                if d.startswith(".") or (bids_root and d in _BIDS_SKIPPED) or full in excluded:
                    continue
                if os.path.islink(full):
                    target = os.path.realpath(full)
                    if not (target == root_real or target.startswith(root_real + os.sep)):
                        out.problems.append(Problem("warning", f"link to a folder outside {p} not followed",
                                                    path=full, code="link-outside",
                                                    details={"target": target}))
                    continue  # links to folders are not walked (their content inside the root is)
                keep.append(d)
            dirs[:] = keep
            for n in sorted(names):
                if n.startswith("."):
                    continue
                full = os.path.join(folder, n)
                if _ignored_name(n):
                    out.ignored.append(Path(full))
                    continue
                if os.path.islink(full):
                    target = os.path.realpath(full)
                    if not os.path.exists(target):
                        out.problems.append(Problem("warning", "broken link: its target does not exist",
                                                    path=full, code="broken-link"))
                        continue
                    if not target.startswith(root_real + os.sep):
                        out.problems.append(Problem("warning", f"link to a file outside {p} not followed",
                                                    path=full, code="link-outside", details={"target": target},
                                                    fix="give the target's folder explicitly to include it"))
                        continue
                take(full)
    return out

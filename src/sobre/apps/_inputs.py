"""What an application or ``predict`` runs on: files, folders, catalogued series, dataset versions.

:func:`resolve_inputs` turns each argument into :class:`Case` s (one per volume), lazily: the
rules of an application judge a case from its header before any pixel is read.

- an ``Image`` (or a list of them);
- a file or folder: every volume found in it (:func:`sobre.load_all`);
- with a workspace, ``NAME@vN``: every series of that frozen dataset version (files re-hashed
  against the manifest), with its catalogued metadata (subject, labels, site ...);
- with a workspace, a series UID (or a unique prefix, ``uid#label`` for split series).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sobre.errors import InputError

__all__ = ["Case", "resolve_inputs"]

_VERSION = re.compile(r"^[A-Za-z0-9_.\-]+@v\d+$")


@dataclass
class Case:
    """One volume to process: its id (series UID), subject, lazy Image and metadata."""

    id: str
    image: object  # sobre.Image, lazy
    subject: str | None = None
    meta: dict = field(default_factory=dict)
    origin: str = "files"  # "files", "image", "series", or the dataset version "NAME@vN"

    @property
    def files(self) -> list[str]:
        return list(self.image.sources)


def _from_image(img, i: int, origin: str) -> Case:
    meta = dict(img.metadata)
    sid = meta.get("subject_id") or meta.get("patient_id") or None
    uid = meta.get("series_uid")
    label = meta.get("volume_label")
    cid = f"{uid}#{label}" if uid and label else (uid or f"image-{i}")
    return Case(str(cid), img, None if sid is None else str(sid), meta, origin)


def resolve_inputs(inputs, *, workspace=None) -> list[Case]:
    """Cases from files, folders, Images, series UIDs and dataset versions (see the module docstring).

    Raises
    ------
    InputError
        An argument that is none of these (the message says what was looked for), or inputs that
        hold no image.
    """
    from sobre.image import Image, load_all

    if isinstance(inputs, (str, Path, Image)) or not hasattr(inputs, "__iter__"):
        inputs = [inputs]
    cases: list[Case] = []
    paths: list[Path] = []
    for item in inputs:
        if isinstance(item, Image):
            cases.append(_from_image(item, len(cases), "image"))
            continue
        if hasattr(item, "series") and hasattr(item, "image") and hasattr(item, "ref"):  # a Dataset
            cases.extend(_dataset_cases(item))
            continue
        if hasattr(item, "open") and hasattr(item, "content_hash"):  # a DatasetRef
            cases.extend(_dataset_cases(item.open()))
            continue
        text = str(item)
        if workspace is not None and _VERSION.match(text) and not Path(text).exists():
            cases.extend(_dataset_cases(workspace.dataset(text)))
            continue
        if Path(text).exists():
            paths.append(Path(text))
            continue
        if workspace is not None:
            cases.append(_series_case(workspace, text))
            continue
        raise InputError(f"no such file or folder: {text}", path=text,
                         expected="a file or folder, or with -w WS a series UID or a dataset version NAME@vN",
                         found="nothing by that name", fix="check the path, or pass the workspace with -w")
    if paths:
        for img in load_all(paths, on_warning=lambda m: None):
            cases.append(_from_image(img, len(cases), "files"))
    if not cases:
        raise InputError("no image in the inputs", expected="at least one image volume",
                         found=", ".join(map(str, paths)) or "no input", fix="check the paths")
    return cases


def _dataset_cases(ds) -> list[Case]:
    out = []
    for s in ds.series:
        meta = dict(s.metadata)
        meta.setdefault("dataset_version", ds.ref)
        meta.setdefault("dataset_hash", ds.content_hash)
        meta.setdefault("simulated", bool(ds.simulated))
        img = ds.image(s)
        out.append(Case(s.key, img, s.subject_id, meta, ds.ref))
    return out


def _series_case(ws, uid: str) -> Case:
    rec = ws.series(uid)  # CatalogError names an unknown or ambiguous UID
    key = f"{rec['series_uid']}#{rec['label']}" if rec.get("label") else rec["series_uid"]
    img = ws.load(key)
    meta = {k: v for k, v in rec.items() if isinstance(v, (str, int, float, bool)) or v is None}  # + clinical
    sid = rec.get("subject_id")
    return Case(key, img, None if sid is None else str(sid), meta, "series")

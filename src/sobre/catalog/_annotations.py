"""Annotations are data: immutable versions per annotator, in the catalog, filterable and frozen with datasets.

An *annotation* is one named object of one volume in one project: a mask (segments of the project's
label schema), named points (landmarks), boxes, or image-level labels. Every save makes a new
immutable *version* (author, time, parent version, tool, content hash); the content is a file of the
workspace, content-addressed and read-only (``annotations/ab/abcd….nii.gz`` or ``….json``).

Two people saving the same annotation never lose an update: a save names the version it started
from (``parent``); if another version was saved on that branch meanwhile, the save is refused with
:class:`AnnotationConflict` and the author chooses: reload the newer version, or save as a new branch.
A version is ``draft``, then ``submitted`` by its author, then ``accepted`` or ``rejected`` by a reviewer
(with a comment). Accepted versions are what cohort filters see (``ann_liver == "accepted"``,
``label_pneumonia == 1``) and what freezing puts in a dataset version's manifest (their hashes enter
its content hash), so training uses exactly the reviewed annotations.

A version can be *reviewed elsewhere*: the inference service saves its AI masks as submitted
versions with ``reviewed_in={"owner": "sobre.service", "job": N, "how": ...}`` (kept in the
version's summary). Such a version is not in :meth:`Annotations.review_queue`, and
:meth:`Annotations.review` refuses it (:class:`ReviewedElsewhere`, nothing changed) unless the
caller is its owner (``via="sobre.service"``: ``sobre.service.Review``, which records the same
decision on the version), so the annotation's state and the owner's state cannot part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from sobre.base import canonical_json, sha256_bytes, write_atomic
from sobre.errors import CatalogError, InputError

from ._accounts import LabelSchema
from ._models import Annotation, AnnotationVersion, Project, Review, Series

if TYPE_CHECKING:

    from ._workspace import Workspace

__all__ = ["Annotations", "AnnotationVersionInfo", "AnnotationConflict", "ReviewedElsewhere", "KINDS", "STATUSES"]

KINDS = ("mask", "points", "boxes", "labels")
STATUSES = ("draft", "submitted", "accepted", "rejected")
MAX_TEXT = 2000


class AnnotationConflict(CatalogError):
    """Another version was saved on this branch since the one the save started from."""

    def __init__(self, what: str, *, head: int, author: str, **kw) -> None:
        self.head = head
        self.head_author = author
        super().__init__(what, **kw)


class ReviewedElsewhere(CatalogError):
    """A version whose review belongs to another part of Sobre (an AI result of the inference service)."""


def _reviewed_in(summary) -> dict | None:
    r = (summary or {}).get("reviewed_in") if isinstance(summary, dict) else None
    return dict(r) if isinstance(r, dict) and r.get("owner") else None


@dataclass(frozen=True)
class AnnotationVersionInfo:
    """One saved version (what the API returns; the content is read with :meth:`Annotations.content`)."""

    id: int
    annotation_id: int
    project: str
    series_uid: str
    series_label: str
    name: str
    kind: str
    number: int
    parent: int | None
    branch: str
    author: str
    tool: str | None
    status: str
    sha256: str
    path: str
    summary: dict
    comment: str | None
    created_at: str
    reviews: tuple = ()
    #: where this version is reviewed instead of the annotation review queue (``owner``, ``job``, ``how``), or None
    reviewed_in: dict | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["reviews"] = [dict(r) for r in self.reviews]
        return d


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


class Annotations:
    """Annotation versions of a workspace (``ws.annotations``)."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    # ------------------------------------------------------------------ saving
    def save(self, project: str, series: str, name: str, kind: str, content: Any, *, author: str,
             parent: int | None = None, new_branch: bool = False, tool: str | None = None,
             status: str = "draft", comment: str | None = None,
             reviewed_in: dict | None = None) -> AnnotationVersionInfo:
        """Save a new version; the file and the row are written whole or not at all.

        Parameters
        ----------
        project, series, name, kind
            The project, the volume (``uid`` or ``uid#label``), the annotation's name in the project's
            schema (a mask's name, a point or box set, or ``"labels"``) and its kind.
        content
            ``mask``: an integer array on the series grid (shape of the volume, values = segment values
            of the schema, 0 = background) or an :class:`~sobre.image.Image` on that grid;
            ``points``: ``[{"name", "position": [x, y, z]}]`` (LPS mm); ``boxes``:
            ``[{"name", "min": [x, y, z], "max": [x, y, z]}]`` (LPS mm); ``labels``: ``{label: value}``.
        parent
            The version the author started from (None for the first version). Another newer version
            on that branch raises :class:`AnnotationConflict` unless ``new_branch``.
        reviewed_in
            ``{"owner": ..., "job": ..., "how": ...}`` when another part of Sobre reviews this version
            (the inference service's AI masks): it stays out of the review queue and only its owner
            reviews it (:meth:`review` with ``via=owner``).
        """
        if kind not in KINDS:
            raise InputError("unknown annotation kind", expected=", ".join(KINDS), found=repr(kind))
        if status not in ("draft", "submitted"):
            raise InputError("a save is a draft or a submission", expected="draft or submitted", found=repr(status))
        if reviewed_in is not None and (not isinstance(reviewed_in, dict) or not reviewed_in.get("owner")):
            raise InputError("reviewed_in names who reviews the version", expected='{"owner": ..., "job": ..., "how": ...}',
                             found=repr(reviewed_in)[:200])
        proj = self._ws.accounts.project(project)
        rec = self._ws.series(series)
        if rec["status"] != "ok":
            raise CatalogError(f"series {rec['series_uid']} cannot be annotated: {rec['problem']}")
        with self._ws.session() as s:
            rec = dict(rec, affine=s.execute(select(Series.affine).where(
                Series.series_uid == rec["series_uid"], Series.label == rec["label"])).scalar_one())
        self._precheck(project, rec, name, kind, parent)  # refuse before writing anything
        data, ext, summary = self._encode(kind, name, content, proj.schema, rec)
        if reviewed_in is not None:
            summary = {**summary, "reviewed_in": {k: reviewed_in[k] for k in sorted(reviewed_in)}}
        sha = sha256_bytes(data)
        target = self._ws.layout.annotation_payload(sha, ext)
        rel = target.relative_to(self._ws.root)
        if not target.exists():  # content-addressed: the same content is one file
            write_atomic(target, data, mode=0o444, fsync=True)

        from sqlalchemy.exc import IntegrityError, OperationalError

        def transaction() -> int:
            with self._ws.session() as s, s.begin():
                prow = s.execute(select(Project).where(Project.name == project)).scalar_one()
                ann = s.execute(select(Annotation).where(
                    Annotation.project_pk == prow.id, Annotation.series_uid == rec["series_uid"],
                    Annotation.series_label == rec["label"], Annotation.name == name)).scalar_one_or_none()
                if ann is None:
                    ann = Annotation(project_pk=prow.id, series_uid=rec["series_uid"], series_label=rec["label"],
                                     name=name, kind=kind, created_at=_now())
                    s.add(ann)
                    s.flush()
                elif ann.kind != kind:
                    raise InputError(f"annotation '{name}' of this series is a {ann.kind}", expected=ann.kind,
                                     found=kind, fix="use another name for another kind of annotation")
                parent_row = None
                if parent is not None:
                    parent_row = s.get(AnnotationVersion, parent)
                    if parent_row is None or parent_row.annotation_pk != ann.id:
                        raise CatalogError(f"version {parent} is not a version of this annotation",
                                           fix="reload the annotation and start from one of its versions")
                branch = parent_row.branch if parent_row is not None else "main"
                head = s.execute(select(AnnotationVersion).where(AnnotationVersion.annotation_pk == ann.id,
                                                                 AnnotationVersion.branch == branch)
                                 .order_by(AnnotationVersion.number.desc())).scalars().first()
                if head is not None and (parent_row is None or head.id != parent_row.id):
                    if not new_branch:
                        raise AnnotationConflict(
                            f"'{name}' was saved by {head.author} (version {head.number}) since you opened it",
                            head=head.number, author=head.author, expected=f"version {parent_row.number if parent_row else 'none'}"
                            f" as the latest on branch {branch}", found=f"version {head.number}",
                            fix="reload the newer version, or save yours as a new branch")
                number = (s.execute(select(func.max(AnnotationVersion.number))
                                    .where(AnnotationVersion.annotation_pk == ann.id)).scalar_one() or 0) + 1
                if head is not None and (parent_row is None or head.id != parent_row.id):
                    branch = f"{author}-{number}"
                row = AnnotationVersion(annotation_pk=ann.id, number=number,
                                        parent_pk=parent_row.id if parent_row is not None else None, branch=branch,
                                        author=author, tool=tool, status=status, payload_path=str(rel), sha256=sha,
                                        summary=summary, comment=comment, created_at=_now())
                s.add(row)
                s.flush()
                return row.id
        for attempt in range(5):  # two saves racing for the same new row: the loser re-reads the head
            try:
                vid = transaction()
                break
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
        return self.version(vid)

    def _precheck(self, project: str, rec: dict, name: str, kind: str, parent: int | None) -> None:
        """The refusals that do not depend on the content: a kind or a parent that does not fit."""
        with self._ws.session() as s:
            prow = s.execute(select(Project).where(Project.name == project)).scalar_one()
            ann = s.execute(select(Annotation).where(
                Annotation.project_pk == prow.id, Annotation.series_uid == rec["series_uid"],
                Annotation.series_label == rec["label"], Annotation.name == name)).scalar_one_or_none()
            if ann is not None and ann.kind != kind:
                raise InputError(f"annotation '{name}' of this series is a {ann.kind}", expected=ann.kind,
                                 found=kind, fix="use another name for another kind of annotation")
            if parent is not None:
                row = s.get(AnnotationVersion, parent)
                if row is None or ann is None or row.annotation_pk != ann.id:
                    raise CatalogError(f"version {parent} is not a version of this annotation",
                                       fix="reload the annotation and start from one of its versions")

    def _encode(self, kind: str, name: str, content, schema: LabelSchema, rec: dict) -> tuple[bytes, str, dict]:
        if kind == "mask":
            return self._encode_mask(name, content, schema, rec)
        if kind == "labels":
            if not isinstance(content, dict) or not content:
                raise InputError("labels must be a mapping of label name to value", found=type(content).__name__)
            clean = {}
            for key, value in content.items():
                ldef = schema.label(str(key))
                if ldef is None:
                    raise InputError(f"label '{key}' is not in the project's schema",
                                     expected="one of: " + (", ".join(x.name for x in schema.labels) or "(none)"))
                clean[ldef.name] = _check_label(ldef, value)
            return canonical_json({"kind": "labels", "labels": clean}), ".json", {"labels": clean}
        if not isinstance(content, list):
            raise InputError(f"{kind} must be a list", found=type(content).__name__)
        allowed = schema.points if kind == "points" else schema.boxes
        items = []
        for i, item in enumerate(content):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputError(f"{kind}[{i}] must be a mapping with a name", found=repr(item)[:80])
            if allowed and item["name"] not in allowed:
                raise InputError(f"{kind}[{i}]: '{item['name']}' is not in the project's schema",
                                 expected="one of: " + ", ".join(allowed))
            keys = ("position",) if kind == "points" else ("min", "max")
            clean = {"name": item["name"]}
            for k in keys:
                clean[k] = _vector(item.get(k), f"{kind}[{i}].{k}")
            if kind == "boxes" and any(a > b for a, b in zip(clean["min"], clean["max"])):
                raise InputError(f"boxes[{i}]: min must not exceed max", found=f"{clean['min']} / {clean['max']}")
            items.append(clean)
        return canonical_json({"kind": kind, "items": items}), ".json", {"count": len(items)}

    def _encode_mask(self, name: str, content, schema: LabelSchema, rec: dict) -> tuple[bytes, str, dict]:
        import gzip
        import io

        import nibabel as nib

        from sobre.image import Image, lps_to_ras

        shape = tuple(rec["shape"] or ())
        arr = content.array if isinstance(content, Image) else np.asarray(content)
        if isinstance(content, Image) and rec.get("affine") is not None and \
                not np.allclose(content.affine, rec["affine"], atol=1e-3):
            raise InputError("mask is not on the image's grid", expected="the series' affine (LPS)",
                             found="another affine", fix="resample the mask to the image first")
        if arr.shape != shape:
            raise InputError("mask shape does not match the image", expected=f"{list(shape)}",
                             found=f"{list(arr.shape)}", fix="draw the mask on this series' grid")
        if arr.dtype.kind not in "iub":
            raise InputError("mask values must be integers", found=str(arr.dtype))
        values = np.unique(arr)
        known = {s.value for s in schema.segments}
        bad = [int(v) for v in values if v != 0 and int(v) not in known]
        if bad or (values.size and (values.min() < 0 or values.max() > 255)):
            raise InputError("mask holds values that are not segments of the project's schema",
                             expected="0 and " + (", ".join(str(v) for v in sorted(known)) or "(no segment defined)"),
                             found=", ".join(str(v) for v in bad[:10]))
        counts = {schema.segment(int(v)).name: int((arr == v).sum()) for v in values if v != 0}
        affine = np.asarray(rec["affine"], dtype=np.float64)
        img = nib.Nifti1Image(np.asarray(arr, dtype=np.uint8), lps_to_ras(affine))
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = f"sobre mask {name}"[:79].encode()
        raw = io.BytesIO()
        raw.write(img.to_bytes())
        # gzip with a fixed time stamp: the same mask always gives the same bytes (and hash)
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(raw.getvalue())
        return out.getvalue(), ".nii.gz", {"segments": counts, "shape": list(shape)}

    # ------------------------------------------------------------------ status
    def submit(self, version: int, *, author: str) -> AnnotationVersionInfo:
        with self._ws.session() as s, s.begin():
            row = self._row(s, version)
            if row.author != author:
                raise CatalogError("only the author submits a version", expected=row.author, found=author)
            if row.status != "draft":
                raise CatalogError(f"version {row.number} is {row.status}", expected="a draft")
            row.status = "submitted"
        return self.version(version)

    def review(self, version: int, *, reviewer: str, decision: str, comment: str | None = None,
               via: str | None = None) -> AnnotationVersionInfo:
        """Accept or reject a submitted version (with a comment; a rejection needs one).

        A version reviewed elsewhere (``reviewed_in``, the inference service's AI masks) is refused
        with :class:`ReviewedElsewhere` unless ``via`` is its owner; nothing is changed then.
        """
        if decision not in ("accept", "reject"):
            raise InputError("unknown decision", expected="accept or reject", found=repr(decision))
        if decision == "reject" and not (comment or "").strip():
            raise InputError("a rejection needs a comment", fix="say what is wrong, so the annotator can fix it")
        with self._ws.session() as s, s.begin():
            row = self._row(s, version)
            owner = _reviewed_in(row.summary)
            if owner is not None and via != owner["owner"]:
                ann = s.get(Annotation, row.annotation_pk)
                job = owner.get("job")
                raise ReviewedElsewhere(
                    f"version {row.number} of '{ann.name}' is an AI result of the inference service"
                    + (f" (job {job})" if job is not None else "") + ": it is reviewed there, not in the annotation queue",
                    expected="a version reviewed in the annotation review queue",
                    found=f"an AI result of {owner['owner']}" + (f", job {job}" if job is not None else ""),
                    fix=owner.get("how") or "review it with `sobre review`")
            if row.status != "submitted":
                raise CatalogError(f"version {row.number} is {row.status}", expected="a submitted version")
            if row.author == reviewer:
                raise CatalogError("a reviewer does not review their own version", found=reviewer)
            row.status = "accepted" if decision == "accept" else "rejected"
            s.add(Review(version_pk=row.id, reviewer=reviewer, decision=decision,
                         comment=(comment or "")[:MAX_TEXT] or None, created_at=_now()))
        return self.version(version)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _row(s, version: int) -> AnnotationVersion:
        row = s.get(AnnotationVersion, version)
        if row is None:
            raise CatalogError(f"no annotation version {version}")
        return row

    def version(self, version: int) -> AnnotationVersionInfo:
        with self._ws.session() as s:
            row = self._row(s, version)
            return self._info(s, row)

    def _info(self, s, row: AnnotationVersion) -> AnnotationVersionInfo:
        return self._infos(s, [row])[0]

    @staticmethod
    def _infos(s, rows: list[AnnotationVersion]) -> list[AnnotationVersionInfo]:
        """Infos of many versions with a fixed number of queries (not a few per version)."""
        if not rows:
            return []
        ann_ids = sorted({r.annotation_pk for r in rows})
        anns = {a.id: a for a in s.execute(select(Annotation).where(Annotation.id.in_(ann_ids))).scalars()}
        projects = {p.id: p.name for p in s.execute(select(Project).where(
            Project.id.in_(sorted({a.project_pk for a in anns.values()})))).scalars()}
        parent_ids = sorted({r.parent_pk for r in rows if r.parent_pk})
        numbers = dict(s.execute(select(AnnotationVersion.id, AnnotationVersion.number)
                                 .where(AnnotationVersion.id.in_(parent_ids))).all()) if parent_ids else {}
        reviews: dict[int, list] = {}
        for r in s.execute(select(Review).where(Review.version_pk.in_([x.id for x in rows])).order_by(Review.id)).scalars():
            reviews.setdefault(r.version_pk, []).append({"reviewer": r.reviewer, "decision": r.decision,
                                                          "comment": r.comment, "created_at": r.created_at.isoformat()})
        out = []
        for row in rows:
            ann = anns[row.annotation_pk]
            out.append(AnnotationVersionInfo(
                id=row.id, annotation_id=ann.id, project=projects[ann.project_pk], series_uid=ann.series_uid,
                series_label=ann.series_label, name=ann.name, kind=ann.kind, number=row.number,
                parent=numbers.get(row.parent_pk) if row.parent_pk else None, branch=row.branch, author=row.author,
                tool=row.tool, status=row.status, sha256=row.sha256, path=row.payload_path,
                summary=dict(row.summary or {}), comment=row.comment, created_at=row.created_at.isoformat(),
                reviews=tuple(reviews.get(row.id, ())), reviewed_in=_reviewed_in(row.summary)))
        return out

    def versions(self, *, project: str | None = None, series: str | None = None, name: str | None = None,
                 status: str | None = None) -> list[AnnotationVersionInfo]:
        """Versions matching the filters, oldest first."""
        uid, _, label = (series or "").partition("#")
        with self._ws.session() as s:
            q = select(AnnotationVersion).join(Annotation, Annotation.id == AnnotationVersion.annotation_pk)
            if project is not None:
                q = q.join(Project, Project.id == Annotation.project_pk).where(Project.name == project)
            if series:
                q = q.where(Annotation.series_uid == uid, Annotation.series_label == label)
            if name is not None:
                q = q.where(Annotation.name == name)
            if status is not None:
                q = q.where(AnnotationVersion.status == status)
            rows = s.execute(q.order_by(AnnotationVersion.id)).scalars().all()
            return self._infos(s, list(rows))

    def review_queue(self, project: str) -> list[AnnotationVersionInfo]:
        """Submitted versions waiting for a reviewer (not those reviewed elsewhere: the service's AI results)."""
        return [v for v in self.versions(project=project, status="submitted") if v.reviewed_in is None]

    def content(self, version: int | AnnotationVersionInfo):
        """The content of a version: an :class:`~sobre.image.Image` for masks, the data for the others.

        The file is re-hashed first: a changed file raises :class:`~sobre.errors.InputError`.
        """
        info = version if isinstance(version, AnnotationVersionInfo) else self.version(version)
        path = self._ws.root / info.path
        data = path.read_bytes()
        if sha256_bytes(data) != info.sha256:
            raise InputError("an annotation file changed since it was saved", path=path,
                             expected=f"sha256 {info.sha256}", found=f"sha256 {sha256_bytes(data)}",
                             fix="restore it; annotation versions are immutable")
        if info.kind == "mask":
            import sobre

            return sobre.load(path)
        payload = json.loads(data)
        return payload["labels"] if info.kind == "labels" else payload["items"]

    def accepted(self) -> dict[tuple[str, str], list[AnnotationVersionInfo]]:
        """The latest accepted version of every annotation, by volume ``(series_uid, label)``."""
        out: dict[tuple[str, str], dict[tuple, AnnotationVersionInfo]] = {}
        for v in self.versions(status="accepted"):
            key = (v.series_uid, v.series_label)
            slot = out.setdefault(key, {})
            prior = slot.get((v.project, v.name))
            if prior is None or v.number > prior.number:
                slot[(v.project, v.name)] = v
        return {k: sorted(d.values(), key=lambda v: (v.project, v.name)) for k, d in out.items()}

    def fields(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Filter fields per volume: ``ann_<name>`` and ``label_<name>``.

        ``ann_<name>`` is ``"accepted"`` when an accepted version exists (that is what freezing
        uses), else the status of the latest version (``draft``, ``submitted``, ``rejected``);
        ``label_<name>`` is the value in the latest accepted labels.
        """
        latest: dict[tuple, AnnotationVersionInfo] = {}
        accepted: set[tuple] = set()
        for v in self.versions():
            key = (v.series_uid, v.series_label, v.name)
            if key not in latest or v.id > latest[key].id:
                latest[key] = v
            if v.status == "accepted":
                accepted.add(key)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for key, v in latest.items():
            uid, label, name = key
            out.setdefault((uid, label), {})[f"ann_{_field(name)}"] = "accepted" if key in accepted else v.status
        for (uid, label), versions in self.accepted().items():
            for v in versions:
                if v.kind == "labels":
                    for key, value in (v.summary.get("labels") or {}).items():
                        out.setdefault((uid, label), {})[f"label_{key}"] = value
        return out


def _field(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _vector(v, where: str) -> list[float]:
    try:
        vec = [float(x) for x in v]
    except (TypeError, ValueError):
        raise InputError(f"{where} must be three numbers (LPS mm)", found=repr(v)[:80]) from None
    if len(vec) != 3 or not all(np.isfinite(vec)):
        raise InputError(f"{where} must be three finite numbers (LPS mm)", found=repr(v)[:80])
    return vec


def _check_label(ldef, value):
    k = ldef.kind
    if k == "binary":
        if value not in (0, 1, True, False):
            raise InputError(f"label '{ldef.name}' is binary", expected="0 or 1", found=repr(value))
        return int(value)
    if k == "multiclass":
        if str(value) not in ldef.classes:
            raise InputError(f"label '{ldef.name}' value not among its classes", expected=", ".join(ldef.classes),
                             found=repr(value))
        return str(value)
    if k == "multilabel":
        vals = [str(x) for x in (value if isinstance(value, (list, tuple)) else [value])]
        bad = [x for x in vals if x not in ldef.classes]
        if bad:
            raise InputError(f"label '{ldef.name}' values not among its classes", expected=", ".join(ldef.classes),
                             found=", ".join(bad))
        return sorted(set(vals))
    if k == "numeric":
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise InputError(f"label '{ldef.name}' is numeric", found=repr(value)) from None
        if not np.isfinite(x) or (ldef.minimum is not None and x < ldef.minimum) or \
                (ldef.maximum is not None and x > ldef.maximum):
            raise InputError(f"label '{ldef.name}' out of range", expected=f"{ldef.minimum}..{ldef.maximum}",
                             found=repr(value))
        return x
    text = str(value)
    if len(text) > MAX_TEXT:
        raise InputError(f"label '{ldef.name}' text too long", expected=f"at most {MAX_TEXT} characters",
                         found=f"{len(text)}")
    return text

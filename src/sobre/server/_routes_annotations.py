"""Annotation versions over ``ws.annotations``: list, read, save (optimistic concurrency), submit, review;
import from and export to DICOM SEG / SR, RTSTRUCT, NIfTI and CSV; push to the PACS.

Every change is a new immutable version, written to the audit log with its hash.
"""

from __future__ import annotations

import json
import secrets
import time
import zlib
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from sobre.catalog import AnnotationConflict
from sobre.errors import CatalogError

from ._context import Caller, CallerDep, authenticated, context
from ._errors import ApiError
from ._routes_browse import find_series, project_info
from ._routes_voxels import NO_STORE, SeriesKey
from ._view import series_key

router = APIRouter(prefix="/api", dependencies=[Depends(authenticated)], tags=["annotations"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
MEDIA = {"seg": ("application/dicom", ".dcm"), "sr": ("application/dicom", ".dcm"),
         "nifti": ("application/gzip", ".nii.gz"), "csv": ("text/csv; charset=utf-8", ".csv")}


class SaveBody(BaseModel):
    kind: Literal["labels", "points", "boxes"]
    content: Any
    parent: int | None = None
    new_branch: bool = False
    tool: str | None = Field(None, max_length=100)
    status: Literal["draft", "submitted"] = "draft"
    comment: str | None = Field(None, max_length=2000)


class ReviewBody(BaseModel):
    decision: Literal["accept", "reject"]
    comment: str | None = Field(None, max_length=2000)


class PushBody(BaseModel):
    format: Literal["seg", "sr"] = "seg"


def version_dict(info) -> dict:
    d = info.to_dict()
    d.pop("path", None)  # where the payload lies on the server: not the client's business
    d["series_key"] = f"{info.series_uid}#{info.series_label}" if info.series_label else info.series_uid
    return d


def version_in(ctx, project: str, version: int):
    try:
        info = ctx.ws.annotations.version(version)
    except CatalogError:
        info = None
    if info is None or info.project != project:
        raise ApiError(404, f"no annotation version {version} in project '{project}'", found=str(version))
    return info


def _conflict(ctx, project: str, key: str, name: str, exc: AnnotationConflict) -> ApiError:
    head = next((v for v in ctx.ws.annotations.versions(project=project, series=key, name=name)
                 if v.number == exc.head), None)
    return ApiError(409, exc.what, expected=exc.expected, found=exc.found, fix=exc.fix, error="AnnotationConflict",
                    extra={"head": version_dict(head) if head is not None else None})


def save_version(ctx, caller: Caller, project: str, rec: dict, name: str, kind: str, content, *, parent, new_branch,
                 tool, status, comment, action: str = "annotation.save", extra: dict | None = None):
    """Save under a per-annotation lock, retrying when the database was busy; audit the new version."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    key = series_key(rec)
    if parent is not None:  # checked first, so that a refused save leaves no file behind
        try:
            p = ctx.ws.annotations.version(int(parent))
        except CatalogError:
            p = None
        if p is None or p.project != project or (p.series_uid, p.series_label, p.name) != \
                (rec["series_uid"], rec["label"], name):
            raise ApiError(409, f"version {parent} is not a version of this annotation",
                           expected=f"a version of '{name}' of this series in '{project}'", found=str(parent),
                           fix="reload the annotation and start from one of its versions")
    with ctx.save_lock((project, key, name)):
        for attempt in range(8):
            try:
                info = ctx.ws.annotations.save(project, key, name, kind, content, author=caller.username,
                                               parent=parent, new_branch=new_branch, tool=tool, status=status,
                                               comment=comment)
                break
            except AnnotationConflict as exc:
                raise _conflict(ctx, project, key, name, exc) from None
            except (OperationalError, IntegrityError):
                # another process saved at the same moment: try again, now seeing its version (→ 409 or a new one)
                if attempt == 7:
                    raise ApiError(503, "the catalog is busy; the version was not saved", fix="retry") from None
                time.sleep(0.02 * (attempt + 1) + secrets.randbelow(20) / 1000)
    ctx.view.invalidate()
    ctx.audit(caller.username, action, project=project, series=rec["series_uid"], label=rec["label"] or None,
              name=name, kind=kind, version=info.id, number=info.number, parent=info.parent, branch=info.branch,
              status=info.status, sha256=info.sha256, tool=tool, client=caller.client, **(extra or {}))
    return info


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused (413) as soon as it grows past ``limit`` bytes (gzip: once inflated too)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit and \
            request.headers.get("content-encoding", "").lower() != "gzip":
        raise ApiError(413, f"{what} too large", expected=f"at most {limit} bytes", found=f"{declared} bytes")
    parts, size = [], 0
    raw_limit = limit if request.headers.get("content-encoding", "").lower() != "gzip" else \
        context(request).settings.max_upload_bytes
    async for chunk in request.stream():
        size += len(chunk)
        if size > raw_limit:
            raise ApiError(413, f"{what} too large", expected=f"at most {raw_limit} bytes", found=f"more than {size}")
        parts.append(chunk)
    data = b"".join(parts)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(data, limit + 1)
            if len(out) > limit or d.unconsumed_tail:
                raise ApiError(413, f"{what} too large once inflated", expected=f"at most {limit} bytes",
                               found=f"more than {limit} bytes")
        except zlib.error as exc:
            raise ApiError(400, "the gzip body cannot be inflated", expected="a gzip stream", found=str(exc)) from None
        data = out
    return data


def _mask_from_bytes(data: bytes, shape: list[int]) -> np.ndarray:
    n = int(np.prod(shape))
    if len(data) != n:
        raise ApiError(400, "mask size does not match the series", expected=f"{n} bytes (uint8, dimensions "
                       f"{'x'.join(str(s) for s in shape)}, i fastest)", found=f"{len(data)} bytes",
                       fix="send one byte per voxel of this series' grid")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape, order="F")


@router.get("/projects/{project}/annotations", summary="annotation versions of the project (filters optional)")
def list_versions(*, project: str, request: Request, caller: CallerDep,
                  series: str | None = Query(None, max_length=300), name: str | None = Query(None, max_length=100),
                  status: Literal["draft", "submitted", "accepted", "rejected"] | None = None,
                  author: str | None = Query(None, max_length=64)) -> list[dict]:
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.view")
    if series is not None:
        series = series_key(find_series(ctx, project, series))
    out = ctx.ws.annotations.versions(project=project, series=series, name=name, status=status)
    return [version_dict(v) for v in out if author is None or v.author == author]


@router.get("/projects/{project}/review-queue", summary="submitted versions waiting for review")
def review_queue(*, project: str, request: Request, caller: CallerDep) -> list[dict]:
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.review")
    return [version_dict(v) for v in ctx.ws.annotations.review_queue(project)]


@router.get("/projects/{project}/series/{series}/annotations", summary="versions of one series, and branch heads")
def series_versions(*, project: str, request: Request, series: str = SeriesKey,
                    caller: CallerDep) -> dict:
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.view")
    rec = find_series(ctx, project, series)
    versions = ctx.ws.annotations.versions(project=project, series=series_key(rec))
    heads: dict = {}
    for v in versions:
        k = (v.name, v.branch)
        if k not in heads or v.number > heads[k]["number"]:
            heads[k] = {"name": v.name, "branch": v.branch, "id": v.id, "number": v.number, "author": v.author,
                        "status": v.status}
    return {"series_key": series_key(rec), "versions": [version_dict(v) for v in versions], "heads": list(heads.values())}


@router.get("/projects/{project}/annotations/{version}", summary="one version (its reviews included)")
def get_version(*, project: str, version: int, request: Request, caller: CallerDep) -> dict:
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.view")
    return version_dict(version_in(ctx, project, version))


@router.get("/projects/{project}/annotations/{version}/content",
            summary="a version's content: JSON (labels, points, boxes) or the mask's bytes (uint8, i fastest)",
            responses={200: {"content": {"application/json": {}, "application/octet-stream": {}}}})
def content(*, project: str, version: int, request: Request, caller: CallerDep):
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.view")
    info = version_in(ctx, project, version)
    ctx.audit(caller.username, "view.annotation", project=project, series=info.series_uid,
              label=info.series_label or None, version=info.id, sha256=info.sha256, client=caller.client)
    data = ctx.ws.annotations.content(info)  # re-hashed: a changed file is an error (400)
    if info.kind != "mask":
        return Response(json.dumps({"kind": info.kind, "content": data}), media_type="application/json",
                        headers=dict(NO_STORE))
    arr = np.asarray(data.array, dtype=np.uint8)
    headers = {**NO_STORE, "X-Sobre-Dtype": "uint8", "X-Sobre-Dimensions": ",".join(str(s) for s in arr.shape),
               "X-Sobre-Sha256": info.sha256}
    return Response(arr.tobytes(order="F"), media_type="application/octet-stream", headers=headers)


@router.post("/projects/{project}/series/{series}/annotations/{name}", status_code=201,
             summary="save a new version: JSON (labels, points, boxes) or a mask's raw bytes (query parameters)",
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": SaveBody.model_json_schema()},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def save(*, project: str, name: str, request: Request, series: str = SeriesKey,
               caller: CallerDep,
               parent: int | None = Query(None, ge=1), new_branch: bool = False,
               tool: str | None = Query(None, max_length=100), status: Literal["draft", "submitted"] = "draft",
               comment: str | None = Query(None, max_length=2000)) -> dict:
    ctx = context(request)
    _check_name(name)
    await run_in_threadpool(project_info, ctx, caller, project, "annotation.save")
    rec = await run_in_threadpool(find_series, ctx, project, series)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/octet-stream":
        shape = list(rec.get("shape") or [])
        body = await read_body(request, int(np.prod(shape)) if shape else 0, "mask")
        mask = _mask_from_bytes(body, shape)
        info = await run_in_threadpool(save_version, ctx, caller, project, rec, name, "mask", mask, parent=parent,
                                       new_branch=new_branch, tool=tool, status=status, comment=comment)
        return version_dict(info)
    if ctype != "application/json":
        raise ApiError(415, "unsupported body", expected="application/json (labels, points, boxes) or "
                       "application/octet-stream (a mask)", found=ctype or "none")
    raw = await read_body(request, ctx.settings.max_json_bytes, "JSON body")
    try:
        body = SaveBody.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(400, f"invalid body: {'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}",
                       expected="{kind, content, parent?, new_branch?, tool?, status?, comment?}",
                       found=repr(first.get("input"))[:200]) from None
    info = await run_in_threadpool(save_version, ctx, caller, project, rec, name, body.kind, body.content,
                                   parent=body.parent, new_branch=body.new_branch, tool=body.tool, status=body.status,
                                   comment=body.comment)
    return version_dict(info)


def _check_name(name: str) -> None:
    import re

    if not re.match(NAME, name or ""):
        raise ApiError(400, "invalid annotation name", expected="1 to 100 letters, digits, space, '.', '_' or '-'",
                       found=repr(name)[:120])


@router.post("/projects/{project}/annotations/{version}/submit", summary="submit one's own draft for review")
def submit(*, project: str, version: int, request: Request, caller: CallerDep) -> dict:
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.submit")
    info = version_in(ctx, project, version)
    if info.author != caller.username:
        raise ApiError(403, "only the author submits a version", expected=info.author, found=caller.username)
    out = ctx.ws.annotations.submit(version, author=caller.username)
    ctx.view.invalidate()
    ctx.audit(caller.username, "annotation.submit", project=project, series=info.series_uid,
              label=info.series_label or None, version=info.id, sha256=info.sha256, client=caller.client)
    return version_dict(out)


@router.post("/projects/{project}/annotations/{version}/review", summary="accept or reject a submitted version")
def review(*, project: str, version: int, body: ReviewBody, request: Request,
           caller: CallerDep) -> dict:
    ctx = context(request)
    project_info(ctx, caller, project, "annotation.review")
    info = version_in(ctx, project, version)
    if info.author == caller.username:
        raise ApiError(403, "a reviewer does not review their own version", found=caller.username)
    out = ctx.ws.annotations.review(version, reviewer=caller.username, decision=body.decision, comment=body.comment)
    ctx.view.invalidate()
    ctx.audit(caller.username, "annotation.review", project=project, series=info.series_uid,
              label=info.series_label or None, version=info.id, sha256=info.sha256, decision=body.decision,
              client=caller.client)
    return version_dict(out)


# ------------------------------------------------------------------------------------ import / export
@router.get("/projects/{project}/annotations/{version}/export",
            summary="a version as a file: DICOM SEG (masks), TID 1500 SR, NIfTI (masks) or CSV (labels)",
            response_class=Response)
def export(*, project: str, version: int, request: Request, format: Literal["seg", "sr", "nifti", "csv"] = "seg",
           caller: CallerDep) -> Response:
    import tempfile
    from pathlib import Path

    from sobre.annotate import export_version

    ctx = context(request)
    project_info(ctx, caller, project, "annotation.export")
    info = version_in(ctx, project, version)
    media, ext = MEDIA[format]
    with tempfile.TemporaryDirectory(prefix="sobre-export-") as tmp:
        out = export_version(ctx.ws, info, format, Path(tmp) / f"export{ext}")
        data = Path(out["path"]).read_bytes()
    ctx.audit(caller.username, "annotation.export", project=project, series=info.series_uid,
              label=info.series_label or None, version=info.id, sha256=info.sha256, format=format,
              output_sha256=out["sha256"], sop_instance_uid=out.get("sop_instance_uid"), client=caller.client)
    fname = f"{info.name}-v{info.number}{ext}".replace(" ", "_")
    return Response(data, media_type=media, headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{fname}"',
                                                     "X-Sobre-Sha256": out["sha256"]})


@router.post("/projects/{project}/series/{series}/annotations/{name}/import", status_code=201,
             summary="a new version from a file: DICOM SEG, RTSTRUCT or NIfTI mask (checked against the series grid)",
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def import_(*, project: str, name: str, request: Request, series: str = SeriesKey,
                  format: Literal["seg", "rtstruct", "nifti"] = "seg", parent: int | None = Query(None, ge=1),
                  new_branch: bool = False, rois: str | None = Query(None, max_length=2000),
                  caller: CallerDep) -> dict:
    ctx = context(request)
    _check_name(name)
    await run_in_threadpool(project_info, ctx, caller, project, "annotation.save")
    rec = await run_in_threadpool(find_series, ctx, project, series)
    data = await read_body(request, ctx.settings.max_upload_bytes, "imported file")
    if not data:
        raise ApiError(400, "empty file", expected=f"a {format} file as the request body", found="0 bytes")
    return await run_in_threadpool(_import, ctx, caller, project, rec, name, format, data, parent, new_branch, rois)


def _import(ctx, caller, project, rec, name, fmt, data, parent, new_branch, rois):
    import hashlib
    import tempfile
    from pathlib import Path

    from sobre.annotate import read_import

    ext = ".nii.gz" if fmt == "nifti" and data[:2] == b"\x1f\x8b" else (".nii" if fmt == "nifti" else ".dcm")
    with tempfile.TemporaryDirectory(prefix="sobre-import-") as tmp:
        path = Path(tmp) / f"upload{ext}"
        path.write_bytes(data)
        mask = read_import(ctx.ws, project, series_key(rec), path, fmt,
                           rois=[r.strip() for r in rois.split(",") if r.strip()] if rois else None)
    info = save_version(ctx, caller, project, rec, name, "mask", mask, parent=parent, new_branch=new_branch,
                        tool=f"import:{fmt}", status="draft", comment=None, action="annotation.import",
                        extra={"file_sha256": hashlib.sha256(data).hexdigest(), "format": fmt})
    return version_dict(info)


@router.post("/projects/{project}/annotations/{version}/push", summary="send a version (SEG or SR) to the PACS")
def push(*, project: str, version: int, body: PushBody, request: Request, caller: CallerDep) -> dict:
    from sobre.annotate import push_version

    ctx = context(request)
    project_info(ctx, caller, project, "annotation.push")
    info = version_in(ctx, project, version)
    if not ctx.settings.pacs_url:
        raise ApiError(409, "no PACS is configured for this server", expected="sobre serve --pacs DICOMWEB_URL",
                       found="none", fix="restart the server with --pacs")
    out = push_version(ctx.ws, info, ctx.settings.pacs_url, body.format)
    ctx.audit(caller.username, "annotation.push", project=project, series=info.series_uid,
              label=info.series_label or None, version=info.id, sha256=info.sha256, format=body.format,
              output_sha256=out["sha256"], sop_instance_uid=out["sop_instance_uid"], pacs=ctx.settings.pacs_url,
              client=caller.client)
    return out

"""Browse: projects → cohorts and frozen dataset versions → subjects (clinical variables) → studies → series."""

from __future__ import annotations

import time
from collections import defaultdict

from fastapi import APIRouter, Depends, Query, Request

from sobre.catalog import BASE_FIELDS, actions_of, compile_filter

from ._context import Caller, CallerDep, authenticated, context
from ._errors import ApiError
from ._view import series_key

router = APIRouter(prefix="/api", dependencies=[Depends(authenticated)], tags=["browse"])

MAX_LIMIT = 1000


def project_info(ctx, caller: Caller, project: str, action: str = "project.view"):
    """The project (after checking the caller's role allows ``action`` there)."""
    role = caller.require(action, project)
    snap = ctx.view.snapshot()
    info = snap.projects.get(project)
    if info is None:
        info = ctx.ws.accounts.project(project)  # a project created since the snapshot, else 404
        ctx.view.invalidate()
    return info, role


def project_dict(ctx, info, role) -> dict:
    snap = ctx.view.snapshot()
    return dict(info.to_dict(), role=role, actions=sorted(actions_of(role)),
                datasets=[_dataset_dict(r) for c in info.cohorts for r in snap.cohorts.get(c, {}).get("refs", [])])


def _dataset_dict(ref) -> dict:
    d = ref.to_dict()
    d.pop("manifest", None)  # a server path: not the client's business
    return d


def find_series(ctx, project: str, key: str) -> dict:
    """The catalog record of series ``key`` (``uid`` or ``uid#label``) if it belongs to ``project``, else 404."""
    snap = ctx.view.snapshot()
    rec = snap.by_key.get(key)
    if (rec is None or key not in snap.scope(project)) and time.monotonic() - snap.time > 1.0:
        snap = ctx.view.snapshot(fresh=True)  # the snapshot may predate an ingest: look once more
        rec = snap.by_key.get(key)
    if rec is None or key not in snap.scope(project):
        raise ApiError(404, f"no series '{key[:200]}' in project '{project}'",
                       expected="a series key (uid or uid#label) listed by GET /api/projects/{project}/series",
                       found=key[:200])
    return rec


def summary(rec: dict, variables) -> dict:
    out = {k: v for k, v in rec.items() if k not in variables}
    out["key"] = series_key(rec)
    return out


@router.get("/projects", summary="the projects the caller has a role in (all for admins)")
def projects(*, request: Request, caller: CallerDep) -> list[dict]:
    ctx = context(request)
    snap = ctx.view.snapshot()
    out = []
    for name, info in sorted(snap.projects.items()):
        role = caller.account.role_in(name)
        if role is not None:
            out.append(project_dict(ctx, info, role))
    return out


@router.get("/projects/{project}", summary="one project: cohorts, label schema, dataset versions, the caller's role")
def project(*, project: str, request: Request, caller: CallerDep) -> dict:
    ctx = context(request)
    info, role = project_info(ctx, caller, project)
    return project_dict(ctx, info, role)


@router.get("/projects/{project}/fields", summary="names a filter (where=) may use, with what they mean")
def fields(*, project: str, request: Request, caller: CallerDep) -> list[dict]:
    ctx = context(request)
    project_info(ctx, caller, project)
    snap = ctx.view.snapshot()
    out = []
    for name in snap.fields:
        if name in BASE_FIELDS:
            out.append({"name": name, "kind": "base", "description": BASE_FIELDS[name]})
        elif name in snap.variables:
            v = snap.variables[name]
            out.append({"name": name, "kind": v["kind"], "unit": v.get("unit"), "description": "clinical variable"})
        elif name.startswith(("ann_", "label_")):
            out.append({"name": name, "kind": "annotation",
                        "description": "annotation status" if name.startswith("ann_") else "accepted label value"})
    return out


@router.get("/projects/{project}/cohorts", summary="the project's cohorts, with their frozen versions")
def cohorts(*, project: str, request: Request, caller: CallerDep) -> list[dict]:
    ctx = context(request)
    info, _ = project_info(ctx, caller, project)
    snap = ctx.view.snapshot()
    out = []
    for name in info.cohorts:
        c = snap.cohorts.get(name)
        if c is None:
            continue
        members = [snap.by_key[k] for k in c["members"] if k in snap.by_key]
        out.append({"name": name, "where": c["where"], "created_at": c["created_at"], "n_series": len(members),
                    "n_subjects": len({m["subject_id"] for m in members}), "left_out": c.get("left_out", {}),
                    "versions": [_dataset_dict(r) for r in c["refs"]]})
    return out


@router.get("/projects/{project}/datasets", summary="frozen dataset versions of the project's cohorts")
def datasets(*, project: str, request: Request, caller: CallerDep) -> list[dict]:
    ctx = context(request)
    info, _ = project_info(ctx, caller, project)
    snap = ctx.view.snapshot()
    out = []
    for c in info.cohorts:
        for ref in snap.cohorts.get(c, {}).get("refs", []):
            ds = ctx.view.dataset(ref.ref, ref.content_hash)
            out.append(dict(_dataset_dict(ref), simulated=ds.simulated, where=ds.manifest.where,
                            variables=ds.variables))
    return out


def select(ctx, caller, project: str, cohort: str | None, dataset: str | None, where: str | None) -> tuple[list, dict]:
    """The project's series records (live, or frozen for ``dataset``), restricted and filtered."""
    info, _ = project_info(ctx, caller, project)
    snap = ctx.view.snapshot()
    if dataset:
        refs = {r.ref: r for c in info.cohorts for r in snap.cohorts.get(c, {}).get("refs", [])}
        name = dataset if "@" in dataset else None
        ref = refs.get(dataset) or (None if name else next((r for r in reversed(list(refs.values()))
                                                            if r.name == dataset), None))
        if ref is None:
            raise ApiError(404, f"no dataset version '{dataset[:100]}' in project '{project}'",
                           expected="one of: " + (", ".join(refs) or "(none frozen yet)"), found=dataset[:100])
        ds = ctx.view.dataset(ref.ref, ref.content_hash)
        recs = []
        for r in ds.records():
            r = dict(r, label=r.pop("series_label", ""))
            r["in_catalog"] = series_key(r) in snap.by_key
            r["dataset"] = ref.ref
            recs.append(r)
        field_names = set(BASE_FIELDS) | {k for r in recs for k in r}
        left: dict = {}
    else:
        if cohort:
            if cohort not in info.cohorts or cohort not in snap.cohorts:
                raise ApiError(404, f"no cohort '{cohort[:100]}' in project '{project}'",
                               expected="one of: " + ", ".join(info.cohorts), found=cohort[:100])
            keys = snap.cohorts[cohort]["members"]
            left = dict(snap.cohorts[cohort].get("left_out") or {})
        else:
            keys = snap.scope(project)
            left = {}
        recs = [snap.by_key[k] for k in keys if k in snap.by_key]
        field_names = snap.fields
    if where:
        if len(where) > 4000:
            raise ApiError(400, "filter expression too long", expected="at most 4000 characters",
                           found=f"{len(where)} characters")
        pred = compile_filter(where, field_names)  # ExpressionError -> 400 naming the problem
        recs = [r for r in recs if pred(r)]
    recs.sort(key=lambda r: (str(r.get("subject_id") or ""), str(r.get("study_date") or ""), series_key(r)))
    return recs, left


@router.get("/projects/{project}/series", summary="series of the project (or of a cohort / dataset version), filtered")
def series_list(*, project: str, request: Request, caller: CallerDep,
                cohort: str | None = Query(None, max_length=100), dataset: str | None = Query(None, max_length=200),
                where: str | None = Query(None, max_length=4000), offset: int = Query(0, ge=0),
                limit: int = Query(100, ge=1, le=MAX_LIMIT)) -> dict:
    ctx = context(request)
    recs, left = select(ctx, caller, project, cohort, dataset, where)
    variables = ctx.view.snapshot().variables if not dataset else {}
    return {"total": len(recs), "offset": offset, "limit": limit, "left_out": left,
            "items": [summary(r, variables) for r in recs[offset:offset + limit]]}


def _subjects(recs: list[dict], variables) -> dict[str, dict]:
    subj: dict[str, dict] = {}
    studies: dict[str, set] = defaultdict(set)
    for r in recs:
        sid = str(r.get("subject_id") or "")
        s = subj.setdefault(sid, {"subject_id": sid, "sex": r.get("sex"), "site": r.get("site"), "simulated": False,
                                  "n_series": 0, "modalities": [],
                                  "variables": {v: r.get(v) for v in variables if v in r}})
        s["n_series"] += 1
        s["simulated"] = s["simulated"] or bool(r.get("simulated"))
        if r.get("modality") and r["modality"] not in s["modalities"]:
            s["modalities"].append(r["modality"])
        studies[sid].add(r.get("study_uid"))
    for sid, s in subj.items():
        s["n_studies"] = len(studies[sid])
    return subj


@router.get("/projects/{project}/subjects", summary="subjects of the project with their clinical variables")
def subjects(*, project: str, request: Request, caller: CallerDep,
             cohort: str | None = Query(None, max_length=100), dataset: str | None = Query(None, max_length=200),
             where: str | None = Query(None, max_length=4000), offset: int = Query(0, ge=0),
             limit: int = Query(100, ge=1, le=MAX_LIMIT)) -> dict:
    ctx = context(request)
    recs, left = select(ctx, caller, project, cohort, dataset, where)
    variables = ctx.view.snapshot().variables
    items = list(_subjects(recs, variables).values())
    return {"total": len(items), "offset": offset, "limit": limit, "left_out": left,
            "variables": variables, "items": items[offset:offset + limit]}


@router.get("/projects/{project}/subjects/{subject_id}", summary="one subject: clinical variables, studies, series")
def subject(*, project: str, subject_id: str, request: Request, caller: CallerDep,
            dataset: str | None = Query(None, max_length=200)) -> dict:
    ctx = context(request)
    recs, _ = select(ctx, caller, project, None, dataset, None)
    recs = [r for r in recs if str(r.get("subject_id") or "") == subject_id]
    if not recs:
        raise ApiError(404, f"no subject '{subject_id[:100]}' in project '{project}'", found=subject_id[:100])
    variables = ctx.view.snapshot().variables
    subj = _subjects(recs, variables)[subject_id]
    by_study: dict = {}
    for r in recs:
        st = by_study.setdefault(r.get("study_uid"), {"study_uid": r.get("study_uid"), "study_date": r.get("study_date"),
                                                      "age": r.get("age"), "series": []})
        st["series"].append(summary(r, variables))
    subj["studies"] = sorted(by_study.values(), key=lambda s: str(s["study_date"] or ""))
    return subj

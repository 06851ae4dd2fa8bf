"""Review of the inference service's results in the workstation: list, show, accept, reject.

A thin layer over :class:`sobre.service.Review` (the API ``sobre review`` uses): the decisions, their
checks (a reason to reject, a decision is final, who may review) and the service's own ``review``
audit entry are the Review's. The routes add what every route of the server adds: a session, the
caller's role in the result's annotation project (``annotation.review``: reviewers, data managers,
admins), CSRF on POST, and an audit entry for each view and decision with the client's address.

Correcting a result with a mask stays in the CLI (``sobre review correct``).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from sobre.errors import SobreError

from ._context import Caller, CallerDep, authenticated, context
from ._errors import ApiError, status_of
from ._routes_browse import project_info

router = APIRouter(prefix="/api", dependencies=[Depends(authenticated)], tags=["service review"])

ACTION = "annotation.review"
JobId = Path(..., ge=1, le=2**62, description="the result's job number (`sobre review list`)")


class AcceptBody(BaseModel):
    comment: str | None = Field(None, max_length=2000)


class RejectBody(BaseModel):
    reason: str = Field(..., max_length=2000)


def _review(ctx):
    """A :class:`sobre.service.Review` over the workspace's queue and service settings (None: no queue yet)."""
    from sobre.service import CONFIG_NAME, Review, load_service_config

    if not (ctx.ws.layout.service / "queue.sqlite").exists():
        return None
    cfg, _ = load_service_config(None, default=ctx.ws.layout.service / CONFIG_NAME)
    return Review(ctx.ws, cfg)


def _no_queue() -> ApiError:
    return ApiError(404, "this workspace has no inference service queue yet", expected="a workspace where "
                    "`sobre service` has processed a study", found="no service/queue.sqlite",
                    fix="start the service (`sobre service -w WS`) and send it a study")


def _mapped(exc: SobreError, project: str, job: int) -> ApiError:
    """The Review's refusal as an HTTP error: unknown result 404, already decided 409, bad input 400."""
    what = exc.what or ""
    if what.startswith("no result "):
        return ApiError(404, what, expected=f"a result number listed by GET /api/projects/{project}/service-results",
                        found=str(job), fix=exc.fix, error=type(exc).__name__)
    if " was already " in what or "meanwhile" in what or "is not a proposal" in what:
        return ApiError.of(exc, 409)
    if "may not review" in what:
        return ApiError.of(exc, 403)
    return ApiError.of(exc, status_of(exc))


def _result(ctx, caller: Caller, project: str, job: int) -> dict:
    """Result ``job`` of ``project``, after checking that the caller may review in the project (else 403)."""
    project_info(ctx, caller, project, ACTION)
    r = _review(ctx)
    if r is None:
        raise _no_queue()
    with r:
        try:
            info = r.show(job)
        except SobreError as exc:
            raise _mapped(exc, project, job) from None
    if info["project"] != project:
        raise ApiError(404, f"no result {job} in project '{project}'", expected="a result number listed by "
                       f"GET /api/projects/{project}/service-results", found=str(job))
    return info


def _public(info: dict) -> dict:
    """What the browser gets: the Review's record without server paths."""
    out = dict(info)
    out.pop("folder", None)
    for o in out.get("outputs") or []:
        o.pop("path", None)
    inp = out.get("input")
    if isinstance(inp, dict):
        inp = dict(inp)
        inp["instances"] = [{k: v for k, v in i.items() if k != "path"} if isinstance(i, dict) else i
                            for i in inp.get("instances", [])]
        out["input"] = inp
    return out


@router.get("/projects/{project}/service-results",
            summary="the inference service's results whose annotation project is this one (default: pending review)")
def list_results(*, project: str, request: Request, caller: CallerDep,
                 state: Literal["pending", "accepted", "corrected", "rejected", "all"] = "pending") -> list[dict]:
    ctx = context(request)
    project_info(ctx, caller, project, ACTION)
    r = _review(ctx)
    if r is None:
        return []
    with r:
        out = [row for row in r.list(None if state == "all" else state) if row["project"] == project]
    if out:
        ctx.audit(caller.username, "view.service_results", project=project, state=state,
                  jobs=[x["job"] for x in out], series=sorted({x["series"] for x in out}), client=caller.client)
    return out


@router.get("/projects/{project}/service-results/{job}",
            summary="one result: inputs, model, outputs, findings, deliveries, review")
def show_result(*, project: str, request: Request, caller: CallerDep, job: int = JobId) -> dict:
    ctx = context(request)
    info = _result(ctx, caller, project, job)
    ctx.audit(caller.username, "view.service_result", job=job, project=info["project"], study=info["study"],
              series=info["series"], client=caller.client)
    return _public(info)


def _decide(ctx, caller: Caller, project: str, job: int, decision: str, text: str | None) -> dict:
    info = _result(ctx, caller, project, job)
    r = _review(ctx)
    with r:
        try:
            if decision == "accept":
                out = r.accept(job, reviewer=caller.username, comment=text)
            else:
                out = r.reject(job, reviewer=caller.username, reason=text or "")
        except SobreError as exc:
            raise _mapped(exc, project, job) from None
    ctx.view.invalidate()  # the AI annotation version was accepted or rejected
    ctx.audit(caller.username, "service.review", job=job, decision=out["review"], comment=text,
              project=info["project"], study=info["study"], series=info["series"], seg=info["seg"],
              annotation_version=info["annotation_version"], client=caller.client)
    return _public(out)


@router.post("/projects/{project}/service-results/{job}/accept",
             summary="accept a result as it is (a held one is queued for delivery)")
def accept(*, project: str, body: AcceptBody, request: Request, caller: CallerDep, job: int = JobId) -> dict:
    return _decide(context(request), caller, project, job, "accept", body.comment)


@router.post("/projects/{project}/service-results/{job}/reject",
             summary="reject a result, saying why (nothing more of it is sent)")
def reject(*, project: str, body: RejectBody, request: Request, caller: CallerDep, job: int = JobId) -> dict:
    return _decide(context(request), caller, project, job, "reject", body.reason)

"""The human in the loop: every result is *proposed*, then *accepted*, *corrected* or *rejected*.

:class:`Review` works on the service's queue and the workspace, with or without the service
running (the running service's sender picks up what a review makes due). Each decision is one
queue transaction with its ``review`` audit entry, which names the reviewer, the decision, the
model and every output UID of the proposal (so ``sobre audit trace SEG_UID`` finds it).

- **accept**: the AI annotation version is accepted in the annotation project; with
  ``[review] hold = true`` the proposal is queued for delivery now (nothing was sent before).
- **correct**: the reviewer's mask (on the series grid) becomes a new annotation version whose
  parent is the AI version (which is marked rejected, "corrected in version N"); a SEG (manual,
  content creator = the reviewer), a TID 1500 SR (observer = the reviewer) and overlays are made
  from it, with UIDs derived from the job and the correction, and queued for delivery unless
  ``send_corrections = false``.
- **reject**: with a reason; nothing (more) is sent. A proposal already sent (no hold) stays in the
  PACS: Sobre does not send rejection notes (IOCM) yet, the decision is in the audit log.

Who may review: when the workspace has accounts, the reviewer must be an enabled account with the
``reviewer`` or ``data_manager`` role in the app's annotation project (admins too); a workspace
without accounts (single user) takes the name given.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

from sobre.base import sha256_file
from sobre.errors import InputError, SobreError

from ._config import ServiceConfig
from ._pipeline import ACTOR, DICOM_KINDS, ServiceError, add_deliveries
from ._queue import Queue, flush_audit

__all__ = ["Review", "DECISIONS"]

DECISIONS = ("accept", "correct", "reject")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Review:
    """Review the service's proposals (``sobre review ...``; the workstation calls the same methods).

    Parameters
    ----------
    ws : sobre.catalog.Workspace
    config : ServiceConfig, optional
        Only ``review.project`` (default project) is read; the hold and destinations of a job were
        fixed when it was proposed.
    """

    def __init__(self, ws, config: ServiceConfig | None = None) -> None:
        self.ws = ws
        self.config = config or ServiceConfig()
        self.root = ws.layout.service
        path = self.root / "queue.sqlite"
        if not path.exists():
            raise ServiceError("this workspace has no inference service queue yet", path=path,
                               fix="start the service (`sobre service -w WS`) and send it a study")
        self.queue = Queue(path)

    def close(self) -> None:
        self.queue.close()

    def __enter__(self) -> "Review":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ reading
    def list(self, state: str | None = "pending") -> list[dict]:
        """Proposals (``state``: pending, accepted, corrected, rejected, or None for all), oldest first."""
        sql = "SELECT * FROM jobs WHERE review IS NOT NULL"
        args: list = []
        if state is not None:
            if state not in ("pending", "accepted", "corrected", "rejected"):
                raise InputError("unknown review state", expected="pending, accepted, corrected, rejected or all",
                                 found=repr(state))
            sql += " AND review = ?"
            args.append(state)
        rows = self.queue.read().execute(sql + " ORDER BY id", args).fetchall()
        return [self._summary(dict(r)) for r in rows]

    def _summary(self, job: dict) -> dict:
        result = Queue.loads(job["result"], {})
        seg = next((o for o in result.get("outputs", []) if o["kind"] == "SEG"), None)
        return {"job": job["id"], "review": job["review"], "app": job["app"], "project": self._project(job),
                "study": job["study_uid"],
                "series": job["series_uid"], "proposed_at": _iso(job["finished_at"]),
                "findings": [f"{f['name']['meaning']} = {f['value']['meaning']}" for f in result.get("findings", [])],
                "seg": seg["sop_instance_uid"] if seg else None, "held": result.get("held"),
                "reviewer": job["reviewer"], "reviewed_at": _iso(job["reviewed_at"])}

    def _job(self, job_id: int) -> dict:
        row = self.queue.read().execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise ServiceError(f"no result {job_id} in the service queue", fix="list them with `sobre review list`")
        return dict(row)

    def show(self, job_id: int) -> dict:
        """Everything about one result: inputs, model, outputs, findings, deliveries, review."""
        job = self._job(job_id)
        result = Queue.loads(job["result"], {})
        deliveries = [dict(r) for r in self.queue.read().execute(
            "SELECT destination, what, kind, sop_uid, state, attempts, status, last_error, sent_at FROM deliveries "
            "WHERE job_id = ? ORDER BY id", (job["id"],)).fetchall()]
        for d in deliveries:
            d["sent_at"] = _iso(d["sent_at"])
        return {**self._summary(job), "state": job["state"], "error": job["error"], "attempts": job["attempts"],
                "volume": job["volume"], "key": job["key"], "model": result.get("models"),
                "input": result.get("input"), "outputs": result.get("outputs"),
                "folder": str(self.root / result["folder"]) if result.get("folder") else None,
                "measurements": result.get("measurements"), "annotation_version": job["annotation_version"],
                "comment": job["review_comment"], "correction": Queue.loads(job["correction"]),
                "deliveries": deliveries}

    # ------------------------------------------------------------------------------ deciding
    def accept(self, job_id: int, *, reviewer: str, comment: str | None = None) -> dict:
        """Accept a proposal as it is (held results are queued for delivery now)."""
        job, result = self._pending(job_id)
        project = self._check_reviewer(reviewer, job)
        self._review_annotation(job, reviewer, "accept", comment)

        def apply(c) -> dict:
            if not result.get("held"):
                return {}
            return {"sent_now": add_deliveries(c, job["id"], result["plan"], result["outputs"],
                                               self.root / result["folder"], "proposal")}

        return self._decide(job, result, reviewer, "accepted", comment, project, apply)

    def reject(self, job_id: int, *, reviewer: str, reason: str) -> dict:
        """Reject a proposal, saying why (nothing of it is sent after this)."""
        if not (reason or "").strip():
            raise InputError("a rejection needs a reason", fix="say what is wrong (--reason TEXT): it is kept in the "
                                                               "audit log and helps whoever improves the model")
        job, result = self._pending(job_id)
        project = self._check_reviewer(reviewer, job)
        self._review_annotation(job, reviewer, "reject", reason)

        def apply(c) -> dict:
            sent = c.execute("SELECT COUNT(*) FROM deliveries WHERE job_id = ? AND state = 'sent'",
                             (job["id"],)).fetchone()[0]
            return {"already_sent": sent, "cancelled": _cancel_pending(c, job["id"])}

        return self._decide(job, result, reviewer, "rejected", reason, project, apply)

    def _decide(self, job: dict, result: dict, reviewer: str, state: str, comment, project: str, apply,
                correction: dict | None = None) -> dict:
        """One transaction: the review state, what ``apply(conn)`` does (deliveries), the ``review`` entry."""
        with self.queue.tx() as c:
            self._still_pending(c, job)
            c.execute("UPDATE jobs SET review=?, reviewer=?, reviewed_at=?, review_comment=?, correction=? WHERE id=?",
                      (state, reviewer, time.time(), comment, Queue.dumps(correction) if correction else None,
                       job["id"]))
            more = apply(c)
            Queue.event(c, reviewer, "review", **self._record(job, result, state, comment, project, **more))
        flush_audit(self.queue, self.ws.audit)
        return self.show(job["id"])

    def correct(self, job_id: int, mask, *, reviewer: str, comment: str | None = None) -> dict:
        """Correct a proposal with ``mask`` (a file on the series grid, an Image, or an integer array).

        The corrected mask becomes a new annotation version (parent: the AI version); SEG, SR and
        SC are made from it and queued for delivery (``send_corrections``).
        """
        import sobre
        from sobre.image import Image

        job, result = self._pending(job_id)
        project = self._check_reviewer(reviewer, job)
        paths = [i["path"] for i in json.loads(job["inputs"])]
        image = sobre.load(paths)
        if isinstance(mask, (str, Path)):
            mask = sobre.load(mask)
        if isinstance(mask, Image):
            if mask.spatial_shape != image.spatial_shape or not np.allclose(mask.affine, image.affine, atol=1e-3):
                raise InputError("the corrected mask is not on the series grid", path=mask.sources[0] if mask.sources
                                 else None, expected=f"shape {image.spatial_shape} with the series' affine",
                                 found=f"shape {mask.spatial_shape}",
                                 fix="draw on the AI mask (its NIfTI is in the result folder: `sobre review show`)")
            arr = np.asarray(mask.array)
        else:
            arr = np.asarray(mask)
            if arr.shape != tuple(image.spatial_shape):
                raise InputError("the corrected mask does not have the series' shape",
                                 expected=str(tuple(image.spatial_shape)), found=str(arr.shape))
        if arr.dtype.kind not in "iub":
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise InputError("mask values must be integers (segment values)", found=str(arr.dtype))
        arr = arr.astype(np.int64)
        schema = self.ws.accounts.project(project).schema
        known = {s.value for s in schema.segments}
        bad = sorted({int(v) for v in np.unique(arr)} - known - {0})
        if bad:
            raise InputError("the corrected mask holds values that are not segments of the project",
                             expected="0 and " + ", ".join(str(v) for v in sorted(known)),
                             found=", ".join(map(str, bad[:10])))
        corrected = Image(arr.astype(np.uint8), image.affine, modality="SEG")
        ai = job["annotation_version"]
        name = job["app"]
        info = self.ws.annotations.save(project, _series_key(job), name, "mask", corrected, author=reviewer,
                                        parent=ai, new_branch=True, tool="sobre review correct",
                                        status="submitted", comment=comment or f"correction of service job {job['id']}")
        self._review_annotation(job, reviewer, "reject", f"corrected in version {info.number}"
                                + (f": {comment}" if comment else ""))
        outputs, folder = self._correction_outputs(job, result, image, corrected, schema, self._person(reviewer), info)
        correction = {"annotation_version": info.id, "annotation_number": info.number, "annotation_sha256": info.sha256,
                      "folder": str(folder.relative_to(self.root)), "outputs": outputs}
        send = self.config.review.send_corrections

        def apply(c) -> dict:
            cancelled = _cancel_pending(c, job["id"])  # the uncorrected proposal, if not sent yet, is not sent
            queued = add_deliveries(c, job["id"], result["plan"], outputs, folder,
                                    f"correction-{info.number}") if send else 0
            return {"sent_now": queued, "cancelled": cancelled, "correction": {
                "annotation_version": info.id, "annotation_sha256": info.sha256,
                "outputs": [{"kind": o["kind"], "uid": o["sop_instance_uid"], "series": o["series_uid"],
                             "sha256": o["sha256"]} for o in outputs]}}

        return self._decide(job, result, reviewer, "corrected", comment, project, apply, correction=correction)

    # ------------------------------------------------------------------------------ helpers
    def _pending(self, job_id: int) -> tuple[dict, dict]:
        job = self._job(job_id)
        if job["state"] != "proposed":
            raise ServiceError(f"result {job['id']} is not a proposal (job {job['state']})",
                               expected="a proposed result", found=job["state"],
                               fix="list proposals with `sobre review list`")
        if job["review"] != "pending":
            raise ServiceError(f"result {job['id']} was already {job['review']} by {job['reviewer']} at "
                               f"{_iso(job['reviewed_at'])}", fix="a decision is final; it is in the audit log")
        return job, json.loads(job["result"])

    @staticmethod
    def _still_pending(c, job: dict) -> None:
        now = c.execute("SELECT review, reviewer FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        if now["review"] != "pending":
            raise ServiceError(f"result {job['id']} was {now['review']} by {now['reviewer']} meanwhile")

    def _project(self, job: dict) -> str:
        app = next((a for a in self.config.apps if a.name == job["app"]), None)
        return (app.project if app and app.project else None) or self.config.review.project

    def _check_reviewer(self, reviewer: str, job: dict) -> str:
        project = self._project(job)
        if not reviewer or not _USER.match(reviewer) or reviewer == ACTOR:
            raise InputError("who reviews must be named", expected="a user name (letters, digits, . _ @ -)",
                             found=repr(reviewer), fix="pass --reviewer NAME")
        users = self.ws.accounts.users()
        if users:
            try:
                account = self.ws.accounts.user(reviewer)
            except SobreError:
                raise ServiceError(f"no account '{reviewer}' in this workspace", fix="reviewers need an account "
                                   "with the reviewer role in the project") from None
            role = account.role_in(project)
            if account.disabled or role not in ("reviewer", "data_manager"):
                raise ServiceError(f"{reviewer} may not review results of project {project}",
                                   expected="the reviewer or data_manager role", found=role or "no role",
                                   fix=f"a data manager grants it: accounts.grant('{reviewer}', '{project}', 'reviewer')")
        return project

    def _person(self, reviewer: str) -> str:
        """The reviewer as a DICOM person name (``Family^Given`` from the account's display name, else ``user^``)."""
        name = reviewer
        try:
            name = self.ws.accounts.user(reviewer).display_name or reviewer
        except SobreError:
            pass
        parts = name.replace("^", " ").split()
        if len(parts) >= 2 and name != reviewer:
            return f"{parts[-1]}^{' '.join(parts[:-1])}"[:64]
        return f"{name}^"[:64]

    def _review_annotation(self, job: dict, reviewer: str, decision: str, comment: str | None) -> None:
        """Accept or reject the AI annotation version (once: a decision recorded by an earlier try is kept)."""
        vid = job["annotation_version"]
        if not vid:
            return
        info = self.ws.annotations.version(vid)
        if info.status != "submitted":
            return  # decided by an earlier try of this review (or, before reviewed_in, in the annotation queue)
        self.ws.annotations.review(vid, reviewer=reviewer, decision=decision, via=ACTOR,
                                   comment=comment or ("accepted in the service review" if decision == "accept" else None))

    def _record(self, job: dict, result: dict, decision: str, comment, project: str, **more) -> dict:
        model = result["models"][0] if len(result["models"]) == 1 else {}
        return {"job": job["id"], "key": job["key"], "decision": decision, "comment": comment,
                "app": result["app"], "model": {k: model.get(k) for k in ("name", "version", "sha256")},
                "study": job["study_uid"], "series": job["series_uid"],
                "outputs": [{"kind": o["kind"], "uid": o.get("sop_instance_uid"), "sha256": o["sha256"]}
                            for o in result["outputs"] if o["kind"] in DICOM_KINDS],
                "annotation_version": job["annotation_version"], "project": project, **more}

    def _correction_outputs(self, job: dict, result: dict, image, mask, schema, reviewer: str, info):
        """SEG (manual), SR (observer = reviewer) and SC of the corrected mask, with derived UIDs."""
        from sobre.apps import ABSENT, LESION_COUNT, PRESENT, VOLUME, components
        from sobre.image import Finding, Measurement, Segment, write_secondary_capture, write_seg, write_sr

        from ._uids import remap_outputs, remap_records, source_uids

        arr = np.asarray(mask.array)
        segments = [Segment(s.name, s.value, category=_triple(s.category), type=_triple(s.type),
                            color=tuple(s.color)) for s in schema.segments]
        folder = self.root / result["folder"].rsplit("/", 1)[0] / f"correction-{info.number}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            cfg = result.get("config") or {}
            series_number = int(cfg.get("series_number", 9001)) + 10
            written = [write_seg(mask, image, folder / "seg.dcm", segments=segments, algorithm=None,
                                 series_number=series_number, content_creator=reviewer,
                                 series_description="AI segmentation corrected by a radiologist")]
            voxel = float(np.prod(image.spacing[:3]))
            findings, measurements = [], []
            for n, s in enumerate(segments, start=1):
                present = arr == s.value
                measurements.append(Measurement(VOLUME, float(present.sum()) * voxel, "mm3", segment=n))
                measurements.append(Measurement(LESION_COUNT, float(components(present)[1]), "1", segment=n))
                findings.append(Finding(s.type or ("52988006", "SCT", "Lesion"), PRESENT if present.any() else ABSENT,
                                        segment=n))
            written.append(write_sr(image, folder / "sr.dcm", observer=reviewer, findings=findings,
                                    measurements=measurements, seg=written[0], segments=segments,
                                    series_number=series_number + 1,
                                    series_description="AI measurement report corrected by a radiologist"))
            written.extend(write_secondary_capture(image, mask, image, folder / "sc", segments=segments,
                                                   window=cfg.get("window"), series_number=series_number + 2,
                                                   series_description="Corrected AI overlay (not for diagnosis)"))
            records = []
            for w in written:
                rec = w.to_dict()
                rec["path"] = Path(rec["path"]).relative_to(folder).as_posix()
                records.append(rec)
            mapping = remap_outputs([(f"{r['kind']}/{Path(r['path']).name}", folder / r["path"]) for r in records],
                                    f"{self.queue.uid_seed}/{job['key']}/correction/{info.id}",
                                    keep=source_uids(image.sources))
            records = remap_records(records, mapping, folder)
            for r in records:
                r["sha256"] = sha256_file(folder / r["path"])
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return records, folder


def _cancel_pending(c, job_id: int) -> int:
    """Drop the job's deliveries not sent yet (a decision made them moot); returns how many."""
    return c.execute("DELETE FROM deliveries WHERE job_id = ? AND state = 'pending'", (job_id,)).rowcount


def _triple(code):
    if code is None:
        return None
    return (code.value, code.scheme, code.meaning)


def _series_key(job: dict) -> str:
    return f"{job['series_uid']}#{job['volume']}" if job["volume"] else job["series_uid"]


def _iso(t) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(t)))

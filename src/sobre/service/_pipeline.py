"""The service's work, step by step, without threads: receive → complete → route → run → propose → deliver.

:class:`Pipeline` holds the workspace, the configuration, the queue and the loaded apps; each
method does one step and commits it (with its audit entries) in one queue transaction.
:class:`~sobre.service.Service` runs these steps in threads; ``sobre service process`` runs them
one after another for files given on the command line.

Idempotency
-----------
- A **job** is keyed by the app, its version and configuration, the model's SHA-256 and the exact
  input instances (SOP instance UIDs and SHA-256): routing a study again (more instances arrived,
  a listener re-ingested its store after a crash) never makes a job twice.
- A job that was ``running`` when the service died is queued again on restart and runs again in a
  new attempt folder; its outputs get **UIDs derived from the job** (:mod:`._uids`), so the second
  run writes the same SEG/SR/SC instances (same SOP instance UIDs) as the first would have.
- A **delivery** (job, destination, instance) is marked ``sent`` in the transaction that follows
  the PACS's answer; if the service dies between the two, the instance is sent again on restart —
  the same instance (same UID, same bytes), which a PACS stores once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sobre.base import canonical_json, sha256_bytes, sha256_file, write_atomic
from sobre.errors import ConfigError, SobreError, describe_exception

from ._config import Destination, ServiceConfig
from ._queue import Queue, flush_audit
from ._receive import Registered, register_instances

__all__ = ["Pipeline", "AppHandle", "ServiceError", "RouteOutcome", "ACTOR"]

log = logging.getLogger("sobre.service")

ACTOR = "sobre.service"
DICOM_KINDS = {"SEG": "seg", "SR": "sr", "SC": "sc"}
ANNOTATION_AUTHOR = "sobre.service"


class ServiceError(SobreError):
    """The inference service cannot do what was asked (a study no app accepts, a result already reviewed ...)."""


@dataclass
class AppHandle:
    """An app as the service runs it: the App, its loaded models, its settings and destinations."""

    name: str
    app: object  # sobre.apps.App
    loaded: list  # [sobre.apps.LoadedModel]
    config: dict
    project: str
    destinations: list[Destination]

    @property
    def models(self) -> dict:
        return {am.name: lm for am, lm in zip(self.app.models, self.loaded)}

    @property
    def model_sha256(self) -> str:
        if len(self.loaded) == 1:
            return str(self.loaded[0].identity["sha256"])
        return sha256_bytes(canonical_json([lm.identity["sha256"] for lm in self.loaded]))

    def segments(self) -> list:
        """The app's segments (explicit, or one per non-background class of its segmentation models)."""
        from sobre.image import Segment

        out = []
        for am, lm in zip(self.app.models, self.loaded):
            if getattr(lm.task, "kind", None) != "segmentation":
                continue
            if am.segments:
                out.extend(am.segments)
                continue
            for c in lm.task.classes:
                if str(c) in ("0", "background") or not str(c).isdigit():
                    continue
                code = lm.codes.get(str(c))
                out.append(Segment(code[2] if code else f"{am.name} {c}", int(c), type=code))
        return out


@dataclass
class RouteOutcome:
    """What routing one complete study decided."""

    study: str
    jobs: list[int] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    message: str | None = None  # set when no series of the study is accepted by any app


def _now() -> float:
    return time.time()


def _digest(instances: list[tuple[str, str]]) -> str:
    return sha256_bytes(canonical_json(sorted([list(i) for i in instances])))


def _code(c) -> dict | None:
    if not c:
        return None
    v = tuple(c)
    return {"value": str(v[0]), "scheme": str(v[1]), "meaning": str(v[2])}


class Pipeline:
    """The steps of the service over one workspace (see the module docstring)."""

    def __init__(self, ws, config: ServiceConfig, *, queue: Queue | None = None) -> None:
        self.ws = ws
        self.config = config
        self.root = ws.layout.service
        self.root.mkdir(parents=True, exist_ok=True)
        self.queue = queue or Queue(self.root / "queue.sqlite")
        self.jobs_dir = self.root / "jobs"
        self.dead_dir = self.root / "dead-letter"
        self.apps: dict[str, AppHandle] = {}
        self.catalogue = None  # paths -> IngestReport: the intake route's ``add``, called once a study is complete

    # ------------------------------------------------------------------------------ set-up
    def load_apps(self) -> dict[str, AppHandle]:
        """Load every configured app and its models once (signatures and hashes checked on loading)."""
        from sobre.apps import get_app

        if not self.config.apps:
            raise ConfigError("the service configuration names no app", path=self.root / "service.toml",
                              expected="at least one [[apps]] table with name (and model)",
                              fix="write one with `sobre service init -w WS`, or pass --app NAME --model MODEL")
        for entry in self.config.apps:
            app = get_app(entry.name)
            loaded = app.load_models({app.models[0].name: entry.model} if entry.model else None, workspace=self.ws)
            self.apps[entry.name] = AppHandle(entry.name, app, loaded, dict(entry.config),
                                              entry.project or self.config.review.project,
                                              self.config.destinations_of(entry.name))
            ident = loaded[0].identity
            log.info("app %s %s with model %s %s (sha256 %s)", app.name, app.version, ident.get("name"),
                     ident.get("version"), str(ident.get("sha256"))[:12])
        return self.apps

    def ensure_projects(self) -> None:
        """Create the annotation projects of the apps (with their segments), or check existing ones hold them."""
        from sobre.catalog import LabelSchema
        from sobre.errors import CatalogError

        wanted: dict[str, dict[int, object]] = {}
        for h in self.apps.values():
            segs = wanted.setdefault(h.project, {})
            for s in h.segments():
                prior = segs.get(s.value)
                if prior is not None and prior.label != s.label:
                    raise ConfigError(f"apps sharing project {h.project!r} give segment value {s.value} two names "
                                      f"({prior.label!r}, {s.label!r})", fix="give one of the apps its own project")
                segs[s.value] = s
        for project, segs in wanted.items():
            if not segs:
                continue
            try:
                info = self.ws.accounts.project(project)
            except CatalogError:
                schema = LabelSchema(segments=[
                    {"name": s.label, "value": int(v),
                     **({"color": list(s.color)} if s.color else {}),
                     **({"category": _code(s.category)} if s.category else {}),
                     **({"type": _code(s.type)} if s.type else {})} for v, s in sorted(segs.items())])
                self.ws.accounts.create_project(project, schema=schema,
                                                description="AI proposals of the inference service and their "
                                                            "corrections (sobre service)")
                log.info("created annotation project %s", project)
                continue
            for v, s in segs.items():
                have = info.schema.segment(int(v))
                if have is None:
                    raise ConfigError(f"annotation project {project!r} has no segment of value {v} ({s.label})",
                                      expected=f"segment {s.label!r} = {v}",
                                      found=", ".join(f"{x.name}={x.value}" for x in info.schema.segments) or "none",
                                      fix="set [review] project (or the app's project) to a new project name")

    def recover(self) -> dict:
        """After a crash: jobs left ``running`` are queued again (or failed after their last try); partial
        attempt folders are removed; audit entries left in the outbox are moved to the log (once)."""
        requeued, failed = [], []
        now = _now()
        with self.queue.tx() as c:
            for row in c.execute("SELECT id, key, attempts FROM jobs WHERE state = 'running'").fetchall():
                if row["attempts"] >= self.config.workers.attempts:
                    c.execute("UPDATE jobs SET state='failed', finished_at=?, worker=NULL, error=? WHERE id=?",
                              (now, f"the service stopped while running it ({row['attempts']} tries)", row["id"]))
                    failed.append(row["id"])
                else:
                    c.execute("UPDATE jobs SET state='queued', worker=NULL, not_before=0 WHERE id=?", (row["id"],))
                    requeued.append(row["id"])
            if requeued or failed:
                Queue.event(c, ACTOR, "service.recovered", jobs_requeued=requeued, jobs_failed=failed,
                            reason="the service stopped while these jobs ran (crash, kill or power cut)")
        if self.jobs_dir.exists():
            for partial in self.jobs_dir.glob("*/.attempt-*.partial-*"):
                shutil.rmtree(partial, ignore_errors=True)
        self.flush_audit(check_all=True)
        if requeued:
            log.warning("%d job(s) interrupted by a stop: queued again (%s)", len(requeued),
                        ", ".join(map(str, requeued)))
        return {"requeued": requeued, "failed": failed}

    def flush_audit(self, *, check_all: bool = False) -> int:
        return flush_audit(self.queue, self.ws.audit, check_all=check_all)

    # ------------------------------------------------------------------------------ receiving
    def receive(self, paths: list[str], *, via: str, peer: str | None = None) -> Registered:
        """Register instances the intake stored (see :func:`~sobre.service._receive.register_instances`)."""
        return register_instances(self.queue, [str(p) for p in paths], via=via, peer=peer)

    def due_studies(self, now: float | None = None) -> list[str]:
        now = _now() if now is None else now
        quiet = self.config.receive.quiet_seconds
        rows = self.queue.read().execute(
            "SELECT study_uid FROM studies WHERE state = 'receiving' AND last_received <= ? ORDER BY last_received",
            (now - quiet,)).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------------------ routing
    def route_study(self, study: str, *, warn: bool = True) -> RouteOutcome:
        """Judge every series volume of a complete study with every app; queue a job per acceptance.

        Everything is committed in one transaction: the verdicts (accepted, or every rule broken),
        the jobs, the study's state, and the audit entries (instances received, routing). A study
        of which no series is accepted is logged as a warning (``warn``) and says why in
        ``RouteOutcome.message``.
        """
        from sobre.errors import Problems
        from sobre.image import load_all

        outcome = RouteOutcome(study)
        rows = self.queue.read().execute("SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, sop_uid",
                                         (study,)).fetchall()
        if self.catalogue is not None:  # the whole study at once: no half-received series in the catalog
            report = self.catalogue([r["path"] for r in rows])
            for p in report.problems[:20]:
                log.warning("catalog: %s", p)
        by_series: dict[str, list] = {}
        for r in rows:
            by_series.setdefault(r["series_uid"], []).append(r)
        by_path = {r["path"]: r for r in rows}
        plans = []  # (series, volume, digest, app, verdict dict, job dict or None)
        for series, insts in by_series.items():
            problems = Problems()
            images = load_all([r["path"] for r in insts], on_warning=lambda m: None, problems=problems)
            if not images:
                why = "; ".join(p.message for p in problems.items[:2]) or "no image volume"
                for name in self.apps:
                    plans.append((series, "", _digest([(r["sop_uid"], r["sha256"]) for r in insts]), name,
                                  [{"rule": "image", "expected": "an image series", "found": why,
                                    "message": f"rule 'image': expected an image series; found {why}"}], None))
                continue
            for img in images:
                volume = str(img.metadata.get("volume_label") or "")
                members = [by_path[str(p)] for p in img.sources if str(p) in by_path]
                digest = _digest([(r["sop_uid"], r["sha256"]) for r in members])
                case_id = f"{series}#{volume}" if volume else series
                for name, h in self.apps.items():
                    verdict = h.app.check(img, dicom=True, series=case_id)
                    job = None
                    if verdict.accepted:
                        cfg = h.app.configure(h.config).model_dump(mode="json")
                        key = sha256_bytes(canonical_json({"app": h.app.name, "version": h.app.version,
                                                           "model": h.model_sha256, "config": cfg, "inputs": digest}))
                        job = {"key": key, "inputs": [{"sop_uid": r["sop_uid"], "path": r["path"],
                                                       "sha256": r["sha256"]} for r in members]}
                    plans.append((series, volume, digest, name, [r.to_dict() for r in verdict.refusals], job))
        now = _now()
        with self.queue.tx() as c:
            new_verdicts = []
            for series, volume, digest, app, refusals, job in plans:
                cur = c.execute("INSERT OR IGNORE INTO routes (study_uid, series_uid, volume, app, input_digest, "
                                "accepted, refusals, decided_at) VALUES (?,?,?,?,?,?,?,?)",
                                (study, series, volume, app, digest, int(job is not None), Queue.dumps(refusals), now))
                verdict = {"series": series, "volume": volume, "app": app, "accepted": job is not None,
                           "refusals": [r["message"] for r in refusals]}
                if job is not None:
                    h = self.apps[app]
                    jc = c.execute("INSERT OR IGNORE INTO jobs (key, study_uid, series_uid, volume, app, app_version, "
                                   "model_sha256, inputs, state, created_at) VALUES (?,?,?,?,?,?,?,?,'queued',?)",
                                   (job["key"], study, series, volume, app, h.app.version, h.model_sha256,
                                    Queue.dumps(job["inputs"]), now))
                    jid = c.execute("SELECT id FROM jobs WHERE key = ?", (job["key"],)).fetchone()[0]
                    verdict["job"] = jid
                    if jc.rowcount:
                        outcome.jobs.append(jid)
                outcome.verdicts.append(verdict)
                if cur.rowcount:
                    new_verdicts.append(verdict)
            received = c.execute("SELECT * FROM instances WHERE study_uid = ? AND audited = 0 ORDER BY series_uid, "
                                 "sop_uid", (study,)).fetchall()
            if received:
                self._event_received(c, study, received)
                c.execute("UPDATE instances SET audited = 1 WHERE study_uid = ? AND audited = 0", (study,))
            accepted_any = c.execute("SELECT COUNT(*) FROM routes WHERE study_uid = ? AND accepted = 1",
                                     (study,)).fetchone()[0]
            if not accepted_any:
                reasons = "; ".join(f"series {v['series']}: {v['app']} {v['refusals'][0]}"
                                    for v in outcome.verdicts if v["refusals"])[:900]
                outcome.message = (f"study {study}: no series that an app accepts"
                                   + (f" ({reasons})" if reasons else ""))
            if new_verdicts:
                Queue.event(c, ACTOR, "service.route", study=study, verdicts=new_verdicts,
                            message=outcome.message)
            c.execute("UPDATE studies SET state='complete', completed_at=?, note=? WHERE study_uid=?",
                      (now, outcome.message, study))
        self.flush_audit()
        if outcome.message and warn:
            log.warning("%s", outcome.message)
        else:
            log.info("study %s complete: %d new job(s)", study, len(outcome.jobs))
        return outcome

    def _event_received(self, c, study: str, rows) -> None:
        series: dict[str, dict] = {}
        for r in rows:
            s = series.setdefault(r["series_uid"], {"series": r["series_uid"], "modality": r["modality"],
                                                    "instances": []})
            s["instances"].append({"uid": r["sop_uid"], "sop_class": r["sop_class_uid"], "sha256": r["sha256"]})
        first = rows[0]
        Queue.event(c, ACTOR, "service.received", study=study, patient_id=first["patient_id"],
                    accession=first["accession"], via=sorted({r["via"] for r in rows}),
                    peers=sorted({r["peer"] for r in rows if r["peer"]}), n_instances=len(rows),
                    series=list(series.values()), deidentified=self.ws.intake.required,
                    receiver={"aet": self.config.receive.aet, "host": self.config.receive.host})

    # ------------------------------------------------------------------------------ jobs
    def claim(self, worker: str) -> dict | None:
        """Take the oldest queued job (one transaction): ``running``, one more attempt."""
        now = _now()
        with self.queue.tx() as c:
            row = c.execute("SELECT * FROM jobs WHERE state = 'queued' AND not_before <= ? ORDER BY id LIMIT 1",
                            (now,)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state='running', attempts=attempts+1, started_at=?, worker=? WHERE id=?",
                      (now, worker, row["id"]))
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return dict(row)

    def run_job(self, job: dict) -> str:
        """Run one claimed job: the app on its inputs, derived UIDs, the AI annotation, the proposal.

        Returns the job's new state (``proposed``, ``queued`` for another try, or ``failed``).
        """
        folder = self.jobs_dir / f"{job['id']:08d}"
        out = folder / f"attempt-{job['attempts']}"
        try:
            result = self._run(job, folder, out)
        except Exception as exc:  # noqa: BLE001 - any failure of a job is recorded, the service goes on
            shutil.rmtree(out, ignore_errors=True)
            return self._job_failed(job, exc)
        self._propose(job, result)
        return "proposed"

    def _run(self, job: dict, folder: Path, out: Path) -> dict:
        from sobre.image import load

        h = self.apps.get(job["app"])
        if h is None:
            raise ServiceError(f"app {job['app']} is no longer configured in the service",
                               fix="add it back to service.toml to run its queued jobs")
        if h.model_sha256 != job["model_sha256"]:
            raise ServiceError(f"the model of app {job['app']} changed since the job was queued",
                               expected=f"model sha256 {job['model_sha256'][:12]}…",
                               found=f"{h.model_sha256[:12]}…", fix="the study is routed again when re-sent")
        inputs = json.loads(job["inputs"])
        for i in inputs:
            if not Path(i["path"]).is_file() or sha256_file(i["path"]) != i["sha256"]:
                raise ServiceError("an input instance changed or disappeared since it was received",
                                   path=i["path"], expected=f"sha256 {i['sha256']}",
                                   fix="send the study again")
        folder.mkdir(parents=True, exist_ok=True)
        for partial in folder.glob(".attempt-*.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        cfg = dict(h.config)
        outputs = list(cfg.get("outputs") or h.app.config.outputs)
        for k in ("mask", "json"):
            if k not in outputs:
                outputs.append(k)
        cfg["outputs"] = outputs
        paths = [i["path"] for i in inputs]
        t0 = time.perf_counter()
        result = h.app.run(paths, out, model=h.models, config=cfg, strict=True)
        seconds = time.perf_counter() - t0
        case = result.cases[0]
        dicom = [(f"{o['kind']}/{Path(o['path']).name}", out / o["path"]) for o in case.outputs
                 if o["kind"] in DICOM_KINDS]
        from ._uids import remap_outputs, remap_records, source_uids

        mapping = remap_outputs(dicom, f"{self.queue.uid_seed}/{job['key']}", keep=source_uids(paths))
        records = remap_records(case.outputs, mapping, out)
        self._patch_json(out, case.folder, mapping, records)
        mask = next((o for o in records if o["kind"] == "mask"), None)
        version = None
        if mask is not None:
            version = self._save_ai_annotation(job, h, load(out / mask["path"]))
        return {"app": result.app, "config": result.config, "models": result.models, "input": case.input,
                "outputs": records, "findings": case.findings, "measurements": case.measurements,
                "scores": case.scores, "folder": str(out.relative_to(self.root)), "seconds": round(seconds, 3),
                "annotation_version": version, "held": self.config.review.hold,
                "plan": [{"destination": d.name, "kinds": list(d.send)} for d in h.destinations]}

    @staticmethod
    def _patch_json(out: Path, case_folder: str, mapping: dict, records: list[dict]) -> None:
        """Rewrite result.json and app-result.json with the derived UIDs and new hashes."""
        def sub(node):
            if isinstance(node, dict):
                return {k: sub(v) for k, v in node.items()}
            if isinstance(node, list):
                return [sub(v) for v in node]
            return mapping.get(node, node) if isinstance(node, str) else node

        by_path = {r["path"]: r for r in records}
        case_json = out / case_folder / "result.json"
        if case_json.exists():
            doc = sub(json.loads(case_json.read_text()))
            doc["outputs"] = [dict(o, sha256=by_path.get(o.get("path"), o).get("sha256")) for o in doc.get("outputs", [])]
            write_atomic(case_json, json.dumps(doc, indent=2, sort_keys=True) + "\n")
            rel = case_json.relative_to(out).as_posix()
            for r in records:
                if r["path"] == rel:
                    r["sha256"] = sha256_file(case_json)
        app_json = out / "app-result.json"
        if app_json.exists():
            by_path = {r["path"]: r for r in records}
            doc = sub(json.loads(app_json.read_text()))
            for c in doc.get("cases", []):
                c["outputs"] = [dict(o, sha256=by_path.get(o.get("path"), o).get("sha256")) for o in c.get("outputs", [])]
            write_atomic(app_json, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")

    def series_key(self, job: dict) -> str:
        return f"{job['series_uid']}#{job['volume']}" if job["volume"] else job["series_uid"]

    def _save_ai_annotation(self, job: dict, h: AppHandle, mask) -> int | None:
        """The AI mask as a submitted annotation version (author sobre.service), once per job."""
        import numpy as np

        if not h.segments():
            return None
        tool = f"{h.app.name} {h.app.version}; model {h.model_sha256[:16]}; job {job['key'][:16]}"
        series = self.series_key(job)
        try:
            versions = self.ws.annotations.versions(project=h.project, series=series, name=h.app.name)
        except SobreError as exc:
            log.warning("job %s: the AI mask is not kept as an annotation version: %s", job["id"], exc)
            return None
        for v in versions:
            if v.tool == tool and v.author == ANNOTATION_AUTHOR:
                return v.id  # saved by an earlier attempt of this job
        head = max((v for v in versions if v.branch == "main"), key=lambda v: v.number, default=None)
        arr = np.asarray(mask.array)
        if arr.ndim > 3:  # channel stack of several models: the first segment wins where they overlap
            lab = np.zeros(arr.shape[:3], np.uint8)
            for i, s in enumerate(h.segments()):
                lab[(arr[..., i] != 0) & (lab == 0)] = s.value
            from sobre.image import Image

            mask = Image(lab, mask.affine, modality="SEG")
        try:
            info = self.ws.annotations.save(h.project, series, h.app.name, "mask", mask, author=ANNOTATION_AUTHOR,
                                            parent=head.id if head else None, new_branch=True, tool=tool,
                                            status="submitted", comment=f"AI proposal, service job {job['id']}",
                                            reviewed_in={"owner": ACTOR, "job": job["id"], "how": (
                                                f"review the AI result: `sobre review accept {job['id']}` (or reject, "
                                                "correct), or the workstation's review page, section AI results")})
        except SobreError as exc:
            log.warning("job %s: the AI mask is not kept as an annotation version: %s", job["id"], exc)
            return None
        return info.id

    def _propose(self, job: dict, result: dict) -> None:
        now = _now()
        with self.queue.tx() as c:
            c.execute("UPDATE jobs SET state='proposed', finished_at=?, worker=NULL, error=NULL, result=?, "
                      "review='pending', annotation_version=? WHERE id=?",
                      (now, Queue.dumps(result), result["annotation_version"], job["id"]))
            if not result["held"]:
                add_deliveries(c, job["id"], result["plan"], result["outputs"], self.root / result["folder"],
                               "proposal")
            Queue.event(c, ACTOR, "infer.decision", **decision_record(job, result))
        self.flush_audit()
        log.info("job %s (%s on series %s): proposed%s in %.1f s", job["id"], job["app"], job["series_uid"],
                 " (held for review)" if result["held"] else "", result["seconds"])

    def _job_failed(self, job: dict, exc: BaseException) -> str:
        msg = str(exc) if isinstance(exc, SobreError) else describe_exception(exc)
        retry = not isinstance(exc, SobreError) and job["attempts"] < self.config.workers.attempts
        now = _now()
        with self.queue.tx() as c:
            if retry:
                c.execute("UPDATE jobs SET state='queued', worker=NULL, error=?, not_before=? WHERE id=?",
                          (msg, now + 5.0 * job["attempts"], job["id"]))
            else:
                c.execute("UPDATE jobs SET state='failed', worker=NULL, error=?, finished_at=? WHERE id=?",
                          (msg, now, job["id"]))
                Queue.event(c, ACTOR, "service.job-failed", job=job["id"], key=job["key"], study=job["study_uid"],
                            series=job["series_uid"], app={"name": job["app"], "version": job["app_version"]},
                            model={"sha256": job["model_sha256"]}, attempts=job["attempts"], error=msg)
        self.flush_audit()
        (log.warning if retry else log.error)("job %s (%s on series %s) %s: %s", job["id"], job["app"],
                                              job["series_uid"], "failed, will try again" if retry else "failed", msg)
        return "queued" if retry else "failed"

    # ------------------------------------------------------------------------------ delivery
    def deliver_due(self, now: float | None = None, *, limit: int = 500) -> dict:
        """Send what is due to each destination; retries with back-off, then the dead letter."""
        from ._deliver import deliver

        return deliver(self, now=now, limit=limit)


def add_deliveries(c, job_id: int, plan: list[dict], outputs: list[dict], folder: Path, what: str) -> int:
    """Queue the DICOM outputs of a job for each destination of its plan (in the caller's transaction)."""
    n = 0
    now = _now()
    for p in plan:
        for o in outputs:
            kind = DICOM_KINDS.get(o["kind"])
            if kind is None or kind not in p["kinds"]:
                continue
            cur = c.execute("INSERT OR IGNORE INTO deliveries (job_id, destination, what, kind, sop_uid, sop_class_uid, "
                            "path, sha256, state, created_at) VALUES (?,?,?,?,?,?,?,?,'pending',?)",
                            (job_id, p["destination"], what, o["kind"], o["sop_instance_uid"], o.get("sop_class_uid"),
                             str(folder / o["path"]), o["sha256"], now))
            n += cur.rowcount
    return n


def decision_record(job: dict, result: dict) -> dict:
    """The ``infer.decision`` audit entry: inputs (UIDs, hashes) → model (package hash) → outputs (UIDs, hashes)."""
    model = result["models"][0] if len(result["models"]) == 1 else {"models": result["models"]}
    inp = result["input"]
    return {
        "job": job["id"], "key": job["key"],
        "app": result["app"],
        "model": {k: model.get(k) for k in ("name", "version", "sha256", "model_sha256", "source", "run_id", "dataset")}
        if "models" not in model else model,
        "inputs": {"study": inp.get("study_uid") or job["study_uid"], "series": inp.get("series_uid") or job["series_uid"],
                   "volume": job["volume"],
                   "instances": [{"uid": i.get("sop_instance_uid"), "sha256": i["sha256"]} for i in inp["instances"]]},
        "outputs": [{"kind": o["kind"], "uid": o.get("sop_instance_uid"), "series": o.get("series_uid"),
                     "sop_class": o.get("sop_class_uid"), "sha256": o["sha256"]}
                    for o in result["outputs"] if o["kind"] in DICOM_KINDS],
        "findings": [f"{f['name']['meaning']} = {f['value']['meaning']}" + (f" ({f['segment']})" if f.get("segment") else "")
                     for f in result["findings"]],
        "measurements": [{"name": m["name"]["meaning"], "value": m["value"], "unit": m["unit"] if isinstance(m["unit"], str)
                          else m["unit"].get("value"), "segment": m.get("segment")} for m in result["measurements"]],
        "annotation_version": result.get("annotation_version"),
        "held": result["held"],
        "destinations": [p["destination"] for p in result["plan"]],
    }


"""Sending results to the destinations: C-STORE (pynetdicom) or STOW-RS, retries, the dead letter.

Each pending delivery (job, destination, instance) is tried when due. The answer decides:

- **sent**: C-STORE status 0x0000 (or a warning 0xB000/0xB006/0xB007), or STOW-RS stored it;
- **try again later** (back-off ``backoff_seconds`` × 2^(tries − 1), at most ``max_backoff_seconds``):
  no connection, no answer, association rejected or aborted, out of resources (0xA7xx), an HTTP
  error without a per-instance failure reason;
- **dead letter at once**: the destination answered that it will not take this instance — a
  failure status (0xA9xx, 0xCxxx, 0x01xx), its SOP class refused in association negotiation,
  a STOW-RS failure reason. Retrying would not change its answer.

After ``delivery.attempts`` tries, or at once for a refusal, the instance goes to the dead letter:
its file is copied to ``WS/service/dead-letter/DESTINATION/`` with a JSON note (job, instance,
tries, the last answer), the delivery is marked ``dead`` and an audit entry says why. Nothing is
lost: ``sobre service retry`` puts dead deliveries back in the queue once the destination is fixed.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sobre.base import write_atomic
from sobre.errors import SobreError, describe_exception

from ._queue import Queue

__all__ = ["deliver", "send_dicom", "send_dicomweb", "Outcome", "STATUS_MEANINGS"]

log = logging.getLogger("sobre.service.deliver")

STATUS_MEANINGS = {
    0x0000: "success", 0x0001: "warning", 0xB000: "coercion of data elements", 0xB006: "elements discarded",
    0xB007: "data set does not match SOP class (warning)", 0x0107: "attribute list error",
    0x0110: "processing failure", 0x0111: "duplicate SOP instance", 0x0117: "invalid object instance",
    0x0122: "SOP class not supported", 0x0124: "not authorized", 0x0211: "unrecognized operation",
    0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
}
_WARNINGS = {0x0001, 0xB000, 0xB006, 0xB007}


@dataclass
class Outcome:
    """What happened to one delivery: ``sent``, ``retry`` or ``dead``; the destination's answer."""

    state: str
    status: str
    error: str | None = None


def _status_text(code: int) -> str:
    meaning = STATUS_MEANINGS.get(code)
    if meaning is None and 0xA700 <= code <= 0xA7FF:
        meaning = "out of resources"
    elif meaning is None and 0xA900 <= code <= 0xA9FF:
        meaning = "data set does not match SOP class"
    elif meaning is None and 0xC000 <= code <= 0xCFFF:
        meaning = "cannot understand"
    return f"0x{code:04X}" + (f" ({meaning})" if meaning else "")


def _sop_class_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        return name if name and name != uid else uid
    except Exception:  # noqa: BLE001
        return uid


def send_dicom(dest, rows: list[dict], *, calling_aet: str, timeout: float) -> dict[int, Outcome]:
    """C-STORE ``rows`` (delivery rows with ``path`` and ``sop_class_uid``) over one association."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    where = f"{dest.aet}@{dest.host}:{dest.port}"
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    classes = sorted({r["sop_class_uid"] for r in rows if r["sop_class_uid"]})
    for cls in classes[:128]:
        ae.add_requested_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    out: dict[int, Outcome] = {}
    try:  # a plain TCP connection first: "nothing listens there" is clearer than an aborted association
        socket.create_connection((dest.host, int(dest.port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return {r["id"]: Outcome("retry", "no connection", f"cannot connect to {where} ({why}): the PACS is down, "
                                 "or nothing listens at that address") for r in rows}
    try:
        assoc = ae.associate(dest.host, int(dest.port), ae_title=dest.aet)
    except Exception as exc:  # noqa: BLE001 - a network error is a reason to try later
        return {r["id"]: Outcome("retry", "no association", f"cannot connect to {where}: {describe_exception(exc)}")
                for r in rows}
    if not assoc.is_established:
        why = ("the association was rejected" if assoc.is_rejected else
               "the association was aborted" if assoc.is_aborted else "no answer (nothing listening, or a firewall)")
        return {r["id"]: Outcome("retry", "no association", f"{where}: {why}") for r in rows}
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for r in rows:
            if not assoc.is_established:
                out[r["id"]] = Outcome("retry", "association lost", f"{where}: the association ended before sending")
                continue
            if r["sop_class_uid"] not in accepted:
                out[r["id"]] = Outcome("dead", "SOP class refused",
                                       f"{where} does not accept {_sop_class_name(r['sop_class_uid'])} "
                                       "(no presentation context accepted)")
                continue
            try:
                ds = pydicom.dcmread(r["path"])
                status = assoc.send_c_store(ds)
            except Exception as exc:  # noqa: BLE001
                out[r["id"]] = Outcome("retry", "send error", f"{where}: {describe_exception(exc)}")
                continue
            code = getattr(status, "Status", None) if status else None
            if code is None:
                out[r["id"]] = Outcome("retry", "no answer", f"{where}: no C-STORE answer (connection lost or timeout)")
            elif code == 0 or code in _WARNINGS:
                out[r["id"]] = Outcome("sent", _status_text(code))
            elif 0xA700 <= code <= 0xA7FF:
                out[r["id"]] = Outcome("retry", _status_text(code), f"{where} answered C-STORE {_status_text(code)}")
            else:
                comment = str(status.get("ErrorComment", "") or "").strip()
                out[r["id"]] = Outcome("dead", _status_text(code),
                                       f"{where} refused the instance: C-STORE {_status_text(code)}"
                                       + (f", '{comment}'" if comment else ""))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def send_dicomweb(dest, rows: list[dict], *, timeout: float) -> dict[int, Outcome]:
    """STOW-RS ``rows`` to ``dest.url`` (one request per batch)."""
    from sobre.pacs import DicomWebPacs

    by_uid = {r["sop_uid"]: r for r in rows}
    try:
        report = DicomWebPacs(dest.url, timeout=timeout, attempts=1).push([r["path"] for r in rows])
    except SobreError as exc:
        return {r["id"]: Outcome("retry", "no answer", str(exc)) for r in rows}
    out: dict[int, Outcome] = {}
    for uid in report.stored:
        if uid in by_uid:
            out[by_uid[uid]["id"]] = Outcome("sent", "stored")
    for uid, reason in report.failed:
        r = by_uid.get(uid)
        if r is None:
            continue
        refused = reason.startswith("failure reason") or reason == "refused"
        out[r["id"]] = Outcome("dead" if refused else "retry", reason if refused else "no answer",
                               f"{dest.url}: {reason}")
    for path, reason in report.skipped:
        r = next((x for x in rows if x["path"] == path), None)
        if r is not None:
            out[r["id"]] = Outcome("dead", "not sent", f"the file is not a complete instance: {reason}")
    for r in rows:
        out.setdefault(r["id"], Outcome("retry", "no answer", f"{dest.url}: no answer for this instance"))
    return out


def _dead_letter(pipeline, row: dict, outcome: Outcome, attempts: int) -> Path | None:
    folder = pipeline.dead_dir / row["destination"]
    target = folder / f"job{row['job_id']:06d}-{row['kind']}-{row['sop_uid']}.dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if Path(row["path"]).is_file():
            shutil.copyfile(row["path"], target)
        note = {"destination": row["destination"], "job": row["job_id"], "what": row["what"], "kind": row["kind"],
                "sop_instance_uid": row["sop_uid"], "sha256": row["sha256"], "source_file": row["path"],
                "attempts": attempts, "answer": outcome.status, "reason": outcome.error,
                "dead_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "retry": "sobre service retry -w WS (after fixing the destination)"}
        write_atomic(target.with_suffix(".json"), json.dumps(note, indent=2) + "\n")
    except OSError as exc:
        log.error("cannot write the dead letter %s: %s (the delivery stays recorded in the queue)", target, exc)
        return None
    return target


def deliver(pipeline, *, now: float | None = None, limit: int = 500) -> dict:
    """One round: every due delivery, grouped by destination; returns counts by outcome."""
    cfg = pipeline.config
    now = time.time() if now is None else now
    q = pipeline.queue
    rows = [dict(r) for r in q.read().execute(
        "SELECT d.*, j.key AS job_key FROM deliveries d JOIN jobs j ON j.id = d.job_id "
        "WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY d.id LIMIT ?", (now, limit))]
    counts = {"sent": 0, "retry": 0, "dead": 0}
    if not rows:
        return counts
    by_dest: dict[str, list[dict]] = {}
    for r in rows:
        by_dest.setdefault(r["destination"], []).append(r)
    for name, items in by_dest.items():
        dest = next((d for d in cfg.destinations if d.name == name), None)
        if dest is None:
            results = {r["id"]: Outcome("dead", "no destination",
                                        f"destination {name!r} is not in the service configuration any more")
                       for r in items}
        elif dest.kind == "dicom":
            results = send_dicom(dest, items, calling_aet=dest.calling_aet or cfg.receive.aet,
                                 timeout=cfg.delivery.timeout_seconds)
        else:
            results = send_dicomweb(dest, items, timeout=cfg.delivery.timeout_seconds)
        _record(pipeline, items, results, now)
        for o in results.values():
            counts[o.state] += 1
    pipeline.flush_audit()
    return counts


def _record(pipeline, items: list[dict], results: dict[int, Outcome], now: float) -> None:
    cfg = pipeline.config.delivery
    dead_files = {}
    for r in items:
        o = results[r["id"]]
        attempts = r["attempts"] + 1
        if o.state == "retry" and attempts >= cfg.attempts:
            o = Outcome("dead", o.status, f"{o.error} (gave up after {attempts} tries)")
            results[r["id"]] = o
        if o.state == "dead":
            dead_files[r["id"]] = _dead_letter(pipeline, r, o, attempts)
    sent_by_job: dict[tuple, list[dict]] = {}
    with pipeline.queue.tx() as c:
        for r in items:
            o = results[r["id"]]
            attempts = r["attempts"] + 1
            if o.state == "sent":
                c.execute("UPDATE deliveries SET state='sent', attempts=?, sent_at=?, status=?, last_error=NULL "
                          "WHERE id=?", (attempts, now, o.status, r["id"]))
                sent_by_job.setdefault((r["job_id"], r["job_key"], r["destination"], r["what"]), []).append(
                    {"kind": r["kind"], "uid": r["sop_uid"], "sha256": r["sha256"], "status": o.status})
            elif o.state == "retry":
                wait = min(cfg.backoff_seconds * 2 ** (attempts - 1), cfg.max_backoff_seconds)
                c.execute("UPDATE deliveries SET attempts=?, next_at=?, status=?, last_error=? WHERE id=?",
                          (attempts, now + wait, o.status, o.error, r["id"]))
                log.warning("delivery of %s %s to %s failed (try %d of %d, next in %.3g s): %s", r["kind"],
                            r["sop_uid"], r["destination"], attempts, cfg.attempts, wait, o.error)
            else:
                c.execute("UPDATE deliveries SET state='dead', attempts=?, status=?, last_error=? WHERE id=?",
                          (attempts, o.status, o.error, r["id"]))
                letter = dead_files.get(r["id"])
                Queue.event(c, "sobre.service", "service.dead-letter", job=r["job_id"], key=r["job_key"],
                            destination=r["destination"],
                            what=r["what"], output={"kind": r["kind"], "uid": r["sop_uid"], "sha256": r["sha256"]},
                            attempts=attempts, answer=o.status, reason=o.error,
                            file=str(letter) if letter else None)
                log.error("dead letter: %s %s to %s: %s", r["kind"], r["sop_uid"], r["destination"], o.error)
        for (job, key, dest, what), outs in sent_by_job.items():
            d = next((x for x in pipeline.config.destinations if x.name == dest), None)
            Queue.event(c, "sobre.service", "service.sent", job=job, key=key, destination=dest, what=what,
                        to=({"kind": d.kind, "aet": d.aet, "host": d.host, "port": d.port, "url": d.url,
                             "calling_aet": d.calling_aet or pipeline.config.receive.aet} if d else None),
                        outputs=outs)
    for r in items:  # a dead letter sent after a retry is no longer a dead letter
        if results[r["id"]].state == "sent":
            old = pipeline.dead_dir / r["destination"] / f"job{r['job_id']:06d}-{r['kind']}-{r['sop_uid']}.dcm"
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

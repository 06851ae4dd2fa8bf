"""The trace of a decision: which model produced this SEG from which images, who accepted it.

Built on the workspace's audit log (:func:`sobre.base.find_audit`): the entries that name a UID
(an output, an input instance, a series, a study) lead to the service jobs concerned (``key``),
and every entry of those jobs — received, routed, decided (``infer.decision``), sent, dead
letters, reviewed — is gathered into one record per job.
"""

from __future__ import annotations

from sobre.base import find_audit
from sobre.errors import InputError

__all__ = ["trace", "trace_lines"]

_JOB_ACTIONS = ("infer.decision", "service.sent", "service.dead-letter", "review", "service.job-failed")


def trace(ws, value: str) -> dict:
    """Every service decision that involves ``value`` (a UID, a hash, a job key), with its whole story.

    Returns
    -------
    dict
        ``value``, ``matched`` (what it is: output SEG/SR/SC, input instance, series, study),
        ``decisions`` (one per job: app, model, inputs, outputs, received, sent, dead letters,
        reviews), ``entries`` (every audit entry that mentions ``value``, as stored).
    """
    path = ws.layout.audit_log
    if not path.exists():
        raise InputError("this workspace has no audit log yet", path=path)
    direct = list(find_audit(path, value))
    jobs: dict[int, str | None] = {}
    for e in direct:
        if e.action in _JOB_ACTIONS and isinstance(e.data.get("job"), int):
            jobs.setdefault(e.data["job"], e.data.get("key"))
        for v in e.data.get("verdicts") or []:
            if v.get("job") is not None:
                jobs.setdefault(v["job"], None)
    decisions = []
    for job_id in sorted(jobs):
        key = jobs[job_id]
        if key is None:  # named by a routing verdict only: the decision entry gives the key
            key = next((e.data.get("key") for e in find_audit(path, job_id)
                        if e.action == "infer.decision" and e.data.get("job") == job_id), None)
            if key is None:
                continue
        entries = [e for e in find_audit(path, key) if e.action in _JOB_ACTIONS and e.data.get("job") == job_id]
        decision = next((e for e in entries if e.action == "infer.decision"), None)
        if decision is None:
            continue
        d = decision.data
        study = d["inputs"]["study"]
        received = [e for e in find_audit(path, study) if e.action == "service.received" and e.data.get("study") == study]
        series_uid = d["inputs"]["series"]
        instances = {i["uid"] for i in d["inputs"]["instances"]}
        got = []
        for e in received:
            for s in e.data.get("series", []):
                if s["series"] == series_uid:
                    n = sum(1 for i in s["instances"] if i["uid"] in instances)
                    if n:
                        got.append({"at": e.time, "via": e.data.get("via"), "peers": e.data.get("peers"),
                                    "instances": n, "deidentified": e.data.get("deidentified")})
        decisions.append({
            "job": job_id, "key": d.get("key"), "at": decision.time, "actor": decision.actor, "app": d.get("app"),
            "model": d.get("model"), "inputs": d.get("inputs"), "outputs": d.get("outputs"),
            "findings": d.get("findings"), "held": d.get("held"), "received": got,
            "sent": [{"at": e.time, "destination": e.data.get("destination"), "what": e.data.get("what"),
                      "outputs": [o["uid"] for o in e.data.get("outputs", [])],
                      "status": sorted({o.get("status") for o in e.data.get("outputs", [])})}
                     for e in entries if e.action == "service.sent"],
            "dead_letters": [{"at": e.time, "destination": e.data.get("destination"), "output": e.data.get("output"),
                              "reason": e.data.get("reason")} for e in entries if e.action == "service.dead-letter"],
            "reviews": [{"at": e.time, "reviewer": e.actor, "decision": e.data.get("decision"),
                         "comment": e.data.get("comment"), "correction": e.data.get("correction")}
                        for e in entries if e.action == "review"],
            "seq": [e.seq for e in entries],
        })
    matched = _what(value, decisions)
    return {"value": value, "matched": matched, "decisions": decisions, "entries": [e.to_dict() for e in direct]}


def _what(value: str, decisions: list[dict]) -> str:
    for d in decisions:
        for o in d.get("outputs") or []:
            if o.get("uid") == value:
                return f"output {o['kind']}"
            if o.get("series") == value:
                return f"output {o['kind']} series"
        for r in d.get("reviews") or []:
            for o in (r.get("correction") or {}).get("outputs", []):
                if o.get("uid") == value:
                    return f"corrected {o['kind']}"
        inp = d.get("inputs") or {}
        if value == inp.get("study"):
            return "input study"
        if value == inp.get("series"):
            return "input series"
        if any(i.get("uid") == value for i in inp.get("instances", [])):
            return "input instance"
        if value == d.get("key"):
            return "job key"
        if value == (d.get("model") or {}).get("sha256"):
            return "model package"
    return "mentioned" if decisions else "not a service decision"


def trace_lines(t: dict) -> list[str]:
    """A readable account of :func:`trace`'s record (what ``sobre service trace`` prints)."""
    lines = [f"{t['value']}: {t['matched']}"]
    if not t["decisions"]:
        lines.append(f"  {len(t['entries'])} audit entr{'y' if len(t['entries']) == 1 else 'ies'} mention it, "
                     "none is a decision of the inference service")
    for d in t["decisions"]:
        m = d.get("model") or {}
        inp = d.get("inputs") or {}
        app = d.get("app") or {}
        lines.append(f"job {d['job']}  {d['at']}  {app.get('name')} {app.get('version')}")
        lines.append(f"  model     {m.get('name')} {m.get('version')}  package sha256 {m.get('sha256')}"
                     + (f" ({m.get('source')})" if m.get("source") else ""))
        lines.append(f"  inputs    study {inp.get('study')}")
        lines.append(f"            series {inp.get('series')}: {len(inp.get('instances', []))} instance(s), each "
                     "with its SHA-256 in the audit entry")
        for r in d["received"]:
            lines.append(f"  received  {r['at']}  {r['instances']} instance(s) by {', '.join(r['via'] or [])}"
                         + (f" from {', '.join(r['peers'])}" if r.get("peers") else "")
                         + (" (de-identified on the way in)" if r.get("deidentified") else ""))
        outs = d.get("outputs") or []
        for kind in dict.fromkeys(o["kind"] for o in outs):
            same = [o for o in outs if o["kind"] == kind]
            if len(same) <= 2:
                lines.extend(f"  output    {o['kind']:3s} {o['uid']}  sha256 {o['sha256'][:16]}…" for o in same)
            else:
                series = sorted({o.get("series") for o in same if o.get("series")})
                lines.append(f"  output    {kind:3s} {len(same)} instances (series {', '.join(series)}), each with its "
                             "UID and SHA-256 in the audit entry")
        if d.get("findings"):
            lines.append(f"  findings  {'; '.join(d['findings'])}")
        for s in d["sent"]:
            lines.append(f"  sent      {s['at']}  {len(s['outputs'])} instance(s) ({s['what']}) to {s['destination']} "
                         f"[{', '.join(x for x in s['status'] if x)}]")
        for x in d["dead_letters"]:
            lines.append(f"  DEAD      {x['at']}  {x['output']['kind']} {x['output']['uid']} to {x['destination']}: "
                         f"{x['reason']}")
        if not d["reviews"]:
            lines.append("  review    pending" + (" (held: nothing sent before acceptance)" if d.get("held") else ""))
        for r in d["reviews"]:
            lines.append(f"  review    {r['at']}  {r['decision']} by {r['reviewer']}"
                         + (f": {r['comment']}" if r.get("comment") else ""))
            for o in (r.get("correction") or {}).get("outputs", []):
                lines.append(f"            corrected {o['kind']:3s} {o['uid']}")
    return lines

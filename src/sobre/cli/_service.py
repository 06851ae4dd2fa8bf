"""``sobre service``: the inference service (and its status, trace, audit export); ``sobre review``: the human in the loop."""

from __future__ import annotations

import argparse
import sys

from sobre.cli._common import add_json_arg, emit_json


def _ws_arg(p, *, sub: bool) -> None:
    p.add_argument("-w", "--workspace", default=argparse.SUPPRESS if sub else ".",
                   help="workspace folder (default: the current folder or the nearest parent holding sobre.toml)")


def _config_arg(p, *, sub: bool) -> None:
    p.add_argument("--config", default=argparse.SUPPRESS if sub else None,
                   help="service settings (default: WS/service/service.toml when it exists)")


def register(sub) -> None:
    s = sub.add_parser("service", help="inference service: DICOM in (C-STORE, STOW-RS), SEG/SR/SC out, review, audit",
                       description="Without an action: run the service until SIGTERM or Ctrl-C.")
    _ws_arg(s, sub=False)
    _config_arg(s, sub=False)
    s.add_argument("--aet", default=None, help="our AE title (receive.aet)")
    s.add_argument("--host", default=None, help="address to listen on (receive.host; default loopback)")
    s.add_argument("--port", type=int, default=None, help="C-STORE port (receive.port; 0: a free port)")
    s.add_argument("--stow-port", type=int, default=None, help="STOW-RS port (receive.stow_port)")
    s.add_argument("--quiet", type=float, default=None, help="seconds without a new instance before a study is "
                   "complete (receive.quiet_seconds)")
    s.add_argument("--workers", type=int, default=None, help="jobs at the same time (workers.count)")
    s.add_argument("--hold", action="store_true", default=None, help="hold results until accepted (review.hold)")
    s.add_argument("--app", action="append", default=None, metavar="NAME[=MODEL]",
                   help="an app to run, with its model (a registered NAME@VERSION, a run folder or id); repeatable; "
                        "replaces [[apps]]")
    s.add_argument("--destination", action="append", default=None, metavar="NAME=AET@HOST:PORT|NAME=URL",
                   help="where results go: C-STORE (AET@HOST:PORT) or STOW-RS (http://.../dicom-web); repeatable; "
                        "replaces [[destinations]]")
    s.add_argument("--grace", type=float, default=30.0, help="seconds running jobs may take to finish when stopping")
    s.set_defaults(func=_run)
    ssub = s.add_subparsers(dest="service_cmd", metavar="ACTION")

    p = ssub.add_parser("init", help="write a commented WS/service/service.toml")
    _ws_arg(p, sub=True)
    p.add_argument("--force", action="store_true", help="replace an existing one")
    p.set_defaults(func=_init)

    p = ssub.add_parser("status", help="studies, jobs, reviews, deliveries, dead letters (exit 1 when something "
                                       "needs attention)")
    _ws_arg(p, sub=True)
    add_json_arg(p)
    p.set_defaults(func=_status)

    p = ssub.add_parser("process", help="process DICOM files now, as if received (no quiet period); exit 2 when no "
                                        "series is accepted, 1 when something was not delivered")
    p.add_argument("paths", nargs="+", help="DICOM files or folders")
    _ws_arg(p, sub=True)
    _config_arg(p, sub=True)
    add_json_arg(p)
    p.set_defaults(func=_process)

    p = ssub.add_parser("retry", help="put dead letters back in the queue (after fixing the destination)")
    _ws_arg(p, sub=True)
    _config_arg(p, sub=True)
    p.add_argument("--destination", dest="only_destination", default=None, help="only this destination")
    p.add_argument("--job", type=int, default=None, help="only this job")
    p.add_argument("--now", action="store_true", help="also send them now (without a running service)")
    p.set_defaults(func=_retry)

    p = ssub.add_parser("trace", help="which model produced this output from which images, where it went, who "
                                      "decided (a SEG/SR/SC/input UID, a study, a job key)")
    p.add_argument("value")
    _ws_arg(p, sub=True)
    add_json_arg(p)
    p.set_defaults(func=_trace)

    p = ssub.add_parser("export-audit", help="the service's audit entries as DICOM PS3.15 A.5 audit messages (XML)")
    _ws_arg(p, sub=True)
    p.add_argument("--out", required=True, help="folder for the XML files (one per message)")
    p.add_argument("--since", default=None, help="UTC ISO time, e.g. 2026-12-01T00:00:00Z")
    p.add_argument("--source-id", default=None, help="AuditSourceID (default sobre@HOSTNAME)")
    p.set_defaults(func=_export_audit)

    r = sub.add_parser("review", help="accept, correct or reject the inference service's results")
    rsub = r.add_subparsers(dest="review_cmd", metavar="ACTION", required=True)
    p = rsub.add_parser("list", help="results awaiting review (or --state)")
    _ws_arg(p, sub=False)
    _config_arg(p, sub=False)
    p.add_argument("--state", default="pending", choices=["pending", "accepted", "corrected", "rejected", "all"])
    add_json_arg(p)
    p.set_defaults(func=_review_list)
    p = rsub.add_parser("show", help="one result: inputs, model, outputs, findings, deliveries")
    p.add_argument("job", type=int)
    _ws_arg(p, sub=False)
    _config_arg(p, sub=False)
    add_json_arg(p)
    p.set_defaults(func=_review_show)
    for name, what in (("accept", "accept the result as it is"), ("reject", "reject it (with --reason)"),
                       ("correct", "correct its mask (--mask FILE on the series grid)")):
        p = rsub.add_parser(name, help=what)
        p.add_argument("job", type=int)
        p.add_argument("--reviewer", required=True, help="who decides (an account with the reviewer role, when "
                                                         "the workspace has accounts)")
        if name == "reject":
            p.add_argument("--reason", required=True)
        else:
            p.add_argument("--comment", default=None)
        if name == "correct":
            p.add_argument("--mask", required=True, help="the corrected mask (NIfTI/NRRD on the series grid)")
        _ws_arg(p, sub=False)
        _config_arg(p, sub=False)
        add_json_arg(p)
        p.set_defaults(func=_review_decide, decision=name)


# ---------------------------------------------------------------------------------------------- helpers
def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _open(ns):
    from sobre.catalog import Workspace

    from ._common import track

    return track(Workspace.open(getattr(ns, "workspace", ".")))


def _config(ns, ws):
    from sobre.service import CONFIG_NAME, load_service_config

    cfg, path = load_service_config(getattr(ns, "config", None), default=ws.layout.service / CONFIG_NAME)
    return cfg, path


def _parse_destination(spec: str) -> dict:
    from sobre.errors import InputError

    name, sep, target = spec.partition("=")
    if not sep or not name or not target:
        raise InputError("cannot read --destination", expected="NAME=AET@HOST:PORT or NAME=http://HOST:PORT/dicom-web",
                         found=spec)
    if target.startswith(("http://", "https://")):
        return {"name": name, "kind": "dicomweb", "url": target}
    aet, at, hostport = target.partition("@")
    host, colon, port = hostport.rpartition(":")
    if not at or not colon or not port.isdigit():
        raise InputError("cannot read --destination", expected="NAME=AET@HOST:PORT (C-STORE)", found=spec)
    return {"name": name, "kind": "dicom", "aet": aet, "host": host, "port": int(port)}


def _with_flags(cfg, ns):
    from sobre.base import validate_config
    from sobre.service import ServiceConfig

    data = cfg.model_dump(mode="json")
    for flag, key in (("aet", "aet"), ("host", "host"), ("port", "port"), ("stow_port", "stow_port"),
                      ("quiet", "quiet_seconds")):
        if getattr(ns, flag, None) is not None:
            data["receive"][key] = getattr(ns, flag)
    if ns.workers is not None:
        data["workers"]["count"] = ns.workers
    if ns.hold:
        data["review"]["hold"] = True
    if ns.destination:
        data["destinations"] = [_parse_destination(s) for s in ns.destination]
        for a in data["apps"]:
            a["destinations"] = None
    if ns.app:
        apps = []
        for spec in ns.app:
            name, _, model = spec.partition("=")
            prior = next((a for a in data["apps"] if a["name"] == name), {})
            apps.append(dict(prior, name=name, model=model or prior.get("model")))
        data["apps"] = apps
    return validate_config(data, ServiceConfig, section=None)


# ---------------------------------------------------------------------------------------------- service
def _run(ns) -> int:
    import logging
    import signal
    import threading

    from sobre.service import Service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("highdicom", "pynetdicom", "sobre.image", "sobre.apps"):  # one line per instance: too much
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        stop.set()

    with _open(ns) as ws:
        cfg, path = _config(ns, ws)
        cfg = _with_flags(cfg, ns)
        svc = Service(ws, cfg)
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            svc.start()
            _note(f"service {cfg.receive.aet} on {cfg.receive.host}: C-STORE port {svc.port}"
                  + (f", STOW-RS http://{cfg.receive.host}:{svc.stow_port}/dicom-web/studies" if svc.stow else "")
                  + f"; apps {', '.join(svc.pipeline.apps)}; destinations "
                  + (", ".join(d.name for d in cfg.destinations) or "none")
                  + ("; results held for review" if cfg.review.hold else "")
                  + f"; settings {path or 'defaults'}; stop with SIGTERM or Ctrl-C")
            while not stop.wait(0.5):
                pass
            _note("stopping: finishing receptions, running jobs and due deliveries")
            svc.stop(grace=ns.grace)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return 0


def _init(ns) -> int:
    from sobre.base import write_atomic
    from sobre.errors import InputError
    from sobre.service import CONFIG_NAME, CONFIG_TEMPLATE

    with _open(ns) as ws:
        path = ws.layout.service / CONFIG_NAME
        if path.exists() and not ns.force:
            raise InputError("the service configuration exists", path=path, fix="edit it, or pass --force")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, CONFIG_TEMPLATE)
    print(f"wrote {path}: set the apps' models and the destinations, then run `sobre service -w {ns.workspace}`")
    return 0


def _queue(ws):
    from sobre.service import Queue, ServiceError

    path = ws.layout.service / "queue.sqlite"
    if not path.exists():
        raise ServiceError("this workspace has no inference service queue yet", path=path,
                           fix="start the service (`sobre service -w WS`) and send it a study")
    return Queue(path)


def _status(ns) -> int:
    from sobre.service import service_status

    with _open(ns) as ws:
        q = _queue(ws)
        st = service_status(q)
        q.close()
    if ns.json:
        emit_json(st)
        return 0 if st["ok"] else 1
    fmt = lambda d: ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or "none"  # noqa: E731
    print(f"studies     {fmt(st['studies'])}")
    print(f"jobs        {fmt(st['jobs'])}")
    print(f"reviews     {fmt(st['reviews'])}")
    print(f"deliveries  {fmt(st['deliveries'])}")
    for r in st["retrying"]:
        print(f"retrying    job {r['job_id']} {r['kind']} {r['sop_uid']} to {r['destination']} (try {r['attempts']}): "
              f"{r['last_error']}")
    for s in st["unroutable_studies"]:
        print(f"NOT ROUTED  {s['note']}")
    for j in st["failed_jobs"]:
        print(f"FAILED      job {j['id']} ({j['app']} on series {j['series_uid']}, {j['attempts']} tries): {j['error']}")
    for d in st["dead_letters"]:
        print(f"DEAD LETTER job {d['job_id']} {d['kind']} {d['sop_uid']} to {d['destination']} after {d['attempts']} "
              f"tr{'y' if d['attempts'] == 1 else 'ies'}: {d['last_error']}")
    if st["dead_letters"]:
        print("            files and notes in WS/service/dead-letter/; `sobre service retry` sends them again")
    return 0 if st["ok"] else 1


def _process(ns) -> int:
    import logging

    from sobre.service import process_files

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with _open(ns) as ws:
        cfg, _ = _config(ns, ws)
        summary = process_files(ws, _with_flags(cfg, ns), ns.paths)
    st = summary["status"]
    if ns.json:
        emit_json(summary)
    else:
        print(f"{summary['stored']} of {summary['files']} file(s) stored; "
              + "; ".join(f"study {s['study']}: {len(s['jobs'])} job(s)" for s in summary["studies"]))
        for s in summary["studies"]:
            for v in s["verdicts"]:
                if not v["accepted"]:
                    print(f"  {v['app']} refuses series {v['series']}: {'; '.join(v['refusals'])}")
        for jid, state in summary["jobs"].items():
            print(f"  job {jid}: {state}")
        d = summary["delivered"]
        print(f"  delivered: {d['sent']} sent, {d['dead']} dead letter(s)")
    for r in summary["refused"]:
        _note(f"not stored {r['path']}: {r['reason']}")
    for dl in st["dead_letters"]:
        _note(f"dead letter: job {dl['job_id']} {dl['kind']} to {dl['destination']}: {dl['last_error']}")
    for j in st["failed_jobs"]:
        _note(f"failed: job {j['id']}: {j['error']}")
    return 0 if (st["ok"] and not summary["refused"]) else 1


def _retry(ns) -> int:
    from sobre.service import Pipeline, retry_dead

    with _open(ns) as ws:
        cfg, _ = _config(ns, ws)
        pipeline = Pipeline(ws, _with_flags(cfg, ns), queue=_queue(ws))
        n = retry_dead(pipeline, destination=ns.only_destination, job=ns.job)
        print(f"{n} dead letter(s) queued again")
        if ns.now and n:
            counts = pipeline.deliver_due()
            print(f"sent {counts['sent']}, to retry {counts['retry']}, dead {counts['dead']}")
            pipeline.queue.close()
            return 0 if counts["dead"] == 0 and counts["retry"] == 0 else 1
        pipeline.queue.close()
    return 0


def _trace(ns) -> int:
    from sobre.service import trace, trace_lines

    with _open(ns) as ws:
        t = trace(ws, ns.value)
    if ns.json:
        emit_json(t)
    else:
        print("\n".join(trace_lines(t)))
    return 0 if t["decisions"] else 1


def _export_audit(ns) -> int:
    from sobre.service import export_audit_xml

    with _open(ns) as ws:
        paths = export_audit_xml(ws, ns.out, since=ns.since, source_id=ns.source_id)
    print(f"{len(paths)} DICOM audit message(s) written to {ns.out}")
    return 0


# ---------------------------------------------------------------------------------------------- review
def _review_list(ns) -> int:
    from sobre.service import Review

    with _open(ns) as ws:
        cfg, _ = _config(ns, ws)
        with Review(ws, cfg) as r:
            rows = r.list(None if ns.state == "all" else ns.state)
    if ns.json:
        emit_json(rows)
        return 0
    for x in rows:
        print(f"{x['job']:6d}  {x['review']:9s}  {x['app']:14s} series {x['series']}  {x['proposed_at']}  "
              f"{'; '.join(x['findings'][:3])}" + (f"  ({x['reviewer']})" if x["reviewer"] else ""))
    if not rows:
        _note(f"no result {ns.state if ns.state != 'all' else ''}".rstrip())
    return 0


def _review_show(ns) -> int:
    from sobre.service import Review

    with _open(ns) as ws:
        cfg, _ = _config(ns, ws)
        with Review(ws, cfg) as r:
            info = r.show(ns.job)
    if ns.json:
        emit_json(info)
        return 0
    m = (info["model"] or [{}])[0]
    print(f"result {info['job']} ({info['state']}, review {info['review']}): {info['app']} on series {info['series']}")
    print(f"  model    {m.get('name')} {m.get('version')} sha256 {m.get('sha256')}")
    print(f"  inputs   {len((info['input'] or {}).get('instances', []))} instance(s) of study {info['study']}")
    for o in info["outputs"] or []:
        print(f"  output   {o['kind']:4s} {o.get('sop_instance_uid') or ''} {o['path']}")
    print(f"  folder   {info['folder']}")
    for f in info["findings"]:
        print(f"  finding  {f}")
    for mm in info["measurements"] or []:
        unit = mm["unit"] if isinstance(mm["unit"], str) else mm["unit"].get("value")
        print(f"  measure  {mm['name']['meaning']} = {mm['value']:.6g} {unit}" + (f" ({mm['segment']})" if mm.get("segment") else ""))
    for d in info["deliveries"]:
        print(f"  delivery {d['destination']} {d['kind']} {d['state']}" + (f" {d['status']}" if d["status"] else "")
              + (f": {d['last_error']}" if d["state"] != "sent" and d["last_error"] else ""))
    if info["reviewer"]:
        print(f"  review   {info['review']} by {info['reviewer']} at {info['reviewed_at']}"
              + (f": {info['comment']}" if info["comment"] else ""))
    return 0


def _review_decide(ns) -> int:
    from sobre.service import Review

    with _open(ns) as ws:
        cfg, _ = _config(ns, ws)
        with Review(ws, cfg) as r:
            if ns.decision == "accept":
                info = r.accept(ns.job, reviewer=ns.reviewer, comment=ns.comment)
            elif ns.decision == "reject":
                info = r.reject(ns.job, reviewer=ns.reviewer, reason=ns.reason)
            else:
                info = r.correct(ns.job, ns.mask, reviewer=ns.reviewer, comment=ns.comment)
    if ns.json:
        emit_json(info)
        return 0
    queued = sum(1 for d in info["deliveries"] if d["state"] == "pending")
    print(f"result {info['job']} {info['review']} by {info['reviewer']}"
          + (f"; {queued} instance(s) queued for delivery (sent by the running service, or `sobre service retry "
             f"--now`)" if queued else ""))
    return 0

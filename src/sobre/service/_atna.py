"""The service's audit entries as DICOM audit messages (PS3.15 A.5, RFC 3881 derived) for the hospital's
audit record repository.

Each message is one XML document ``<AuditMessage>`` (the schema of PS3.15 A.5.1, current edition:
coded values written ``csd-code`` / ``codeSystemName`` / ``originalText``). What is exported:

==========================  =============================================  ===========  ===================
Sobre audit entry           DICOM audit message (A.5.3)                    action code  outcome
==========================  =============================================  ===========  ===================
``service.received``        110104 DICOM Instances Transferred (received)  C            0
``service.sent``            110104 DICOM Instances Transferred (sent)      R            0
``service.dead-letter``     110104 DICOM Instances Transferred (not sent)  R            8 + description
``infer.decision``          110103 DICOM Instances Accessed (created)      C            0
``review``                  110103 DICOM Instances Accessed (updated)      U            0
``service.job-failed``      110103 DICOM Instances Accessed                C            8 + description
==========================  =============================================  ===========  ===================

Decisions carry an ``EventTypeCode`` in Sobre's private scheme ``99SOBRE`` (``SOBRE-INFER``,
``SOBRE-ACCEPTED``, ``SOBRE-CORRECTED``, ``SOBRE-REJECTED``) and the model package's SHA-256, the
job key and the reviewer's decision as ``ParticipantObjectDetail`` (base64, as the schema wants).
The service makes no query (C-FIND, QIDO-RS), so no Query message is written. Patient names are not
kept by Sobre: the patient participant is named by its PatientID (a pseudonym in a de-identifying
workspace).
"""

from __future__ import annotations

import base64
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from sobre.base import write_atomic

__all__ = ["audit_messages", "audit_message", "export_audit_xml", "EXPORTED_ACTIONS"]

EXPORTED_ACTIONS = ("service.received", "service.sent", "service.dead-letter", "infer.decision", "review",
                    "service.job-failed")

TRANSFERRED = ("110104", "DCM", "DICOM Instances Transferred")
ACCESSED = ("110103", "DCM", "DICOM Instances Accessed")
SOURCE = ("110153", "DCM", "Source Role ID")
DESTINATION = ("110152", "DCM", "Destination Role ID")
APPLICATION = ("110150", "DCM", "Application")
STUDY_UID = ("110180", "DCM", "Study Instance UID")
PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
LOCAL = "99SOBRE"
TYPES = {"infer.decision": ("SOBRE-INFER", LOCAL, "AI result proposed"),
         "accepted": ("SOBRE-ACCEPTED", LOCAL, "AI result accepted by a reviewer"),
         "corrected": ("SOBRE-CORRECTED", LOCAL, "AI result corrected by a reviewer"),
         "rejected": ("SOBRE-REJECTED", LOCAL, "AI result rejected by a reviewer"),
         "service.job-failed": ("SOBRE-INFER-FAILED", LOCAL, "AI inference failed")}


def _coded(parent, tag: str, code: tuple) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _b64(text) -> str:
    return base64.b64encode(str(text).encode()).decode("ascii")


def _is_ip(text: str | None) -> bool:
    if not text:
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            continue
    return False


def _participant(msg, user: str, requestor: bool, role: tuple | None = None, *, name: str | None = None,
                 access_point: str | None = None) -> None:
    attrs = {"UserID": user or "unknown", "UserIsRequestor": "true" if requestor else "false"}
    if name:
        attrs["UserName"] = name
    if access_point:
        attrs["NetworkAccessPointID"] = access_point
        attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(access_point) else "1"
    ap = ET.SubElement(msg, "ActiveParticipant", attrs)
    if role is not None:
        _coded(ap, "RoleIDCode", role)


def _study(msg, study: str, instances: list[dict], *, accession: str | None = None, details: dict | None = None,
           anonymized: bool | None = None, lifecycle: str | None = None) -> None:
    attrs = {"ParticipantObjectID": study, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"}
    if lifecycle:
        attrs["ParticipantObjectDataLifeCycle"] = lifecycle
    po = ET.SubElement(msg, "ParticipantObjectIdentification", attrs)
    _coded(po, "ParticipantObjectIDTypeCode", STUDY_UID)
    ET.SubElement(po, "ParticipantObjectName").text = f"Study {study}"
    for k, v in (details or {}).items():
        if v not in (None, ""):
            ET.SubElement(po, "ParticipantObjectDetail", {"type": k, "value": _b64(v)})
    desc = ET.SubElement(po, "ParticipantObjectDescription")
    if accession:
        ET.SubElement(desc, "Accession", {"Number": accession})
    by_class: dict[str, list[str]] = {}
    for i in instances:
        by_class.setdefault(i.get("sop_class") or "", []).append(i["uid"])
    for cls, uids in by_class.items():
        attrs = {"NumberOfInstances": str(len(uids))}
        if cls:
            attrs["UID"] = cls
        sc = ET.SubElement(desc, "SOPClass", attrs)
        for u in uids:
            ET.SubElement(sc, "Instance", {"UID": u})
    if anonymized is not None:
        ET.SubElement(desc, "Anonymized").text = "true" if anonymized else "false"


def _patient(msg, patient_id: str | None) -> None:
    if not patient_id:
        return
    po = ET.SubElement(msg, "ParticipantObjectIdentification", {
        "ParticipantObjectID": patient_id, "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"})
    _coded(po, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)
    ET.SubElement(po, "ParticipantObjectName").text = patient_id


def audit_message(entry, *, source_id: str, context: dict) -> bytes | None:
    """One audit entry as a DICOM audit message (XML bytes), or None for an entry that is not exported.

    ``context`` carries what earlier entries told (``patients``: study → PatientID, ``studies``:
    job → study, ``classes``: SOP instance → SOP class); :func:`audit_messages` keeps it.
    """
    d = entry.data
    action = entry.action
    if action not in EXPORTED_ACTIONS:
        return None
    patients, studies, classes = context["patients"], context["studies"], context["classes"]
    msg = ET.Element("AuditMessage")
    failed = action in ("service.dead-letter", "service.job-failed")
    ev = ET.SubElement(msg, "EventIdentification", {
        "EventActionCode": {"service.received": "C", "infer.decision": "C", "review": "U",
                            "service.job-failed": "C"}.get(action, "R"),
        "EventDateTime": entry.time, "EventOutcomeIndicator": "8" if failed else "0"})
    _coded(ev, "EventID", TRANSFERRED if action.startswith(("service.received", "service.sent", "service.dead"))
           else ACCESSED)
    typ = TYPES.get(d.get("decision") if action == "review" else action)
    if typ is not None:
        _coded(ev, "EventTypeCode", typ)
    if failed:
        ET.SubElement(ev, "EventOutcomeDescription").text = str(d.get("reason") or d.get("error") or "failed")
    app_name = "sobre.service"
    if action == "service.received":
        study = d["study"]
        patients[study] = d.get("patient_id")
        peers = d.get("peers") or []
        via = ", ".join(d.get("via") or [])
        _participant(msg, peers[0] if peers else f"sender ({via})", True, SOURCE,
                     access_point=peers[0] if peers and _is_ip(peers[0]) else None)
        recv = d.get("receiver") or {}
        _participant(msg, recv.get("aet") or "SOBRE", False, DESTINATION, name=app_name,
                     access_point=recv.get("host"))
        instances = [i for s in d.get("series", []) for i in s["instances"]]
        for i in instances:
            classes[i["uid"]] = i.get("sop_class")
        ET.SubElement(msg, "AuditSourceIdentification", {"AuditSourceID": source_id})
        _study(msg, study, instances, accession=d.get("accession"), anonymized=d.get("deidentified"),
               lifecycle="2")
        _patient(msg, d.get("patient_id"))
    elif action in ("service.sent", "service.dead-letter"):
        study = studies.get(d.get("job"))
        to = d.get("to") or {}
        _participant(msg, to.get("calling_aet") or "SOBRE", True, SOURCE, name=app_name)
        dest_id = to.get("aet") or to.get("url") or d.get("destination")
        where = to.get("host") or (to.get("url", "").split("/")[2].split(":")[0] if to.get("url") else None)
        _participant(msg, dest_id or d.get("destination"), False, DESTINATION, name=d.get("destination"),
                     access_point=where)
        outs = d.get("outputs") if action == "service.sent" else [d.get("output") or {}]
        ET.SubElement(msg, "AuditSourceIdentification", {"AuditSourceID": source_id})
        if study:
            _study(msg, study, [{"uid": o.get("uid"), "sop_class": classes.get(o.get("uid"))} for o in outs if o],
                   details={"SobreJob": d.get("key"), "SobreDestination": d.get("destination")}, lifecycle="10")
            _patient(msg, patients.get(study))
    else:  # infer.decision, review, service.job-failed
        job = d.get("job")
        if action == "infer.decision":
            study = d["inputs"]["study"]
            studies[job] = study
            for o in d.get("outputs", []):
                classes[o["uid"]] = o.get("sop_class")
        else:
            study = d.get("study") or studies.get(job)
        app = d.get("app") or {}
        app_label = f"{app.get('name', '')} {app.get('version', '')}".strip() or app_name
        if action == "review":
            _participant(msg, entry.actor, True, name=entry.actor)
            _participant(msg, app_name, False, APPLICATION, name=app_label)
        else:
            _participant(msg, app_name, True, APPLICATION, name=app_label)
        ET.SubElement(msg, "AuditSourceIdentification", {"AuditSourceID": source_id})
        model = d.get("model") or {}
        details = {"SobreJob": d.get("key"), "ModelName": model.get("name"), "ModelVersion": model.get("version"),
                   "ModelPackageSHA256": model.get("sha256")}
        instances = []
        if action == "infer.decision":
            instances = [{"uid": o["uid"], "sop_class": o.get("sop_class")} for o in d.get("outputs", [])]
            details["Findings"] = "; ".join(d.get("findings") or []) or None
            details["InputInstances"] = len(d["inputs"].get("instances", []))
        elif action == "review":
            instances = [{"uid": o["uid"], "sop_class": classes.get(o["uid"])} for o in d.get("outputs", [])]
            corr = d.get("correction") or {}
            instances += [{"uid": o["uid"], "sop_class": None} for o in corr.get("outputs", [])]
            details["Decision"] = d.get("decision")
            details["Comment"] = d.get("comment")
        if study:
            _study(msg, study, instances, details=details,
                   lifecycle={"infer.decision": "8", "review": "4"}.get(action, "8"))
            _patient(msg, patients.get(study))
    return ET.tostring(msg, encoding="utf-8", xml_declaration=True)


def audit_messages(ws, *, since=None, source_id: str | None = None) -> Iterator[tuple[object, bytes]]:
    """``(audit entry, XML bytes)`` for every exported entry of the workspace's log (at or after ``since``)."""
    from sobre.base import audit_entries

    source_id = source_id or f"sobre@{socket.gethostname()}"
    context = {"patients": {}, "studies": {}, "classes": {}}
    floor = None
    if since is not None:  # entries before `since` still give context (patients, studies, SOP classes)
        floor = next(iter(audit_entries(ws.layout.audit_log, since=since)), None)
    for entry in audit_entries(ws.layout.audit_log):
        xml = audit_message(entry, source_id=source_id, context=context)
        if xml is None:
            continue
        if since is not None and (floor is None or entry.seq < floor.seq):
            continue
        yield entry, xml


def export_audit_xml(ws, out_dir, *, since=None, source_id: str | None = None) -> list[Path]:
    """Write one ``SEQ-ACTION.xml`` file per exported entry into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry, xml in audit_messages(ws, since=since, source_id=source_id):
        p = out / f"{entry.seq:08d}-{entry.action.replace('.', '-')}.xml"
        write_atomic(p, xml)
        written.append(p)
    return written

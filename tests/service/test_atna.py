"""The service's audit entries exported as DICOM PS3.15 A.5 audit messages (XML).

Each message is checked against the structure of the DICOM audit message schema (PS3.15 A.5.1, current
edition: element order, required attributes, coded values as csd-code/codeSystemName/originalText,
enumerated codes). When ``SOBRE_DICOM_AUDIT_XSD`` names an XML Schema of it (e.g. the dicom2024d.xsd
that the Apache-2.0 IPF project derives from the standard; the standard's own RELAX NG is not on a
package registry) and ``xmlschema`` is installed, every message is also validated against it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from .helpers import ct_study

CODED = ("csd-code", "codeSystemName", "originalText")
ORDER_PO = ["ParticipantObjectIDTypeCode", "ParticipantObjectName", "ParticipantObjectQuery",
            "ParticipantObjectDetail", "ParticipantObjectDescription"]


def structure_problems(root: ET.Element) -> list[str]:
    """What the PS3.15 A.5.1 schema would refuse in ``root`` (the parts Sobre writes)."""
    out = []
    tags = [c.tag for c in root]
    if root.tag != "AuditMessage":
        out.append(f"root is {root.tag}")
    if not tags or tags[0] != "EventIdentification" or tags.count("EventIdentification") != 1:
        out.append("EventIdentification must come first, once")
    if "ActiveParticipant" not in tags:
        out.append("no ActiveParticipant")
    if tags.count("AuditSourceIdentification") != 1:
        out.append("AuditSourceIdentification must appear once")
    else:
        i = tags.index("AuditSourceIdentification")
        if any(t != "ActiveParticipant" for t in tags[1:i]) or any(t != "ParticipantObjectIdentification"
                                                                   for t in tags[i + 1:]):
            out.append(f"order: {tags}")
    ev = root.find("EventIdentification")
    if ev is not None:
        if ev.get("EventOutcomeIndicator") not in ("0", "4", "8", "12") or not ev.get("EventDateTime"):
            out.append("EventIdentification needs EventDateTime and EventOutcomeIndicator 0/4/8/12")
        if ev.get("EventActionCode") not in (None, "C", "R", "U", "D", "E"):
            out.append("bad EventActionCode")
        kids = [c.tag for c in ev]
        if not kids or kids[0] != "EventID":
            out.append("EventID must come first in EventIdentification")
    for el in root.iter():
        if el.tag in ("EventID", "EventTypeCode", "RoleIDCode", "ParticipantObjectIDTypeCode"):
            missing = [a for a in CODED if not el.get(a)]
            if missing:
                out.append(f"{el.tag} lacks {missing}")
    for ap in root.findall("ActiveParticipant"):
        if not ap.get("UserID") or ap.get("UserIsRequestor") not in ("true", "false"):
            out.append("ActiveParticipant needs UserID and UserIsRequestor")
        if ap.get("NetworkAccessPointTypeCode") not in (None, "1", "2", "3", "4", "5"):
            out.append("bad NetworkAccessPointTypeCode")
    src = root.find("AuditSourceIdentification")
    if src is not None and not src.get("AuditSourceID"):
        out.append("AuditSourceID missing")
    for po in root.findall("ParticipantObjectIdentification"):
        kids = [c.tag for c in po]
        if [k for k in kids if k not in ORDER_PO] or kids != sorted(kids, key=ORDER_PO.index):
            out.append(f"ParticipantObjectIdentification children out of order: {kids}")
        if kids[:1] != ["ParticipantObjectIDTypeCode"] or not ({"ParticipantObjectName", "ParticipantObjectQuery"}
                                                               & set(kids)):
            out.append("ParticipantObjectIDTypeCode then a Name (or Query) are required")
        if po.get("ParticipantObjectTypeCode") not in (None, "1", "2", "3", "4"):
            out.append("bad ParticipantObjectTypeCode")
        for d in po.findall("ParticipantObjectDetail"):
            import base64

            base64.b64decode(d.get("value"), validate=True)
        for desc in po.findall("ParticipantObjectDescription"):
            order = ["MPPS", "Accession", "SOPClass", "ParticipantObjectContainsStudy", "Encrypted", "Anonymized"]
            k = [c.tag for c in desc]
            if [x for x in k if x not in order] or k != sorted(k, key=order.index):
                out.append(f"ParticipantObjectDescription children out of order: {k}")
            for sc in desc.findall("SOPClass"):
                if int(sc.get("NumberOfInstances")) != len(sc.findall("Instance")):
                    out.append("NumberOfInstances differs from the instances listed")
    return out


@pytest.fixture
def exported(tmp_path, ws, config):
    """A run with every exported event: received, decided, sent (none: no destination answers), dead letter,
    reviewed; then the XML files."""
    from sobre.service import Review, export_audit_xml, process_files

    from sobre.pacs._peers import free_port

    ct_study(tmp_path / "ct", seed=23)
    cfg = config(delivery={"attempts": 1}, destinations=[{"name": "pacs", "kind": "dicom", "host": "127.0.0.1",
                                                         "port": free_port(), "aet": "NOWHERE"}])
    process_files(ws, cfg, [tmp_path / "ct"])
    with Review(ws, cfg) as r:
        r.accept(1, reviewer="dr.martin")
    return ws, export_audit_xml(ws, tmp_path / "xml", source_id="sobre@test")


def test_audit_messages_follow_the_dicom_audit_schema(exported):
    ws, paths = exported
    by_action = {}
    for p in paths:
        root = ET.parse(p).getroot()
        assert structure_problems(root) == [], p.name
        by_action.setdefault(p.stem.split("-", 1)[1], []).append(root)
    assert set(by_action) >= {"service-received", "infer-decision", "service-dead-letter", "review"}
    received = by_action["service-received"][0]
    ev = received.find("EventIdentification")
    assert ev.find("EventID").get("csd-code") == "110104" and ev.get("EventActionCode") == "C"
    roles = {ap.find("RoleIDCode").get("csd-code") for ap in received.findall("ActiveParticipant")}
    assert roles == {"110153", "110152"}
    study, patient = received.findall("ParticipantObjectIdentification")
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert int(study.find("ParticipantObjectDescription/SOPClass").get("NumberOfInstances")) == 16
    assert patient.get("ParticipantObjectTypeCodeRole") == "1" and patient.get("ParticipantObjectID") == "PHANTOM-001"
    decision = by_action["infer-decision"][0]
    assert decision.find("EventIdentification/EventID").get("csd-code") == "110103"
    assert decision.find("EventIdentification/EventTypeCode").get("csd-code") == "SOBRE-INFER"
    import base64

    details = {d.get("type"): base64.b64decode(d.get("value")).decode()
               for d in decision.iter("ParticipantObjectDetail")}
    job = ws.layout.service / "queue.sqlite"
    assert len(details["ModelPackageSHA256"]) == 64 and job.exists()
    dead = by_action["service-dead-letter"][0]
    assert dead.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert "cannot connect" in dead.find("EventIdentification/EventOutcomeDescription").text
    review = by_action["review"][0]
    assert review.find("EventIdentification").get("EventActionCode") == "U"
    assert review.find("EventIdentification/EventTypeCode").get("csd-code") == "SOBRE-ACCEPTED"
    assert review.find("ActiveParticipant").get("UserID") == "dr.martin"


def test_audit_messages_validate_against_an_xml_schema_of_ps3_15(exported):
    xsd = os.environ.get("SOBRE_DICOM_AUDIT_XSD")
    if not xsd:
        pytest.skip("SOBRE_DICOM_AUDIT_XSD is not set: the DICOM audit message schema is not on a package registry "
                    "(docs/service.md says where the messages were validated)")
    xmlschema = pytest.importorskip("xmlschema", reason="pip install xmlschema to validate against the XSD")
    schema = xmlschema.XMLSchema(xsd)
    _, paths = exported
    for p in paths:
        errors = list(schema.iter_errors(str(p)))
        assert not errors, f"{p.name}: {errors[0]}"


def test_cli_export_audit(exported, tmp_path):
    import subprocess
    import sys

    ws, paths = exported
    run = subprocess.run([sys.executable, "-m", "sobre", "service", "export-audit", "-w", str(ws.root), "--out",
                          str(tmp_path / "cli-xml")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and f"{len(paths)} DICOM audit message(s)" in run.stdout
    assert sorted(p.name for p in (tmp_path / "cli-xml").iterdir()) == sorted(p.name for p in paths)

"""Queryable records, the filter language applied to them, and named cohorts."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select

from sobre.errors import CatalogError

from . import _scan
from ._models import Cohort, DatasetVersion, Series, Study, Subject, SubjectValue, Variable
from ._query import compile_filter

if TYPE_CHECKING:
    from ._workspace import Workspace

__all__ = ["BASE_FIELDS", "QueryResult", "records", "query", "cohort_create", "cohort", "cohorts"]

BASE_FIELDS = {
    "series_uid": "DICOM SeriesInstanceUID (or a content-derived UID)",
    "label": "what distinguishes volumes split from one series ('' if none)",
    "modality": "DICOM modality (CT, MR, US, ...)",
    "format": "dicom, nifti, nrrd, mha, png, ...",
    "manufacturer": "scanner manufacturer", "model": "scanner model", "field_strength": "tesla (MR)",
    "protocol": "protocol name", "series_description": "series description", "body_part": "body part",
    "site": "acquisition site", "subject_id": "subject identifier", "study_uid": "study UID",
    "study_date": "YYYYMMDD", "age": "years at the study", "sex": "M, F or O", "bmi": "kg/m²",
    "height": "m", "weight": "kg", "n_files": "number of files",
    "simulated": "true for synthetic images (DICOM SyntheticData YES, or a 'simulated' clinical column)",
}


@dataclass
class QueryResult:
    """The records a filter selected, and what it could not consider.

    ``left_out`` counts, by reason, the catalogued volumes that match the filter but cannot be
    selected because they could not be assembled (state ``error``): never silently dropped.
    """

    records: list[dict]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def n_left_out(self) -> int:
        return sum(self.left_out.values())

    def note(self) -> str | None:
        """One sentence about the volumes left out, or None."""
        if not self.left_out:
            return None
        reasons = "; ".join(f"{n} × {r}" for r, n in sorted(self.left_out.items(), key=lambda kv: -kv[1])[:5])
        return (f"{self.n_left_out} catalogued volume(s) matching the filter were left out because they "
                f"cannot be loaded (state error): {reasons}")


def _short(problem: str | None) -> str:
    text = (problem or "unknown problem").split(" (expected")[0]
    if ": " in text and text.split(": ", 1)[0].startswith("/"):
        text = text.split(": ", 1)[1]
    return text[:120]


def records(ws: Workspace, *, include_errors: bool = False, series_uid: str | None = None,
            uid_prefix: str | None = None) -> list[dict]:
    """One dict per catalogued volume with every queryable field (base fields + clinical variables).

    ``series_uid`` / ``uid_prefix`` restrict the volumes read (lookups of one series stay cheap).
    """
    annotated = ws.annotations.fields()
    ann_names = sorted({k for values in annotated.values() for k in values})
    with ws.session() as s:
        variables = {v.id: v for v in s.execute(select(Variable)).scalars()}
        var_names = sorted(v.name for v in variables.values())
        values: dict[int, dict] = defaultdict(dict)
        for row in s.execute(select(SubjectValue)).scalars():
            var = variables[row.variable_pk]
            values[row.subject_pk][var.name] = row.num if var.kind == "numeric" else row.text
        studies = {st.id: st for st in s.execute(select(Study)).scalars()}
        subjects = {sb.id: sb for sb in s.execute(select(Subject)).scalars()}
        out = []
        q = select(Series)
        if series_uid is not None:
            q = q.where(Series.series_uid == series_uid)
        elif uid_prefix is not None:
            q = q.where(Series.series_uid.startswith(uid_prefix, autoescape=True))
        for ser in s.execute(q.order_by(Series.series_uid, Series.label)).scalars():
            if ser.status != "ok" and not include_errors:
                continue
            st = studies.get(ser.study_pk)
            sb = subjects.get(st.subject_pk) if st else None
            clin = values.get(sb.id, {}) if sb else {}
            rec = {
                "series_uid": ser.series_uid, "label": ser.label, "modality": ser.modality,
                "format": ser.format, "manufacturer": ser.manufacturer, "model": ser.model,
                "field_strength": ser.field_strength, "protocol": ser.protocol,
                "series_description": ser.description, "body_part": ser.body_part,
                "site": (ser.meta or {}).get("site") or clin.get("site"),
                "subject_id": sb.subject_id if sb else None, "study_uid": st.study_uid if st else None,
                "study_date": st.study_date if st else None,
                "age": st.age_years if st and st.age_years is not None else clin.get("age"),
                "sex": (sb.sex if sb and sb.sex else _scan.normalise_sex(clin.get("sex"))),
                "bmi": st.bmi if st and st.bmi is not None else clin.get("bmi"),
                "height": st.height_m if st else None, "weight": st.weight_kg if st else None,
                "n_files": ser.n_files,
                "simulated": bool((ser.meta or {}).get("simulated"))
                or str(clin.get("simulated") or "").strip().lower() in ("yes", "true", "1", "1.0"),
                "status": ser.status, "problem": ser.problem,
                "shape": ser.shape, "spacing": ser.spacing, "orientation": ser.orientation,
            }
            for name in var_names:  # every clinical variable, None where the subject has no value
                rec.setdefault(name, clin.get(name))
            mine = annotated.get((ser.series_uid, ser.label), {})
            for name in ann_names:  # annotation status and accepted labels, None where absent
                rec[name] = mine.get(name)
            out.append(rec)
    return out


def query(ws: Workspace, where: str | None) -> QueryResult:
    """Records matching ``where`` (all when None), and the volumes in the error state left out."""
    recs = records(ws, include_errors=True)
    if where:
        pred = compile_filter(where, ws.fields())
        recs = [r for r in recs if pred(r)]
    left = Counter(_short(r["problem"]) for r in recs if r["status"] != "ok")
    return QueryResult([r for r in recs if r["status"] == "ok"], dict(left))


def _check_name(name: str) -> None:
    if not name or len(name) > 100 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) \
            or name.startswith("."):
        raise CatalogError(f"invalid cohort name '{name}'",
                           expected="1 to 100 ASCII letters, digits, '-', '_' or '.' (not first)", found=repr(name))


def cohort_create(ws: Workspace, name: str, where: str, *, replace: bool = False) -> dict:
    _check_name(name)
    compile_filter(where, ws.fields())  # validate now
    with ws.session() as s, s.begin():
        row = s.execute(select(Cohort).where(Cohort.name == name)).scalar_one_or_none()
        if row is not None and not replace:
            raise CatalogError(f"cohort '{name}' exists", found=row.expression,
                               fix="choose another name or pass --replace")
        if row is None:
            row = Cohort(name=name, expression=where, created_at=datetime.now(timezone.utc).replace(tzinfo=None))
            s.add(row)
        else:
            row.expression = where
    return cohort(ws, name)


def cohorts(ws: Workspace) -> list[dict]:
    with ws.session() as s:
        names = [c.name for c in s.execute(select(Cohort).order_by(Cohort.name)).scalars()]
    return [cohort(ws, n) for n in names]


def cohort(ws: Workspace, name: str) -> dict:
    with ws.session() as s:
        row = s.execute(select(Cohort).where(Cohort.name == name)).scalar_one_or_none()
        if row is None:
            known = [c for (c,) in s.execute(select(Cohort.name)).all()]
            raise CatalogError(f"no cohort '{name}'", expected="one of: " + (", ".join(known) or "(none yet)"))
        versions = s.execute(select(DatasetVersion).where(DatasetVersion.cohort_pk == row.id)
                             .order_by(DatasetVersion.version)).scalars().all()
        expression, created = row.expression, row.created_at
    result = query(ws, expression)
    members = result.records
    return {"name": name, "where": expression, "created_at": created.isoformat(),
            "n_series": len(members), "n_subjects": len({m["subject_id"] for m in members}),
            "members": members, "left_out": result.left_out, "note": result.note(),
            "versions": [{"ref": f"{name}@v{v.version}", "content_hash": v.content_hash,
                          "n_series": v.n_series, "created_at": v.created_at.isoformat()} for v in versions]}

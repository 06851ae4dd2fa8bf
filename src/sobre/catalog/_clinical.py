"""Clinical tables (CSV, TSV, XLSX): typed variables joined to subjects by identifier.

Column headers may carry a unit in brackets, which makes the column numeric: ``weight [kg]``.
Types are otherwise inferred: numeric when every value parses as a number, date when every value
is an ISO date (YYYY-MM-DD), categorical otherwise. Missing values: empty, ``NA``, ``N/A``, ``n/a``,
``nan``, ``null``. A column that is mostly numeric but holds a few unparseable values is an error
(it is almost always a typo), reported with its line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import bindparam, insert, select, update

from sobre.errors import InputError

from ._models import Subject, SubjectValue, Variable

ID_COLUMNS = ("subject_id", "participant_id", "PatientID", "patient_id", "subject")
MISSING = {"", "na", "n/a", "nan", "null", "none"}
_UNIT = re.compile(r"^\s*(?P<name>[^\[\]]+?)\s*\[(?P<unit>[^\]]*)\]\s*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Column:
    name: str
    kind: str  # numeric | categorical | date
    unit: str | None
    values: dict[str, float | str | None] = field(default_factory=dict)  # subject_id -> value


@dataclass
class ClinicalTable:
    path: str
    id_column: str
    columns: list[Column]
    subject_lines: dict[str, int]  # subject id -> line number in the file (1-based, header = 1)

    def map_subjects(self, fn) -> None:
        """Translate every subject id with ``fn`` (e.g. original PatientID -> keyed pseudonym), in place."""
        self.subject_lines = {fn(k): v for k, v in self.subject_lines.items()}
        for col in self.columns:
            col.values = {fn(k): v for k, v in col.values.items()}


def _read_frame(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xls"):
            return pd.read_excel(path, dtype=str, keep_default_na=False)
        sep = "\t" if suffix == ".tsv" else ","
        # blank lines are kept (as empty rows, dropped later) so that row i is on line i + 2
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                           skip_blank_lines=False)
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except Exception as exc:  # pandas/openpyxl parser errors
        raise InputError(f"table cannot be parsed ({type(exc).__name__}: {exc})", path=path,
                         expected="CSV (comma), TSV (tab) or XLSX with a header row") from None


def read_clinical(path: str | Path) -> ClinicalTable:
    """Read and type a clinical table; raises :class:`InputError` naming line and column on bad values."""
    path = Path(path)
    df = _read_frame(path)
    cols = [str(c) for c in df.columns]
    id_col = next((c for c in ID_COLUMNS if c in cols), None)
    if id_col is None:
        raise InputError("no subject identifier column", path=path, expected="one of " + ", ".join(ID_COLUMNS),
                         found=", ".join(cols[:10]) or "no columns",
                         fix="rename the column holding subject identifiers to subject_id")
    line_of = [i + 2 for i in range(len(df))]  # header = line 1 (XLSX: row numbers)
    blank = df.fillna("").astype(str).apply(lambda c: c.str.strip().eq("")).all(axis=1) if len(df.columns) \
        else []
    keep = [i for i, b in enumerate(blank) if not b]
    df = df.iloc[keep].reset_index(drop=True)
    line_of = [line_of[i] for i in keep]
    ids = [str(v).strip() for v in df[id_col]]
    lines: dict[str, int] = {}
    for i, sid in enumerate(ids):
        line = line_of[i]
        if sid.lower() in MISSING:
            raise InputError("empty subject identifier", path=path, found=f"line {line}, column {id_col}")
        if sid in lines:
            raise InputError(f"subject '{sid}' appears twice", path=path,
                             found=f"lines {lines[sid]} and {line}", fix="keep one row per subject")
        lines[sid] = line
    columns: list[Column] = []
    seen: dict[str, str] = {}
    for raw in cols:
        if raw == id_col:
            continue
        m = _UNIT.match(raw)
        name, unit = (m["name"].strip(), m["unit"].strip() or None) if m else (raw.strip(), None)
        name = re.sub(r"\W+", "_", name).strip("_").lower()
        if not _NAME.match(name) or len(name) > 100 or (unit is not None and len(unit) > 32):
            raise InputError(f"column name '{raw}' cannot be used as a variable", path=path,
                             expected="a name starting with a letter (at most 100 characters; unit at most 32)",
                             found=raw)
        if name in seen:
            raise InputError(f"columns '{seen[name]}' and '{raw}' both give the variable '{name}'", path=path,
                             fix="rename one of them")
        seen[name] = raw
        texts = [str(v).strip() for v in df[raw]]
        present = [(sid, t) for sid, t in zip(ids, texts) if t.lower() not in MISSING]
        numeric_ok, bad = [], []
        for sid, t in present:
            try:
                v = float(t)
            except ValueError:
                bad.append((sid, t))
                continue
            if math.isfinite(v):
                numeric_ok.append((sid, v))
            else:  # inf / infinity: not a measurement, and not storable in a dataset manifest
                bad.append((sid, t))
        col = Column(name=name, kind="categorical", unit=unit)
        if not present and unit is not None:  # a numeric column with no value yet
            col.kind = "numeric"
        elif present and not bad:
            col.kind = "numeric"
            col.values = dict(numeric_ok)
        elif unit is not None or (present and len(numeric_ok) >= 0.8 * len(present) and bad):
            sid, t = bad[0]
            raise InputError(
                f"unparseable value in numeric column '{raw}'", path=path,
                expected="a number (use a dot for decimals; leave empty or write NA when missing)",
                found=f"'{t}' on line {lines[sid]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""),
            )
        elif present and all(_DATE.match(t) for _, t in present):
            col.kind = "date"
            col.values = dict(present)
        else:
            col.values = dict(present)
        for sid in ids:
            col.values.setdefault(sid, None)
        columns.append(col)
    return ClinicalTable(path=str(path), id_column=id_col, columns=columns, subject_lines=lines)


def store_table(ws, table: ClinicalTable, path: str | Path) -> dict:
    """Join a read clinical table to known subjects, all rows or none (one transaction)."""
    with ws.session() as s, s.begin():
        subjects = {sid: pk for pk, sid in s.execute(select(Subject.id, Subject.subject_id)).all()}
        unknown = [sid for sid in table.subject_lines if sid not in subjects]
        if unknown:
            lines = ", ".join(f"'{u}' (line {table.subject_lines[u]})" for u in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise InputError(
                f"{len(unknown)} subject id(s) in column '{table.id_column}' are not in the catalog: "
                f"{lines}{more}", path=path,
                expected="identifiers of ingested subjects (PatientID, or sub-XX for BIDS)",
                fix="ingest the images first, or correct the identifiers; nothing from this table was stored",
            )
        vt = SubjectValue.__table__
        for col in table.columns:
            var = s.execute(select(Variable).where(Variable.name == col.name)).scalar_one_or_none()
            if var is None:
                if col.name in _base_fields() and col.name not in ("age", "sex", "bmi", "height", "weight", "site", "simulated"):
                    raise InputError(f"column '{col.name}' would shadow a built-in field", path=path,
                                     expected="a name other than: " + ", ".join(sorted(_base_fields())),
                                     fix="rename the column; nothing from this table was stored")
                var = Variable(name=col.name, kind=col.kind, unit=col.unit, source=str(path))
                s.add(var)
                s.flush()
            elif var.kind != col.kind:
                raise InputError(f"column '{col.name}' changes type", path=path,
                                 expected=f"{var.kind} (as stored from {var.source})", found=col.kind,
                                 fix="correct the column's values; nothing from this table was stored")
            existing = {spk: (pk, num, text) for pk, spk, num, text in s.execute(
                select(vt.c.id, vt.c.subject_pk, vt.c.num, vt.c.text).where(vt.c.variable_pk == var.id))}
            inserts, updates = [], []
            for sid, value in col.values.items():
                spk = subjects[sid]
                num = value if col.kind == "numeric" else None
                text = None if col.kind == "numeric" or value is None else str(value)
                old = existing.get(spk)
                if old is None:
                    inserts.append({"subject_pk": spk, "variable_pk": var.id, "num": num, "text": text})
                elif (old[1], old[2]) != (num, text):
                    updates.append({"b_id": old[0], "b_num": num, "b_text": text})
            if inserts:
                s.execute(insert(vt), inserts)
            if updates:
                s.connection().execute(update(vt).where(vt.c.id == bindparam("b_id"))
                                       .values(num=bindparam("b_num"), text=bindparam("b_text")), updates)
    return {"path": str(path), "subjects": len(table.subject_lines),
            "variables": [{"name": c.name, "kind": c.kind, "unit": c.unit} for c in table.columns]}


def _base_fields():
    from ._cohorts import BASE_FIELDS

    return BASE_FIELDS

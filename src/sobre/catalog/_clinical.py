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

from sobre.errors import InputError

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

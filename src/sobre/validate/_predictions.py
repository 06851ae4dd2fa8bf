"""Reading and checking predictions files (the format is documented in ``docs/validate.md``).

A predictions file is a CSV (or Parquet) table with one row per subject:

``subject_id``
    Required, unique, non-empty.
``label``
    Reference: 0/1 (or two values with ``positive_label``) for binary classification, class
    names for multi-class, numbers for regression.
``score``
    Model output: P(positive) or any score where higher means positive (binary), the
    predicted value (regression). Multi-class: one column ``score_<class>`` per class.
``mask_path``, ``pred_path``
    Segmentation / detection: reference and predicted mask (or probability map) files, relative
    to the folder of the predictions file.
``split``
    Optional: ``validation`` rows fit the temperature and the triage threshold; ``test`` rows
    are evaluated. Without it every row is a test row.
``site``, ``sex``, ``age``, ``manufacturer``, ...
    Optional grouping columns (``age_band`` is derived from ``age``).
``feat_*``, ``stat_*``
    Optional model features and image statistics, for the site probe and ComBat.
``dataset_version``, ``simulated``, ``run_id``
    Optional, constant per file; the same keys may come from a sidecar JSON
    (``<file stem>.json``) or a run folder's ``run.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sobre.base import sha256_file
from sobre.errors import Problem
from sobre.validate._errors import PredictionsError, SingleClassError

__all__ = ["Predictions", "read_predictions", "TASKS"]

TASKS = ("binary", "multiclass", "regression", "segmentation", "detection")
_SPLITS = {"val": "validation", "valid": "validation", "validation": "validation", "tune": "validation",
           "test": "test", "external": "test", "train": "train", "training": "train"}  # external: `sobre predict`
_META_COLUMNS = ("dataset_version", "dataset_hash", "simulated", "run_id", "model")
_POSITIVE_PAIRS = ({0, 1}, {False, True}, {-1, 1})


@dataclass
class Predictions:
    """A checked predictions table.

    Attributes
    ----------
    table : DataFrame
        All rows (``split`` normalised to ``"test"``/``"validation"``/``"train"``).
    path : Path
        The file read.
    task : str
        One of :data:`TASKS`.
    classes : list or None
        Multi-class: class names in score-column order; binary: ``[negative, positive]``.
    score_columns : list of str
    metadata : dict
        From the sidecar JSON / run.json and constant metadata columns.
    problems : list of Problem
        Warnings and notes found while reading.
    sha256 : str
        Of the predictions file.
    """

    table: pd.DataFrame
    path: Path
    task: str
    classes: list | None
    score_columns: list
    metadata: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    sha256: str = ""

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def test(self) -> pd.DataFrame:
        return self.table[self.table["split"] == "test"].reset_index(drop=True)

    @property
    def validation(self) -> pd.DataFrame:
        return self.table[self.table["split"] == "validation"].reset_index(drop=True)

    def line(self, index) -> str:
        """Where a row sits in the file (CSV line number, counting the header as line 1)."""
        if self.path.suffix.lower() == ".csv":
            return f"line {int(index) + 2}"
        return f"row {int(index) + 1}"

    def positive(self, frame: pd.DataFrame) -> np.ndarray:
        """Binary labels of ``frame`` as bool (True = positive class)."""
        return (frame["label"] == self.classes[1]).to_numpy()

    def class_index(self, frame: pd.DataFrame) -> np.ndarray:
        """Multi-class labels of ``frame`` as indices into :attr:`classes`."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return frame["label"].astype(str).map(lookup).to_numpy(dtype=int)

    def features(self, prefix: str, frame: pd.DataFrame | None = None) -> np.ndarray | None:
        frame = self.table if frame is None else frame
        cols = [c for c in frame.columns if c.startswith(prefix)]
        return frame[cols].to_numpy(dtype=float) if cols else None


def _lines(pred_path: Path, index) -> str:
    idx = list(index)
    suffix = pred_path.suffix.lower()
    fmt = (lambda i: f"line {int(i) + 2}") if suffix == ".csv" else (lambda i: f"row {int(i) + 1}")
    shown = ", ".join(fmt(i) for i in idx[:5])
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return shown + more


def _resolve(source: str | Path) -> tuple[Path, dict]:
    """Find the predictions file and the metadata of a file or run folder."""
    source = Path(source)
    meta: dict = {}
    if source.is_dir():
        for name in ("predictions.csv", "predictions.parquet", "predictions.pq"):
            if (source / name).exists():
                path = source / name
                break
        else:
            raise PredictionsError("run folder has no predictions file", path=source,
                                   expected="predictions.csv or predictions.parquet inside the folder",
                                   found=", ".join(sorted(p.name for p in source.iterdir())[:8]) or "an empty folder",
                                   fix="point to the predictions file itself, or write predictions.csv in the run "
                                       "folder")
    elif source.exists():
        path = source
    else:
        raise PredictionsError("predictions file not found", path=source, expected="a CSV or Parquet file, or a run "
                               "folder holding predictions.csv", found="no such file or folder",
                               fix="check the path")
    for candidate in (path.parent / "run.json", path.with_suffix(".json")):
        if candidate.exists() and candidate != path:
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise PredictionsError("metadata file is not valid JSON", path=candidate, expected="a JSON object",
                                       found=str(exc), fix="fix or remove the file") from exc
            if not isinstance(data, dict):
                raise PredictionsError("metadata file must hold a JSON object", path=candidate,
                                       expected="an object such as {\"run_id\": ...}", found=type(data).__name__,
                                       fix="wrap the content in an object")
            meta.update(data)
            meta.setdefault("_metadata_files", []).append(str(candidate))
    return path, meta


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError as exc:
                raise PredictionsError("cannot read Parquet: no Parquet engine installed", path=path,
                                       expected="pyarrow or fastparquet installed", found=str(exc).splitlines()[0],
                                       fix="pip install pyarrow, or save the predictions as CSV") from exc
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, dtype={"subject_id": str, "split": str}, keep_default_na=True)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", dtype={"subject_id": str, "split": str})
    except PredictionsError:
        raise
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise PredictionsError("cannot parse the predictions table", path=path, expected="a CSV table with a header "
                               "line (subject_id,label,score,...)", found=f"{type(exc).__name__}: {exc}",
                               fix="check the separator (comma) and the header line") from exc
    raise PredictionsError("unknown predictions file type", path=path, expected=".csv, .tsv or .parquet",
                           found=suffix or "no extension", fix="save the predictions as CSV")


def _rare(counts: pd.Series, n: int) -> list:
    """Values of a column seen so seldom that they look like typos (at most 5 % of the rows, and 3)."""
    return [v for v, c in counts.items() if c <= max(1, min(3, int(0.05 * n)))]


def _values_found(raw: pd.Series, path: Path, values) -> str:
    """``'x' on line 9, 'y' on lines 3, 4``: where each of ``values`` stands in ``raw``."""
    parts = []
    for v in values:
        idx = np.flatnonzero((raw == v).to_numpy())
        parts.append(f"{v!r} on {_lines(path, idx)}")
    return "; ".join(parts)


def _check_label_typos(df: pd.DataFrame, path: Path, task: str | None) -> None:
    """Refuse a reference column that is all numbers but for a few values, naming those lines.

    One mistyped value (``1x``, ``O`` for ``0``) makes pandas read the whole column as text, which
    would otherwise look like a multi-class label.
    """
    if task not in (None, "binary", "regression") or "label" not in df.columns:
        return
    raw = df["label"]
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return
    present = raw.notna() & (raw.astype(str).str.strip() != "")
    numbers = pd.to_numeric(raw.where(present), errors="coerce")
    text = present & numbers.isna()
    n = int(present.sum())
    if not text.any() or (task is None and text.sum() > max(1, min(3, int(0.05 * n)))):
        return  # text labels (or mostly text): the class checks below speak to those
    if task is None and numbers.notna().sum() < 2:
        return
    values = list(dict.fromkeys(raw[text]))
    raise PredictionsError("column 'label' holds numbers but for a few values that are not numbers", path=path,
                           expected="a number on every row (e.g. 0/1, or the reference value)",
                           found=_values_found(raw, path, values[:5]),
                           fix="correct the value on the line(s) named (a typo makes the whole column text)")


def _infer_task(df: pd.DataFrame, path: Path, positive) -> str:
    cols = set(df.columns)
    if "mask_path" in cols or "pred_path" in cols:
        return "segmentation"
    if len([c for c in df.columns if c.startswith("score_")]) >= 2:
        return "multiclass"
    if "label" not in cols:
        return "binary"  # the missing column is reported by the checks
    lab = df["label"].dropna()
    counts = lab.astype(str).value_counts()
    if positive is None and len(counts) > 2 and "score" in cols and len(counts) - len(_rare(counts, len(lab))) == 2:
        rare = _rare(counts, len(lab))
        a, b = sorted(v for v in counts.index if v not in rare)
        raise PredictionsError("column 'label' has two classes and a few rows with other values", path=path,
                               expected=f"{a!r} or {b!r} (one 'score' column: a binary task)", found=_values_found(df["label"].astype(str), path, rare[:5]),
                               fix="correct the label on the line(s) named; for multi-class write one score_<class> "
                                   "column per class")
    numeric = pd.api.types.is_numeric_dtype(lab) or pd.api.types.is_bool_dtype(lab)
    distinct = lab.unique()
    if len(distinct) <= 2 or positive is not None:
        return "binary"
    if numeric:
        values = lab.astype(float).to_numpy()
        if np.all(values == np.round(values)) and len(distinct) <= 10:
            raise PredictionsError("cannot tell the task from the columns: 'label' holds a few integer values and "
                                   "there is one 'score' column", path=path,
                                   expected="--task regression (a numeric target), or one score_<class> column per "
                                   "class for multi-class",
                                   found="label values " + ", ".join(str(v) for v in sorted(distinct)[:10]),
                                   fix="pass --task regression, or write score_<class> columns")
        return "regression"
    return "multiclass"


def _need(df: pd.DataFrame, path: Path, columns, task: str, fix: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PredictionsError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                               f"for a {task} evaluation", path=path,
                               expected=", ".join(columns), found="columns " + ", ".join(map(str, df.columns)),
                               fix=fix)


def _numeric_column(df: pd.DataFrame, col: str, path: Path, what: str) -> pd.Series:
    raw = df[col]
    if pd.api.types.is_bool_dtype(raw):
        raw = raw.astype(float)
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        idx = np.flatnonzero(bad.to_numpy())
        examples = ", ".join(f"{raw.iloc[i]!r} on {_lines(path, [i])}" for i in idx[:3])
        raise PredictionsError(f"column {col!r} holds non-numeric values", path=path, expected=what,
                               found=examples + (f" ({len(idx)} rows in all)" if len(idx) > 3 else ""),
                               fix=f"write numbers in {col!r} (a dot as decimal separator)")
    missing = values.isna()
    if missing.any():
        idx = np.flatnonzero(missing.to_numpy())
        raise PredictionsError(f"column {col!r} has empty values", path=path, expected=what,
                               found=f"empty on {_lines(path, idx)}",
                               fix="fill them in, or remove those subjects and say so: dropping subjects silently "
                                   "biases the metrics")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        idx = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        raise PredictionsError(f"column {col!r} has infinite values", path=path, expected=what,
                               found=f"inf on {_lines(path, idx)}", fix="write finite numbers")
    return values.astype(float)


def _coerce_label(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    return v


def read_predictions(
    source: str | Path,
    *,
    task: str | None = None,
    positive=None,
    expected_subjects=None,
) -> Predictions:
    """Read and check a predictions file (or a run folder holding ``predictions.csv``).

    Parameters
    ----------
    source : str or Path
        CSV/Parquet file, or a run folder with ``predictions.csv`` and optional ``run.json``.
    task : str, optional
        One of :data:`TASKS`; inferred from the columns when omitted.
    positive : optional
        The positive class of a binary label (needed unless the labels are 0/1, -1/1 or
        False/True).
    expected_subjects : iterable of str, optional
        Subjects that must all be present (also read from the metadata key
        ``expected_subjects``).

    Returns
    -------
    Predictions

    Raises
    ------
    PredictionsError
        Naming the file, the column and the rows, with what was expected and the fix.
    SingleClassError
        When a classification label has a single class (AUC, sensitivity, ... undefined).
    """
    path, meta = _resolve(source)
    df = _read_table(path)
    problems: list[Problem] = []
    if df.shape[0] == 0:
        raise PredictionsError("the predictions table has no rows", path=path, expected="one row per subject",
                               found="a header only", fix="check that the predictions were written")
    df.columns = [str(c).strip() for c in df.columns]
    if "subject_id" not in df.columns:
        raise PredictionsError("missing column 'subject_id'", path=path, expected="a subject_id column (one row per "
                               "subject)", found="columns " + ", ".join(df.columns),
                               fix="rename the identifier column to subject_id")
    sid = df["subject_id"]
    blank = sid.isna() | (sid.astype(str).str.strip() == "")
    if blank.any():
        raise PredictionsError("subject_id is empty", path=path, expected="a subject identifier on every row",
                               found=f"empty on {_lines(path, np.flatnonzero(blank.to_numpy()))}",
                               fix="fill in the identifiers or remove those rows")
    df["subject_id"] = sid.astype(str).str.strip()
    dup = df["subject_id"].duplicated(keep=False)
    if dup.any():
        first = df.loc[dup, "subject_id"].iloc[0]
        rows = np.flatnonzero((df["subject_id"] == first).to_numpy())
        raise PredictionsError("subject_id is not unique (one row per subject is expected)", path=path,
                               expected="each subject once", found=f"{first!r} on {_lines(path, rows)} "
                               f"({int(dup.sum())} duplicated rows in all)",
                               fix="keep one prediction per subject (aggregate repeated scans first)")

    # split
    if "split" in df.columns:
        raw = df["split"].astype(str).str.strip().str.lower()
        mapped = raw.map(_SPLITS)
        bad = mapped.isna()
        if bad.any():
            idx = np.flatnonzero(bad.to_numpy())
            raise PredictionsError("unknown value in column 'split'", path=path, expected="test or validation",
                                   found=f"{df['split'].iloc[idx[0]]!r} on {_lines(path, idx)}",
                                   fix="use 'validation' for rows that tune thresholds/temperature, 'test' for the "
                                       "rows to evaluate")
        df["split"] = mapped
        if (df["split"] == "train").any():
            n_train = int((df["split"] == "train").sum())
            problems.append(Problem("warning", f"{n_train} training rows ignored: metrics on training subjects are "
                                    "not validation", path=str(path)))
        if not (df["split"] == "test").any():
            raise PredictionsError("no test rows", path=path, expected="rows with split = test",
                                   found="values " + ", ".join(sorted(df["split"].unique())),
                                   fix="mark the evaluated subjects split = test")
    else:
        df["split"] = "test"

    # metadata columns constant per file
    for col in _META_COLUMNS:
        if col in df.columns:
            vals = df[col].dropna().unique()
            if len(vals) == 1:
                meta.setdefault(col, vals[0].item() if hasattr(vals[0], "item") else vals[0])
            elif len(vals) > 1:
                problems.append(Problem("warning", f"column {col!r} is not constant ({len(vals)} values); "
                                        "not used as metadata", path=str(path)))

    # expected subjects
    expected = expected_subjects if expected_subjects is not None else meta.get("expected_subjects")
    if expected is not None:
        expected = [str(s) for s in expected]
        present = set(df["subject_id"])
        missing = [s for s in expected if s not in present]
        if missing:
            shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PredictionsError(f"{len(missing)} expected subject{'s are' if len(missing) > 1 else ' is'} missing "
                                   "from the predictions", path=path,
                                   expected=f"all {len(expected)} subjects of the evaluation set",
                                   found=f"no row for {shown}",
                                   fix="add a row for every subject (a failed case is a prediction too: score it, "
                                       "or report it), or evaluate against the right subject list")

    _check_label_typos(df, path, task or meta.get("task"))
    task = task or meta.get("task") or _infer_task(df, path, positive if positive is not None
                                                   else meta.get("positive_label"))
    if task not in TASKS:
        raise PredictionsError("unknown task", path=path, expected=" or ".join(TASKS), found=repr(task),
                               fix="set --task to one of those")
    positive = positive if positive is not None else meta.get("positive_label")
    classes = None
    score_columns: list[str] = []
    evaluated = df["split"] != "train"

    if task in ("segmentation", "detection"):
        _need(df, path, ["subject_id", "mask_path", "pred_path"], task,
              "add mask_path (reference mask) and pred_path (predicted mask or probability map) columns")
        for col in ("mask_path", "pred_path"):
            empty = df[col].isna() & evaluated
            if empty.any():
                raise PredictionsError(f"column {col!r} is empty", path=path, expected="a mask file path",
                                       found=f"empty on {_lines(path, np.flatnonzero(empty.to_numpy()))}",
                                       fix="give every subject its mask files")
    elif task == "multiclass":
        score_columns = [c for c in df.columns if c.startswith("score_")]
        _need(df, path, ["subject_id", "label"], task, "add the reference label column 'label'")
        if len(score_columns) < 2:
            raise PredictionsError("multi-class evaluation needs one score column per class", path=path,
                                   expected="columns score_<class> for every class (e.g. score_normal, "
                                   "score_pneumonia)", found="columns " + ", ".join(df.columns),
                                   fix="write one score column per class, named score_<class name>")
        for c in score_columns:
            df[c] = _numeric_column(df, c, path, "numbers (probability or score of that class)")
        classes = [c[len("score_"):] for c in score_columns]
        _check_missing_label(df, path)
        labels = df["label"].map(lambda v: str(_coerce_label(v)))
        unknown = ~labels.isin(classes)
        if unknown.any():
            idx = np.flatnonzero(unknown.to_numpy())
            raise PredictionsError("label values with no matching score column", path=path,
                                   expected="labels among " + ", ".join(map(repr, classes)),
                                   found=f"{df['label'].iloc[idx[0]]!r} on {_lines(path, idx)}",
                                   fix="name score columns score_<label value>, or correct the labels")
        df["label"] = labels
        present = labels[df["split"] == "test"].unique()
        if len(present) < 2:
            raise SingleClassError("only one class is present among the test subjects: AUC and balanced accuracy "
                                   "are undefined", path=path, expected="at least two classes in column 'label'",
                                   found=f"only {present[0]!r}", fix="evaluate on a set that contains every class")
    else:
        _need(df, path, ["subject_id", "label", "score"], task,
              "add the reference 'label' and the model output 'score' (for multi-class: score_<class> columns)")
        df["score"] = _numeric_column(df, "score", path, "numbers (the model's output)")
        score_columns = ["score"]
        _check_missing_label(df, path)
        if task == "regression":
            df["label"] = _numeric_column(df, "label", path, "numbers (the reference value)")
            if df.loc[df["split"] == "test", "label"].nunique() < 2:
                raise SingleClassError("the reference value is constant: correlation is undefined", path=path,
                                       expected="at least two distinct values in 'label'",
                                       found=f"only {df['label'].iloc[0]!r}", fix="check the label column")
        else:
            classes = _binary_classes(df, path, positive)
    return Predictions(df, path, task, classes, score_columns, meta, problems, sha256_file(path))


def _check_missing_label(df: pd.DataFrame, path: Path) -> None:
    missing = df["label"].isna() & (df["split"] != "train")
    if missing.any():
        raise PredictionsError("column 'label' has empty values", path=path,
                               expected="a reference label for every evaluated subject",
                               found=f"empty on {_lines(path, np.flatnonzero(missing.to_numpy()))}",
                               fix="fill in the labels, or remove those subjects and report it")


def _binary_classes(df: pd.DataFrame, path: Path, positive) -> list:
    values = [_coerce_label(v) for v in df["label"]]
    df["label"] = values
    distinct = sorted(set(values), key=str)
    test_distinct = sorted(set(v for v, s in zip(values, df["split"]) if s == "test"), key=str)
    floats = [v for v in distinct if isinstance(v, float)]
    if floats:
        idx = [i for i, v in enumerate(values) if isinstance(v, float)]
        raise PredictionsError("column 'label' holds non-integer numbers for a classification task", path=path,
                               expected="class labels such as 0/1", found=f"{floats[0]!r} on {_lines(path, idx)}",
                               fix="use --task regression for a continuous target, or write 0/1 labels")
    if len(distinct) > 2:
        counts = pd.Series(values).astype(str).value_counts()
        rare = _rare(counts, len(values))
        where = f"; {_values_found(pd.Series(values).astype(str), path, rare[:3])}" if rare else ""
        raise PredictionsError("column 'label' has more than two values for a binary evaluation", path=path,
                               expected="two classes", found=", ".join(map(repr, distinct[:6])) + where,
                               fix="for multi-class write one score_<class> column per class; for regression "
                                   "pass --task regression")
    if positive is not None:
        pos = _coerce_label(positive)
        if isinstance(pos, str) and not any(isinstance(v, str) for v in distinct):
            try:
                pos = _coerce_label(float(pos))
            except ValueError:
                pass
        if pos not in distinct:
            raise PredictionsError("the positive class is not among the labels", path=path,
                                   expected="one of " + ", ".join(map(repr, distinct)), found=repr(positive),
                                   fix="pass --positive with one of the label values")
    else:
        pos = None
        for pair in _POSITIVE_PAIRS:
            if set(distinct) <= pair:
                pos = max(pair)
                break
        if pos is None:
            raise PredictionsError("cannot tell which label is the positive class", path=path,
                                   expected="labels 0/1 (1 = positive), or --positive naming the positive class",
                                   found="labels " + ", ".join(map(repr, distinct)),
                                   fix=f"pass --positive {distinct[-1]} (or whichever class the score predicts)")
    if len(test_distinct) < 2:
        only = test_distinct[0] if test_distinct else "none"
        raise SingleClassError("only one class is present among the test subjects: AUC, sensitivity and "
                               "specificity are undefined", path=path,
                               expected="both classes in column 'label'", found=f"only {only!r}",
                               fix="evaluate on a set that contains positive and negative subjects")
    neg = [v for v in distinct if v != pos]
    return [neg[0] if neg else None, pos]

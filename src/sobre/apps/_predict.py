"""Batch prediction: a model or an application on files, series or dataset versions → a predictions file.

:func:`predict` runs an application (a registered one by name, or a generic one around a model:
:meth:`App.for_model`) and writes, beside its per-series outputs, ``predictions.csv`` with the
columns ``sobre evaluate`` reads from runs (``subject_id``, ``series_uid``, ``split``, ``label``
where the reference is catalogued — 0/1 for binary tasks, 1 = the positive class, as in runs — ``score`` / ``score_<class>`` / ``prediction`` or ``pred_path``
for masks, grouping columns ``site``, ``sex``, ``age``) and ``predictions.json`` (task, positive
class, model identity, dataset version and hash, simulated).

``split`` says what the model saw of each row's subject. On the dataset version the model was
trained on (same content hash), each subject gets its split in the run's ``split.csv`` (the run
folder, or ``WS/runs/RUN_ID`` with ``workspace``): ``train``, ``validation`` or ``test`` — only
``test`` rows are predictions on unseen subjects; the validation subjects of a probe (fit on all
development subjects) or of a k-fold ensemble (its other members learnt from them) are ``train`` (``sobre evaluate`` ignores ``train`` rows and tunes
on ``validation`` rows); subjects of that version outside the run's split (left out by its
``data.where``) are ``external``, and when the run's split cannot be found every row is
``unknown`` (``sobre evaluate`` refuses those). On any other input (another version, files, series)
every row is ``external``: subjects the model was not trained on, as far as the dataset says;
``sobre evaluate`` reads them as test rows. With ``dicom=True`` the app's DICOM
outputs (SEG, SR, SC) are written too. All or nothing: a failure leaves no output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sobre.base import write_atomic
from sobre.apps._app import DICOM_KINDS, App, AppResult
from sobre.apps._registry import get_app, is_app

__all__ = ["predict", "PredictResult", "PREDICTIONS_FILE"]

PREDICTIONS_FILE = "predictions.csv"
_GROUPS = ("site", "sex", "age", "manufacturer")


@dataclass
class PredictResult:
    """The predictions file, its rows, and the application run that produced them."""

    path: Path
    frame: pd.DataFrame
    result: AppResult


def _app_of(source, workspace) -> App:
    if isinstance(source, App):
        return source
    if is_app(source):
        return get_app(source)
    return App.for_model(source, workspace=workspace)


def predict(source, inputs, out, *, model=None, workspace=None, dicom: bool = False, config=None,
            strict: bool = True, progress=None, compute=None) -> PredictResult:
    """Predict with a model or an application and write ``out/predictions.csv`` (see the module docstring).

    Parameters
    ----------
    source : App, app name, or model source
        A registered application's name, an :class:`App`, or a model: run folder, run id or
        ``NAME@VERSION`` with ``workspace``, ``TrainedModel``.
    inputs : files, folders, Images, series UIDs or ``NAME@vN`` (with ``workspace``)
    out : path
        New or empty folder.
    model : optional
        For an application: its model (``--model``).
    dicom : bool
        Also write the application's DICOM outputs (SEG, SR, SC); needs DICOM inputs.
    compute : sobre.base.Compute or str, optional
        Where the series are processed: a cluster's workers (each series a task; the model is sent
        once per worker), this process publishing the output. Default: the workspace's
        ``[compute]`` when a workspace is given, else here. The predictions do not depend on it.

    Raises
    ------
    InputError
        Unknown model or app, input refused by the app's rules (naming the rule), non-DICOM input
        with ``dicom``, output folder not empty. Nothing is written.
    """
    app = _app_of(source, workspace)
    cfg = app.configure(config)
    wanted = [k for k in cfg.outputs if k not in DICOM_KINDS]
    for k in ("json", "mask"):
        if k not in wanted:
            wanted.append(k)
    if dicom:
        wanted += list(DICOM_KINDS)
    holder: dict = {}

    def finish(stage: Path, result: AppResult) -> None:
        frame, sidecar = _frame(result, workspace)
        frame.to_csv(stage / PREDICTIONS_FILE, index=False)
        write_atomic(stage / "predictions.json", _dumps(sidecar))
        holder["frame"] = frame

    from sobre.base import opened

    if compute is None and workspace is not None:
        compute = workspace.settings.compute
    with opened(compute or "local") as cluster:
        result = app.run(inputs, out, model=model, workspace=workspace,
                         config=cfg.model_copy(update={"outputs": wanted}), strict=strict, progress=progress,
                         finish=finish, compute=cluster if cluster.distributed else None)
    return PredictResult(result.out / PREDICTIONS_FILE, holder["frame"], result)


def _run_split(ident: dict, workspace) -> dict[str, str] | None:
    """subject id -> split of the model's run (its ``split.csv``), None when it cannot be found."""
    import csv
    import json

    folders = [Path(ident["path"])] if ident.get("path") else []
    if workspace is not None and ident.get("run_id"):
        from sobre.learn import runs_root

        folders.append(runs_root(workspace) / str(ident["run_id"]))
    for folder in folders:
        p = folder / "split.csv"
        if p.is_file():
            with open(p, newline="") as fh:
                split = {row["subject_id"]: row["split"] for row in csv.DictReader(fh) if row.get("subject_id")}
            try:
                record = json.loads((folder / "run.json").read_text())
            except (OSError, ValueError):
                record = {}
            # a probe is fit on all development subjects, and a k-fold ensemble's other members learnt
            # from each fold's validation subjects: the saved model has trained on them
            if record.get("kind") == "probe" or int((record.get("split") or {}).get("n_folds") or 1) > 1:
                split = {k: "train" if v == "validation" else v for k, v in split.items()}
            return split
    return None


def _split_labeller(ident: dict, workspace):
    """``split(case)``: the model's own split on its training dataset version, else ``external``."""
    trained_on = (ident.get("dataset") or {}).get("content_hash")
    cache: dict = {}

    def split(case) -> str:
        if not trained_on or case.meta.get("dataset_hash") != trained_on:
            return "external"
        if "split" not in cache:
            cache["split"] = _run_split(ident, workspace)
        if cache["split"] is None:
            return "unknown"
        return cache["split"].get(str(case.subject), "external")

    return split


def _frame(result: AppResult, workspace=None) -> tuple[pd.DataFrame, dict]:
    """Rows of predictions.csv (first model of the app) and the sidecar metadata."""
    ident = result.models[0]
    kind = ident.get("task")
    split_of = _split_labeller(ident, workspace)
    role = None
    rows = []
    for c in result.cases:
        row = {"subject_id": str(c.subject or c.id), "series_uid": c.input.get("series_uid") or c.id,
               "split": split_of(c)}
        label_col = ident.get("label")
        if label_col and c.meta.get(label_col) is not None:  # the reference, written as training runs write it
            ref = c.meta[label_col]
            row["label"] = int(str(ref) == str(ident.get("positive"))) if kind == "binary" else ref
        if kind == "segmentation":
            masks = [o["path"] for o in c.outputs if o["kind"] == "mask"]
            row["pred_path"] = masks[0] if masks else ""
        else:
            role = role or next(iter(c.scores), None)
            value = c.scores.get(role)
            if kind == "binary":
                row["score"] = value
            elif kind in ("multiclass", "multilabel"):
                for k, v in (value or {}).items():
                    row[f"score_{k}"] = v
            elif kind == "regression":
                row["prediction"] = value
                row["score"] = value
        for g in _GROUPS:
            if c.meta.get(g) is not None:
                row[g] = c.meta[g]
        rows.append(row)
    df = pd.DataFrame(rows)
    dup = df["subject_id"].duplicated(keep=False)
    if dup.any():  # one row per subject: repeated scans keep their series in the id, as training runs do
        df.loc[dup, "subject_id"] = df.loc[dup, "subject_id"] + "#" + df.loc[dup, "series_uid"].astype(str)
    metas = [c.meta for c in result.cases]
    versions = {m.get("dataset_version") for m in metas}
    sidecar = {"task": kind if kind in ("binary", "multiclass", "regression", "segmentation") else None,
               "positive_label": 1 if kind == "binary" else None, "positive_class": ident.get("positive"),
               "run_id": ident.get("run_id"),
               "model": f"{ident.get('name')} {ident.get('version')}", "model_identity": ident,
               "app": result.app, "simulated": any(bool(m.get("simulated")) for m in metas)}
    if len(versions) == 1 and None not in versions:
        sidecar["dataset_version"] = versions.pop()
        sidecar["dataset_hash"] = metas[0].get("dataset_hash")
    return df, {k: v for k, v in sidecar.items() if v is not None}


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"

"""A fusion run as a model: :class:`FusionModel`, what :func:`~sobre.learn.load_model` gives for a ``fusion`` run.

:func:`~sobre.learn.fuse` records in the run's ``fusion.json`` (format ``sobre.fusion/2``) a
``model`` entry (format ``sobre.fusion-model/1``): the image run's id and the SHA-256 of its
checkpoints, the fitted :class:`~sobre.learn.TabularPrep` (variables, imputed values, means and
standard deviations, the missing-value policy) and each fitted logistic regression as plain numbers
(the scaler's means and scales, coefficients, intercept). Loading reads only that JSON and the image
run's checkpoints (tensors only): it never runs code from a file.

``predict`` scores *subjects*, one row each, as the run scored its test subjects:

* ``tabular``: the prepared variables → the tabular logistic regression;
* ``late``: the image model's P(positive) (mean over the subject's images, as ``predictions.csv``
  of the image run) and the tabular model's, as clipped logits → the combiner;
* ``feature``: the image run's encoder features (mean over the subject's images) and the prepared
  variables → one logistic regression.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sobre.base import no_progress, sha256_file
from sobre.errors import CatalogError, InputError

__all__ = ["FusionModel", "load_fusion"]


def _expit(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(x)


def _apply(lin: dict, X: np.ndarray) -> np.ndarray:
    """P(positive) of a saved logistic regression, computed as the fitted one computed it."""
    Z = (np.asarray(X, float) - np.asarray(lin["scaler_mean"], float)) / np.asarray(lin["scaler_scale"], float)
    return _expit(Z @ np.asarray(lin["coef"], float) + float(lin["intercept"]))


class FusionModel:
    """A fitted image + clinical fusion model; see :func:`~sobre.learn.load_model`.

    Attributes
    ----------
    run_id, path : the fusion run.
    kind : ``"fusion"``
    method : {"tabular", "late", "feature"}
    image_model : TrainedModel
        The image run's model (loaded with its checkpoints' SHA-256 checked).
    task : ModelTask
        The image run's binary task (label, classes, positive class): ``scores`` are P(positive).
    variables : list of str
        The clinical variables the model needs for every subject.
    tabular : TabularPrep
        The fitted imputation, indicator columns and standardisation.
    provenance : dict
        The fusion run (id, folder, dataset, config and its SHA-256, ``fusion.json``'s SHA-256) and
        ``image``: the image model's own provenance (run id, checkpoints' SHA-256, ...).
    """

    kind = "fusion"

    def __init__(self, *, run, spec: dict, image_model, provenance: dict) -> None:
        from sobre.learn._fusion import TabularPrep

        self.run_id = run.run_id
        self.path = run.path
        self.spec = spec
        self.method = spec["method"]
        self.image_model = image_model
        self.task = image_model.task
        self.tabular = TabularPrep.from_spec(spec["tabular"])
        self.variables = list(self.tabular.cfg.variables)
        self.provenance = provenance

    def __repr__(self) -> str:
        return (f"FusionModel({self.method} fusion run {self.run_id}, image run {self.image_model.run_id}, "
                f"variables {', '.join(self.variables)})")

    def features(self, *args, **kwargs):
        """Not for a fusion model: its image features are those of ``image_model`` (``image_model.features``)."""
        raise InputError(f"run {self.run_id} is a fusion run: it has no encoder of its own",
                         expected="a train, probe or pretraining run for features", found="kind fusion",
                         fix=f"use its image run {self.image_model.run_id} (model.image_model.features(images))")

    # ------------------------------------------------------------------------------ the table
    def _table(self, subjects: list[str], items: list, variables, source: str) -> tuple[pd.DataFrame, str]:
        """One row per subject (in ``subjects`` order) with ``subject_id`` and the variables."""
        from sobre.catalog import Dataset, DatasetRef

        if isinstance(variables, DatasetRef):
            variables = variables.open()
        if isinstance(variables, Dataset):
            source = f"dataset version {variables.ref}"
            table = pd.DataFrame(variables.records())
        elif isinstance(variables, pd.DataFrame):
            source = "the variables given"
            table = variables.reset_index() if "subject_id" not in variables.columns and \
                variables.index.name == "subject_id" else variables
            if "subject_id" not in table.columns:
                raise InputError("variables= needs a subject_id column (or index) to match the images' subjects",
                                 expected="a table with subject_id and " + ", ".join(self.variables),
                                 found="columns " + ", ".join(map(str, table.columns)),
                                 fix="name the subject column subject_id")
        elif isinstance(variables, Mapping):
            source = "the variables given"
            bad = [k for k, v in variables.items() if not isinstance(v, Mapping)]
            if bad:
                raise InputError("variables= as a mapping is keyed by subject: {subject_id: {variable: value}}",
                                 expected=f"e.g. {{'{subjects[0] if subjects else 'sub-001'}': "
                                          f"{{'{self.variables[0]}': 1.0}}}}",
                                 found=f"{bad[0]!r}: {type(variables[bad[0]]).__name__}",
                                 fix="pass one mapping of variables per subject, or a DataFrame with subject_id")
            table = pd.DataFrame([{**dict(v), "subject_id": k} for k, v in variables.items()])
        elif variables is None:
            table = pd.DataFrame([{**it.meta, "subject_id": it.subject} for it in items])
        else:
            raise InputError("cannot read clinical variables from this", found=type(variables).__name__,
                             expected="a DataFrame with subject_id, a mapping {subject_id: {variable: value}}, "
                                      "a dataset version, or none (the dataset version's own variables)",
                             fix="pass variables=DataFrame(...) or variables=ws.dataset('NAME@vN')")
        table = table.copy()
        table["subject_id"] = table["subject_id"].astype(str)
        table = table.drop_duplicates("subject_id")
        for v in self.variables:
            if v not in table.columns:
                from difflib import get_close_matches

                cols = [str(c) for c in table.columns if c != "subject_id"]
                near = get_close_matches(v, cols, n=1)
                raise InputError(f"fusion run {self.run_id} needs the variable '{v}': no such column in {source}"
                                 + (f"; did you mean '{near[0]}'?" if near else ""),
                                 expected="the variables " + ", ".join(self.variables) + " for every subject",
                                 found="columns: " + (", ".join(sorted(cols)) or "none"),
                                 fix="pass variables= (a DataFrame with subject_id, or {subject_id: {variable: "
                                     "value}}), or predict on a dataset version that records it")
        absent = [s for s in subjects if s not in set(table["subject_id"])]
        if absent:
            raise InputError(f"fusion run {self.run_id}: no clinical variables for {len(absent)} subject(s) in "
                             f"{source}", expected="one row per subject of the images",
                             found=", ".join(absent[:4]) + (" ..." if len(absent) > 4 else ""),
                             fix="add the subjects' rows to variables=, or predict on their dataset version")
        table = table.set_index("subject_id").loc[subjects].reset_index()
        if self.tabular.cfg.missing == "refuse":
            for v in self.variables:
                miss = table[v].isna()
                if miss.any():
                    who = table.loc[miss, "subject_id"].tolist()
                    raise InputError(f"fusion run {self.run_id}: '{v}' is missing for subject "
                                     f"{', '.join(who[:4])}{' ...' if len(who) > 4 else ''} in {source}",
                                     expected=f"a value of '{v}' for every subject (the run was fitted with "
                                              "tabular.missing = \"refuse\")",
                                     found=f"{len(who)} subject(s) without a value",
                                     fix="supply the value, or fuse again with tabular.missing = \"indicator\"")
        return table, source

    # ------------------------------------------------------------------------------ predict
    def predict(self, images, *, variables=None, series=None, covariates=None, batch_size: int = 8,
                progress=None):
        """P(positive) per subject from the subjects' images and clinical variables.

        Parameters
        ----------
        images : sobre.Image, list of Images, or a dataset version (``Dataset`` / ``DatasetRef``)
            Every image needs a subject (a dataset version's series have one; an Image's
            ``metadata["subject_id"]``); a subject's images are averaged as the image run did.
        variables : DataFrame, mapping, dataset version, optional
            The clinical variables: a table with ``subject_id`` and the variables, a mapping
            ``{subject_id: {variable: value}}``, or a dataset version. Default: the images' own
            metadata (a dataset version's frozen variables).
        series : sequence, optional
            With a dataset version: the series to use (entries, indices or uids).
        covariates : optional
            Passed to the image model (runs trained with ``model.covariates``).

        Returns
        -------
        Predictions
            One entry per subject (in order of first appearance): ``subjects``, ``scores``
            (binary P(positive)), ``series`` (the subject's series ids joined by ``;``).

        Raises
        ------
        InputError
            An image without a subject, a variable absent from the variables given (named), a
            subject without a row, a missing value when the run was fitted with ``missing =
            "refuse"`` (naming subject and variable), a non-numeric value, a variable without any
            value among two or more subjects (``absent = "refuse"``), or images unlike the image
            run's (its own checks).
        """
        from sobre.catalog import Dataset, DatasetRef
        from sobre.image import Image
        from sobre.learn._inference import Predictions

        progress = progress or no_progress
        if not isinstance(images, (Dataset, DatasetRef, Image, str, bytes, Path)) and isinstance(images, Iterable):
            images = list(images)  # read twice: subjects first, then the image model
        items = self.image_model._items(images, series)
        if not items:
            raise InputError(f"fusion run {self.run_id}: nothing to predict on", expected="one image or more",
                             found="no images")
        nosub = [it.id for it in items if it.subject is None]
        if nosub:
            raise InputError(f"fusion run {self.run_id} scores subjects: image {nosub[0]} has no subject id",
                             expected="images with metadata['subject_id'] (or a dataset version)",
                             found=f"{len(nosub)} image(s) without one",
                             fix="set img.metadata['subject_id'], or predict on a dataset version")
        subj = [str(it.subject) for it in items]
        order = list(dict.fromkeys(subj))
        src = getattr(images, "ref", None)
        source = f"dataset version {src}" if isinstance(src, str) else "the images' metadata"
        table, source = self._table(order, items, variables, source)
        self.tabular.dataset = source.removeprefix("dataset version ")  # its messages say "dataset version X"
        self.tabular.check_present(table, "subjects scored")
        T = self.tabular.transform(table)
        sp = self.spec
        if self.method == "tabular":  # no image enters: the images only say which subjects
            scores = _apply(sp["tabular_model"], T)
        elif self.method == "late":  # a subject's score: the mean over its images, as the image run's CSV
            pr = self.image_model.predict(images, series=series, covariates=covariates, batch_size=batch_size,
                                          progress=progress)
            per = pd.Series(np.asarray(pr.scores, float)).groupby(subj).mean().loc[order].to_numpy()
            from sobre.learn._fusion import _logit

            clip = float(sp["logit_clip"])
            scores = _apply(sp["combiner"], np.c_[_logit(per, clip), _logit(_apply(sp["tabular_model"], T), clip)])
        else:  # feature: the mean encoder features over a subject's images, as fuse computed them
            F = self.image_model.features(images, series=series, batch_size=batch_size, progress=progress)
            per = pd.DataFrame(np.asarray(F, float)).groupby(subj).mean().loc[order].to_numpy()
            scores = _apply(sp["feature_model"], np.c_[per, T])
        ids = pd.Series([it.id for it in items]).groupby(subj).agg(";".join).loc[order].tolist()
        return Predictions("binary", np.asarray(scores, float), list(self.task.classes), ids, order,
                           run_id=self.run_id)


# ---------------------------------------------------------------------------------------- loading
def load_fusion(run, *, workspace=None, runs_dir=None, device="cpu", precision: str = "run",
                verify: bool = True) -> FusionModel:
    """The :class:`FusionModel` of a completed fusion run (``load_model`` calls this)."""
    from sobre.learn._fusion import FUSION_MODEL_FORMAT
    from sobre.learn._inference import load_model
    from sobre.learn._runs import open_run, runs_root

    p = run.path / "fusion.json"
    image_run = (run.record.get("init") or {}).get("image_run", "its image run")
    fix = f"fuse again: `sobre fuse CONFIG.toml -w WS` with the same image_run ({image_run})"
    if not p.is_file():
        raise InputError(f"run {run.run_id} is a fusion run without fusion.json", path=p,
                         expected="fusion.json written by sobre fuse", found="no such file", fix=fix)
    recorded = (run.record.get("artifacts") or {}).get("fusion.json") or {}
    if verify and recorded.get("sha256") and sha256_file(p) != recorded["sha256"]:
        raise InputError(f"run {run.run_id}: fusion.json changed since the run recorded it", path=p,
                         expected=f"sha256 {recorded['sha256']}", found=f"sha256 {sha256_file(p)}", fix=fix)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"run {run.run_id}: fusion.json is unreadable", path=p, found=str(exc), fix=fix) from None
    spec = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        raise InputError(f"run {run.run_id} was fused before fusion runs became loadable models: fusion.json "
                         "holds what was fitted but not the model", path=p,
                         expected=f"fusion.json with a model entry ({FUSION_MODEL_FORMAT})",
                         found=f"format {doc.get('format') if isinstance(doc, dict) else None}, no model", fix=fix)
    if spec.get("format") != FUSION_MODEL_FORMAT:
        raise InputError(f"run {run.run_id}: fusion model of an unknown format", path=p,
                         expected=FUSION_MODEL_FORMAT, found=str(spec.get("format")),
                         fix="load it with the Sobre version that wrote it, or fuse again")
    root = runs_root(workspace) if workspace is not None else Path(runs_dir or run.path.parent)
    try:
        img_run = open_run(root, spec["image_run"])
    except CatalogError as exc:
        raise InputError(f"fusion run {run.run_id} needs its image run {spec['image_run']}, which is not in "
                         f"{root}", path=run.path, expected=f"run {spec['image_run']}", found=exc.what,
                         fix="restore the image run's folder beside the fusion run (or pass workspace=)") from None
    # the late combiner was fitted on the image run's own scores (its precision); the features in fp32
    prec = precision if precision != "run" else ("run" if spec["method"] != "feature" else "fp32")
    image_model = load_model(img_run, device=device, precision=prec, verify=verify)
    now = image_model.provenance.get("checkpoints") or {}
    for rel, digest in (spec.get("image_checkpoints") or {}).items():
        if now.get(rel) != digest:
            raise InputError(f"image run {img_run.run_id}: checkpoint {rel} is not the one fusion run {run.run_id} "
                             "was fitted with", path=img_run.path / rel, expected=f"sha256 {digest}",
                             found=f"sha256 {now.get(rel)}", fix="restore the image run, or fuse again")
    if image_model.task is None or image_model.task.kind != "binary":
        raise InputError(f"fusion run {run.run_id}: image run {img_run.run_id} is not a binary model",
                         path=img_run.path, expected="a binary train or probe run",
                         found=str(image_model.task and image_model.task.kind), fix=fix)
    r = run.record
    d = r.get("dataset") or {}
    provenance = {"run_id": run.run_id, "kind": "fusion", "method": spec["method"], "path": str(run.path),
                  "name": r.get("name"), "created_at": r.get("created_at"), "finished_at": r.get("finished_at"),
                  "dataset": {"ref": d.get("ref"), "content_hash": d.get("content_hash"),
                              "simulated": d.get("simulated", False)},
                  "config": r.get("config"), "config_sha256": r.get("config_sha256"), "code": r.get("code"),
                  "fusion_json_sha256": recorded.get("sha256"), "image_run": img_run.run_id,
                  "image": image_model.provenance}
    return FusionModel(run=run, spec=spec, image_model=image_model, provenance=provenance)

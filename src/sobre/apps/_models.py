"""Where an application's models come from, and how a model is identified in results and audits.

A model source is pluggable (:func:`load_model_source`):

- a ``TrainedModel`` (already loaded) or any object with a ``load()`` method returning one (a
  registry entry, a test double);
- a run folder (``WS/runs/RUN_ID``), or a run id with a workspace — through
  :func:`sobre.learn.load_model`;
- ``NAME@VERSION`` — a registered model package of the workspace, through
  ``sobre.models.Registry(ws).get(ref).load()`` (signature, trust and hashes checked on loading).

:func:`model_identity` says which model produced a result: name, version, SHA-256 of the
package (or, for a run, of its checkpoints and resolved configuration), and where it came from.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from sobre.base import canonical_json, sha256_bytes
from sobre.errors import InputError

__all__ = ["LoadedModel", "load_model_source", "model_identity"]


@dataclass
class LoadedModel:
    """A loaded model, what identifies it, and the codes its package gives its classes (if any)."""

    model: object  # sobre.learn.TrainedModel
    identity: dict
    codes: dict = field(default_factory=dict)  # class name -> (value, scheme, meaning), from a package's card

    @property
    def task(self):
        return self.model.task


def model_identity(model, entry=None) -> dict:
    """Name, version, SHA-256 and origin of a loaded ``TrainedModel`` (``entry``: its registry entry, if any).

    A registered package names itself (``entry.name``, ``.version``; ``sha256`` = its
    ``package_sha256``, also ``model_sha256``), as may ``provenance["package"]``; a model loaded from a
    run is named by its run: version = run id, SHA-256 over the checkpoint digests and the
    configuration hash recorded by the run.
    """
    prov = dict(getattr(model, "provenance", {}) or {})
    pkg = dict(prov.get("package") or {})
    if entry is not None:  # a registered package: sobre.models.ModelPackage (name, version, hashes)
        for key, attr in (("name", "name"), ("version", "version"), ("sha256", "package_sha256"),
                          ("model_sha256", "model_sha256"), ("sha256", "sha256")):
            value = getattr(entry, attr, None)
            if value and not pkg.get(key):
                pkg[key] = str(value)
    run_id = prov.get("run_id") or getattr(model, "run_id", None)
    if pkg.get("sha256"):
        source = "registry"
        digest = pkg["sha256"]
    else:
        source = "run"
        digest = sha256_bytes(canonical_json({"checkpoints": prov.get("checkpoints") or {},
                                              "config_sha256": prov.get("config_sha256")}))
    task = getattr(model, "task", None)
    return {"name": pkg.get("name") or prov.get("name") or run_id or "model",
            "version": pkg.get("version") or run_id or "0", "sha256": digest, "source": source,
            "run_id": run_id, "path": prov.get("path"), "dataset": prov.get("dataset"),
            "task": getattr(task, "kind", None), "classes": list(getattr(task, "classes", []) or []),
            "label": getattr(task, "label", None), "positive": getattr(task, "positive", None),
            "model_sha256": pkg.get("model_sha256"), "code": prov.get("code")}


def package_codes(entry) -> dict:
    """Class name -> code triple, from a registered package's model card (``outputs.codes``)."""
    try:
        codes = ((entry.card.get("sections") or {}).get("outputs") or {}).get("codes") or {}
    except (AttributeError, OSError, ValueError):
        return {}
    if not isinstance(codes, dict):
        return {}
    return {str(c): (str(v["value"]), str(v["scheme"]), str(v["meaning"])) for c, v in codes.items()
            if isinstance(v, dict) and all(v.get(k) for k in ("value", "scheme", "meaning"))}


def _registry_available() -> bool:
    try:
        return importlib.util.find_spec("sobre.models") is not None
    except (ImportError, ValueError):
        return False


def _per_series(model):
    """Applications score series one at a time: a fusion run's model scores subjects from their images
    *and* clinical variables, which they do not take."""
    if getattr(model, "kind", None) == "fusion":
        raise InputError(f"run {model.run_id} is a fusion run: it scores subjects from their images and the "
                         f"clinical variables {', '.join(model.variables)}, which applications and "
                         "`sobre predict` do not take", path=model.path,
                         expected="a train or probe run (one score per series)", found="kind fusion",
                         fix="in Python: sobre.learn.load_model(RUN, workspace=ws).predict(ws.dataset('NAME@vN')) "
                             "(variables from the dataset version, or variables=DataFrame with subject_id)")
    return model


def load_model_source(source, *, workspace=None, precision: str = "run") -> LoadedModel:
    """Load a model from any supported source (see the module docstring).

    Raises
    ------
    InputError
        Nothing by that name: no run folder, no run id in the workspace, no registered model. The
        message lists what was looked for.
    """
    from sobre.learn import TrainedModel, load_model

    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, TrainedModel):
        return LoadedModel(source, model_identity(source))
    _per_series(source)
    if hasattr(source, "load") and callable(source.load):
        model = source.load()
        return LoadedModel(model, model_identity(model, source), package_codes(source))
    if not isinstance(source, (str, Path)):
        raise InputError("unknown kind of model", expected="a run folder, a run id (with a workspace), "
                         "NAME@VERSION of a registered model, or a TrainedModel", found=type(source).__name__)
    text = str(source)
    if Path(text).is_dir():
        model = _per_series(load_model(text, precision=precision))
        return LoadedModel(model, model_identity(model))
    tried = [f"no run folder {text}"]
    if workspace is not None:
        from sobre.errors import CatalogError

        try:
            model = _per_series(load_model(text, workspace=workspace, precision=precision))
            return LoadedModel(model, model_identity(model))
        except CatalogError:
            tried.append(f"no run '{text}' in workspace {workspace.root}")
        if _registry_available():
            from sobre.errors import SobreError

            models = importlib.import_module("sobre.models")
            try:
                entry = models.Registry(workspace).get(text)
            except SobreError as exc:
                tried.append(f"no registered model {text} ({exc.what})")
            else:
                model = entry.load(precision=precision)  # verifies signature, trust and every file first
                return LoadedModel(model, model_identity(model, entry), package_codes(entry))
        else:
            tried.append("no model registry in this Sobre (sobre.models)")
    else:
        tried.append("no workspace given to look up run ids and registered models (-w WS)")
    raise InputError(f"unknown model '{text}'", expected="a run folder (WS/runs/RUN_ID), a run id with -w WS, or a "
                     "registered model NAME@VERSION", found="; ".join(tried),
                     fix="list runs with `sobre runs list -w WS` and apps with `sobre app list`")

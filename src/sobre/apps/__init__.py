"""Applications: models turned into clinical tools that accept, refuse, predict and answer in DICOM.

The SDK
    :class:`App` (rules, models, pre/post-processing, outputs), :class:`AppModel` (one model and
    what its output means), :class:`Accept` (the rules; :class:`Verdict` and :class:`Refusal` say
    why a series is refused), :class:`AppConfig` (typed run-time settings), :class:`AppResult`
    (inputs, outputs, hashes, model identities: what the service audits), :class:`AppRefusal`.
Steps
    :func:`largest_component`, :func:`remove_small`, :func:`clip_intensity` (``Image -> Image``).
Discovery
    Entry points of group ``sobre.apps`` and the built-in ``ct-lesions`` (:func:`ct_lesions`):
    :func:`list_apps`, :func:`get_app`, :func:`app_entries`.
Models
    :func:`load_model_source` (run folder, run id, registered ``NAME@VERSION``, ``TrainedModel``,
    anything with ``load()``), :func:`model_identity`.
Batch prediction
    :func:`predict` → ``predictions.csv`` for ``sobre evaluate`` (+ DICOM outputs on request).

The DICOM objects themselves (SEG, SR, SC) are written by :mod:`sobre.image`.
"""

from sobre.apps._app import (
    ABSENT, LESION_COUNT, PRESENT, PROBABILITY, RESULT_FORMAT, VOLUME, App, AppConfig, AppModel, AppRefusal, AppResult,
    CaseResult,
)
from sobre.apps._examples import ct_lesions
from sobre.apps._inputs import Case, resolve_inputs
from sobre.apps._models import LoadedModel, load_model_source, model_identity
from sobre.apps._predict import PREDICTIONS_FILE, PredictResult, predict
from sobre.apps._registry import ENTRY_POINT_GROUP, AppEntry, app_entries, get_app, is_app, list_apps
from sobre.apps._rules import Accept, Refusal, Verdict, image_facts
from sobre.apps._steps import clip_intensity, components, largest_component, remove_small, volumes_mm3

__all__ = [
    "App", "AppConfig", "AppModel", "AppResult", "CaseResult", "AppRefusal", "RESULT_FORMAT",
    "PRESENT", "ABSENT", "VOLUME", "PROBABILITY", "LESION_COUNT",
    "Accept", "Verdict", "Refusal", "image_facts",
    "largest_component", "remove_small", "clip_intensity", "components", "volumes_mm3",
    "ENTRY_POINT_GROUP", "AppEntry", "app_entries", "list_apps", "get_app", "is_app",
    "LoadedModel", "load_model_source", "model_identity",
    "Case", "resolve_inputs",
    "predict", "PredictResult", "PREDICTIONS_FILE",
    "ct_lesions",
]

"""Applications: which series they accept, their models, pre/post-processing and outputs.

An application in a few lines::

    from sobre.apps import Accept, App, AppModel
    from sobre.image import Segment

    app = App("ct-lesions", "1.0",
              accepts=Accept(modality=["CT"], dims=3, exclude_description="scout|localizer"),
              models=[AppModel("WS/runs/RUN_ID", segments=[Segment("lesion", 1)])])
    result = app.run(["/data/ct/series1"], "out/")     # SEG + SR + SC + JSON per accepted series

:meth:`App.run` judges every input against the rules first (a refused series names the rule it
breaks, and nothing is written), loads the models, then for each series: pre-processing steps →
each model's ``predict`` (the engine's own preprocessing and sliding windows) → the mask back on
the input grid → post-processing (configured largest component / smallest volume, then the app's
own steps) → findings and measurements → outputs. Everything is written into a staging folder
renamed to ``out`` at the end: a failed run leaves no partial output. The returned
:class:`AppResult` (also ``out/app-result.json``) lists inputs (series, instances, SHA-256),
outputs (path, kind, UIDs, SHA-256), model identities and the resolved configuration — what the
inference service records in its audit trail.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from sobre.base import Config, Progress, canonical_json, no_progress, sha256_bytes, sha256_file, write_atomic
from sobre.errors import InputError, SobreError
from sobre.apps._inputs import Case, resolve_inputs
from sobre.apps._models import LoadedModel, load_model_source
from sobre.apps._rules import Accept, Refusal, Verdict
from sobre.apps._steps import components, largest_component, remove_small

__all__ = ["App", "AppConfig", "AppModel", "AppResult", "CaseResult", "AppRefusal", "RESULT_FORMAT",
           "PRESENT", "ABSENT", "VOLUME", "PROBABILITY", "LESION_COUNT"]

log = logging.getLogger("sobre.apps")

RESULT_FORMAT = "sobre.app-result/1"
PRESENT = ("52101004", "SCT", "Present")
ABSENT = ("272519000", "SCT", "Absent")
VOLUME = ("118565006", "SCT", "Volume")
PROBABILITY = ("122157", "DCM", "Probability")
LESION_COUNT = ("246206008", "SCT", "Number of lesions")
LOCAL = "99SOBRE"  # private coding scheme for concepts that only the model names (class and label names)
DICOM_KINDS = ("seg", "sr", "sc")


class AppConfig(Config):
    """Run-time settings of an application (every app has these; an app may extend them)."""

    outputs: list[Literal["seg", "sr", "sc", "json", "mask"]] = Field(
        default_factory=lambda: ["seg", "sr", "sc", "json"],
        description="seg: DICOM SEG; sr: TID 1500 SR; sc: secondary capture overlays; json: result.json; "
                    "mask: the mask as NIfTI")
    segmentation_type: Literal["BINARY", "LABELMAP"] = Field("BINARY", description="SEG type; BINARY is what "
                                                             "most PACS accept")
    sc_slices: Literal["mask", "all", "middle"] = Field("mask", description="secondary capture slices")
    window: str | tuple[float, float] | None = Field(None, description="overlay window: a preset (soft-tissue, "
                                                     "lung, bone, brain, liver, mediastinum) or [centre, width]")
    threshold: float | None = Field(None, ge=0, le=1, description="operating threshold of binary findings "
                                    "(default: each model's own)")
    largest_component: bool = Field(False, description="keep only the largest connected component of each label")
    min_volume_mm3: float = Field(0.0, ge=0, description="remove connected components smaller than this")
    precision: Literal["run", "fp32", "bf16"] = Field("run", description="inference precision")
    series_number: int = Field(9001, ge=1, le=2**31 - 4, description="SEG series number (SR +1, SC +2)")

    @field_validator("window")
    @classmethod
    def _window(cls, v):
        from sobre.image import WINDOWS

        if isinstance(v, str) and v not in WINDOWS:
            raise ValueError(f"unknown window preset {v!r}; known: {', '.join(WINDOWS)}")
        if isinstance(v, tuple) and not v[1] > 0:
            raise ValueError("window width must be positive")
        return v


@dataclass
class AppModel:
    """One model of an application and what its output means.

    Parameters
    ----------
    source : optional
        Where the model comes from (see :func:`sobre.apps.load_model_source`): a run folder, a run
        id or ``NAME@VERSION`` with a workspace, a ``TrainedModel``, an object with ``load()``.
        None: given at run time (``App.run(model=...)``, ``sobre app run --model``).
    name : str
        The model's role in the app (``"lesions"``).
    segments : list of Segment, optional
        Segmentation: what each label value is (default: one segment per non-background class).
    finding : (value, scheme, meaning), optional
        Binary / multi-label: the concept the score is about (e.g. ``("52988006", "SCT", "Lesion")``);
        default: the model's label, in a local coding scheme.
    positive, negative : code
        Binary: the finding's value above / below the threshold (SCT Present / Absent).
    threshold : float
        Binary operating threshold (``AppConfig.threshold`` overrides it).
    measurement : code, optional
        Regression: the concept measured; ``unit`` its UCUM unit.
    """

    source: object = None
    name: str = "model"
    segments: list | None = None
    finding: tuple | None = None
    positive: tuple = PRESENT
    negative: tuple = ABSENT
    threshold: float = 0.5
    measurement: tuple | None = None
    unit: str = "1"


class AppRefusal(InputError):
    """An application does not accept an input series; ``verdicts`` says which rules it breaks."""

    def __init__(self, app: str, verdicts: list[Verdict], path=None) -> None:
        self.verdicts = verdicts
        first = verdicts[0]
        more = f" (and {len(verdicts) - 1} more series refused)" if len(verdicts) > 1 else ""
        r = first.refusals[0]
        super().__init__(f"app {app} does not accept series {first.series}: rule '{r.rule}'{more}", path=path,
                         expected=r.expected, found=r.found + "".join(f"; also rule '{x.rule}': {x.found}"
                                                                     for x in first.refusals[1:]),
                         fix="run it on the series it is made for (`sobre app check APP INPUT` lists every rule)")


@dataclass
class CaseResult:
    """What an app did with one input series."""

    id: str
    subject: str | None
    origin: str
    input: dict  # series_uid, study_uid, modality, instances: [{path, sha256, sop_instance_uid}]
    outputs: list = field(default_factory=list)  # [{kind, path (relative to out), sha256, UIDs}]
    findings: list = field(default_factory=list)
    measurements: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    folder: str = ""
    meta: dict = field(default_factory=dict, repr=False)  # catalogued metadata (labels, site ...): not serialised

    def to_dict(self) -> dict:
        return {"id": self.id, "subject_id": self.subject, "origin": self.origin, "folder": self.folder,
                "input": self.input, "outputs": self.outputs, "findings": self.findings,
                "measurements": self.measurements, "scores": self.scores}


@dataclass
class AppResult:
    """Everything a run of an application produced, and from what: logged by the service's audit trail."""

    app: dict
    config: dict
    models: list
    cases: list
    refused: list
    out: Path
    started_at: str
    finished_at: str = ""

    @property
    def outputs(self) -> list[dict]:
        """Every output file of every case, with its absolute path."""
        return [dict(o, path=str(self.out / o["path"]), case=c.id) for c in self.cases for o in c.outputs]

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, "app": self.app, "config": self.config, "models": self.models,
                "out": str(self.out), "started_at": self.started_at, "finished_at": self.finished_at,
                "cases": [c.to_dict() for c in self.cases], "refused": [v.to_dict() for v in self.refused]}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _local(text: str) -> tuple:
    return (str(text)[:16] or "?", LOCAL, str(text)[:64] or "?")


def _case_folder(i: int) -> str:
    return f"case-{i + 1:03d}"


def _process_case(job: tuple, item: tuple):  # runs on a cluster's workers
    """``App._process`` of one case: ``job = (app, loaded models, config, staging folder)``, ``item = (index, case)``."""
    app, loaded, cfg, stage = job
    i, case = item
    return app._process(case, loaded, cfg, stage, _case_folder(i))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("the output folder is not empty", path=out, expected="a new or empty folder",
                         found="a file" if not out.is_dir() else "files in it",
                         fix="choose another --out folder (results are never written over older ones)")


class App:
    """An application: rules, models, pre/post-processing and outputs (see the module docstring).

    Parameters
    ----------
    name, version : str
    models : AppModel or list of AppModel
    accepts : Accept, optional
        The rules; default accepts every grey-level image with a patient frame.
    preprocess, postprocess : list of callables ``Image -> Image``
    config : AppConfig, optional
        Default settings (an app may pass an instance of its own ``AppConfig`` subclass).
    description : str
    """

    def __init__(self, name: str, version: str, *, models, accepts: Accept | None = None,
                 preprocess: Sequence[Callable] = (), postprocess: Sequence[Callable] = (),
                 config: AppConfig | None = None, description: str = "") -> None:
        self.name = str(name)
        self.version = str(version)
        self.models = [models] if isinstance(models, AppModel) else list(models)
        if not self.models or not all(isinstance(m, AppModel) for m in self.models):
            raise InputError(f"app {name}: models must be AppModel objects", found=repr(models),
                             fix="App(..., models=[AppModel('WS/runs/RUN_ID')])")
        self.accepts = accepts or Accept()
        self.preprocess = list(preprocess)
        self.postprocess = list(postprocess)
        self.config = config or AppConfig()
        self.description = description

    def __repr__(self) -> str:
        return f"App({self.name} {self.version}, {len(self.models)} model(s))"

    @classmethod
    def for_model(cls, source, *, workspace=None, name: str | None = None, **config) -> App:
        """A generic app around one model: accepts what the model was trained on, outputs by task."""
        lm = load_model_source(source, workspace=workspace)
        m = lm.model
        accepts = Accept(modality=list(m.modalities) or None, modality_required=False, dims=m.spatial_dims,
                         patient_frame=False)
        kind = m.task.kind if m.task else None
        outputs = ["json", "mask"] if kind == "segmentation" else ["json"]
        app = cls(name or lm.identity["name"], lm.identity["version"], models=[AppModel(lm, name="model")],
                  accepts=accepts, config=AppConfig(outputs=outputs, **config),
                  description=f"model {lm.identity['name']} ({kind})")
        return app

    # ---------------------------------------------------------------------------- description
    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "description": self.description,
                "accepts": self.accepts.model_dump(mode="json", exclude_none=True),
                "models": [{"name": m.name, "source": None if m.source is None else str(
                    getattr(m.source, "identity", {}).get("name", m.source))} for m in self.models],
                "config": self.config.model_dump(mode="json")}

    def configure(self, overrides=None) -> AppConfig:
        """The app's configuration with ``overrides`` (a dict, or an AppConfig) applied, validated."""
        if overrides is None:
            return self.config
        if isinstance(overrides, AppConfig):
            return overrides
        cls = type(self.config)
        return cls(**{**self.config.model_dump(), **dict(overrides)})

    def check(self, image, *, dicom: bool = False, series: str | None = None, catalogued: dict | None = None) -> Verdict:
        """The rules' verdict on ``image`` (``dicom``: DICOM outputs need DICOM source instances)."""
        v = self.accepts.check(image, series, catalogued)
        if dicom and not image.metadata.get("sop_class_uid"):
            src = image.sources[0] if image.sources else "an image in memory"
            v.refusals.append(Refusal("dicom_sources", "DICOM source instances (for SEG, SR and SC outputs)",
                                      f"{Path(src).name if image.sources else src} (not DICOM)"))
        return v

    def load_models(self, model=None, *, workspace=None, precision: str = "run") -> list[LoadedModel]:
        """Load every model; ``model`` replaces the first one's source (or a dict: role name → source)."""
        sources = {}
        if isinstance(model, dict):
            sources = dict(model)
        elif model is not None:
            sources = {self.models[0].name: model}
        loaded = []
        for am in self.models:
            src = sources.get(am.name, am.source)
            if src is None:
                raise InputError(f"app {self.name} needs a model for '{am.name}'", expected="a run folder, a run id "
                                 "(with -w WS) or a registered model NAME@VERSION", found="none given",
                                 fix="pass --model (App.run(model=...))")
            loaded.append(load_model_source(src, workspace=workspace, precision=precision))
            if precision != "run":  # also for a model loaded before (App.for_model, a TrainedModel given)
                loaded[-1].model.precision = precision
            if loaded[-1].task is None:
                raise InputError(f"model for '{am.name}' is an encoder without a task", found=str(src),
                                 fix="use a train or probe run")
        return loaded

    # ------------------------------------------------------------------------------------ run
    def run(self, inputs, out, *, model=None, workspace=None, config=None, strict: bool = True,
            progress: Progress | None = None, finish: Callable | None = None, compute=None) -> AppResult:
        """Run on ``inputs`` (files, folders, Images, series UIDs or ``NAME@vN`` with a workspace).

        Parameters
        ----------
        out : path
            A new (or empty) folder: one sub-folder per accepted series, ``app-result.json``.
        model : optional
            Replaces the first model's source (or a dict role → source).
        config : dict or AppConfig, optional
            Overrides of :attr:`config`.
        strict : bool
            Refuse the whole run when any series is refused (default); otherwise process the
            accepted ones and list the others in ``AppResult.refused``.
        finish : callable, optional
            ``finish(staging_folder, result)`` writes more files before the output is published.
        compute : sobre.base.Compute, optional
            A cluster: its workers process the series (each writes its own case folder of the
            staging folder, which they must see: checked first); this process publishes the output.

        Raises
        ------
        AppRefusal
            A series breaks a rule (strict), or every series does. Nothing is written.
        InputError
            Unknown model or input, output folder not empty, ... Nothing is written.
        """
        progress = progress or no_progress
        cfg = self.configure(config)
        out = Path(out).absolute()
        _check_out(out)
        loaded = self.load_models(model, workspace=workspace, precision=cfg.precision)
        cases = resolve_inputs(inputs, workspace=workspace)
        dicom = any(k in cfg.outputs for k in DICOM_KINDS)
        verdicts = [self.check(c.image, dicom=dicom, series=c.id, catalogued=c.meta) for c in cases]
        refused = [v for v in verdicts if not v.accepted]
        if refused and (strict or len(refused) == len(cases)):
            bad = next(c for c, v in zip(cases, verdicts) if not v.accepted)
            raise AppRefusal(self.name, refused, path=bad.files[0] if bad.files else None)
        started = _now()
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            results = []
            todo = [c for c, v in zip(cases, verdicts) if v.accepted]
            if compute is not None and compute.distributed:  # the series on a cluster's workers, in order
                compute.check_shared(read=[c.files[0] for c in todo[:: max(1, len(todo) // 15)] if c.files],
                                     write=[stage])
                results = list(compute.map(_process_case, list(enumerate(todo)), shared=(self, loaded, cfg, stage),
                                           stage="cases", progress=progress))
            else:
                for i, case in enumerate(todo):
                    results.append(self._process(case, loaded, cfg, stage, _case_folder(i)))
                    progress("cases", i + 1, len(todo))
            result = AppResult(app={"name": self.name, "version": self.version},
                               config=cfg.model_dump(mode="json"), models=[lm.identity for lm in loaded],
                               cases=results, refused=refused, out=out, started_at=started, finished_at=_now())
            if finish is not None:
                finish(stage, result)
            write_atomic(stage / "app-result.json", _json(result.to_dict()))
            if out.exists():
                out.rmdir()  # empty (checked above)
            os.replace(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        log.info("app %s: %d series processed, %d refused, outputs in %s", self.name, len(results), len(refused), out)
        return result

    # ------------------------------------------------------------------------------ one series
    def _algorithm(self, loaded: list[LoadedModel]):
        from sobre.image import Algorithm

        if len(loaded) == 1:
            i = loaded[0].identity
            return Algorithm(str(i["name"]), str(i["version"]), sha256=str(i["sha256"]))
        digest = sha256_bytes(canonical_json([lm.identity["sha256"] for lm in loaded]))
        return Algorithm(self.name, self.version, sha256=digest)

    def _predict(self, lm: LoadedModel, image, case: Case):
        # covariates (model.covariates) from the catalogued metadata of the case: a dataset version's
        # frozen clinical variables, a catalogued series' record; an image file's own metadata else
        names = list(getattr(getattr(lm.model, "task", None), "covariates", None) or [])
        kw = {}
        if names and all(case.meta.get(n) is not None for n in names):
            kw["covariates"] = {n: [case.meta[n]] for n in names}
        try:
            return lm.model.predict(image, **kw)
        except SobreError as exc:
            raise type(exc)(f"series {case.id}: {exc.what}", path=exc.path, tag=exc.tag, expected=exc.expected,
                            found=exc.found, fix=exc.fix) from None

    def _segments_of(self, am: AppModel, lm: LoadedModel) -> list:
        from sobre.image import Segment

        if am.segments:
            return list(am.segments)
        out = []
        for i, c in enumerate(c for c in lm.task.classes if str(c) not in ("0", "background")):
            code = lm.codes.get(str(c))  # a registered package's card names its classes
            label = code[2] if code else (f"{am.name} {c}" if am.name != "model" else f"label {c}")
            out.append(Segment(label, int(c) if str(c).isdigit() else i + 1, type=code))
        return out

    def _process(self, case: Case, loaded: list[LoadedModel], cfg: AppConfig, stage: Path, folder: str) -> CaseResult:
        from sobre.image import Finding, Grid, Image, Measurement, resample

        img = case.image
        pre = img
        for step in self.preprocess:
            pre = step(pre)
        seg_parts = []  # (segments, mask Image on img's grid)
        findings, measurements, scores = [], [], {}
        for am, lm in zip(self.models, loaded):
            p = self._predict(lm, pre, case)
            kind = lm.task.kind
            if kind == "segmentation":
                m = p.masks[0]
                if m.spatial_shape != img.spatial_shape or not np.allclose(m.affine, img.affine, atol=1e-6):
                    m = resample(m, Grid.of(img), order="nearest")
                m = Image(np.asarray(m.array), img.affine, modality="SEG", coordinate_system=img.coordinate_system,
                          metadata={"source_series": case.id})
                steps = ([largest_component] if cfg.largest_component else []) + \
                    ([remove_small(cfg.min_volume_mm3)] if cfg.min_volume_mm3 > 0 else []) + self.postprocess
                for step in steps:
                    m = step(m)
                seg_parts.append((self._segments_of(am, lm), m))
            elif kind == "binary":
                s = float(p.scores[0])
                thr = cfg.threshold if cfg.threshold is not None else am.threshold
                name = am.finding or lm.codes.get(str(lm.task.positive)) or _local(lm.task.label or am.name)
                findings.append(Finding(name, am.positive if s >= thr else am.negative))
                measurements.append(Measurement(PROBABILITY, s, "1"))
                scores[am.name] = s
            elif kind == "multiclass":
                probs = [float(v) for v in p.scores[0]]
                k = int(np.argmax(probs))
                findings.append(Finding(am.finding or _local(lm.task.label or am.name), _local(lm.task.classes[k])))
                measurements.append(Measurement(PROBABILITY, probs[k], "1"))
                scores[am.name] = dict(zip(map(str, lm.task.classes), probs))
            elif kind == "multilabel":
                probs = [float(v) for v in p.scores[0]]
                thr = cfg.threshold if cfg.threshold is not None else am.threshold
                for c, s in zip(lm.task.classes, probs):
                    findings.append(Finding(_local(c), am.positive if s >= thr else am.negative))
                scores[am.name] = dict(zip(map(str, lm.task.classes), probs))
            else:  # regression
                v = float(p.scores[0])
                measurements.append(Measurement(am.measurement or _local(lm.task.label or am.name), v, am.unit))
                scores[am.name] = v
        segments, mask = _combine(seg_parts, img)
        if mask is not None:
            voxel = float(np.prod(img.spacing[:img.spatial_ndim]))
            arr = np.asarray(mask.array)
            for n, s in enumerate(segments, start=1):
                present = arr[..., n - 1] != 0 if arr.ndim > img.spatial_ndim else arr == s.value
                measurements.append(Measurement(VOLUME, float(present.sum()) * voxel, "mm3", segment=n))
                measurements.append(Measurement(LESION_COUNT, float(components(present)[1]), "1", segment=n))
                findings.append(Finding(s.type or ("52988006", "SCT", "Lesion"), PRESENT if present.any() else ABSENT,
                                        segment=n))
        cr = CaseResult(case.id, case.subject, case.origin, _input_record(case), folder=folder, meta=dict(case.meta),
                        findings=[_finding_dict(f, segments) for f in findings],
                        measurements=[_measurement_dict(m, segments) for m in measurements], scores=scores)
        self._write(case, cr, cfg, loaded, stage / folder, segments, mask, findings, measurements)
        return cr

    def _write(self, case, cr: CaseResult, cfg: AppConfig, loaded, where: Path, segments, mask, findings,
               measurements) -> None:
        from sobre.image import save, write_secondary_capture, write_seg, write_sr

        where.mkdir(parents=True, exist_ok=True)
        alg = self._algorithm(loaded)
        img = case.image
        written = []
        seg_out = None
        if mask is not None and "mask" in cfg.outputs:
            p = where / "mask.nii.gz"
            save(mask, p)
            written.append({"kind": "mask", "path": p, "sha256": sha256_file(p)})
        if mask is not None and "seg" in cfg.outputs:
            seg_out = write_seg(mask, img, where / "seg.dcm", segments=segments, algorithm=alg,
                                segmentation_type=cfg.segmentation_type, series_number=cfg.series_number)
            written.append(seg_out)
        if "sr" in cfg.outputs and (findings or measurements):
            if seg_out is None:  # without a SEG to point at, segment results are about the study
                findings = [replace(f, segment=None) for f in findings]
                measurements = [replace(m, segment=None) for m in measurements]
            written.append(write_sr(img, where / "sr.dcm", algorithm=alg, findings=findings,
                                    measurements=measurements, seg=seg_out, segments=segments,
                                    series_number=cfg.series_number + 1))
        if mask is not None and "sc" in cfg.outputs:
            written.extend(write_secondary_capture(img, mask, img, where / "sc", segments=segments, algorithm=alg,
                                                   slices=cfg.sc_slices, window=cfg.window,
                                                   series_number=cfg.series_number + 2))
        stage_root = where.parent
        for w in written:
            rec = w.to_dict() if hasattr(w, "to_dict") else dict(w)
            rec["path"] = Path(rec["path"]).relative_to(stage_root).as_posix()
            cr.outputs.append(rec)
        if "json" in cfg.outputs:
            p = where / "result.json"
            write_atomic(p, _json(cr.to_dict()))
            cr.outputs.append({"kind": "json", "path": p.relative_to(stage_root).as_posix(),
                               "sha256": sha256_file(p)})


def _combine(parts, img):
    """One mask for the SEG: a model's label map, or a channel stack when several models segment."""
    from sobre.image import Image

    if not parts:
        return [], None
    if len(parts) == 1:
        segments, m = parts[0]
        keep = np.isin(np.asarray(m.array), [s.value for s in segments])
        return segments, m.with_array(np.where(keep, m.array, 0).astype(np.uint8 if len(segments) < 256 else np.uint16))
    channels, segments = [], []
    for segs, m in parts:
        for s in segs:
            channels.append(np.asarray(m.array) == s.value)
            segments.append(replace(s, value=len(channels)))
    stack = np.stack(channels, -1).astype(np.uint8)
    return segments, Image(stack, img.affine, extra_axes="channel", modality="SEG",
                           coordinate_system=img.coordinate_system)


def _code_dict(c) -> dict:
    v = tuple(c)
    return {"value": v[0], "scheme": v[1], "meaning": v[2]}


def _finding_dict(f, segments) -> dict:
    seg = segments[f.segment - 1].label if f.segment else None
    return {"name": _code_dict(f.name), "value": _code_dict(f.value), "segment": seg}


def _measurement_dict(m, segments) -> dict:
    seg = segments[m.segment - 1].label if m.segment else None
    return {"name": _code_dict(m.name), "value": m.value, "unit": m.unit if isinstance(m.unit, str) else
            _code_dict(m.unit), "segment": seg}


def _input_record(case: Case) -> dict:
    """The input series: UIDs, and each file with its SHA-256 (and SOP instance UID for DICOM)."""
    from sobre.image import read_header

    meta = case.image.metadata
    instances = []
    for path in case.files:
        rec = {"path": str(path), "sha256": sha256_file(path)}
        if meta.get("sop_class_uid"):
            try:
                rec["sop_instance_uid"] = str(read_header(path).SOPInstanceUID)
            except (SobreError, AttributeError):
                rec["sop_instance_uid"] = None
        instances.append(rec)
    return {"series_uid": meta.get("series_uid"), "study_uid": meta.get("study_uid"),
            "modality": case.image.modality or meta.get("modality"), "shape": list(case.image.spatial_shape),
            "instances": instances}


def _json(obj) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"

"""The model card: one JSON document, rendered as Markdown and HTML.

Sections follow Mitchell et al. 2019 (model details, intended use, factors, metrics, evaluation data,
training data, quantitative analyses, ethical considerations, caveats and recommendations), then
inputs, outputs, human oversight and runtime needs; :data:`~sobre.models.CROSSWALK` maps them to
CLAIM 2024, TRIPOD+AI, EU AI Act art. 13 and FDA's 2025 draft guidance.

Everything comes from records: the run, the dataset version's frozen metadata, the evaluation
report, the registration options (:class:`CardInfo`) and measurements. What none of them says is
written :data:`NOT_STATED`, never guessed. Every value is escaped in HTML and Markdown.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections import Counter
from typing import Any, ClassVar

from pydantic import Field, field_validator

from sobre.base import Config
from sobre.models._crosswalk import CARD_SECTIONS, CROSSWALK, FRAMEWORKS

__all__ = ["CardInfo", "CARD_FORMAT", "NOT_STATED", "data_ranges", "render_markdown", "render_html",
           "CARD_SECTIONS"]

CARD_FORMAT = "sobre.model-card/1"
NOT_STATED = "not stated"


# ---------------------------------------------------------------------------- what users state
def _as_list(v):
    if v is None or isinstance(v, list):
        return v
    return [v]


class _Text(Config):
    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, v):
        return v.strip() or None if isinstance(v, str) else v


class DetailsInfo(_Text):
    """``[details]``: who made the model and how to reach them."""

    description: str | None = Field(None, description="one paragraph: what the model does")
    developers: str | None = Field(None, description="people or organisation that built the model")
    contact: str | None = Field(None, description="whom to contact about the model")
    license: str | None = None
    citation: str | None = None


class IntendedUseInfo(_Text):
    """``[intended_use]``: purpose, users, setting, population, contraindications, out-of-scope uses."""

    purpose: str | None = None
    users: str | None = Field(None, description="intended users (e.g. neuroradiologists)")
    setting: str | None = Field(None, description="clinical setting and place in the care pathway")
    population: str | None = Field(None, description="patients the model is meant for")
    contraindications: list[str] | None = Field(None, description="when the model must not be used")
    out_of_scope: list[str] | None = None

    lists_ = field_validator("contraindications", "out_of_scope", mode="before")(_as_list)


class DataInfo(_Text):
    """``[training_data]``: what the records cannot say about the data."""

    labelling: str | None = Field(None, description="how the labels (reference standard) were obtained, by whom")
    collection: str | None = Field(None, description="dates, eligibility, how subjects were selected")


class OutputCode(_Text):
    """One coded concept for an output class (e.g. ``scheme = "SCT"``, ``value``, ``meaning``)."""

    scheme: str
    value: str
    meaning: str


class CardInfo(_Text):
    """What the person registering a model states about it (``--card-info FILE.toml`` or options).

    Example::

        [intended_use]
        purpose = "second reader for ..."
        users = "neuroradiologists"
        contraindications = ["children", "post-operative brains"]

        [codes.patient]
        scheme = "SCT"
        value = "..."
        meaning = "..."
    """

    docs: ClassVar[str] = "docs/models.md (card information)"

    details: DetailsInfo = DetailsInfo()
    intended_use: IntendedUseInfo = IntendedUseInfo()
    training_data: DataInfo = DataInfo()
    factors: list[str] | None = Field(None, description="factors relevant to performance (Mitchell et al.)")
    ethical_considerations: list[str] | None = None
    caveats: list[str] | None = Field(None, description="added to the limits Sobre finds")
    human_oversight: str | None = Field(None, description="how people review, correct and override outputs")
    codes: dict[str, OutputCode] = Field(default_factory=dict, description="class name -> coded concept")

    lists_ = field_validator("factors", "ethical_considerations", "caveats", mode="before")(_as_list)


def stated(v) -> Any:
    """``v``, or :data:`NOT_STATED` when nothing was stated."""
    return NOT_STATED if v is None or v == [] or v == "" else v


# ------------------------------------------------------------------------------ data ranges
def _categorical(values: list) -> dict:
    present = [str(v) for v in values if v is not None and v != ""]
    return {"counts": dict(sorted(Counter(present).items())), "missing": len(values) - len(present)}


def _numeric(values: list) -> dict:
    nums = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(f):
            nums.append(f)
    if not nums:
        return {"min": None, "max": None, "median": None, "missing": len(values)}
    return {"min": min(nums), "max": max(nums), "median": statistics.median(nums), "missing": len(values) - len(nums)}


def _per_axis(rows: list) -> dict:
    rows_ok = [list(map(float, r)) for r in rows if r]
    if not rows_ok:
        return {"min": None, "max": None, "missing": len(rows)}
    n = min(len(r) for r in rows_ok)
    return {"min": [min(r[i] for r in rows_ok) for i in range(n)], "max": [max(r[i] for r in rows_ok) for i in range(n)],
            "missing": len(rows) - len(rows_ok)}


def data_ranges(series: list) -> dict:
    """What a set of dataset-version series covers, from their frozen catalog metadata.

    Parameters
    ----------
    series : list of sobre.catalog.ManifestSeries

    Returns
    -------
    dict
        ``n_series``, ``n_subjects``; categorical fields as ``{"counts": {value: n}, "missing": n}``
        (modalities, manufacturers, scanner models, sexes, sites, body parts, protocols,
        simulated); numeric fields as ``{"min", "max", "median", "missing"}`` (field strength in
        tesla, age in years); voxel size and image shape per axis ``{"min": [...], "max": [...]}``.
        Slice thickness is not catalogued: it says so.

    Examples
    --------
    >>> from sobre.catalog import ManifestSeries
    >>> s = ManifestSeries(series_uid="1", format="nifti", files=[], spacing=[1.0, 1.0, 2.0], shape=[8, 8, 4],
    ...                    metadata={"subject_id": "a", "age": 30, "sex": "F", "site": "x", "modality": "MR"})
    >>> r = data_ranges([s])
    >>> r["ages_years"]["min"], r["sexes"]["counts"], r["voxel_size_mm"]["max"]
    (30.0, {'F': 1}, [1.0, 1.0, 2.0])
    """
    meta = [dict(s.metadata) for s in series]

    def col(k):
        return [m.get(k) for m in meta]

    return {
        "n_series": len(series),
        "n_subjects": len({m.get("subject_id") for m in meta if m.get("subject_id") is not None}),
        "modalities": _categorical(col("modality")),
        "manufacturers": _categorical(col("manufacturer")),
        "scanner_models": _categorical(col("model")),
        "field_strength_t": _numeric(col("field_strength")),
        "slice_thickness_mm": NOT_STATED + " (SliceThickness is not catalogued; the voxel size's slice axis is the "
                                           "slice spacing)",
        "voxel_size_mm": _per_axis([s.spacing for s in series]),
        "image_shape": _per_axis([s.shape for s in series]),
        "ages_years": _numeric(col("age")),
        "sexes": _categorical(col("sex")),
        "sites": _categorical(col("site")),
        "body_parts": _categorical(col("body_part")),
        "protocols": _categorical(col("protocol")),
        "simulated": _categorical(["yes" if m.get("simulated") is True else "no" for m in meta]),
    }


# -------------------------------------------------------------------------------- rendering
_LABELS = {"field_strength_t": "field strength (T)", "ages_years": "age (years)", "voxel_size_mm": "voxel size (mm)",
           "slice_thickness_mm": "slice thickness (mm)", "n_series": "series", "n_subjects": "subjects",
           "sha256": "SHA-256", "model_sha256": "model SHA-256", "ci": "95% CI"}


def _label(key: str) -> str:
    return _LABELS.get(key, str(key).replace("_", " "))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "—"
    return str(v)


def _is_scalar(v) -> bool:
    return not isinstance(v, (dict, list))


def _short(v) -> str:
    """A one-line text of a small value (ranges, counts, estimates)."""
    if isinstance(v, dict):
        if set(v) >= {"value", "ci_low", "ci_high"}:
            if v.get("value") is None:
                return "undefined" + (f" ({v['note']})" if v.get("note") else "")
            return f"{_fmt(v['value'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]"
        if set(v) == {"counts", "missing"}:
            parts = [f"{k}: {n}" for k, n in v["counts"].items()]
            if not parts:
                return f"not recorded ({v['missing']} missing)"
            return ", ".join(parts) + (f"; {v['missing']} missing" if v["missing"] else "")
        if set(v) >= {"min", "max"} and set(v) <= {"min", "max", "median", "missing"}:
            if v["min"] is None:
                return f"not recorded ({v.get('missing')} missing)"
            med = f", median {_fmt(v['median'])}" if v.get("median") is not None else ""
            miss = f"; {v['missing']} missing" if v.get("missing") else ""
            lo, hi = v["min"], v["max"]
            if isinstance(lo, list):
                return f"{' × '.join(map(_fmt, lo))} to {' × '.join(map(_fmt, hi))}{miss}"
            return f"{_fmt(lo)} to {_fmt(hi)}{med}{miss}"
        return "; ".join(f"{_label(k)}: {_short(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_short(x) for x in v) if v else "none"
    return _fmt(v)


def _compact(v) -> bool:
    return _is_scalar(v) or (isinstance(v, dict) and (set(v) >= {"value", "ci_low", "ci_high"}
                                                       or set(v) == {"counts", "missing"}
                                                       or (set(v) >= {"min", "max"}
                                                           and set(v) <= {"min", "max", "median", "missing"}))) \
        or (isinstance(v, list) and all(_is_scalar(x) for x in v) and len(v) <= 8 and
            sum(len(str(x)) for x in v) < 120)


def _html_value(v, depth: int = 0) -> str:
    e = html.escape
    if _compact(v):
        return e(_short(v))
    if isinstance(v, list):
        if all(isinstance(x, dict) for x in v) and v:
            keys = list(dict.fromkeys(k for x in v for k in x))
            head = "".join(f"<th>{e(_label(k))}</th>" for k in keys)
            rows = "".join("<tr>" + "".join(f"<td>{_html_value(x.get(k), depth + 1)}</td>" for k in keys) + "</tr>"
                           for x in v)
            return f"<table><tr>{head}</tr>{rows}</table>"
        return "<ul>" + "".join(f"<li>{_html_value(x, depth + 1)}</li>" for x in v) + "</ul>"
    rows = "".join(f"<tr><th>{e(_label(k))}</th><td>{_html_value(x, depth + 1)}</td></tr>" for k, x in v.items())
    return f"<table class='kv'>{rows}</table>"


def _md_text(s: str) -> str:
    return html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_value(v, indent: str = "") -> list[str]:
    if _compact(v):
        return [indent + _md_text(_short(v))]
    out = []
    if isinstance(v, list):
        for x in v:
            if _compact(x):
                out.append(f"{indent}- {_md_text(_short(x))}")
            else:
                out.append(f"{indent}-")
                out.extend(_md_value(x, indent + "  "))
        return out
    for k, x in v.items():
        if _compact(x):
            out.append(f"{indent}- **{_md_text(_label(k))}**: {_md_text(_short(x))}")
        else:
            out.append(f"{indent}- **{_md_text(_label(k))}**:")
            out.extend(_md_value(x, indent + "  "))
    return out


def _title(card: dict) -> str:
    d = card["sections"]["model_details"]
    return f"Model card: {d.get('name')} {d.get('version')}"


def render_markdown(card: dict) -> str:
    """The card as Markdown (values escaped: no raw HTML from labels or free text)."""
    lines = [f"# {_md_text(_title(card))}", ""]
    if card.get("notice"):
        lines += [f"> {_md_text(card['notice'])}", ""]
    for key, title in CARD_SECTIONS:
        lines += [f"## {title}", ""]
        lines += _md_value(card["sections"].get(key, NOT_STATED))
        lines.append("")
    lines += ["## Cross-map to reporting guidelines and regulation", "",
              "| framework | item | title | answered in | citation |", "|---|---|---|---|---|"]
    titles = dict(CARD_SECTIONS)
    for row in card.get("crosswalk", CROSSWALK):
        where = ", ".join(titles[s] for s in row["sections"]) or "not answered by this card"
        lines.append(f"| {_md_text(row['framework'])} | {_md_text(row['item'] or '—')} | {_md_text(row['title'])} | "
                     f"{_md_text(where)} | {_md_text(row['citation'])} |")
    lines += ["", "Sources: " + "; ".join(f"{_md_text(k)}: {_md_text(v)}" for k, v in FRAMEWORKS.items()), ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;
vertical-align:top}th{background:#f4f4f4}.kv th{width:14rem}.notice{background:#fff4d6;padding:.5rem 1rem}
h2{border-bottom:1px solid #ddd;margin-top:2rem}.muted{color:#666}"""


def render_html(card: dict) -> str:
    """The card as one self-contained HTML page; every value is escaped."""
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(_title(card))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(_title(card))}</h1>"]
    if card.get("notice"):
        parts.append(f"<p class='notice'>{e(card['notice'])}</p>")
    for key, title in CARD_SECTIONS:
        parts.append(f"<h2 id='{e(key)}'>{e(title)}</h2>")
        parts.append(_html_value(card["sections"].get(key, NOT_STATED)))
    titles = dict(CARD_SECTIONS)
    parts.append("<h2 id='crosswalk'>Cross-map to reporting guidelines and regulation</h2>")
    parts.append("<p class='muted'>Which card section answers which item. 'from memory' and 'topic only' citations "
                 "are not verified against the published text: check them before relying on them.</p>")
    parts.append("<table><tr><th>framework</th><th>item</th><th>title</th><th>answered in</th><th>citation</th></tr>")
    for row in card.get("crosswalk", CROSSWALK):
        where = ", ".join(f"<a href='#{e(s)}'>{e(titles[s])}</a>" for s in row["sections"]) \
            or "not answered by this card"
        parts.append(f"<tr><td>{e(row['framework'])}</td><td>{e(row['item'] or '—')}</td><td>{e(row['title'])}</td>"
                     f"<td>{where}</td><td>{e(row['citation'])}</td></tr>")
    parts.append("</table><ul class='muted'>" + "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in FRAMEWORKS.items())
                 + "</ul></body></html>")
    return "\n".join(parts)


def card_json(card: dict) -> str:
    return json.dumps(card, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------- building
def _pick(d: dict | None, keys: tuple) -> dict:
    return {k: d[k] for k in keys if d and k in d}


_ACQUISITION = ("n_series", "modalities", "manufacturers", "scanner_models", "field_strength_t", "slice_thickness_mm",
                "voxel_size_mm", "image_shape", "protocols", "body_parts")
_POPULATION = ("n_subjects", "n_series", "ages_years", "sexes", "sites", "simulated")


def _estimates(metrics: dict | None) -> dict:
    return {k: {x: v.get(x) for x in ("value", "ci_low", "ci_high", "level", "method", "n", "note")}
            for k, v in (metrics or {}).items() if isinstance(v, dict)}


def _subgroups(sub: dict | None) -> dict:
    out = {}
    for factor, d in (sub or {}).items():
        rows = []
        for lv in d.get("levels", []):
            row = {"level": lv.get("level"), "n": lv.get("n"), "flags": ", ".join(lv.get("flags") or []) or "none",
                   "assessed": not lv.get("small")}
            for name, est in (lv.get("metrics") or {}).items():
                row[name] = est
            rows.append(row)
        out[factor] = rows
    return out


def _data_caveats(dev: dict | None, data: dict) -> list[str]:
    out = []
    if data.get("simulated") is True:
        out.append("trained on simulated data only: not evidence of clinical performance")
    elif (dev or {}).get("simulated", {}).get("counts", {}).get("yes"):
        out.append("part of the training data is simulated")
    if not dev:
        return out
    sites = dev["sites"]["counts"]
    if len(sites) == 1:
        out.append(f"trained on one site ({next(iter(sites))}): performance at other sites is unknown")
    elif not sites:
        out.append("the training sites are not recorded")
    manu = dev["manufacturers"]
    if not manu["counts"]:
        out.append(f"scanner manufacturer not recorded for any of the {manu['missing']} training series: "
                   "robustness to scanners is unknown")
    elif len(manu["counts"]) == 1:
        out.append(f"one scanner manufacturer in training ({next(iter(manu['counts']))})")
    n = dev.get("n_subjects", 0)
    if n < 100:
        out.append(f"small training set ({n} subjects)")
    return out


def build_card(*, identity: dict, record: dict, model: dict, data: dict, report: dict | None, report_note: str,
               info: CardInfo, privacy: dict, runtime: dict | None, onnx: dict | None) -> dict:
    """The card's JSON from records only (see the module docstring); ``"not stated"`` where none says."""
    cfg = record.get("config") or {}
    task = model.get("task") or {}
    dev, test = data.get("development"), data.get("test")
    rep = report or {}
    details = info.details
    use = info.intended_use
    init = (cfg.get("model") or {}).get("init_from")
    model_details = {
        "name": identity["name"], "version": identity["version"], "description": stated(details.description),
        "developers": stated(details.developers), "contact": stated(details.contact),
        "license": stated(details.license), "citation": stated(details.citation),
        "model_sha256": identity["model_sha256"],
        "integrity": f"every file of the package is listed with its SHA-256 in manifest.json, signed (Ed25519) by "
                     f"site key {identity['key_id']}",
        "registered_at": identity["created_at"],
        "run": {"id": record.get("run_id"), "kind": record.get("kind"), "created_at": record.get("created_at"),
                "finished_at": record.get("finished_at"), "seed": record.get("seed")},
        "architecture": {k: v for k, v in (cfg.get("model") or {}).items()
                         if k in ("backbone", "width", "depth", "norm", "dropout", "covariates")},
        "parameters": model.get("n_parameters"),
        "member_networks": f"{model.get('n_members')} (outputs averaged)" if (model.get("n_members") or 1) > 1 else 1,
        "initialisation": f"encoder from pretraining run {init}" if init else
        f"random (seed {record.get('seed')})",
        "training": {"optimiser": cfg.get("optim") or NOT_STATED, "selection": record.get("folds") or NOT_STATED,
                     "precision": (record.get("runtime") or {}).get("precision", NOT_STATED),
                     "resolved_configuration": "config.json"},
        "code": record.get("code") or NOT_STATED,
        "environment": {"packages": record.get("packages") or NOT_STATED, "platform": record.get("platform")
                        or NOT_STATED},
        "predetermined_changes": "none: a registered package's weights never change; a new model is a new version",
    }
    intended = {"purpose": stated(use.purpose), "users": stated(use.users), "setting": stated(use.setting),
                "population": stated(use.population), "contraindications": stated(use.contraindications),
                "out_of_scope": stated(use.out_of_scope)}
    factors = {"relevant_factors": stated(info.factors),
               "evaluated_factors": list(rep.get("subgroups") or {}) or NOT_STATED,
               "groups_in_training_data": _pick(dev, ("sites", "sexes", "ages_years")) or NOT_STATED}
    settings = rep.get("settings") or {}
    det = rep.get("details") or {}
    if report:
        metrics = {"performance_measures": list((rep.get("metrics") or {}).keys()),
                   "decision_threshold": {"threshold": det.get("threshold"), "source": det.get("threshold_source")}
                   if "threshold" in det else NOT_STATED,
                   "operating_point": {"target_sensitivity": (rep.get("triage") or {}).get("target_sensitivity"),
                                       "threshold": (rep.get("triage") or {}).get("threshold")}
                   if rep.get("triage") else NOT_STATED,
                   "uncertainty": f"{settings.get('level', 0.95):g} confidence intervals, {settings.get('ci_method')} "
                                  f"bootstrap over subjects ({settings.get('n_bootstrap')} resamples)"}
    else:
        metrics = {"performance_measures": NOT_STATED, "decision_threshold": NOT_STATED,
                   "operating_point": NOT_STATED, "uncertainty": NOT_STATED, "note": report_note}
    evaluation = {"dataset": data.get("ref") or NOT_STATED, "content_hash": data.get("content_hash") or NOT_STATED,
                  "partition": "held-out test subjects of the training dataset version (subject-level split): "
                               "internal validation" if test else NOT_STATED,
                  "split": record.get("split") or NOT_STATED,
                  "test_subjects_in_report": (rep.get("input") or {}).get("test_subjects", NOT_STATED)
                  if report else NOT_STATED,
                  "external_validation": "none recorded" if report else NOT_STATED,
                  "population": _pick(test, _POPULATION) or NOT_STATED,
                  "report": report_note}
    training = {"dataset": data.get("ref") or NOT_STATED, "content_hash": data.get("content_hash") or NOT_STATED,
                "simulated": data.get("simulated_text", NOT_STATED),
                "population": _pick(dev, _POPULATION) or NOT_STATED,
                "labels": data.get("label_counts") or NOT_STATED,
                "cohort_filter": data.get("where") or NOT_STATED,
                "labelling_process": stated(info.training_data.labelling),
                "collection": stated(info.training_data.collection),
                "missing_data": "counted per field above ('missing'); training refuses a missing label or covariate",
                "note": data.get("note") or "development data = subjects of the train and validation splits"}
    if report:
        cal = rep.get("calibration") or {}
        quant = {"metrics": _estimates(rep.get("metrics")), "subgroups": _subgroups(rep.get("subgroups")) or
                 NOT_STATED,
                 "calibration": _estimates(cal.get("metrics")) or NOT_STATED,
                 "triage": {k: v for k, v in (rep.get("triage") or {}).items()
                            if k in ("target_sensitivity", "threshold", "sensitivity", "specificity")} or NOT_STATED,
                 "sites": {k: v for k, v in (rep.get("site") or {}).items()
                           if k in ("n_sites", "subjects_per_site", "note")} or NOT_STATED,
                 "source": report_note}
    else:
        quant = {"metrics": NOT_STATED, "note": report_note}
    privacy_fact = ("the workspace de-identifies every DICOM instance on intake (DICOM PS3.15)" if privacy.get(
        "deidentify") else "the workspace does not de-identify on intake: training images may carry identifying "
        "data (the package itself holds no subject identifier)")
    ethics = {"stated": stated(info.ethical_considerations), "privacy": privacy_fact,
              "simulated_data": data.get("simulated_text", NOT_STATED)}
    caveats = list(info.caveats or []) + _data_caveats(dev, data)
    caveats.append("validated on held-out subjects of the training dataset version only; no external validation "
                   "recorded" if report else "no validation report: performance is not stated")
    caveats += [f"report: {x}" for x in rep.get("limits") or []]
    caveats.append("predict() refuses images of another dimensionality, channel count or modality than training; "
                   "images outside the training ranges above are not refused: check them")
    inputs = {"modalities": model.get("input", {}).get("modalities") or NOT_STATED,
              "spatial_dims": model.get("input", {}).get("spatial_dims"),
              "channels": model.get("input", {}).get("in_channels"),
              "network_input_shape": model.get("input", {}).get("shape") or NOT_STATED,
              "network_input_spacing_mm": model.get("input", {}).get("spacing") or "varies (not resampled)",
              "preprocessing": model.get("preprocess") or NOT_STATED,
              "covariates": task.get("covariates") or "none",
              "ranges_seen_in_training": _pick(dev, _ACQUISITION) or NOT_STATED}
    kind = task.get("kind")
    meaning = {"binary": f"score = probability of '{task.get('positive')}'",
               "multiclass": "one probability per class (sum 1)", "multilabel": "one probability per label",
               "regression": f"value of '{task.get('label')}' in its units",
               "segmentation": "a label map on the input image's grid (0 = background)"}.get(kind, NOT_STATED)
    codes = {c: (info.codes[c].model_dump() if c in info.codes else NOT_STATED) for c in task.get("classes") or []}
    outputs = {"task": kind or NOT_STATED, "reference_label": task.get("label") or NOT_STATED,
               "classes_in_score_order": task.get("classes") or NOT_STATED,
               "positive_class": task.get("positive") or NOT_STATED, "meaning": meaning,
               "codes": codes or NOT_STATED,
               "explanation": "not stated (no explanation method is recorded with the model)"}
    rt = {"hardware": "CPU (no GPU needed)",
          "measured_at_registration": runtime or NOT_STATED,
          "onnx": _onnx_summary(onnx),
          "expected_lifetime_and_maintenance": NOT_STATED}
    notice = None
    if data.get("simulated") is True:
        notice = "Trained on simulated data: for development, testing and teaching, not for clinical use."
    elif not report:
        notice = "No validation report: the performance of this model is not stated."
    return {"format": CARD_FORMAT, "notice": notice, "sections": {
        "model_details": model_details, "intended_use": intended, "factors": factors, "metrics": metrics,
        "evaluation_data": evaluation, "training_data": training, "quantitative_analyses": quant,
        "ethical_considerations": ethics, "caveats_and_recommendations": caveats, "inputs": inputs,
        "outputs": outputs, "human_oversight": {"stated": stated(info.human_oversight)}, "runtime": rt},
        "crosswalk": CROSSWALK}


def _onnx_summary(onnx: dict | None):
    if not onnx:
        return "no ONNX export (`sobre model export-onnx NAME@VERSION`)"
    lat = onnx.get("latency") or {}
    int8 = onnx.get("int8") or {}
    return {"recommended_runtime": onnx.get("recommended"),
            "check": {k: onnx["check"].get(k) for k in ("max_abs_diff", "atol", "rtol", "n", "inputs")},
            "latency_ms": {k: v for k, v in lat.items() if k.endswith("_ms")},
            "ratios": {k: v for k, v in lat.items() if "_over_" in k},
            "int8": {k: int8.get(k) for k in ("measured", "chosen", "reason") if k in int8},
            "heldout": {k: v for k, v in (onnx.get("heldout") or {}).items() if k != "measured"} or NOT_STATED,
            "machine": lat.get("machine")}


def with_onnx(card: dict, onnx: dict | None) -> dict:
    """The same card with its runtime section's ONNX entry replaced."""
    card = json.loads(json.dumps(card))
    card["sections"]["runtime"]["onnx"] = _onnx_summary(onnx)
    return card

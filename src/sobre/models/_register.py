"""``register``: a completed run becomes a signed model package in the workspace's registry.

The package is built in a hidden temporary folder beside its final place and renamed into place in
one step when complete and self-checked; an existing NAME/VERSION is never overwritten, and a
failure leaves nothing in the registry. What goes in is copied from records (the run, its dataset
version, its evaluation report) without subject identifiers or local paths.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sobre.base import SiteKey, load_config, sha256_bytes, sha256_file, validate_config, write_atomic
from sobre.errors import CatalogError, InputError, SobreError
from sobre.models._card import (
    NOT_STATED,
    CardInfo,
    _numeric,
    build_card,
    card_json,
    data_ranges,
    render_html,
    render_markdown,
)
from sobre.models._package import (
    MANIFEST,
    check_name,
    check_package,
    discard,
    model_digest,
    rename_noreplace,
    walk_files,
    write_manifest,
)

__all__ = ["register", "run_series", "write_card", "card_info"]

log = logging.getLogger("sobre.models")

#: run.json keys copied into the package (everything else, e.g. the test subjects' ids, stays behind).
_RECORD_KEYS = ("format", "run_id", "kind", "name", "status", "created_at", "finished_at", "seed", "config",
                "config_sha256", "code", "packages", "platform", "epochs", "metrics", "split", "runtime", "task",
                "task_kind", "positive_label", "classes", "model", "folds", "headline", "dataset_version",
                "dataset_hash", "simulated")
_DATASET_KEYS = ("ref", "content_hash", "simulated", "n_images", "n_subjects")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------- inputs
def card_info(info) -> CardInfo:
    """A :class:`CardInfo` from None, a dict, a TOML path or a CardInfo."""
    if info is None:
        return CardInfo()
    if isinstance(info, CardInfo):
        return info
    if isinstance(info, dict):
        return validate_config(info, CardInfo)
    return load_config(Path(info), CardInfo)


def _open_run(ws, run):
    from sobre.learn import Run, open_run

    if isinstance(run, Run):
        return run
    p = Path(str(run))
    if (p / "run.json").is_file():
        try:
            return Run(p, json.loads((p / "run.json").read_text()))
        except (OSError, ValueError) as exc:
            raise CatalogError("run record is unreadable", path=p / "run.json", found=str(exc)) from None
    return open_run(ws.layout.runs, str(run))


def _check_run(run) -> None:
    r = run.record
    if r.get("kind") not in ("train", "probe"):
        raise InputError(f"run {run.run_id} is a {r.get('kind')} run: only a trained model with a task can be "
                         "registered", path=run.path, expected="a train or probe run", found=f"kind {r.get('kind')}",
                         fix="choose a run from `sobre runs list --kind train`")
    if r.get("status") != "completed":
        hint = r.get("resume_hint")
        raise InputError(f"run {run.run_id} is not completed", path=run.path / "run.json",
                         expected="status completed", found=f"status {r.get('status')}"
                         + (f" ({r['error']})" if r.get("error") else ""),
                         fix=f"finish it first ({hint})" if hint else "train again")


def _report_of(path: Path, run) -> dict:
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError("validation report is unreadable", path=path, expected="report.json of `sobre evaluate`",
                         found=str(exc)) from None
    if not isinstance(rep, dict) or "metrics" not in rep:
        raise InputError("not a validation report", path=path, expected="report.json of `sobre evaluate`",
                         found="no metrics")
    return rep


def _matches(rep: dict, run) -> str | None:
    """Why ``rep`` is not the report of ``run`` (None when it is)."""
    rid = (rep.get("model") or {}).get("run_id")
    if rid is not None and rid != run.run_id:
        return f"report of run {rid}"
    want = ((run.record.get("artifacts") or {}).get("predictions.csv") or {}).get("sha256")
    got = (rep.get("input") or {}).get("sha256")
    if want and got and want != got:
        return f"report of another predictions file (sha256 {got[:12]}…, the run's is {want[:12]}…)"
    if rid is None and not (want and got):
        return "the report names no run and no predictions hash"
    return None


def _find_report(run, given) -> tuple[dict | None, Path | None, str]:
    """(report, its folder, a sentence saying where it came from or why there is none)."""
    if given is not None:
        p = Path(given)
        path = p / "report.json" if p.is_dir() else p
        if not path.is_file():
            raise InputError("no validation report there", path=path, expected="report.json written by "
                             "`sobre evaluate RUN --out DIR`", fix=f"run `sobre evaluate {run.path} --out DIR` first")
        rep = _report_of(path, run)
        why = _matches(rep, run)
        if why:
            raise InputError(f"this report does not evaluate run {run.run_id}", path=path,
                             expected=f"the report of run {run.run_id}", found=why,
                             fix=f"evaluate the run: `sobre evaluate {run.path} --out DIR`")
        return rep, path.parent, f"`sobre evaluate` report of run {run.run_id} ({rep.get('created')})"
    found = []
    for path in sorted([*run.path.glob("report.json"), *run.path.glob("*/report.json")]):
        try:
            rep = _report_of(path, run)
        except InputError:
            continue
        if _matches(rep, run) is None:
            found.append((str(rep.get("created") or ""), path, rep))
    if not found:
        return None, None, NOT_STATED + f" (no `sobre evaluate` report of run {run.run_id} was found in its folder " \
                                       "or given with --report)"
    _, path, rep = max(found, key=lambda t: t[0])
    return rep, path.parent, f"`sobre evaluate` report of run {run.run_id} ({rep.get('created')})"


def _split(folder: Path | None) -> dict[str, str]:
    """subject id -> split of a run folder's split.csv (empty when there is none)."""
    p = None if folder is None else Path(folder) / "split.csv"
    if p is None or not p.is_file():
        return {}
    with open(p, newline="") as fh:
        return {row["subject_id"]: row["split"] for row in csv.DictReader(fh) if row.get("subject_id")}


def run_series(ws, record: dict, run_path: Path | None) -> dict:
    """The run's dataset version and its series by split: ``{"dataset", "train", "test", "note"}``.

    ``train`` holds the series of the train and validation subjects (the development data), ``test``
    the held-out test subjects'; the run's ``data.where`` and mask rule are applied as in training.
    Missing pieces leave the entry out and say why in ``note``.
    """
    from sobre.catalog import compile_filter

    out: dict = {}
    d = record.get("dataset") or {}
    try:
        ds = ws.dataset(d.get("ref"))
    except SobreError as exc:
        out["note"] = f"dataset version {d.get('ref')} is not available here ({exc.what})"
        return out
    if ds.content_hash != d.get("content_hash"):
        out["note"] = f"dataset version {d.get('ref')} here has another content hash than the run's"
        return out
    out["dataset"] = ds
    cfg = record.get("config") or {}
    series = list(ds.series)
    where = out["data_where"] = (cfg.get("data") or {}).get("where")
    if where:
        fields = set().union(*(s.metadata.keys() for s in series)) | {"label"} if series else {"label"}
        pred = compile_filter(where, fields)
        series = [s for s in series if pred(dict(s.metadata, label=s.label))]
    mask = (cfg.get("task") or {}).get("mask")
    if mask:
        series = [s for s in series if str(s.metadata.get(mask.get("field"))) != str(mask.get("equals"))]
    split = _split(run_path)
    if not split:
        out["train"], out["test"] = series, []
        out["note"] = "the run's split is not available: development data = the whole dataset version"
        return out
    out["train"] = [s for s in series if split.get(s.subject_id) in ("train", "validation")]
    out["test"] = [s for s in series if split.get(s.subject_id) == "test"]
    out["subjects"] = set(split)
    return out


# ------------------------------------------------------------------------------- redaction
def _aliases(subjects) -> dict[str, str]:
    return {s: f"case-{i + 1:04d}" for i, s in enumerate(sorted(subjects))}


def _redact_json(obj, alias: dict, counter: list, long_re):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("subject_id", "subject") and isinstance(v, (str, int)) and str(v) in alias:
                counter[0] += 1
                out[k] = alias[str(v)]
            else:
                out[k] = _redact_json(v, alias, counter, long_re)
        return out
    if isinstance(obj, list):
        return [_redact_json(v, alias, counter, long_re) for v in obj]
    if isinstance(obj, str):
        if obj in alias:
            counter[0] += 1
            return alias[obj]
        if long_re is not None:
            new, n = long_re.subn(lambda m: alias[m.group(0)], obj)
            counter[0] += n
            return new
    return obj


def _id_regex(ids) -> re.Pattern | None:
    """Subject ids of 4 characters or more as whole tokens (shorter ones only where a field names them)."""
    long_ids = sorted((s for s in ids if len(s) >= 4), key=len, reverse=True)
    if not long_ids:
        return None
    return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, long_ids)) + r")(?![\w-])")


def _paths_in(rep: dict) -> list[str]:
    """The file paths a report names (its predictions file, metadata files, problems' files)."""
    inp = rep.get("input") or {}
    out = [inp.get("path"), *(inp.get("metadata_files") or [])]
    out += [q.get("path") for q in rep.get("problems") or [] if isinstance(q, dict)]
    return sorted({str(p) for p in out if p and "/" in str(p)}, key=len, reverse=True)


def _copy_report(rep: dict, folder: Path | None, subjects, dest: Path, roots=()) -> dict:
    """Write report.json/.html into ``dest``: subject ids replaced by case numbers, paths by file names."""
    import html as _html

    alias = _aliases(subjects)
    long_re = _id_regex(alias)
    counter = [0]
    original = sha256_file(folder / "report.json") if folder and (folder / "report.json").is_file() else None
    paths = {p: Path(p).name for p in _paths_in(rep)}
    paths.update({str(r): "<workspace>" for r in roots})
    text = json.dumps(rep, ensure_ascii=False)
    for p, name in paths.items():
        text = text.replace(json.dumps(p)[1:-1], json.dumps(name)[1:-1])
    clean = _redact_json(json.loads(text), alias, counter, long_re)
    write_atomic(dest / "report.json", json.dumps(clean, indent=1, ensure_ascii=False) + "\n")
    html_note = "no report.html beside report.json"
    if folder is not None and (folder / "report.html").is_file():
        text = (folder / "report.html").read_text(errors="replace")
        for p, name in paths.items():
            text = text.replace(_html.escape(p), _html.escape(name)).replace(p, _html.escape(name))
        if long_re is not None:
            esc = {_html.escape(k): v for k, v in alias.items()}
            esc.update(alias)
            rx = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(esc, key=len, reverse=True)))
                            + r")(?![\w-])")
            text, n = rx.subn(lambda m: esc[m.group(0)], text)
            counter[0] += n
        write_atomic(dest / "report.html", text)
        html_note = "report.html copied"
    return {"original_report_sha256": original, "subject_identifiers_replaced": counter[0],
            "html": html_note, "rule": "subject ids replaced by case numbers; file paths reduced to file names"}


# ----------------------------------------------------------------------------- measurement
_PROBE = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from sobre.learn import load_model
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
after_import = rss()
t0 = time.perf_counter()
m = load_model(sys.argv[1])
load_s = time.perf_counter() - t0
after_load = rss()
t = m.task
roi = tuple(t.patch) if t is not None and t.kind == "segmentation" and t.patch else tuple(m.input_shape)
x = torch.zeros((1, m.in_channels, *roi))
if m.channels_last and x.ndim == 5:
    x = x.contiguous(memory_format=torch.channels_last_3d)
n_cov = len(t.covariates) if t is not None else 0
cov = torch.zeros((1, n_cov)) if n_cov else None
times = []
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=m.precision == "bf16"):
    for i in range(6):
        t1 = time.perf_counter()
        for net in m.networks:
            net(x, cov) if cov is not None else net(x)
        times.append(time.perf_counter() - t1)
times = sorted(times[1:])
print(json.dumps({"after_import_mib": after_import, "after_load_mib": after_load, "peak_mib": rss(),
                  "load_s": load_s, "forward_ms_median": 1000 * times[len(times) // 2],
                  "input_shape": list(x.shape), "precision": m.precision}))
"""


def _measure(model_dir: Path, threads: int) -> dict:
    """Peak memory and latency of loading and running the model in a fresh process (cheap: a few seconds)."""
    from sobre.models._onnx import machine_info

    env = {**os.environ}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE, str(model_dir), str(threads)], capture_output=True,
                             text=True, timeout=600, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"measured": False, "reason": f"the measuring process failed ({type(exc).__name__})"}
    if res.returncode != 0:
        return {"measured": False, "reason": "the measuring process failed: " + res.stderr.strip()[-300:]}
    m = json.loads(res.stdout.strip().splitlines()[-1])
    return {"measured": True,
            "peak_memory_mib": round(m["peak_mib"], 1),
            "memory_after_imports_mib": round(m["after_import_mib"], 1),
            "load_seconds": round(m["load_s"], 3),
            "forward_ms_per_image": round(m["forward_ms_median"], 2),
            "what": f"a fresh Python process loads the package's model and runs every member network on one "
                    f"{m['input_shape']} input ({m['precision']}), median of 5 passes after one warm-up; "
                    "preprocessing not included; peak resident memory includes Python, PyTorch and Sobre "
                    "(memory_after_imports_mib)",
            "machine": {**machine_info(threads), "omp_wait_policy": env["OMP_WAIT_POLICY"]}}


# -------------------------------------------------------------------------------------- card
def write_card(folder: Path, card: dict) -> None:
    d = folder / "card"
    write_atomic(d / "card.json", card_json(card))
    write_atomic(d / "card.md", render_markdown(card))
    write_atomic(d / "card.html", render_html(card))


def _label_counts(series, task: dict) -> dict | None:
    label = (task or {}).get("label")
    if not label or task.get("kind") == "regression":
        if label:
            return {"regression target": _numeric([s.metadata.get(label) for s in series])}
        return None
    counts: dict[str, int] = {}
    for s in series:
        v = s.metadata.get(label)
        k = "missing" if v is None else str(v)
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------- register
def register(ws, run, name: str, version: str, *, report=None, info=None, onnx: bool = False, onnx_options=None,
             measure: bool = True, progress=None):
    """Build the signed package NAME@VERSION from a completed run; see :func:`sobre.models.register`."""
    from sobre.learn import load_model
    from sobre.models._registry import Registry

    progress = progress or (lambda *a: None)
    name, version = check_name(name), check_name(version, "model version")
    final = ws.layout.model_package(name, version)
    if os.path.lexists(final):
        raise CatalogError(f"model {name}@{version} is already registered", path=final,
                           fix="choose another version: a registered package is never overwritten")
    info = card_info(info)
    run = _open_run(ws, run)
    _check_run(run)
    model = load_model(run.path, verify=True)
    task = (run.record.get("model") or {}).get("task") or {}
    unknown = sorted(set(info.codes) - set(task.get("classes") or []))
    if unknown:
        raise InputError(f"codes given for unknown output classes: {', '.join(unknown)}",
                         expected="one of: " + ", ".join(task.get("classes") or []), found=", ".join(unknown),
                         fix="name the classes as the run does (`sobre runs show`)")
    rep, rep_folder, rep_note = _find_report(run, report)
    parts = run_series(ws, run.record, run.path)
    key, _ = SiteKey.load_or_create(ws.layout.site_key)

    parent = final.parent
    made = [p for p in (ws.layout.models, parent) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.building-", dir=parent))
    try:
        progress("building package", 0, 4)
        created = _now()
        r = run.record
        members = [m["checkpoint"] for m in (r.get("model") or {}).get("members", [])]
        rec = {k: r[k] for k in _RECORD_KEYS if k in r}
        rec["dataset"] = {k: v for k, v in (r.get("dataset") or {}).items() if k in _DATASET_KEYS}
        if isinstance(r.get("init"), dict):
            rec["init"] = {k: v for k, v in r["init"].items() if k != "path"}
        rec["artifacts"] = {m: r["artifacts"][m] for m in members}
        rec["packaged"] = {"by": "sobre model register", "at": created,
                           "left_out": "test-subject identifiers, local paths, files other than the weights"}
        for m in members:
            dst = tmp / "model" / m
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.path / m, dst)
            if sha256_file(dst) != r["artifacts"][m]["sha256"]:
                raise InputError(f"run {run.run_id}: {m} changed while it was copied", path=run.path / m,
                                 fix="register again")
        write_atomic(tmp / "model" / "run.json", json.dumps(rec, indent=1, default=str) + "\n")
        mrec = r.get("model") or {}
        interface = {"input": mrec.get("input"), "preprocess": mrec.get("preprocess"), "task": mrec.get("task"),
                     "covariates": mrec.get("covariates"), "precision": mrec.get("precision"),
                     "codes": {c: v.model_dump() for c, v in info.codes.items()},
                     "members": len(members)}
        write_atomic(tmp / "interface.json", json.dumps(interface, indent=1) + "\n")
        write_atomic(tmp / "config.json", json.dumps(r.get("config") or {}, indent=1, sort_keys=True) + "\n")
        d = r.get("dataset") or {}
        provenance = {"run_id": run.run_id, "run_kind": r.get("kind"), "created_at": r.get("created_at"),
                      "finished_at": r.get("finished_at"), "seed": r.get("seed"),
                      "dataset": {"ref": d.get("ref"), "content_hash": d.get("content_hash"),
                                  "simulated": d.get("simulated", False)},
                      "config_sha256": r.get("config_sha256"), "code": r.get("code"), "packages": r.get("packages"),
                      "platform": r.get("platform"), "init": rec.get("init"),
                      "checkpoints": {m: r["artifacts"][m]["sha256"] for m in members}}
        write_atomic(tmp / "provenance.json", json.dumps(provenance, indent=1) + "\n")
        redaction = None
        if rep is not None:
            subjects = set(_split(run.path)) | set((parts.get("dataset").subjects if parts.get("dataset") else []))
            redaction = _copy_report(rep, rep_folder, subjects, tmp / "validation", roots=(ws.root.resolve(), ws.root))
        progress("building package", 1, 4)
        runtime = _measure(tmp / "model", _threads()) if measure else None
        if runtime is not None:
            write_atomic(tmp / "runtime.json", json.dumps(runtime, indent=1) + "\n")
        onnx_record = None
        if onnx:
            from sobre.models._onnx import export_onnx

            onnx_record = export_onnx(tmp, lambda p: load_model(tmp / "model", precision=p), ws=ws,
                                      run_series=parts, options=_onnx_options(onnx_options), progress=progress)
            write_atomic(tmp / "onnx" / "onnx.json", json.dumps(onnx_record, indent=1) + "\n")
        progress("building package", 2, 4)
        files, _ = walk_files(tmp)
        digest = model_digest({p: {"sha256": sha256_file(f)} for p, f in files.items() if p.startswith("model/")})
        card = build_card(
            identity={"name": name, "version": version, "model_sha256": digest, "key_id": key.key_id,
                      "created_at": created},
            record=rec, model=_model_facts(model, mrec), data=_data_facts(parts, d, task),
            report=json.loads((tmp / "validation" / "report.json").read_text()) if rep is not None else None,
            report_note=rep_note, info=info, privacy={"deidentify": bool(ws.settings.privacy.deidentify)},
            runtime=runtime, onnx=onnx_record)
        write_card(tmp, card)
        header = {"name": name, "version": version, "created_at": created, "run_id": run.run_id,
                  "run_kind": r.get("kind"), "task": task.get("kind"),
                  "dataset": {"ref": d.get("ref"), "content_hash": d.get("content_hash")},
                  "report": rep_note, "report_redaction": redaction,
                  "onnx": None if onnx_record is None else {"recommended": onnx_record["recommended"]}}
        write_manifest(tmp, header, key)
        progress("building package", 3, 4)
        chk = check_package(tmp, {key.key_id: (key.public_key_pem(), "this site")})
        chk.raise_for_problems(f"the package built for {name}@{version} does not verify")
        try:
            rename_noreplace(tmp, final)
        except FileExistsError:
            raise CatalogError(f"model {name}@{version} was registered meanwhile", path=final,
                               fix="choose another version") from None
        progress("building package", 4, 4)
    except BaseException:
        discard(tmp, made)
        raise
    log.info("registered %s@%s from run %s (package sha256 %s)", name, version, run.run_id,
             sha256_bytes((final / MANIFEST).read_bytes())[:12])
    return Registry(ws).get(name, version)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _onnx_options(o):
    from sobre.models._onnx import OnnxOptions

    if o is None:
        return OnnxOptions()
    if isinstance(o, OnnxOptions):
        return o
    return validate_config(dict(o), OnnxOptions)


def _model_facts(model, mrec: dict) -> dict:
    n_params = sum(int(p.numel()) for p in model.network.parameters())
    return {"task": {**(mrec.get("task") or {}), "covariates": list(mrec.get("covariates") or [])},
            "input": mrec.get("input") or {}, "preprocess": mrec.get("preprocess"),
            "n_parameters": n_params, "n_members": len(model.networks)}


def _data_facts(parts: dict, d: dict, task: dict) -> dict:
    out = {"ref": d.get("ref"), "content_hash": d.get("content_hash"), "note": parts.get("note")}
    ds = parts.get("dataset")
    if ds is None:
        out["simulated"] = d.get("simulated")
        out["simulated_text"] = "yes (run record)" if d.get("simulated") else NOT_STATED
        return out
    dev, test = parts.get("train", []), parts.get("test", [])
    out["development"] = data_ranges(dev)
    out["test"] = data_ranges(test) if test else None
    sim = out["development"]["simulated"]["counts"]
    out["simulated"] = True if sim.get("yes") and not sim.get("no") else (False if not sim.get("yes") else "mixed")
    out["simulated_text"] = {True: "yes: every training image is simulated", False: "no simulated image",
                             "mixed": f"{sim.get('yes')} of {sum(sim.values())} training images simulated"}[
        out["simulated"]]
    out["label_counts"] = _label_counts(dev, task)
    out["where"] = {"cohort": ds.manifest.where, "run data.where": parts.get("data_where") or "none"}
    return out

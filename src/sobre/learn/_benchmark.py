"""Label efficiency: ``sobre benchmark label-efficiency CONFIG.toml`` and :func:`label_efficiency`.

For every target cohort, a held-out test set is drawn once (subject level, stratified by label and
site); for each number of labelled subjects ``N`` and each repeat a different stratified subset of
``N`` subjects is drawn from the rest, and every method is trained on *that same subset* and scored
on *that same test set*:

``scratch``          the CNN trained from random weights (early stopping on a stratified share of
                     the N subjects)
``simclr_probe``     frozen SimCLR features + logistic/ridge regression (inner CV on the N subjects)
``yaware_probe``     frozen y-aware features + logistic/ridge regression
``yaware_finetune``  the CNN started from the y-aware encoder and fine-tuned on the N subjects
``simclr_finetune``  the same from the SimCLR encoder
``classical``        atlas-ROI (or grid-block) mean intensities and tissue volumes + logistic/ridge

The two encoders are pretrained once on the unlabelled cohort (recorded as ``pretrain`` runs; an
identical completed run — same resolved settings, same data — is reused). Everything lands in the
benchmark's run folder: ``results.json`` (every repeat, summaries, timings, throughput fp32 vs bf16),
``results.md`` and ``label_efficiency.png``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sobre.base import Progress
from sobre.errors import ConfigError, InputError
from sobre.learn import _engine as E
from sobre.learn._config import (
    LabelEfficiencyConfig, PretrainConfig, SplitConfig, TargetConfig, TrainConfig, config_from, resolved,
)
from sobre.learn._data import Cohort, load_cohort, metadata_matrix, require_columns
from sobre.learn._models import build_encoder
from sobre.learn._pretrain import pretrain
from sobre.learn._runs import Run, list_runs, open_run, runs_root
from sobre.learn._splits import holdout, stratification_keys
from sobre.learn._tasks import build_task
from sobre.learn._train import _fit_fold, subject_table
from sobre.learn._transfer import atlas_on_grid, extract_features, fit_probe, grid_atlas, roi_features

__all__ = ["label_efficiency", "throughput", "BenchmarkResult"]

_log = logging.getLogger("sobre.learn")

NICE = {"scratch": "from scratch", "simclr_probe": "SimCLR + probe", "yaware_probe": "y-aware + probe",
        "yaware_finetune": "y-aware + fine-tune", "simclr_finetune": "SimCLR + fine-tune",
        "classical": "classical (ROI + linear)"}


class BenchmarkResult(dict):
    """``results.json`` as a dict, with ``run`` (the benchmark's :class:`Run`) as an attribute."""

    run: Run | None = None


# ------------------------------------------------------------------------------------ throughput
def throughput(model_cfg, shape, *, batch_size: int = 16, in_channels: int = 1, repeats: int = 2,
               precisions=("fp32", "bf16"), channels_last: bool = True) -> dict:
    """Training and inference samples/s of an encoder + linear head at ``shape``, per precision.

    Returns ``{"fp32": {"train_samples_per_s", "inference_samples_per_s"}, "bf16": {...},
    "native_bf16": bool}``; the best of ``repeats`` timed steps after one warm-up step.
    """
    out = {"native_bf16": E.cpu_bf16_support(), "shape": list(shape), "batch_size": batch_size,
           "threads": torch.get_num_threads()}
    dims = len(shape)
    for prec in precisions:
        torch.manual_seed(0)
        enc = build_encoder(model_cfg, dims, in_channels)
        model = torch.nn.Sequential(enc, torch.nn.Linear(enc.out_features, 1))
        model = E.prepare_model(model, dims, channels_last)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = E.to_device_batch(torch.randn(batch_size, in_channels, *shape), channels_last)
        y = torch.randn(batch_size, 1)
        bf16 = prec == "bf16"
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with E.autocast(bf16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        model.eval()
        inf = []
        with torch.inference_mode(), E.autocast(bf16):
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                model(x)
                if i:
                    inf.append(time.perf_counter() - t0)
        out[prec] = {"train_samples_per_s": batch_size / min(times), "inference_samples_per_s": batch_size / min(inf)}
    return out


# ------------------------------------------------------------------------------------- pretrain
def _pretrain_or_reuse(cfg: PretrainConfig, ws, cohort: Cohort, rroot: Path | None, progress: Progress,
                       reuse: bool) -> tuple[torch.nn.Module, dict]:
    want = resolved(cfg)
    if reuse and rroot is not None:
        for r in reversed(list_runs(rroot)):
            if r.get("kind") != "pretrain" or r.get("status") != "completed":
                continue
            run = open_run(rroot, r["run_id"])
            if run.record.get("config") == want and run.record["dataset"].get("content_hash") == cohort.content_hash \
                    and (run.path / "encoder.pt").exists():
                st = torch.load(run.path / "encoder.pt", map_location="cpu", weights_only=False)
                enc = build_encoder(cfg.model, cohort.spatial_dims, cohort.in_channels)
                enc.load_state_dict(st["encoder"])
                secs = sum(e.get("seconds", 0) for e in run.record.get("epochs", []))
                return enc, {"run_id": run.run_id, "reused": True, "encoder": str(run.path / "encoder.pt"),
                             "seconds": secs, "metrics": run.record.get("metrics", {})}
    t0 = time.perf_counter()
    res = pretrain(cfg, workspace=ws, cohort=cohort, runs_dir=rroot, progress=progress, record=rroot is not None)
    info = {"run_id": res.run.run_id if res.run else None, "reused": False,
            "encoder": str(res.encoder_path) if res.encoder_path else None,
            "seconds": round(time.perf_counter() - t0, 1), "metrics": res.metrics}
    return res.encoder, info


# ---------------------------------------------------------------------------------------- subsets
def _fixed_test(subjects: pd.DataFrame, t: TargetConfig, seed: int, label_kind: str) -> np.ndarray:
    if t.test_column:
        return subjects[t.test_column].astype(str).isin(t.test_values).to_numpy()
    n = len(subjects)
    if t.test_size is None or t.test_size >= n:
        raise InputError(f"target '{t.name}': test_size {t.test_size} leaves no subject to train on",
                         expected=f"fewer than {n} test subjects", found=str(t.test_size),
                         fix="lower test_size or add subjects")
    keys = stratification_keys(subjects, [c for c in ("label", "site") if c in subjects.columns],
                               label_kind=label_kind)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E57]))
    return holdout(keys, t.test_size / n, rng)


def _labelled_subset(pool: pd.DataFrame, n: int, seed: int, repeat: int, label_kind: str) -> np.ndarray:
    keys = stratification_keys(pool, [c for c in ("label", "site") if c in pool.columns], label_kind=label_kind)
    rng = np.random.default_rng(np.random.SeedSequence([seed, n, repeat, 0x5AB]))
    return np.flatnonzero(holdout(keys, n / len(pool), rng))


# -------------------------------------------------------------------------------------- the arms
def _cnn_arm(cohort: Cohort, task, rows_lab: np.ndarray, test_rows: np.ndarray, cfg: LabelEfficiencyConfig,
             t: TargetConfig, *, init: str | None, seed: int, rt: dict, progress: Progress | None = None,
             cov_raw: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Train a CNN on the labelled rows (early stopping on a stratified share), score the test rows."""
    optim = cfg.finetune_optim if init else cfg.scratch_optim
    model = cfg.model.model_copy(update={"init_from": init, "covariates": list(t.covariates),
                                         "encoder_lr_scale": cfg.finetune_encoder_lr_scale if init else 1.0,
                                         "head_warmup_epochs": cfg.finetune_head_warmup_epochs if init else 0,
                                         "head_init": cfg.finetune_head_init if init else "random",
                                         "freeze_norm": cfg.finetune_freeze_norm if init else False})
    tcfg = TrainConfig(seed=seed, data=t.data, preprocess=cfg.preprocess, task=t.task, model=model, optim=optim,
                       augment=cfg.augment, runtime=cfg.runtime.model_copy(update={"progress": False}),
                       split=SplitConfig(test_fraction=0.0, val_fraction=cfg.val_fraction))
    lab = cohort.subset(rows_lab)
    sub = subject_table(lab, _sub_task(task, rows_lab))
    keys = stratification_keys(sub, [c for c in ("label", "site") if c in sub.columns], label_kind=task.kind)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA1]))
    val = holdout(keys, cfg.val_fraction, rng)
    if task.kind == "binary":  # both classes in validation when possible (AUC for early stopping)
        for c in (0, 1):
            if not (sub["label"][val] == c).any():
                cand = np.flatnonzero((sub["label"] == c).to_numpy() & ~val)
                if len(cand) > 1:
                    val[cand[0]] = True
    tr_local = lab.rows_of(sub.loc[~val, "subject_id"])
    va_local = lab.rows_of(sub.loc[val, "subject_id"])
    from sobre.learn._tasks import refit_scaling

    cov_lab = None if cov_raw is None else cov_raw[rows_lab]
    ftask = refit_scaling(_sub_task(task, rows_lab), tr_local, cov_lab)
    t0 = time.perf_counter()
    model_, res, _ = _fit_fold(lab, ftask, tr_local, va_local, tcfg, rt=rt, ckpt_dir=None, run=None, fold=0,
                               resume=False, interrupt_after=None, progress=None, runs_dir=None, config_path=None,
                               cov_raw=cov_lab)
    fit_s = time.perf_counter() - t0
    out, sps = E.timed_inference(model_, cohort.images, test_rows, batch_size=32, bf16=rt["bf16"],
                                 channels_last=cfg.runtime.channels_last,
                                 covariates=ftask.scaled_covariates(cov_raw))
    sps_train = [h.get("train_samples_per_s") for h in res.history if h.get("train_samples_per_s")]
    return ftask.outputs(out), {"epochs": res.epochs_run, "best_epoch": res.best_epoch, "fit_seconds": round(fit_s, 2),
                                "train_samples_per_s": float(np.median(sps_train)) if sps_train else None,
                                "inference_samples_per_s": sps}


def _sub_task(task, rows):
    from sobre.learn._train import _task_subset

    return _task_subset(task, rows)


def _score(task, pred: np.ndarray, test_rows: np.ndarray) -> dict:
    m = task.metrics(pred, test_rows)
    return {"auc": m.get("auc")} if task.kind == "binary" else {"mae": m.get("mae"), "r": m.get("r")}


# ------------------------------------------------------------------------------------------ main
def label_efficiency(config, *, workspace=None, pretrain_cohort: Cohort | None = None,
                     target_cohorts: dict | None = None, runs_dir=None, progress: Progress | None = None,
                     config_path=None, reuse_pretraining: bool = True,
                     log: Callable[[str], None] | None = None) -> BenchmarkResult:
    """Run the label-efficiency benchmark; write results.json, results.md and label_efficiency.png.

    Parameters
    ----------
    config : LabelEfficiencyConfig, dict or path of a TOML file
    workspace : Workspace, optional
        Holds the dataset versions named in the config; runs go to ``WS/runs``.
    pretrain_cohort, target_cohorts : optional
        In-memory cohorts (``target_cohorts`` maps target names to cohorts) instead of dataset versions.
    reuse_pretraining : bool
        Reuse a completed pretraining run with the same resolved settings and data.
    progress : callable, optional
        ``progress(stage, done, total)``: cache building and pretraining epochs.
    log : callable, optional
        Receives one line per step (default: the ``sobre.learn`` logger, level INFO). Nothing is printed.
    """
    cfg, config_path = config_from(config, LabelEfficiencyConfig, config_path)
    t_start = time.perf_counter()
    log = log or _log.info
    progress, _ = E.reporters(cfg.runtime, progress, None)
    rt = E.setup_runtime(cfg.runtime, cfg.seed)
    rroot = runs_root(workspace) if workspace is not None else (Path(runs_dir) if runs_dir else None)
    if pretrain_cohort is None:
        if workspace is None:
            raise ConfigError("no data: give a workspace holding the dataset versions, or in-memory cohorts",
                              path=config_path)
        pretrain_cohort = load_cohort(workspace, cfg.pretrain_data, cfg.preprocess, progress=progress,
                                      config_path=config_path, threads=rt["threads"])
    run = None
    if rroot is not None:
        run = Run.create(rroot, "benchmark", config=resolved(cfg), seed=cfg.seed, name=cfg.name or "label-efficiency",
                         dataset={"ref": pretrain_cohort.source.get("dataset"),
                                  "content_hash": pretrain_cohort.content_hash,
                                  "simulated": pretrain_cohort.source.get("simulated", False)})
        run.update(runtime=rt, task_kind="label-efficiency")
    result = BenchmarkResult(format="sobre.label-efficiency/1", config=resolved(cfg), runtime=rt, targets={},
                             pretraining={}, timings={})
    result.run = run
    t_tp = time.perf_counter()
    result["throughput"] = throughput(cfg.model, pretrain_cohort.spatial_shape, batch_size=16,
                                      in_channels=pretrain_cohort.in_channels,
                                      channels_last=cfg.runtime.channels_last)
    result["timings"]["throughput_probe_s"] = round(time.perf_counter() - t_tp, 1)
    log(f"throughput at {pretrain_cohort.spatial_shape}: " + ", ".join(
        f"{p}: train {result['throughput'][p]['train_samples_per_s']:.1f}/s, "
        f"inference {result['throughput'][p]['inference_samples_per_s']:.1f}/s" for p in ("fp32", "bf16")))

    methods_all = set(cfg.methods) | {m for t in cfg.targets for m in (t.methods or [])}
    encoders: dict[str, torch.nn.Module] = {}
    for kind in ("simclr", "yaware"):
        if not any(m.startswith(kind) for m in methods_all):
            continue
        pcfg = PretrainConfig(seed=cfg.seed, name=f"{cfg.name or 'label-efficiency'}-{kind}", data=cfg.pretrain_data,
                              preprocess=cfg.preprocess, model=cfg.model.model_copy(update={"init_from": None}),
                              method=getattr(cfg, kind), optim=cfg.pretrain_optim, augment=cfg.pretrain_augment,
                              monitor=cfg.pretrain_monitor, runtime=cfg.runtime)
        pcfg = PretrainConfig.model_validate(resolved(pcfg))
        log(f"pretraining {kind} on {len(pretrain_cohort)} images ...")
        enc, info = _pretrain_or_reuse(pcfg, workspace, pretrain_cohort, rroot, progress, reuse_pretraining)
        enc = E.prepare_model(enc, pretrain_cohort.spatial_dims, cfg.runtime.channels_last)
        encoders[kind] = enc
        result["pretraining"][kind] = info
        how = f"reused run {info['run_id']}" if info["reused"] else "{:.0f} s".format(info["seconds"])
        log(f"  {kind}: {how}; " + ", ".join(f"{k} {v:.3f}" for k, v in (info.get("metrics") or {}).items()
                                              if isinstance(v, float)))
    result["timings"]["pretraining_s"] = round(sum(v["seconds"] for v in result["pretraining"].values()
                                                   if not v["reused"]), 1)

    for t in cfg.targets:
        result["targets"][t.name] = _run_target(cfg, t, workspace, (target_cohorts or {}).get(t.name), encoders,
                                                result["pretraining"], rt, progress, config_path, log)
        if run is not None:
            run.update(partial_results=_summary_only(result))
    result["timings"]["total_s"] = round(time.perf_counter() - t_start, 1)
    if run is not None:
        _write_outputs(result, run.path)
        for name in ("results.json", "results.md", "label_efficiency.png"):
            if (run.path / name).exists():
                run.add_artifact(name)
        run.record.pop("partial_results", None)
        run.finish("completed", metrics=_summary_only(result), headline=_headline(result))
    return result


def _summary_only(result: dict) -> dict:
    return {name: {"summary": t.get("summary"), "test": t.get("test")} for name, t in result["targets"].items()}


def _headline(result: dict) -> str:
    parts = []
    for name, t in result["targets"].items():
        s = t.get("summary", {})
        metric = t.get("metric")
        for n in ("100",):
            row = {m: v.get(n, {}).get("mean") for m, v in s.items()}
            if any(v is not None for v in row.values()):
                parts.append(f"{name} N=100 " + ", ".join(f"{m} {v:.3f}" for m, v in row.items() if v is not None)
                             + f" ({metric})")
    return "; ".join(parts)


def _run_target(cfg: LabelEfficiencyConfig, t: TargetConfig, ws, cohort: Cohort | None, encoders, pre_info, rt,
                progress, config_path, log) -> dict:
    t0 = time.perf_counter()
    if cohort is None:
        if ws is None:
            raise ConfigError(f"no data for target '{t.name}'", path=config_path)
        cohort = load_cohort(ws, t.data, cfg.preprocess, progress=progress, config_path=config_path,
                             threads=rt["threads"])
    load_s = time.perf_counter() - t0
    ds = cohort.source.get("dataset", t.name)
    task = build_task(t.task, cohort.table, dataset=ds, config_path=config_path)
    subjects = subject_table(cohort, task, config_path=config_path)
    if t.test_column:
        require_columns(subjects, [t.test_column], dataset=ds, key=f"targets.{t.name}.test_column",
                        config_path=config_path)
    test_mask = _fixed_test(subjects, t, cfg.seed, task.kind)
    test_subjects = subjects.loc[test_mask, "subject_id"].astype(str).tolist()
    pool = subjects.loc[~test_mask].reset_index(drop=True)
    test_rows = np.sort(cohort.rows_of(test_subjects))
    methods = t.methods or cfg.methods
    n_labels = t.n_labels or cfg.n_labels
    metric = "auc" if task.kind == "binary" else "mae"
    log(f"target {t.name}: {len(subjects)} subjects ({ds}), test {len(test_subjects)}, pool {len(pool)}; "
        f"methods {', '.join(methods)}")
    feats: dict[str, np.ndarray] = {}
    feat_speed = {}
    for kind, enc in encoders.items():
        if any(m == f"{kind}_probe" for m in methods):
            feats[kind], feat_speed[kind] = extract_features(enc, cohort.images, batch_size=32, bf16=rt["bf16"],
                                                             channels_last=cfg.runtime.channels_last)
    if "classical" in methods:
        if cfg.baseline.atlas:
            atlas = atlas_on_grid(cfg.baseline.atlas, cfg.preprocess, cohort.spatial_shape)
        else:
            atlas = grid_atlas(cohort.spatial_shape, cfg.baseline.grid[: cohort.spatial_dims])
        vox = float(np.prod(cfg.preprocess.spacing)) if cfg.preprocess.spacing else 1.0
        feats["classical"], roi_names = roi_features(cohort.images, atlas, cfg.baseline, voxel_volume=vox)
    cov_raw = None
    if t.covariates:
        cov_raw = metadata_matrix(cohort.table, t.covariates, dataset=ds, key=f"targets.{t.name}.covariates",
                                  config_path=config_path)
        feats = {k: np.c_[v, cov_raw] for k, v in feats.items()}
    y = task.targets if task.kind != "regression" else task.raw
    rows_by_subject = {s: cohort.rows_of([s]) for s in subjects["subject_id"].astype(str)}
    records = []
    skipped = []
    for n in n_labels:
        if n > len(pool):
            skipped.append({"n": n, "reason": f"only {len(pool)} subjects outside the test set"})
            log(f"  N={n}: skipped (only {len(pool)} subjects outside the test set)")
            continue
        for r in range(cfg.repeats):
            idx = _labelled_subset(pool, n, cfg.seed, r, task.kind)
            subs = pool.loc[idx, "subject_id"].astype(str).tolist()
            rows_lab = np.sort(np.concatenate([rows_by_subject[s] for s in subs]))
            if task.kind == "binary" and len(np.unique(y[rows_lab])) < 2:
                skipped.append({"n": n, "repeat": r, "reason": "one class only"})
                continue
            line = []
            for m in methods:
                t1 = time.perf_counter()
                info: dict = {}
                if m in ("simclr_probe", "yaware_probe", "classical"):
                    key = m.removesuffix("_probe")
                    X = feats[key]
                    p = fit_probe(X[rows_lab], y[rows_lab], task.kind, seed=cfg.seed + r).predict(X[test_rows])
                    info = {"n_features": int(X.shape[1])}
                elif m == "scratch":
                    p, info = _cnn_arm(cohort, task, rows_lab, test_rows, cfg, t, init=None, seed=cfg.seed + r,
                                       rt=rt, progress=progress, cov_raw=cov_raw)
                else:  # *_finetune
                    kind = m.removesuffix("_finetune")
                    enc_path = pre_info.get(kind, {}).get("encoder")
                    if not enc_path:
                        raise ConfigError(f"method {m} needs a recorded {kind} encoder (a workspace or runs_dir)",
                                          path=config_path)
                    p, info = _cnn_arm(cohort, task, rows_lab, test_rows, cfg, t, init=enc_path, seed=cfg.seed + r,
                                       rt=rt, progress=progress, cov_raw=cov_raw)
                sc = _score(task, p, test_rows)
                rec = {"n": n, "repeat": r, "method": m, **sc, "seconds": round(time.perf_counter() - t1, 2), **info}
                records.append(rec)
                line.append(f"{m} {sc[metric]:.3f}" if sc[metric] is not None else f"{m} -")
            log(f"  N={n} repeat {r}: " + ", ".join(line))
    df = pd.DataFrame(records)
    summary: dict = {}
    if len(df):
        for m, g in df.groupby("method"):
            summary[m] = {}
            for n, gg in g.groupby("n"):
                v = gg[metric].dropna().to_numpy(float)
                summary[m][str(int(n))] = {"mean": float(v.mean()) if len(v) else None,
                                           "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                                           "min": float(v.min()) if len(v) else None,
                                           "max": float(v.max()) if len(v) else None, "repeats": int(len(v))}
    checks = _checks(summary, metric, t)
    cnn = df[df["method"].isin(["scratch", "yaware_finetune", "simclr_finetune"])] if len(df) else df
    return {"dataset": ds, "content_hash": cohort.content_hash, "task": task.kind, "metric": metric,
            "covariates": list(t.covariates),
            "label": t.task.label, "n_subjects": len(subjects), "n_test": len(test_subjects), "n_pool": len(pool),
            "test_subjects": test_subjects, "records": records, "summary": summary, "skipped": skipped,
            "checks": checks, "feature_samples_per_s": feat_speed,
            "cnn_train_samples_per_s": float(cnn["train_samples_per_s"].median()) if len(cnn) else None,
            "cnn_inference_samples_per_s": float(cnn["inference_samples_per_s"].median()) if len(cnn) else None,
            "seconds": round(time.perf_counter() - t0, 1), "load_seconds": round(load_s, 1)}


def _checks(summary: dict, metric: str, t: TargetConfig) -> dict:
    """The goals of the issue, measured (never enforced): differences of means at N = 100."""
    out = {}
    get = lambda m, n: (summary.get(m, {}).get(str(n)) or {}).get("mean")  # noqa: E731
    if metric == "auc":
        ya, sc, si = get("yaware_probe", 100), get("scratch", 100), get("simclr_probe", 100)
        if ya is not None and sc is not None:
            out["yaware_probe_minus_scratch_at_100"] = ya - sc
        if ya is not None and si is not None:
            out["yaware_probe_minus_simclr_probe_at_100"] = ya - si
        s400 = get("scratch", 400)
        if s400 is not None:
            out["scratch_at_400"] = s400
    return out


# ------------------------------------------------------------------------------------------ output
def _write_outputs(result: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (folder / "results.md").write_text(markdown(result))
    try:
        plot(result, folder / "label_efficiency.png")
    except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the numbers
        (folder / "plot_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def markdown(result: dict) -> str:
    """The results as markdown tables: mean ± SD [min–max] per method and N, then checks and timings."""
    lines = ["# Label efficiency", ""]
    tp = result.get("throughput") or {}
    if tp:
        lines += [f"Throughput of the CNN at {tuple(tp.get('shape', []))} (batch {tp.get('batch_size')}, "
                  f"{tp.get('threads')} threads, native bf16: {tp.get('native_bf16')}):", "",
                  "| precision | training samples/s | inference samples/s |", "|---|---|---|"]
        for p in ("fp32", "bf16"):
            if p in tp:
                lines.append(f"| {p} | {tp[p]['train_samples_per_s']:.1f} | {tp[p]['inference_samples_per_s']:.1f} |")
        lines.append("")
    rt = result.get("runtime", {})
    lines.append(f"Precision used: {rt.get('precision')} ({rt.get('precision_reason')}).")
    lines.append("")
    for kind, info in (result.get("pretraining") or {}).items():
        met = ", ".join(f"{k.removeprefix('monitor_')} {v:.3f}" for k, v in (info.get("metrics") or {}).items()
                        if isinstance(v, float))
        lines.append(f"- pretraining {kind}: run `{info.get('run_id')}`"
                     f"{' (reused)' if info.get('reused') else ''}, {info.get('seconds', 0):.0f} s; {met}")
    lines.append("")
    for name, t in (result.get("targets") or {}).items():
        metric = t["metric"].upper()
        ns = sorted({int(n) for m in t["summary"].values() for n in m}, key=int)
        lines += [f"## {name} ({t['task']}, {t['label']}; {metric}, {'higher' if metric == 'AUC' else 'lower'} "
                  f"is better)", "",
                  f"Dataset `{t['dataset']}`: {t['n_subjects']} subjects; the same held-out test set of "
                  f"{t['n_test']} subjects for every N and repeat; labelled subsets drawn from the other "
                  f"{t['n_pool']}. " + (f"Every arm also receives the covariate(s) {', '.join(t['covariates'])} "
                                       "(CNN: concatenated to the image features before the head; probes and "
                                       "baseline: appended to the features). " if t.get("covariates") else "")
                  + "Cells: mean ± SD over repeats [min–max] (repeats).", "",
                  "| method | " + " | ".join(f"N = {n}" for n in ns) + " |",
                  "|---|" + "---|" * len(ns)]
        if not t["summary"]:
            lines.append("| (no N could be fitted) |" + " |" * len(ns))
        for m, per in t["summary"].items():
            cells = []
            for n in ns:
                c = per.get(str(n))
                if not c or c["mean"] is None:
                    cells.append("–")
                    continue
                sd = f" ± {c['sd']:.3f}" if c.get("sd") is not None else ""
                cells.append(f"{c['mean']:.3f}{sd} [{c['min']:.3f}–{c['max']:.3f}] ({c['repeats']})")
            lines.append(f"| {NICE.get(m, m)} | " + " | ".join(cells) + " |")
        if t.get("checks"):
            lines += ["", "Checks (differences of means):", ""]
            lines += [f"- {k}: {v:+.3f}" if "minus" in k else f"- {k}: {v:.3f}" for k, v in t["checks"].items()]
        if t.get("skipped"):
            lines += ["", "Skipped: " + "; ".join(f"N={s['n']}: {s['reason']}" for s in t["skipped"])]
        sp = t.get("cnn_train_samples_per_s")
        if sp:
            lines += ["", f"CNN arms: median {sp:.1f} training samples/s, "
                          f"{t.get('cnn_inference_samples_per_s') or 0:.1f} inference samples/s; "
                          f"target wall time {t['seconds']:.0f} s."]
        lines.append("")
    tm = result.get("timings", {})
    lines.append("Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in tm.items() if isinstance(v, (int, float))))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    targets = result.get("targets") or {}
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(5.5 * max(1, len(targets)), 4.2), squeeze=False)
    for ax, (name, t) in zip(axes[0], targets.items()):
        for m, per in t["summary"].items():
            ns = sorted(int(n) for n in per if per[n]["mean"] is not None)
            mu = np.array([per[str(n)]["mean"] for n in ns])
            sd = np.array([per[str(n)]["sd"] or 0.0 for n in ns])
            ax.errorbar(ns, mu, yerr=sd, marker="o", capsize=3, label=NICE.get(m, m))
        ax.set_xscale("log")
        ns_all = sorted({int(n) for per in t["summary"].values() for n in per})
        ax.set_xticks(ns_all)
        ax.set_xticklabels([str(n) for n in ns_all])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no "3x10^1" between the Ns
        if len(ns_all) == 1:
            ax.set_xlim(ns_all[0] / 1.5, ns_all[0] * 1.5)
        ax.set_xlabel("labelled subjects (N)")
        ax.set_ylabel(t["metric"].upper() + " on the held-out test set")
        ax.set_title(f"{name} (test n = {t['n_test']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

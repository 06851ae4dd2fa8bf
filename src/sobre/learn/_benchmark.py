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
from sobre.learn import _harmonize
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
        "classical": "classical (ROI + linear)", "yaware_site_probe": "y-aware site-nuisance + probe",
        "yaware_site_finetune": "y-aware site-nuisance + fine-tune",
        "yaware_combat_probe": "y-aware + ComBat + probe"}
# the pretrained encoder behind each arm; the representation whose site probe the report shows beside it
ENCODER_OF = {"simclr_probe": "simclr", "simclr_finetune": "simclr", "yaware_probe": "yaware",
              "yaware_finetune": "yaware", "yaware_combat_probe": "yaware", "yaware_site_probe": "yaware_site",
              "yaware_site_finetune": "yaware_site"}
REPRESENTATION_OF = {"simclr_probe": "simclr", "simclr_finetune": "simclr", "yaware_probe": "yaware",
                     "yaware_finetune": "yaware", "yaware_combat_probe": "yaware_combat",
                     "yaware_site_probe": "yaware_site", "yaware_site_finetune": "yaware_site"}
PROBE_ARMS = ("simclr_probe", "yaware_probe", "yaware_site_probe", "classical")  # features + linear model


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
                split = run.path / "split.csv"
                mon = []
                if split.exists():
                    sp = pd.read_csv(split, dtype={"subject_id": str})
                    mon = sp.loc[sp["split"] == "monitor", "subject_id"].tolist()
                return enc, {"run_id": run.run_id, "reused": True, "encoder": str(run.path / "encoder.pt"),
                             "seconds": secs, "metrics": run.record.get("metrics", {}), "monitor_subjects": mon}
    t0 = time.perf_counter()
    res = pretrain(cfg, workspace=ws, cohort=cohort, runs_dir=rroot, progress=progress, record=rroot is not None)
    info = {"run_id": res.run.run_id if res.run else None, "reused": False,
            "encoder": str(res.encoder_path) if res.encoder_path else None,
            "seconds": round(time.perf_counter() - t0, 1), "metrics": res.metrics,
            "monitor_subjects": list(res.monitor_subjects)}
    return res.encoder, info


def _pretrain_kind(cfg, kind, method, workspace, cohort, rroot, progress, reuse, encoders, monitor_subjects, result,
                   log) -> None:
    pcfg = PretrainConfig(seed=cfg.seed, name=f"{cfg.name or 'label-efficiency'}-{kind.replace('_', '-')}",
                          data=cfg.pretrain_data, preprocess=cfg.preprocess,
                          model=cfg.model.model_copy(update={"init_from": None}), method=method,
                          optim=cfg.pretrain_optim, augment=cfg.pretrain_augment, monitor=cfg.pretrain_monitor,
                          runtime=cfg.runtime)
    pcfg = PretrainConfig.model_validate(resolved(pcfg))
    log(f"pretraining {kind} on {len(cohort)} images ...")
    enc, info = _pretrain_or_reuse(pcfg, workspace, cohort, rroot, progress, reuse)
    monitor_subjects[kind] = info.pop("monitor_subjects", [])
    encoders[kind] = E.prepare_model(enc, cohort.spatial_dims, cfg.runtime.channels_last)
    result["pretraining"][kind] = info
    how = f"reused run {info['run_id']}" if info["reused"] else "{:.0f} s".format(info["seconds"])
    log(f"  {kind}: {how}; " + ", ".join(f"{k} {v:.3f}" for k, v in (info.get("metrics") or {}).items()
                                          if isinstance(v, float)))


def _erase(enc, cohort: Cohort, monitor: list, variable: str, rt: dict, cfg, log):
    """LEACE fitted on the features of the pretraining subjects that trained the encoder (not the held-out ones)."""
    require_columns(cohort.table, [variable], dataset=cohort.source.get("dataset", "pretraining"),
                    key="yaware_site.variable")
    train_rows = np.setdiff1d(np.arange(len(cohort)), cohort.rows_of(monitor))
    X, _ = extract_features(enc, cohort.images, train_rows, batch_size=32, bf16=rt["bf16"],
                            channels_last=cfg.runtime.channels_last)
    eraser = _harmonize.leace_fit(X, cohort.table[variable].astype(str).to_numpy()[train_rows])
    log(f"  yaware_site: LEACE erasure of '{variable}' ({eraser.rank} directions) fitted on {len(train_rows)} "
        "pretraining subjects")
    out = _harmonize.ErasedEncoder(enc, eraser)
    out.eval()
    return out, {"method": "leace", "variable": variable, "rank": eraser.rank, "fitted_on": int(len(train_rows))}


# ------------------------------------------------------------------------------------- site probes
def _balanced_accuracy(true: np.ndarray, pred: np.ndarray, *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Balanced accuracy with a percentile bootstrap 95 % CI over subjects, and the per-class recall."""
    true, pred = np.asarray(true).astype(str), np.asarray(pred).astype(str)
    classes = np.unique(true)

    def ba(t, p):
        return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBA]))
    boot = [ba(true[i], pred[i]) for i in rng.integers(0, len(true), size=(n_resamples, len(true)))]
    return {"balanced_accuracy": ba(true, pred), "ci_low": float(np.percentile(boot, 2.5)),
            "ci_high": float(np.percentile(boot, 97.5)), "chance": 1.0 / len(classes), "n_sites": len(classes),
            "n_test": int(len(true)),
            "per_site_recall": {str(c): float(np.mean(pred[true == c] == c)) for c in classes}}


def _site_probe(x_train, s_train, x_test, s_test, seed: int) -> dict:
    """Logistic site probe (penalty by inner CV, as the pretraining monitor) scored on other subjects."""
    classes = sorted(set(s_train))
    idx = {c: i for i, c in enumerate(classes)}
    keep = np.array([c in idx for c in s_test])
    pr = fit_probe(x_train, np.array([idx[c] for c in s_train]),
                   "binary" if len(classes) == 2 else "multiclass", seed=seed).predict(x_test[keep])
    pred = (pr >= 0.5).astype(int) if len(classes) == 2 else pr.argmax(1)
    out = _balanced_accuracy(np.asarray(s_test)[keep], np.array(classes)[pred], seed=seed)
    out["n_train"] = int(len(s_train))
    out["knn"] = _knn_site_probe(x_train, s_train, x_test[keep], np.asarray(s_test)[keep], seed)
    return out


def _knn_site_probe(x_train, s_train, x_test, s_test, seed: int, k: int = 15) -> dict:
    """A non-linear site probe beside the linear one: k nearest neighbours on standardised features.

    A linear erasure (LEACE) leaves the linear probe at chance by construction; this one says whether
    the site is still there in another form.
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(k, len(s_train))))
    pred = model.fit(x_train, np.asarray(s_train).astype(str)).predict(x_test)
    out = _balanced_accuracy(np.asarray(s_test).astype(str), pred, seed=seed)
    return {"balanced_accuracy": out["balanced_accuracy"], "ci_low": out["ci_low"], "ci_high": out["ci_high"],
            "k": int(min(k, len(s_train)))}


def _cv_site_probe(x: np.ndarray, site: np.ndarray, seed: int, folds: int = 5) -> dict:
    """Out-of-fold site probe within one set of subjects (stratified K-fold by site)."""
    from sklearn.model_selection import StratifiedKFold

    site = np.asarray(site).astype(str)
    k = int(min(folds, np.unique(site, return_counts=True)[1].min()))
    if k < 2:
        return {"balanced_accuracy": None, "reason": "a site has fewer than two subjects"}
    classes = sorted(set(site))
    idx = np.array([classes.index(c) for c in site])
    pred = np.empty(len(site), dtype=object)
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, site):
        pr = fit_probe(x[tr], idx[tr], "binary" if len(classes) == 2 else "multiclass", seed=seed).predict(x[te])
        pred[te] = np.array(classes)[(pr >= 0.5).astype(int) if len(classes) == 2 else pr.argmax(1)]
    out = _balanced_accuracy(site, pred.astype(str), seed=seed)
    out["folds"] = k
    return out


def _combat_covariates(cfg: LabelEfficiencyConfig, t: TargetConfig | None) -> list[str]:
    if cfg.site_analysis.combat_covariates is not None:
        return list(cfg.site_analysis.combat_covariates)
    if t is not None:
        return list(t.covariates)
    return list(dict.fromkeys(c for tt in cfg.targets for c in tt.covariates))


def _pretraining_site_probes(cfg: LabelEfficiencyConfig, cohort: Cohort, encoders: dict, monitor: dict, rt: dict,
                             log) -> dict:
    """Site probe of every pretrained representation on the pretraining subjects held out from pretraining.

    The probe is fitted on the features of the subjects that pretrained the encoder and scored on the
    held-out ones (the pretraining monitor's split). ``yaware_combat``: the y-aware features after a
    ComBat fitted on the same training subjects (keeping the covariates), applied to the held-out ones.
    """
    var = cfg.site_analysis.variable
    if var not in cohort.table.columns:
        log(f"site probe: the pretraining data has no column '{var}'; skipped")
        return {"skipped": f"no column '{var}' in the pretraining data"}
    site = cohort.table[var].astype(str).to_numpy()
    out: dict = {"variable": var, "held_out": "pretraining subjects held out from pretraining (monitor split)"}
    for kind, enc in encoders.items():
        mon = monitor.get(kind) or []
        test_rows = np.sort(cohort.rows_of(mon))
        if not len(test_rows):
            out[kind] = {"balanced_accuracy": None, "reason": "no held-out pretraining subjects "
                                                              "(pretrain_monitor.val_fraction = 0)"}
            continue
        train_rows = np.setdiff1d(np.arange(len(cohort)), test_rows)
        X, _ = extract_features(enc, cohort.images, batch_size=32, bf16=rt["bf16"],
                                channels_last=cfg.runtime.channels_last)
        out[kind] = _site_probe(X[train_rows], site[train_rows], X[test_rows], site[test_rows], cfg.seed)
        # a probe fitted on subjects that entered no fit of the representation (a fair test for an erasure)
        out[kind]["cv_held_out"] = _cv_site_probe(X[test_rows], site[test_rows], cfg.seed)
        log(f"site probe {kind}: balanced accuracy {out[kind]['balanced_accuracy']:.3f} "
            f"[{out[kind]['ci_low']:.3f}-{out[kind]['ci_high']:.3f}] (chance {out[kind]['chance']:.3f}, "
            f"{len(test_rows)} held-out subjects)")
        if kind == "yaware":
            names = _combat_covariates(cfg, None)
            missing = [c for c in names if c not in cohort.table.columns]
            if missing:
                out["yaware_combat"] = {"balanced_accuracy": None,
                                        "reason": f"covariate(s) {', '.join(missing)} absent from the pretraining data"}
                continue
            cov = metadata_matrix(cohort.table, names, dataset=cohort.source.get("dataset", "pretraining"),
                                  key="site_analysis.combat_covariates") if names else None
            h_tr, h_te, _ = _harmonize.combat_train_test(X, site, cov, train_rows, test_rows, names)
            r = _site_probe(h_tr, site[train_rows], h_te, site[test_rows], cfg.seed)
            r["cv_held_out"] = _cv_site_probe(h_te, site[test_rows], cfg.seed)
            r["combat"] = {"fitted_on": "the pretraining subjects that trained the encoder", "covariates": names}
            out["yaware_combat"] = r
            log(f"site probe yaware + ComBat: balanced accuracy {r['balanced_accuracy']:.3f} "
                f"[{r['ci_low']:.3f}-{r['ci_high']:.3f}]")
    return out


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
    monitor_subjects: dict[str, list[str]] = {}
    needed = {ENCODER_OF.get(m) for m in methods_all}
    ys = cfg.yaware_site
    if "yaware_site" in needed and ys.method == "none":
        needed.add("yaware")  # the y-aware encoder itself, erased
    for kind in ("simclr", "yaware", "yaware_site"):
        if kind not in needed:
            continue
        if kind == "yaware_site" and ys.method == "none":
            encoders[kind], monitor_subjects[kind] = encoders["yaware"], monitor_subjects["yaware"]
            result["pretraining"][kind] = dict(result["pretraining"]["yaware"], reused=True, seconds=0.0)
        else:
            method = cfg.yaware.model_copy(update={"nuisance": ys.nuisance()}) if kind == "yaware_site" \
                else getattr(cfg, kind)
            _pretrain_kind(cfg, kind, method, workspace, pretrain_cohort, rroot, progress, reuse_pretraining,
                           encoders, monitor_subjects, result, log)
        if kind == "yaware_site" and ys.erase == "leace":
            encoders[kind], result["pretraining"][kind]["erase"] = _erase(
                encoders[kind], pretrain_cohort, monitor_subjects[kind], ys.variable, rt, cfg, log)
    result["timings"]["pretraining_s"] = round(sum(v["seconds"] for v in result["pretraining"].values()
                                                   if not v["reused"]), 1)
    if cfg.site_analysis.probe and encoders:
        t_sp = time.perf_counter()
        result["site_probe"] = _pretraining_site_probes(cfg, pretrain_cohort, encoders, monitor_subjects, rt, log)
        result["timings"]["site_probe_s"] = round(time.perf_counter() - t_sp, 1)

    for t in cfg.targets:
        result["targets"][t.name] = _run_target(cfg, t, workspace, (target_cohorts or {}).get(t.name), encoders,
                                                result["pretraining"], rt, progress, config_path, log,
                                                external=(target_cohorts or {}).get(f"{t.name}/external"))
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
                progress, config_path, log, external: Cohort | None = None) -> dict:
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
        if any(ENCODER_OF.get(m) == kind and m.endswith("_probe") for m in methods):
            feats[kind], feat_speed[kind] = extract_features(enc, cohort.images, batch_size=32, bf16=rt["bf16"],
                                                             channels_last=cfg.runtime.channels_last)
    if "classical" in methods:
        if cfg.baseline.atlas:
            atlas = atlas_on_grid(cfg.baseline.atlas, cfg.preprocess, cohort.spatial_shape)
        else:
            atlas = grid_atlas(cohort.spatial_shape, cfg.baseline.grid[: cohort.spatial_dims])
        vox = float(np.prod(cfg.preprocess.spacing)) if cfg.preprocess.spacing else 1.0
        feats["classical"], roi_names = roi_features(cohort.images, atlas, cfg.baseline, voxel_volume=vox)
    image_feats = dict(feats)  # without the covariates: what ComBat and the site probes see
    cov_raw = None
    if t.covariates:
        cov_raw = metadata_matrix(cohort.table, t.covariates, dataset=ds, key=f"targets.{t.name}.covariates",
                                  config_path=config_path)
        feats = {k: np.c_[v, cov_raw] for k, v in feats.items()}
    sa = cfg.site_analysis
    site = None
    if sa.variable in cohort.table.columns:
        site = cohort.table[sa.variable].astype(str).to_numpy()
    elif "yaware_combat_probe" in methods:
        raise InputError(f"target '{t.name}': yaware_combat_probe needs the site column '{sa.variable}'",
                         path=config_path, expected=f"a column '{sa.variable}' in dataset {ds}",
                         found="no such column", fix="set site_analysis.variable or drop yaware_combat_probe")
    combat_names, combat_cov = [], None
    if "yaware_combat_probe" in methods:
        combat_names = _combat_covariates(cfg, t)
        if combat_names:
            combat_cov = metadata_matrix(cohort.table, combat_names, dataset=ds, config_path=config_path,
                                         key="site_analysis.combat_covariates")
    loso_on = site is not None and sa.loso_n is not None and sa.loso_n in n_labels
    loso_records: list[dict] = []
    combat_test_site: list[dict] = []
    y = task.targets if task.kind != "regression" else task.raw
    ext = _external_setup(cfg, t, ws, external, encoders, feats, subjects, rt, progress, config_path, log) \
        if t.external_test else None
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
                if m in PROBE_ARMS:
                    key = ENCODER_OF.get(m, m)
                    X = feats[key]
                    probe = fit_probe(X[rows_lab], y[rows_lab], task.kind, seed=cfg.seed + r)
                    p = probe.predict(X[test_rows])
                    info = {"n_features": int(X.shape[1])}
                    if ext is not None:
                        info.update(_external_score(ext, key, probe))
                elif m == "yaware_combat_probe":
                    # ComBat fitted on this repeat's labelled subjects only, applied to the test subjects
                    h_lab, h_test, cm = _harmonize.combat_train_test(image_feats["yaware"], site, combat_cov,
                                                                     rows_lab, test_rows, combat_names)
                    X_lab, X_test = h_lab, h_test
                    if cov_raw is not None:
                        X_lab, X_test = np.c_[h_lab, cov_raw[rows_lab]], np.c_[h_test, cov_raw[test_rows]]
                    p = fit_probe(X_lab, y[rows_lab], task.kind, seed=cfg.seed + r).predict(X_test)
                    info = {"n_features": int(X_lab.shape[1]), "combat_fit_subjects": int(len(rows_lab)),
                            "combat_covariates": combat_names, "combat_passed_through": int((~cm.kept).sum())}
                    if loso_on and n == sa.loso_n:
                        combat_test_site.append(_cv_site_probe(h_test, site[test_rows], cfg.seed))
                elif m == "scratch":
                    p, info = _cnn_arm(cohort, task, rows_lab, test_rows, cfg, t, init=None, seed=cfg.seed + r,
                                       rt=rt, progress=progress, cov_raw=cov_raw)
                else:  # *_finetune
                    kind = ENCODER_OF[m]
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
            if loso_on and n == sa.loso_n:
                loso_records += _loso(task, feats, methods, rows_lab, test_rows, site, y, n, r, cfg.seed + r)
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
    external_summary = _external_summary(ext, df, metric, summary, methods) if ext is not None else None
    site_effects = _target_site_effects(cfg, methods, image_feats, site, test_rows, loso_records, combat_test_site,
                                        summary, metric, loso_on) if site is not None else \
        {"skipped": f"no column '{sa.variable}' in dataset {ds}"}
    cnn = df[df["method"].isin(["scratch", "yaware_finetune", "simclr_finetune", "yaware_site_finetune"])] \
        if len(df) else df
    return {"dataset": ds, "content_hash": cohort.content_hash, "task": task.kind, "metric": metric,
            "covariates": list(t.covariates), "external_test": external_summary,
            "label": t.task.label, "n_subjects": len(subjects), "n_test": len(test_subjects), "n_pool": len(pool),
            "test_subjects": test_subjects, "records": records, "summary": summary, "skipped": skipped,
            "checks": checks, "site_effects": site_effects, "feature_samples_per_s": feat_speed,
            "cnn_train_samples_per_s": float(cnn["train_samples_per_s"].median()) if len(cnn) else None,
            "cnn_inference_samples_per_s": float(cnn["inference_samples_per_s"].median()) if len(cnn) else None,
            "seconds": round(time.perf_counter() - t0, 1), "load_seconds": round(load_s, 1)}


def _loso(task, feats: dict, methods, rows_lab, test_rows, site, y, n: int, repeat: int, seed: int) -> list[dict]:
    """Leave-one-site-out for the probe arms: for each site, the labelled subjects of the other sites train
    the probe and the test subjects of that site are scored; pooled over the whole test set."""
    out = []
    test_sites = np.unique(site[test_rows])
    for m in methods:
        if m not in PROBE_ARMS:
            continue
        X = feats[ENCODER_OF.get(m, m)]
        pred = np.full(len(test_rows), np.nan)
        per_site, skipped = {}, []
        for s_ in test_sites:
            tr = rows_lab[site[rows_lab] != s_]
            te = site[test_rows] == s_
            if task.kind == "binary" and len(np.unique(y[tr])) < 2:
                skipped.append(str(s_))
                continue
            pred[te] = fit_probe(X[tr], y[tr], task.kind, seed=seed).predict(X[test_rows[te]])
            per_site[str(s_)] = _score(task, pred[te], test_rows[te])
        ok = np.isfinite(pred)
        sc = _score(task, pred[ok], test_rows[ok]) if ok.any() else {}
        out.append({"n": n, "repeat": repeat, "method": m, **sc, "per_site": per_site, "sites_skipped": skipped,
                    "n_scored": int(ok.sum())})
    return out


def _target_site_effects(cfg, methods, image_feats: dict, site, test_rows, loso_records: list, combat_test_site: list,
                         summary: dict, metric: str, loso_on: bool) -> dict:
    """Per arm: the site probe on the target's test subjects (5-fold CV over them), LOSO summary at ``loso_n``."""
    out: dict = {"variable": cfg.site_analysis.variable, "loso_n": cfg.site_analysis.loso_n if loso_on else None,
                 "test_site_probe": {}, "loso": {}, "loso_records": loso_records, "not_computed": {}}
    s_test = site[test_rows]
    for m in methods:
        key = ENCODER_OF.get(m, m) if m in PROBE_ARMS else None
        if key is not None and key in image_feats:
            out["test_site_probe"][m] = _cv_site_probe(image_feats[key][test_rows], s_test, cfg.seed)
        elif m == "yaware_combat_probe" and combat_test_site:
            vals = [c["balanced_accuracy"] for c in combat_test_site if c.get("balanced_accuracy") is not None]
            out["test_site_probe"][m] = {"balanced_accuracy": float(np.mean(vals)) if vals else None,
                                         "min": float(np.min(vals)) if vals else None,
                                         "max": float(np.max(vals)) if vals else None,
                                         "chance": combat_test_site[0].get("chance"), "repeats": len(vals),
                                         "features": "ComBat-harmonised test features of each repeat at N = "
                                                     f"{cfg.site_analysis.loso_n}"}
    if loso_on:
        df = pd.DataFrame(loso_records)
        for m in methods:
            if len(df) and m in set(df["method"]):
                v = df.loc[df["method"] == m, metric].dropna().to_numpy(float)
                ref = (summary.get(m, {}).get(str(cfg.site_analysis.loso_n)) or {}).get("mean")
                out["loso"][m] = {"mean": float(v.mean()) if len(v) else None,
                                  "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                                  "min": float(v.min()) if len(v) else None, "max": float(v.max()) if len(v) else None,
                                  "repeats": int(len(v)), "in_distribution_mean": ref}
            elif m == "yaware_combat_probe":
                out["not_computed"][m] = "ComBat cannot harmonise a site absent from its fit"
            elif m not in PROBE_ARMS:
                out["not_computed"][m] = "CNN arms: one training per left-out site and repeat was not run"
    return out


# ------------------------------------------------------------------------------ external test set
def _external_setup(cfg: LabelEfficiencyConfig, t: TargetConfig, ws, cohort: Cohort | None, encoders: dict,
                    feats: dict, subjects: pd.DataFrame, rt, progress, config_path, log) -> dict:
    """Load the target's external test set and compute, for it, every feature set the probe arms use.

    The features are made exactly as for the target (same encoders, same atlas on the same grid, the
    same covariates appended); no subject of the external set may also be in the target.
    """
    e = t.external_test
    key = f"targets.{t.name}.external_test"
    if cohort is None:
        if ws is None:
            raise ConfigError(f"no data for the external test set of target '{t.name}'", path=config_path)
        cohort = load_cohort(ws, e.data, cfg.preprocess, progress=progress, config_path=config_path,
                             threads=rt["threads"])
    ds = cohort.source.get("dataset", e.name)
    task = build_task(t.task, cohort.table, dataset=ds, config_path=config_path)
    ext_subjects = set(subject_table(cohort, task, config_path=config_path)["subject_id"].astype(str))
    shared = sorted(ext_subjects & set(subjects["subject_id"].astype(str)))
    if shared:
        raise InputError(f"{key}: {len(shared)} subject(s) of {ds} are also in the target's dataset "
                         f"(e.g. {shared[0]}); an external test set must be disjoint from it", path=config_path,
                         expected="no shared subject", found=f"{len(shared)} shared",
                         fix="point external_test.data at another dataset version")
    xf: dict[str, np.ndarray] = {}
    for k in feats:
        if k in encoders:
            xf[k], _ = extract_features(encoders[k], cohort.images, batch_size=32, bf16=rt["bf16"],
                                        channels_last=cfg.runtime.channels_last)
        elif k == "classical":
            if cfg.baseline.atlas:
                atlas = atlas_on_grid(cfg.baseline.atlas, cfg.preprocess, cohort.spatial_shape)
            else:
                atlas = grid_atlas(cohort.spatial_shape, cfg.baseline.grid[: cohort.spatial_dims])
            vox = float(np.prod(cfg.preprocess.spacing)) if cfg.preprocess.spacing else 1.0
            xf[k], _ = roi_features(cohort.images, atlas, cfg.baseline, voxel_volume=vox)
    if t.covariates:
        cov = metadata_matrix(cohort.table, t.covariates, dataset=ds, key=f"{key}.covariates",
                              config_path=config_path)
        xf = {k: np.c_[v, cov] for k, v in xf.items()}
    for k, v in xf.items():
        if v.shape[1] != feats[k].shape[1]:
            raise InputError(f"{key}: the {k} features of {ds} have {v.shape[1]} columns, the target's "
                             f"{feats[k].shape[1]}", path=config_path, expected=str(feats[k].shape[1]),
                             found=str(v.shape[1]), fix="use the same preprocessing grid for both datasets")
    log(f"target {t.name}: external test set '{e.name}' ({ds}), {len(ext_subjects)} subjects, "
        f"scored for {', '.join(sorted(xf))}")
    return {"name": e.name, "dataset": ds, "content_hash": cohort.content_hash, "task": task, "feats": xf,
            "rows": np.arange(len(cohort)), "n_subjects": len(ext_subjects)}


def _external_score(ext: dict, key: str, probe) -> dict:
    """The fitted probe of one arm scored on the external test set: ``{"external_<metric>": value}``."""
    if key not in ext["feats"]:
        return {}
    sc = _score(ext["task"], probe.predict(ext["feats"][key]), ext["rows"])
    return {f"external_{k}": v for k, v in sc.items()}


def _external_summary(ext: dict, df: pd.DataFrame, metric: str, summary: dict, methods) -> dict:
    """Mean metric on the external set per arm and N, and its loss against the internal test set.

    The loss is computed per (N, repeat) on the same fitted model (internal minus external AUC, or
    external minus internal MAE), then averaged: positive means worse on the external set.
    """
    col = f"external_{metric}"
    out: dict = {"name": ext["name"], "dataset": ext["dataset"], "content_hash": ext["content_hash"],
                 "n_subjects": ext["n_subjects"], "metric": metric, "summary": {},
                 "not_computed": {m: "only the probe and baseline arms are scored there" for m in methods
                                  if col not in df or df.loc[df["method"] == m, col].isna().all()}}
    if col not in df:
        return out
    for m, g in df[df[col].notna()].groupby("method"):
        out["summary"][m] = {}
        for n, gg in g.groupby("n"):
            v = gg[col].to_numpy(float)
            loss = (gg[metric] - gg[col] if metric == "auc" else gg[col] - gg[metric]).to_numpy(float)
            out["summary"][m][str(int(n))] = {
                "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                "internal_mean": (summary.get(m, {}).get(str(int(n))) or {}).get("mean"),
                "loss_mean": float(loss.mean()), "loss_sd": float(loss.std(ddof=1)) if len(loss) > 1 else None,
                "repeats": int(len(v))}
    return out


def _external_markdown(t: dict) -> list[str]:
    e = t.get("external_test")
    if not e or not e.get("summary"):
        return []
    metric = e["metric"].upper()
    ns = sorted({int(n) for per in e["summary"].values() for n in per})
    lines = ["", f"External test set '{e['name']}' (`{e['dataset']}`, {e['n_subjects']} subjects, never trained "
                 f"on): {metric} there, and the loss against the internal test set (same fitted models; "
                 f"{'internal minus external' if metric == 'AUC' else 'external minus internal'}, mean ± SD over "
                 "repeats).", "",
             "| method | " + " | ".join(f"N = {n}: internal | external | loss" for n in ns) + " |",
             "|---|" + "---|---|---|" * len(ns)]
    for m, per in e["summary"].items():
        cells = []
        for n in ns:
            c = per.get(str(n))
            if not c:
                cells += ["–", "–", "–"]
                continue
            sd = f" ± {c['loss_sd']:.3f}" if c.get("loss_sd") is not None else ""
            cells += [f"{c['internal_mean']:.3f}" if c.get("internal_mean") is not None else "–",
                      f"{c['mean']:.3f}", f"{c['loss_mean']:+.3f}{sd}"]
        lines.append(f"| {NICE.get(m, m)} | " + " | ".join(cells) + " |")
    if e.get("not_computed"):
        lines += ["", "Not scored on the external set: " + ", ".join(
            f"{NICE.get(m, m)} ({why})" for m, why in e["not_computed"].items())]
    return lines


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
        for m in ("yaware_site_probe", "yaware_combat_probe"):
            v = get(m, 100)
            if ya is not None and v is not None:
                out[f"{m}_minus_yaware_probe_at_100"] = v - ya
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
        extra = ""
        if kind == "yaware_site":
            ys = (result.get("config") or {}).get("yaware_site") or {}
            extra = (f" [site: nuisance method {ys.get('method')}"
                     + (f", weight {ys.get('weight')}" if ys.get("method") in ("adversarial", "both") else "")
                     + (f"; then LEACE erasure of {info['erase']['rank']} directions fitted on "
                        f"{info['erase']['fitted_on']} pretraining subjects (monitor metrics before it)"
                        if info.get("erase") else "") + "]")
        lines.append(f"- pretraining {kind}: run `{info.get('run_id')}`"
                     f"{' (reused)' if info.get('reused') else ''}, {info.get('seconds', 0):.0f} s; {met}{extra}")
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
        lines += _site_markdown(result, t, ns)
        if t.get("skipped"):
            lines += ["", "Skipped: " + "; ".join(f"N={s['n']}: {s['reason']}" for s in t["skipped"])]
        lines += _external_markdown(t)
        sp = t.get("cnn_train_samples_per_s")
        if sp:
            lines += ["", f"CNN arms: median {sp:.1f} training samples/s, "
                          f"{t.get('cnn_inference_samples_per_s') or 0:.1f} inference samples/s; "
                          f"target wall time {t['seconds']:.0f} s."]
        lines.append("")
    tm = result.get("timings", {})
    lines.append("Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in tm.items() if isinstance(v, (int, float))))
    return "\n".join(lines) + "\n"


def _fmt_ba(c: dict | None) -> str:
    if not c or c.get("balanced_accuracy") is None:
        return "–" if not c else f"– ({c.get('reason', 'not computed')})"
    if "ci_low" in c:
        return f"{c['balanced_accuracy']:.3f} [{c['ci_low']:.3f}–{c['ci_high']:.3f}]"
    if c.get("min") is not None and c.get("repeats", 0) > 1:
        return f"{c['balanced_accuracy']:.3f} [{c['min']:.3f}–{c['max']:.3f}] ({c['repeats']})"
    return f"{c['balanced_accuracy']:.3f}"


def _site_markdown(result: dict, t: dict, ns: list) -> list[str]:
    """Per arm: site probe of its representation (held-out pretraining subjects; target test subjects), the
    metric at each N and the leave-one-site-out metric at ``loso_n``."""
    se = t.get("site_effects") or {}
    if not se or se.get("skipped"):
        return []
    sp = result.get("site_probe") or {}
    chance = next((v.get("chance") for v in sp.values() if isinstance(v, dict) and v.get("chance")), None)
    chance = chance or next((v.get("chance") for v in se.get("test_site_probe", {}).values() if v.get("chance")),
                            None)
    metric = t["metric"].upper()
    ln = se.get("loso_n")
    head = ["", f"Site effects ({se.get('variable')}; chance balanced accuracy "
                f"{chance:.3f}):" if chance else f"Site effects ({se.get('variable')}):", "",
            "| arm | site BA, held-out pretraining subjects [95% CI] | same, kNN probe (non-linear) | "
            "site BA, 5-fold CV within the held-out pretraining subjects | "
            "site BA, target test subjects (5-fold CV) | "
            + " | ".join(f"{metric} N = {n}" for n in ns)
            + (f" | LOSO {metric} at N = {ln} [min–max] | same arm in-distribution |" if ln else " |"),
            "|---|---|---|---|---|" + "---|" * len(ns) + ("---|---|" if ln else "")]
    for m, per in t["summary"].items():
        rep = REPRESENTATION_OF.get(m)
        pre = _fmt_ba(sp.get(rep)) if rep else "–"
        if rep and m.endswith("_finetune") and pre != "–":
            pre += " (before fine-tuning)"
        cells = [f"{per[str(n)]['mean']:.3f}" if per.get(str(n)) and per[str(n)]["mean"] is not None else "–"
                 for n in ns]
        knn = _fmt_ba((sp.get(rep) or {}).get("knn")) if rep else "–"
        cvh = _fmt_ba((sp.get(rep) or {}).get("cv_held_out")) if rep else "–"
        row = (f"| {NICE.get(m, m)} | {pre} | {knn} | {cvh} | {_fmt_ba(se.get('test_site_probe', {}).get(m))} | "
               + " | ".join(cells))
        if ln:
            lo = se.get("loso", {}).get(m)
            if lo and lo.get("mean") is not None:
                rng = f" [{lo['min']:.3f}–{lo['max']:.3f}]" if lo["repeats"] > 1 else ""
                ref = lo.get("in_distribution_mean")
                row += f" | {lo['mean']:.3f}{rng} ({lo['repeats']}) | {ref:.3f}" if ref is not None else \
                    f" | {lo['mean']:.3f}{rng} ({lo['repeats']}) | –"
            else:
                row += f" | – ({se.get('not_computed', {}).get(m, 'not computed')}) | –"
        head.append(row + " |")
    head += ["", "Site BA on held-out pretraining subjects: a logistic probe fitted on the features of the subjects "
                 "that pretrained the encoder, scored on those held out from pretraining (95% bootstrap CI); "
                 "the kNN probe (15 neighbours, standardised features) is the same test with a non-linear "
                 "classifier. For a representation whose site removal (LEACE, ComBat) was fitted on those same "
                 "training subjects, this probe learns from rows whose site means were equalised and reads chance "
                 "by construction: the fair test is a probe fitted on subjects that entered no fit, i.e. the "
                 "5-fold CV within the held-out subjects, or within the target's test subjects. "
                 "y-aware + ComBat: ComBat fitted on the same pretraining subjects. Target test subjects: 5-fold "
                 "CV over the held-out test set (for ComBat: the harmonised test features of each repeat at "
                 f"N = {ln}, mean [min–max])."]
    if ln:
        head += [f"LOSO: in each repeat at N = {ln}, the labelled subjects of the other sites train the probe "
                 "(about 4/5 of N with five sites) and the test subjects of the left-out site are scored; "
                 f"{metric} pooled over the whole test set; the last column is the same arm at N = {ln} with "
                 "every site in training."]
    return head


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

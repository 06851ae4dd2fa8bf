"""Supervised training: ``sobre train CONFIG.toml`` and :func:`train`.

The held-out test set is decided first (subject level), then training code receives a
:class:`~sobre.learn.Cohort` holding the development subjects only — it has no handle on the test
images or labels. Only after every fold has finished are the kept models applied to the test
subjects, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sobre.base import Progress, no_progress
from sobre.errors import ConfigError, InputError
from sobre.learn import _engine as E
from sobre.learn._augment import Augmenter
from sobre.learn._config import ModelConfig, TrainConfig, config_from, resolved, validate_config
from sobre.learn._data import Cohort, load_cohort, metadata_matrix, require_columns
from sobre.learn._inference import member_record, model_record
from sobre.learn._losses import fp32
from sobre.learn._models import Classifier, build_encoder, build_segmenter, encoder_spec
from sobre.learn._runs import Run, begin_run, open_run, reopen_run, runs_root
from sobre.learn._splits import SplitPlan, make_split
from sobre.learn._tasks import TaskSpec, build_task, default_monitor, monitor_direction, refit_scaling

__all__ = ["train", "TrainResult", "subject_table", "predictions_frame", "load_encoder_checkpoint"]

log = logging.getLogger("sobre.learn")


@dataclass
class TrainResult:
    run: Run | None
    metrics: dict
    predictions: pd.DataFrame
    models: list = field(default_factory=list)
    task: TaskSpec | None = None
    plan: SplitPlan | None = None


# ------------------------------------------------------------------------------------ subjects
def subject_table(cohort: Cohort, task: TaskSpec, *, config_path=None) -> pd.DataFrame:
    """One row per subject with ``label`` (the class, or the value) and grouping columns."""
    t = cohort.table.copy()
    if task.kind in ("binary", "multiclass"):
        t["label"] = task.targets
        per = t.groupby("subject_id")["label"].nunique()
        mixed = per[per > 1]
        if len(mixed):
            raise InputError(f"subject {mixed.index[0]} has images with different labels", path=config_path,
                             expected="one label per subject (splits are made per subject)",
                             found=f"{int(mixed.iloc[0])} labels", fix="correct the clinical table")
    elif task.kind == "regression":
        t["label"] = task.raw
    keep = ["subject_id"] + [c for c in ("label", "site", "sex", "age") if c in t.columns]
    extra = [c for c in t.columns if c not in keep]
    return t[keep + extra].drop_duplicates("subject_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------- pretrained
def load_encoder_checkpoint(init_from: str, runs_dir: Path | None, config_path=None) -> tuple[dict, str]:
    """``(checkpoint dict, where)`` for ``model.init_from``: a checkpoint path or a pretraining run id."""
    p = Path(init_from)
    if not p.exists():
        if runs_dir is None:
            raise ConfigError(f"model.init_from = '{init_from}' is not a file and there is no workspace to find "
                              "a run in", path=config_path, fix="give the path of an encoder.pt")
        from sobre.errors import CatalogError

        try:
            run = open_run(runs_dir, init_from)
        except CatalogError as exc:
            raise ConfigError(f"model.init_from = '{init_from}': no such run or file", path=config_path,
                              expected="a pretraining run id (`sobre runs list --kind pretrain`) or an encoder.pt path",
                              found=exc.found, fix="correct model.init_from") from None
        p = run.path / "encoder.pt"
        if not p.exists():
            raise ConfigError(f"run {run.run_id} has no encoder to transfer", path=config_path,
                              expected="a completed pretraining run (with encoder.pt)",
                              found=f"kind {run.record.get('kind')}, status {run.record.get('status')}",
                              fix="choose a pretraining run from `sobre runs list`")
    from sobre.base import sha256_file

    try:
        st = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"cannot read the encoder checkpoint ({type(exc).__name__})", path=p,
                          expected="a file written by `sobre pretrain`", fix="point model.init_from to a "
                          "pretraining run or its encoder.pt") from None
    if not isinstance(st, dict) or "encoder" not in st or "spec" not in st:
        raise ConfigError("not an encoder checkpoint", path=p, expected="a file written by `sobre pretrain`",
                          fix="point model.init_from to a pretraining run or its encoder.pt")
    st["sha256"] = sha256_file(p)
    return st, str(p)


def _check_spec(found: dict, wanted: dict, config_path) -> None:
    diff = {k: (wanted[k], found.get(k)) for k in wanted if found.get(k) != wanted[k]}
    if diff:
        k = next(iter(diff))
        raise ConfigError(f"pretrained encoder does not match model.{k}", path=config_path,
                          expected=f"{k} = {diff[k][0]!r} (this config)", found=f"{diff[k][1]!r} (the checkpoint)",
                          fix="use the same backbone settings as the pretraining run: "
                              + ", ".join(f"{a} = {b!r}" for a, b in found.items()))


def build_model(mcfg: ModelConfig, task: TaskSpec, spatial_dims: int, in_channels: int, *,
                runs_dir=None, config_path=None) -> tuple[torch.nn.Module, dict | None]:
    if task.kind == "segmentation":
        return build_segmenter(mcfg, spatial_dims, in_channels, task.n_classes), None
    model = Classifier(build_encoder(mcfg, spatial_dims, in_channels), task.n_outputs, mcfg.dropout,
                       n_covariates=len(mcfg.covariates))
    init = None
    if mcfg.init_from:
        st, where = load_encoder_checkpoint(mcfg.init_from, runs_dir, config_path)
        _check_spec(st["spec"], encoder_spec(mcfg, spatial_dims, in_channels), config_path)
        model.encoder.load_state_dict(st["encoder"])
        init = {"from": mcfg.init_from, "path": where, "run_id": st.get("run_id"),
                "sha256": st.get("sha256"), "dataset": st.get("dataset")}
    return model, init


def _param_groups(model, mcfg: ModelConfig, lr: float) -> list[dict]:
    if not isinstance(model, Classifier):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    if mcfg.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        return [{"params": list(model.head.parameters()), "lr": lr}]
    return [{"params": list(model.encoder.parameters()), "lr": lr * mcfg.encoder_lr_scale},
            {"params": list(model.head.parameters()), "lr": lr}]


def _head_from_probe(model: Classifier, images, rows: np.ndarray, task: TaskSpec, cov, *, bf16: bool,
                     channels_last: bool, seed: int) -> None:
    """LP-FT: set the linear head to a logistic/ridge probe fit on the frozen features of ``rows``.

    The probe standardises features; its coefficients are folded back so that the head acts on the
    raw features: ``w = coef / sd``, ``b = intercept - sum(coef * mean / sd)``.
    """
    from sobre.learn._transfer import extract_features, fit_probe

    X, _ = extract_features(model.encoder, images, rows, batch_size=32, bf16=bf16, channels_last=channels_last)
    if cov is not None:
        X = np.c_[X, cov[rows]]
    model.set_head(*fit_probe(X, task.targets[rows], task.kind, seed=seed).linear())
    model.train()


# ------------------------------------------------------------------------------- segmentation
def _seg_predict(model, images, rows, cfg: TrainConfig, bf16: bool, channels_last: bool, n_classes: int):
    roi = cfg.task.patch or list(images.shape[2:])
    preds, probs = [], []
    t0 = time.perf_counter()
    for r in rows:
        p = E.sliding_window_probs(model, E.stack_rows(images, np.asarray([r])), roi=roi, overlap=cfg.task.overlap,
                                   bf16=bf16, channels_last=channels_last)
        probs.append(p[0])
        preds.append(p[0].argmax(0).to(torch.uint8))
    dt = time.perf_counter() - t0
    return preds, probs, (len(rows) / dt if dt > 0 else float("nan"))


def dice_scores(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> list[float]:
    """Dice per foreground class (1 when both are empty)."""
    out = []
    for c in range(1, n_classes):
        a, b = pred == c, ref == c
        s = a.sum() + b.sum()
        out.append(1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s))
    return out


# ------------------------------------------------------------------------------------- one fold
def _fit_fold(dev: Cohort, task: TaskSpec, train_local: np.ndarray, val_local: np.ndarray, cfg: TrainConfig, *,
              rt: dict, ckpt_dir: Path | None, run: Run | None, fold: int, resume: bool,
              interrupt_after: int | None, progress: Progress | None, runs_dir, config_path,
              cov_raw: np.ndarray | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> tuple[torch.nn.Module, E.LoopResult, dict | None]:
    """Train on ``train_local`` rows of the development cohort, early-stop on ``val_local``.

    ``cov_raw``: raw covariates of the development rows (standardised with ``task``'s statistics).
    ``progress(stage, done, total)`` counts the samples of each epoch; ``on_epoch(row)`` receives
    every epoch's record (with ``group = "fold<k>"``).
    """
    progress = progress or no_progress
    par = E.parallel()
    seed = cfg.seed * 1000 + fold
    torch.manual_seed(seed)
    seg = task.kind == "segmentation"
    dims, cin = dev.spatial_dims, dev.in_channels
    model, init = build_model(cfg.model, task, dims, cin, runs_dir=runs_dir, config_path=config_path)
    cl = cfg.runtime.channels_last
    model = E.prepare_model(model, dims, cl)
    bf16 = rt["bf16"]
    cov = task.scaled_covariates(cov_raw)
    probe_init = (cfg.model.head_init == "probe" and init is not None and isinstance(model, Classifier)
                  and task.kind in ("binary", "multiclass", "regression") and not resume)
    if probe_init:
        _head_from_probe(model, dev.images, train_local, task, cov, bf16=bf16, channels_last=cl, seed=seed)
    warm = cfg.model.head_warmup_epochs if isinstance(model, Classifier) and not cfg.model.freeze_encoder else 0
    if par.active:
        E.global_batchnorm(model)
    net = E.data_parallel(model, par, find_unused=warm > 0)  # a training step calls net; model is what is kept
    opt = E.make_optimizer(_param_groups(model, cfg.model, cfg.optim.lr), cfg.optim)
    bs = min(cfg.optim.batch_size, len(train_local))
    plan = E.batches(len(train_local), bs, shuffle=False, drop_last=True)
    steps = len(plan) or 1
    per_epoch = sum(len(b) for b in plan)
    n_epochs = E.planned_epochs(cfg.optim, steps)
    sched = E.make_scheduler(opt, cfg.optim, steps, n_epochs)
    aug = Augmenter(cfg.augment, dev.spatial_shape, seed=seed, with_mask=seg, patch=cfg.task.patch if seg else None)
    if seg:
        from monai.losses import DiceCELoss

        seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    monitor = cfg.optim.early_stopping.metric
    if monitor == "auto":
        monitor = default_monitor(task.kind)
        if task.kind == "binary" and len(np.unique(task.targets[val_local])) < 2:
            monitor = "val_loss"
    mode = monitor_direction(monitor)
    group = f"fold{fold}"

    def train_one_epoch(epoch: int) -> dict:
        model.train()
        if isinstance(model, Classifier):
            head_only = cfg.model.freeze_encoder or epoch < warm
            if warm:
                for p in model.encoder.parameters():
                    p.requires_grad_(not head_only)
            if head_only:
                model.encoder.eval()
            elif cfg.model.freeze_norm:
                for mod in model.encoder.modules():
                    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                        mod.eval()
        aug.set_epoch(epoch)
        n, total, t0 = 0, 0.0, time.perf_counter()
        stage = f"{group} epoch {epoch + 1}/{n_epochs}"
        progress(stage, 0, per_epoch)

        def prepared():
            for b in E.batches(len(train_local), bs, shuffle=True, seed=seed, epoch=epoch, drop_last=True):
                rows = train_local[b]
                raw = E.stack_rows(dev.images, rows)
                # every process draws the augmentations of the whole batch (one random stream), keeps its block
                mine = E.shard(len(rows), par)
                if seg:
                    masks = E.stack_rows(dev.masks, rows).long()
                    pairs = [aug(raw[i], masks[i]) for i in range(len(rows))][mine]
                    x = torch.stack([p[0] for p in pairs])
                    y = torch.stack([p[1] for p in pairs])[:, None]
                else:
                    x = torch.stack([aug(raw[i])[0] for i in range(len(rows))])[mine]
                    y = torch.from_numpy(task.targets[rows[mine]])
                yield rows, mine, E.to_device_batch(x, cl), y

        for rows, mine, x, y in E.prefetched(prepared(), cfg.runtime.prefetch):
            with E.autocast(bf16):
                out = net(x) if cov is None else net(x, torch.from_numpy(cov[rows[mine]]))
            if seg:
                with fp32(out):
                    loss = seg_loss(out.float(), y)
            else:
                loss = task.loss(out, y)
            if par.active:  # a mean over this block; DDP averages over processes: weighted to the batch's mean
                k = mine.stop - mine.start
                loss = loss * (k * par.world / len(rows))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            sched.step()
            n += len(rows)
            total += (E.all_sum(float(loss.detach()) * len(rows), par) / par.world if par.active
                      else float(loss.detach()) * len(rows))
            progress(stage, n, per_epoch)
        dt = time.perf_counter() - t0
        return {"train_loss": total / max(n, 1), "train_samples_per_s": n / dt if dt > 0 else None}

    def validate(epoch: int) -> dict:
        if par.active:  # process 0 validates; every process gets its metrics and takes the same decisions
            return E.broadcast(_validate(epoch) if par.writer else None, par)
        return _validate(epoch)

    def _validate(epoch: int) -> dict:
        if seg:
            preds, probs, sps = _seg_predict(model, dev.images, val_local, cfg, bf16, cl, task.n_classes)
            d = [np.mean(dice_scores(p.numpy(), np.asarray(dev.masks[r]), task.n_classes))
                 for p, r in zip(preds, val_local)]
            return {"val_dice": float(np.mean(d)), "val_samples_per_s": sps}
        out, sps = E.timed_inference(model, dev.images, val_local, batch_size=max(bs, 8), bf16=bf16,
                                     channels_last=cl, covariates=cov)
        y = torch.from_numpy(task.targets[val_local])
        m = {"val_loss": float(task.loss(out, y))}
        m.update(task.metrics(task.outputs(out), val_local, prefix="val_"))
        m["val_samples_per_s"] = sps
        return m

    def epoch_done(row: dict) -> None:
        if run is not None:
            run.log_epoch(row, group=group)
        log.info("[%s] %s", group, E.epoch_line(row, ("epoch", "train_loss", "val_loss", monitor,
                                                      "train_samples_per_s")))
        if on_epoch is not None:
            on_epoch(dict(row, group=group, monitor=monitor))

    def on_resume(epoch: int) -> None:
        if run is not None:
            run.truncate_epochs(group, epoch + 1)

    es = cfg.optim.early_stopping
    res = E.run_epochs(model=model, optimizer=opt, scheduler=sched, n_epochs=n_epochs, train_one_epoch=train_one_epoch,
                       validate=validate, monitor=monitor, mode=mode, patience=es.patience, min_delta=es.min_delta,
                       ckpt_dir=ckpt_dir, resume=resume, interrupt_after=interrupt_after, on_epoch=epoch_done,
                       on_resume=on_resume, validate_first=probe_init, write=par.writer)
    if ckpt_dir is not None and (ckpt_dir / "best.pt").exists():
        model.load_state_dict(E.load_checkpoint(ckpt_dir / "best.pt")["model"])
    elif res.best_state is not None:
        model.load_state_dict(res.best_state)
    res.monitor, res.mode, res.n_epochs = monitor, mode, n_epochs  # type: ignore[attr-defined]
    return model, res, init


# ---------------------------------------------------------------------------------- predictions
def predictions_frame(table: pd.DataFrame, rows: np.ndarray, outputs: np.ndarray, task: TaskSpec,
                      split: str) -> pd.DataFrame:
    """One row per subject (scores of a subject's images averaged), in the sobre.validate format."""
    t = table.iloc[rows].reset_index(drop=True)
    df = pd.DataFrame({"subject_id": t["subject_id"].astype(str)})
    ref = task.raw_targets(rows)
    if task.kind == "binary":
        df["label"] = ref.astype(int)
        df["score"] = outputs
    elif task.kind == "multiclass":
        df["label"] = [task.classes[int(i)] for i in ref]
        for j, c in enumerate(task.classes):
            df[f"score_{c}"] = outputs[:, j]
    elif task.kind == "multilabel":
        for j, c in enumerate(task.label_columns):
            df[f"label_{c}"] = ref[:, j].astype(int)
            df[f"score_{c}"] = outputs[:, j]
    else:
        df["label"] = ref
        df["prediction"] = outputs
        df["score"] = outputs
    for c in ("site", "sex", "age"):
        if c in t.columns:
            df[c] = t[c].to_numpy()
    agg = {c: ("mean" if c.startswith(("score", "prediction")) else "first") for c in df.columns if c != "subject_id"}
    out = df.groupby("subject_id", sort=True, as_index=False).agg(agg)
    counts = df.groupby("subject_id", sort=True).size().to_numpy()
    if counts.max() > 1:
        out["n_images"] = counts
    out["split"] = split
    return out


# ------------------------------------------------------------------------------------------ train
def prepare_supervised(cfg: TrainConfig, *, workspace=None, cohort: Cohort | None = None,
                       progress: Progress | None = None, config_path=None,
                       threads: int = 1) -> tuple[Cohort, TaskSpec, SplitPlan]:
    """Load the cohort, read the task's labels and split the subjects (shared by train and probe)."""
    seg = cfg.task.kind == "segmentation"
    if cohort is None:
        if workspace is None:
            raise ConfigError("no data: give a workspace holding data.dataset, or an in-memory cohort",
                              path=config_path)
        par = E.parallel()
        if not par.writer:
            E.barrier(par)  # data parallel: process 0 builds a missing cache first
        cohort = load_cohort(workspace, cfg.data, cfg.preprocess, mask_rule=cfg.task.mask if seg else None,
                             progress=progress, config_path=config_path, threads=threads)
        if par.active and par.writer:
            E.barrier(par)
    elif seg and cohort.masks is None:
        raise InputError("a segmentation task needs masks in the cohort", fix="pass masks= to Cohort.from_arrays")
    dsname = cohort.source.get("dataset", "the cohort")
    task = build_task(cfg.task, cohort.table, dataset=dsname, config_path=config_path)
    subjects = subject_table(cohort, task, config_path=config_path)
    test_mask = None
    if cfg.split.test_column:
        require_columns(subjects, [cfg.split.test_column], dataset=dsname, key="split.test_column",
                        config_path=config_path)
        test_mask = subjects[cfg.split.test_column].astype(str).isin(cfg.split.test_values).to_numpy()
    for col in cfg.split.stratify:
        if col != "label":
            require_columns(subjects, [col], dataset=dsname, key="split.stratify", config_path=config_path)
    plan = make_split(subjects, seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed,
                      test_fraction=cfg.split.test_fraction, val_fraction=cfg.split.val_fraction,
                      folds=cfg.split.folds, stratify=cfg.split.stratify if task.kind != "segmentation"
                      else [c for c in cfg.split.stratify if c != "label"],
                      label_kind=task.kind, test_mask=test_mask, config_path=config_path)
    return cohort, task, plan


def train(config, *, workspace=None, cohort: Cohort | None = None, runs_dir=None, resume: str | None = None,
          interrupt_after: int | None = None, progress: Progress | None = None,
          on_epoch: Callable[[dict], None] | None = None, config_path=None, record: bool = True) -> TrainResult:
    """Train a model as configured; record the run; write predictions for validation and test subjects.

    Parameters
    ----------
    config : TrainConfig, dict or path of a TOML file
    workspace : sobre.catalog.Workspace, optional
        Where the dataset version lives and the run is recorded (``WS/runs``).
    cohort : Cohort, optional
        In-memory data instead of ``config.data`` (tests, simulator); its content hash is recorded.
    runs_dir : path, optional
        Where runs go when there is no workspace.
    resume : str, optional
        Run id of an interrupted run: continue it from its last checkpoints (same config and data).
    interrupt_after : int, optional
        Stop after this many epochs in this call (the run is left ``interrupted``, resumable).
    progress : callable, optional
        ``progress(stage, done, total)``: cache building, then the samples of each epoch
        (stage ``"fold0 epoch 3/30"``). Nothing is printed; ``sobre train`` draws bars from it.
    on_epoch : callable, optional
        Receives each epoch's record (as stored in ``run.json``, plus ``group`` and ``monitor``).
        Both callbacks stay silent with ``runtime.progress = false``.
    record : bool
        False: no run folder, no checkpoints (used by benchmarks for many small fits).

    Returns
    -------
    TrainResult
        ``metrics`` has ``validation`` and ``test`` dicts; ``predictions`` the per-subject table.

    Data parallel: run in every process of a group (``sobre train --nproc N``, or ``torchrun`` with
    :func:`sobre.learn.init_parallel`); each process computes its block of every global batch of
    ``optim.batch_size`` (batch norm over the global batch) and gradients are averaged: the same
    training as one process, within floating-point rounding. Process 0 validates (the others receive
    its metrics, so that all stop at the same epoch), checkpoints, evaluates and records the run; the
    others return a result without run, metrics or predictions.
    """
    rroot = runs_root(workspace) if workspace is not None else (Path(runs_dir) if runs_dir else None)
    run = None
    if resume:
        run = reopen_run(rroot, resume, "train", "training")
        cfg = validate_config(run.record["config"], TrainConfig, path=run.path / "run.json")
        if config is not None:
            given, _ = config_from(config, TrainConfig, config_path)
            if resolved(given) != run.record["config"]:
                raise ConfigError("the config differs from the one the run started with", path=config_path,
                                  expected=f"the resolved config stored in {run.path / 'run.json'}",
                                  found="a changed config", fix="resume without a config, or start a new run")
    else:
        cfg, config_path = config_from(config, TrainConfig, config_path)
    progress, on_epoch = E.reporters(cfg.runtime, progress, on_epoch)
    par = E.parallel()
    rt = E.setup_runtime(cfg.runtime, cfg.seed)
    cohort, task, plan = prepare_supervised(cfg, workspace=workspace, cohort=cohort, progress=progress,
                                            config_path=config_path, threads=rt["threads"])
    run, resumed = E.one_writer(par, run, lambda: begin_run(run, rroot, "train", record=record, cohort=cohort,
                                                            config=resolved(cfg), seed=cfg.seed, name=cfg.name))
    if run is not None:
        plan.table().to_csv(run.path / "split.csv", index=False)
        run.add_artifact("split.csv")
        run.update(split=plan.summary(), runtime=rt, task=_validate_task_name(task), task_kind=task.kind,
                   positive_label=1 if task.kind == "binary" else None,
                   classes=[str(c) for c in task.classes] if task.kind != "regression" else None,
                   run_id=run.run_id)
    cov_raw = None
    if cfg.model.covariates:
        cov_raw = metadata_matrix(cohort.table, cfg.model.covariates, dataset=str(cohort.source.get("dataset")),
                                  key="model.covariates", config_path=config_path)
    # ---- development phase: training code sees the development subjects only
    dev_rows = np.sort(cohort.rows_of(plan.development))
    dev = cohort.subset(dev_rows)
    dev_task = _task_subset(task, dev_rows)
    models, results = [], []
    interrupted = False
    try:
        for f, (tr_sub, va_sub) in enumerate(plan.folds):
            tr = dev.rows_of(tr_sub)
            va = dev.rows_of(va_sub)
            cov_dev = None if cov_raw is None else cov_raw[dev_rows]
            ftask = refit_scaling(dev_task, tr, cov_dev)
            ckpt = run.path / "checkpoints" / f"fold{f}" if run is not None else \
                resumed / f"fold{f}" if resumed is not None else None
            model, res, init = _fit_fold(dev, ftask, tr, va, cfg, rt=rt, ckpt_dir=ckpt, run=run, fold=f,
                                         resume=resume is not None, interrupt_after=interrupt_after,
                                         progress=progress, runs_dir=rroot, config_path=config_path,
                                         cov_raw=cov_dev, on_epoch=on_epoch)
            if run is not None and init is not None:
                run.update(init=init)
            models.append((model, ftask))
            results.append(res)
            if res.interrupted:
                interrupted = True
                break
    except KeyboardInterrupt:
        if run is not None:
            run.finish("interrupted")
        raise
    except Exception as exc:
        if run is not None:
            run.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if interrupted:
        if run is not None:
            run.finish("interrupted", resume_hint=f"sobre train --resume {run.run_id}")
        return TrainResult(run, {"interrupted": True}, pd.DataFrame(), models, task, plan)
    if not par.writer:  # the models are trained; process 0 evaluates and records them
        return TrainResult(None, {}, pd.DataFrame(), models, task, plan)
    # ---- evaluation phase: validation (out-of-fold) then the held-out test set, once
    metrics, frames = _evaluate(cohort, task, plan, models, cfg, rt, run, cov_raw)
    folds_info = [{"fold": i, "best_epoch": r.best_epoch, "best_value": r.best_value, "monitor": r.monitor,
                   "epochs_run": r.epochs_run, "planned_epochs": r.n_epochs, "stopped_early": r.stopped_early}
                  for i, r in enumerate(results)]
    preds = pd.concat(frames, ignore_index=True)
    if run is not None:
        if task.kind != "segmentation":
            preds.to_csv(run.path / "predictions.csv", index=False)
            run.add_artifact("predictions.csv")
        members = []
        for f, (_, ftask) in enumerate(models):
            for name in ("best.pt", "last.pt"):
                p = run.path / "checkpoints" / f"fold{f}" / name
                if p.exists():
                    run.add_artifact(p.relative_to(run.path))
            kept = run.path / "checkpoints" / f"fold{f}" / "best.pt"  # no best.pt: nothing was monitored, the last
            kept = kept if kept.exists() else kept.with_name("last.pt")  # epoch's weights are the fold's model
            members.append(member_record(kept.relative_to(run.path).as_posix(), ftask))
        run.update(model=model_record("train", cfg, cohort, task, members, rt))
        head = _headline(task, metrics)
        run.finish("completed", metrics=metrics, folds=folds_info, headline=head,
                   expected_subjects=sorted(preds.loc[preds["split"] == "test", "subject_id"].astype(str)))
    return TrainResult(run, dict(metrics, folds=folds_info), preds, models, task, plan)


def _validate_task_name(task: TaskSpec) -> str | None:
    return {"binary": "binary", "multiclass": "multiclass", "regression": "regression",
            "segmentation": "segmentation"}.get(task.kind)


def _task_subset(task: TaskSpec, rows: np.ndarray) -> TaskSpec:
    if task.targets is None:
        return task
    return TaskSpec(kind=task.kind, targets=task.targets[rows], classes=task.classes,
                    label_columns=task.label_columns, positive=task.positive, mean=task.mean, std=task.std,
                    n_classes=task.n_classes, loss_name=task.loss_name,
                    raw=None if task.raw is None else task.raw[rows])


def _headline(task: TaskSpec, metrics: dict) -> str:
    key = {"binary": "auc", "multiclass": "auc_macro", "multilabel": "auc_macro", "regression": "mae",
           "segmentation": "dice"}[task.kind]
    v = metrics.get("test", {}).get(key)
    if v is None:
        v = metrics.get("validation", {}).get(key)
        return f"val {key} {v:.3f}" if v is not None else ""
    return f"test {key} {v:.3f}"


def _evaluate(cohort: Cohort, task: TaskSpec, plan: SplitPlan, models, cfg: TrainConfig, rt: dict, run,
              cov_raw: np.ndarray | None = None):
    cl, bf16 = cfg.runtime.channels_last, rt["bf16"]
    bs = max(cfg.optim.batch_size, 8)
    test_rows = np.sort(cohort.rows_of(plan.test))
    frames, metrics = [], {}
    if task.kind == "segmentation":
        return _evaluate_seg(cohort, task, plan, models, cfg, rt, run)
    val_rows_all, val_out_all = [], []
    for f, ((model, ftask), (_, va_sub)) in enumerate(zip(models, plan.folds)):
        va = np.sort(cohort.rows_of(va_sub))
        out, _ = E.timed_inference(model, cohort.images, va, batch_size=bs, bf16=bf16, channels_last=cl,
                                   covariates=ftask.scaled_covariates(cov_raw))
        val_rows_all.append(va)
        val_out_all.append(ftask.outputs(out))
    va = np.concatenate(val_rows_all)
    vo = np.concatenate(val_out_all)
    metrics["validation"] = {k.removeprefix("val_"): v for k, v in task.metrics(vo, va, "val_").items()}
    frames.append(predictions_frame(cohort.table, va, vo, task, "validation"))
    if len(test_rows):
        outs, speeds = [], []
        for model, ftask in models:
            out, sps = E.timed_inference(model, cohort.images, test_rows, batch_size=bs, bf16=bf16, channels_last=cl,
                                         covariates=ftask.scaled_covariates(cov_raw))
            outs.append(ftask.outputs(out))
            speeds.append(sps)
        to = np.mean(outs, axis=0)
        metrics["test"] = task.metrics(to, test_rows)
        metrics["test"]["n_subjects"] = len(plan.test)
        metrics["inference_samples_per_s"] = float(np.mean(speeds))
        frames.append(predictions_frame(cohort.table, test_rows, to, task, "test"))
    metrics["validation"]["n_subjects"] = int(cohort.table["subject_id"].iloc[va].nunique())
    return metrics, frames


def _evaluate_seg(cohort, task, plan, models, cfg, rt, run):
    from sobre.image import Image, save

    cl, bf16 = cfg.runtime.channels_last, rt["bf16"]
    frames, metrics = [], {}
    rows_out = []
    for split, subsets in (("validation", [v for _, v in plan.folds]), ("test", [plan.test] * len(models))):
        dices = []
        for f, sub in enumerate(subsets):
            rows = np.sort(cohort.rows_of(sub))
            if not len(rows):
                continue
            use = models if split == "test" else [models[f]]
            probs_all = None
            for model, _ in use:
                _, probs, sps = _seg_predict(model, cohort.images, rows, cfg, bf16, cl, task.n_classes)
                probs_all = probs if probs_all is None else [a + b for a, b in zip(probs_all, probs)]
            for r, p in zip(rows, probs_all):
                pred = p.argmax(0).numpy().astype(np.uint8)
                ref = np.asarray(cohort.masks[r])
                d = dice_scores(pred, ref, task.n_classes)
                dices.append(np.mean(d))
                row = {"subject_id": str(cohort.table.at[r, "subject_id"]), "series_uid": cohort.table.at[r, "series_uid"],
                       "dice": float(np.mean(d)), "split": split}
                for c in ("site", "sex", "age"):
                    if c in cohort.table.columns:
                        row[c] = cohort.table.at[r, c]
                if run is not None:
                    mdir = run.path / "masks"
                    mdir.mkdir(exist_ok=True)
                    stem = f"{row['subject_id']}_{r}"
                    aff = cohort.affines[r]
                    save(Image(ref, aff), mdir / f"{stem}_ref.nii.gz")
                    save(Image(pred, aff), mdir / f"{stem}_pred.nii.gz")
                    row["mask_path"] = f"masks/{stem}_ref.nii.gz"
                    row["pred_path"] = f"masks/{stem}_pred.nii.gz"
                rows_out.append(row)
        if dices:
            metrics[split] = {"dice": float(np.mean(dices)), "n_images": len(dices)}
    df = pd.DataFrame(rows_out)
    if run is not None and len(df):
        dup = df.duplicated("subject_id", keep=False)
        if dup.any():
            df.loc[dup, "subject_id"] = df.loc[dup, "subject_id"] + "#" + df.loc[dup, "series_uid"].astype(str)
        df.to_csv(run.path / "predictions.csv", index=False)
        run.add_artifact("predictions.csv")
    frames.append(df)
    return metrics, frames

"""Contrastive pretraining: ``sobre pretrain CONFIG.toml`` and :func:`pretrain`.

Two augmented views of every image in a batch; an encoder and a projection head; NT-Xent
(``method.kind = "simclr"``) or y-aware InfoNCE (``"yaware"``: positives weighted by a kernel on
continuous metadata such as age). Optionally a nuisance variable (site) whose information the
representation should not carry: ``conditional`` contrasts only within the anchor's site,
``adversarial`` adds a site classifier behind a gradient-reversal layer.

A share of the subjects (``monitor.val_fraction``) is held out; every ``monitor.every`` epochs
the frozen features of the training subjects fit ridge/logistic probes that are scored on the
held-out ones (e.g. age MAE, and site balanced accuracy — lower is better for a nuisance).

The encoder is written to ``runs/<RUN>/encoder.pt`` with its architecture, preprocessing and
provenance; ``model.init_from = "<RUN>"`` in a training config starts from it.
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
import torch.nn.functional as F

from sobre.base import Progress
from sobre.errors import ConfigError, InputError
from sobre.learn import _engine as E
from sobre.learn._augment import Augmenter
from sobre.learn._config import PretrainConfig, config_from, resolved, validate_config
from sobre.learn._data import Cohort, load_cohort, metadata_matrix, require_columns
from sobre.learn._inference import input_record, member_record, model_record
from sobre.learn._losses import fp32, gather_rows, nt_xent, y_aware_infonce
from sobre.learn._models import ContrastiveModel, build_encoder, encoder_spec
from sobre.learn._runs import Run, begin_run, dataset_record, reopen_run, runs_root
from sobre.learn._splits import holdout, stratification_keys
from sobre.learn._transfer import extract_features, fit_probe

__all__ = ["pretrain", "PretrainResult", "metadata_matrix"]

log = logging.getLogger("sobre.learn")


@dataclass
class PretrainResult:
    run: Run | None
    encoder: torch.nn.Module
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    train_subjects: list = field(default_factory=list)
    monitor_subjects: list = field(default_factory=list)
    encoder_path: Path | None = None


def pretrain(config, *, workspace=None, cohort: Cohort | None = None, runs_dir=None, resume: str | None = None,
             interrupt_after: int | None = None, progress: Progress | None = None,
             on_epoch: Callable[[dict], None] | None = None, config_path=None, record: bool = True) -> PretrainResult:
    """Contrastive pretraining of an encoder on an unlabelled cohort.

    Parameters
    ----------
    config : PretrainConfig, dict or path of a TOML file
    workspace : sobre.catalog.Workspace, optional
    cohort : Cohort, optional
        In-memory images instead of ``config.data``.
    runs_dir : path, optional
        Where runs go without a workspace.
    resume : str, optional
        Continue an interrupted pretraining run from its last checkpoint.
    interrupt_after : int, optional
        Stop after this many epochs in this call (resumable).
    progress : callable, optional
        ``progress(stage, done, total)``: cache building, then the subjects of each epoch
        (stage ``"pretrain epoch 3/20"``). Nothing is printed.
    on_epoch : callable, optional
        Receives each epoch's record (``group = "pretrain"``). Both callbacks stay silent with
        ``runtime.progress = false``.
    record : bool
        False: no run folder (the encoder is only returned).

    Data parallel: run in every process of a group (``sobre pretrain --nproc N``, or ``torchrun``
    with :func:`sobre.learn.init_parallel`); each process embeds its block of every global batch of
    ``optim.batch_size`` and the loss sees the negatives of all (:func:`gather_rows`): the same
    training as one process, within floating-point rounding. Process 0 builds a missing cache,
    monitors, checkpoints and records the run; the others return a result without a run.
    """
    rroot = runs_root(workspace) if workspace is not None else (Path(runs_dir) if runs_dir else None)
    run = None
    if resume:
        run = reopen_run(rroot, resume, "pretrain", "pretraining")
        cfg = validate_config(run.record["config"], PretrainConfig, path=run.path / "run.json")
    else:
        cfg, config_path = config_from(config, PretrainConfig, config_path)
    progress, on_epoch = E.reporters(cfg.runtime, progress, on_epoch)
    par = E.parallel()
    rt = E.setup_runtime(cfg.runtime, cfg.seed)
    if cohort is None:
        if workspace is None:
            raise ConfigError("no data: give a workspace holding data.dataset, or an in-memory cohort",
                              path=config_path)
        if not par.writer:
            E.barrier(par)  # process 0 builds a missing cache first
        cohort = load_cohort(workspace, cfg.data, cfg.preprocess, progress=progress, config_path=config_path,
                             threads=rt["threads"])
        if par.active and par.writer:
            E.barrier(par)
    ds = cohort.source.get("dataset", "the cohort")
    m = cfg.method
    y_all = metadata_matrix(cohort.table, m.variables, dataset=ds, key="method.variables",
                            config_path=config_path) if m.kind == "yaware" else None
    g_all, g_names = None, []
    if m.nuisance is not None:
        require_columns(cohort.table, [m.nuisance.variable], dataset=ds, key="method.nuisance.variable",
                        config_path=config_path)
        col = cohort.table[m.nuisance.variable]
        if col.isna().any():
            raise InputError(f"nuisance variable '{m.nuisance.variable}' is missing for some images",
                             path=config_path, fix="filter them out with data.where")
        g_names = sorted(col.astype(str).unique())
        g_all = col.astype(str).map({g: i for i, g in enumerate(g_names)}).to_numpy()
    for v in cfg.monitor.regress:
        metadata_matrix(cohort.table, [v], dataset=ds, key="monitor.regress", config_path=config_path)
    require_columns(cohort.table, cfg.monitor.classify, dataset=ds, key="monitor.classify", config_path=config_path)

    # subject-level monitor hold-out
    subjects = cohort.subjects()
    strat = [c for c in ("site",) if c in subjects.columns]
    keys = stratification_keys(subjects, strat, label_kind="none")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x9E7]))
    hold = holdout(keys, cfg.monitor.val_fraction, rng) if cfg.monitor.val_fraction > 0 else \
        np.zeros(len(subjects), bool)
    mon_subjects = subjects.loc[hold, "subject_id"].astype(str).tolist()
    tr_subjects = subjects.loc[~hold, "subject_id"].astype(str).tolist()
    tr_rows = np.sort(cohort.rows_of(tr_subjects))
    mon_rows = np.sort(cohort.rows_of(mon_subjects))
    bs = cfg.optim.batch_size
    if len(tr_rows) < bs:
        raise InputError(f"too few images for one batch: {len(tr_rows)} training image(s), batch_size = {bs}",
                         path=config_path, expected=f"at least {bs} images", found=str(len(tr_rows)),
                         fix="lower optim.batch_size or monitor.val_fraction, or add subjects")
    ystd = None
    if y_all is not None:
        ystd = y_all[tr_rows].std(0) if m.standardize else np.ones(y_all.shape[1])
        ystd[ystd == 0] = 1.0

    run, resumed = E.one_writer(par, run, lambda: begin_run(run, rroot, "pretrain", record=record, cohort=cohort,
                                                            config=resolved(cfg), seed=cfg.seed, name=cfg.name))
    if run is not None:
        run.update(runtime=rt, task_kind="pretrain", split={"n_train": len(tr_subjects),
                                                            "n_monitor": len(mon_subjects)}, run_id=run.run_id)
        pd.DataFrame({"subject_id": tr_subjects + mon_subjects,
                      "split": ["train"] * len(tr_subjects) + ["monitor"] * len(mon_subjects)}).sort_values(
            "subject_id").to_csv(run.path / "split.csv", index=False)
        run.add_artifact("split.csv")

    torch.manual_seed(cfg.seed)
    dims, cin = cohort.spatial_dims, cohort.in_channels
    adversarial = m.nuisance is not None and m.nuisance.method in ("adversarial", "both")
    if adversarial and par.active:
        raise ConfigError(f"method.nuisance.method = \"{m.nuisance.method}\" (adversarial) is not available in "
                          "data-parallel pretraining",
                          path=config_path, expected="one process, or nuisance.method = \"conditional\"",
                          found=f"{par.world} processes", fix="run it in one process (drop --nproc)")
    model = ContrastiveModel(build_encoder(cfg.model, dims, cin), cfg.model.projection_hidden,
                             cfg.model.projection_dim, n_nuisance=len(g_names) if adversarial else 0)
    cl = cfg.runtime.channels_last
    model = E.prepare_model(model, dims, cl)
    if par.active:
        E.global_batchnorm(model)
    net = E.data_parallel(model, par)  # what a training step calls; ``model`` is what is saved and monitored
    opt = E.make_optimizer([{"params": list(model.parameters()), "lr": cfg.optim.lr}], cfg.optim)
    steps = len(E.batches(len(tr_rows), bs, shuffle=False, drop_last="full")) or 1
    n_epochs = E.planned_epochs(cfg.optim, steps)
    sched = E.make_scheduler(opt, cfg.optim, steps, n_epochs)
    aug = Augmenter(cfg.augment, cohort.spatial_shape, seed=cfg.seed)
    bf16 = rt["bf16"]
    images = cohort.images

    def loss_of(z1, z2, rows):
        groups = None
        if m.nuisance is not None and m.nuisance.method in ("conditional", "both"):
            groups = torch.from_numpy(g_all[rows])
        if m.kind == "simclr":
            return nt_xent(z1, z2, m.temperature, groups=groups)
        y = torch.from_numpy(y_all[rows] / ystd)
        return y_aware_infonce(z1, z2, y, bandwidth=[b / s for b, s in zip(m.bandwidth, ystd)],
                               temperature=m.temperature, kernel=m.kernel, groups=groups)

    per_epoch = steps * bs  # full batches only

    def train_one_epoch(epoch: int) -> dict:
        model.train()
        aug.set_epoch(epoch)
        n, tot, tot_adv, t0 = 0, 0.0, 0.0, time.perf_counter()
        stage = f"pretrain epoch {epoch + 1}/{n_epochs}"
        progress(stage, 0, per_epoch)

        def prepared():
            for b in E.batches(len(tr_rows), bs, shuffle=True, seed=cfg.seed, epoch=epoch, drop_last="full"):
                rows = tr_rows[b]
                raw = E.stack_rows(images, rows)
                # every process draws the augmentations of the whole batch (one random stream), keeps its block
                v1 = torch.stack([aug(raw[i])[0] for i in range(len(rows))])
                v2 = torch.stack([aug(raw[i])[0] for i in range(len(rows))])
                mine = E.shard(len(rows), par)
                yield rows, mine, E.to_device_batch(torch.cat([v1[mine], v2[mine]]), cl)

        for rows, mine, x in E.prefetched(prepared(), cfg.runtime.prefetch):
            k = mine.stop - mine.start
            with E.autocast(bf16):
                z, h = net(x)
            z = z.float()
            sizes = E.block_sizes(len(rows), par)
            z1, z2 = gather_rows(z[:k], sizes), gather_rows(z[k:], sizes)  # the negatives of every process
            loss = contrastive = loss_of(z1, z2, rows)  # fp32 logits (see sobre.learn._losses)
            adv = None
            if adversarial:
                with fp32(h):
                    logits = model.nuisance(h.float())
                    mine_rows = rows[mine]
                    adv = F.cross_entropy(logits, torch.from_numpy(np.concatenate([g_all[mine_rows],
                                                                                   g_all[mine_rows]])).long())
                if par.active:  # DDP averages over processes: weighted so that it is the global batch's mean
                    loss = loss + m.nuisance.weight * adv * (k * par.world / len(rows))
                else:
                    loss = loss + m.nuisance.weight * adv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            sched.step()
            n += len(rows)
            if adv is not None and par.active:  # this process's part of the nuisance loss: the batch's mean
                adv_batch = E.all_sum(float(adv.detach()) * k, par) / len(rows)
                tot += (float(contrastive.detach()) + m.nuisance.weight * adv_batch) * len(rows)
                tot_adv += adv_batch * len(rows)
            else:
                tot += float(loss.detach()) * len(rows)
                if adv is not None:
                    tot_adv += float(adv.detach()) * len(rows)
            progress(stage, n, per_epoch)
        dt = time.perf_counter() - t0
        out = {"train_loss": tot / max(n, 1), "train_samples_per_s": 2 * n / dt if dt > 0 else None,
               "train_subjects_per_s": n / dt if dt > 0 else None}
        if adversarial:
            out["train_nuisance_ce"] = tot_adv / max(n, 1)
        return out

    def validate(epoch: int) -> dict:
        if not len(mon_rows) or ((epoch + 1) % cfg.monitor.every and epoch + 1 != n_epochs):
            return {}
        if not par.writer:
            return E.broadcast(None, par)  # process 0 monitors; every process gets the same row
        return E.broadcast(probe_metrics(model.encoder, cohort, tr_rows, mon_rows, cfg.monitor.regress,
                                         cfg.monitor.classify, bf16=bf16, channels_last=cl, seed=cfg.seed,
                                         batch_size=max(bs, 16)), par)

    def epoch_done(row):
        if run is not None:
            run.log_epoch(row, group="pretrain")
        log.info("[pretrain] %s", E.epoch_line(row))
        on_epoch(dict(row, group="pretrain"))

    def on_resume(epoch):
        if run is not None:
            run.truncate_epochs("pretrain", epoch + 1)

    ckpt = run.path / "checkpoints" if run is not None else resumed
    try:
        res = E.run_epochs(model=model, optimizer=opt, scheduler=sched, n_epochs=n_epochs,
                           train_one_epoch=train_one_epoch, validate=validate, monitor=None, ckpt_dir=ckpt,
                           resume=resume is not None, interrupt_after=interrupt_after, on_epoch=epoch_done,
                           on_resume=on_resume, write=par.writer)
    except KeyboardInterrupt:
        if run is not None:
            run.finish("interrupted", resume_hint=f"sobre pretrain --resume {run.run_id}")
        raise
    except Exception as exc:
        if run is not None:
            run.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    result = PretrainResult(run, model.encoder, history=res.history, train_subjects=tr_subjects,
                            monitor_subjects=mon_subjects)
    if res.interrupted:
        if run is not None:
            run.finish("interrupted", resume_hint=f"sobre pretrain --resume {run.run_id}")
        return result
    final = {}
    for row in res.history:
        final.update({k: v for k, v in row.items() if k.startswith("monitor_")})
    sps = [r["train_samples_per_s"] for r in res.history if r.get("train_samples_per_s")]
    final["train_samples_per_s"] = float(np.median(sps)) if sps else None
    result.metrics = final
    if run is not None:
        path = run.path / "encoder.pt"
        E.save_checkpoint(path, {
            "format": "sobre.encoder/1", "encoder": model.encoder.state_dict(),
            "spec": encoder_spec(cfg.model, dims, cin), "feature_dim": model.encoder.out_features,
            "run_id": run.run_id, "method": m.model_dump(mode="json"), "preprocess": cfg.preprocess.model_dump(
                mode="json"), "dataset": dataset_record(cohort), "spatial_shape": list(cohort.spatial_shape),
            "input": input_record(cohort)})
        run.add_artifact("encoder.pt")
        run.update(model=model_record("pretrain", cfg, cohort, None, [member_record("encoder.pt", part="encoder")],
                                      rt))
        for name in ("last.pt", "best.pt"):
            if (ckpt / name).exists():
                run.add_artifact(Path("checkpoints") / name)
        head = "  ".join(f"{k.removeprefix('monitor_')} {v:.3f}" for k, v in final.items()
                         if k.startswith("monitor_") and isinstance(v, float))
        run.finish("completed", metrics=final, headline=head)
        result.encoder_path = path
    return result


def probe_metrics(encoder, cohort: Cohort, train_rows, test_rows, regress, classify, *, bf16, channels_last, seed,
                  batch_size=32, prefix="monitor_") -> dict:
    """Frozen-feature probes: ridge MAE per continuous variable, logistic balanced accuracy per categorical one."""
    from sklearn.metrics import balanced_accuracy_score

    out = {}
    if not regress and not classify:
        return out
    Xtr, _ = extract_features(encoder, cohort.images, train_rows, batch_size=batch_size, bf16=bf16,
                              channels_last=channels_last)
    Xte, sps = extract_features(encoder, cohort.images, test_rows, batch_size=batch_size, bf16=bf16,
                                channels_last=channels_last)
    encoder.train()
    out[prefix + "inference_samples_per_s"] = sps
    t = cohort.table
    for v in regress:
        y = pd.to_numeric(t[v], errors="coerce").to_numpy(float)
        p = fit_probe(Xtr, y[train_rows], "regression", seed=seed).predict(Xte)
        out[prefix + f"{v}_mae"] = float(np.mean(np.abs(p - y[test_rows])))
        out[prefix + f"{v}_r"] = float(np.corrcoef(p, y[test_rows])[0, 1]) if np.std(p) > 0 else None
    for v in classify:
        lab = t[v].astype(str).to_numpy()
        classes = sorted(set(lab[train_rows]))
        if len(classes) < 2:
            continue
        idx = {c: i for i, c in enumerate(classes)}
        ytr = np.array([idx[c] for c in lab[train_rows]])
        keep = np.array([c in idx for c in lab[test_rows]])
        if not keep.any():
            continue
        yte = np.array([idx[c] for c in lab[test_rows][keep]])
        kind = "binary" if len(classes) == 2 else "multiclass"
        pr = fit_probe(Xtr, ytr, kind, seed=seed).predict(Xte[keep])
        pred = (pr >= 0.5).astype(int) if kind == "binary" else pr.argmax(1)
        out[prefix + f"{v}_balanced_accuracy"] = float(balanced_accuracy_score(yte, pred))
        out[prefix + f"{v}_chance"] = 1.0 / len(classes)
    return out

"""Linear probe on frozen pretrained features: ``sobre probe CONFIG.toml`` and :func:`probe`.

Same configuration as ``sobre train`` (``model.init_from`` names the pretraining run). The
encoder is frozen; its features feed a scikit-learn linear model (logistic or ridge regression)
fit on the development subjects, with the regularisation chosen by inner cross-validation on
those subjects only. Validation rows of ``predictions.csv`` are out-of-fold predictions of the
development subjects, each fold refit with that same regularisation; test rows come from the model fit on all of them, the one saved in
``model.pt`` (``load_model(run).predict`` reproduces them; it does not reproduce validation rows).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from sobre.base import Progress
from sobre.errors import ConfigError
from sobre.learn import _engine as E
from sobre.learn._config import TrainConfig, config_from, resolved
from sobre.learn._data import Cohort
from sobre.learn._inference import member_record, model_record
from sobre.learn._models import Classifier, build_encoder, encoder_spec
from sobre.learn._runs import Run, runs_root
from sobre.learn._train import (
    TrainResult, _check_spec, _headline, load_encoder_checkpoint, predictions_frame, prepare_supervised,
)
from sobre.learn._transfer import extract_features, fit_probe

__all__ = ["probe"]


def probe(config, *, workspace=None, cohort: Cohort | None = None, runs_dir=None, progress: Progress | None = None,
          config_path=None, record: bool = True) -> TrainResult:
    """Fit and evaluate a linear probe on the frozen encoder named by ``model.init_from``.

    ``progress(stage, done, total)`` reports cache building and feature extraction (nothing is printed).
    """
    cfg, config_path = config_from(config, TrainConfig, config_path)
    if not cfg.model.init_from:
        raise ConfigError("a linear probe needs a pretrained encoder", path=config_path,
                          expected="model.init_from = \"<pretraining run id>\"", found="none",
                          fix="pretrain first (`sobre pretrain`), then name the run in model.init_from")
    if cfg.task.kind not in ("binary", "multiclass", "regression"):
        raise ConfigError(f"linear probes handle binary, multiclass and regression tasks, not {cfg.task.kind}",
                          path=config_path, fix="use `sobre train` with model.init_from to fine-tune instead")
    progress, _ = E.reporters(cfg.runtime, progress, None)
    rt = E.setup_runtime(cfg.runtime, cfg.seed)
    rroot = runs_root(workspace) if workspace is not None else (Path(runs_dir) if runs_dir else None)
    cohort, task, plan = prepare_supervised(cfg, workspace=workspace, cohort=cohort, progress=progress,
                                            config_path=config_path, threads=rt["threads"])
    st, where = load_encoder_checkpoint(cfg.model.init_from, rroot, config_path)
    _check_spec(st["spec"], encoder_spec(cfg.model, cohort.spatial_dims, cohort.in_channels), config_path)
    encoder = build_encoder(cfg.model, cohort.spatial_dims, cohort.in_channels)
    encoder.load_state_dict(st["encoder"])
    encoder = E.prepare_model(encoder, cohort.spatial_dims, cfg.runtime.channels_last)
    run = None
    if record and rroot is not None:
        run = Run.create(rroot, "probe", config=resolved(cfg), seed=cfg.seed, name=cfg.name, dataset={
            "ref": cohort.source.get("dataset"), "content_hash": cohort.content_hash,
            "simulated": cohort.source.get("simulated", False), "n_images": len(cohort)})
        plan.table().to_csv(run.path / "split.csv", index=False)
        run.add_artifact("split.csv")
        run.update(init={"from": cfg.model.init_from, "path": where, "run_id": st.get("run_id"),
                         "sha256": st.get("sha256")}, split=plan.summary(), runtime=rt, task=task.kind,
                   task_kind=task.kind, positive_label=1 if task.kind == "binary" else None, run_id=run.run_id)
    t0 = time.perf_counter()
    X, sps = extract_features(encoder, cohort.images, batch_size=max(cfg.optim.batch_size, 16), bf16=rt["bf16"],
                              channels_last=cfg.runtime.channels_last, progress=progress)
    if cfg.model.covariates:
        from sobre.learn._data import metadata_matrix

        X = np.c_[X, metadata_matrix(cohort.table, cfg.model.covariates, dataset=str(cohort.source.get("dataset")),
                                     key="model.covariates", config_path=config_path)]
    dev_rows = np.sort(cohort.rows_of(plan.development))
    test_rows = np.sort(cohort.rows_of(plan.test))
    y = task.targets if task.kind != "regression" else task.raw
    # the saved probe: its penalty chosen by inner CV on all development subjects
    final = fit_probe(X[dev_rows], y[dev_rows], task.kind, seed=cfg.seed)
    # out-of-fold validation predictions on the development subjects (5 subject folds), each fold
    # refit with the final probe's penalty: validation rows come from the model test rows come from,
    # less one fold (thresholds and calibration tuned on them carry over to the test rows)
    from sklearn.model_selection import GroupKFold

    groups = cohort.table["subject_id"].to_numpy()[dev_rows]
    k = min(5, len(np.unique(groups)))
    penalty = {"alpha": final.info["alpha"]} if task.kind == "regression" else {"C": final.info["C"]}
    oof = None
    for tr, va in GroupKFold(n_splits=k).split(dev_rows, groups=groups):
        p = fit_probe(X[dev_rows[tr]], y[dev_rows[tr]], task.kind, seed=cfg.seed, **penalty).predict(X[dev_rows[va]])
        if oof is None:
            oof = np.zeros((len(dev_rows), *p.shape[1:]))
        oof[va] = p
    metrics = {"validation": task.metrics(oof, dev_rows), "probe": final.info, "feature_samples_per_s": sps}
    frames = [predictions_frame(cohort.table, dev_rows, oof, task, "validation")]
    if len(test_rows):
        pt = final.predict(X[test_rows])
        metrics["test"] = task.metrics(pt, test_rows)
        metrics["test"]["n_subjects"] = len(plan.test)
        frames.append(predictions_frame(cohort.table, test_rows, pt, task, "test"))
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    preds = pd.concat(frames, ignore_index=True)
    if run is not None:
        preds.to_csv(run.path / "predictions.csv", index=False)
        run.add_artifact("predictions.csv")
        _save_model(run, cfg, cohort, task, encoder, final, rt)
        run.finish("completed", metrics=metrics, headline=_headline(task, metrics),
                   expected_subjects=sorted(map(str, plan.test)))
    return TrainResult(run, metrics, preds, [], task, plan)


def _save_model(run: Run, cfg: TrainConfig, cohort: Cohort, task, encoder, final, rt: dict) -> None:
    """``model.pt``: the encoder with the fitted probe as its linear head (standardisation folded in).

    The head acts on the features and the *raw* covariates (the probe standardised both), so the
    recorded covariate scaling is the identity; ridge predicts values in the label's units.
    """
    n_cov = len(cfg.model.covariates)
    model = Classifier(encoder, 1 if task.kind in ("binary", "regression") else len(task.classes),
                       n_covariates=n_cov)
    model.set_head(*final.linear())
    E.save_checkpoint(run.path / "model.pt", {"format": "sobre.probe-model/1", "model": model.state_dict()})
    run.add_artifact("model.pt")
    identity = SimpleNamespace(mean=0.0, std=1.0, cov_mean=np.zeros(n_cov) if n_cov else None,
                               cov_std=np.ones(n_cov) if n_cov else None)
    run.update(model=model_record("probe", cfg, cohort, task, [member_record("model.pt", identity)], rt))

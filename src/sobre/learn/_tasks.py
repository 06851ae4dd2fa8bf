"""Tasks: how labels are read from the metadata, the loss, the outputs and the metrics.

=============  ==============================  =====================  ===================================
task           label                           network output         metrics (validation and test)
=============  ==============================  =====================  ===================================
binary         one column, two values          1 logit                AUC, balanced accuracy, log-loss
multiclass     one column, K values            K logits (softmax)     macro one-vs-rest AUC, balanced acc.
multilabel     K columns of 0/1                K logits (sigmoids)    macro AUC over labels
regression     one numeric column              1 value (standardised) MAE, RMSE, Pearson r, R²
segmentation   a mask series per image         K-class map            mean foreground Dice
=============  ==============================  =====================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sobre.errors import InputError
from sobre.learn._config import TaskConfig
from sobre.learn._data import require_columns

__all__ = ["TaskSpec", "build_task", "metrics_for", "monitor_direction"]

_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
_FALSE = {"0", "false", "no", "n", "f", "0.0"}


@dataclass
class TaskSpec:
    """A task bound to a cohort: per-row targets, classes, loss and metrics."""

    kind: str
    targets: np.ndarray | None  # per row: class index (int), multilabel (float K), standardised value
    classes: list = field(default_factory=list)
    label_columns: list = field(default_factory=list)
    positive: object = None
    mean: float = 0.0
    std: float = 1.0
    n_classes: int = 2
    loss_name: str = "l1"
    raw: np.ndarray | None = None  # per row reference as written to predictions (class name, value)
    cov_mean: np.ndarray | None = None  # covariate standardisation (training statistics)
    cov_std: np.ndarray | None = None

    def scaled_covariates(self, raw: np.ndarray | None) -> np.ndarray | None:
        """Covariates standardised with the training statistics (None when the model has none)."""
        if raw is None or raw.shape[1] == 0 or self.cov_mean is None:
            return None
        return ((raw - self.cov_mean) / self.cov_std).astype(np.float32)

    @property
    def n_outputs(self) -> int:
        if self.kind == "binary" or self.kind == "regression":
            return 1
        if self.kind == "multiclass":
            return len(self.classes)
        if self.kind == "multilabel":
            return len(self.label_columns)
        return self.n_classes

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's loss, in fp32 whatever the precision of ``out`` (autocast is off inside)."""
        from sobre.learn._losses import fp32

        with fp32(out):
            return self._loss(out.float(), y)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(out[:, 0], y.float())
        if self.kind == "multiclass":
            return F.cross_entropy(out, y.long())
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(out, y.float())
        if self.kind == "regression":
            p, t = out[:, 0], y.float()
            if self.loss_name == "mse":
                return F.mse_loss(p, t)
            if self.loss_name == "huber":
                return F.smooth_l1_loss(p, t)
            return F.l1_loss(p, t)
        raise ValueError(self.kind)

    def outputs(self, out: torch.Tensor) -> np.ndarray:
        """Network outputs → scores (probabilities) or values in the label's units."""
        out = out.float()
        if self.kind == "binary":
            return torch.sigmoid(out[:, 0]).numpy()
        if self.kind == "multiclass":
            return torch.softmax(out, 1).numpy()
        if self.kind == "multilabel":
            return torch.sigmoid(out).numpy()
        if self.kind == "regression":
            return (out[:, 0] * self.std + self.mean).numpy()
        raise ValueError(self.kind)

    def target_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.targets[rows]

    def encode_scaled(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def metrics(self, scores: np.ndarray, rows: np.ndarray, prefix: str = "") -> dict:
        return metrics_for(self, scores, self.raw_targets(rows), prefix)

    def raw_targets(self, rows: np.ndarray) -> np.ndarray:
        if self.kind == "regression":
            return self.targets[rows] * self.std + self.mean
        return self.targets[rows]


def _binary_values(series: pd.Series, positive, column: str, dataset: str, config_path) -> tuple[np.ndarray, list]:
    vals = series.dropna()
    distinct = sorted(vals.astype(str).unique())
    if positive is not None:
        pos = str(positive).lower() if isinstance(positive, bool) else str(positive)
        pos_cmp = vals.astype(str).str.lower() if isinstance(positive, bool) else vals.astype(str)
        if pos not in set(pos_cmp):
            raise InputError(f"task.positive = {positive!r}: no subject has this value in column '{column}'",
                             path=config_path, expected="one of: " + ", ".join(distinct), found=repr(positive),
                             fix="set task.positive to the value that marks the positive class")
        y = (series.astype(str).str.lower() if isinstance(positive, bool) else series.astype(str)) == pos
        neg = [d for d in distinct if (d.lower() if isinstance(positive, bool) else d) != pos]
        if len(neg) != 1:
            raise InputError(f"label column '{column}' has {len(distinct)} values; binary needs two",
                             path=config_path, expected="two classes", found=", ".join(distinct[:8]),
                             fix="use task.kind = \"multiclass\", or filter the dataset with data.where")
        return y.to_numpy().astype(np.int64), [neg[0], str(positive)]
    low = {d.lower() for d in distinct}
    if low <= _TRUE | _FALSE and len(distinct) == 2:
        y = series.astype(str).str.lower().isin(_TRUE).to_numpy().astype(np.int64)
        neg = next(d for d in distinct if d.lower() in _FALSE)
        pos = next(d for d in distinct if d.lower() in _TRUE)
        return y, [neg, pos]
    if len(distinct) != 2:
        raise InputError(f"label column '{column}' has {len(distinct)} distinct value(s) in {dataset}; binary needs "
                         "exactly two", path=config_path, expected="two classes",
                         found=", ".join(distinct[:8]) or "no values",
                         fix=("a class with no examples cannot be learned: add subjects of the missing class"
                              if len(distinct) < 2 else "use task.kind = \"multiclass\" or filter with data.where"))
    raise InputError(f"label column '{column}' has values {distinct[0]!r} and {distinct[1]!r}: which is positive?",
                     path=config_path, expected="task.positive set to one of them", found="task.positive unset",
                     fix=f"add `positive = \"{distinct[1]}\"` (or the other) under [task]")


def build_task(cfg: TaskConfig, table: pd.DataFrame, *, dataset: str = "the dataset version",
               config_path=None, n_seg_classes: int | None = None) -> TaskSpec:
    """Read the task's labels from a cohort table (one row per image), with actionable errors."""
    k = cfg.kind
    if k == "segmentation":
        return TaskSpec(kind=k, targets=None, n_classes=cfg.n_classes, classes=list(range(cfg.n_classes)))
    cols = cfg.labels if k == "multilabel" else [cfg.label]
    require_columns(table, cols, dataset=dataset, key="task.labels" if k == "multilabel" else "task.label",
                    config_path=config_path)
    missing = table[cols].isna().any(axis=1)
    if missing.any():
        subs = table.loc[missing, "subject_id"].astype(str).unique()
        raise InputError(f"{len(subs)} subject(s) have no value in label column(s) {', '.join(cols)}",
                         path=config_path, expected="a label for every image",
                         found="missing for " + ", ".join(subs[:5]) + (" ..." if len(subs) > 5 else ""),
                         fix="exclude them with data.where (e.g. 'diagnosis != null') and freeze again, or fill in "
                             "the clinical table")
    if k == "binary":
        y, classes = _binary_values(table[cfg.label], cfg.positive, cfg.label, dataset, config_path)
        return TaskSpec(kind=k, targets=y, classes=classes, label_columns=cols, positive=classes[1],
                        raw=table[cfg.label].to_numpy())
    if k == "multiclass":
        vals = table[cfg.label].astype(str)
        present = sorted(vals.unique())
        if cfg.classes is not None:
            classes = [str(c) for c in cfg.classes]
            empty = [c for c in classes if c not in set(present)]
            if empty:
                raise InputError(f"class '{empty[0]}' has no examples in column '{cfg.label}' of {dataset}",
                                 path=config_path, expected=f"examples of every class in task.classes {classes}",
                                 found="classes present: " + ", ".join(present),
                                 fix="add subjects of that class, or remove it from task.classes")
            extra = [c for c in present if c not in set(classes)]
            if extra:
                raise InputError(f"value '{extra[0]}' of column '{cfg.label}' is not in task.classes",
                                 path=config_path, expected="one of " + ", ".join(classes), found=extra[0],
                                 fix="add it to task.classes or filter it out with data.where")
        else:
            classes = present
        if len(classes) < 2:
            raise InputError(f"label column '{cfg.label}' has a single class", path=config_path,
                             expected="at least two classes", found=", ".join(present),
                             fix="a class with no examples cannot be learned: add subjects of the other classes")
        idx = {c: i for i, c in enumerate(classes)}
        return TaskSpec(kind=k, targets=vals.map(idx).to_numpy().astype(np.int64), classes=classes,
                        label_columns=cols, raw=vals.to_numpy())
    if k == "multilabel":
        ys = []
        for c in cols:
            v = table[c].astype(str).str.lower()
            bad = ~v.isin(_TRUE | _FALSE)
            if bad.any():
                raise InputError(f"multilabel column '{c}' holds values other than 0/1", path=config_path,
                                 expected="0/1 or true/false", found=repr(table.loc[bad, c].iloc[0]),
                                 fix="encode each label as 0/1")
            yy = v.isin(_TRUE).to_numpy().astype(np.float32)
            if yy.min() == yy.max():
                raise InputError(f"label '{c}' has no {'positive' if yy.max() == 0 else 'negative'} example",
                                 path=config_path, expected="both values in every label column",
                                 found=f"all {int(yy[0])}", fix="remove that label from task.labels or add subjects")
            ys.append(yy)
        y = np.stack(ys, 1)
        return TaskSpec(kind=k, targets=y, classes=list(cols), label_columns=cols, raw=y)
    # regression
    v = pd.to_numeric(table[cfg.label], errors="coerce")
    bad = v.isna() & table[cfg.label].notna()
    if bad.any():
        raise InputError(f"regression label '{cfg.label}' holds non-numeric values", path=config_path,
                         expected="numbers", found=repr(table.loc[bad, cfg.label].iloc[0]),
                         fix="choose a numeric column, or use a classification task")
    vals = v.to_numpy(float)
    sd = float(vals.std())
    if not sd > 0:
        raise InputError(f"regression label '{cfg.label}' is constant", path=config_path,
                         expected="varying values", found=f"all {vals[0]}", fix="choose another label")
    mean = float(vals.mean())
    return TaskSpec(kind=k, targets=((vals - mean) / sd).astype(np.float32), mean=mean, std=sd,
                    label_columns=cols, loss_name=cfg.loss, raw=vals)


def refit_scaling(task: TaskSpec, rows: np.ndarray, covariates: np.ndarray | None = None) -> TaskSpec:
    """Standardise with the training rows only (no test statistics): regression targets, covariates."""
    import dataclasses

    out = dataclasses.replace(task)
    if covariates is not None and covariates.shape[1]:
        out.cov_mean = covariates[rows].mean(0)
        sd = covariates[rows].std(0)
        out.cov_std = np.where(sd > 0, sd, 1.0)
    if task.kind != "regression":
        return out
    raw = task.targets * task.std + task.mean
    mean, sd = float(raw[rows].mean()), float(raw[rows].std()) or 1.0
    out.targets = ((raw - mean) / sd).astype(np.float32)
    out.mean, out.std = mean, sd
    return out


def metrics_for(task: TaskSpec, scores: np.ndarray, y: np.ndarray, prefix: str = "") -> dict:
    """Metrics of scores against references; undefined ones (e.g. AUC with one class) are None."""
    from sklearn import metrics as skm

    out: dict = {}
    p = prefix
    if task.kind == "binary":
        y = y.astype(int)
        out[p + "auc"] = float(skm.roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else None
        pred = (scores >= 0.5).astype(int)
        out[p + "balanced_accuracy"] = float(skm.balanced_accuracy_score(y, pred)) if len(np.unique(y)) == 2 else None
        out[p + "accuracy"] = float((pred == y).mean())
        s = np.clip(scores, 1e-7, 1 - 1e-7)
        out[p + "log_loss"] = float(-np.mean(y * np.log(s) + (1 - y) * np.log(1 - s)))
    elif task.kind == "multiclass":
        y = y.astype(int)
        present = np.unique(y)
        aucs = []
        for c in present:
            if 0 < (y == c).sum() < len(y):
                aucs.append(skm.roc_auc_score((y == c).astype(int), scores[:, c]))
        out[p + "auc_macro"] = float(np.mean(aucs)) if aucs else None
        out[p + "balanced_accuracy"] = float(skm.balanced_accuracy_score(y, scores.argmax(1)))
        out[p + "accuracy"] = float((scores.argmax(1) == y).mean())
    elif task.kind == "multilabel":
        aucs = [skm.roc_auc_score(y[:, j], scores[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        out[p + "auc_macro"] = float(np.mean(aucs)) if aucs else None
        for j, c in enumerate(task.label_columns):
            if 0 < y[:, j].sum() < len(y):
                out[p + f"auc_{c}"] = float(skm.roc_auc_score(y[:, j], scores[:, j]))
    elif task.kind == "regression":
        err = scores - y
        out[p + "mae"] = float(np.mean(np.abs(err)))
        out[p + "rmse"] = float(np.sqrt(np.mean(err ** 2)))
        out[p + "r"] = float(np.corrcoef(scores, y)[0, 1]) if len(y) > 2 and np.std(scores) > 0 else None
        out[p + "r2"] = float(1 - np.sum(err ** 2) / np.sum((y - y.mean()) ** 2)) if np.std(y) > 0 else None
    return out


def default_monitor(kind: str) -> str:
    return {"binary": "val_auc", "multiclass": "val_auc_macro", "multilabel": "val_auc_macro",
            "regression": "val_mae", "segmentation": "val_dice"}[kind]


def monitor_direction(name: str) -> str:
    return "min" if any(t in name for t in ("loss", "mae", "rmse")) else "max"

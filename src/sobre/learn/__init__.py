"""Learning with few labels: training engine, contrastive pretraining, transfer, label efficiency.

The data's path: a frozen dataset version (``sobre.catalog``) → :func:`load_cohort` (preprocessed
once, cached memory-mapped) → subject-level splits (:func:`make_split`) → :func:`train` (supervised,
from scratch or fine-tuned), :func:`pretrain` (SimCLR or y-aware contrastive), :func:`probe` (frozen
features + linear model) → a run folder in the workspace with ``run.json`` and ``predictions.csv``
(read by ``sobre.validate``) → :func:`label_efficiency` to compare them all.

A completed run becomes a model again with :func:`load_model` (network, task, preprocessing,
provenance; ``predict`` and ``features`` on ``sobre.Image`` objects or dataset versions), and
:func:`explain` gives its saliency maps (integrated gradients, occlusion, Grad-CAM) on a dataset version,
in each image's own space, with the share of saliency mass per atlas region.

:func:`fuse` combines a completed binary image run with tabular (clinical) variables of its dataset
version: a tabular model, late fusion (a logistic regression on the out-of-fold image and tabular
logits) or feature-level fusion (encoder features + tabular columns in one logistic regression);
missing values are imputed with training statistics and flagged by indicator columns
(:class:`TabularPrep`). ``load_model`` of a fusion run gives a :class:`FusionModel`:
``predict(images, variables=...)`` scores new subjects with what the run fitted.

Nothing here prints: long work reports through ``progress(stage, done, total)`` callbacks
(:mod:`sobre.base`), epochs through ``on_epoch(record)``, and the ``sobre.learn`` logger.

>>> from sobre.learn import TrainConfig
>>> cfg = TrainConfig.model_validate({"data": {"dataset": "target@v1"},
...                                   "task": {"kind": "binary", "label": "diagnosis", "positive": "patient"}})
>>> cfg.model.backbone, cfg.split.test_fraction
('compact3d', 0.2)
"""

from sobre.learn._config import (
    DataConfig, FusionConfig, LabelEfficiencyConfig, MaskRule, PreprocessConfig, PretrainConfig, TabularConfig,
    TrainConfig, load_config, resolved, validate_config,
)
from sobre.learn._data import Cohort, load_cohort, model_input, preprocess_image
from sobre.learn._losses import GradientReversal, gather_rows, kernel_matrix, nt_xent, y_aware_infonce
from sobre.learn._runs import Run, list_runs, open_run, runs_root
from sobre.learn._splits import SplitPlan, check_disjoint, make_split

__all__ = [
    "TrainConfig", "PretrainConfig", "LabelEfficiencyConfig", "DataConfig", "PreprocessConfig", "MaskRule",
    "load_config", "validate_config", "resolved",
    "Cohort", "load_cohort", "preprocess_image", "model_input",
    "nt_xent", "y_aware_infonce", "kernel_matrix", "GradientReversal", "gather_rows",
    "init_parallel", "Parallel", "parallel",
    "SplitPlan", "make_split", "check_disjoint",
    "Run", "list_runs", "open_run", "runs_root",
    "train", "pretrain", "probe", "label_efficiency", "throughput", "CompactCNN",
    "load_model", "TrainedModel", "ModelTask", "Predictions",
    "explain", "saliency", "region_shares", "Explanation", "SubjectExplanation",
    "FusionConfig", "TabularConfig", "fuse", "FuseResult", "FusionResult", "TabularPrep", "TabularModel",
    "fit_tabular", "tabular_only", "late_fusion", "feature_fusion", "FusionModel",
]


def __getattr__(name: str):  # the heavier entry points load on first use
    if name == "train":
        from sobre.learn._train import train

        return train
    if name == "pretrain":
        from sobre.learn._pretrain import pretrain

        return pretrain
    if name == "probe":
        from sobre.learn._probe import probe

        return probe
    if name in ("label_efficiency", "throughput"):
        from sobre.learn import _benchmark

        return getattr(_benchmark, name)
    if name in ("load_model", "TrainedModel", "ModelTask", "Predictions"):
        from sobre.learn import _inference

        return getattr(_inference, name)
    if name in ("explain", "saliency", "region_shares", "Explanation", "SubjectExplanation"):
        from sobre.learn import _explain

        return getattr(_explain, name)
    if name in ("fuse", "FuseResult", "FusionResult", "TabularPrep", "TabularModel", "fit_tabular", "tabular_only",
                "late_fusion", "feature_fusion"):
        from sobre.learn import _fusion

        return getattr(_fusion, name)
    if name == "FusionModel":
        from sobre.learn._fusion_model import FusionModel

        return FusionModel
    if name in ("init_parallel", "Parallel", "parallel"):  # data parallel (torch.distributed, gloo)
        from sobre.learn import _engine

        return getattr(_engine, name)
    if name == "CompactCNN":
        from sobre.learn._models import CompactCNN

        return CompactCNN
    raise AttributeError(f"module 'sobre.learn' has no attribute {name!r}")

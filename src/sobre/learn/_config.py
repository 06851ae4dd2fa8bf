"""Typed experiment configurations, read from TOML.

Every section is a pydantic model with ``extra="forbid"``: an unknown or misspelt key is an error
that names the file, the key, the keys that are allowed there (with the nearest match) and the
fix. The resolved configuration (every default filled in) is what a run records.

The configurations hold values only, never code: a setting is a parameter (``epochs = 40``), not a
subclass or an expression.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from sobre.base import Config, config_from, load_config, resolved, validate_config  # noqa: F401 (re-exported)

__all__ = [
    "DataConfig", "PreprocessConfig", "TaskConfig", "SplitConfig", "ModelConfig", "OptimConfig",
    "EarlyStoppingConfig", "RuntimeConfig", "MethodConfig", "NuisanceConfig", "MonitorConfig",
    "TrainConfig", "PretrainConfig", "AugmentConfig", "MaskRule", "load_config", "validate_config",
    "LabelEfficiencyConfig", "TargetConfig", "BaselineConfig", "SiteAnalysisConfig", "SiteArmConfig", "resolved", "TabularConfig",
    "FusionConfig",
]


class _Section(Config):
    docs = "docs/learning.md"


# ---------------------------------------------------------------------------------------------- data
class DataConfig(_Section):
    """Where the images come from: always a frozen dataset version of the workspace."""

    dataset: str = Field(description="frozen dataset version: NAME@vN, NAME (latest) or a content-hash prefix")
    where: str | None = Field(None, description="optional filter on the series metadata (catalog filter language)")
    verify_hashes: bool = Field(True, description="re-hash every file against the manifest when building the cache")


class PreprocessConfig(_Section):
    """How images become arrays (once per dataset version; the result is cached, memory-mapped)."""

    resample: Literal["none", "shape", "spacing"] = Field(
        "none", description="none: all images must share one shape; shape: resize to `shape`; "
        "spacing: resample to `spacing` mm then centre-crop/pad to `shape`")
    shape: list[Annotated[int, Field(gt=0)]] | None = None
    spacing: list[Annotated[float, Field(gt=0)]] | None = None
    reorient: bool = Field(True, description="reorder axes/flip so that arrays are in LPS index order")
    intensity: Literal["zscore", "minmax", "percentile", "none"] = "zscore"
    percentiles: tuple[float, float] = (1.0, 99.0)
    foreground_threshold: float | None = Field(
        0.0, description="z-score statistics over voxels above this value (None: all voxels)")
    cache_dtype: Literal["float32", "float16"] = "float32"

    @model_validator(mode="after")
    def _rules(self):
        if self.resample == "shape" and not self.shape:
            raise ValueError("resample = \"shape\" needs `shape` (e.g. shape = [40, 48, 40])")
        if self.resample == "spacing" and not self.spacing:
            raise ValueError("resample = \"spacing\" needs `spacing` in mm (e.g. spacing = [4.0, 4.0, 4.0])")
        if self.shape and self.spacing and len(self.shape) != len(self.spacing):
            raise ValueError(f"`shape` has {len(self.shape)} axes but `spacing` has {len(self.spacing)}")
        if self.shape and len(self.shape) not in (2, 3):
            raise ValueError(f"`shape` must have 2 or 3 axes, not {len(self.shape)}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"`percentiles` must satisfy 0 <= low < high <= 100, not {list(self.percentiles)}")
        return self


class MaskRule(_Section):
    """Segmentation: which series of the dataset version are masks, paired with images by subject."""

    field: str = Field("protocol", description="metadata field that marks mask series (BIDS suffix: protocol)")
    equals: str = Field(description="value of that field on mask series (e.g. \"mask\" or \"seg\")")


class TaskConfig(_Section):
    kind: Literal["binary", "multiclass", "multilabel", "regression", "segmentation"]
    label: str | None = Field(None, description="metadata column with the reference (binary/multiclass/regression)")
    labels: list[str] | None = Field(None, description="multilabel: one 0/1 metadata column per label")
    positive: str | int | bool | None = Field(None, description="binary: the positive class value")
    classes: list[str | int] | None = Field(None, description="multiclass: expected classes, in score order")
    mask: MaskRule | None = None
    n_classes: int = Field(2, ge=2, description="segmentation: number of classes including background")
    loss: Literal["mse", "l1", "huber"] = Field("l1", description="regression loss (targets are standardised)")
    patch: list[Annotated[int, Field(gt=0)]] | None = Field(None, description="segmentation: training patch size")
    overlap: float = Field(0.25, ge=0, lt=1, description="segmentation: sliding-window overlap")

    @model_validator(mode="after")
    def _rules(self):
        k = self.kind
        if k in ("binary", "multiclass", "regression") and not self.label:
            raise ValueError(f"a {k} task needs `label`, the metadata column holding the reference")
        if k == "multilabel" and not self.labels:
            raise ValueError("a multilabel task needs `labels`, one 0/1 metadata column per label")
        if k == "segmentation" and self.mask is None:
            raise ValueError("a segmentation task needs `mask = { field = \"series_description\", equals = \"mask\" }`")
        if self.positive is not None and k != "binary":
            raise ValueError(f"`positive` applies to binary tasks only, not {k}")
        if self.classes is not None and k != "multiclass":
            raise ValueError(f"`classes` applies to multiclass tasks only, not {k}")
        if self.classes is not None and len(set(map(str, self.classes))) < 2:
            raise ValueError("`classes` must list at least two distinct classes")
        return self


class SplitConfig(_Section):
    """Subject-level splits: a held-out test set, then train/validation or k folds."""

    test_fraction: float = Field(0.2, ge=0, lt=1)
    test_column: str | None = Field(None, description="metadata column fixing the test set (its values in "
                                    "`test_values` mark test subjects); overrides test_fraction")
    test_values: list[str] = ["test"]
    val_fraction: float = Field(0.2, gt=0, lt=1)
    folds: int = Field(1, ge=1, le=20, description="1: one train/validation split; k > 1: k-fold cross-validation")
    stratify: list[str] = Field(["label", "site"], description="\"label\" and/or metadata columns")
    seed: int | None = Field(None, description="split seed (defaults to the run seed)")


class ModelConfig(_Section):
    backbone: Literal["compact3d", "densenet121", "resnet10", "resnet18", "resnet34", "unet", "dynunet"] = \
        "compact3d"
    width: int = Field(16, ge=2, le=512, description="compact3d/unet: channels of the first stage")
    depth: int = Field(4, ge=2, le=7, description="compact3d/unet: number of stages")
    norm: Literal["batch", "instance", "group"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)
    projection_dim: int = Field(64, ge=2, description="pretraining: projection-head output size")
    projection_hidden: int = Field(256, ge=2, description="pretraining: projection-head hidden size")
    init_from: str | None = Field(None, description="a pretraining run id (or checkpoint path) whose encoder "
                                  "weights start this model (fine-tuning)")
    freeze_encoder: bool = Field(False, description="train the head only")
    encoder_lr_scale: float = Field(1.0, gt=0, description="learning-rate factor for a pretrained encoder")
    head_init: Literal["random", "probe"] = Field(
        "random", description="probe: with init_from, start the head from a logistic/ridge probe fit on the frozen "
        "features of the training subjects (LP-FT); the model before fine-tuning is validated as epoch 0 and kept "
        "if fine-tuning does not beat it")
    head_warmup_epochs: int = Field(0, ge=0, description="train the head alone (encoder frozen) for this many "
                                    "epochs first, then everything (linear probing, then fine-tuning)")
    freeze_norm: bool = Field(False, description="keep the encoder's normalisation layers in inference mode "
                              "(statistics from pretraining) while fine-tuning: steadier with few labels")
    covariates: list[str] = Field([], description="numeric metadata (e.g. [\"age\"]) appended, standardised "
                                  "with training statistics, to the image features before the head")


class EarlyStoppingConfig(_Section):
    patience: int | None = Field(10, ge=1, description="epochs without improvement before stopping; none: off")
    metric: str = Field("auto", description="auto: val AUC (binary), macro AUC, MAE, Dice or val loss")
    min_delta: float = Field(0.0, ge=0)


class OptimConfig(_Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(30, ge=1)
    min_steps: int = Field(0, ge=0, description="train for at least this many optimiser steps "
                           "(epochs are added for small datasets)")
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm (0: off)")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()


class RuntimeConfig(_Section):
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: fp32 on every CPU (bf16 autocast changed results where measured); bf16: autocast, "
        "fast where the CPU has native bf16 (AMX or AVX-512 BF16)")
    threads: int = Field(0, ge=0, description="torch threads (0: the cores this process may use)")
    progress: bool = True
    prefetch: bool = Field(True, description="prepare (read + augment) the next batch in a background thread "
                           "while the current one trains; the order of random draws is unchanged")
    channels_last: bool = Field(True, description="channels-last memory format for 3D convolutions (faster on CPU)")


# --------------------------------------------------------------------------------------- augmentation
class _Aug(_Section):
    prob: float = Field(0.5, ge=0, le=1)


class FlipAug(_Aug):
    kind: Literal["flip"]
    axes: list[int] = [0]


class AffineAug(_Aug):
    kind: Literal["affine"]
    rotate_deg: float = Field(10.0, ge=0, le=180)
    scale: float = Field(0.1, ge=0, lt=1)
    translate: float = Field(2.0, ge=0, description="voxels")


class CropAug(_Aug):
    kind: Literal["crop"]
    scale: tuple[float, float] = Field((0.6, 1.0), description="crop side as a fraction of the image, resized back")


class NoiseAug(_Aug):
    kind: Literal["noise"]
    std: float = Field(0.1, ge=0)


class IntensityAug(_Aug):
    kind: Literal["intensity"]
    scale: float = Field(0.1, ge=0, description="multiply by 1 ± scale")
    shift: float = Field(0.1, ge=0, description="add ± shift (in standard deviations)")


class GammaAug(_Aug):
    kind: Literal["gamma"]
    gamma: tuple[float, float] = (0.7, 1.5)


class BlurAug(_Aug):
    kind: Literal["blur"]
    sigma: tuple[float, float] = Field((0.25, 1.0), description="voxels")


class BiasFieldAug(_Aug):
    kind: Literal["bias_field"]
    coeff: float = Field(0.3, ge=0)


class CutoutAug(_Aug):
    kind: Literal["cutout"]
    holes: int = Field(1, ge=1)
    size: float = Field(0.25, gt=0, lt=1, description="hole side as a fraction of the image side")


AugmentConfig = Annotated[
    Union[FlipAug, AffineAug, CropAug, NoiseAug, IntensityAug, GammaAug, BlurAug, BiasFieldAug, CutoutAug],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------------- train
class TrainConfig(_Section):
    """``sobre train CONFIG.toml``."""

    seed: int = 0
    name: str | None = None
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    task: TaskConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    augment: list[AugmentConfig] = []
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _rules(self):
        seg = self.task.kind == "segmentation"
        if seg and self.model.backbone not in ("unet", "dynunet"):
            raise ValueError(f"segmentation needs backbone \"unet\" or \"dynunet\", not \"{self.model.backbone}\"")
        if seg and self.model.covariates:
            raise ValueError("model.covariates are not used by segmentation")
        if not seg and self.model.backbone in ("unet", "dynunet"):
            raise ValueError(f"backbone \"{self.model.backbone}\" is for segmentation; use compact3d, densenet121 "
                             f"or resnet10/18/34 for a {self.task.kind} task")
        return self


# ------------------------------------------------------------------------------------------ pretrain
class NuisanceConfig(_Section):
    """A variable (e.g. site) whose information the representation should not carry."""

    variable: str
    method: Literal["conditional", "adversarial", "both"] = Field(
        "conditional", description="conditional: contrast only within the anchor's nuisance group; "
        "adversarial: gradient-reversal classifier on the representation; both: the two together")
    weight: float = Field(1.0, ge=0, description="adversarial loss weight")


class MethodConfig(_Section):
    kind: Literal["simclr", "yaware"]
    temperature: float = Field(0.1, gt=0)
    variables: list[str] = Field([], description="yaware: continuous metadata variables (e.g. [\"age\"])")
    bandwidth: list[float] = Field([], description="yaware: kernel bandwidth sigma per variable, in the variable's "
                                   "units (or in standard deviations with standardize = true)")
    kernel: Literal["rbf", "laplacian"] = "rbf"
    standardize: bool = Field(False, description="divide each variable by its standard deviation first")
    nuisance: NuisanceConfig | None = None

    @model_validator(mode="after")
    def _rules(self):
        if self.kind == "yaware":
            if not self.variables:
                raise ValueError("yaware needs `variables`, e.g. variables = [\"age\"]")
            if len(self.bandwidth) != len(self.variables):
                raise ValueError(f"`bandwidth` needs one value per variable ({len(self.variables)}), "
                                 f"found {len(self.bandwidth)}")
            if any(b <= 0 for b in self.bandwidth):
                raise ValueError("every `bandwidth` must be > 0")
        elif self.variables or self.bandwidth:
            raise ValueError("`variables`/`bandwidth` apply to kind = \"yaware\" only")
        return self


class MonitorConfig(_Section):
    """Held-out subjects on which the representation is probed during pretraining."""

    val_fraction: float = Field(0.1, ge=0, lt=1)
    every: int = Field(5, ge=1, description="probe every N epochs (and after the last)")
    regress: list[str] = Field([], description="continuous variables predicted by ridge (MAE reported)")
    classify: list[str] = Field([], description="categorical variables predicted by logistic regression "
                                "(balanced accuracy reported; for a nuisance such as site, lower is better)")


class PretrainConfig(_Section):
    """``sobre pretrain CONFIG.toml``."""

    seed: int = 0
    name: str | None = None
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig
    optim: OptimConfig = OptimConfig(batch_size=32, epochs=20, lr=1e-3, early_stopping=EarlyStoppingConfig(
        patience=None))
    augment: list[AugmentConfig] = [
        FlipAug(kind="flip", prob=0.5, axes=[0]),
        AffineAug(kind="affine", prob=0.8),
        IntensityAug(kind="intensity", prob=0.8),
        BlurAug(kind="blur", prob=0.3),
        NoiseAug(kind="noise", prob=0.5),
        CutoutAug(kind="cutout", prob=0.5),
    ]
    monitor: MonitorConfig = MonitorConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _rules(self):
        if self.model.backbone in ("unet", "dynunet"):
            raise ValueError("pretraining needs an encoder backbone (compact3d, densenet121, resnet10/18/34)")
        if self.model.init_from:
            raise ValueError("`model.init_from` is not used by pretraining")
        if self.optim.batch_size < 2:
            raise ValueError("contrastive pretraining needs batch_size >= 2")
        return self


# ---------------------------------------------------------------------------------------- benchmark
class ExternalTestConfig(_Section):
    """A second test set from another dataset version (e.g. another anatomy or hospital), used only for testing.

    The models of every (N, repeat) are trained on the target's labelled subjects as usual, and also
    scored on every subject of this dataset version (its label and covariates named as in the target).
    """

    name: str = Field("external", min_length=1, description="how the report calls it (e.g. itk-head)")
    data: DataConfig


class TargetConfig(_Section):
    """One labelled cohort of the label-efficiency benchmark."""

    name: str
    data: DataConfig
    task: TaskConfig
    test_size: int | None = Field(200, ge=1, description="held-out test subjects (same for every N and repeat)")
    test_column: str | None = Field(None, description="metadata column fixing the test set instead")
    test_values: list[str] = ["test"]
    n_labels: list[Annotated[int, Field(ge=4)]] | None = Field(None, description="overrides the benchmark list")
    methods: list[str] | None = Field(None, description="overrides the benchmark list")
    covariates: list[str] = Field([], description="numeric metadata given to every arm with the images: appended "
                                  "to the CNN features before the head, and to the probe and baseline features")
    external_test: ExternalTestConfig | None = Field(
        None, description="also score the probe and baseline arms on this dataset version (test only: no subject of "
        "it is ever trained on); the report gives the metric there and the loss against the internal test set")

    @model_validator(mode="after")
    def _rules(self):
        if self.task.kind not in ("binary", "regression"):
            raise ValueError(f"label-efficiency targets are binary or regression tasks, not {self.task.kind}")
        if self.methods:
            _known_methods(self.methods)
        return self


class BaselineConfig(_Section):
    """The classical baseline: atlas-ROI features + logistic / ridge regression."""

    atlas: str | None = Field(None, description="label image (NIfTI/NRRD) in the images' space; "
                              "none: a regular grid of `grid` blocks")
    grid: list[int] = [4, 4, 4]
    features: list[Literal["mean", "volume"]] = ["mean", "volume"]
    tissue_threshold: float = Field(0.5, description="volume = voxels above this (preprocessed) intensity")
    min_voxels: int = Field(8, ge=1, description="ROIs with fewer voxels on the grid are dropped")


METHODS = ("scratch", "simclr_probe", "yaware_probe", "yaware_finetune", "simclr_finetune", "classical",
           "yaware_site_probe", "yaware_site_finetune", "yaware_combat_probe")


class SiteArmConfig(_Section):
    """``[yaware_site]``: how the yaware_site_* arms treat the site (a nuisance in pretraining, and/or erasure)."""

    variable: str = Field("site", description="the nuisance column (acquisition site)")
    method: Literal["none", "conditional", "adversarial", "both"] = Field(
        "adversarial", description="the nuisance in the y-aware pretraining (method.nuisance): conditional "
        "contrast within the site, adversarial gradient-reversal site classifier, both; none: the y-aware "
        "encoder itself (with erase)")
    weight: float = Field(1.0, ge=0, description="adversarial loss weight")
    erase: Literal["none", "leace"] = Field(
        "none", description="leace: a fixed linear map after the encoder, fitted on the pretraining subjects that "
        "trained it, after which every site has the same mean feature vector (no linear site probe beats chance "
        "on them); needs no site at inference")

    @model_validator(mode="after")
    def _rules(self):
        if self.method == "none" and self.erase == "none":
            raise ValueError("method = \"none\" with erase = \"none\" is the y-aware arm itself; set a method "
                             "(conditional, adversarial, both) or erase = \"leace\"")
        return self

    def nuisance(self) -> NuisanceConfig | None:
        if self.method == "none":
            return None
        return NuisanceConfig(variable=self.variable, method=self.method, weight=self.weight)


class SiteAnalysisConfig(_Section):
    """Site effects in the label-efficiency benchmark: site probes, leave-one-site-out, ComBat settings."""

    variable: str = Field("site", description="the nuisance (acquisition site) column of the dataset versions")
    probe: bool = Field(True, description="site probe (logistic, balanced accuracy) on the features of the "
                        "pretraining subjects held out from pretraining, for every pretrained representation")
    loso_n: int | None = Field(100, ge=4, description="leave-one-site-out AUC of the probe arms at this N (each "
                               "repeat's labelled subjects of the other sites train, the test subjects of the "
                               "left-out site are scored); none: off")
    combat_covariates: list[str] | None = Field(
        None, description="effects ComBat keeps (yaware_combat_probe); none: the target's covariates (e.g. age). "
        "The label is never one: the test subjects' labels are unknown when ComBat is applied to them")


class LabelEfficiencyConfig(_Section):
    """``sobre benchmark label-efficiency CONFIG.toml``."""

    seed: int = 0
    name: str | None = None
    pretrain_data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    simclr: MethodConfig = MethodConfig(kind="simclr", temperature=0.1)
    yaware: MethodConfig = MethodConfig(kind="yaware", temperature=0.1, variables=["age"], bandwidth=[5.0])
    yaware_site: SiteArmConfig = Field(
        SiteArmConfig(), description="yaware_site_*: the y-aware pretraining of `yaware` with the site as a nuisance "
        "and/or a linear site erasure")
    site_analysis: SiteAnalysisConfig = SiteAnalysisConfig()
    pretrain_optim: OptimConfig = OptimConfig(batch_size=32, epochs=20, early_stopping=EarlyStoppingConfig(
        patience=None))
    pretrain_augment: list[AugmentConfig] = PretrainConfig.model_fields["augment"].default
    pretrain_monitor: MonitorConfig = MonitorConfig(val_fraction=0.1, every=1000, regress=["age"],
                                                    classify=["site"])
    scratch_optim: OptimConfig = OptimConfig(epochs=30, min_steps=150)
    finetune_optim: OptimConfig = OptimConfig(epochs=20, lr=3e-4, min_steps=100)
    finetune_encoder_lr_scale: float = Field(0.3, gt=0)
    finetune_head_init: Literal["random", "probe"] = Field("probe", description="start the head from the probe")
    finetune_head_warmup_epochs: int = Field(0, ge=0, description="head-only epochs before fine-tuning everything")
    finetune_freeze_norm: bool = Field(True, description="encoder normalisation layers keep pretraining statistics")
    augment: list[AugmentConfig] = [FlipAug(kind="flip", prob=0.5, axes=[0]), AffineAug(kind="affine", prob=0.5)]
    baseline: BaselineConfig = BaselineConfig()
    targets: list[TargetConfig]
    n_labels: list[Annotated[int, Field(ge=4)]] = [25, 50, 100, 200, 400]
    repeats: int = Field(5, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of each labelled subset used for early "
                                "stopping of the CNN arms (probes use inner cross-validation)")
    methods: list[str] = list(METHODS[:4]) + ["classical"]
    brain_age: TargetConfig | None = Field(None, description="optional regression target evaluated with "
                                           "frozen y-aware features + ridge (e.g. age of held-out healthy subjects)")
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _rules(self):
        _known_methods(self.methods)
        if self.yaware.nuisance is not None and any(
                m.startswith("yaware_site") for m in self.methods + [m for t in self.targets for m in t.methods or []]):
            raise ValueError("`yaware.nuisance` is set: yaware_* arms would already be site-aware; put the "
                             "nuisance in the [yaware_site] section and compare yaware_* with yaware_site_*")
        if self.yaware_site.erase != "none" and "yaware_site_finetune" in self.methods + [
                m for t in self.targets for m in t.methods or []]:
            raise ValueError("yaware_site_finetune fine-tunes the pretrained encoder without the erasure of "
                             "yaware_site.erase; use yaware_site_probe, or erase = \"none\"")
        if len({t.name for t in self.targets}) != len(self.targets):
            raise ValueError("target names must be unique")
        return self


def _known_methods(methods) -> None:
    from difflib import get_close_matches

    bad = [m for m in methods if m not in METHODS]
    if bad:
        near = get_close_matches(bad[0], METHODS, n=1)
        raise ValueError(f"unknown method {bad[0]!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; choose among {', '.join(METHODS)}")


# ------------------------------------------------------------------------------------------- fusion
class TabularConfig(_Section):
    """Tabular (clinical) variables of the dataset version, and how their missing values are handled.

    Every statistic (imputed value, mean, standard deviation) is computed on the training subjects
    of each fit only, never on the subjects it scores.
    """

    variables: list[str] = Field(min_length=1, description="numeric variables of the dataset version "
                                 "(e.g. [\"nfl\"]); a variable absent from the version is refused")
    missing: Literal["indicator", "refuse"] = Field(
        "indicator", description="indicator: impute (training statistic) and add a 0/1 `<var>_missing` column "
        "per variable; refuse: any missing value is an error naming the subjects")
    impute: Literal["median", "mean"] = Field("median", description="the training statistic imputed")
    absent: Literal["refuse", "impute"] = Field(
        "refuse", description="a variable with no value among two or more subjects being scored (e.g. not "
        "recorded at a site): refuse, or impute every one of them (indicator 1)")


class FusionConfig(_Section):
    """``sobre fuse CONFIG.toml``: combine a completed image run with tabular variables (binary tasks).

    The dataset version, the label, the subjects and their train/validation/test split are the image
    run's own (its ``run.json`` and ``split.csv``); the test subjects enter no fit.
    """

    seed: int = 0
    name: str | None = None
    image_run: str = Field(description="a completed binary `train` or `probe` run (id or unique prefix)")
    method: Literal["late", "feature", "tabular"] = Field(
        "late", description="late: logistic regression on the image run's out-of-fold logit and a tabular "
        "model's out-of-fold logit; feature: the run's encoder features + tabular variables in one "
        "logistic regression; tabular: the tabular model alone")
    tabular: TabularConfig
    inner_folds: int = Field(5, ge=2, le=20, description="subject folds for out-of-fold scores and the "
                             "choice of the penalty, within the development subjects")
    C: float | None = Field(None, gt=0, description="penalty (inverse) of the tabular and the feature-fusion "
                            "logistic regressions; none: chosen by inner cross-validation (AUC) on the development "
                            "subjects")
    combiner_C: float = Field(1.0, gt=0, description="late fusion: penalty (inverse) of the combiner on its two "
                              "standardised logits (not chosen by AUC, which ties across penalties and then "
                              "takes the strongest, distorting the two weights)")

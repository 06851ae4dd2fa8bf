"""Typed configuration of normative models and subtype discovery (:class:`sobre.base.Config`, TOML).

```toml
[data]
images = { field = "protocol", equals = "T1w" }     # the images (intensities; their modality is recorded)
labels = { field = "protocol", equals = "dseg" }    # label maps on the images' grids (regional measures)
maps = { field = "protocol", equals = "logjac" }    # voxel-wise maps in one template space (optional)
subject = "subject_id"                               # pairs images, labels and maps

[covariates]
age = "age"
sex = "sex"
site = "site"                                        # the batch

[model]
age_df = 3              # natural spline degrees of freedom for age
scale = "site"          # site | site+age (variance also a smooth function of age)
# scale_prior_df = 10   # fixed pooling of the site variances (default: empirical Bayes)
min_subjects = 50       # smallest normative sample (and 10 per parameter)
min_per_site = 10

[measures]
regions = ["volume", "intensity"]
volume = "icv_fraction"                # icv_fraction: log(V / all labelled volume) | absolute: log(V mm3)
intensity_reference = "White_Matter"   # region whose median intensity divides (missing: all labels)

[scoring]
threshold = 2.6                        # |z| counted as extreme
fdr = 0.05
extrapolation = "flag"                 # flag (scored, marked, left out of group tests) | refuse
group = { field = "diagnosis", reference = "control" }
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sobre.base import Config

__all__ = ["CovariateConfig", "MeasureConfig", "ModelConfig", "NormativeConfig", "NormativeData", "ScoringConfig",
           "SeriesRule", "GroupRule", "SubtypeConfig"]


class _Section(Config):
    docs = "docs/normative.md"


class SeriesRule(_Section):
    """Which series of a dataset version play a role: ``field == equals`` on their metadata."""

    field: str = "protocol"
    equals: str


class GroupRule(_Section):
    field: str = Field("diagnosis", description="metadata column naming each subject's group")
    reference: str = Field("control", description="the value of healthy reference subjects")


class NormativeData(_Section):
    images: SeriesRule = Field(default_factory=lambda: SeriesRule(equals="T1w"))
    labels: SeriesRule | None = Field(default_factory=lambda: SeriesRule(equals="dseg"))
    maps: SeriesRule | None = None
    subject: str = "subject_id"


class CovariateConfig(_Section):
    age: str = "age"
    sex: str = "sex"
    site: str = "site"


class ModelConfig(_Section):
    age_df: int = Field(3, ge=1, le=8)
    scale: Literal["site", "site+age"] = "site"
    scale_prior_df: float | None = Field(None, ge=0, le=1000, description="None: site variances pooled by "
                                         "empirical Bayes; a number: fixed pooling weight (degrees of freedom)")
    min_subjects: int = Field(50, ge=5)
    min_per_site: int = Field(10, ge=2)


class MeasureConfig(_Section):
    regions: list[Literal["volume", "intensity"]] = Field(default_factory=lambda: ["volume", "intensity"])
    volume: Literal["icv_fraction", "absolute"] = "icv_fraction"
    intensity_reference: str = "White_Matter"
    skip_labels: list[str] = Field(default_factory=list, description="region names left out (e.g. CSF)")


class ScoringConfig(_Section):
    threshold: float = Field(2.6, gt=0, le=10)
    fdr: float = Field(0.05, gt=0, lt=1)
    extrapolation: Literal["flag", "refuse"] = "flag"
    unseen_sites: Literal["flag", "refuse"] = "flag"
    group: GroupRule = Field(default_factory=GroupRule)


class NormativeConfig(_Section):
    """Everything that shapes a normative model (recorded, resolved, in the model artefact)."""

    data: NormativeData = Field(default_factory=NormativeData)
    covariates: CovariateConfig = Field(default_factory=CovariateConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    measures: MeasureConfig = Field(default_factory=MeasureConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)


class SubtypeConfig(_Section):
    """Subtype discovery: clustering of patients' deviation profiles, k chosen by stability."""

    k_min: int = Field(2, ge=2, le=20)
    k_max: int = Field(6, ge=2, le=20)
    resamples: int = Field(50, ge=5, le=1000, description="subsamples per k (consensus clustering)")
    fraction: float = Field(0.8, gt=0.3, lt=1, description="share of subjects in each subsample")
    n_init: int = Field(10, ge=1, le=100, description="k-means restarts")
    metric: Literal["euclidean", "cosine"] = Field(
        "cosine", description="cosine: patterns regardless of severity (each profile scaled to unit length)")
    components: float = Field(0.9, gt=0, le=1, description="PCA: share of variance kept (1: none)")
    max_components: int = Field(20, ge=1, le=500)
    criterion: Literal["stability", "pac"] = "stability"
    null_resamples: int = Field(20, ge=0, le=1000, description="resamples on a one-cluster Gaussian null "
                                "(0: no null); a k is chosen only where stability beats the null")
    site_flag_v: float = Field(0.5, gt=0, le=1, description="Cramér's V with site above which clusters "
                               "'recover sites'")
    seed: int = Field(0, ge=0)

    @field_validator("k_max")
    @classmethod
    def _range(cls, v, info):
        lo = info.data.get("k_min", 2)
        if v < lo:
            raise ValueError(f"k_max must be at least k_min ({lo})")
        return v

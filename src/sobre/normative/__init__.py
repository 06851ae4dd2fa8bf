"""Normative modelling and subtype discovery: where each patient deviates from the healthy population,
and which patients deviate alike.

A normative model (:func:`fit_normative`) learns, from a frozen *healthy* dataset version, the expected
value and spread of every regional measure (atlas volumes and intensities) and of every voxel of a
template-space map, given age and sex, with site as a hierarchical batch effect (docs/normative.md
says which model and why). It is frozen in the workspace with its provenance and applied to other
versions with :meth:`NormativeModel.score`: z-scores with intervals, ranked regions, extreme-value
counts, group deviations with Benjamini-Hochberg q-values, z-maps. :func:`discover_subtypes` clusters
patients' deviation profiles (or learned features), chooses the number of clusters by stability and
flags clusters that merely recover sites.

Everything also works on arrays (:func:`fit_arrays`, :func:`predict_arrays`), e.g. for benchmarks.

>>> import numpy as np
>>> from sobre.normative import fit_arrays, predict_arrays
>>> rng = np.random.default_rng(0)
>>> age = rng.uniform(20, 80, 300); sex = rng.choice(["F", "M"], 300); site = rng.choice(["a", "b"], 300)
>>> y = (0.01 * age)[:, None] + rng.normal(size=(300, 4))
>>> params = fit_arrays(y, age, sex, site)
>>> pred = predict_arrays(params, np.array([50.0]), np.array(["F"]), np.array(["a"]))
>>> pred.z(np.array([[0.5, 0.5, 0.5, 0.5]])).shape
(1, 4)
"""

from sobre.normative._config import (
    CovariateConfig, GroupRule, MeasureConfig, ModelConfig, NormativeConfig, NormativeData, ScoringConfig, SeriesRule,
    SubtypeConfig,
)
from sobre.normative._measures import Atlas, measure_names, regional_measures
from sobre.normative._model import (
    NormativeParams, Predictions, expected_extremes, fit_arrays, natural_spline, nominal_rate, predict_arrays, t_to_z,
)
from sobre.normative._normative import (
    NormativeModel, NormativeScores, SubjectData, code_version, collect, fit_normative, list_normative, load_normative,
    normative_root,
)
from sobre.normative._stats import GroupDeviation, benjamini_hochberg, group_deviation
from sobre.normative._subtypes import SubtypeModel, adjusted_rand_index, discover_subtypes, kmeans, metadata_association

__all__ = [
    # configuration
    "NormativeConfig", "NormativeData", "SeriesRule", "CovariateConfig", "ModelConfig", "MeasureConfig",
    "ScoringConfig", "GroupRule", "SubtypeConfig",
    # measures
    "Atlas", "measure_names", "regional_measures",
    # the model on arrays
    "NormativeParams", "Predictions", "fit_arrays", "predict_arrays", "natural_spline", "t_to_z", "nominal_rate",
    "expected_extremes",
    # on dataset versions
    "NormativeModel", "NormativeScores", "SubjectData", "collect", "fit_normative", "load_normative",
    "list_normative", "normative_root", "code_version",
    # statistics
    "GroupDeviation", "benjamini_hochberg", "group_deviation",
    # subtypes
    "SubtypeModel", "discover_subtypes", "adjusted_rand_index", "kmeans", "metadata_association",
]

"""Typed configuration of simulated cohorts (:class:`sobre.base.Config` sections, loadable from TOML or dicts).

Every number that shapes a cohort lives here, with its unit, so that the resolved configuration
written next to a cohort (``simulation.json``) says exactly how it was made. Unknown keys are refused
with the nearest valid key; every value is checked (range, finiteness, known region groups) with a
:class:`~sobre.errors.ConfigError` naming the key, what was expected and what was found.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    Field,
    PositiveFloat,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sobre.base import Config, read_toml, resolved, validate_config
from sobre.errors import ConfigError

# --------------------------------------------------------------------------- published-rate defaults
# Cross-sectional volume change per decade of adult age (percent, log-linear), per region group.
# Rounded from healthy-ageing studies (see docs/simulation.md): association cortex and hippocampus,
# thalamus and putamen lose ~4-5 %/decade, cerebellum and white matter less, primary visual cortex
# ~0 (Raz et al. 2005; Walhovd et al. 2011; Fjell et al. 2009, 2013); lateral ventricles grow ~20
# %/decade on a log scale (x3 from 20 to 80 years; Walhovd 2011; Resnick et al. 2003).
DEFAULT_AGE_RATES: dict[str, float] = {
    "frontal": -4.5,
    "insula_cingulate": -3.5,
    "hippocampus": -5.0,
    "parahippocampal": -3.0,
    "amygdala": -3.0,
    "visual": 0.0,
    "occipital": -1.5,
    "parietal": -4.0,
    "caudate": -4.0,
    "putamen_pallidum": -4.5,
    "thalamus": -5.0,
    "temporal": -4.5,
    "cerebellum": -3.0,
    "ventricles": 20.0,
    "white_matter": -2.0,
}

# SD of each subject's own log-volume offset per group (individual differences beyond age and sex,
# after intracranial-volume normalisation): a few percent for cortex and deep grey matter, ~35 %
# for the ventricles, whose size varies several-fold between healthy adults of the same age.
DEFAULT_GROUP_SD: dict[str, float] = {
    "frontal": 0.03, "insula_cingulate": 0.04, "hippocampus": 0.06, "parahippocampal": 0.05, "amygdala": 0.06,
    "visual": 0.04, "occipital": 0.04, "parietal": 0.03, "caudate": 0.07, "putamen_pallidum": 0.06,
    "thalamus": 0.05, "temporal": 0.03, "cerebellum": 0.05, "ventricles": 0.35, "white_matter": 0.04,
}

# Disease presets: percent volume change per region group (or region) at strength 1.0.
DISEASE_PRESETS: dict[str, dict[str, Any]] = {
    # Overlaps the regions that age: an accelerated-ageing-like pattern, with effect sizes rounded
    # from ENIGMA schizophrenia meta-analyses (van Erp et al. 2016, 2018): hippocampus d~-0.46,
    # amygdala/thalamus d~-0.3, lateral ventricles d~+0.37, thinner frontal/temporal cortex.
    "accelerated-ageing": {
        "effects": {"hippocampus": -4.5, "amygdala": -3.0, "thalamus": -2.5, "parahippocampal": -2.5,
                    "frontal": -2.5, "temporal": -2.5, "insula_cingulate": -3.0, "ventricles": 15.0},
        "description": "schizophrenia-like accelerated-ageing pattern (overlaps the ageing regions)",
    },
    # Regions that do not age in the default age model (calcarine, cuneus, lingual): the disease
    # signal cannot be confused with, or learned from, ageing.
    "visual": {
        "effects": {"visual": -6.0},
        "description": "primary visual cortex atrophy (regions that do not age)",
    },
}
DISEASE_ALIASES = {"schizophrenia-like": "accelerated-ageing", "non-ageing": "visual"}

# Disease subtypes: each patient carries one subtype, whose regional pattern is added to the shared
# ``effects``. The preset's three patterns do not overlap (so that the truth is unambiguous) and mimic
# the atrophy subtypes reported for Alzheimer's disease (Murray et al. 2011; Ferreira et al. 2020:
# limbic-predominant, hippocampal-sparing/cortical, and a subcortical pattern); the percentages are
# of the order of moderate Alzheimer's disease (hippocampus about -20 %, Fox & Schott 2004).
SUBTYPE_PRESETS: dict[str, dict[str, Any]] = {
    "three-subtypes": {
        "effects": {},
        "subtypes": [
            {"name": "limbic", "effects": {"hippocampus": -20.0, "amygdala": -20.0, "parahippocampal": -15.0}},
            {"name": "cortical", "effects": {"parietal": -10.0, "visual": -10.0, "occipital": -8.0}},
            {"name": "subcortical", "effects": {"thalamus": -15.0, "caudate": -15.0, "putamen_pallidum": -12.0}},
        ],
        "description": "three non-overlapping atrophy subtypes (limbic, posterior cortical, subcortical)",
    },
}

SCANNERS = [
    # manufacturer, model, field strength (T), typical 3D T1 (TR ms, TE ms, TI ms, flip deg), sequence name
    ("SIEMENS", "Prisma", 3.0, (2300.0, 2.98, 900.0, 9.0), "MPRAGE"),
    ("GE MEDICAL SYSTEMS", "DISCOVERY MR750", 3.0, (7.3, 3.0, 400.0, 11.0), "BRAVO"),
    ("Philips Medical Systems", "Achieva", 1.5, (8.1, 3.7, 0.0, 8.0), "3D T1-TFE"),
    ("SIEMENS", "Avanto", 1.5, (2160.0, 3.1, 1100.0, 15.0), "MPRAGE"),
    ("Philips Medical Systems", "Ingenia", 3.0, (6.8, 3.1, 0.0, 9.0), "3D T1-TFE"),
    ("GE MEDICAL SYSTEMS", "SIGNA Premier", 3.0, (7.6, 3.1, 450.0, 12.0), "BRAVO"),
    ("SIEMENS", "Skyra", 3.0, (2300.0, 2.32, 900.0, 8.0), "MPRAGE"),
    ("Canon Medical Systems", "Vantage Orian", 1.5, (9.0, 4.0, 0.0, 15.0), "3D FFE"),
]

ORIENTATIONS = ("axial", "sagittal", "coronal")
MAX_STRENGTH = 10.0  # |disease strength|: beyond, atrophy compounds past anything the model is calibrated for


# --------------------------------------------------------------------------- configuration sections
class SimSection(Config):
    """Base of the simulator's configuration sections: unknown keys and non-finite numbers refused."""

    docs = "docs/simulation.md"

    def validate(self) -> None:
        """Check the current values again (after attribute assignments); raise :class:`ConfigError`."""
        validate_config(self.model_dump(), type(self))

    def to_dict(self) -> dict:
        """The resolved configuration, JSON-able (every default filled in)."""
        return resolved(self)


def _bad(expected: str) -> PydanticCustomError:
    """A value error whose message says what was expected (the key and the value found are added)."""
    return PydanticCustomError("value_out_of_range", "expected {expected}", {"expected": expected})


def _within(v: float, lo: float, hi: float, expected: str) -> float:
    if not lo <= v <= hi:
        raise _bad(expected)
    return v


def _known_groups(mapping: dict, what: str) -> dict:
    unknown = sorted(set(mapping) - set(DEFAULT_AGE_RATES))
    if unknown:
        raise ValueError(f"unknown region group(s) in {what}: {', '.join(unknown)} (expected region groups "
                         f"{', '.join(DEFAULT_AGE_RATES)})")
    return mapping


class AgeModel(SimSection):
    """How volumes change with age.

    ``log V_r(age) = log V_r(ref) + log(1 + rate_g / 100) * (age - reference_age) / 10`` for every
    region ``r`` of group ``g``.
    """

    reference_age: float = Field(40.0, ge=0, le=120, description="years")
    rates: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_AGE_RATES),
                                    description="percent volume change per decade, per region group")
    contrast_change: float = Field(-3.0, description="grey/white T1 contrast, percent per decade "
                                   "(Salat et al. 2009)")

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: dict) -> dict:
        for g, r in v.items():
            if r <= -100:
                raise ValueError(f"age rate of {g} must be above -100 % per decade (found {r:g})")
        return _known_groups(v, "age rates")

    def beta(self, group: str) -> float:
        """Log-volume change per decade of ``group``."""
        return math.log1p(self.rates.get(group, 0.0) / 100.0)


class SubtypeModel(SimSection):
    """One disease subtype: its own regional pattern (added to the disease's shared ``effects``)."""

    name: str = Field(min_length=1, description="subtype name, recorded in the truth")
    effects: dict[str, float] = Field(default_factory=dict, description="percent volume change at strength 1, "
                                      "per region group, AAL region or prefix*")
    weight: float = Field(1.0, gt=0, description="relative share of patients with this subtype")

    @field_validator("effects")
    @classmethod
    def _effects(cls, v: dict) -> dict:
        for region, pct in v.items():
            if pct <= -100:
                raise ValueError(f"subtype effect on {region!r} must be above -100 % (found {pct:g})")
        return v


class DiseaseModel(SimSection):
    """Atrophy (or enlargement) of a set of regions in patients.

    ``effects`` maps a region group, an AAL region name or a name prefix ending in ``*`` to a percent
    volume change at ``strength`` 1.0; a patient's log-volume change is
    ``strength * m * log(1 + pct / 100)`` with ``m`` a per-patient multiplier of mean 1 and relative
    SD ``strength_sd`` (heterogeneity between patients).

    In a TOML file or mapping, ``disease = "visual"`` names a preset and ``{preset = "visual",
    strength = 0.5}`` starts from one.
    """

    name: str = "accelerated-ageing"
    effects: dict[str, float] = Field(
        default_factory=lambda: dict(DISEASE_PRESETS["accelerated-ageing"]["effects"]))
    strength: float = Field(1.0, description="multiplies every effect (log scale); 0: patients without atrophy")
    strength_sd: float = Field(0.25, ge=0, le=2, description="relative SD of the per-patient multiplier")
    label: str = Field("patient", min_length=1, description="diagnosis of patients in participants.tsv")
    subtypes: list[SubtypeModel] = Field(default_factory=list, description="each patient gets one subtype "
                                         "(drawn by weight): its pattern is added to `effects`")

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _preset_fields(data)
        if isinstance(data, dict) and "preset" in data:
            rest = {k: v for k, v in data.items() if k != "preset"}
            return {**_preset_fields(data["preset"]), **rest}
        if isinstance(data, dict) and data.get("subtypes") and "effects" not in data:
            return {**data, "effects": {}}  # subtypes alone: no shared pattern unless one is given
        return data

    @field_validator("subtypes")
    @classmethod
    def _subtypes(cls, v: list) -> list:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise _bad(f"unique subtype names (found {', '.join(names)})")
        if len(v) == 1:
            raise _bad("at least two subtypes (one subtype is the shared `effects`)")
        return v

    def subtype_effects(self) -> dict[str, dict[str, float]]:
        """Effects of each subtype combined with the shared ones (percent changes; same keys multiply)."""
        out = {}
        for st in self.subtypes:
            eff = dict(self.effects)
            for k, pct in st.effects.items():
                eff[k] = ((1 + eff[k] / 100.0) * (1 + pct / 100.0) - 1) * 100.0 if k in eff else pct
            out[st.name] = eff
        return out

    @field_validator("effects")
    @classmethod
    def _effects(cls, v: dict) -> dict:
        for region, pct in v.items():
            if pct <= -100:
                raise ValueError(f"disease effect on {region!r} must be above -100 % (found {pct:g})")
        return v

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float) -> float:
        return _within(v, -MAX_STRENGTH, MAX_STRENGTH, f"a finite number from {-MAX_STRENGTH:g} to {MAX_STRENGTH:g} "
                       "(1 = the preset's effects)")

    @classmethod
    def preset(cls, name: str, strength: float = 1.0, **kw) -> DiseaseModel:
        """A preset (``accelerated-ageing``, ``visual``, ``three-subtypes`` or an alias) at ``strength``."""
        key = DISEASE_ALIASES.get(name, name)
        if key not in DISEASE_PRESETS and key not in SUBTYPE_PRESETS:
            raise ConfigError(f"unknown disease preset {name!r}", expected=", ".join(_preset_names()), found=name)
        return validate_config({**_preset_fields(key), "strength": strength, **kw}, cls)


def _preset_names() -> list[str]:
    return list(DISEASE_PRESETS) + list(SUBTYPE_PRESETS) + list(DISEASE_ALIASES)


def _preset_fields(name: Any) -> dict:
    key = DISEASE_ALIASES.get(name, name) if isinstance(name, str) else name
    if key in SUBTYPE_PRESETS:
        p = SUBTYPE_PRESETS[key]
        return {"name": key, "effects": dict(p["effects"]),
                "subtypes": [{"name": s["name"], "effects": dict(s["effects"])} for s in p["subtypes"]]}
    if key not in DISEASE_PRESETS:
        raise ValueError(f"unknown disease preset {name!r} (expected one of {', '.join(_preset_names())})")
    return {"name": key, "effects": dict(DISEASE_PRESETS[key]["effects"])}


# --------------------------------------------------------------------------- clinical variables
CLINICAL_VARIABLES = ("nfl", "sodium", "bmi")


class MissingModel(SimSection):
    """How values of one clinical variable go missing (the complete values stay in the truth).

    ``MCAR``: each value is missing with probability ``rate``, independently of everything.
    ``MAR``: the probability depends on an *observed* variable (``depends_on``), never on the value
    itself: ``rate * (1 + strength * x)`` clipped to [0, 1], with ``x = (age - 50) / 30`` for age,
    ``+1`` / ``-1`` for women / men (sex) and for patients / controls (diagnosis). ``rate`` is the
    share at ``x = 0`` (the cohort's share for a design symmetric around it).
    """

    mechanism: Literal["none", "MCAR", "MAR"] = "none"
    rate: float = Field(0.0, ge=0, le=0.95, description="share of missing values (at x = 0 for MAR)")
    depends_on: Literal["age", "sex", "diagnosis"] = Field("age", description="MAR: observed variable driving it")
    strength: float = Field(1.0, ge=-1, le=1, description="MAR: relative change of the missing rate per unit x")

    def probability(self, age: float, sex: str, patient: bool) -> float:
        """The probability that this subject's value is missing."""
        if self.mechanism == "none" or self.rate == 0:
            return 0.0
        if self.mechanism == "MCAR":
            return float(self.rate)
        x = {"age": (age - 50.0) / 30.0, "sex": 1.0 if sex == "F" else -1.0,
             "diagnosis": 1.0 if patient else -1.0}[self.depends_on]
        return float(min(max(self.rate * (1.0 + self.strength * x), 0.0), 1.0))


def _default_missing() -> dict:
    return {"nfl": MissingModel(mechanism="MAR", rate=0.2, depends_on="age", strength=1.0),
            "sodium": MissingModel(mechanism="MCAR", rate=0.1)}


class ClinicalModel(SimSection):
    """Clinical variables with known links to the images (written to participants.tsv and the truth).

    * ``nfl`` (serum neurofilament light, pg/mL): linked to the **diagnosis**. Log-normal, rising
      with age (``nfl_age_slope`` per year) and higher in patients by ``nfl_patient_effect`` (log
      units) times the patient's disease multiplier (more atrophy, more NfL).
    * ``bmi`` (kg/m^2, the existing column): linked to a **regional volume**: the region group
      ``bmi_region`` changes by ``bmi_effect`` percent per 5 kg/m^2 above 25 (in the images).
    * ``sodium`` (serum sodium, mmol/L): **no link** to anything, N(140, 2.5).

    ``missing`` maps a variable (nfl, sodium, bmi) to its missingness; a missing BMI also removes
    the weight (participants.tsv and DICOM PatientWeight), from which it could be recomputed.
    """

    nfl_baseline: float = Field(8.0, gt=0, description="median NfL of a control aged 40, pg/mL")
    nfl_age_slope: float = Field(0.022, ge=-1, le=1, description="log NfL change per year of age")
    nfl_patient_effect: float = Field(0.5, ge=-5, le=5, description="log NfL difference, patients vs controls")
    nfl_sd: float = Field(0.35, ge=0, le=3, description="SD of log NfL around its mean")
    bmi_region: str = Field("hippocampus", description="region group whose volume BMI changes")
    bmi_effect: float = Field(-2.0, gt=-50, lt=50, description="percent volume change per 5 kg/m^2 of BMI above 25")
    sodium_mean: float = Field(140.0, gt=0, description="mmol/L")
    sodium_sd: float = Field(2.5, ge=0, description="mmol/L")
    missing: dict[str, MissingModel] = Field(default_factory=_default_missing,
                                             description="per variable (nfl, sodium, bmi): MCAR or MAR missingness")

    @field_validator("bmi_region")
    @classmethod
    def _region(cls, v: str) -> str:
        _known_groups({v: 0}, "clinical.bmi_region")
        return v

    @field_validator("missing")
    @classmethod
    def _missing(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(CLINICAL_VARIABLES))
        if unknown:
            raise ValueError(f"unknown clinical variable(s) in missing: {', '.join(unknown)} (expected "
                             f"{', '.join(CLINICAL_VARIABLES)})")
        return v


class AnatomyModel(SimSection):
    """Inter-subject anatomy: smooth random warps, individual regional offsets, head size, pose."""

    warp_amplitude_mm: float = Field(2.0, ge=0, le=20, description="RMS of each component of the smooth "
                                     "random displacement")
    warp_smoothness_mm: float = Field(16.0, gt=0, description="Gaussian SD of its spatial correlation")
    group_sd: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_GROUP_SD),
                                       description="SD of each subject's log-volume offset per region group")
    head_size_sd: float = Field(0.08, ge=0, le=1, description="SD of log intracranial volume within a sex")
    female_volume_ratio: float = Field(0.90, gt=0, le=2, description="women / men intracranial volume "
                                       "(Ruigrok et al. 2014)")
    template_scale: float = Field(0.93, gt=0, le=2, description="linear: Colin27 lives in MNI space, ~25 % "
                                  "larger than a native head")
    pose_rotation_deg: float = Field(0.0, ge=0, le=45, description="SD of head rotation about each axis")
    pose_translation_mm: float = Field(0.0, ge=0, le=50, description="SD of head translation along each axis "
                                       "(plus a sub-voxel shift, always)")

    @field_validator("group_sd")
    @classmethod
    def _group_sd(cls, v: dict) -> dict:
        for g, sd in v.items():
            if sd < 0:
                raise ValueError(f"group_sd of {g} must be >= 0 (found {sd:g})")
        return _known_groups(v, "group_sd")


class SiteConfig(SimSection):
    """One acquisition site: its scanner, its image effects and its mix of subjects."""

    name: str = Field(min_length=1)
    manufacturer: str = "SIEMENS"
    model: str = "Prisma"
    field_strength: float = Field(3.0, gt=0, le=20, description="tesla")
    sequence: str = "MPRAGE"
    repetition_time: float = Field(2300.0, ge=0, description="ms")
    echo_time: float = Field(2.98, ge=0, description="ms")
    inversion_time: float = Field(900.0, ge=0, description="ms (0: none)")
    flip_angle: float = Field(9.0, ge=0, le=180, description="degrees")
    intensity_scale: float = Field(1000.0, gt=0, description="stored value of white matter")
    intensity_offset: float = 0.0
    gamma: float = Field(1.0, gt=0, le=5, description="contrast: intensity ** gamma before scaling")
    bias_strength: float = Field(0.10, ge=0, le=2, description="RMS of the log bias field")
    noise: float = Field(0.02, ge=0, le=1, description="Rician noise SD relative to white matter")
    bias_seed: int | None = Field(None, ge=0, description="seed of the site's fixed bias pattern; None: drawn "
                                  "from the cohort's seed (two cohorts then differ). Set it to image one scanner "
                                  "identically across cohorts (e.g. a normative cohort and a patient cohort)")
    voxel_size: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None, description="(in-plane, in-plane, slice) mm; None: the cohort's resolution")
    orientation: Literal["axial", "sagittal", "coronal"] = Field("axial", description="slice orientation")
    weight: float = Field(1.0, ge=0, description="share of the cohort's subjects")
    age_min: float = Field(20.0, ge=0, le=120)
    age_max: float = Field(80.0, ge=0, le=120)
    age_mean: float | None = Field(None, description="with age_sd: truncated normal; otherwise uniform")
    age_sd: float | None = Field(None, gt=0)
    female_fraction: float = Field(0.5, ge=0, le=1)
    patient_fraction: float | None = Field(None, ge=0, le=1, description="None: the cohort's patient_fraction")

    @model_validator(mode="after")
    def _ages(self) -> SiteConfig:
        if self.age_min >= self.age_max:
            raise ValueError(f"site {self.name}: age_min must be below age_max "
                             f"(found {self.age_min:g} >= {self.age_max:g})")
        return self


_COHORT_RANGES = {  # key: (lowest, highest, what the message says is expected)
    "subjects": (1, 1_000_000, "at least 1 subject (an empty cohort is not a cohort)"),
    "seed": (0, 2**63 - 1, "a whole number >= 0"),
    "resolution": (0.5, 8.0, "0.5 to 8 mm"),
}


class BrainCohortConfig(SimSection):
    """A simulated brain MRI cohort.

    Build it with keywords, or from a mapping / TOML file (:meth:`from_dict`, :meth:`from_toml`), which
    refuse unknown keys with the nearest valid one and name the key, what was expected and what was found.
    """

    subjects: int = Field(10, description="number of subjects (at least 1)")
    seed: int = Field(0, description="random seed (>= 0); the same seed gives the same bytes")
    sites: int | list[SiteConfig] = Field(3, description="a number of default sites (1 to 64), or the sites")
    site_effects: bool = True
    resolution: float = Field(2.0, description="voxel size, mm (0.5 to 8)")
    disease: DiseaseModel | None = None
    patient_fraction: float = Field(0.5, ge=0, le=1)
    age: AgeModel = Field(default_factory=AgeModel)
    anatomy: AnatomyModel = Field(default_factory=AnatomyModel)
    output_grid: Literal["site", "common"] = Field(
        "site", description="site: each site's voxels; common: all on the resolution grid")
    template_dir: str | None = None
    field_step: int = Field(4, ge=1, le=16, description="template voxels (mm) between deformation nodes")
    paired_truth: bool = Field(False, description="also measure volumes without age/disease/individual effects")
    volume_measure: Literal["labels", "partial"] = Field(
        "labels", description="labels: voxel counts of the label map; partial: partial volumes")
    id_prefix: str = Field("", description="participant ids sub-<prefix>0001...: distinct cohorts in one "
                           "workspace")
    clinical: ClinicalModel | None = Field(None, description="clinical variables with known links (NfL, BMI, "
                                           "sodium) and missingness; None: the demographics alone")
    substrate: Literal["colin27", "itk-head"] = Field(
        "colin27", description="the real anatomy every subject is a deformation of: Colin27, or the ITK "
        "examples' T1 head carrying the same atlas (an anatomy shift)")
    template_maps: bool = Field(False, description="truth: log-Jacobian maps in template space (4 mm) per "
                                "subject, what tensor-based morphometry measures after a perfect registration")

    @field_validator("subjects", "seed", "resolution")
    @classmethod
    def _in_range(cls, v, info):
        lo, hi, expected = _COHORT_RANGES[info.field_name]
        return _within(v, lo, hi, expected)

    @field_validator("sites")
    @classmethod
    def _sites(cls, v):
        if isinstance(v, int) and not 1 <= v <= 64:
            raise _bad("1 to 64 sites")
        if isinstance(v, list):
            if not v:
                raise _bad("at least one site")
            names = [s.name for s in v]
            if len(set(names)) != len(names):
                raise _bad(f"unique site names (found {', '.join(names)})")
        return v

    @field_validator("id_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not (v == "" or v.isascii() and v.isalnum() and len(v) <= 16):
            raise _bad("letters and digits only (a BIDS label), at most 16, e.g. --id-prefix H for sub-H0001")
        return v

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict, *, path: str | Path | None = None, section: str | None = None
                  ) -> BrainCohortConfig:
        """Validate a mapping (a TOML ``[brain]`` table); raise :class:`ConfigError` naming every problem."""
        if not isinstance(data, dict):
            raise ConfigError("the brain cohort configuration must be a table", path=path,
                              expected="a table of settings", found=type(data).__name__)
        sites = data.get("sites")
        where = f"{section}.sites" if section else "sites"
        if isinstance(sites, list):  # each site on its own: messages name sites[i].key
            for i, s in enumerate(sites):
                if not isinstance(s, (dict, SiteConfig)):
                    raise ConfigError(f"wrong value for '{where}[{i}]'", path=path, expected="a [[sites]] table",
                                      found=repr(s), fix="correct the value; see docs/simulation.md")
                if isinstance(s, dict):
                    validate_config(s, SiteConfig, path=path, section=f"{where}[{i}]")
        elif sites is not None and (isinstance(sites, bool) or not isinstance(sites, int)):
            raise ConfigError(f"wrong value for '{where}'", path=path,
                              expected="a number of sites (1 to 64) or a list of [[sites]] tables",
                              found=repr(sites), fix="correct the value; see docs/simulation.md")
        return validate_config(data, cls, path=path, section=section)

    @classmethod
    def from_toml(cls, path: str | Path) -> BrainCohortConfig:
        """Read a TOML file: its ``[brain]`` table, or the whole file when there is none."""
        data = read_toml(path)
        if "brain" in data:
            return cls.from_dict(data["brain"], path=path, section="brain")
        return cls.from_dict(data, path=path)

    def validate(self) -> None:
        """Check the current values again (after attribute assignments); raise :class:`ConfigError`."""
        type(self).from_dict(self.model_dump())


def config_digest(obj) -> str:
    """Short stable hash of a JSON-able object (used in UIDs and cache keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


# --------------------------------------------------------------------------- sites
def default_sites(k: int, seed: int, resolution: float, site_effects: bool = True,
                  fixed_bias: bool = False) -> list[SiteConfig]:
    """``k`` sites with distinct scanners; acquisition parameters drawn from ``(seed, site index)``.

    With ``site_effects=False`` every site keeps its name and scanner in the headers but images the
    same way (same intensity scale, contrast, bias, noise and voxels), so nothing in the pixels
    tells sites apart. ``fixed_bias``: each site's bias pattern is its own (``bias_seed``), so that
    cohorts simulated with other seeds on these sites are imaged by the very same scanners.
    """
    sites = []
    for i in range(k):
        man, model, b0, (tr, te, ti, flip), seq = SCANNERS[i % len(SCANNERS)]
        common = dict(name=f"site-{i + 1:02d}", manufacturer=man, model=model, field_strength=b0, sequence=seq,
                      repetition_time=tr, echo_time=te, inversion_time=ti, flip_angle=flip)
        if not site_effects:
            sites.append(SiteConfig(**common))
            continue
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2, i]))
        scale = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))
        thick = float(rng.choice([1.0, 1.0, 1.25, 1.5])) * resolution
        orient = str(rng.choice(["axial", "sagittal", "axial", "coronal"]))
        noise = float(rng.uniform(0.01, 0.035)) * (1.5 if b0 < 2 else 1.0)
        sites.append(SiteConfig(
            **common,
            intensity_scale=round(scale, 1), intensity_offset=round(float(rng.uniform(0.0, 0.05)) * scale, 1),
            gamma=round(float(rng.uniform(0.8, 1.25)), 3), bias_strength=round(float(rng.uniform(0.05, 0.25)), 3),
            noise=round(noise, 4), voxel_size=(resolution, resolution, round(thick, 3)), orientation=orient,
            bias_seed=(int(seed) * 1000 + i) if fixed_bias else None,
        ))
    return sites


def resolve_sites(config: BrainCohortConfig) -> list[SiteConfig]:
    """The cohort's sites: ``default_sites`` for a number, else copies of the configured ones."""
    if isinstance(config.sites, int):
        return default_sites(config.sites, config.seed, config.resolution, config.site_effects)
    sites = [s.model_copy(deep=True) for s in config.sites]
    if not sites:
        raise ConfigError("at least one site is needed", expected="a [[sites]] table or a number of sites",
                          found="an empty list")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError("site names must be unique", expected="a different name per site", found=", ".join(names))
    if not config.site_effects:  # keep names, scanners and subject mix; image every site like the first
        ref = SiteConfig(name="reference")
        keep = ("name", "manufacturer", "model", "field_strength", "sequence", "repetition_time", "echo_time",
                "inversion_time", "flip_angle", "weight", "age_min", "age_max", "age_mean", "age_sd",
                "female_fraction", "patient_fraction")
        sites = [ref.model_copy(update={k: getattr(s, k) for k in keep}) for s in sites]
    return sites

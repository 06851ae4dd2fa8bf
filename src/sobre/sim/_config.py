"""Typed configuration of simulated cohorts (dataclasses, loadable from TOML or dicts).

Every number that shapes a cohort lives here, with its unit, so that the resolved configuration
written next to a cohort (``simulation.json``) says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


# --------------------------------------------------------------------------- dataclasses
@dataclass
class AgeModel:
    """How volumes change with age.

    ``log V_r(age) = log V_r(ref) + log(1 + rate_g / 100) * (age - reference_age) / 10`` for every
    region ``r`` of group ``g``.
    """

    reference_age: float = 40.0
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_AGE_RATES))
    contrast_change: float = -3.0  # grey/white T1 contrast, percent per decade (Salat et al. 2009)

    def beta(self, group: str) -> float:
        """Log-volume change per decade of ``group``."""
        return math.log1p(self.rates.get(group, 0.0) / 100.0)


@dataclass
class DiseaseModel:
    """Atrophy (or enlargement) of a set of regions in patients.

    ``effects`` maps a region group, an AAL region name or a name prefix ending in ``*`` to a percent
    volume change at ``strength`` 1.0; a patient's log-volume change is
    ``strength * m * log(1 + pct / 100)`` with ``m`` a per-patient multiplier of mean 1 and relative
    SD ``strength_sd`` (heterogeneity between patients).
    """

    name: str = "accelerated-ageing"
    effects: dict[str, float] = field(default_factory=lambda: dict(DISEASE_PRESETS["accelerated-ageing"]["effects"]))
    strength: float = 1.0
    strength_sd: float = 0.25
    label: str = "patient"

    @classmethod
    def preset(cls, name: str, strength: float = 1.0, **kw) -> DiseaseModel:
        key = DISEASE_ALIASES.get(name, name)
        if key not in DISEASE_PRESETS:
            raise ConfigError(f"unknown disease preset {name!r}",
                              expected=", ".join(list(DISEASE_PRESETS) + list(DISEASE_ALIASES)), found=name)
        return cls(name=key, effects=dict(DISEASE_PRESETS[key]["effects"]), strength=float(strength), **kw)


@dataclass
class AnatomyModel:
    """Inter-subject anatomy: smooth random warps, individual regional offsets, head size, pose."""

    warp_amplitude_mm: float = 2.0       # RMS of each component of the smooth random displacement
    warp_smoothness_mm: float = 16.0     # Gaussian SD of its spatial correlation
    group_sd: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GROUP_SD))
    head_size_sd: float = 0.08           # SD of log intracranial volume within a sex
    female_volume_ratio: float = 0.90    # women / men intracranial volume (Ruigrok et al. 2014)
    template_scale: float = 0.93         # linear: Colin27 lives in MNI space, ~25 % larger than a native head
    pose_rotation_deg: float = 0.0       # SD of head rotation about each axis
    pose_translation_mm: float = 0.0     # SD of head translation along each axis (plus a sub-voxel shift, always)


@dataclass
class SiteConfig:
    """One acquisition site: its scanner, its image effects and its mix of subjects."""

    name: str
    manufacturer: str = "SIEMENS"
    model: str = "Prisma"
    field_strength: float = 3.0
    sequence: str = "MPRAGE"
    repetition_time: float = 2300.0
    echo_time: float = 2.98
    inversion_time: float = 900.0
    flip_angle: float = 9.0
    intensity_scale: float = 1000.0      # stored value of white matter
    intensity_offset: float = 0.0
    gamma: float = 1.0                   # contrast: intensity ** gamma before scaling
    bias_strength: float = 0.10          # RMS of the log bias field
    noise: float = 0.02                  # Rician noise SD relative to white matter
    voxel_size: tuple[float, float, float] | None = None  # (in-plane, in-plane, slice) mm; None: resolution
    orientation: str = "axial"           # slice orientation: axial, sagittal, coronal
    weight: float = 1.0                  # share of the cohort's subjects
    age_min: float = 20.0
    age_max: float = 80.0
    age_mean: float | None = None        # with age_sd: truncated normal; otherwise uniform
    age_sd: float | None = None
    female_fraction: float = 0.5
    patient_fraction: float | None = None  # None: the cohort's patient_fraction


@dataclass
class BrainCohortConfig:
    """A simulated brain MRI cohort."""

    subjects: int = 10
    seed: int = 0
    sites: int | list[SiteConfig] = 3
    site_effects: bool = True
    resolution: float = 2.0
    disease: DiseaseModel | None = None
    patient_fraction: float = 0.5
    age: AgeModel = field(default_factory=AgeModel)
    anatomy: AnatomyModel = field(default_factory=AnatomyModel)
    output_grid: str = "site"            # "site": each site's voxels; "common": all on the resolution grid
    template_dir: str | None = None
    field_step: int = 4                  # template voxels (mm) between deformation nodes
    paired_truth: bool = False           # also measure volumes without age/disease/individual effects
    volume_measure: str = "labels"       # "labels": voxel counts of the label map; "partial": partial volumes
    id_prefix: str = ""                  # participant ids sub-<prefix>0001...: distinct cohorts in one workspace

    def validate(self) -> None:
        if self.subjects < 0:
            raise ConfigError("subjects must be >= 0", found=str(self.subjects))
        if not (self.id_prefix == "" or self.id_prefix.isascii() and self.id_prefix.isalnum()
                and len(self.id_prefix) <= 16):
            raise ConfigError("id_prefix must be letters and digits only (a BIDS label), at most 16",
                              found=repr(self.id_prefix), fix="e.g. --id-prefix H for sub-H0001")
        if not (0.5 <= float(self.resolution) <= 8.0):
            raise ConfigError("resolution out of range", expected="0.5 to 8 mm", found=str(self.resolution))
        if self.volume_measure not in ("labels", "partial"):
            raise ConfigError("volume_measure must be 'labels' or 'partial'", found=self.volume_measure)
        if self.output_grid not in ("site", "common"):
            raise ConfigError("output_grid must be 'site' or 'common'", found=self.output_grid)
        if not 0.0 <= self.patient_fraction <= 1.0:
            raise ConfigError("patient_fraction must be within [0, 1]", found=str(self.patient_fraction))
        if isinstance(self.sites, int) and not 1 <= self.sites <= 64:
            raise ConfigError("sites must be between 1 and 64", found=str(self.sites))
        unknown = set(self.age.rates) - set(DEFAULT_AGE_RATES)
        if unknown:
            raise ConfigError(f"unknown region group(s) in age rates: {', '.join(sorted(unknown))}",
                              expected=", ".join(DEFAULT_AGE_RATES))
        for site in self.sites if isinstance(self.sites, list) else []:
            if site.orientation not in ORIENTATIONS:
                raise ConfigError(f"site {site.name}: unknown orientation", expected=", ".join(ORIENTATIONS),
                                  found=site.orientation)
            if site.age_min >= site.age_max:
                raise ConfigError(f"site {site.name}: age_min must be below age_max",
                                  found=f"{site.age_min} >= {site.age_max}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> BrainCohortConfig:
        data = dict(data)
        sub = {}
        if "age" in data:
            sub["age"] = _build(AgeModel, data.pop("age"), "age")
        if "anatomy" in data:
            sub["anatomy"] = _build(AnatomyModel, data.pop("anatomy"), "anatomy")
        if data.get("disease") is not None:
            d = data.pop("disease")
            if isinstance(d, str):
                sub["disease"] = DiseaseModel.preset(d)
            else:
                d = dict(d)
                base = DiseaseModel.preset(d.pop("preset")) if "preset" in d else DiseaseModel()
                sub["disease"] = _build(DiseaseModel, {**dataclasses.asdict(base), **d}, "disease")
        else:
            data.pop("disease", None)
        if isinstance(data.get("sites"), list):
            sub["sites"] = [_build(SiteConfig, s, f"sites[{i}]") for i, s in enumerate(data.pop("sites"))]
        cfg = _build(cls, {**data, **sub}, "simulation")
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> BrainCohortConfig:
        import tomllib

        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration ({exc})", path=path) from None
        return cls.from_dict(data.get("brain", data))


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table", found=type(data).__name__)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}",
                          expected=", ".join(names))
    kw = dict(data)
    if cls is SiteConfig and kw.get("voxel_size") is not None:
        kw["voxel_size"] = tuple(float(v) for v in kw["voxel_size"])
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def config_digest(obj) -> str:
    """Short stable hash of a JSON-able object (used in UIDs and cache keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- sites
def default_sites(k: int, seed: int, resolution: float, site_effects: bool = True) -> list[SiteConfig]:
    """``k`` sites with distinct scanners; acquisition parameters drawn from ``(seed, site index)``.

    With ``site_effects=False`` every site keeps its name and scanner in the headers but images the
    same way (same intensity scale, contrast, bias, noise and voxels), so nothing in the pixels
    tells sites apart.
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
        ))
    return sites


def resolve_sites(config: BrainCohortConfig) -> list[SiteConfig]:
    if isinstance(config.sites, int):
        return default_sites(config.sites, config.seed, config.resolution, config.site_effects)
    sites = [dataclasses.replace(s) for s in config.sites]
    if not sites:
        raise ConfigError("at least one site is needed")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError("site names must be unique", found=", ".join(names))
    if not config.site_effects:  # keep names, scanners and subject mix; image every site like the first
        ref = SiteConfig(name="reference")
        keep = ("name", "manufacturer", "model", "field_strength", "sequence", "repetition_time", "echo_time",
                "inversion_time", "flip_angle", "weight", "age_min", "age_max", "age_mean", "age_sd",
                "female_fraction", "patient_fraction")
        sites = [dataclasses.replace(ref, **{k: getattr(s, k) for k in keep}) for s in sites]
    return sites

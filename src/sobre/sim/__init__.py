"""Simulated cohorts on real anatomy, with known ground truth (issue 4).

Brain MRI cohorts (:class:`BrainSimulator`, :func:`simulate_brain_cohort`, :func:`write_brain_cohort`)
are built on Colin27 and the AAL atlas: smooth inter-subject warps, region-specific ageing, sex and
head size, optional disease atrophy, and per-site scanner effects; every subject comes with its
regional volumes, label map and deformation. CT lesion cohorts (:func:`insert_lesions`,
:func:`write_ct_lesion_cohort`) put ellipsoid lesions with realistic HU, texture and soft edges into
real CT volumes, with exact masks and size/position tables.

Cohorts can also carry clinical variables with known links and missingness (:class:`ClinicalModel`),
disease subtypes with their own regional patterns (:class:`SubtypeModel`), template-space
log-Jacobian maps, and be built on a second real anatomy (``substrate="itk-head"``).

Everything written says it is simulated (DICOM headers, participants.tsv, JSON files, README).
"""

from sobre.sim._atlas import REGION_GROUPS, BrainTemplate, load_brain_template
from sobre.sim._brain import (
    BrainSimulator, BrainTruth, SimulatedBrain, region_names, simulate_brain_cohort, subject_id, warp_labels,
)
from sobre.sim._brain_io import write_brain_cohort
from sobre.sim._ct import CTLesionCohortConfig, LesionConfig, insert_lesions, simulate_ct_case, tissue_masks
from sobre.sim._ct_io import write_ct_lesion_cohort
from sobre.sim._config import (
    DISEASE_PRESETS, SUBTYPE_PRESETS, AgeModel, AnatomyModel, BrainCohortConfig, ClinicalModel, DiseaseModel,
    MissingModel, SiteConfig, SubtypeModel, default_sites,
)

__all__ = [
    "AgeModel", "AnatomyModel", "CTLesionCohortConfig", "LesionConfig", "insert_lesions", "simulate_ct_case",
    "tissue_masks", "write_ct_lesion_cohort", "BrainCohortConfig", "BrainSimulator", "BrainTemplate", "BrainTruth",
    "DISEASE_PRESETS", "DiseaseModel", "REGION_GROUPS", "SimulatedBrain", "SiteConfig", "default_sites",
    "load_brain_template", "region_names", "simulate_brain_cohort", "subject_id", "warp_labels",
    "write_brain_cohort", "ClinicalModel", "MissingModel", "SubtypeModel", "SUBTYPE_PRESETS",
]

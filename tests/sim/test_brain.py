"""Single simulated subjects: determinism, independence of N, truth consistency, markers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from sobre.sim import BrainCohortConfig, BrainSimulator, DiseaseModel, simulate_brain_cohort, warp_labels


@pytest.fixture(scope="module")
def sim(brain_template, calib_cache):
    cfg = BrainCohortConfig(subjects=6, seed=5, sites=3, disease=DiseaseModel.preset("accelerated-ageing"),
                            patient_fraction=0.5)
    return BrainSimulator(cfg, cache_dir=calib_cache)


def test_subject_is_deterministic_and_independent_of_n(sim, calib_cache):
    a = sim.subject(3)
    b = sim.subject(3)
    assert np.array_equal(a.image.array, b.image.array)
    other = BrainSimulator(BrainCohortConfig(**{**sim.config.__dict__, "subjects": 500}), cache_dir=calib_cache)
    c = other.subject(3)
    assert np.array_equal(a.image.array, c.image.array) and a.metadata == c.metadata
    assert np.array_equal(a.truth.labels.array, c.truth.labels.array)
    # the in-memory iterator gives the same subjects
    it = list(simulate_brain_cohort(sim.config, indices=[3], cache_dir=calib_cache))
    assert np.array_equal(it[0].image.array, a.image.array)


def test_image_metadata_and_markers(sim):
    image, meta, truth = sim.subject(0)
    assert image.modality == "MR" and image.dtype == np.uint16 and image.coordinate_system == "LPS"
    assert set(meta) >= {"subject_id", "age", "sex", "height_m", "weight_kg", "bmi", "site", "diagnosis",
                         "disease", "disease_strength", "manufacturer", "model", "field_strength", "simulated"}
    assert meta["simulated"] == "yes" and "SIMULATED" in meta["series_description"]
    assert meta["subject_id"] == "sub-0001" and meta["sex"] in ("M", "F") and 20 <= meta["age"] <= 80
    assert abs(meta["bmi"] - round(meta["weight_kg"] / meta["height_m"] ** 2, 2)) < 1e-9
    site = next(s for s in sim.sites if s.name == meta["site"])
    assert np.allclose(sorted(image.spacing), sorted(site.voxel_size))
    assert image.array.max() > 0.5 * site.intensity_scale
    assert truth.labels.shape == image.shape and np.allclose(truth.labels.affine, image.affine)


def test_truth_labels_follow_the_saved_deformation(sim):
    for i in range(3):
        image, meta, truth = sim.subject(i)
        again = warp_labels(truth.deformation, truth.latent["pre_affine"], image)
        agree = float(np.mean(again.array == truth.labels.array))
        assert agree > 0.999, f"subject {i}: {agree:.5f}"
        vox = float(abs(np.linalg.det(image.affine[:3, :3])))
        counts = np.bincount(truth.labels.array.ravel(), minlength=120)
        assert truth.volumes["Hippocampus_L"] == pytest.approx(counts[37] * vox)
        assert truth.volumes["ICV"] == pytest.approx(counts[1:].sum() * vox)


def test_disease_map_only_for_patients(sim):
    seen = set()
    for i in range(6):
        _, meta, truth = sim.subject(i)
        patient = meta["diagnosis"] != "control"
        seen.add(patient)
        assert (truth.disease_map is not None) == patient
        assert (meta["disease_strength"] > 0) == patient
        if patient:
            dm = truth.disease_map.array
            hippo = truth.labels.array == 37
            assert dm[hippo].max() < 0 and np.all(dm[truth.labels.array == 0] == 0)
            assert dm[truth.labels.array == 117].min() > 0  # ventricles enlarge
    assert seen == {True, False}


def test_sites_confound_on_purpose(brain_template, calib_cache):
    from sobre.sim import SiteConfig

    cfg = BrainCohortConfig(subjects=60, seed=2, disease=DiseaseModel.preset("visual"), sites=[
        SiteConfig(name="old", age_min=65, age_max=85, patient_fraction=0.9),
        SiteConfig(name="young", age_min=20, age_max=35, patient_fraction=0.1)])
    sim = BrainSimulator(cfg, cache_dir=calib_cache)
    demo = [sim.demographics(i) for i in range(60)]
    old = [d for d in demo if d["site"] == "old"]
    young = [d for d in demo if d["site"] == "young"]
    assert min(d["age"] for d in old) >= 65 and max(d["age"] for d in young) <= 35
    assert np.mean([d["diagnosis"] != "control" for d in old]) > 0.7
    assert np.mean([d["diagnosis"] != "control" for d in young]) < 0.3


def test_healthy_counterpart_is_the_same_subject_without_the_disease(brain_template, calib_cache):
    cfg = BrainCohortConfig(subjects=6, seed=1, sites=2, resolution=4.0,
                            disease=DiseaseModel.preset("visual", strength=8.0))
    sim = BrainSimulator(cfg, cache_dir=calib_cache)
    affected = [int(v) for v in np.flatnonzero(sim.pattern[1:118]) + 1]
    assert affected == [43, 44, 45, 46, 47, 48]  # calcarine, cuneus, lingual (left, right)
    seen = set()
    for i in range(6):
        a, h = sim.subject(i), sim.subject(i, healthy=True)
        la, lh = a.truth.labels.array, h.truth.labels.array
        assert h.metadata["counterfactual"] == "healthy" and h.metadata["disease_strength"] == 0
        assert h.metadata["diagnosis"] == a.metadata["diagnosis"] and h.metadata["age"] == a.metadata["age"]
        assert h.truth.disease_map is None and np.allclose(h.truth.labels.affine, a.truth.labels.affine)
        if a.metadata["diagnosis"] == "control":  # nothing to remove: the very same subject
            seen.add("control")
            assert np.array_equal(la, lh) and np.array_equal(a.image.array, h.image.array)
            continue
        seen.add("patient")
        # the disease's deformation is smooth and global (the CSF takes the lost volume), so labels
        # move a little everywhere, but outside the affected regions' territory they mostly agree
        territory = ndi.binary_dilation(np.isin(la, affected) | np.isin(lh, affected), iterations=3)
        assert np.mean((la == lh)[~territory]) > 0.97 and np.mean(la == lh) > 0.95
        # the affected regions are larger before the disease by about the simulated effect
        t_dis = sim.pattern * a.metadata["disease_strength"]
        names = sim.template.names
        log_ratio = [np.log(a.truth.volumes[names[r]] / h.truth.volumes[names[r]]) for r in affected]
        assert abs(np.mean(log_ratio) - np.mean(t_dis[affected])) < 0.1
        assert all(x < -0.3 for x in log_ratio)
        # the tissue the disease removed became CSF and neighbours in the patient's own map
        lost = np.isin(lh, affected) & ~np.isin(la, affected)
        assert lost.sum() > 0.3 * np.isin(la, affected).sum()
        assert np.isin(la[lost], [0, *affected]).mean() < 0.05
    assert seen == {"control", "patient"}

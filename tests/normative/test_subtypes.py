"""Subtype discovery: k by stability, ARI against scikit-learn, site-driven clusters flagged, no leakage."""

from __future__ import annotations

import numpy as np
import pytest

from sobre.errors import InputError
from sobre.normative import SubtypeConfig, adjusted_rand_index, discover_subtypes, kmeans


def _profiles(seed: int, n_per: int = 40, k: int = 3, d: int = 30, sep: float = 3.0):
    """Patients' deviation profiles: k patterns (disjoint blocks of regions), severities vary, noise N(0, 1)."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    block = d // k
    for c in range(k):
        pat = np.zeros(d)
        pat[c * block:(c + 1) * block] = -sep
        sev = rng.lognormal(0, 0.25, n_per)
        x.append(sev[:, None] * pat[None, :] + rng.normal(size=(n_per, d)))
        y += [c] * n_per
    return np.vstack(x), np.array(y)


FAST = {"resamples": 15, "null_resamples": 8, "k_max": 5, "n_init": 4}


def test_ari_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
        b[:30] = a[:30]
        assert adjusted_rand_index(a, b) == pytest.approx(metrics.adjusted_rand_score(a, b), abs=1e-12)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0


def test_kmeans_is_deterministic_and_ordered():
    x, _ = _profiles(1)
    a, ca = kmeans(x, 3, seed=4)
    b, cb = kmeans(x, 3, seed=4)
    assert np.array_equal(a, b) and np.allclose(ca, cb)
    sizes = np.bincount(a)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_three_subtypes_are_found_by_stability():
    x, truth = _profiles(2)
    site = np.array(["a", "b", "c", "d"])[np.arange(len(x)) % 4]
    age = np.random.default_rng(2).uniform(40, 80, len(x))
    model = discover_subtypes(x, config=FAST, metadata={"site": site, "age": age})
    assert model.k == 3
    assert adjusted_rand_index(model.labels, truth) > 0.9
    assert model.per_k["3"]["stability"] > model.per_k["2"]["stability"]
    assert model.per_k["3"]["stability"] > model.per_k["3"]["null_stability"]
    assert not model.recovers_site and model.site_flags == {}
    assert model.association["site"]["test"] == "chi-square" and model.association["age"]["test"] == "kruskal-wallis"
    again = discover_subtypes(x, config=FAST, metadata={"site": site, "age": age})
    assert np.array_equal(again.labels, model.labels) and again.per_k == model.per_k  # deterministic for a seed


def test_no_structure_gives_one_cluster():
    x = np.random.default_rng(3).normal(size=(120, 30))
    model = discover_subtypes(x, config=FAST)
    assert model.k == 1 and (model.labels == 0).all()


def test_clusters_that_recover_sites_are_flagged():
    """Site offsets on learned features (no disease structure): the clusters are the scanners."""
    rng = np.random.default_rng(4)
    site = np.repeat(["a", "b", "c"], [60, 30, 30])
    offsets = {"a": 0.0, "b": 3.0, "c": -3.0}
    shift = rng.normal(size=20)
    x = rng.normal(size=(120, 20)) + np.array([offsets[s] for s in site])[:, None] * shift[None, :]
    model = discover_subtypes(x, config=dict(FAST, metric="euclidean"), metadata={"site": site}, standardise=True)
    assert model.k >= 2 and model.recovers_site
    assert model.association["site"]["effect_size"] > 0.8
    assert any("comes from site" in why for why in model.site_flags.values())


def test_no_held_out_patient_reaches_the_selection_of_k():
    """The stability selection and the centroids come from the discovery patients only."""
    x, truth = _profiles(5, n_per=50)
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(x))
    disc, held = idx[:100], idx[100:]
    model = discover_subtypes(x[disc], config=FAST)
    before = (model.k, dict(model.per_k), model.centroids.copy())
    assigned = model.assign(x[held])
    assert adjusted_rand_index(assigned, truth[held]) > 0.85
    garbage = model.assign(rng.normal(50, 10, size=(50, x.shape[1])))  # nothing the held-out set holds ...
    assert garbage.shape == (50,)
    assert (model.k, model.per_k) == before[:2] and np.array_equal(model.centroids, before[2])  # ... changes the model
    other = discover_subtypes(x[disc], config=FAST)  # and the discovery result does not depend on the held-out set
    assert np.array_equal(other.labels, model.labels)


def test_bad_input():
    with pytest.raises(InputError, match="too few patients for subtype discovery"):
        discover_subtypes(np.zeros((5, 3)))
    x, _ = _profiles(6)
    x[3, 2] = np.nan
    with pytest.raises(InputError, match=r"1 patient\(s\) have missing features"):
        discover_subtypes(x, config=FAST)
    model = discover_subtypes(_profiles(7)[0], config=FAST)
    with pytest.raises(InputError, match="features of new patients do not match"):
        model.assign(np.zeros((2, 4)))
    from sobre.errors import ConfigError

    with pytest.raises(ConfigError, match="k_max must be at least k_min"):
        SubtypeConfig(k_min=4, k_max=3)

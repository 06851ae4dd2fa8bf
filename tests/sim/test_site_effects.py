"""A site is predictable from simple intensity statistics when site effects are on, and not when off."""

from __future__ import annotations

import numpy as np
import pytest

from sobre.sim import BrainCohortConfig, BrainSimulator

N_PER_SITE, SITES = 20, 3


def _features(image) -> np.ndarray:
    a = np.asarray(image.array, np.float64).ravel()
    fg = a[a > np.percentile(a, 60)]  # the head, roughly
    q = np.percentile(fg, [5, 25, 50, 75, 95, 99])
    return np.concatenate([np.log1p(q), [np.log1p(fg.mean()), np.log1p(fg.std()), fg.std() / fg.mean(),
                                         (q[4] - q[1]) / max(q[2], 1)]])


def _probe(site_effects: bool, calib_cache) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = BrainCohortConfig(subjects=N_PER_SITE * SITES, seed=21, sites=SITES, site_effects=site_effects,
                            resolution=4.0)
    sim = BrainSimulator(cfg, cache_dir=calib_cache)
    x, y = [], []
    for i in range(cfg.subjects):
        image, meta, _ = sim.subject(i)
        x.append(_features(image))
        y.append(meta["site"])
    x, y = np.array(x), np.array(y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pred = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    acc = float(np.mean(pred == y))
    chance = max(np.mean(y == s) for s in np.unique(y))
    return acc, chance


@pytest.mark.slow
def test_site_probe_on_and_off(brain_template, calib_cache):
    pytest.importorskip("sklearn")
    on, _ = _probe(True, calib_cache)
    off, chance = _probe(False, calib_cache)
    n = N_PER_SITE * SITES
    upper = chance + 2.33 * np.sqrt(chance * (1 - chance) / n)  # one-sided 99 % bound of chance accuracy
    print(f"site probe accuracy: effects on {on:.2f}, off {off:.2f} (chance {chance:.2f}, 99% bound {upper:.2f})")
    assert on >= 0.9
    assert off <= upper

"""The field machinery against scipy references."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from sobre.sim import _fields as fl


def test_separable_upsample_is_trilinear():
    rng = np.random.default_rng(0)
    f = rng.random((3, 12, 14, 10)).astype(np.float32)
    c = [np.linspace(-0.5, 11.4, 23), np.linspace(0.2, 13, 17), np.linspace(0, 9, 11)]
    w = [fl.linear_weights(c[0], 12), fl.linear_weights(c[1], 14), fl.linear_weights(c[2], 10)]
    g = np.meshgrid(*[np.clip(x, 0, n - 1) for x, n in zip(c, (12, 14, 10))], indexing="ij")
    ref = ndi.map_coordinates(f[2], np.stack(g), order=1)
    assert np.abs(fl.separable_upsample(f, w, (0, 1, 2))[2] - ref).max() < 1e-5
    # output axes permuted onto field axes (sagittal/coronal grids)
    w2 = [w[2], w[0], w[1]]
    out = fl.separable_upsample(f, w2, (2, 0, 1))
    assert np.abs(out[2] - np.transpose(ref, (2, 0, 1))).max() < 1e-5
    tri = fl.trilinear(f, np.stack(g).astype(np.float32))
    assert np.abs(tri[2] - ref).max() < 1e-5


def test_nearest_and_partial_volume():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:6, 3:7, 4:8] = 5
    pts = np.indices((10, 10, 10), dtype=np.float32)
    assert np.array_equal(fl.nearest(lab, pts).reshape(lab.shape), lab)
    assert fl.nearest(lab, np.full((3, 1), -3.0, np.float32))[0] == 0
    pv = fl.partial_volume_counts(lab, pts + 0.25, 6)
    assert abs(pv[5] - 64) < 1e-3 and abs(pv.sum() - 1000) < 1e-3


def test_poisson_divergence_and_exp_inverse():
    grid = fl.FieldGrid.over((40, 44, 36), np.eye(4), step=4)
    src = np.zeros(grid.shape, np.float32)
    src[4:7, 5:8, 4:6] = 0.2
    src[8:10, 3:5, 2:4] = -0.3
    v = fl.Poisson(grid).velocity(src)
    div = sum(np.gradient(v[a], grid.step, axis=a) for a in range(3))
    inner = (slice(2, -2),) * 3
    assert np.corrcoef(div[inner].ravel(), (src - src.mean())[inner].ravel())[0, 1] > 0.9
    u = fl.exp_velocity(v, grid.step)
    ui = fl.exp_velocity(-v, grid.step)
    g = np.indices(grid.shape, dtype=np.float32)
    back = (u / grid.step) + fl.trilinear(ui / grid.step, g + u / grid.step)  # phi_-1 o phi - id, in nodes
    assert np.abs(back).max() < 0.05


def test_smooth_noise_unit_rms():
    n = fl.smooth_noise(np.random.default_rng(1), (20, 22, 18), 3.0)
    assert n.shape == (3, 20, 22, 18)
    assert np.allclose(np.sqrt((n ** 2).mean(axis=(1, 2, 3))), 1, atol=1e-4)

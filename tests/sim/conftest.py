"""Fixtures for the simulator's tests: the brain template (skips cleanly when it is not fetched),
a synthetic CT phantom, and the real pyradiomics lung CTs (sample source pyradiomics-data) when fetched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest



@pytest.fixture(scope="session")
def brain_template():
    from sobre import samples
    from sobre.sim import load_brain_template

    if not samples.is_available("mricron-data"):
        pytest.skip("sample 'mricron-data' (Colin27 + AAL) is not fetched; run `sobre samples fetch mricron-data`")
    return load_brain_template()


@pytest.fixture(scope="session")
def calib_cache(tmp_path_factory):
    """Calibration cache shared by the session (calibration is deterministic; the cache only saves time)."""
    from sobre.sim._brain import _default_cache_dir

    try:
        d = _default_cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        return d
    except OSError:
        return tmp_path_factory.mktemp("sim-cache")


def phantom_ct(shape=(96, 80, 40), spacing=(1.5, 1.5, 2.5), seed=0):
    """A CT-like phantom in HU: air, an elliptic body (soft tissue 40 HU, fat ring -90 HU), two lungs
    (-850 HU) with a few vessels, a spine (700 HU), and noise of SD 12 HU."""
    from sobre import Image

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = (np.arange(nx) - nx / 2 + 0.5)[:, None, None] * spacing[0]
    y = (np.arange(ny) - ny / 2 + 0.5)[None, :, None] * spacing[1]
    z = np.zeros((1, 1, nz))
    hu = np.full(shape, -1000.0)
    body = (x / 68) ** 2 + (y / 55) ** 2 <= 1
    body = body & np.ones(shape, bool)
    hu[body] = -90.0
    inner = ((x / 62) ** 2 + (y / 49) ** 2 <= 1) & np.ones(shape, bool)
    hu[inner] = 40.0
    for cx in (-30.0, 30.0):
        lung = (((x - cx) / 24) ** 2 + ((y + 5) / 30) ** 2 <= 1) & np.ones(shape, bool)
        hu[lung] = -850.0
        vessel = (((x - cx - 6) / 2.0) ** 2 + ((y + 2) / 2.0) ** 2 <= 1) & np.ones(shape, bool)
        hu[vessel] = 40.0
    spine = ((x / 10) ** 2 + ((y - 38) / 9) ** 2 <= 1) & np.ones(shape, bool)
    hu[spine] = 700.0
    hu += rng.normal(0, 12, shape) + z
    aff = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [-nx * spacing[0] / 2, -ny * spacing[1] / 2, -100.0]
    return Image(np.rint(hu).astype(np.int16), aff, modality="CT")


@pytest.fixture
def phantom():
    return phantom_ct()


@pytest.fixture(scope="session")
def lung_ct_paths(pyradiomics_data):
    paths = [pyradiomics_data / "lung1_image.nrrd", pyradiomics_data / "lung2_image.nrrd"]
    if not all(p.exists() for p in paths):
        pytest.skip(f"real lung CT backgrounds not present in {pyradiomics_data}; run `sobre samples fetch`")
    return paths

"""Shared test fixtures: real sample data (skipped with a message when absent), peers, fixed seeds.

Real data comes from :mod:`sobre.samples` (``sobre samples fetch`` / ``make data`` puts it in the
cache); a test that needs a source it cannot find is skipped, never failed, and says how to get it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

SEED = 20241125


def sample_path(name: str) -> Path:
    """Folder of sample source ``name`` in the cache, or ``pytest.skip`` saying how to fetch it."""
    from sobre import samples

    try:
        return samples.path(name)
    except samples.SampleMissing as exc:  # the message says why (not fetched, refused fetch, stale) and what to do
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def sample():
    """``sample(name)`` -> :func:`sobre.samples.path` (name), skipping the test when not fetched.

    Use: ``def test_ct(sample): ct = sample("pydicom-data") / "data_store/data/eCT_Supplemental.dcm"``.
    """
    return sample_path


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    """pydicom's own test files (shipped inside the pydicom wheel): CT_small.dcm, MR_small*.dcm, ..."""
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files"
    if not path.is_dir():
        pytest.skip(f"pydicom's test files are not installed at {path}")
    return path


@pytest.fixture(scope="session")
def pydicom_data(sample) -> Path:
    """The pydicom-data files (NEMA WG04, transfer syntaxes, enhanced multi-frame, US, SEG ...)."""
    return sample("pydicom-data") / "data_store" / "data"


@pytest.fixture(scope="session")
def colin27_path(sample) -> Path:
    """Colin27 T1 (mricron-data ``ch2.nii.gz``): one real head, 181×217×181 at 1 mm."""
    p = sample("mricron-data") / "usr/share/mricron/templates/ch2.nii.gz"
    if not p.exists():
        pytest.skip(f"{p} is missing from the mricron-data sample; fetch it again")
    return p


@pytest.fixture(scope="session")
def pyradiomics_data(sample) -> Path:
    """Real NRRD volumes + lesion masks of the pyradiomics 3.1.0 sdist (sample ``pyradiomics-data``).

    ``{brain1,brain2,breast1,lung1,lung2}_{image,label}.nrrd``: brain MR, breast MR, lung CT (BSD-3).
    """
    p = sample("pyradiomics-data") / "pyradiomics-3.1.0" / "data"
    if not (p / "lung1_image.nrrd").exists():
        pytest.skip(f"{p / 'lung1_image.nrrd'} is missing from the pyradiomics-data sample; "
                    "run `sobre samples fetch --force pyradiomics-data`")
    return p


@pytest.fixture(scope="session")
def dcm2niix() -> str:
    """Path of the dcm2niix executable (Debian package ``dcm2niix``), or skip."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (apt-get install dcm2niix); geometry is not compared with it")
    return exe


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed random generator: every run sees the same numbers."""
    return np.random.default_rng(SEED)

"""DICOM series written once per test session from real anatomy (Colin27, a lung CT)."""

from __future__ import annotations

import numpy as np
import pytest

import sobre

from .test_image import rotation

OBLIQUE_DEGREES = (15.0, 15.0)  # rotation about x, then about y


@pytest.fixture(scope="session")
def colin27(colin27_path) -> sobre.Image:
    """Colin27 T1 as a Sobre Image (181×217×181, 1 mm, RAS-ordered voxels: orientation 'RAS')."""
    img = sobre.load(colin27_path)
    img.array  # noqa: B018 - read once for every test of the session
    return img


def oblique_colin27(colin27) -> sobre.Image:
    """Colin27's voxels on a grid rotated by 15° about x and 15° about y (no resampling)."""
    aff = colin27.affine.copy()
    aff[:3, :3] = rotation(*OBLIQUE_DEGREES) @ aff[:3, :3]
    return colin27.with_array(colin27.array, affine=aff)


@pytest.fixture(scope="session")
def colin27_axial_series(tmp_path_factory, colin27):
    """(folder, Image written): Colin27 as a single-frame MR series, 181 files."""
    out = tmp_path_factory.mktemp("colin27_axial")
    sobre.write_dicom_series(colin27, out, modality="MR", uid_seed="colin27-axial",
                             meta={"patient_id": "COLIN27", "series_description": "Colin27 T1 axial"})
    return out, colin27


@pytest.fixture(scope="session")
def colin27_oblique_series(tmp_path_factory, colin27):
    """(folder, Image written): Colin27 with a doubly oblique affine as a single-frame MR series."""
    img = oblique_colin27(colin27)
    out = tmp_path_factory.mktemp("colin27_oblique")
    sobre.write_dicom_series(img, out, modality="MR", uid_seed="colin27-oblique",
                             meta={"patient_id": "COLIN27", "series_description": "Colin27 T1 oblique"})
    return out, img


@pytest.fixture(scope="session")
def lung_ct_series(tmp_path_factory, pyradiomics_data):
    """(folder, Image written): the pyradiomics lung CT (512×512×48, int16 HU) as a CT series."""
    img = sobre.load(pyradiomics_data / "lung1_image.nrrd")
    assert img.dtype == np.int16
    out = tmp_path_factory.mktemp("lung_ct")
    sobre.write_dicom_series(img.with_array(img.array, modality="CT"), out, uid_seed="lung1",
                             meta={"patient_id": "LUNG1", "series_description": "pyradiomics lung1"})
    return out, img

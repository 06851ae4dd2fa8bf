"""Geometry and voxels equal dcm2niix, the reference DICOM->NIfTI converter, on real multi-slice series.

Each test runs dcm2niix (Debian package ``dcm2niix``) on the same input at test time, loads its
NIfTI with nibabel and compares after :func:`nibabel.as_closest_canonical` on both sides (Sobre's
image enters nibabel as ``Nifti1Image(img.array, img.affine_ras)``): same shape, affine within
1e-3 mm, same voxel values.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import sobre

pytestmark = pytest.mark.peers

AFFINE_TOL_MM = 1e-3


def run_dcm2niix(exe: str, src: Path, out: Path) -> list[Path]:
    """Convert ``src`` (a folder, or one file copied into a folder of its own) and return the NIfTI files."""
    if src.is_file():
        folder = out / "in"
        folder.mkdir(parents=True)
        shutil.copy(src, folder / src.name)
        src = folder
    nii_dir = out / "nii"
    nii_dir.mkdir(parents=True)
    run = subprocess.run([exe, "-b", "n", "-z", "n", "-p", "n", "-o", str(nii_dir), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return sorted(nii_dir.glob("*.nii"))


def assert_same_as_dcm2niix(img: sobre.Image, nii: Path) -> None:
    ours = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(img.array), img.affine_ras))
    theirs = nib.as_closest_canonical(nib.load(nii))
    assert ours.shape == theirs.shape
    assert np.allclose(ours.affine, theirs.affine, atol=AFFINE_TOL_MM, rtol=0), (ours.affine, theirs.affine)
    a = np.asarray(ours.dataobj, dtype=np.float64)
    b = np.asanyarray(theirs.dataobj).astype(np.float64)  # dcm2niix may store scl_slope / scl_inter
    if np.issubdtype(img.dtype, np.integer):
        assert np.array_equal(a, b)
    else:
        assert np.allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()))


def test_enhanced_ct(dcm2niix, pydicom_data, tmp_path):
    path = pydicom_data / "eCT_Supplemental.dcm"
    (nii,) = run_dcm2niix(dcm2niix, path, tmp_path)
    img = sobre.load(path)
    assert img.shape == (512, 512, 2)
    assert_same_as_dcm2niix(img, nii)


def test_enhanced_philips_mr_176_frames(dcm2niix, sample, tmp_path):
    packed = sample("nibabel-data") / "nibabel/nicom/tests/data/philips_mprage.dcm.gz"
    path = tmp_path / "philips_mprage.dcm"
    path.write_bytes(gzip.decompress(packed.read_bytes()))
    (nii,) = run_dcm2niix(dcm2niix, path, tmp_path)
    img = sobre.load(path)
    assert img.shape == (256, 256, 176) and img.modality == "MR"
    assert_same_as_dcm2niix(img, nii)


def test_ct_stack_from_dicomdir_tests(dcm2niix, pydicom_test_files, tmp_path):
    # the only folder of pydicom's dicomdirtests that forms a stack: the others are single slices
    # (MR1, MR2, CR*), a 7-orientation localizer (MR700), a scout (CT2N) or unevenly spaced (CT2)
    folder = pydicom_test_files / "dicomdirtests/98892001/CT5N"
    (nii,) = run_dcm2niix(dcm2niix, folder, tmp_path)
    img = sobre.load(folder)
    assert img.shape == (16, 16, 5)
    assert_same_as_dcm2niix(img, nii)


def test_segmentation_object(dcm2niix, pydicom_data, tmp_path):
    path = pydicom_data / "liver.dcm"
    niis = run_dcm2niix(dcm2niix, path, tmp_path)
    if len(niis) != 1:
        pytest.skip(f"dcm2niix does not convert the DICOM SEG liver.dcm to one volume here ({len(niis)} files)")
    img = sobre.load(path)
    assert img.modality == "SEG" and img.shape == (512, 512, 3)
    assert_same_as_dcm2niix(img, niis[0])


def test_colin27_axial_series(dcm2niix, colin27_axial_series, tmp_path):
    folder, written = colin27_axial_series
    (nii,) = run_dcm2niix(dcm2niix, folder, tmp_path)
    img = sobre.load(folder)
    assert_same_as_dcm2niix(img, nii)
    # and both equal the NIfTI the series was made from
    assert_same_as_dcm2niix(written, nii)


def test_colin27_oblique_series(dcm2niix, colin27_oblique_series, tmp_path):
    folder, written = colin27_oblique_series
    (nii,) = run_dcm2niix(dcm2niix, folder, tmp_path)
    img = sobre.load(folder)
    assert img.is_oblique
    assert_same_as_dcm2niix(img, nii)
    assert_same_as_dcm2niix(written, nii)


def test_lung_ct_series(dcm2niix, lung_ct_series, tmp_path):
    folder, written = lung_ct_series
    (nii,) = run_dcm2niix(dcm2niix, folder, tmp_path)
    img = sobre.load(folder)
    assert img.shape == (512, 512, 48) and img.modality == "CT"
    assert_same_as_dcm2niix(img, nii)
    assert_same_as_dcm2niix(written, nii)

"""Reading masks named in a predictions file, and checking that two masks share a grid.

One small helper, :func:`read_mask`, does the reading so that it can be swapped for
``sobre.load`` in one place: it uses ``sobre.load`` when the package provides it, else
nibabel (NIfTI) or SimpleITK (NRRD, MHA, ...), and ``numpy.load`` for ``.npy`` arrays
(unit spacing, identity affine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sobre.validate._errors import MaskGeometryError, MaskReadError

__all__ = ["MaskVolume", "read_mask", "check_same_grid", "resample_nearest"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class MaskVolume:
    """A mask (or probability map) with its geometry.

    Attributes
    ----------
    array : ndarray, shape (X, Y) or (X, Y, Z)
        Voxel values, index order ``[i, j, k]``.
    spacing : ndarray of shape (ndim,)
        Voxel size in mm along each array axis.
    affine : ndarray of shape (4, 4)
        Voxel index -> patient LPS coordinates in mm.
    path : str
    """

    array: np.ndarray
    spacing: np.ndarray
    affine: np.ndarray
    path: str

    @property
    def ndim(self) -> int:
        return self.array.ndim


def _affine_from(spacing, direction, origin) -> np.ndarray:
    a = np.eye(4)
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    a[:3, :3] = d * np.asarray(spacing, dtype=float)[None, :3]
    a[:3, 3] = origin
    return a


def _squeeze_spatial(arr: np.ndarray) -> np.ndarray:
    # a 2D mask stored as (X, Y, 1) is read as 2D
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[:, :, 0]
    return arr


def read_mask(path: str | Path) -> MaskVolume:
    """Read a mask or probability map with its voxel spacing and affine.

    Parameters
    ----------
    path : str or Path
        NIfTI (``.nii``, ``.nii.gz``), NRRD, MHA/MHD, any format SimpleITK reads, or ``.npy``.

    Returns
    -------
    MaskVolume

    Raises
    ------
    MaskReadError
        When the file is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise MaskReadError("mask file not found", path=path, expected="an existing NIfTI/NRRD/MHA file",
                            found="no such file",
                            fix="check the mask_path/pred_path column; relative paths are resolved "
                                "against the folder of the predictions file")
    try:
        import sobre
        load = getattr(sobre, "load", None)
        if load is not None and path.suffix != ".npy":
            img = load(path)
            arr = _squeeze_spatial(np.asarray(img.array))
            sp = np.asarray(img.spacing, dtype=float)[: arr.ndim]
            return MaskVolume(arr, sp, np.asarray(img.affine, dtype=float), str(path))
        name = path.name.lower()
        if name.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            return MaskVolume(arr, np.ones(arr.ndim), np.eye(4), str(path))
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            arr = _squeeze_spatial(np.asanyarray(img.dataobj))
            zooms = np.asarray(img.header.get_zooms(), dtype=float)[: arr.ndim]
            return MaskVolume(arr, zooms, _RAS_TO_LPS @ np.asarray(img.affine, dtype=float), str(path))
        import SimpleITK as sitk

        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img).T  # SimpleITK is [k, j, i]
        sp = np.asarray(img.GetSpacing(), dtype=float)
        if img.GetDimension() == 2:
            direction = np.eye(3)
            direction[:2, :2] = np.asarray(img.GetDirection()).reshape(2, 2)
            aff = _affine_from(np.r_[sp, 1.0], direction, np.r_[img.GetOrigin(), 0.0])
        else:
            aff = _affine_from(sp, img.GetDirection(), img.GetOrigin())
        arr = _squeeze_spatial(arr)
        return MaskVolume(arr, sp[: arr.ndim], aff, str(path))
    except MaskReadError:
        raise
    except Exception as exc:  # any reader failure becomes an actionable error
        raise MaskReadError("cannot read mask file", path=path, expected="a NIfTI, NRRD or MHA image",
                            found=f"{type(exc).__name__}: {exc}",
                            fix="convert the mask to NIfTI (.nii.gz) or check that the file is complete") from exc


def check_same_grid(pred: MaskVolume, ref: MaskVolume, *, atol_mm: float = 1e-3) -> None:
    """Refuse two masks whose voxel grids differ (shape, spacing, orientation or origin).

    Raises
    ------
    MaskGeometryError
        Naming both files, what differs, and the fix (resample, or ``--resample``).
    """
    fix = ("resample the prediction onto the reference grid before evaluation, or pass "
           "--resample (resample=True) to resample it with nearest-neighbour interpolation")
    if pred.array.shape != ref.array.shape:
        raise MaskGeometryError(f"predicted mask {pred.path} and reference mask do not have the same shape",
                                path=ref.path, expected=f"shape {ref.array.shape} (reference)",
                                found=f"shape {pred.array.shape} (prediction)", fix=fix)
    if not np.allclose(pred.spacing, ref.spacing, rtol=1e-4, atol=1e-6):
        raise MaskGeometryError(f"predicted mask {pred.path} and reference mask differ in voxel spacing",
                                path=ref.path, expected=f"spacing {np.round(ref.spacing, 4).tolist()} mm",
                                found=f"spacing {np.round(pred.spacing, 4).tolist()} mm", fix=fix)
    if not np.allclose(pred.affine, ref.affine, atol=atol_mm):
        raise MaskGeometryError(f"predicted mask {pred.path} and reference mask differ in position or "
                                "orientation (affine)", path=ref.path,
                                expected=f"affine {np.round(ref.affine, 3).tolist()}",
                                found=f"affine {np.round(pred.affine, 3).tolist()}", fix=fix)


def resample_nearest(pred: MaskVolume, ref: MaskVolume) -> MaskVolume:
    """Resample ``pred`` onto the grid of ``ref`` (nearest neighbour, outside = 0).

    Returns
    -------
    MaskVolume
        Same shape, spacing and affine as ``ref``.
    """
    from scipy import ndimage

    nd = ref.array.ndim

    def full(a: np.ndarray, n: int) -> np.ndarray:
        if n == 3:
            return a
        out = np.eye(4)
        out[:2, :2] = a[:2, :2]
        out[:2, 3] = a[:2, 3]
        return out

    # ref index -> patient -> pred index
    m = np.linalg.inv(full(pred.affine, nd)) @ full(ref.affine, nd)
    if nd == 2:
        mat, off = m[:2, :2], m[:2, 3]
    else:
        mat, off = m[:3, :3], m[:3, 3]
    arr = np.asarray(pred.array)
    out = ndimage.affine_transform(arr.astype(np.float32), mat, offset=off, output_shape=ref.array.shape,
                                   order=0, mode="constant", cval=0.0)
    return MaskVolume(out.astype(arr.dtype), ref.spacing.copy(), ref.affine.copy(), pred.path)

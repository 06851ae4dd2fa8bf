"""Masks named in a predictions file: read as :class:`sobre.Image`, checked for a shared voxel grid.

Reading goes through :func:`sobre.load` (NIfTI, NRRD, MetaImage, DICOM ...); ``.npy`` arrays are
accepted too, with unit spacing and an identity affine. Resampling a prediction onto its reference
is :func:`sobre.image.resample` with ``order="nearest"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sobre.errors import SobreError
from sobre.image import Image
from sobre.validate._errors import MaskGeometryError, MaskReadError

__all__ = ["read_mask", "check_same_grid", "mask_voxels"]


def _name(img: Image) -> str:
    return img.sources[0] if img.sources else "the predicted mask"


def read_mask(path: str | Path) -> Image:
    """Read a mask or probability map (pixels loaded now, so that a damaged file fails here).

    Parameters
    ----------
    path : str or Path
        Any single image :func:`sobre.load` reads (NIfTI, NRRD, MHA, a DICOM series), or ``.npy``.

    Returns
    -------
    Image
        One value per voxel (no channel or time axis); ``sources`` names the file.

    Raises
    ------
    MaskReadError
        When the file is missing or unreadable, or holds more than one value per voxel.
    """
    path = Path(path)
    if not path.exists():
        raise MaskReadError("mask file not found", path=path, expected="an existing NIfTI/NRRD/MHA file",
                            found="no such file",
                            fix="check the mask_path/pred_path column; relative paths are resolved "
                                "against the folder of the predictions file")
    try:
        if path.suffix.lower() == ".npy":
            img = Image(np.load(path, allow_pickle=False), np.eye(4), sources=[str(path)])
        else:
            from sobre.image import load

            img = load(path)
        img.array  # noqa: B018 - read the pixels now: a truncated file is a read error, not a bug later
    except MaskReadError:
        raise
    except (SobreError, OSError, ValueError) as exc:
        found = str(exc) if isinstance(exc, SobreError) else f"{type(exc).__name__}: {exc}"
        raise MaskReadError("cannot read mask file", path=path, expected="a NIfTI, NRRD or MHA image",
                            found=found,
                            fix="convert the mask to NIfTI (.nii.gz) or check that the file is complete") from exc
    if img.extra_axes:
        raise MaskReadError("a mask must hold one value per voxel", path=path,
                            expected="a 2D or 3D image (labels or probabilities)",
                            found=f"shape {img.shape} with a {img.extra_axes[0]} axis",
                            fix="save one mask per structure, or the argmax label map")
    if not img.sources:
        img.sources = [str(path)]
    return img


def mask_voxels(img: Image) -> tuple[np.ndarray, tuple[float, ...]]:
    """``(array, spacing)`` for the metrics: a 2D mask stored as one slice (X, Y, 1) counts as 2D."""
    arr = np.asarray(img.array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[:, :, 0], tuple(img.spacing[:2])
    return arr, tuple(img.spacing)


def check_same_grid(pred: Image, ref: Image, *, atol_mm: float = 1e-3) -> None:
    """Refuse two masks whose voxel grids differ (shape, spacing, orientation or origin).

    Raises
    ------
    MaskGeometryError
        Naming both files, what differs, and the fix (resample, or ``--resample``).
    """
    fix = ("resample the prediction onto the reference grid before evaluation, or pass "
           "--resample (resample_masks=True) to resample it with nearest-neighbour interpolation")
    where = ref.sources[0] if ref.sources else None
    if pred.spatial_shape != ref.spatial_shape:
        raise MaskGeometryError(f"predicted mask {_name(pred)} and reference mask do not have the same shape",
                                path=where, expected=f"shape {ref.spatial_shape} (reference)",
                                found=f"shape {pred.spatial_shape} (prediction)", fix=fix)
    if not np.allclose(pred.spacing, ref.spacing, rtol=1e-4, atol=1e-6):
        raise MaskGeometryError(f"predicted mask {_name(pred)} and reference mask differ in voxel spacing",
                                path=where, expected=f"spacing {np.round(ref.spacing, 4).tolist()} mm",
                                found=f"spacing {np.round(pred.spacing, 4).tolist()} mm", fix=fix)
    if not np.allclose(pred.affine, ref.affine, atol=atol_mm):
        raise MaskGeometryError(f"predicted mask {_name(pred)} and reference mask differ in position or "
                                "orientation (affine)", path=where,
                                expected=f"affine {np.round(ref.affine, 3).tolist()}",
                                found=f"affine {np.round(pred.affine, 3).tolist()}", fix=fix)

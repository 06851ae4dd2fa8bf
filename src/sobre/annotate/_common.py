"""What import and export share: a version's series (its Image and DICOM sources), the project's schema."""

from __future__ import annotations

import numpy as np

from sobre.errors import InputError

__all__ = ["dicom_sources", "schema_of", "series_image", "series_key_of", "version_info"]


def version_info(ws, version):
    """An :class:`~sobre.catalog.AnnotationVersionInfo` from an id or the info itself."""
    return version if hasattr(version, "sha256") else ws.annotations.version(int(version))


def series_key_of(info) -> str:
    return f"{info.series_uid}#{info.series_label}" if info.series_label else info.series_uid


def series_image(ws, series: str):
    """The catalogued volume ``series`` (``uid`` or ``uid#label``), headers read, pixels not decoded."""
    return ws.load(series)


def dicom_sources(image, what: str) -> list[str]:
    srcs = [str(s) for s in (image.sources or [])]
    if not srcs or image.metadata.get("sop_class_uid") is None:
        raise InputError(f"{what} needs a DICOM series", expected="a series read from DICOM files",
                         found=f"{image.metadata.get('format') or 'a non-DICOM'} series",
                         fix="export masks of NIfTI/NRRD series as NIfTI (format=nifti)")
    return srcs


def schema_of(ws, project: str):
    return ws.accounts.project(project).schema


def spatial_shape(image) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image.shape[: image.spatial_ndim])
    return shape + (1,) * (3 - len(shape))


def as_grid(image, arr: np.ndarray):
    """A label-map Image on ``image``'s grid (same affine, same spatial shape as the catalog stores it)."""
    from sobre.image import Image

    return Image(np.ascontiguousarray(arr, dtype=np.uint8).reshape(image.shape[: image.spatial_ndim], order="A"),
                 image.affine, modality="SEG", spatial_ndim=image.spatial_ndim)

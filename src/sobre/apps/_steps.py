"""Pre- and post-processing steps of applications: plain functions ``Image -> Image``.

An application lists them (``App(preprocess=[...], postprocess=[...])``); they run in order.
Pre-processing sees the input image (the model's own preprocessing — resampling, intensity
normalisation — comes after, exactly as in training); post-processing sees the label map the
model proposed, already back on the input grid.

>>> import numpy as np, sobre
>>> m = np.zeros((6, 6, 6), np.uint8); m[0:2, 0:2, 0:2] = 1; m[3:6, 3:6, 3:6] = 1
>>> int(largest_component(sobre.Image(m)).array.sum())
27
>>> int(remove_small(10.0)(sobre.Image(m)).array.sum())
27
>>> float(clip_intensity(-100, 100)(sobre.Image(np.full((2, 2, 2), 500.0))).array.max())
100.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Step", "largest_component", "remove_small", "clip_intensity", "components", "volumes_mm3"]

Step = Callable  # Image -> Image

def _structure(ndim: int) -> np.ndarray:
    """26-connected in 3D (8 in 2D): voxels touching by a corner belong to one object."""
    return np.ones((3,) * ndim, bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean array (corners touching join): ``(labels, count)``."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, bool), structure=_structure(np.ndim(mask)))
    return labels, int(n)


def largest_component(image):
    """Keep, for each label of a label map, only its largest connected component."""
    arr = np.asarray(image.array)
    out = np.zeros_like(arr)
    for v in np.unique(arr):
        if v == 0:
            continue
        labels, n = components(arr == v)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        out[labels == int(np.argmax(sizes)) + 1] = v
    return image.with_array(out)


def remove_small(min_mm3: float) -> Step:
    """A step removing connected components smaller than ``min_mm3`` cubic millimetres (per label)."""
    min_mm3 = float(min_mm3)

    def step(image):
        arr = np.asarray(image.array)
        voxel = float(np.prod(image.spacing[:image.spatial_ndim]))
        out = arr.copy()
        for v in np.unique(arr):
            if v == 0:
                continue
            labels, n = components(arr == v)
            sizes = np.bincount(labels.ravel()) * voxel
            small = np.flatnonzero(sizes < min_mm3)
            out[np.isin(labels, small[small > 0])] = 0
        return image.with_array(out)

    step.__name__ = f"remove_small({min_mm3:g} mm3)"
    return step


def clip_intensity(low: float, high: float) -> Step:
    """A pre-processing step clipping intensities to ``[low, high]`` (e.g. HU before a CT model)."""

    def step(image):
        return image.with_array(np.clip(np.asarray(image.array), low, high))

    step.__name__ = f"clip_intensity({low:g}, {high:g})"
    return step


def volumes_mm3(image, values) -> dict:
    """Volume in mm³ of each value of a label map (voxel count × voxel volume)."""
    arr = np.asarray(image.array)
    voxel = float(np.prod(image.spacing[:image.spatial_ndim]))
    return {int(v): float((arr == v).sum()) * voxel for v in values}

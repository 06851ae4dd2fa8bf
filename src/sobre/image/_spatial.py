"""Spatial operations on Images with exact geometry: resample, reorient, crop or pad.

Every function takes an :class:`~sobre.image.Image` and returns a new one whose affine says exactly
where each voxel centre lies in LPS patient coordinates; nothing is resampled that need not be
(``reorient`` and ``crop_or_pad`` only move, flip or cut voxels).

Conventions (those of ITK/SimpleITK, against which ``resample`` is tested):

* a voxel value sits at the voxel **centre**; voxel ``(i, j, k)`` covers ``[i - 0.5, i + 0.5]``;
* a target point whose continuous index in the source lies outside ``[-0.5, n - 0.5)`` along any axis
  gets ``fill``; a point inside the source's voxels but beyond the outermost centres takes the edge
  value (linear) — ``SimpleITK.Resample`` with the same default value gives the same numbers;
* nearest neighbour rounds halves up (``floor(x + 0.5)``), as ITK does;
* ``"nearest"`` keeps the dtype (label maps stay labels); ``"linear"`` returns float32 (float64 for
  float64 input): an interpolated value is not an integer, and Sobre never rounds or rescales silently.

A :class:`Grid` (spatial shape + 4×4 affine) describes where to resample to; ``Grid.of(image)`` and its
``with_spacing``, ``with_shape`` and ``crop_or_pad`` make the usual targets.

Examples
--------
>>> import numpy as np
>>> from sobre.image import Image, resample, reorient, crop_or_pad
>>> img = Image(np.arange(24, dtype=np.int16).reshape(4, 3, 2), np.diag([1.0, 1.0, 2.0, 1.0]))
>>> resample(img, spacing=(2.0, 1.0, 2.0), order="nearest").spatial_shape
(2, 3, 2)
>>> ras = reorient(img, "RAS")
>>> ras.orientation, ras.voxel_to_world([0, 0, 0]).tolist()
('RAS', [3.0, 2.0, 0.0])
>>> crop_or_pad(img, (2, 5, 2)).voxel_to_world([0, 0, 0]).tolist()
[1.0, -1.0, 0.0]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sobre.errors import ConfigError, GeometryError
from sobre.image import _geometry as geo
from sobre.image._image import Image

__all__ = ["Grid", "resample", "reorient", "crop_or_pad", "ORDERS"]

#: Interpolation orders by name (scipy spline order).
ORDERS = {"nearest": 0, "linear": 1}

_AXIS_OF = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


# ----------------------------------------------------------------------------------------------- grids
@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: spatial ``shape`` (2 or 3 axes) and the 4×4 voxel → LPS ``affine`` (mm).

    Examples
    --------
    >>> g = Grid((10, 10, 4), np.diag([1.0, 1.0, 3.0, 1.0]))
    >>> g.with_spacing((2.0, 2.0, 3.0)).shape, g.with_spacing((2.0, 2.0, 3.0)).spacing
    ((5, 5, 4), (2.0, 2.0, 3.0))
    >>> g.with_shape((5, 5, 4)).affine[0].tolist()   # same field of view: first centre at 0.5 mm
    [2.0, 0.0, 0.0, 0.5]
    """

    shape: tuple[int, ...]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise GeometryError("a grid needs 2 or 3 axes of at least one voxel", found=str(tuple(self.shape)))
        aff = np.array(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise GeometryError("a grid needs a finite, invertible 4×4 affine", found=str(aff.tolist()))
        aff.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", aff)

    @classmethod
    def of(cls, target: Image | Grid | tuple) -> Grid:
        """The grid of an Image (its spatial shape and affine), a Grid, or a ``(shape, affine)`` pair."""
        if isinstance(target, Grid):
            return target
        if isinstance(target, Image):
            return cls(target.spatial_shape, target.affine)
        if isinstance(target, tuple) and len(target) == 2:
            return cls(*target)
        raise ConfigError("cannot use this as a target grid", expected="an Image, a Grid or (shape, affine)",
                          found=type(target).__name__)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each grid axis."""
        return geo.spacing(self.affine)[: self.ndim]

    def voxel_to_world(self, ijk) -> np.ndarray:
        """LPS coordinates (mm) of voxel indices, shape (..., 3)."""
        ijk = np.asarray(ijk, float)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def _remap(self, shape: Sequence[int], scale: Sequence[float], shift: Sequence[float]) -> Grid:
        """The grid whose index ``o`` sits at this grid's continuous index ``scale * o + shift``."""
        m = np.eye(4)
        for a in range(self.ndim):
            m[a, a] = scale[a]
            m[a, 3] = shift[a]
        return Grid(tuple(shape), self.affine @ m)

    def with_spacing(self, spacing: Sequence[float]) -> Grid:
        """Exactly ``spacing`` mm, centred on this grid's field of view, ``round(extent / spacing)`` voxels.

        The field of view changes by less than one new voxel along each axis; when the extent is a
        multiple of the new spacing it is kept exactly (as :meth:`with_shape` would).
        """
        spacing = _per_axis(spacing, self.ndim, "spacing", positive=True)
        old = np.asarray(self.spacing, float)
        n = np.asarray(self.shape, float)
        m = np.maximum(1, np.rint(n * old / spacing)).astype(int)
        ratio = spacing / old
        return self._remap(m, ratio, (n - 1) / 2 - ratio * (m - 1) / 2)

    def with_shape(self, shape: Sequence[int]) -> Grid:
        """``shape`` voxels over exactly this grid's field of view (voxel edges kept; spacing changes)."""
        shape = _shape(shape, self.ndim)
        n = np.asarray(self.shape, float)
        ratio = n / np.asarray(shape, float)
        return self._remap(shape, ratio, 0.5 * ratio - 0.5)

    def crop_or_pad(self, shape: Sequence[int]) -> Grid:
        """Centre crop (or pad) to ``shape`` by whole voxels: same spacing, origin moved by an integer index.

        Along an axis of ``n`` voxels cut to ``m``, output voxel 0 is input voxel ``(n - m) // 2``; padded
        to ``m``, input voxel 0 lands on output voxel ``(m - n) // 2``.
        """
        shape = _shape(shape, self.ndim)
        return self._remap(shape, [1.0] * self.ndim, _crop_starts(self.shape, shape))


def _crop_starts(old: Sequence[int], new: Sequence[int]) -> list[int]:
    """Input index of output voxel 0 along each axis of a centred crop (>= 0) or pad (< 0)."""
    return [(o - n) // 2 if o >= n else -((n - o) // 2) for o, n in zip(old, new)]


def _per_axis(values, ndim: int, what: str, *, positive: bool = False) -> np.ndarray:
    try:
        arr = np.broadcast_to(np.asarray(values, dtype=float), (ndim,)).copy()
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must give one number per spatial axis", expected=f"{ndim} numbers",
                          found=repr(values)) from None
    if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        raise ConfigError(f"{what} must be finite{' and positive' if positive else ''}",
                          expected=f"{ndim} {'positive ' if positive else ''}numbers (mm)", found=repr(values))
    return arr


def _shape(shape, ndim: int) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
        ok = len(out) == ndim and all(s >= 1 and s == float(t) for s, t in zip(out, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError("shape must give one whole number of voxels (>= 1) per spatial axis",
                          expected=f"{ndim} positive integers", found=repr(shape))
    return out


def _fill_value(fill, dtype: np.dtype):
    """``fill`` in ``dtype``, refused when the dtype cannot hold it (no silent wrap-around or rounding)."""
    try:
        v = np.asarray(fill).astype(dtype)
        same = bool(v == np.asarray(fill)) or (np.isnan(fill) and np.issubdtype(dtype, np.floating))
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ConfigError("the fill value does not fit the image's data type", expected=f"a {dtype} value",
                          found=repr(fill), fix="choose a fill the dtype can hold, or convert the image first")
    return v


def _with_grid(image: Image, array: np.ndarray, grid: Grid) -> Image:
    return Image(array, grid.affine, spatial_ndim=image.spatial_ndim, extra_axes=image.extra_axes,
                 modality=image.modality, metadata=dict(image.metadata), sources=list(image.sources),
                 coordinate_system=image.coordinate_system)


# ------------------------------------------------------------------------------------------- resample
def resample(image: Image, target: Image | Grid | tuple | None = None, *, spacing: Sequence[float] | None = None,
             shape: Sequence[int] | None = None, order: str = "linear", fill: float = 0) -> Image:
    """Resample ``image`` onto another voxel grid, in patient coordinates.

    Parameters
    ----------
    image : Image
        2D or 3D, with optional extra axes (each channel / frame is resampled alike).
    target : Image, Grid or (shape, affine), optional
        The grid to resample onto (e.g. a reference mask). Exclusive with ``spacing`` / ``shape``.
    spacing : sequence of float, optional
        New voxel size (mm) per spatial axis of ``image``, over the image's own field of view
        (:meth:`Grid.with_spacing`); with ``shape`` too, the result is then centre-cropped or padded to
        ``shape`` (:meth:`Grid.crop_or_pad`) in the same single interpolation.
    shape : sequence of int, optional
        Alone: that many voxels over the same field of view (:meth:`Grid.with_shape`).
    order : {"nearest", "linear"}
        Interpolation. ``"nearest"`` keeps the dtype; ``"linear"`` returns float32 (float64 input stays
        float64).
    fill : float
        Value of target voxels whose centre falls outside the image.

    Returns
    -------
    Image
        On the target grid, with the image's modality, metadata and sources.

    Raises
    ------
    GeometryError
        The target has another number of spatial axes, or another coordinate system.
    ConfigError
        Unknown ``order``, bad ``spacing`` / ``shape``, or a ``fill`` the dtype cannot hold.

    Examples
    --------
    >>> img = Image(np.arange(8.0).reshape(8, 1, 1), np.eye(4))
    >>> resample(img, shape=(4, 1, 1)).array.ravel().tolist()
    [0.5, 2.5, 4.5, 6.5]
    """
    if order not in ORDERS:
        raise ConfigError("unknown interpolation order", expected=" or ".join(map(repr, ORDERS)),
                          found=repr(order))
    nd = image.spatial_ndim
    if target is not None:
        if spacing is not None or shape is not None:
            raise ConfigError("give either a target grid or spacing/shape, not both",
                              found="target and " + ("spacing" if spacing is not None else "shape"))
        if isinstance(target, Image) and target.coordinate_system != image.coordinate_system:
            raise GeometryError("the image and the target grid are not in the same coordinate system",
                                expected=image.coordinate_system, found=target.coordinate_system)
        grid = Grid.of(target)
        if grid.ndim != nd:
            raise GeometryError("the target grid has another number of spatial axes",
                                expected=f"{nd} axes like the image {image.spatial_shape}",
                                found=f"{grid.ndim} axes {grid.shape}")
    else:
        if spacing is None and shape is None:
            raise ConfigError("resample needs a target grid, a spacing or a shape", found="none of them")
        grid = Grid.of(image)
        if spacing is not None:
            grid = grid.with_spacing(spacing)
            if shape is not None:
                grid = grid.crop_or_pad(shape)
        else:
            grid = grid.with_shape(shape)

    src = image.array
    k = ORDERS[order]
    if k == 0:
        out_dtype = src.dtype
    else:
        out_dtype = np.dtype(np.float64) if src.dtype == np.float64 else np.dtype(np.float32)
    cval = _fill_value(fill, out_dtype)
    # output index -> source continuous index, both padded to 3 spatial axes for 2D images
    m = np.linalg.inv(image.affine) @ grid.affine
    if nd == 2:
        m[:, 2] = 0.0
        m[2, 2] = 1.0  # the source has one plane; a target point off it falls outside it
    mat, off = m[:3, :3], m[:3, 3]
    src_shape = image.spatial_shape + (1,) * (3 - nd)
    out_shape = grid.shape + (1,) * (3 - nd)
    extra = image.shape[nd:]
    out = np.empty(grid.shape + extra, out_dtype)
    if grid.shape == image.spatial_shape and np.allclose(m, np.eye(4), rtol=0, atol=1e-9):
        out[...] = src  # the same grid: nothing to interpolate
        return _with_grid(image, out, grid)
    inside = _inside(mat, off, src_shape, out_shape)
    work = _work_dtype(src.dtype)
    from scipy import ndimage

    for idx in itertools.product(*(range(e) for e in extra)):
        channel = np.asarray(src[(Ellipsis, *idx)] if idx else src).reshape(src_shape)
        # scipy interpolates in double precision whatever the input type, and writes the output type
        res = ndimage.affine_transform(channel.astype(work, copy=False), mat, offset=off, output_shape=out_shape,
                                       output=work if k == 0 else out_dtype, order=k, mode="nearest",
                                       prefilter=False)
        if inside is not None:
            res[~inside] = cval
        out[(Ellipsis, *idx)] = res.reshape(grid.shape).astype(out_dtype, copy=False)
    return _with_grid(image, out, grid)


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """The image's dtype, or the nearest one scipy reads without loss (bool and float16 are not read)."""
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype == np.float16:
        return np.dtype(np.float32)
    return dtype


def _inside(mat: np.ndarray, off: np.ndarray, src_shape, out_shape) -> np.ndarray | None:
    """Mask of output voxels whose source continuous index lies in ``[-0.5, n - 0.5)``; None: all inside.

    The index map is affine, so along each output row (fixed i, j) the inside part is one interval of k:
    computed per row, then expanded, instead of evaluating three coordinates per voxel.
    """
    lo = -0.5
    hi = np.asarray(src_shape, float) - 0.5
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in out_shape])), float)
    c = corners @ mat.T + off  # the extremes of an affine map over a box are at its corners
    if np.all(c >= lo) and np.all(c < hi):
        return None
    ni, nj, nk = out_shape
    i = np.arange(ni, dtype=float)[:, None]
    j = np.arange(nj, dtype=float)[None, :]
    kmin = np.zeros((ni, nj))
    kmax = np.full((ni, nj), nk - 1.0)
    for a in range(3):
        base = mat[a, 0] * i + mat[a, 1] * j + off[a]
        step = mat[a, 2]
        if step == 0:  # constant along k: the whole row is in or out
            out = (base < lo) | (base >= hi[a])
            kmin = np.where(out, nk, kmin)
            continue
        first, last = (lo - base) / step, (hi[a] - base) / step  # lo <= base + step k < hi
        if step > 0:
            kmin = np.maximum(kmin, np.ceil(first))
            kmax = np.minimum(kmax, np.ceil(last) - 1)
        else:
            kmin = np.maximum(kmin, np.floor(last) + 1)
            kmax = np.minimum(kmax, np.floor(first))
    k = np.arange(nk, dtype=float)
    return (k >= kmin[..., None]) & (k <= kmax[..., None])


# ------------------------------------------------------------------------------------------- reorient
def _parse_code(code: str) -> list[tuple[int, int]]:
    c = str(code).upper()
    parsed = [_AXIS_OF.get(ch) for ch in c]
    if len(c) != 3 or None in parsed or len({w for w, _ in parsed}) != 3:
        raise ConfigError("unknown orientation code", expected="three letters naming where i, j, k increase, one "
                          "of L/R, P/A and S/I each (e.g. 'LPS', 'RAS')", found=repr(code))
    return parsed  # type: ignore[return-value]


def reorient(image: Image, code: str = "LPS") -> Image:
    """Reorder and flip the voxel axes so that the index increases along ``code`` (no interpolation).

    The same voxels, the same world positions: only the array layout and the affine change. Oblique
    images take the nearest code (each voxel axis goes to the world axis it is closest to, as in
    :attr:`Image.orientation`).

    Parameters
    ----------
    image : Image
        In patient coordinates (LPS); extra axes stay last.
    code : str
        Target orientation code, index-increase convention (``"LPS"``: i → left, j → posterior, k →
        superior; ``"RAS"`` is what nibabel calls canonical).

    Raises
    ------
    GeometryError
        A pixel-space image (no patient frame), or a 2D image whose plane would have to become
        another one.
    ConfigError
        An invalid code.
    """
    target = _parse_code(code)
    if image.coordinate_system != "LPS":
        raise GeometryError("an image without a patient frame cannot be reoriented",
                            expected="coordinate_system 'LPS'", found=repr(image.coordinate_system))
    current = _parse_code(geo.orientation_code(image.affine))
    world_to_axis = {w: a for a, (w, _) in enumerate(current)}
    perm = [world_to_axis[w] for w, _ in target]
    flips = [current[perm[o]][1] != target[o][1] for o in range(3)]
    nd = image.spatial_ndim
    if nd == 2 and perm[2] != 2:
        raise GeometryError(f"a 2D image in the {image.orientation[:2]} plane cannot be reoriented to {code!r}",
                            expected=f"a code keeping the slice normal ({image.orientation[2]} or its opposite) "
                                     "third", found=repr(code))
    src = image.array
    arr = np.transpose(src, (*perm[:nd], *range(nd, src.ndim)))
    aff = image.affine.copy()
    aff[:, :3] = image.affine[:, perm]
    for o in range(3):
        if flips[o]:
            if o < nd:
                arr = np.flip(arr, axis=o)
                aff[:3, 3] += aff[:3, o] * (arr.shape[o] - 1)
            aff[:3, o] = -aff[:3, o]
    return _with_grid(image, np.ascontiguousarray(arr), Grid(arr.shape[:nd], aff))


# ----------------------------------------------------------------------------------------- crop / pad
def crop_or_pad(image: Image, shape: Sequence[int], *, fill: float = 0) -> Image:
    """Centre-crop or pad ``image`` to the spatial ``shape`` by whole voxels (no interpolation).

    Along each axis independently: ``n`` voxels cut to ``m < n`` keep input voxels ``(n - m) // 2`` onwards;
    padded to ``m > n``, the input starts at output voxel ``(m - n) // 2`` and the rest is ``fill``. The
    affine moves by the same whole voxels, so every kept voxel keeps its world position.

    Raises
    ------
    ConfigError
        A shape with the wrong number of axes, or a ``fill`` the dtype cannot hold.
    """
    grid = Grid.of(image).crop_or_pad(shape)
    src = image.array
    out = np.full(grid.shape + image.shape[image.spatial_ndim:], _fill_value(fill, src.dtype), src.dtype)
    src_sl, dst_sl = [], []
    for start, n, m in zip(_crop_starts(image.spatial_shape, grid.shape), image.spatial_shape, grid.shape):
        if start >= 0:
            src_sl.append(slice(start, start + m))
            dst_sl.append(slice(0, m))
        else:
            src_sl.append(slice(0, n))
            dst_sl.append(slice(-start, -start + n))
    out[tuple(dst_sl)] = src[tuple(src_sl)]
    return _with_grid(image, out, grid)

"""The one image class of Sobre."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sobre.errors import GeometryError
from sobre.image import _geometry as geo

EXTRA_AXES = ("channel", "time", "frame")
COORDINATE_SYSTEMS = ("LPS", "pixel")


class Image:
    """An image or volume: pixel array (loaded lazily), 4×4 affine in LPS, modality and metadata.

    Parameters
    ----------
    array : numpy.ndarray, optional
        Pixel data indexed ``[i, j(, k)(, extra)]``. For DICOM, ``i`` runs along a row
        (column index), ``j`` down the columns (row index) and ``k`` across slices — the
        layout of nibabel and of dcm2niix's NIfTI files.
    affine : array_like (4, 4), optional
        Maps voxel indices ``(i, j, k, 1)`` to patient coordinates in mm, **LPS**.
        Identity when omitted. 2D images still carry a 4×4 affine (the k column is the
        slice normal scaled by the slice thickness, or a unit vector).
    loader : callable, optional
        Returns the array on first access; use with ``shape`` and ``dtype`` for lazy images.
    spatial_ndim : int, optional
        2 or 3. Defaults to ``min(ndim, 3)`` without an extra axis, ``ndim - 1`` with one.
    extra_axes : str or sequence of {"channel", "time", "frame"}, optional
        Meaning of the axes after the spatial ones (RGB channels, a 4D time series,
        frames of a cine loop); e.g. ``("frame", "channel")`` for a colour cine loop.
    modality : str, optional
        DICOM modality code (``"CT"``, ``"MR"``, ``"US"``, ``"OT"``, ``"SM"`` ...).
    metadata : dict, optional
        JSON-able facts from the header (patient age/sex, scanner, protocol, ...).
    sources : sequence of str
        Files the image was read from.
    coordinate_system : {"LPS", "pixel"}
        ``"pixel"`` for images with no patient frame (photographs, microscopy without
        calibration): the affine then maps to pixel or micrometre units, not to a patient.

    Examples
    --------
    >>> img = Image(np.zeros((4, 5, 6), np.int16), np.diag([0.5, 0.5, 2.0, 1.0]), modality="CT")
    >>> img
    Image(shape=(4, 5, 6), spacing=(0.5, 0.5, 2), orientation=LPS, dtype=int16, modality=CT, loaded)
    >>> float(img.affine_ras[0, 0])
    -0.5
    """

    def __init__(
        self,
        array: np.ndarray | None = None,
        affine: Any = None,
        *,
        loader: Callable[[], np.ndarray] | None = None,
        shape: Sequence[int] | None = None,
        dtype: Any = None,
        spatial_ndim: int | None = None,
        extra_axes: str | Sequence[str] | None = None,
        modality: str | None = None,
        metadata: dict | None = None,
        sources: Sequence[str] = (),
        coordinate_system: str = "LPS",
    ) -> None:
        if array is None and loader is None:
            raise ValueError("Image needs an array or a loader")
        if array is not None:
            array = np.asarray(array)
            shape = array.shape
            dtype = array.dtype
        elif shape is None or dtype is None:
            raise ValueError("a lazy Image needs shape and dtype")
        self._array = array
        self._loader = loader
        self._shape = tuple(int(s) for s in shape)
        self._dtype = np.dtype(dtype)
        if extra_axes is None:
            extra_axes = ()
        elif isinstance(extra_axes, str):
            extra_axes = (extra_axes,)
        extra_axes = tuple(extra_axes)
        for ax in extra_axes:
            if ax not in EXTRA_AXES:
                raise ValueError(f"extra axes must be among {EXTRA_AXES}, not {ax!r}")
        if coordinate_system not in COORDINATE_SYSTEMS:
            raise ValueError(f"coordinate_system must be one of {COORDINATE_SYSTEMS}")
        ndim = len(self._shape)
        if spatial_ndim is None:
            spatial_ndim = ndim - len(extra_axes) if extra_axes else min(ndim, 3)
        if spatial_ndim not in (2, 3) or spatial_ndim + len(extra_axes) != ndim:
            raise ValueError(
                f"shape {self._shape} does not fit spatial_ndim={spatial_ndim}, extra_axes={extra_axes}"
            )
        self.spatial_ndim = spatial_ndim
        self.extra_axes: tuple[str, ...] = extra_axes
        aff = np.eye(4) if affine is None else np.array(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError(f"affine must be 4×4, got {aff.shape}")
        if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise GeometryError("affine is singular or not finite", found=str(aff.tolist()))
        self._affine = aff
        self._affine.setflags(write=False)
        self.modality = modality
        self.metadata: dict = dict(metadata or {})
        self.sources: list[str] = [str(s) for s in sources]
        self.coordinate_system = coordinate_system

    # --- construction -------------------------------------------------
    @classmethod
    def from_ras(cls, array: np.ndarray, affine_ras: Any, **kwargs) -> Image:
        """Build an Image from an array and a voxel→RAS affine (NIfTI convention)."""
        return cls(array, geo.ras_to_lps(np.asarray(affine_ras, float)), **kwargs)

    def with_array(self, array: np.ndarray, **changes) -> Image:
        """A new Image with the same geometry and metadata and another array of the same spatial shape."""
        array = np.asarray(array)
        if array.shape[: self.spatial_ndim] != self.spatial_shape:
            raise GeometryError(
                "new array does not match the image grid",
                expected=str(self.spatial_shape), found=str(array.shape[: self.spatial_ndim]),
            )
        kw = dict(
            affine=self._affine, spatial_ndim=self.spatial_ndim,
            extra_axes=self.extra_axes[: array.ndim - self.spatial_ndim],
            modality=self.modality, metadata=dict(self.metadata), sources=list(self.sources),
            coordinate_system=self.coordinate_system,
        )
        kw.update(changes)
        return Image(array, **kw)

    # --- data ---------------------------------------------------------
    @property
    def array(self) -> np.ndarray:
        """The pixel array; read from disk on first access and kept."""
        if self._array is None:
            arr = np.asarray(self._loader())
            if arr.shape != self._shape or arr.dtype != self._dtype:
                raise GeometryError(
                    "pixel data does not match the header",
                    path=self.sources[0] if self.sources else None,
                    expected=f"{self._shape} {self._dtype}", found=f"{arr.shape} {arr.dtype}",
                )
            self._array = arr
        return self._array

    @property
    def is_loaded(self) -> bool:
        return self._array is not None

    def unload(self) -> None:
        """Drop the cached array (lazy images only), freeing memory."""
        if self._loader is not None:
            self._array = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self._shape[: self.spatial_ndim]

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self._shape)) * self._dtype.itemsize

    # --- geometry -----------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4×4 float64 voxel→LPS affine (read-only)."""
        return self._affine

    @property
    def affine_ras(self) -> np.ndarray:
        """4×4 voxel→RAS affine, as NIfTI stores it."""
        return geo.lps_to_ras(self._affine)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial axis."""
        return geo.spacing(self._affine)[: self.spatial_ndim]

    @property
    def direction(self) -> np.ndarray:
        return geo.direction(self._affine)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World (LPS) position of the centre of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self._affine[:3, 3])

    @property
    def orientation(self) -> str:
        """Orientation code, e.g. ``"LPS"``; ``"???"`` for pixel-space images."""
        if self.coordinate_system != "LPS":
            return "???"
        return geo.orientation_code(self._affine)[: max(self.spatial_ndim, 3)]

    @property
    def is_oblique(self) -> bool:
        return geo.is_oblique(self._affine)

    def voxel_to_world(self, ijk: Any) -> np.ndarray:
        """Map voxel indices, shape (..., 3), to LPS coordinates in mm."""
        ijk = np.asarray(ijk, float)
        return ijk @ self._affine[:3, :3].T + self._affine[:3, 3]

    def world_to_voxel(self, xyz: Any) -> np.ndarray:
        """Map LPS coordinates, shape (..., 3), to (fractional) voxel indices."""
        inv = np.linalg.inv(self._affine)
        xyz = np.asarray(xyz, float)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    # --- description --------------------------------------------------
    def summary(self) -> dict:
        """JSON-able description: shape, spacing, affine (LPS and RAS), orientation, modality, metadata."""
        return {
            "shape": list(self._shape),
            "dtype": str(self._dtype),
            "spatial_ndim": self.spatial_ndim,
            "extra_axes": list(self.extra_axes),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "origin": [round(float(v), 6) for v in self.origin],
            "orientation": self.orientation,
            "coordinate_system": self.coordinate_system,
            "affine_lps": [[float(v) for v in row] for row in self._affine],
            "affine_ras": [[float(v) for v in row] for row in self.affine_ras],
            "oblique": self.is_oblique,
            "modality": self.modality,
            "metadata": self.metadata,
            "sources": len(self.sources),
        }

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        parts = [
            f"shape={self._shape}",
            f"spacing=({sp})",
            f"orientation={self.orientation}",
            f"dtype={self._dtype}",
        ]
        if self.extra_axes:
            parts.append(f"extra_axes={','.join(self.extra_axes)}")
        if self.modality:
            parts.append(f"modality={self.modality}")
        parts.append("loaded" if self.is_loaded else "lazy")
        return f"Image({', '.join(parts)})"

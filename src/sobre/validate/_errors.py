"""Errors raised by :mod:`sobre.validate` for bad predictions files and masks."""

from __future__ import annotations

from sobre.errors import GeometryError, InputError

__all__ = ["PredictionsError", "SingleClassError", "MaskGeometryError", "MaskReadError"]


class PredictionsError(InputError):
    """A predictions file is missing columns, rows or values, or holds values of the wrong type."""


class SingleClassError(PredictionsError):
    """Only one class is present where two or more are needed (AUC, sensitivity, ... are undefined)."""


class MaskGeometryError(InputError, GeometryError):
    """A predicted mask and its reference mask do not share the same voxel grid."""


class MaskReadError(InputError):
    """A mask file named in a predictions file cannot be found or read."""

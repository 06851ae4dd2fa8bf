"""Affine helpers: LPS/RAS conversion, spacing, direction, orientation codes.

Sobre keeps every affine in DICOM patient coordinates (LPS: +x to the patient's
Left, +y Posterior, +z Superior). NIfTI stores RAS; the conversion is a flip of
the first two world axes and happens only at the file boundary.

Orientation codes follow the nibabel / DICOM convention: the letter names the
direction in which the voxel index *increases*. ``"LPS"`` means i grows toward
Left, j toward Posterior, k toward Superior (ITK would call that ``RAI``).
"""

from __future__ import annotations

import numpy as np

LPS_RAS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a 4×4 voxel→LPS affine into a voxel→RAS affine (and vice versa: the map is its own inverse).

    >>> lps_to_ras(np.eye(4))[:3, :3].diagonal().tolist()
    [-1.0, -1.0, 1.0]
    """
    return LPS_RAS_FLIP @ np.asarray(affine, dtype=np.float64)


ras_to_lps = lps_to_ras


def spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along i, j, k (norms of the affine's first three columns), in mm."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def direction(affine: np.ndarray) -> np.ndarray:
    """3×3 matrix whose columns are the unit world directions of the i, j, k axes."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    return a / norms


def orientation_code(affine: np.ndarray, coordinate_system: str = "LPS") -> str:
    """Three-letter code naming where each voxel axis points (index-increase convention).

    >>> orientation_code(np.diag([1., 1., 1., 1.]))
    'LPS'
    >>> orientation_code(np.diag([-1., 1., 1., 1.]))
    'RPS'
    """
    if coordinate_system not in ("LPS", "RAS"):
        return "???"
    d = direction(affine)
    pos = ("L", "P", "S") if coordinate_system == "LPS" else ("R", "A", "S")
    neg = ("R", "A", "I") if coordinate_system == "LPS" else ("L", "P", "I")
    code = []
    used: set[int] = set()
    # assign each voxel axis to its dominant world axis, largest components first
    order = np.argsort(-np.abs(d).max(axis=0))
    assign = {}
    for ax in order:
        comps = np.abs(d[:, ax]).copy()
        for u in used:
            comps[u] = -1
        w = int(np.argmax(comps))
        used.add(w)
        assign[ax] = (w, d[w, ax] >= 0)
    for ax in range(3):
        w, positive = assign[ax]
        code.append(pos[w] if positive else neg[w])
    return "".join(code)


def is_oblique(affine: np.ndarray, tol: float = 1e-4) -> bool:
    """True when a voxel axis is not aligned with a world axis."""
    d = np.abs(direction(affine))
    return bool(np.any((d > tol) & (d < 1 - tol)))


def make_affine(direction3: np.ndarray, spacing3, origin) -> np.ndarray:
    """Build a 4×4 affine from a 3×3 direction matrix (unit columns), spacing and origin."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction3, float) * np.asarray(spacing3, float)[None, :]
    a[:3, 3] = np.asarray(origin, float)
    return a

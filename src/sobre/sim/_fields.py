"""Smooth fields on a coarse grid: Poisson velocities, their exponential, separable upsampling.

Deformations are computed on a coarse *field grid* (default every 4 template voxels, i.e. 4 mm) laid
over the template's voxel grid, and carried to output grids by trilinear interpolation: separable
(one axis at a time) where the points form a tensor grid, gathered otherwise. The map applied to an
image is exactly that interpolation, so the fields saved on the coarse grid reproduce the label maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FieldGrid:
    """Coarse grid over a template: node ``n`` along an axis sits on template voxel ``step * n - margin``.

    Attributes
    ----------
    shape : tuple of int
        Number of nodes along each template axis.
    step : int
        Template voxels between nodes.
    margin : int
        Template voxels before the first template voxel (so the grid covers a little more than the
        template).
    template_affine : ndarray (4, 4)
        Template voxel -> LPS; must be axis-aligned (a scaled permutation matrix, no obliquity).
    """

    shape: tuple[int, int, int]
    step: int
    margin: int
    template_affine: np.ndarray

    @classmethod
    def over(cls, template_shape, template_affine, step: int = 4, margin_nodes: int = 2) -> FieldGrid:
        margin = step * margin_nodes
        shape = tuple(int((n + 2 * margin - 1) // step + 1) for n in template_shape)
        return cls(shape=shape, step=int(step), margin=int(margin), template_affine=np.asarray(template_affine))

    @property
    def affine(self) -> np.ndarray:
        """Node index -> LPS."""
        m = np.eye(4)
        m[:3, :3] = np.eye(3) * self.step
        m[:3, 3] = -self.margin
        return self.template_affine @ m

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def node_coords(self) -> np.ndarray:
        """Template voxel coordinates of every node, shape (3, *shape), float32."""
        axes = [np.arange(n, dtype=np.float32) * self.step - self.margin for n in self.shape]
        return np.stack(np.meshgrid(*axes, indexing="ij"))

    def to_nodes(self, template_vox: np.ndarray) -> np.ndarray:
        """Template voxel coordinates (3, ...) -> fractional node indices."""
        return (template_vox + self.margin) / self.step


# --------------------------------------------------------------------------- hat fractions
def hat_fractions(labels: np.ndarray, grid: FieldGrid, n_labels: int):
    """Sparse matrix (nodes x labels): template voxels of each label near each node, hat-weighted.

    Each template voxel spreads its unit volume over the 8 surrounding nodes with trilinear weights,
    so column sums are the label volumes in voxels and ``F @ x`` is the trilinear "restriction" of a
    label-wise quantity to the nodes.
    """
    from scipy import sparse

    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx].astype(np.int64)
    ijk = np.unravel_index(idx, labels.shape)
    base, frac = [], []
    for a in range(3):
        c = (ijk[a] + grid.margin) / grid.step
        b = np.floor(c).astype(np.int64)
        base.append(b)
        frac.append(c - b)
    acc = np.zeros(grid.size * n_labels)
    for dx in (0, 1):
        wx = frac[0] if dx else 1 - frac[0]
        for dy in (0, 1):
            wxy = wx * (frac[1] if dy else 1 - frac[1])
            for dz in (0, 1):
                w = wxy * (frac[2] if dz else 1 - frac[2])
                node = np.ravel_multi_index((base[0] + dx, base[1] + dy, base[2] + dz), grid.shape)
                acc += np.bincount(node * n_labels + lab, weights=w, minlength=acc.size)
    return sparse.csr_matrix(acc.reshape(grid.size, n_labels))


# --------------------------------------------------------------------------- Poisson
class Poisson:
    """Solve ``div v = s`` with ``v = grad psi`` spectrally, on a field grid zero-padded by >= ``pad`` nodes.

    Sources and velocities are per template voxel: the returned velocity is in template voxels along
    the template axes, and its divergence (in those units) is the source.
    """

    def __init__(self, grid: FieldGrid, pad: int = 6) -> None:
        from scipy import fft as sfft

        self.grid = grid
        self.shape = tuple(int(sfft.next_fast_len(n + 2 * pad, real=True)) for n in grid.shape)
        self.offset = tuple((p - n) // 2 for p, n in zip(self.shape, grid.shape))
        h = float(grid.step)
        k = [2 * np.pi * np.fft.fftfreq(n, d=h) for n in self.shape[:2]]
        k.append(2 * np.pi * np.fft.rfftfreq(self.shape[2], d=h))
        kk = np.meshgrid(*k, indexing="ij", sparse=True)
        k2 = kk[0] ** 2 + kk[1] ** 2 + kk[2] ** 2
        k2[0, 0, 0] = 1.0
        self._mult = [(-1j * ka / k2).astype(np.complex64) for ka in kk]

    def velocity(self, source: np.ndarray) -> np.ndarray:
        """Velocity (3, *grid.shape) float32 whose divergence is ``source`` (mean removed)."""
        from scipy import fft as sfft

        o = self.offset
        inner = tuple(slice(o[a], o[a] + self.grid.shape[a]) for a in range(3))
        padded = np.zeros(self.shape, np.float32)
        padded[inner] = source
        padded -= padded.mean()
        spec = sfft.rfftn(padded)
        out = np.empty((3,) + self.grid.shape, np.float32)
        for a in range(3):
            out[a] = sfft.irfftn(spec * self._mult[a], s=self.shape)[inner]
        return out


# --------------------------------------------------------------------------- interpolation
def trilinear(fields: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``fields`` (C, X, Y, Z) at ``coords`` (3, ...), clamped at the edges.

    Faster than ``scipy.ndimage.map_coordinates`` for small grids sampled many times (the weights
    are shared by the C channels). Returns (C, ...) float32.
    """
    n_ch = fields.shape[0]
    shp = fields.shape[1:]
    flat = np.ascontiguousarray(fields, dtype=np.float32).reshape(n_ch, -1)
    sy, sz = shp[1] * shp[2], shp[2]
    i0, fr = [], []
    for a in range(3):
        c = np.clip(np.asarray(coords[a], np.float32), 0.0, np.float32(shp[a] - 1))
        i = np.minimum(c.astype(np.int32), shp[a] - 2)
        i0.append(i.ravel())
        fr.append((c - i).astype(np.float32).ravel())
    base = i0[0] * sy + i0[1] * sz + i0[2]
    out = np.zeros((n_ch, base.size), np.float32)
    for dx in (0, 1):
        wx = fr[0] if dx else 1 - fr[0]
        for dy in (0, 1):
            wxy = wx * (fr[1] if dy else 1 - fr[1])
            for dz in (0, 1):
                w = wxy * (fr[2] if dz else 1 - fr[2])
                idx = base + (dx * sy + dy * sz + dz)
                for ch in range(n_ch):
                    out[ch] += w * flat[ch].take(idx)
    return out.reshape((n_ch,) + tuple(np.shape(coords)[1:]))


def nearest(volume: np.ndarray, coords: np.ndarray, fill=0) -> np.ndarray:
    """Nearest-neighbour lookup of ``volume`` at ``coords`` (3, ...); ``fill`` outside [-0.5, n - 0.5)."""
    shp = volume.shape
    idx = None
    inside = None
    for a in range(3):
        i = np.floor(np.asarray(coords[a], np.float32) + np.float32(0.5)).astype(np.int32)
        ok = (i >= 0) & (i < shp[a])
        np.clip(i, 0, shp[a] - 1, out=i)
        idx = i if idx is None else idx * shp[a] + i
        inside = ok if inside is None else inside & ok
    out = volume.ravel().take(idx)
    out[~inside] = fill
    return out


def partial_volume_counts(labels: np.ndarray, coords: np.ndarray, n_labels: int) -> np.ndarray:
    """Sum over ``coords`` (3, ...) of each label's trilinear partial-volume weight.

    Each point contributes its 8 trilinear weights to the labels of the 8 surrounding voxels (points
    outside contribute to label 0). Unlike nearest-neighbour counting this is a smooth function of
    the coordinates, so small deformations change it smoothly (used for calibration).
    """
    shp = labels.shape
    flat = labels.ravel()
    sy, sz = shp[1] * shp[2], shp[2]
    i0, fr, ok = [], [], None
    for a in range(3):
        c = np.asarray(coords[a], np.float32).ravel()
        inside = (c >= 0) & (c <= shp[a] - 1)
        ok = inside if ok is None else ok & inside
        c = np.clip(c, 0.0, np.float32(shp[a] - 1))
        i = np.minimum(c.astype(np.int32), shp[a] - 2)
        i0.append(i)
        fr.append(c - i)
    base = i0[0] * sy + i0[1] * sz + i0[2]
    total = np.zeros(n_labels)
    okf = ok.astype(np.float32)
    for dx in (0, 1):
        wx = (fr[0] if dx else 1 - fr[0]) * okf
        for dy in (0, 1):
            wxy = wx * (fr[1] if dy else 1 - fr[1])
            for dz in (0, 1):
                w = wxy * (fr[2] if dz else 1 - fr[2])
                total += np.bincount(flat.take(base + (dx * sy + dy * sz + dz)), weights=w, minlength=n_labels)
    total[0] += float((~ok).sum())
    return total


# --------------------------------------------------------------------------- exponential
def exp_velocity(v: np.ndarray, step: int, max_substep: float = 0.5) -> np.ndarray:
    """Displacement of the flow of stationary velocity ``v`` at time 1 (scaling and squaring).

    Parameters
    ----------
    v : ndarray (3, nx, ny, nz)
        Velocity in template voxels on a field grid with ``step`` voxels between nodes.

    Returns
    -------
    ndarray like ``v``: displacement in template voxels, a diffeomorphism's.
    """
    vmax = float(np.abs(v).max()) / step
    n = 0
    while vmax / 2 ** n > max_substep and n < 12:
        n += 1
    u = (v / (step * 2 ** n)).astype(np.float32)  # node units
    if n == 0:
        return u * step
    g = np.indices(u.shape[1:], dtype=np.float32)
    for _ in range(n):
        u = u + trilinear(u, g + u)
    return u * step


# --------------------------------------------------------------------------- separable resampling
@dataclass(frozen=True)
class AxisWeights:
    """Linear interpolation along one axis: ``out[i] = (1 - frac[i]) * f[base[i]] + frac[i] * f[base[i] + 1]``."""

    base: np.ndarray   # int64 (n_out,)
    frac: np.ndarray   # float32 (n_out,)
    n_in: int

    @property
    def n_out(self) -> int:
        return len(self.base)


def linear_weights(coords: np.ndarray, n: int) -> AxisWeights:
    """Linear interpolation weights for fractional indices ``coords`` into an axis of ``n`` samples.

    Indices outside ``[0, n - 1]`` are clamped (the field is continued by its edge value).
    """
    c = np.clip(np.asarray(coords, np.float64), 0.0, n - 1.0)
    b = np.minimum(np.floor(c).astype(np.int64), n - 2)
    return AxisWeights(base=b, frac=(c - b).astype(np.float32), n_in=int(n))


def _lerp_axis(f: np.ndarray, w: AxisWeights, axis: int) -> np.ndarray:
    shape = [1] * f.ndim
    shape[axis] = w.n_out
    frac = w.frac.reshape(shape)
    lo = np.take(f, w.base, axis=axis)
    hi = np.take(f, w.base + 1, axis=axis)
    hi -= lo
    hi *= frac
    lo += hi
    return lo


def separable_upsample(field: np.ndarray, weights: list[AxisWeights], order: tuple[int, int, int]) -> np.ndarray:
    """Trilinear interpolation of ``field`` (C, nx, ny, nz) onto a grid whose axis ``a`` runs along field axis ``order[a]``.

    ``weights[a]`` interpolates field axis ``order[a]``. Returns (C, n0, n1, n2) float32; the result is
    exactly the trilinear interpolant (what ``map_coordinates(order=1)`` would give), computed one axis
    at a time, cheapest axis first.
    """
    f = np.asarray(field, np.float32)
    out_axis = {order[a]: a for a in range(3)}
    # interpolate along each field axis (in the order that keeps intermediates smallest), then transpose
    for t in sorted(range(3), key=lambda t: weights[out_axis[t]].n_out / max(f.shape[1 + t], 1)):
        f = _lerp_axis(f, weights[out_axis[t]], 1 + t)
    f = np.transpose(f, (0,) + tuple(1 + order[a] for a in range(3)))
    return np.ascontiguousarray(f)


# --------------------------------------------------------------------------- random fields
def smooth_noise(rng: np.random.Generator, shape, sigma_nodes: float, n: int = 3) -> np.ndarray:
    """``n`` independent smooth Gaussian random fields with unit RMS (float32, periodic, made by FFT)."""
    from scipy import fft as sfft

    shape = tuple(int(s) for s in shape)
    k = [np.fft.fftfreq(s) for s in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    kk = np.meshgrid(*k, indexing="ij", sparse=True)
    transfer = np.exp(-2.0 * (np.pi * sigma_nodes) ** 2 * (kk[0] ** 2 + kk[1] ** 2 + kk[2] ** 2)).astype(np.float32)
    out = np.empty((n,) + shape, np.float32)
    for a in range(n):
        w = rng.standard_normal(shape, dtype=np.float32)
        s = sfft.irfftn(sfft.rfftn(w) * transfer, s=shape).astype(np.float32)
        out[a] = s / max(float(np.sqrt(np.mean(s * s))), 1e-12)
    return out


def low_frequency_field(rng: np.random.Generator, shape, max_cycles: float = 1.5, terms: int = 8) -> np.ndarray:
    """A smooth field with unit RMS made of a few random separable cosines (bias fields).

    Cheap (outer products of 1-D vectors) and very smooth: the slowest variations of an MR bias
    field span the field of view with one or two cycles.
    """
    total = np.zeros(tuple(shape), np.float32)
    axes = [np.linspace(0.0, 1.0, n, dtype=np.float32) for n in shape]
    for _ in range(terms):
        parts = []
        for x in axes:
            f = rng.uniform(0.0, max_cycles)
            ph = rng.uniform(0, 2 * np.pi)
            parts.append(np.cos(2 * np.pi * f * x + ph).astype(np.float32))
        total += rng.standard_normal() * (parts[0][:, None, None] * parts[1][None, :, None] * parts[2][None, None, :])
    rms = float(np.sqrt(np.mean(total * total)))
    return total / max(rms, 1e-12)

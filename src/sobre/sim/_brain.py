"""Simulated brain MRI cohorts on real anatomy (Colin27 + AAL) with known ground truth.

How a subject is made
---------------------
1. **Regional volume targets.** Each region ``r`` of the simulation atlas gets a target log-volume
   change: age (``beta_g * (age - reference_age) / 10``), the subject's own offset per region group,
   and, for patients, the disease pattern times the patient's strength. The CSF compartment takes
   the volume the tissue loses, so the intracranial volume stays constant.
2. **A deformation that realises them.** A velocity field whose divergence is concentrated in each
   region (a Poisson problem solved by FFT on a 4 mm grid) is integrated by scaling and squaring;
   its per-region strengths come from a linear model of region overlap, corrected once per
   configuration by *calibration*: the target pattern is applied to the template and the realised
   volumes measured until they match (fixed-point iterations, a few seconds, cached on disk).
3. **Anatomical variability and size.** A smooth random displacement (inter-subject anatomy), a
   global scaling (sex, head size) and optionally a rigid pose are composed with it.
4. **Sampling.** The map (subject voxel -> template position) is interpolated from the coarse grid to
   the site's voxels; the T1 (smoothed for the site's voxel size) and the atlas are sampled there.
5. **Site effects** on the intensities: GM/WM contrast change with age, gamma, bias field, scale,
   offset, Rician noise, 16-bit quantisation.

Ground truth: the label map (atlas warped by the subject's deformation), regional volumes measured
on it, the deformation itself, the targets and latent variables, and for patients the map of the
disease effect.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from sobre.base import Progress, no_progress
from sobre.errors import ConfigError
from sobre.image import Image
from sobre.sim import _fields as fl
from sobre.sim._atlas import (
    CSF, N_LABELS, REGION_GROUPS, VENTRICLES, WHITE_MATTER, BrainTemplate, load_brain_template,
)
from sobre.sim._cache import load_npz, sim_cache_dir, store_npz
from sobre.sim._config import (
    AgeModel, BrainCohortConfig, DiseaseModel, SiteConfig, config_digest, resolve_sites,
)

CALIBRATION_VERSION = 13
CALIBRATION_ITERATIONS = 5
GREY_LEVEL = 0.77   # Colin27 grey matter relative to white matter
AGE_PROBES = (-2.5, -1.25, 0.0, 1.25, 2.5, 3.75, 5.0)   # decades from the reference age
DISEASE_PROBES = (1.0, 2.0)                    # multiples of the configured strength
DISEASE_DECADES = (-2.5, 0.0, 2.5, 5.0)
SUBJECT, SITE = 1, 2                                # RNG domains

log = logging.getLogger(__name__)


class SimulatedBrain(NamedTuple):
    """One simulated subject: ``image, metadata, truth = subject``."""

    image: Image
    metadata: dict
    truth: BrainTruth


@dataclass
class BrainTruth:
    """Ground truth of one simulated subject.

    Attributes
    ----------
    labels : Image
        Simulation atlas warped onto the image grid (uint8; names in ``region_names``).
    volumes : dict
        Volume in mm^3 of every region (voxel count of ``labels`` x voxel volume), plus ``ICV`` and
        ``Brain`` (grey + white matter) totals.
    deformation : tuple of two Images
        ``(anatomy, effects)``: displacements (3 channels, LPS mm) on the coarse field grid, in the
        template frame. With ``latent["pre_affine"]`` (4x4, LPS -> LPS: head pose and size undone)
        they are the whole backward map: the voxel at LPS ``x`` was sampled from the template at
        ``y = q + effects(q)``, ``q = p + anatomy(p)``, ``p = pre_affine @ x``, each displacement
        interpolated trilinearly. :func:`warp_labels` applies it.
    targets : dict
        Target log-volume change per region group: ``age``, ``individual``, ``disease`` and ``total``.
    latent : dict
        Every other hidden variable: head scale, pose, disease strength multiplier.
    disease_map : Image or None
        Patients only: per voxel, the disease's target log-volume change of its region (0 elsewhere).
    baseline_volumes : dict or None
        With ``paired_truth``: volumes of the same anatomy without age, individual and disease effects.
    subtype : str or None
        Patients of a disease with subtypes: the subtype's name.
    clinical : dict or None
        With ``config.clinical``: the complete clinical values (``nfl``, ``sodium``, ``bmi``), whether
        each was withheld (``missing``) and with what probability (``missing_probability``).
    template_map : Image or None
        With ``config.template_maps``: log-Jacobian of the subject's non-linear map in Colin27 template
        space (field grid, 4 mm): log(subject volume / template volume), head size excluded.
    """

    labels: Image
    volumes: dict
    deformation: tuple[Image, Image]
    targets: dict
    latent: dict
    disease_map: Image | None = None
    baseline_volumes: dict | None = None
    subtype: str | None = None
    clinical: dict | None = None
    template_map: Image | None = None


# --------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class OutputGrid:
    shape: tuple[int, int, int]
    affine: np.ndarray  # LPS

    def same_as(self, other: OutputGrid) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine)


_DIRECTIONS = {
    "axial": np.eye(3),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),   # columns: i->L, j->I, k->P
    "sagittal": np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]]),  # columns: i->P, j->I, k->R
}


def output_grid(template: BrainTemplate, voxel_size: Sequence[float], orientation: str = "axial") -> OutputGrid:
    """Grid covering the template's field of view with ``voxel_size`` = (in-plane, in-plane, slice)."""
    d = _DIRECTIONS[orientation]
    corners = np.array([[i, j, k] for i in (0, template.shape[0] - 1) for j in (0, template.shape[1] - 1)
                        for k in (0, template.shape[2] - 1)], float)
    world = corners @ template.affine[:3, :3].T + template.affine[:3, 3]
    lo, hi = world.min(0), world.max(0)
    centre = (lo + hi) / 2
    extent = hi - lo
    spacing = np.asarray(voxel_size, float)
    shape = []
    for a in range(3):
        w = int(np.argmax(np.abs(d[:, a])))
        shape.append(int(math.floor(extent[w] / spacing[a] + 1e-6)) + 1)
    affine = np.eye(4)
    affine[:3, :3] = d * spacing[None, :]
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return OutputGrid(tuple(shape), affine)


def _axis_weights(grid: OutputGrid, fg: fl.FieldGrid) -> tuple[list[np.ndarray], tuple[int, int, int]]:
    """Separable trilinear weights from field nodes to the voxels of ``grid`` (axis-aligned)."""
    ta = fg.template_affine
    weights, order = [], []
    for a in range(3):
        col = grid.affine[:3, a]
        w = int(np.argmax(np.abs(col)))
        t = int(np.argmax(np.abs(ta[w, :3])))
        if abs(ta[w, t]) < 1e-9 or np.sum(np.abs(col) > 1e-9) != 1:
            raise ConfigError("output grids must be aligned with the template axes")
        idx = np.arange(grid.shape[a], dtype=np.float64)
        world = grid.affine[w, 3] + col[w] * idx
        vox = (world - ta[w, 3]) / ta[w, t]
        weights.append(fl.linear_weights(fg.to_nodes(vox), fg.shape[t]))
        order.append(t)
    if sorted(order) != [0, 1, 2]:
        raise ConfigError("output grid axes do not map one-to-one onto the template axes")
    return weights, tuple(order)


# --------------------------------------------------------------------------- the shared core
@dataclass
class _Core:
    template: BrainTemplate
    grid: fl.FieldGrid
    fractions: object          # sparse (nodes, labels)
    poisson: fl.Poisson
    solver: np.ndarray         # (119, 119): target log-changes of labels 1..119 -> source strengths
    volumes: np.ndarray        # (120,) template volumes, mm^3


@functools.lru_cache(maxsize=3)
def _core(template_dir: str | None, step: int, substrate: str = "colin27") -> _Core:
    template = load_brain_template(template_dir, substrate)
    grid = fl.FieldGrid.over(template.shape, template.affine, step=step)
    frac = fl.hat_fractions(template.labels, grid, N_LABELS)
    sub = frac[:, 1:]
    gram = (sub.T @ sub).toarray() / float(step ** 3)
    vol_vox = np.asarray(sub.sum(axis=0)).ravel()
    a = gram / vol_vox[:, None]  # mean divergence over region r per unit source strength of r'
    reg = 1e-4 * float(np.mean(np.diag(a.T @ a)))
    solver = -np.linalg.solve(a.T @ a + reg * np.eye(a.shape[0]), a.T)
    return _Core(template=template, grid=grid, fractions=frac, poisson=fl.Poisson(grid), solver=solver,
                 volumes=np.asarray(template.volumes_mm3, float))


def _velocity(core: _Core, t_in: np.ndarray) -> np.ndarray:
    """Velocity realising (to first order) log-volume changes ``t_in`` (120,) of every label."""
    lam = core.solver @ t_in[1:]
    src = (core.fractions[:, 1:] @ lam) / float(core.grid.step ** 3)
    return core.poisson.velocity(src.reshape(core.grid.shape).astype(np.float32))


def _compensate(core: _Core, t: np.ndarray) -> np.ndarray:
    """Set the CSF target so that the intracranial volume is unchanged (exact volume arithmetic)."""
    t = t.copy()
    v = core.volumes
    change = float(np.sum(v[1:CSF] * np.expm1(t[1:CSF])))
    t[CSF] = math.log(max(1.0 - change / v[CSF], 0.25))
    return t


# --------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Inputs that realise the configured patterns on a typical subject (see module docstring).

    ``age(d)`` interpolates the age inputs between probe decades; ``disease(d, s)`` the extra input a
    patient of strength ``s`` needs at ``d`` decades from the reference age (bilinear, because
    volume changes do not add exactly: enlarged ventricles enlarge less for the same input).
    """

    age_decades: np.ndarray        # (P,) sorted, includes 0
    age_inputs: np.ndarray         # (P, 120)
    disease_decades: np.ndarray    # (D,) sorted (empty without a disease)
    disease_strengths: np.ndarray  # (S,) sorted, includes 0
    disease_inputs: np.ndarray     # (D, S, 120)
    gains: np.ndarray              # (120,) d input / d target near the reference age (starting points)
    group_inverse: np.ndarray      # (G+1, G+1): group targets (groups, then CSF) -> group inputs
    residual: float                # largest |achieved - target| at the probes (log units, regions >= 1 cm^3)

    def age(self, decades: float) -> np.ndarray:
        return _interp_rows(self.age_decades, self.age_inputs, decades)

    def disease(self, decades: float, strength: float) -> np.ndarray:
        if len(self.disease_decades) == 0 or strength == 0:
            return np.zeros(N_LABELS)
        rows = np.stack([_interp_rows(self.disease_strengths, self.disease_inputs[i], strength)
                         for i in range(len(self.disease_decades))])
        return _interp_rows(self.disease_decades, rows, decades)

    def individual(self, group_targets: np.ndarray) -> np.ndarray:
        """Input vector realising per-group log-volume offsets (``GROUP_ORDER`` then CSF), cross-talk corrected."""
        return _group_vector(self.group_inverse @ np.asarray(group_targets, float))

    def arrays(self) -> dict:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}


GROUP_ORDER = tuple(REGION_GROUPS)


def _group_vector(values) -> np.ndarray:
    """Per-label vector from per-group values (``GROUP_ORDER`` then CSF)."""
    out = np.zeros(N_LABELS)
    for g, v in zip(GROUP_ORDER, values):
        out[list(REGION_GROUPS[g])] = v
    out[CSF] = values[len(GROUP_ORDER)]
    return out


def _group_means(core: _Core, per_label: np.ndarray) -> np.ndarray:
    """Volume-weighted mean of a per-label log change over each group (``GROUP_ORDER`` then CSF)."""
    v = core.volumes
    out = [float(np.sum(v[list(ls)] * per_label[list(ls)]) / np.sum(v[list(ls)])) for ls in REGION_GROUPS.values()]
    return np.array(out + [float(per_label[CSF])])


def _interp_rows(x: np.ndarray, rows: np.ndarray, at: float) -> np.ndarray:
    """Piecewise-linear interpolation of ``rows`` over sorted ``x`` (linear extrapolation outside)."""
    i = int(np.clip(np.searchsorted(x, at) - 1, 0, len(x) - 2))
    f = (at - x[i]) / (x[i + 1] - x[i])
    return rows[i] + f * (rows[i + 1] - rows[i])


def subject_affine(core: _Core, scale: float, rot_deg=(0.0, 0.0, 0.0), trans=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 LPS -> LPS map from the scanner to the template frame: undo the head's pose and size.

    ``p = c + R^T (x - c - t) / scale`` with ``c`` the template's brain centre.
    """
    c = core.template.brain_centre
    lin = _rotation(np.deg2rad(np.asarray(rot_deg, float))).T / float(scale)
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = c - lin @ (c + np.asarray(trans, float))
    return out


def sample_coords(core: _Core, pre: np.ndarray, grid: OutputGrid, u_anat: np.ndarray | None,
                  u_eff: np.ndarray | None) -> np.ndarray:
    """Template voxel coordinates (3, *grid.shape) sampled by every voxel of ``grid``.

    The voxel at LPS ``x`` maps to ``p = pre @ x`` (template frame), then ``q = p + u_anat(p)``
    (inter-subject anatomy), then ``y = q + u_eff(q)`` (regional volume effects); both displacements
    are in template voxels on the field grid, interpolated trilinearly. ``u_eff`` is evaluated
    exactly at ``q`` (not composed on the coarse grid, which would blur it), so a region's volume
    change does not depend on where the subject's anatomy puts it.
    """
    fg = core.grid
    m = np.linalg.inv(core.template.affine) @ pre @ grid.affine  # voxel -> template voxel (affine part)
    lin = m[:3, :3]
    nz = np.abs(lin) > 1e-9 * np.abs(lin).max()
    if nz.sum(axis=0).max() == 1 and nz.sum(axis=1).max() == 1:  # no rotation: separable
        coords = np.empty((3,) + grid.shape, np.float32)
        weights, order = [None] * 3, [0] * 3
        for a in range(3):
            t = int(np.argmax(np.abs(lin[:, a])))
            line = (lin[t, a] * np.arange(grid.shape[a]) + m[t, 3]).astype(np.float32)
            shape = [1, 1, 1]
            shape[a] = grid.shape[a]
            coords[t] = line.reshape(shape)
            weights[a] = fl.linear_weights(fg.to_nodes(line), fg.shape[t])
            order[a] = t
        if u_anat is not None:
            coords += fl.separable_upsample(u_anat, weights, tuple(order))
    else:
        q = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
        coords = (lin.astype(np.float32) @ q + m[:3, 3:].astype(np.float32)).reshape((3,) + grid.shape)
        if u_anat is not None:
            coords += fl.trilinear(u_anat, fg.to_nodes(coords))
    if u_eff is not None:
        coords += fl.trilinear(u_eff, fg.to_nodes(coords))
    return coords


def random_displacement(core: _Core, rng: np.random.Generator, anatomy) -> np.ndarray:
    """Smooth random displacement (template voxels): inter-subject anatomy, RMS ``warp_amplitude_mm`` per axis."""
    tmm = float(np.mean(np.linalg.norm(core.template.affine[:3, :3], axis=0)))
    sigma = anatomy.warp_smoothness_mm / (core.grid.step * tmm)
    return fl.smooth_noise(rng, core.grid.shape, sigma) * np.float32(anatomy.warp_amplitude_mm / tmm)


class _Meter:
    """Regional log-volume changes made by an effect field on the template (partial-volume counting, 1.5 mm).

    Because subjects apply the effect field exactly where their anatomy lands in the template frame,
    the template itself is the right place to calibrate. Points are jittered once and reused (common
    random numbers), and each point counts the trilinear partial volumes of its 8 atlas neighbours,
    so the measure is a smooth function of the deformation: small regions calibrate as well as
    large ones.
    """

    def __init__(self, core: _Core, spacing: float = 2.0, perturbations: Sequence[np.ndarray] = ()) -> None:
        self.core = core
        self.perturbations = list(perturbations)
        t = core.template
        axes = [np.arange(0, n - 1 + 1e-6, spacing) for n in t.shape]
        self.weights = [fl.linear_weights(core.grid.to_nodes(ax), core.grid.shape[a]) for a, ax in enumerate(axes)]
        rng = np.random.default_rng(0x5EED)
        pts = np.meshgrid(*[ax.astype(np.float32) for ax in axes], indexing="ij")
        self.points = np.stack([p + (rng.random(p.shape, dtype=np.float32) - 0.5) * np.float32(spacing)
                                for p in pts])
        self.cell = spacing ** 3
        self.reference = self._count(None)

    def _count(self, u: np.ndarray | None) -> np.ndarray:
        coords = self.points if u is None else self.points + fl.separable_upsample(u, self.weights, (0, 1, 2))
        return fl.partial_volume_counts(self.core.template.labels, coords, N_LABELS) * self.cell

    def _one(self, t_in: np.ndarray) -> np.ndarray:
        vol = self._count(fl.exp_velocity(_velocity(self.core, t_in), self.core.grid.step))
        out = np.zeros(N_LABELS)
        ok = (self.reference > 0) & (vol > 0)
        out[ok] = np.log(vol[ok] / self.reference[ok])
        return out

    def log_change(self, t_in: np.ndarray, paired: bool = False) -> np.ndarray:
        """Log-volume changes; with ``paired``, the mean over the symmetric ``perturbations``."""
        if not paired or not self.perturbations:
            return self._one(t_in)
        return np.mean([self._one(t_in + p) for p in self.perturbations], axis=0)


def _fixed_point(meter: _Meter, target: np.ndarray, iterations: int = 5, start: np.ndarray | None = None,
                 paired_steps: int = 0) -> tuple[np.ndarray, float]:
    """Inputs whose measured log-volume changes match ``target`` (secant-corrected fixed point).

    The last ``paired_steps`` measurements average over the meter's perturbation pair (mean over
    individual ventricle sizes). Returns the inputs and the largest remaining error over regions of
    at least 1 cm^3 (smaller ones, a few vermis lobules, are below what the field grid can shape).
    """
    t_in = target.copy() if start is None else start.copy()
    big = meter.reference >= 1000.0
    big[0] = False
    slope = np.ones(N_LABELS)
    prev_in = prev_ach = None
    err = np.inf
    for it in range(iterations):
        paired = it >= iterations - paired_steps
        ach = meter.log_change(t_in, paired=paired)
        if prev_in is not None and not paired:
            d_in, d_ach = t_in - prev_in, ach - prev_ach
            ok = np.abs(d_in) > 0.01
            slope[ok] = np.clip(d_ach[ok] / d_in[ok], 0.4, 1.6)
        diff = target - ach
        diff[0] = 0.0
        err = float(np.max(np.abs(diff[big])))
        prev_in, prev_ach = t_in, ach
        if it < iterations - 1 or paired:
            t_in = t_in + diff / slope
    return t_in, err


def age_targets(core: _Core, age: AgeModel, decades: float) -> np.ndarray:
    t = np.zeros(N_LABELS)
    for g, labels in REGION_GROUPS.items():
        t[list(labels)] = age.beta(g) * decades
    return _compensate(core, t)


def disease_pattern(template: BrainTemplate, disease: DiseaseModel | None) -> np.ndarray:
    """Log-volume change per label at strength 1 (CSF not included)."""
    p = np.zeros(N_LABELS)
    if disease is None:
        return p
    for spec, pct in disease.effects.items():
        if pct <= -100:
            raise ConfigError(f"disease effect on {spec!r} must be above -100 %", found=str(pct))
        for lab in template.resolve_regions(spec):
            if lab == CSF:
                raise ConfigError("the CSF compartment absorbs volume changes; it cannot carry a disease effect")
            p[lab] += math.log1p(pct / 100.0)
    return p


def calibrate(core: _Core, age: AgeModel, disease: DiseaseModel | None, *, ventricle_sd: float = 0.0,
              cache_dir: str | Path | bool | None = None, progress: Progress = no_progress) -> Calibration:
    """Calibrate the inputs that realise the age (and disease) patterns.

    Two parts, each cached on disk by content (``cache_dir``; default ``~/.cache/sobre/sim``; False:
    no cache): the age part (shared by every configuration with the same age model) and the disease
    part. Calibration is deterministic, so a cached result equals a fresh one. When something must be
    computed (not cached), ``progress("calibrating", done, 2)`` reports the age and disease parts.
    """
    folder = None if cache_dir is False else (Path(cache_dir) if cache_dir else _default_cache_dir())
    base_key = {"v": CALIBRATION_VERSION, "template": core.template.digest, "step": core.grid.step,
                "ref": age.reference_age, "rates": age.rates, "ventricle_sd": round(float(ventricle_sd), 6)}
    meter = None

    def get_meter() -> _Meter:
        nonlocal meter
        if meter is None:
            log.info("calibrating the brain deformation model (once per configuration; cached)")
            progress("calibrating", 0, 2)
            meter = _Meter(core)
        return meter

    path = None if folder is None else folder / f"brain-age-{config_digest(base_key)}.npz"
    age_part = _load_npz(path)
    if age_part is None:
        age_part = _calibrate_age(core, age, ventricle_sd, get_meter())
        _store_npz(path, age_part)
        progress("calibrating", 1, 2)
    n_lab = N_LABELS
    dis_part = {"disease_decades": np.zeros(0), "disease_strengths": np.zeros(0),
                "disease_inputs": np.zeros((0, 0, n_lab)), "disease_residual": np.float64(0.0)}
    if disease is not None and disease.strength != 0:
        key = dict(base_key, disease={"effects": disease.effects, "strength": disease.strength})
        path = None if folder is None else folder / f"brain-disease-{config_digest(key)}.npz"
        loaded = _load_npz(path)
        if loaded is None:
            m = get_meter()
            m.perturbations = _ventricle_pair(core, age_part["group_inverse"], ventricle_sd)
            loaded = _calibrate_disease(core, age, disease, age_part, m)
            _store_npz(path, loaded)
        dis_part = loaded
    if meter is not None:
        progress("calibrating", 2, 2)
    return Calibration(
        age_decades=age_part["age_decades"], age_inputs=age_part["age_inputs"],
        disease_decades=dis_part["disease_decades"], disease_strengths=dis_part["disease_strengths"],
        disease_inputs=dis_part["disease_inputs"], gains=age_part["gains"], group_inverse=age_part["group_inverse"],
        residual=float(max(age_part["age_residual"], dis_part["disease_residual"])),
    )


def _ventricle_pair(core: _Core, group_inverse: np.ndarray, sd: float) -> list[np.ndarray]:
    """Inputs of a +-1 SD individual ventricle offset (with its CSF compensation)."""
    if sd <= 0:
        return []
    z = np.zeros(len(GROUP_ORDER) + 1)
    z[GROUP_ORDER.index("ventricles")] = sd
    z[-1] = _compensate(core, _group_vector(z))[CSF]
    up = _group_vector(group_inverse @ z)
    return [up, -up]


def _calibrate_age(core: _Core, age: AgeModel, ventricle_sd: float, meter: _Meter) -> dict:
    meter.perturbations = []
    # Individual offsets are per region group: measure how each group's input moves every group
    # (cross-talk between neighbours, e.g. ventricles and caudate) and invert that response.
    n_g = len(GROUP_ORDER) + 1
    response = np.zeros((n_g, n_g))
    delta = 0.1
    for j in range(n_g):
        unit = np.zeros(n_g)
        unit[j] = delta
        response[:, j] = _group_means(core, meter.log_change(_group_vector(unit))) / delta
    group_inverse = np.linalg.inv(response)
    # Individual ventricle sizes vary a lot (log SD ~0.35) and bend the neighbours' response: the last
    # steps calibrate the mean over a +-1 SD pair of ventricle offsets (two-point Gauss-Hermite).
    meter.perturbations = _ventricle_pair(core, group_inverse, ventricle_sd)
    worst = 0.0
    rows, targets = {}, {}
    for d in AGE_PROBES:
        targets[d] = age_targets(core, age, d)
        rows[d], err = _fixed_point(meter, targets[d], CALIBRATION_ITERATIONS, paired_steps=2)
        worst = max(worst, err)
    ages = np.array(sorted(rows))
    gains = np.ones(N_LABELS)  # slope of input vs target around the reference age (probes at +-1.25 decades)
    dt = targets[1.25] - targets[-1.25]
    di = rows[1.25] - rows[-1.25]
    ok = np.abs(dt) > 0.02
    gains[ok] = np.clip(di[ok] / dt[ok], 0.5, 2.0)
    gains[0] = 0.0
    return {"age_decades": ages, "age_inputs": np.stack([rows[d] for d in ages]), "gains": gains,
            "group_inverse": group_inverse, "age_residual": np.float64(worst)}


def _calibrate_disease(core: _Core, age: AgeModel, disease: DiseaseModel, age_part: dict, meter: _Meter) -> dict:
    pattern = disease_pattern(core.template, disease)
    strengths = sorted([0.0] + [m * disease.strength for m in DISEASE_PROBES])
    table = np.zeros((len(DISEASE_DECADES), len(strengths), N_LABELS))
    worst = 0.0
    for i, d in enumerate(DISEASE_DECADES):
        base_t = age_targets(core, age, d)
        base_in = _interp_rows(age_part["age_decades"], age_part["age_inputs"], d)
        for j, st in enumerate(strengths):
            if st == 0:
                continue
            t = base_t.copy()
            t[1:CSF] += pattern[1:CSF] * st
            t = _compensate(core, t)
            start = base_in + age_part["gains"] * (t - base_t)
            t_in, err = _fixed_point(meter, t, CALIBRATION_ITERATIONS - 1, start=start, paired_steps=1)
            worst = max(worst, err)
            table[i, j] = t_in - base_in
    return {"disease_decades": np.array(DISEASE_DECADES, float), "disease_strengths": np.array(strengths, float),
            "disease_inputs": table, "disease_residual": np.float64(worst)}


def _load_npz(path: Path | None) -> dict | None:
    return load_npz(path)


def _store_npz(path: Path | None, arrays: dict) -> None:
    store_npz(path, arrays)


def _default_cache_dir() -> Path:
    return sim_cache_dir()


# --------------------------------------------------------------------------- the simulator
def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


class BrainSimulator:
    """Makes the subjects of one :class:`BrainCohortConfig`; ``simulator.subject(i)`` is independent of N.

    Building it loads the template and calibrates the deformation model (seconds, cached on disk);
    each subject then takes a fraction of a second at 2 mm.

    Examples
    --------
    >>> sim = BrainSimulator(BrainCohortConfig(subjects=4, seed=1))   # doctest: +SKIP
    >>> image, metadata, truth = sim.subject(0)                       # doctest: +SKIP
    >>> metadata["age"], truth.volumes["Hippocampus_L"]               # doctest: +SKIP
    """

    def __init__(self, config: BrainCohortConfig, *, cache_dir: str | Path | None | bool = None,
                 progress: Progress = no_progress) -> None:
        config.validate()
        self.config = config
        self.core = _core(config.template_dir, int(config.field_step), config.substrate)
        self.template = self.core.template
        self.sites = resolve_sites(config)
        self.pattern = disease_pattern(self.template, config.disease)
        dis = config.disease
        self.subtypes = [st.name for st in dis.subtypes] if dis is not None else []
        self.subtype_patterns = {}
        self._subtype_p = None
        if self.subtypes:
            combined = dis.subtype_effects()
            self.subtype_patterns = {n: disease_pattern(self.template, dis.model_copy(update={"effects": e}))
                                     for n, e in combined.items()}
            w = np.array([st.weight for st in dis.subtypes], float)
            self._subtype_p = w / w.sum()
        self._subtype_cal: dict[str, Calibration] = {}
        if config.clinical is not None and config.clinical.bmi_region not in REGION_GROUPS:
            raise ConfigError("unknown region group for clinical.bmi_region", expected=", ".join(REGION_GROUPS),
                              found=config.clinical.bmi_region)
        self._calibration: Calibration | None = None
        self._map_mask: np.ndarray | None = None
        self._cache_dir = cache_dir
        self._progress = progress
        self.digest = config_digest(config.to_dict())
        r = float(config.resolution)
        self.anatomy_grid = output_grid(self.template, (r, r, r), "axial")
        self._site_grids: dict[str, OutputGrid] = {}
        self._psf: dict[tuple, np.ndarray] = {}
        self._bias: dict[str, np.ndarray] = {}
        weights = np.array([max(s.weight, 0.0) for s in self.sites], float)
        if weights.sum() <= 0:
            raise ConfigError("site weights must not all be zero")
        self._site_p = weights / weights.sum()

    # ------------------------------------------------------------------ public
    @property
    def calibration(self) -> Calibration:
        """The calibrated deformation inputs (computed on first use, a few seconds; cached on disk)."""
        if self._calibration is None:
            cfg = self.config
            self._calibration = calibrate(self.core, cfg.age, cfg.disease, cache_dir=self._cache_dir,
                                          ventricle_sd=cfg.anatomy.group_sd.get("ventricles", 0.0),
                                          progress=self._progress)
            for name, eff in (cfg.disease.subtype_effects().items() if self.subtypes else ()):
                self._subtype_cal[name] = calibrate(
                    self.core, cfg.age, cfg.disease.model_copy(update={"effects": eff, "subtypes": []}),
                    cache_dir=self._cache_dir, ventricle_sd=cfg.anatomy.group_sd.get("ventricles", 0.0),
                    progress=self._progress)
        return self._calibration

    def subtype_calibration(self, subtype: str | None) -> Calibration:
        """The calibration of a subtype's combined pattern (the cohort's for None)."""
        cal = self.calibration
        return cal if subtype is None else self._subtype_cal[subtype]

    def __len__(self) -> int:
        return self.config.subjects

    def __iter__(self) -> Iterator[SimulatedBrain]:
        for i in range(self.config.subjects):
            yield self.subject(i)

    def site_grid(self, site: SiteConfig) -> OutputGrid:
        if site.name not in self._site_grids:
            if self.config.output_grid == "common":
                g = self.anatomy_grid
            else:
                r = self.config.resolution
                g = output_grid(self.template, site.voxel_size or (r, r, r), site.orientation)
            self._site_grids[site.name] = g
        return self._site_grids[site.name]

    def demographics(self, index: int) -> dict:
        """The subject's metadata draws alone (cheap): site, sex, age, diagnosis, height, weight, BMI."""
        cfg = self.config
        rng = _rng(cfg.seed, SUBJECT, index, 0)
        k = int(rng.choice(len(self.sites), p=self._site_p))
        site = self.sites[k]
        female = bool(rng.random() < site.female_fraction)
        if site.age_sd is not None and site.age_mean is not None:
            age = None
            for _ in range(1000):
                a = rng.normal(site.age_mean, site.age_sd)
                if site.age_min <= a <= site.age_max:
                    age = a
                    break
            age = float(np.clip(site.age_mean if age is None else age, site.age_min, site.age_max))
        else:
            age = float(rng.uniform(site.age_min, site.age_max))
        age = int(round(age))
        u_patient = rng.random()
        pf = site.patient_fraction if site.patient_fraction is not None else cfg.patient_fraction
        patient = cfg.disease is not None and u_patient < pf
        sd = cfg.disease.strength_sd if cfg.disease is not None else 0.0
        s_ln = math.sqrt(math.log1p(sd * sd))
        multiplier = float(np.exp(s_ln * rng.standard_normal() - s_ln * s_ln / 2))  # lognormal, mean 1
        height = round(float(rng.normal(1.63, 0.065) if female else rng.normal(1.76, 0.07)), 2)
        bmi_raw = float(np.clip(rng.normal(25.0 + 0.05 * (age - 40), 4.0), 16.0, 45.0))
        weight = round(bmi_raw * height * height, 1)
        bmi = round(weight / (height * height), 2)
        strength = (cfg.disease.strength * multiplier) if patient else 0.0
        subtype = None
        if patient and self.subtypes:  # its own stream: the draws above do not change
            subtype = self.subtypes[int(_rng(cfg.seed, SUBJECT, index, 3).choice(len(self.subtypes),
                                                                                 p=self._subtype_p))]
        clinical = None
        if cfg.clinical is not None:
            clinical = self._clinical(index, age, "F" if female else "M", patient, multiplier, bmi)
        return {
            "subject_id": subject_id(index, cfg.id_prefix), "age": age, "sex": "F" if female else "M",
            "height_m": height, "weight_kg": weight, "bmi": bmi, "site": site.name,
            "diagnosis": cfg.disease.label if patient else "control",
            "disease": cfg.disease.name if patient else "",
            "disease_strength": round(strength, 6),
            "manufacturer": site.manufacturer, "model": site.model, "field_strength": site.field_strength,
            "simulated": "yes",
            "_site_index": k, "_multiplier": multiplier, "_subtype": subtype, "_clinical": clinical,
        }

    def _clinical(self, index: int, age: float, sex: str, patient: bool, multiplier: float, bmi: float) -> dict:
        """Complete clinical values and missingness of one subject (its own random stream)."""
        cm = self.config.clinical
        rng = _rng(self.config.seed, SUBJECT, index, 4)
        log_nfl = (math.log(cm.nfl_baseline) + cm.nfl_age_slope * (age - 40.0)
                   + (cm.nfl_patient_effect * multiplier if patient else 0.0) + cm.nfl_sd * rng.standard_normal())
        values = {"nfl": round(math.exp(log_nfl), 2),
                  "sodium": round(float(cm.sodium_mean + cm.sodium_sd * rng.standard_normal()), 1),
                  "bmi": bmi}
        u = rng.random(3)
        prob, missing = {}, {}
        for j, var in enumerate(("nfl", "sodium", "bmi")):
            m = cm.missing.get(var)
            prob[var] = 0.0 if m is None else m.probability(age, sex, patient)
            missing[var] = bool(u[j] < prob[var])
        return {"values": values, "missing": missing, "missing_probability": prob}

    def subject(self, index: int, *, image: bool = True, healthy: bool = False) -> SimulatedBrain:
        """Simulate subject ``index`` (0-based): image, metadata and ground truth.

        ``image=False`` skips the T1 (``image`` is then None): the anatomy and its truth alone, about
        twice as fast, for validating the anatomy model on large cohorts.

        ``healthy=True`` gives the subject's healthy counterpart: the same draws (site, age, sex, head
        size, inter-subject anatomy, individual offsets, pose, image noise) with the disease strength
        set to 0, so that a patient's regions can be seen as they were before the disease (the tissue
        the disease removed is still labelled by its region). A control is unchanged. The metadata
        keep the diagnosis, with ``disease_strength`` 0 and ``counterfactual`` = ``"healthy"``.
        """
        cfg = self.config
        core, tpl = self.core, self.template
        demo = self.demographics(index)
        if healthy:
            demo["disease_strength"] = 0.0
            demo["counterfactual"] = "healthy"
        site = self.sites[demo.pop("_site_index")]
        multiplier = demo.pop("_multiplier")
        subtype = demo.pop("_subtype")
        clinical = demo.pop("_clinical")
        if clinical is not None:  # observed values: missing ones are None (n/a), a missing BMI hides the weight
            obs = {k: (None if clinical["missing"][k] else v) for k, v in clinical["values"].items()}
            demo["nfl"], demo["sodium"] = obs["nfl"], obs["sodium"]
            if obs["bmi"] is None:
                demo["bmi"], demo["weight_kg"] = None, None
        anat_rng = _rng(cfg.seed, SUBJECT, index, 1)
        an = cfg.anatomy

        # --- targets -----------------------------------------------------------------
        decades = (demo["age"] - cfg.age.reference_age) / 10.0
        head_log = float(anat_rng.normal(0.0, an.head_size_sd))
        z_group = {g: float(anat_rng.normal(0.0, an.group_sd.get(g, 0.0))) for g in REGION_GROUPS}
        z_clinical = {g: 0.0 for g in REGION_GROUPS}
        if clinical is not None:  # BMI changes one region group's volume (through the individual offsets)
            cm = cfg.clinical
            z_clinical[cm.bmi_region] = math.log1p(cm.bmi_effect / 100.0) * (clinical["values"]["bmi"] - 25.0) / 5.0
            for g in REGION_GROUPS:
                z_group[g] += z_clinical[g]
        t_age = age_targets(core, cfg.age, decades)
        t_ind = np.zeros(N_LABELS)
        for g, labels in REGION_GROUPS.items():
            t_ind[list(labels)] = z_group[g]
        strength = demo["disease_strength"]
        pattern = self.subtype_patterns[subtype] if subtype is not None else self.pattern
        t_dis = pattern * strength
        t_total = t_age.copy()
        t_total[1:CSF] += t_ind[1:CSF] + t_dis[1:CSF]
        t_total = _compensate(core, t_total)
        t_age_dis = t_age.copy()
        t_age_dis[1:CSF] += t_dis[1:CSF]
        t_age_dis = _compensate(core, t_age_dis)
        cal = self.subtype_calibration(subtype)
        base_in = cal.age(decades) + cal.disease(decades, strength)
        # individual offsets: per group, plus the CSF share that keeps the intracranial volume
        z_vec = np.array([z_group[g] for g in GROUP_ORDER] + [t_total[CSF] - t_age_dis[CSF]])
        t_in = base_in + cal.individual(z_vec)

        # --- deformation on the field grid ---------------------------------------------
        u_anat = random_displacement(core, anat_rng, an)
        velocity = _velocity(core, t_in)
        u_eff = fl.exp_velocity(velocity, core.grid.step)
        rot = anat_rng.normal(0.0, an.pose_rotation_deg, 3)
        trans = anat_rng.normal(0.0, an.pose_translation_mm, 3)
        phase = anat_rng.uniform(-0.5, 0.5, 3) * cfg.resolution
        female_log = math.log(an.female_volume_ratio) if demo["sex"] == "F" else 0.0
        scale = an.template_scale * math.exp((head_log + female_log) / 3.0)
        pre = subject_affine(core, scale, rot, trans + phase)

        # --- images -------------------------------------------------------------------
        grid = self.site_grid(site)
        coords = sample_coords(core, pre, grid, u_anat, None)
        base_coords = coords.copy() if cfg.paired_truth else None
        coords += fl.trilinear(u_eff, core.grid.to_nodes(coords))
        labels = fl.nearest(tpl.labels, coords)
        vox = float(abs(np.linalg.det(grid.affine[:3, :3])))
        volumes = self._volume_dict(self._measure(labels, coords) * vox)
        baseline = None
        if base_coords is not None:
            baseline = self._volume_dict(self._measure(None, base_coords) * vox)
        pixels = None
        if image:
            img_rng = _rng(cfg.seed, SUBJECT, index, 2)
            t1 = ndi.map_coordinates(self._psf_template(site, grid), coords, order=1, mode="constant", cval=0.0)
            pixels = self._acquire(t1, decades, site, grid, img_rng)

        # --- packaging -------------------------------------------------------------------
        meta = dict(demo)
        meta.update({
            "series_description": "SIMULATED T1w - not patient data",
            "sequence": site.sequence, "repetition_time": site.repetition_time, "echo_time": site.echo_time,
            "inversion_time": site.inversion_time, "flip_angle": site.flip_angle,
        })
        t1_image = None if pixels is None else Image(pixels, grid.affine, modality="MR", metadata=meta)
        label_img = Image(labels, grid.affine, modality="SEG",
                          metadata={"subject_id": demo["subject_id"], "simulated": "yes", "content": "labels"})
        disease_map = None
        if strength:
            dm = t_dis.astype(np.float32)[labels]
            disease_map = Image(dm, grid.affine, metadata={"subject_id": demo["subject_id"], "simulated": "yes",
                                                           "content": "disease log-volume change"})
        deformation = (self._deformation_image(u_anat, "inter-subject anatomy"),
                       self._deformation_image(u_eff, "regional volume effects (age, individual, disease)"))
        group_t = {}
        for name, arr in (("age", t_age), ("individual", t_ind), ("disease", t_dis), ("total", t_total)):
            group_t[name] = {g: round(float(arr[labels_[0]]), 6) for g, labels_ in REGION_GROUPS.items()}
            group_t[name]["csf"] = round(float(arr[CSF]), 6)
        if clinical is not None:  # the BMI part of the individual offsets
            group_t["clinical"] = {g: round(v, 6) for g, v in z_clinical.items()}
        latent = {
            "head_log_volume": head_log, "scale": scale, "rotation_deg": rot.tolist(),
            "pre_affine": pre.tolist(),
            "translation_mm": (trans + phase).tolist(), "disease_multiplier": multiplier if strength else None,
            "individual": z_group, "subtype": subtype, "substrate": cfg.substrate,
        }
        if healthy:
            latent["counterfactual"] = "healthy (disease strength 0)"
        template_map = None
        if cfg.template_maps:
            template_map = Image(self._template_logjac(u_anat, velocity), core.grid.affine,
                                 metadata={"subject_id": demo["subject_id"], "simulated": "yes",
                                           "content": "log-Jacobian in Colin27 template space (field grid)"})
        truth = BrainTruth(labels=label_img, volumes=volumes, deformation=deformation, targets=group_t,
                           latent=latent, disease_map=disease_map, baseline_volumes=baseline, subtype=subtype,
                           clinical=clinical, template_map=template_map)
        return SimulatedBrain(t1_image, meta, truth)

    # ------------------------------------------------------------------ internals
    def _template_logjac(self, u_anat: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """log det of the template -> subject map at the field-grid nodes, in Colin27 template space (float32).

        The subject's (normalised) frame maps to the template by ``y = phi(p + A(p))`` with
        ``phi = exp(v)``; its inverse ``psi(y) = (id + A)^-1 (exp(-v)(y))`` is evaluated at the nodes
        (fixed-point iterations for ``(id + A)^-1``), and ``log det dpsi/dy`` by central differences:
        log(subject volume / template volume), what tensor-based morphometry measures after a perfect
        non-linear registration (the global head size, in ``pre_affine``, is excluded). For the
        ``itk-head`` substrate the map is carried to Colin27 through the registration that placed the
        atlas (plus its own log-Jacobian), so both substrates share one template space.
        """
        fg = self.core.grid
        step = fg.step
        nodes = fg.node_coords()  # template voxel coordinates (3, *shape)
        y = nodes
        to_colin = self.template.notes.get("to_colin") if self.template.substrate != "colin27" else None
        if to_colin is not None:  # Colin27 node c -> ITK-template point t with G(t) = c (G: ITK -> Colin)
            y = _invert_map(to_colin, int(self.template.notes.get("to_colin_step", 2)), nodes)
        inv_eff = fl.exp_velocity(-velocity, step)  # template voxels, on the field grid
        z = y + fl.trilinear(inv_eff, fg.to_nodes(y))
        p = z.copy()
        for _ in range(12):  # (id + A)^-1 by fixed point: A is smooth (RMS ~2 mm) so this contracts fast
            p = z - fl.trilinear(u_anat, fg.to_nodes(p))
        return _log_det(p, float(step)) * self._template_space_mask()

    def _template_space_mask(self) -> np.ndarray:
        """Field-grid nodes whose 4 mm cell is at least half inside Colin27's intracranial labels (float32 0/1)."""
        if self._map_mask is None:
            colin = load_brain_template(self.config.template_dir) if self.template.substrate != "colin27" \
                else self.template
            fg = self.core.grid
            frac = ndi.uniform_filter((colin.labels > 0).astype(np.float32), size=fg.step, mode="constant")
            idx = np.rint(fg.node_coords()).astype(np.int64)
            inside = np.all([(idx[a] >= 0) & (idx[a] < frac.shape[a]) for a in range(3)], axis=0)
            vals = np.zeros(fg.shape, np.float32)
            ii = [np.clip(idx[a], 0, frac.shape[a] - 1) for a in range(3)]
            vals[inside] = frac[ii[0], ii[1], ii[2]][inside]
            self._map_mask = (vals >= 0.5).astype(np.float32)
        return self._map_mask

    def _template_mm(self) -> float:
        return float(np.mean(np.linalg.norm(self.template.affine[:3, :3], axis=0)))

    def _deformation_image(self, u: np.ndarray, what: str) -> Image:
        """Displacement image (LPS mm, channels last) on the field grid; converted only when read."""
        a = self.template.affine[:3, :3].astype(np.float32)

        def load() -> np.ndarray:
            disp = np.tensordot(a, u, axes=([1], [0]))  # template voxels -> LPS mm
            return np.ascontiguousarray(np.moveaxis(disp, 0, -1), dtype=np.float32)

        return Image(loader=load, shape=self.core.grid.shape + (3,), dtype=np.float32, affine=self.core.grid.affine,
                     extra_axes="channel",
                     metadata={"content": f"template-frame displacement in LPS mm: {what}", "simulated": "yes"})

    def _measure(self, labels: np.ndarray | None, coords: np.ndarray) -> np.ndarray:
        if self.config.volume_measure == "partial":
            return fl.partial_volume_counts(self.template.labels, coords, N_LABELS)
        if labels is None:
            labels = fl.nearest(self.template.labels, coords)
        return np.bincount(labels.ravel(), minlength=N_LABELS).astype(float)

    def _volume_dict(self, counts: np.ndarray) -> dict:
        names = self.template.names
        out = {names[i]: float(counts[i]) for i in range(1, N_LABELS)}
        out["ICV"] = float(counts[1:].sum())
        out["Brain"] = float(counts[1:VENTRICLES].sum() + counts[WHITE_MATTER])
        return out

    def _psf_template(self, site: SiteConfig, grid: OutputGrid) -> np.ndarray:
        """The template T1 blurred to the site's voxel size (FWHM = voxel size), cached."""
        ta = self.template.affine
        sig = [0.0, 0.0, 0.0]
        vs = site.voxel_size or (self.config.resolution,) * 3
        for a in range(3):
            w = int(np.argmax(np.abs(grid.affine[:3, a])))
            t = int(np.argmax(np.abs(ta[w, :3])))
            tmm = abs(ta[w, t])
            sig[t] = math.sqrt(max(vs[a] ** 2 - tmm ** 2, 0.0)) / 2.3548 / tmm
        key = tuple(round(s, 3) for s in sig)
        if key not in self._psf:
            if len(self._psf) >= 6:  # 28 MB each: keep the last few voxel sizes
                self._psf.pop(next(iter(self._psf)))
            t1 = self.template.t1
            self._psf[key] = ndi.gaussian_filter(t1, key, mode="constant") if any(key) else t1
        return self._psf[key]

    def _site_bias(self, site: SiteConfig, grid: OutputGrid) -> np.ndarray:
        key = site.name if self.config.site_effects else "_shared"
        if key not in self._bias:
            k = self.sites.index(site) if self.config.site_effects else 0
            if self.config.site_effects and site.bias_seed is not None:  # the scanner's own, whatever the cohort
                rng = _rng(int(site.bias_seed), SITE, 0, 1)
            else:
                rng = _rng(self.config.seed, SITE, k, 1)
            self._bias[key] = fl.low_frequency_field(rng, grid.shape)
        return self._bias[key]

    def _acquire(self, t1: np.ndarray, decades: float, site: SiteConfig, grid: OutputGrid,
                 rng: np.random.Generator) -> np.ndarray:
        j = np.maximum(t1, 0.0, out=t1)
        c = self.config.age.contrast_change / 100.0 * decades
        if c:
            wm_side = np.clip((j - GREY_LEVEL) / (1.0 - GREY_LEVEL), 0.0, 1.0)
            j += np.float32(c * (1.0 - GREY_LEVEL)) * wm_side
        if site.gamma != 1.0:
            np.power(j, np.float32(site.gamma), out=j)
        if site.bias_strength:
            b = 0.85 * self._site_bias(site, grid) + 0.53 * fl.low_frequency_field(rng, grid.shape, terms=4)
            j *= np.exp(np.float32(site.bias_strength) * b)
        scale = np.float32(site.intensity_scale)
        img = j * scale + np.float32(site.intensity_offset)
        if site.noise:
            s = np.float32(site.noise) * scale
            n1 = rng.standard_normal(img.shape, dtype=np.float32)
            n2 = rng.standard_normal(img.shape, dtype=np.float32)
            img += s * n1
            img = np.sqrt(img * img + (s * n2) ** 2)
        return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _log_det(pos: np.ndarray, h: float) -> np.ndarray:
    """log |det d pos / d node| (central differences, one-sided at the borders) for positions (3, X, Y, Z)."""
    jac = np.empty((3, 3) + pos.shape[1:], np.float64)
    for a in range(3):
        jac[:, a] = np.gradient(pos.astype(np.float64), h, axis=a + 1)
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    return np.log(np.clip(det, 1e-3, None)).astype(np.float32)


def _invert_map(forward: np.ndarray, step: int, targets: np.ndarray) -> np.ndarray:
    """Points ``t`` with ``forward(t) = targets`` (template voxels); ``forward`` sampled every ``step`` voxels."""
    disp = (forward - np.indices(forward.shape[1:], dtype=np.float32) * np.float32(step)).astype(np.float32)
    t = targets.astype(np.float32).copy()
    for _ in range(30):
        t = targets - fl.trilinear(disp, t / np.float32(step))
    return t


def subject_id(index: int, prefix: str = "") -> str:
    """BIDS-style participant id of subject ``index`` (0-based): ``sub-0001`` (``sub-<prefix>0001``)."""
    return f"sub-{prefix}{index + 1:04d}"


# --------------------------------------------------------------------------- functional API
def simulate_brain_cohort(config: BrainCohortConfig, *, indices: Sequence[int] | None = None,
                          cache_dir=None) -> Iterator[SimulatedBrain]:
    """Yield ``(image, metadata, truth)`` for every subject (or ``indices``), in memory, writing nothing.

    Subject ``i`` is the same whatever ``config.subjects`` and whichever other subjects are made.
    """
    sim = BrainSimulator(config, cache_dir=cache_dir)
    for i in (range(config.subjects) if indices is None else indices):
        yield sim.subject(int(i))


def warp_labels(deformation, pre_affine, reference: Image, template_dir: str | None = None,
                labels: np.ndarray | None = None, substrate: str = "colin27") -> Image:
    """Apply a subject's saved backward map: the simulation atlas (or ``labels``) on ``reference``'s grid.

    Parameters
    ----------
    deformation : (Image, Image)
        ``truth.deformation`` (or ``deformation_anatomy.nii.gz`` and ``deformation_effects.nii.gz`` read
        back): 3-channel LPS displacements in the template frame, on the field grid.
    pre_affine : array_like (4, 4)
        ``truth.latent["pre_affine"]`` (in ``truth.json``): scanner LPS -> template-frame LPS.
    reference : Image
        Image whose grid the labels should follow (the simulated T1).
    substrate : str
        The anatomy the subject was built on (``truth.latent["substrate"]``).
    """
    tpl = load_brain_template(template_dir, substrate)
    lab = tpl.labels if labels is None else labels
    shape = reference.spatial_shape
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = reference.affine[:3, :3] @ ijk + reference.affine[:3, 3:]
    pre = np.asarray(pre_affine, float)
    y = pre[:3, :3] @ world + pre[:3, 3:]
    for field in deformation:
        dinv = np.linalg.inv(field.affine)
        nodes = (dinv[:3, :3] @ y + dinv[:3, 3:]).astype(np.float32)
        d = np.moveaxis(np.asarray(field.array, np.float32), -1, 0)
        y = y + fl.trilinear(d, nodes)
    tinv = np.linalg.inv(tpl.affine)
    tv = tinv[:3, :3] @ y + tinv[:3, 3:]
    out = fl.nearest(lab, tv.astype(np.float32))
    return Image(out.reshape(shape).astype(lab.dtype), reference.affine, modality="SEG",
                 metadata={"content": "labels"})


def region_names(template_dir: str | None = None) -> tuple[str, ...]:
    """``names[label]`` of the simulation atlas (0 = Outside, 1-116 AAL, 117-119 added)."""
    return load_brain_template(template_dir).names


__all__ = [
    "BrainSimulator", "BrainTruth", "SimulatedBrain", "simulate_brain_cohort", "warp_labels", "region_names",
    "subject_id", "Calibration", "calibrate", "output_grid",
]

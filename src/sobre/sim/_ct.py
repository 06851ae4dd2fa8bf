"""Lesions inserted into real CT volumes, with exact masks and size/position tables.

A lesion is an ellipsoid (random orientation, axis ratio up to ``max_elongation``) whose size (longest
diameter) is drawn by stratum, so detection benchmarks get balanced < 10, 10-20 and 20-30 mm lesions.
It is drawn on a supersampled grid and averaged into each voxel (partial volume, which matters with
thick slices), with a soft edge, an internal texture (smooth Gaussian field), and the background's own
noise level, then blended into the CT:

* ``solid`` lung nodule: replaces lung parenchyma with soft-tissue density (0 to 60 HU);
* ``ground-glass`` lung nodule: raises attenuation by 250-450 HU, vessels stay visible;
* ``soft-tissue`` lesion (liver, muscle, mediastinum...): 20-60 HU below (70 %) or above the local tissue.

Centres are placed where the whole lesion fits inside lung parenchyma (lung kinds) or soft tissue
(soft-tissue kind): never in air, outside the body, in fat or bone, and never touching another lesion.
The mask holds lesion ``k`` (1-based) where at least half of the voxel lies inside its ellipsoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from scipy import ndimage as ndi

from sobre.errors import ConfigError, InputError
from sobre.image import Image
from sobre.sim._config import SimSection

KINDS = ("solid", "ground-glass", "soft-tissue")
LUNG_KINDS = ("solid", "ground-glass")


class LesionConfig(SimSection):
    """How lesions are drawn and placed."""

    lesions_per_case: tuple[int, int] = Field((3, 3), description="inclusive range")
    sizes_mm: tuple[float, float] = Field((3.0, 30.0), description="longest diameter range")
    strata_mm: tuple[float, ...] = Field((10.0, 20.0), description="size strata boundaries: < 10, 10-20, >= 20")
    kinds: tuple[Literal["auto", "solid", "ground-glass", "soft-tissue"], ...] = Field(
        ("auto",), min_length=1, description="auto: lung kinds where there is lung, else soft-tissue")
    kind_weights: dict[Literal["solid", "ground-glass", "soft-tissue"], float] = Field(
        default_factory=lambda: {"solid": 0.65, "ground-glass": 0.2, "soft-tissue": 0.15})
    max_elongation: float = Field(1.6, ge=1, le=10, description="longest / shortest axis")
    edge_mm: float = Field(0.6, gt=0, description="SD of the Gaussian edge profile")
    texture_hu: float = Field(12.0, ge=0, description="SD of the internal texture")
    texture_mm: float = Field(2.0, gt=0, description="its correlation length")
    gap_mm: float = Field(3.0, ge=0, description="free space between lesions")
    supersample: int = Field(3, ge=1, le=12, description="subsamples per voxel along each in-plane axis")

    @model_validator(mode="after")
    def _ranges(self) -> LesionConfig:
        lo, hi = self.sizes_mm
        if not 0 < lo <= hi:
            raise ValueError(f"lesion sizes must satisfy 0 < min <= max (found {lo:g}-{hi:g} mm)")
        a, b = self.lesions_per_case
        if not 0 <= a <= b:
            raise ValueError(f"lesions per case must satisfy 0 <= min <= max (found {a}-{b})")
        return self

    @field_validator("kind_weights")
    @classmethod
    def _weights(cls, v: dict) -> dict:
        if any(w < 0 for w in v.values()):
            raise ValueError(f"kind weights must be >= 0 (found {v})")
        return v

    def strata(self) -> list[tuple[float, float]]:
        """Size strata (mm) intersected with ``sizes_mm``."""
        lo, hi = self.sizes_mm
        edges = [lo] + [b for b in self.strata_mm if lo < b < hi] + [hi]
        return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def stratum_name(d: float, boundaries=(10.0, 20.0), top: float | None = None) -> str:
    """Size stratum of a diameter: ``"<10"``, ``"10-20"``, ``"20-30"`` (``top`` = largest size) or ``">=20"``."""
    b = list(boundaries)
    if d < b[0]:
        return f"<{b[0]:g}"
    for lo, hi in zip(b, b[1:]):
        if lo <= d < hi:
            return f"{lo:g}-{hi:g}"
    return f"{b[-1]:g}-{top:g}" if top is not None and top > b[-1] else f">={b[-1]:g}"


# --------------------------------------------------------------------------- tissue masks
@dataclass
class Tissues:
    body: np.ndarray
    lung: np.ndarray
    soft: np.ndarray
    noise_hu: float


def tissue_masks(hu: np.ndarray, spacing) -> Tissues:
    """Body, lung parenchyma and soft tissue of a CT in HU (air and everything outside the body excluded)."""
    if float(np.percentile(hu, 1)) > -500 or float(np.percentile(hu, 99)) < 0:
        raise InputError("background does not look like a CT in Hounsfield units",
                         expected="air near -1000 HU and tissue above 0 HU",
                         found=f"1st percentile {np.percentile(hu, 1):.0f}, 99th {np.percentile(hu, 99):.0f}",
                         fix="pass CT volumes with RescaleSlope/Intercept applied (sobre.load does this)")
    dense = hu > -500
    lab, n = ndi.label(dense)
    if n == 0:
        raise InputError("no body found in the CT background")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    filled = np.zeros_like(body)
    for k in range(body.shape[2]):  # fill the lungs in, slice by slice (axial)
        filled[:, :, k] = ndi.binary_fill_holes(body[:, :, k])
    inside_air = filled & ~dense
    lung = np.zeros_like(body)
    lab, n = ndi.label(inside_air)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        vox = float(np.prod(spacing))
        big = np.flatnonzero(sizes * vox > 50_000)  # > 50 cm^3: lungs, not bowel gas
        lung = np.isin(lab, big[big > 0])
    lung &= (hu > -980) & (hu < -500)  # parenchyma, not the large airways
    soft = filled & (hu > -20) & (hu < 120)
    soft = ndi.binary_opening(soft, iterations=1)
    # noise: robust SD of the difference of neighbouring voxels in homogeneous soft tissue
    if soft.sum() > 1000:
        d = np.diff(hu.astype(np.float32), axis=0)[soft[1:] & soft[:-1]]
        noise = float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))
    else:
        noise = 10.0
    return Tissues(body=filled, lung=lung, soft=soft, noise_hu=max(noise, 1.0))


# --------------------------------------------------------------------------- insertion
def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def insert_lesions(image: Image, config: LesionConfig | None = None, *, seed: int = 0, case_id: str = "case",
                   rng: np.random.Generator | None = None) -> tuple[Image, Image, list[dict]]:
    """Insert lesions into a CT volume.

    Parameters
    ----------
    image : Image
        3D CT in HU (a patient frame, any orientation and voxel size).
    config : LesionConfig
    seed : int
        Used when ``rng`` is not given.

    Returns
    -------
    (Image, Image, list of dict)
        The CT with lesions (int16 HU, same grid), the instance mask (uint16: lesion ``k`` = k), and
        one row per lesion (position in LPS mm and voxels, semi-axes, diameter, stratum, HU...).
    """
    cfg = config or LesionConfig()
    cfg.validate()
    if image.spatial_ndim != 3 or image.extra_axes:
        raise InputError("CT background must be a grey-level 3D volume", found=str(image.shape))
    rng = rng or np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
    hu = np.asarray(image.array, np.float32)
    spacing = np.array(image.spacing, float)
    tis = tissue_masks(hu, spacing)
    aff = image.affine
    has_lung = tis.lung.sum() * np.prod(spacing) > 100_000
    kinds = [k for k in cfg.kinds if k != "auto"]
    weights = dict(cfg.kind_weights)
    if not kinds:
        kinds = list(KINDS) if has_lung else ["soft-tissue"]
    if not has_lung:
        kinds = [k for k in kinds if k not in LUNG_KINDS]
        if not kinds:
            raise InputError("no lung parenchyma in this CT for lung lesions", fix="ask for soft-tissue lesions")
    p = np.array([weights.get(k, 1.0) for k in kinds], float)
    p /= p.sum()
    # room left for lesions: distance (mm) to the edge of each allowed region, updated as lesions go in
    room = {"lung": _room(tis.lung, spacing) if has_lung else None, "soft": _room(tis.soft, spacing)}
    occupied = np.zeros(hu.shape, bool)
    out = hu.copy()
    mask = np.zeros(hu.shape, np.uint16)
    strata = cfg.strata()
    n_les = int(rng.integers(cfg.lesions_per_case[0], cfg.lesions_per_case[1] + 1))
    rows: list[dict] = []
    first_stratum = int(rng.integers(len(strata)))
    for k in range(n_les):
        kind = str(rng.choice(kinds, p=p))
        lo, hi = strata[(first_stratum + k) % len(strata)]
        diameter = float(rng.uniform(lo, hi))
        a = diameter / 2
        b = a / rng.uniform(1.0, cfg.max_elongation)
        c = a / rng.uniform(1.0, cfg.max_elongation)
        axes = np.array([a, b, c])
        rot = _random_rotation(rng)
        need = a + cfg.gap_mm / 2 + 2 * cfg.edge_mm
        cand = np.zeros(0, np.int64)
        # the drawn kind first, then the others (by weight) if it does not fit anywhere
        for kd in [kind] + sorted((x for x in kinds if x != kind), key=lambda x: -weights.get(x, 1.0)):
            region = "lung" if kd in LUNG_KINDS else "soft"
            cand = np.flatnonzero((room[region] >= need).ravel() & ~occupied.ravel())
            if cand.size:
                kind = kd
                break
        if cand.size == 0:
            rows.append({"case_id": case_id, "lesion_id": None, "kind": kind, "diameter_mm": round(diameter, 3),
                         "placed": False, "reason": f"no region wide enough for {diameter:.1f} mm"})
            continue
        centre_idx = np.array(np.unravel_index(int(rng.choice(cand)), hu.shape), float)
        centre_idx += rng.uniform(-0.5, 0.5, 3)
        label = len([r for r in rows if r.get("placed")]) + 1
        stats = _draw(out, mask, hu, tis, aff, spacing, centre_idx, axes, rot, kind, label, cfg, rng)
        # keep later lesions away: mark a dilated box as occupied and shrink the room map
        grow = (a + cfg.gap_mm) / spacing
        sl = tuple(slice(max(int(centre_idx[i] - grow[i]), 0), int(centre_idx[i] + grow[i]) + 1) for i in range(3))
        occupied[sl] = True
        centre_lps = aff[:3, :3] @ centre_idx + aff[:3, 3]
        rows.append({
            "case_id": case_id, "lesion_id": label, "kind": kind, "placed": True,
            "center_x_mm": round(float(centre_lps[0]), 3), "center_y_mm": round(float(centre_lps[1]), 3),
            "center_z_mm": round(float(centre_lps[2]), 3),
            "center_i": round(float(centre_idx[0]), 3), "center_j": round(float(centre_idx[1]), 3),
            "center_k": round(float(centre_idx[2]), 3),
            "diameter_mm": round(diameter, 3), "semi_axes_mm": [round(float(v), 3) for v in axes],
            "equivalent_diameter_mm": round(float(2 * np.prod(axes) ** (1 / 3)), 3),
            "volume_mm3": round(float(4 / 3 * np.pi * np.prod(axes)), 2),
            "size_stratum": stratum_name(diameter, cfg.strata_mm, cfg.sizes_mm[1]),
            "rotation": [[round(float(v), 6) for v in r] for r in rot],
            "region": "lung" if region == "lung" else "soft tissue", **stats,
        })
    meta = dict(image.metadata)
    meta.update({"simulated": "yes", "content": "CT with simulated lesions", "case_id": case_id})
    ct = Image(np.clip(np.rint(out), -32768, 32767).astype(np.int16), aff, modality="CT", metadata=meta)
    mask_img = Image(mask, aff, modality="SEG", metadata={"simulated": "yes", "case_id": case_id,
                                                          "content": "lesion instance mask"})
    return ct, mask_img, rows


def _draw(out, mask, hu, tis, aff, spacing, centre, axes, rot, kind, label, cfg, rng) -> dict:
    """Blend one lesion into ``out`` and ``mask`` in place; returns its HU statistics."""
    a = float(axes.max())
    reach = (a + 4 * cfg.edge_mm) / spacing
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, hu.shape)
    box = tuple(slice(lo[i], hi[i]) for i in range(3))
    shape = tuple(hi - lo)
    # supersampling: in-plane `supersample`, through-plane enough for ~0.5 mm steps (thick slices)
    ss = [max(1, int(cfg.supersample)), max(1, int(cfg.supersample)),
          max(1, int(math.ceil(spacing[2] / max(min(spacing[0], spacing[1]), 0.5))))]
    ss = [min(s, 12) for s in ss]
    offs = [(np.arange(s) + 0.5) / s - 0.5 for s in ss]
    lin = aff[:3, :3]
    m = np.diag(1.0 / axes) @ rot.T @ lin  # voxel offset -> normalised ellipsoid coordinates
    idx = [np.arange(lo[i], hi[i]) - centre[i] for i in range(3)]
    frac = np.zeros(shape, np.float32)     # fraction of the voxel inside the ellipsoid (exact mask)
    alpha = np.zeros(shape, np.float32)    # soft-edged opacity, partial-volume averaged
    geo = float(np.prod(axes) ** (1 / 3))
    for ox in offs[0]:
        for oy in offs[1]:
            for oz in offs[2]:
                gx = (idx[0] + ox)[:, None, None]
                gy = (idx[1] + oy)[None, :, None]
                gz = (idx[2] + oz)[None, None, :]
                u = m[:, 0, None, None, None] * gx + m[:, 1, None, None, None] * gy + m[:, 2, None, None, None] * gz
                r = np.sqrt(np.sum(u * u, axis=0))
                frac += (r <= 1.0)
                # signed distance to the surface, approximately (r - 1) * radius, Gaussian edge
                sdist = (r - 1.0) * geo
                alpha += 0.5 * _erfc(sdist / (math.sqrt(2.0) * cfg.edge_mm))
    n = float(np.prod(ss))
    frac /= n
    alpha /= n
    region = out[box]
    bg = hu[box]
    inside = frac >= 0.5
    bg_median = float(np.median(bg[inside])) if inside.any() else float(np.median(bg))
    tex = _texture(rng, shape, spacing, cfg.texture_mm) * np.float32(cfg.texture_hu)
    noise = rng.standard_normal(shape).astype(np.float32) * np.float32(tis.noise_hu)
    if kind == "solid":
        mean = float(rng.uniform(0.0, 60.0))
        lesion = mean + tex + noise
        new = region * (1 - alpha) + lesion * alpha
    elif kind == "ground-glass":
        delta = float(rng.uniform(250.0, 450.0))
        mean = bg_median + delta
        new = region + alpha * (delta + tex * 0.5)
    else:
        sign = -1.0 if rng.random() < 0.7 else 1.0
        mean = bg_median + sign * float(rng.uniform(20.0, 60.0))
        lesion = mean + tex + noise
        new = region * (1 - alpha) + lesion * alpha
    out[box] = new
    sub = mask[box]
    sub[inside] = label
    voxel_vol = float(abs(np.linalg.det(lin)))
    return {
        "mean_hu": round(mean, 1), "background_hu": round(bg_median, 1), "contrast_hu": round(mean - bg_median, 1),
        "mask_voxels": int(inside.sum()), "mask_volume_mm3": round(float(inside.sum()) * voxel_vol, 2),
        "partial_volume_mm3": round(float(frac.sum()) * voxel_vol, 2),
    }


def _room(region: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from each voxel to the nearest voxel outside ``region`` (a lower bound).

    Computed on a grid coarsened in-plane to about 1.5 mm (a few times cheaper on 512 x 512 CT), then
    brought back by nearest neighbour and reduced by the coarse voxel's half-diagonal, so a lesion
    placed with this much room never leaves the region.
    """
    f = [max(1, int(round(1.5 / s))) if i < 2 else 1 for i, s in enumerate(spacing)]
    if f == [1, 1, 1]:
        return ndi.distance_transform_edt(region, sampling=spacing)
    pad = [(0, (-n) % k) for n, k in zip(region.shape, f)]
    r = np.pad(region, pad)
    coarse = r.reshape(r.shape[0] // f[0], f[0], r.shape[1] // f[1], f[1], r.shape[2], 1).all(axis=(1, 3, 5))
    cs = np.array(spacing) * np.array(f)
    d = ndi.distance_transform_edt(coarse, sampling=cs).astype(np.float32)
    d -= np.float32(0.5 * np.linalg.norm(cs[:2]))
    full = d.repeat(f[0], 0).repeat(f[1], 1)[: region.shape[0], : region.shape[1]]
    return np.where(region, np.maximum(full, 0), 0).astype(np.float32)


def _erfc(x: np.ndarray) -> np.ndarray:
    from scipy.special import erfc

    return erfc(x).astype(np.float32)


def _texture(rng: np.random.Generator, shape, spacing, corr_mm: float) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    sig = [max(corr_mm / s, 0.3) for s in spacing]
    t = ndi.gaussian_filter(w, sig, mode="reflect")
    sd = float(t.std())
    return t / sd if sd > 0 else t


# --------------------------------------------------------------------------- cohorts
class CTLesionCohortConfig(SimSection):
    """Cases made from real CT backgrounds: case ``i`` uses background ``i % len(backgrounds)``."""

    backgrounds: list[str] = Field(default_factory=list, description="CT volumes (files or DICOM folders), in HU")
    cases: int | None = Field(None, ge=1, le=1_000_000, description="default: one per background")
    seed: int = Field(0, ge=0, description="random seed; the same seed gives the same bytes")
    lesions: LesionConfig = Field(default_factory=LesionConfig)

    def resolved_cases(self) -> int:
        return len(self.backgrounds) if self.cases is None else int(self.cases)


def case_id(index: int) -> str:
    return f"case-{index + 1:04d}"


def simulate_ct_case(config: CTLesionCohortConfig, index: int, background: Image | None = None):
    """Case ``index``: (CT Image, mask Image, lesion rows); independent of the number of cases."""
    from sobre.image import load

    if not config.backgrounds and background is None:
        raise ConfigError("no CT backgrounds given", fix="pass --backgrounds PATH (a CT volume or DICOM folder)")
    src = config.backgrounds[index % len(config.backgrounds)] if config.backgrounds else None
    img = background if background is not None else load(src)
    rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), 3, int(index)]))
    cid = case_id(index)
    ct, mask, rows = insert_lesions(img, config.lesions, rng=rng, case_id=cid)
    for r in rows:
        r["background"] = Path(src).name if src else "in-memory"
    return ct, mask, rows

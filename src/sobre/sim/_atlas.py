"""The brain substrate: Colin27 T1, its brain mask and the AAL atlas, turned into a simulation atlas.

The simulation atlas keeps the 116 AAL regions where Colin27 shows tissue, and adds three labels
AAL does not have, derived from the T1 itself:

* 117 ``Ventricles``: the dark (CSF) component around the lateral and third ventricles, grown from a
  seed in the centre of the brain and kept at least 8 mm inside the brain mask;
* 118 ``White_Matter``: tissue inside the brain mask outside every AAL region (white matter,
  brainstem, and the few grey voxels AAL does not cover);
* 119 ``CSF``: dark voxels inside the brain mask that are not ventricles (sulci, cisterns), plus a
  3 mm shell outside the mask (extracerebral CSF). This is where tissue loss goes: the
  intracranial volume stays constant while the brain shrinks, as it does in adults.

Everything is on Colin27's 1 mm grid (181 x 217 x 181, MNI space).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sobre.errors import InputError

N_AAL = 116
VENTRICLES = 117
WHITE_MATTER = 118
CSF = 119
N_LABELS = 120  # 0 (outside) + 119

TEMPLATE_FILES = ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
CSF_THRESHOLD = 55.0  # Colin27 T1: CSF ~30, grey matter ~85, white matter ~110

# Region groups by AAL index: the unit at which age effects are configured.
REGION_GROUPS: dict[str, tuple[int, ...]] = {
    "frontal": tuple(range(1, 29)),            # precentral, frontal, rolandic, SMA, olfactory, rectus
    "insula_cingulate": tuple(range(29, 37)),
    "hippocampus": (37, 38),
    "parahippocampal": (39, 40),
    "amygdala": (41, 42),
    "visual": tuple(range(43, 49)),            # calcarine, cuneus, lingual
    "occipital": tuple(range(49, 57)),         # occipital sup/mid/inf, fusiform
    "parietal": tuple(range(57, 71)),          # postcentral, parietal, supramarginal, angular, precuneus, paracentral
    "caudate": (71, 72),
    "putamen_pallidum": (73, 74, 75, 76),
    "thalamus": (77, 78),
    "temporal": tuple(range(79, 91)),          # Heschl, temporal sup/mid/inf, temporal poles
    "cerebellum": tuple(range(91, 117)),
    "ventricles": (VENTRICLES,),
    "white_matter": (WHITE_MATTER,),
}


@dataclass(frozen=True)
class BrainTemplate:
    """Colin27 and the simulation atlas on the template's 1 mm grid.

    Attributes
    ----------
    t1 : ndarray (181, 217, 181) float32
        Colin27 T1, scaled so that white matter is 1.0.
    labels : ndarray (181, 217, 181) uint8
        Simulation atlas: 1-116 AAL, 117 ventricles, 118 white matter, 119 CSF, 0 outside.
    affine : ndarray (4, 4)
        Voxel -> LPS (mm).
    names : tuple of str
        ``names[label]``; ``names[0] == "Outside"``.
    volumes_mm3 : ndarray (120,)
        Volume of each label in the template.
    brain_centre : ndarray (3,)
        LPS centre of the brain mask (the centre of global scaling).
    source : str
        Folder the files were read from; ``digest`` identifies their content.
    """

    t1: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    names: tuple[str, ...]
    volumes_mm3: np.ndarray
    brain_centre: np.ndarray
    source: str
    digest: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1.shape)  # type: ignore[return-value]

    def label(self, name: str) -> int:
        """Label index of a region name (case-insensitive), e.g. ``"Hippocampus_L"`` -> 37."""
        low = name.lower()
        for i, n in enumerate(self.names):
            if n.lower() == low:
                return i
        raise InputError(f"unknown brain region {name!r}",
                         expected="an AAL region name (e.g. Hippocampus_L), Ventricles, White_Matter, CSF, "
                                  "or a region group (" + ", ".join(REGION_GROUPS) + ")",
                         found=name)

    def resolve_regions(self, spec: str) -> tuple[int, ...]:
        """Labels named by ``spec``: a group name, a region name, or a prefix ending in ``*``."""
        key = spec.strip()
        if key.lower() in REGION_GROUPS:
            return REGION_GROUPS[key.lower()]
        if key.endswith("*"):
            pre = key[:-1].lower()
            hits = tuple(i for i, n in enumerate(self.names) if i > 0 and n.lower().startswith(pre))
            if not hits:
                raise InputError(f"no brain region starts with {key[:-1]!r}", found=spec)
            return hits
        return (self.label(key),)


def default_template_dir() -> Path:
    """Folder of the Debian ``mricron-data`` templates in Sobre's sample cache."""
    from sobre import samples

    return samples.path("mricron-data") / "usr/share/mricron/templates"


def _read_names(path: Path) -> list[str]:
    names = ["Outside"] + [""] * N_AAL
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and 1 <= int(parts[0]) <= N_AAL:
            names[int(parts[0])] = parts[1]
    if any(not n for n in names[1:]):
        raise InputError("AAL name table is incomplete", path=path, expected=f"{N_AAL} numbered names")
    return names + ["Ventricles", "White_Matter", "CSF"]


@functools.lru_cache(maxsize=2)
def load_brain_template(template_dir: str | None = None) -> BrainTemplate:
    """Load Colin27 + AAL (cached) and build the simulation atlas.

    Parameters
    ----------
    template_dir : str, optional
        Folder holding ``ch2.nii.gz``, ``ch2bet.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt`` on one
        MNI-space grid; default: the ``mricron-data`` sample (``sobre samples fetch mricron-data``).
    """
    from scipy import ndimage as ndi

    from sobre.image import load

    folder = Path(template_dir) if template_dir else default_template_dir()
    missing = [f for f in TEMPLATE_FILES if not (folder / f).exists()]
    if missing:
        raise InputError("brain template files are missing", path=folder, expected=", ".join(TEMPLATE_FILES),
                         found="missing " + ", ".join(missing),
                         fix="run `sobre samples fetch mricron-data`, or pass a folder with these files")
    digest = hashlib.sha256()
    for f in TEMPLATE_FILES:
        digest.update((folder / f).read_bytes())
    t1_img = load(folder / "ch2.nii.gz")
    mask_img = load(folder / "ch2bet.nii.gz")
    aal_img = load(folder / "aal.nii.gz")
    for other, name in ((mask_img, "ch2bet.nii.gz"), (aal_img, "aal.nii.gz")):
        if other.shape != t1_img.shape or not np.allclose(other.affine, t1_img.affine, atol=1e-3):
            raise InputError("template files are not on one grid", path=folder / name,
                             expected=f"{t1_img.shape} like ch2.nii.gz", found=str(other.shape))
    t1 = np.asarray(t1_img.array, dtype=np.float32)
    mask = np.asarray(mask_img.array) > 0
    aal = np.asarray(aal_img.array).astype(np.int16)
    names = _read_names(folder / "aal.nii.txt")

    dark = mask & (t1 < CSF_THRESHOLD)
    # ventricles: the largest dark, non-AAL component near the centre of the brain (MNI mm), grown
    # through dark voxels that stay >= 8 mm inside the brain mask
    ijk = np.indices(t1.shape, dtype=np.float32).reshape(3, -1)
    ras = (t1_img.affine_ras[:3, :3] @ ijk + t1_img.affine_ras[:3, 3:]).reshape((3,) + t1.shape)
    del ijk
    central = (np.abs(ras[0]) < 35) & (ras[1] > -50) & (ras[1] < 35) & (ras[2] > -10) & (ras[2] < 35)
    del ras
    cand = dark & (aal == 0)
    lab, n = ndi.label(cand & central)
    if n == 0:
        raise InputError("no ventricles found in the template", path=folder / "ch2.nii.gz",
                         expected="an MNI-space T1 like Colin27")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    seed = lab == int(np.argmax(sizes))
    # depth inside the mask, on a 2 mm grid (8 times cheaper than at 1 mm; 1 mm precision is not needed)
    depth2 = ndi.distance_transform_edt(np.pad(mask, ((0, 1),) * 3)[::2, ::2, ::2], sampling=2.0)
    depth = depth2.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    allowed = cand & (depth > 8)
    grown, _ = ndi.label(allowed)
    ids = np.unique(grown[seed & allowed])
    ventricles = np.isin(grown, ids[ids > 0])
    del grown, lab, depth, allowed, cand, central

    labels = np.zeros(t1.shape, np.uint8)
    shell = ndi.binary_dilation(mask, iterations=3) & ~mask
    labels[shell] = CSF
    labels[mask & dark] = CSF
    labels[mask & ~dark] = WHITE_MATTER
    tissue_aal = mask & ~dark & (aal > 0)
    labels[tissue_aal] = aal[tissue_aal].astype(np.uint8)
    labels[ventricles] = VENTRICLES

    wm = float(np.median(t1[labels == WHITE_MATTER]))
    t1 = (t1 / wm).astype(np.float32)
    vox = float(abs(np.linalg.det(t1_img.affine[:3, :3])))
    volumes = np.bincount(labels.ravel(), minlength=N_LABELS).astype(np.float64) * vox
    idx = np.argwhere(mask)
    centre_vox = idx.mean(axis=0)
    centre = t1_img.affine[:3, :3] @ centre_vox + t1_img.affine[:3, 3]
    t1.setflags(write=False)
    labels.setflags(write=False)
    volumes.setflags(write=False)
    return BrainTemplate(t1=t1, labels=labels, affine=np.array(t1_img.affine), names=tuple(names),
                         volumes_mm3=volumes, brain_centre=np.asarray(centre, float), source=str(folder),
                         digest=digest.hexdigest())

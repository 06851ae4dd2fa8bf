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

A second real anatomy, ``substrate="itk-head"``: the T1 head of the ITK examples
(``KmeansTest_T1UCharRaw.nii.gz``, 2 x 2 x 3 mm, with its skull-strip mask), brought onto Colin27's
grid by a similarity transform (rotation, translation, one scale: its own shape is kept), with the
AAL atlas carried onto it by a non-linear registration of Colin27 to it (affine, then multi-level
symmetric demons; SimpleITK, single-threaded, deterministic). Ventricles, white matter and CSF are
derived from its own intensities by the same rules as for Colin27. Built once (about 30 s) and
cached in ``~/.cache/sobre/sim``; :attr:`BrainTemplate.notes` holds the registration's measured
quality (Dice of brain masks and tissue classes) and the map back to Colin27 (for template-space maps).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sobre.errors import InputError

N_AAL = 116
VENTRICLES = 117
WHITE_MATTER = 118
CSF = 119
N_LABELS = 120  # 0 (outside) + 119

TEMPLATE_FILES = ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
ITK_FILES = ("KmeansTest_T1UCharRaw.nii.gz", "KmeansTest_T1RawSkullStrip.nii.gz",
             "KmeansTest_T1KmeansPrelimSegmentation.nii.gz")
ITK_BUILD_VERSION = 1
SUBSTRATES = ("colin27", "itk-head")
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
    substrate : str
        ``"colin27"`` or ``"itk-head"`` (the real anatomy).
    notes : dict
        ``itk-head``: registration quality (``quality``) and ``to_colin`` (3, X, Y, Z) float32: for the
        template voxels of a 2 mm grid (``to_colin_step``), the Colin27 voxel they correspond to.
    """

    t1: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    names: tuple[str, ...]
    volumes_mm3: np.ndarray
    brain_centre: np.ndarray
    source: str
    digest: str
    substrate: str = "colin27"
    notes: dict = field(default_factory=dict, compare=False, repr=False)

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


def default_itk_dir() -> Path:
    """Folder of the ITK examples' data (Debian ``insighttoolkit5-examples``) in Sobre's sample cache."""
    from sobre import samples

    return samples.path("itk-examples") / "usr/share/doc/insighttoolkit5-examples/examples/Data"


def _read_names(path: Path) -> list[str]:
    names = ["Outside"] + [""] * N_AAL
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and 1 <= int(parts[0]) <= N_AAL:
            names[int(parts[0])] = parts[1]
    if any(not n for n in names[1:]):
        raise InputError("AAL name table is incomplete", path=path, expected=f"{N_AAL} numbered names")
    return names + ["Ventricles", "White_Matter", "CSF"]


@functools.lru_cache(maxsize=3)
def load_brain_template(template_dir: str | None = None, substrate: str = "colin27",
                        itk_dir: str | None = None) -> BrainTemplate:
    """Load a real anatomy with the simulation atlas (cached).

    Parameters
    ----------
    template_dir : str, optional
        Folder holding ``ch2.nii.gz``, ``ch2bet.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt`` on one
        MNI-space grid; default: the ``mricron-data`` sample (``sobre samples fetch mricron-data``).
    substrate : {"colin27", "itk-head"}
        Colin27 itself, or the ITK examples' T1 head carrying the same atlas (see the module docstring).
    itk_dir : str, optional
        Folder of the ITK example files (default: the ``itk-examples`` sample).
    """
    from sobre.image import load

    if substrate not in SUBSTRATES:
        raise InputError(f"unknown anatomy substrate {substrate!r}", expected=", ".join(SUBSTRATES), found=substrate)
    folder = Path(template_dir) if template_dir else default_template_dir()
    _check_files(folder, TEMPLATE_FILES, "run `sobre samples fetch mricron-data`, or pass a folder with these files")
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
    notes: dict = {}
    source = str(folder)
    if substrate == "itk-head":
        idir = Path(itk_dir) if itk_dir else default_itk_dir()
        _check_files(idir, ITK_FILES, "run `sobre samples fetch itk-examples`, or pass the folder with these files")
        for f in ITK_FILES:
            digest.update((idir / f).read_bytes())
        digest.update(f"itk-head/{ITK_BUILD_VERSION}".encode())
        t1, mask, aal, notes = _itk_substrate(folder, idir, digest.hexdigest(), t1, mask)
        source = f"{idir} (registered to {folder})"
    labels = _simulation_atlas(t1, mask, aal, t1_img.affine_ras, folder)

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
                         volumes_mm3=volumes, brain_centre=np.asarray(centre, float), source=source,
                         digest=digest.hexdigest(), substrate=substrate, notes=notes)


def _check_files(folder: Path, files: tuple[str, ...], fix: str) -> None:
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise InputError("brain template files are missing", path=folder, expected=", ".join(files),
                         found="missing " + ", ".join(missing), fix=fix)


def _simulation_atlas(t1: np.ndarray, mask: np.ndarray, aal: np.ndarray, affine_ras: np.ndarray,
                      folder: Path) -> np.ndarray:
    """Labels 1-116 AAL on tissue, 117 ventricles, 118 other tissue, 119 CSF (see the module docstring).

    ``t1`` on Colin27's intensity scale (white matter ~110), ``mask`` the brain, ``aal`` on the same grid.
    """
    from scipy import ndimage as ndi

    dark = mask & (t1 < CSF_THRESHOLD)
    # ventricles: the largest dark, non-AAL component near the centre of the brain (MNI mm), grown
    # through dark voxels that stay >= 8 mm inside the brain mask
    ijk = np.indices(t1.shape, dtype=np.float32).reshape(3, -1)
    ras = (affine_ras[:3, :3] @ ijk + affine_ras[:3, 3:]).reshape((3,) + t1.shape)
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
    return labels


# --------------------------------------------------------------------------- the second anatomy
def _itk_substrate(colin_dir: Path, itk_dir: Path, digest: str, colin_t1: np.ndarray, colin_mask: np.ndarray):
    """(t1 on Colin's intensity scale, mask, aal, notes) of the ITK head on Colin27's grid (cached on disk)."""
    from sobre.sim._cache import load_npz, sim_cache_dir, store_npz

    path = None
    try:
        path = sim_cache_dir() / f"itk-head-{digest[:16]}.npz"
    except Exception:  # noqa: BLE001 - no cache folder: build every time
        path = None
    got = load_npz(path)
    if got is None:
        got = _register_itk_head(colin_dir, itk_dir, colin_t1, colin_mask)
        store_npz(path, got, compressed=True)
    quality = {k[8:]: float(v) for k, v in got.items() if k.startswith("quality_")}
    notes = {"quality": quality, "to_colin": got["to_colin"], "to_colin_step": 2}
    return got["t1"].astype(np.float32), got["mask"].astype(bool), got["aal"].astype(np.int16), notes


def _register_itk_head(colin_dir: Path, itk_dir: Path, colin_t1: np.ndarray, colin_mask: np.ndarray) -> dict:
    """Register (see the module docstring); returns the arrays and the measured quality."""
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the same bits on every run
    try:
        return _register(sitk, colin_dir, itk_dir, colin_t1, colin_mask)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _register(sitk, colin_dir: Path, itk_dir: Path, colin_t1: np.ndarray, colin_mask: np.ndarray) -> dict:
    arr = sitk.GetArrayFromImage
    colin = sitk.Cast(sitk.ReadImage(str(colin_dir / "ch2.nii.gz")), sitk.sitkFloat32)
    cmask = sitk.ReadImage(str(colin_dir / "ch2bet.nii.gz")) > 0
    aal = sitk.ReadImage(str(colin_dir / "aal.nii.gz"))
    itk = sitk.Cast(sitk.ReadImage(str(itk_dir / ITK_FILES[0])), sitk.sitkFloat32)
    imask = sitk.ReadImage(str(itk_dir / ITK_FILES[1])) > 0

    def on_grid(im, step: float):
        size = [int(round(n / step)) for n in colin.GetSize()]
        sm = sitk.SmoothingRecursiveGaussian(im, 0.4 * step) if step > 1 else im
        return sitk.Resample(sm, size, sitk.Transform(), sitk.sitkLinear, im.GetOrigin(), [float(step)] * 3,
                             im.GetDirection())

    # 1. similarity (7 parameters) of the ITK head onto Colin27: its own shape is kept
    fixed = on_grid(sitk.Mask(colin, cmask), 2)
    moving = sitk.Mask(itk, imask)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.2, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 300, relaxationFactor=0.7)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    similarity = reg.Execute(fixed, moving)
    itk_c = sitk.Resample(itk, colin, similarity, sitk.sitkBSpline, 0.0)
    imask_c = sitk.Resample(sitk.Cast(imask, sitk.sitkFloat32), colin, similarity, sitk.sitkLinear, 0.0) > 0.5

    def to_wm(im, m):  # intensities / white matter (median of the brightest 40 % of the brain)
        a = arr(im)
        mm = arr(m) > 0
        wm = float(np.median(a[mm & (a > np.percentile(a[mm], 60))]))
        out = sitk.GetImageFromArray((np.clip(a, 0, None) / wm * mm).astype(np.float32))
        out.CopyInformation(im)
        return out, wm

    f1, wm_itk = to_wm(itk_c, imask_c)
    m1, _ = to_wm(colin, cmask)
    # 2. affine of Colin27 onto it (correlation, 2 mm), then multi-level symmetric demons (4 mm, 2 mm)
    f2, m2 = on_grid(f1, 2), on_grid(m1, 2)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, relaxationFactor=0.7)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(sitk.CenteredTransformInitializer(f2, m2, sitk.AffineTransform(3),
                                                              sitk.CenteredTransformInitializerFilter.GEOMETRY),
                            inPlace=False)
    affine = reg.Execute(f2, m2)
    disp_field = None
    for step, iterations, sd in ((4, 100, 2.0), (2, 100, 1.5)):
        f = on_grid(f1, step)
        m = sitk.Resample(on_grid(m1, step), f, affine, sitk.sitkLinear, 0.0)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetStandardDeviations(sd)
        if disp_field is None:
            disp_field = demons.Execute(f, m)
        else:
            start = sitk.Resample(disp_field, f, sitk.Transform(), sitk.sitkLinear, 0.0, disp_field.GetPixelID())
            disp_field = demons.Execute(f, m, start)
    field2 = disp_field  # on the 2 mm grid
    warp = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(
        sitk.Cast(sitk.Image(field2), sitk.sitkVectorFloat64))])  # ITK point -> Colin27 point

    aal_i = arr(sitk.Resample(aal, f1, warp, sitk.sitkNearestNeighbor, 0)).astype(np.int16)
    # measured quality: brain masks and tissue classes (CSF < 0.5 WM < GM < 0.87 WM < WM) overlap
    fa, im = arr(f1), arr(imask_c) > 0

    def classes(a, m):
        csf = m & (a < 0.5)
        wm = m & (a > 0.87)
        return csf, m & ~csf & ~wm, wm

    def dice(a, b):
        return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))

    quality = {}
    ic = classes(fa, im)
    for name, tr in (("similarity", sitk.Transform()), ("affine", affine), ("nonlinear", warp)):
        ct = arr(sitk.Resample(m1, f1, tr, sitk.sitkLinear, 0.0))
        cm = ct > 0.05
        cc = classes(ct, cm)
        quality[f"{name}_dice_brain"] = dice(cm, im)
        for k, tissue in enumerate(("csf", "gm", "wm")):
            quality[f"{name}_dice_{tissue}"] = dice(cc[k], ic[k])
    quality["itk_gm_with_aal"] = float((aal_i > 0)[ic[1]].mean())
    # the map back to Colin27 on a 2 mm grid of template voxels (for template-space maps)
    size2 = [int(round(n / 2)) for n in colin.GetSize()]
    spacing2 = [2.0 * sp for sp in colin.GetSpacing()]
    dfield = sitk.TransformToDisplacementField(warp, sitk.sitkVectorFloat64, size2, colin.GetOrigin(), spacing2,
                                               colin.GetDirection())
    d = arr(dfield)  # (z, y, x, 3) physical displacements
    idx = np.indices(size2[::-1], dtype=np.float64)[::-1] * 2.0  # (3, z, y, x): colin (i, j, k) of each point
    m = np.asarray(colin.GetDirection(), float).reshape(3, 3) * np.asarray(colin.GetSpacing(), float)[None, :]
    origin = np.asarray(colin.GetOrigin(), float)
    phys = np.tensordot(m, idx, axes=([1], [0])) + origin[:, None, None, None] + np.moveaxis(d, -1, 0)
    to_colin = np.tensordot(np.linalg.inv(m), phys - origin[:, None, None, None], axes=([1], [0]))
    # SimpleITK arrays are (z, y, x): back to (x, y, z) = the template's [i, j, k]
    def wm_level(a, msk):
        return float(np.median(a[msk & (a > np.percentile(a[msk], 60))]))

    t1 = np.transpose(arr(itk_c), (2, 1, 0)).clip(0, None) / wm_itk * wm_level(colin_t1, colin_mask)
    result = {"t1": t1.astype(np.float32), "mask": np.transpose(im, (2, 1, 0)),
              "aal": np.transpose(aal_i, (2, 1, 0)),
              "to_colin": np.transpose(to_colin, (0, 3, 2, 1)).astype(np.float32)}
    result.update({f"quality_{k}": np.float64(v) for k, v in quality.items()})
    return result

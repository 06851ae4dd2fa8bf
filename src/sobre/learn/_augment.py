"""Augmentations: the typed ``[[augment]]`` settings mapped onto MONAI transforms.

Spatial transforms act on the image and, for segmentation, on its mask (nearest-neighbour);
intensity transforms on the image only. MONAI's metadata tracking is switched off for speed
(plain tensors, no ``MetaTensor``). The random state is reset from ``(seed, epoch)`` at the start
of every epoch, so a resumed run draws exactly the augmentations an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Augmenter"]


def _transforms(cfgs, spatial_shape: Sequence[int], keys: list[str], patch: Sequence[int] | None):
    import monai.transforms as mt

    dims = len(spatial_shape)
    img = ["image"]
    modes = ["bilinear", "nearest"][: len(keys)]
    out = []
    if patch is not None:
        if "label" in keys:
            out.append(mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(patch), pos=1, neg=1,
                                                 num_samples=1, allow_smaller=True))
        else:
            out.append(mt.RandSpatialCropd(keys=keys, roi_size=list(patch), random_size=False))
    shape = list(patch) if patch is not None else list(spatial_shape)
    for c in cfgs:
        k = c.kind
        if k == "flip":
            for ax in c.axes:
                if ax >= dims:
                    continue
                out.append(mt.RandFlipd(keys=keys, prob=c.prob, spatial_axis=ax))
        elif k == "affine":
            rot = math.radians(c.rotate_deg)
            fixed = not any(isinstance(t, mt.RandScaleCropd) for t in out)  # the grid can be cached
            out.append(mt.RandAffined(keys=keys, prob=c.prob, rotate_range=[rot] * (3 if dims == 3 else 1),
                                      scale_range=[c.scale] * dims, translate_range=[c.translate] * dims,
                                      mode=modes, padding_mode="zeros", spatial_size=shape if fixed else None,
                                      cache_grid=fixed))
        elif k == "crop":
            lo, hi = c.scale
            out.append(mt.RandScaleCropd(keys=keys, roi_scale=lo, max_roi_scale=hi, random_size=True))
            out.append(mt.Resized(keys=keys, spatial_size=shape, mode=["trilinear" if dims == 3 else "bilinear",
                                                                       "nearest"][: len(keys)]))
        elif k == "noise":
            out.append(mt.RandGaussianNoised(keys=img, prob=c.prob, std=c.std))
        elif k == "intensity":
            out.append(mt.RandScaleIntensityd(keys=img, prob=c.prob, factors=c.scale))
            out.append(mt.RandShiftIntensityd(keys=img, prob=c.prob, offsets=c.shift))
        elif k == "gamma":
            out.append(mt.RandAdjustContrastd(keys=img, prob=c.prob, gamma=tuple(c.gamma)))
        elif k == "blur":
            s = tuple(c.sigma)
            kw = {"sigma_x": s, "sigma_y": s} | ({"sigma_z": s} if dims == 3 else {})
            out.append(mt.RandGaussianSmoothd(keys=img, prob=c.prob, **kw))
        elif k == "bias_field":
            out.append(mt.RandBiasFieldd(keys=img, prob=c.prob, coeff_range=(0.0, c.coeff)))
        elif k == "cutout":
            side = max(1, int(round(c.size * min(shape))))
            out.append(mt.RandCoarseDropoutd(keys=img, prob=c.prob, holes=c.holes, spatial_size=[side] * dims,
                                             fill_value=0.0))
        else:  # pragma: no cover - the config union is closed
            raise ValueError(f"unknown augmentation {k!r}")
    return mt.Compose(out) if out else None


class Augmenter:
    """Per-sample random augmentation of ``(image, mask)``.

    Parameters
    ----------
    cfgs : list of augmentation settings (``[[augment]]`` tables)
    spatial_shape : tuple of int
    seed : int
    with_mask : bool
        Also transform a label map (segmentation).
    patch : tuple of int, optional
        Random training patch (segmentation; half the patches centred on foreground).

    Examples
    --------
    >>> from sobre.learn._config import FlipAug
    >>> aug = Augmenter([FlipAug(kind="flip", prob=1.0, axes=[0])], (4, 4, 4), seed=0)
    >>> x = torch.arange(64.0).reshape(1, 4, 4, 4)
    >>> bool(torch.equal(aug(x)[0], torch.flip(x, [1])))
    True
    """

    def __init__(self, cfgs, spatial_shape, seed: int = 0, with_mask: bool = False, patch=None) -> None:
        from monai.data import set_track_meta

        set_track_meta(False)
        self.keys = ["image", "label"] if with_mask else ["image"]
        self.seed = int(seed)
        self.compose = _transforms(list(cfgs), spatial_shape, self.keys, patch)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, worker: int = 0) -> None:
        if self.compose is not None:
            ss = np.random.SeedSequence([self.seed, int(epoch), int(worker), 0xA06])
            self.compose.set_random_state(seed=int(ss.generate_state(1)[0] % (2 ** 31)))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        if self.compose is None:
            return image, mask
        d = {"image": image}
        if mask is not None:
            d["label"] = mask[None] if mask.ndim == image.ndim - 1 else mask
        out = self.compose(d)
        if isinstance(out, list):
            out = out[0]
        img = torch.as_tensor(out["image"], dtype=torch.float32)
        lab = out.get("label")
        if lab is not None:
            lab = torch.as_tensor(lab)[0].long()
        return img.contiguous(), lab

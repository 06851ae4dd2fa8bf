"""Which series an application accepts, and why it refuses the others.

An :class:`Accept` is a typed set of rules (a :class:`~sobre.base.Config`: it can come from TOML).
:meth:`Accept.check` judges one image from its header facts alone (no pixel is read) and returns a
:class:`Verdict` listing every rule the image breaks, each a :class:`Refusal` with the rule's name,
what it expects and what the image has — so that a refused series says *why*.

>>> rules = Accept(modality=["CT"], dims=3, exclude_description="scout|localizer")
>>> import numpy as np, sobre
>>> mr = sobre.Image(np.zeros((8, 8, 4), np.int16), modality="MR", metadata={"series_description": "T1 axial"})
>>> v = rules.check(mr)
>>> v.accepted, [r.rule for r in v.refusals]
(False, ['modality'])
>>> print(v.refusals[0])
rule 'modality': expected modality CT; found MR
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator

from sobre.base import Config

__all__ = ["Accept", "Verdict", "Refusal", "image_facts"]


@dataclass(frozen=True)
class Refusal:
    """One rule an image breaks."""

    rule: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"rule '{self.rule}': expected {self.expected}; found {self.found}"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "expected": self.expected, "found": self.found, "message": str(self)}


@dataclass
class Verdict:
    """Whether an image is accepted; when not, every rule it breaks."""

    series: str
    refusals: list[Refusal] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return not self.refusals

    def reason(self) -> str:
        """All refusals in one line (empty when accepted)."""
        return "; ".join(str(r) for r in self.refusals)

    def to_dict(self) -> dict:
        return {"series": self.series, "accepted": self.accepted, "refusals": [r.to_dict() for r in self.refusals],
                "facts": self.facts}


def image_facts(image, catalogued: dict | None = None) -> dict:
    """What the rules look at, from an Image's header metadata and geometry (no pixel read).

    ``catalogued``: what a workspace knows of the series (a NIfTI file's modality, for instance),
    used where the image itself says nothing.
    """
    meta = {**(catalogued or {}), **{k: v for k, v in (image.metadata or {}).items() if v not in (None, "")}}
    spacing = [round(float(v), 4) for v in image.spacing[:image.spatial_ndim]]
    n_slices = image.spatial_shape[2] if image.spatial_ndim == 3 else 1
    return {"modality": (image.modality or meta.get("modality") or "").upper() or None,
            "body_part": (meta.get("body_part") or "").strip().upper() or None,
            "series_description": meta.get("series_description") or None,
            "protocol": meta.get("protocol") or None,
            "dims": int(image.spatial_ndim), "shape": list(image.spatial_shape), "slices": int(n_slices),
            "spacing_mm": spacing, "coordinate_system": image.coordinate_system,
            "extra_axes": list(image.extra_axes), "series_uid": meta.get("series_uid")}


class Accept(Config):
    """Rules a series must meet to be processed; each unset rule accepts anything.

    Text rules ignore case. ``description`` / ``exclude_description`` are regular expressions
    searched in the series description (and the protocol name).
    """

    modality: list[str] | None = Field(None, description="DICOM modalities accepted, e.g. [\"CT\"]")
    modality_required: bool = Field(True, description="refuse images that state no modality (NIfTI files "
                                    "outside a workspace); false accepts them")
    body_part: list[str] | None = Field(None, description="BodyPartExamined values accepted, e.g. [\"CHEST\"]")
    body_part_required: bool = Field(False, description="refuse series that do not state their body part "
                                     "(by default only a stated, different body part is refused)")
    description: str | None = Field(None, description="regex the series description or protocol must match")
    exclude_description: str | None = Field(None, description="regex that refuses a series when it matches, "
                                            "e.g. \"scout|localizer|topogram\"")
    dims: Literal[2, 3] | None = Field(None, description="spatial dimensionality")
    min_slices: int | None = Field(None, ge=1, description="3D: fewest slices")
    max_spacing_mm: float | None = Field(None, gt=0, description="coarsest voxel size along any axis")
    patient_frame: bool = Field(True, description="require a patient coordinate frame (LPS geometry)")
    grey_level: bool = Field(True, description="refuse colour, time or frame axes")

    @field_validator("description", "exclude_description")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    def check(self, image, series: str | None = None, catalogued: dict | None = None) -> Verdict:
        """Judge ``image`` (a :class:`sobre.Image`, with what a workspace knows of it): every rule it breaks."""
        f = image_facts(image, catalogued)
        out: list[Refusal] = []
        if self.modality is not None:
            want = [m.upper() for m in self.modality]
            if (f["modality"] or self.modality_required) and f["modality"] not in want:
                out.append(Refusal("modality", "modality " + " or ".join(want), f["modality"] or "no modality"))
        if self.body_part is not None:
            want = [b.upper() for b in self.body_part]
            bp = f["body_part"]
            if (bp is None and self.body_part_required) or (bp is not None and bp not in want):
                out.append(Refusal("body_part", "body part " + " or ".join(want), bp or "no BodyPartExamined"))
        text = " | ".join(x for x in (f["series_description"], f["protocol"]) if x)
        if self.description is not None and not re.search(self.description, text, re.IGNORECASE):
            out.append(Refusal("description", f"a series description matching /{self.description}/",
                               repr(text) if text else "no series description"))
        if self.exclude_description is not None and text and re.search(self.exclude_description, text,
                                                                        re.IGNORECASE):
            out.append(Refusal("exclude_description", f"no series description matching /{self.exclude_description}/",
                               repr(text)))
        if self.dims is not None and f["dims"] != self.dims:
            out.append(Refusal("dims", f"a {self.dims}D image", f"a {f['dims']}D image of shape {tuple(f['shape'])}"))
        if self.min_slices is not None and f["dims"] == 3 and f["slices"] < self.min_slices:
            out.append(Refusal("min_slices", f"at least {self.min_slices} slices", f"{f['slices']}"))
        if self.max_spacing_mm is not None and max(f["spacing_mm"]) > self.max_spacing_mm:
            out.append(Refusal("max_spacing_mm", f"voxels of at most {self.max_spacing_mm:g} mm",
                               f"spacing {tuple(f['spacing_mm'])} mm"))
        if self.patient_frame and f["coordinate_system"] != "LPS":
            out.append(Refusal("patient_frame", "a patient coordinate frame (ImagePositionPatient and "
                               "ImageOrientationPatient)", f"{f['coordinate_system']} coordinates"))
        if self.grey_level and f["extra_axes"]:
            out.append(Refusal("grey_level", "a grey-level image", f"extra axes {tuple(f['extra_axes'])}"))
        return Verdict(series or f["series_uid"] or "image", out, f)

"""Typed de-identification options: :class:`DeidProfile` and its parts.

A profile is plain data, what the engine applies. Users write it as the ``[privacy]`` table of a
workspace's ``sobre.toml`` (or any TOML file): :class:`PrivacySettings`, a typed configuration that
refuses unknown keys (with the nearest valid one) and values of the wrong type, and gives the
profile with :meth:`PrivacySettings.profile`. Every de-identification report records
:meth:`DeidProfile.to_dict`.

Example ``sobre.toml``::

    [privacy]
    deidentify = true                      # ingest, pull and listen de-identify on the way in
    retain_patient_characteristics = true  # age, sex, size, weight (PS3.15 option 113108)
    retain_modified_dates = true           # one date shift per subject (113107)
    clean_descriptions = true              # descriptions kept, identifying text removed (113105)
    clean_structured_content = true        # SR content trees kept and cleaned (113104)
    retain_safe_private = true             # private tags on the safe list kept (113111)
    date_shift_days = [-3650, -365]
    safe_private = [["SIEMENS MR HEADER", "0019", "0C"]]   # added to the default safe list

    [[privacy.blank]]                      # rectangles blanked in the pixels (Clean Pixel Data)
    x = 0
    y = 0
    width = 640
    height = 60
    modality = "US"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, StrictBool, field_validator, model_validator

from sobre.base import Config, validate_config
from sobre.errors import ConfigError

__all__ = ["DeidProfile", "BlankRegion", "SafePrivateTag", "DEFAULT_SAFE_PRIVATE", "PrivacySettings",
           "BlankRegionSettings"]


@dataclass(frozen=True)
class SafePrivateTag:
    """A private attribute known to carry no identifying information.

    Private tags are identified by their creator string, group and the low byte of the element
    (``(0019,xx0C)`` in the block reserved by "SIEMENS MR HEADER" is
    ``SafePrivateTag("SIEMENS MR HEADER", 0x0019, 0x0C)``), since the block number varies per file.
    """

    creator: str
    group: int
    offset: int
    name: str = ""

    def key(self) -> tuple[str, int, int]:
        return (self.creator.strip().upper(), self.group, self.offset)


# A conservative subset of PS3.15 Table E.3.10-1 (Safe Private Attributes): numeric acquisition
# parameters that research pipelines need (diffusion b-values and directions). Extend per project.
DEFAULT_SAFE_PRIVATE: tuple[SafePrivateTag, ...] = (
    SafePrivateTag("SIEMENS MR HEADER", 0x0019, 0x0B, "SliceMeasurementDuration"),
    SafePrivateTag("SIEMENS MR HEADER", 0x0019, 0x0C, "B_value"),
    SafePrivateTag("SIEMENS MR HEADER", 0x0019, 0x0D, "DiffusionDirectionality"),
    SafePrivateTag("SIEMENS MR HEADER", 0x0019, 0x0E, "DiffusionGradientDirection"),
    SafePrivateTag("SIEMENS MR HEADER", 0x0019, 0x27, "B_matrix"),
    SafePrivateTag("GEMS_PARM_01", 0x0043, 0x39, "Slop_int_6...slop_int_9 (b-value)"),
    SafePrivateTag("GEMS_ACQU_01", 0x0019, 0xBB, "User data 20 (diffusion direction)"),
    SafePrivateTag("GEMS_ACQU_01", 0x0019, 0xBC, "User data 21 (diffusion direction)"),
    SafePrivateTag("GEMS_ACQU_01", 0x0019, 0xBD, "User data 22 (diffusion direction)"),
    SafePrivateTag("Philips Imaging DD 001", 0x2001, 0x03, "Diffusion B-Factor"),
    SafePrivateTag("Philips Imaging DD 001", 0x2001, 0x04, "Diffusion Direction"),
)


@dataclass(frozen=True)
class BlankRegion:
    """A rectangle of pixels to set to zero, in every frame of matching images.

    ``x``/``y`` are the column/row of the top-left corner (0-based), ``width``/``height`` in
    pixels. The optional criteria (``modality``, ``manufacturer``, ``model``, ``rows``,
    ``columns``) must all match the image for the rectangle to apply; leave them unset to blank
    every image. Typical use: the banner of one ultrasound model, ``BlankRegion(0, 0, 640, 60,
    modality="US", model="LOGIQE9")``.
    """

    x: int
    y: int
    width: int
    height: int
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"blank region {name} must be a non-negative integer",
                                  expected="int >= 0", found=repr(value))
        if self.width == 0 or self.height == 0:
            raise ConfigError("blank region is empty", expected="width and height > 0",
                              found=f"{self.width}x{self.height}")

    def matches(self, ds) -> bool:
        """Whether this rectangle applies to dataset ``ds``."""
        def same(want, have) -> bool:
            return want is None or str(have or "").strip().upper() == str(want).strip().upper()

        return (
            same(self.modality, ds.get("Modality"))
            and same(self.manufacturer, ds.get("Manufacturer"))
            and same(self.model, ds.get("ManufacturerModelName"))
            and (self.rows is None or int(ds.get("Rows") or 0) == self.rows)
            and (self.columns is None or int(ds.get("Columns") or 0) == self.columns)
        )

    @classmethod
    def parse(cls, text: str) -> "BlankRegion":
        """Parse the CLI form ``X,Y,WIDTH,HEIGHT[,MODALITY]``."""
        parts = [p.strip() for p in text.split(",")]
        try:
            nums = [int(p) for p in parts[:4]]
        except ValueError:
            nums = []
        if len(nums) != 4 or len(parts) > 5:
            raise ConfigError("cannot read blank region", expected="X,Y,WIDTH,HEIGHT[,MODALITY]", found=text)
        return cls(*nums, modality=parts[4] if len(parts) == 5 and parts[4] else None)


@dataclass(frozen=True)
class DeidProfile:
    """What de-identification keeps and how: PS3.15 Basic Profile plus research options.

    Parameters
    ----------
    retain_patient_characteristics : bool
        Keep age, sex, size, weight, ethnic group, smoking and pregnancy status (option 113108);
        Patient's Age is computed from the birth date when missing.
    retain_modified_dates : bool
        Shift every date by one keyed offset per subject, so intervals survive (113107);
        otherwise dates are removed or replaced by dummies.
    clean_descriptions : bool
        Keep descriptions (series, study, protocol, comments...) with identifying values removed
        (113105); otherwise they are removed as the Basic Profile says.
    clean_structured_content : bool
        Keep SR content trees, cleaning every item (113104); otherwise the tree is removed.
    retain_safe_private : bool
        Keep private attributes on ``safe_private`` (113111); all other private data goes.
    safe_private : tuple of SafePrivateTag
        The safe list (defaults to :data:`DEFAULT_SAFE_PRIVATE`).
    date_shift_days : tuple of int
        Range ``(low, high)`` of the per-subject shift in days.
    blank_regions : tuple of BlankRegion
        Rectangles to blank in the pixel data (Clean Pixel Data, 113101).
    pseudonym_prefix : str
        Prefix of subject pseudonyms (``SUBJ-`` + 10 base32 characters).
    site_pseudonyms : bool
        Replace Institution Name by a keyed site pseudonym (``SITE-`` + 6 base32 characters of an HMAC
        of the normalised name) instead of removing it: a PS3.15 "D" action (a dummy value), chosen
        consistently so that de-identified multi-site data keeps its sites apart — site effects must
        stay measurable. Institution address and department are still removed.
    """

    retain_patient_characteristics: bool = True
    retain_modified_dates: bool = True
    clean_descriptions: bool = True
    clean_structured_content: bool = True
    retain_safe_private: bool = True
    safe_private: tuple[SafePrivateTag, ...] = DEFAULT_SAFE_PRIVATE
    date_shift_days: tuple[int, int] = (-3650, -365)
    blank_regions: tuple[BlankRegion, ...] = ()
    pseudonym_prefix: str = "SUBJ-"
    site_pseudonyms: bool = True

    def __post_init__(self) -> None:
        low, high = self.date_shift_days
        if low > high:
            raise ConfigError("date_shift_days is an empty range", expected="[low, high] with low <= high",
                              found=f"[{low}, {high}]")
        if low <= 0 <= high and low == high:
            raise ConfigError("date_shift_days allows only 0", expected="a range with a non-zero day",
                              found=f"[{low}, {high}]")
        if not self.pseudonym_prefix.isascii() or len(self.pseudonym_prefix) > 40:
            raise ConfigError("pseudonym_prefix must be short ASCII", found=repr(self.pseudonym_prefix))

    @classmethod
    def basic(cls) -> "DeidProfile":
        """The Basic Profile with no option: nothing retained, dates and descriptions removed."""
        return cls(retain_patient_characteristics=False, retain_modified_dates=False,
                   clean_descriptions=False, clean_structured_content=False, retain_safe_private=False,
                   site_pseudonyms=False)

    def option_codes(self, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
        """CID 7050 codes ``(value, meaning)`` for De-identification Method Code Sequence."""
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if pixels_cleaned:
            codes.append(("113101", "Clean Pixel Data Option"))
        if self.clean_structured_content:
            codes.append(("113104", "Clean Structured Content Option"))
        if self.clean_descriptions:
            codes.append(("113105", "Clean Descriptors Option"))
        if self.retain_modified_dates:
            codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
        if self.retain_patient_characteristics:
            codes.append(("113108", "Retain Patient Characteristics Option"))
        if self.retain_safe_private:
            codes.append(("113111", "Retain Safe Private Option"))
        return codes

    def to_dict(self) -> dict:
        """JSON-able form (for reports and run records)."""
        d = asdict(self)
        defaults = {s.key() for s in DEFAULT_SAFE_PRIVATE}
        mine = {s.key() for s in self.safe_private}
        d["default_safe_private"] = defaults <= mine
        d["safe_private"] = [[s.creator, f"{s.group:04X}", f"{s.offset:02X}", s.name] for s in self.safe_private
                             if not (d["default_safe_private"] and s.key() in defaults)]
        d["date_shift_days"] = list(self.date_shift_days)
        d["blank_regions"] = [{k: v for k, v in asdict(b).items() if v is not None} for b in self.blank_regions]
        return d

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str | None = None) -> "DeidProfile":
        """A profile from a ``[privacy]`` table (see :class:`PrivacySettings`); bad keys raise ConfigError."""
        return validate_config(dict(data), PrivacySettings, path=source, section="privacy").profile()


class BlankRegionSettings(Config):
    """A ``[[privacy.blank]]`` table: a rectangle blanked in matching images (see :class:`BlankRegion`)."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = Field(None, gt=0)
    columns: int | None = Field(None, gt=0)


class PrivacySettings(Config):
    """The ``[privacy]`` table of a workspace's ``sobre.toml`` (and of ``sobre deid --profile FILE``).

    ``deidentify = true`` makes the workspace refuse to store identifiable data: every intake (Python
    ``Workspace.ingest``, ``sobre ingest``, ``pull``, ``listen``, later the server and the inference
    service) de-identifies on the way in. The other keys are the options of :class:`DeidProfile`;
    ``safe_private`` entries (``["CREATOR", "GGGG", "EE"]``, hex) are added to the default safe list
    unless ``default_safe_private = false``; ``key_file`` keeps the project key outside the workspace
    (e.g. on a separate secure volume; default ``secrets/project.key`` inside it).
    """

    docs: ClassVar[str] = "docs/privacy.md"

    deidentify: StrictBool = False
    key_file: str | None = None
    retain_patient_characteristics: StrictBool = True
    retain_modified_dates: StrictBool = True
    clean_descriptions: StrictBool = True
    clean_structured_content: StrictBool = True
    retain_safe_private: StrictBool = True
    default_safe_private: StrictBool = True
    safe_private: list[Annotated[list[str], Field(min_length=3, max_length=4)]] = []
    date_shift_days: tuple[int, int] = (-3650, -365)
    blank: list[BlankRegionSettings] = Field([], validation_alias=AliasChoices("blank", "blank_regions"))
    pseudonym_prefix: str = Field("SUBJ-", max_length=40)
    site_pseudonyms: StrictBool = True

    @field_validator("safe_private")
    @classmethod
    def _private_tags(cls, entries):
        for entry in entries:
            try:
                group, offset = int(entry[1], 16), int(entry[2], 16)
            except ValueError:
                raise ValueError(f"safe_private entry {entry!r}: group and element offset must be hexadecimal "
                                 '(e.g. ["SIEMENS MR HEADER", "0019", "0C"])') from None
            if group % 2 == 0 or not 0 <= offset <= 0xFF:
                raise ValueError(f"safe_private entry {entry!r} is not a private element "
                                 "(expected an odd group and an offset 00..FF)")
        return entries

    @model_validator(mode="after")
    def _rules(self):
        low, high = self.date_shift_days
        if low > high:
            raise ValueError(f"date_shift_days [{low}, {high}] is an empty range (expected [low, high], low <= high)")
        if low == high == 0:
            raise ValueError("date_shift_days [0, 0] allows only 0: dates would not be shifted")
        if not self.pseudonym_prefix.isascii():
            raise ValueError(f"pseudonym_prefix must be ASCII, not {self.pseudonym_prefix!r}")
        return self

    def profile(self) -> DeidProfile:
        """The engine's :class:`DeidProfile` for these settings."""
        safe = list(DEFAULT_SAFE_PRIVATE) if self.default_safe_private else []
        for entry in self.safe_private:
            safe.append(SafePrivateTag(entry[0], int(entry[1], 16), int(entry[2], 16),
                                       entry[3] if len(entry) > 3 else ""))
        unique: dict[tuple, SafePrivateTag] = {}
        for tag in safe:
            unique.setdefault(tag.key(), tag)
        return DeidProfile(
            retain_patient_characteristics=self.retain_patient_characteristics,
            retain_modified_dates=self.retain_modified_dates, clean_descriptions=self.clean_descriptions,
            clean_structured_content=self.clean_structured_content, retain_safe_private=self.retain_safe_private,
            safe_private=tuple(unique.values()), date_shift_days=self.date_shift_days,
            blank_regions=tuple(BlankRegion(**b.model_dump()) for b in self.blank),
            pseudonym_prefix=self.pseudonym_prefix, site_pseudonyms=self.site_pseudonyms,
        )

"""Typed de-identification options: :class:`DeidProfile` and its parts.

A profile is plain data. It is read from the ``[privacy]`` table of a workspace's ``sobre.toml``
(or any TOML file) with :meth:`DeidProfile.from_mapping`, which rejects unknown keys and values of
the wrong type, and written into every de-identification report with :meth:`DeidProfile.to_dict`.

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

from dataclasses import asdict, dataclass, fields
from typing import Any

from sobre.errors import ConfigError

__all__ = ["DeidProfile", "BlankRegion", "SafePrivateTag", "DEFAULT_SAFE_PRIVATE"]


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
    def from_mapping(cls, data: dict[str, Any], *, source: str = "[privacy]") -> "DeidProfile":
        """Build a profile from a TOML table; unknown keys or wrong types raise :class:`ConfigError`.

        ``safe_private`` entries are *added* to the default list unless ``default_safe_private =
        false``; ``blank`` is a list of tables with :class:`BlankRegion` fields. The key
        ``deidentify`` (a workspace switch, see :func:`sobre.privacy.workspace_settings`) is
        accepted and ignored here.
        """
        known = {f.name for f in fields(cls)} | {"deidentify", "blank", "default_safe_private"}
        unknown = sorted(set(data) - known - {"blank_regions"})
        if unknown:
            raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}",
                              expected=", ".join(sorted(known)), found=", ".join(unknown))
        kwargs: dict[str, Any] = {}
        for name in ("retain_patient_characteristics", "retain_modified_dates", "clean_descriptions",
                     "clean_structured_content", "retain_safe_private", "site_pseudonyms"):
            if name in data:
                if not isinstance(data[name], bool):
                    raise ConfigError(f"{source} {name} must be true or false", expected="bool",
                                      found=repr(data[name]))
                kwargs[name] = data[name]
        if "pseudonym_prefix" in data:
            if not isinstance(data["pseudonym_prefix"], str):
                raise ConfigError(f"{source} pseudonym_prefix must be a string", found=repr(data["pseudonym_prefix"]))
            kwargs["pseudonym_prefix"] = data["pseudonym_prefix"]
        if "date_shift_days" in data:
            v = data["date_shift_days"]
            if (not isinstance(v, (list, tuple)) or len(v) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
                raise ConfigError(f"{source} date_shift_days must be [low, high] in days", found=repr(v))
            kwargs["date_shift_days"] = (v[0], v[1])
        safe = list(DEFAULT_SAFE_PRIVATE) if data.get("default_safe_private", True) else []
        for entry in data.get("safe_private", []):
            try:
                creator, group, offset = entry[:3]
                safe.append(SafePrivateTag(str(creator), int(str(group), 16), int(str(offset), 16),
                                           str(entry[3]) if len(entry) > 3 else ""))
            except (TypeError, ValueError):
                raise ConfigError(f"{source} safe_private entry malformed",
                                  expected='["CREATOR", "GGGG" (hex, odd), "EE" (hex, low byte)]',
                                  found=repr(entry)) from None
            if safe[-1].group % 2 == 0 or not 0 <= safe[-1].offset <= 0xFF:
                raise ConfigError(f"{source} safe_private entry is not a private element",
                                  expected="odd group, offset 00..FF", found=repr(entry))
        unique: dict[tuple, SafePrivateTag] = {}
        for tag in safe:
            unique.setdefault(tag.key(), tag)
        kwargs["safe_private"] = tuple(unique.values())
        regions = []
        for entry in list(data.get("blank", [])) + list(data.get("blank_regions", [])):
            if not isinstance(entry, dict):
                raise ConfigError(f"{source} blank entry must be a table", found=repr(entry))
            allowed = {f.name for f in fields(BlankRegion)}
            extra = sorted(set(entry) - allowed)
            if extra:
                raise ConfigError(f"unknown key(s) in {source} blank region: {', '.join(extra)}",
                                  expected=", ".join(sorted(allowed)), found=", ".join(extra))
            try:
                regions.append(BlankRegion(**entry))
            except TypeError as exc:
                raise ConfigError(f"{source} blank region incomplete", expected="x, y, width, height",
                                  found=str(exc)) from None
        kwargs["blank_regions"] = tuple(regions)
        return cls(**kwargs)


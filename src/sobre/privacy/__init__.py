"""De-identification for research: DICOM PS3.15 Basic Profile with the options research needs.

>>> from sobre.privacy import DeidProfile
>>> DeidProfile().retain_modified_dates
True

Privacy knows nothing of workspaces: the workspace's intake (:class:`sobre.catalog.Intake`) reads its
``[privacy]`` settings and applies them to every path by which data enters it.

Public API
----------
``PrivacySettings``, ``DeidProfile``, ``BlankRegion``, ``SafePrivateTag``
    Typed options (the ``[privacy]`` table of ``sobre.toml``) and the profile the engine applies.
``ProjectKey``, ``load_key``, ``create_key``, ``load_or_create_key``
    The project key (HMAC secret) behind pseudonyms, UIDs and date shifts.
``Deidentifier``
    The engine: ``deidentify_file``, ``deidentify_tree``, ``deidentify_to_bytes``, ``pseudonym_of``.
``PseudonymStore``, ``export_map``, ``map_path_for_key``
    The (sealed) pseudonym map and its only way out.
``verify_output``, ``identifying_values``, ``VerificationError``
    The verification scan.
"""

from __future__ import annotations

from ._engine import DeidentificationError, Deidentifier, DeidReport, DeidResult
from ._keys import ProjectKey, create_key, load_key, load_or_create_key
from ._pixels import blank_regions, pixel_review_reasons
from ._profile import DEFAULT_SAFE_PRIVATE, BlankRegion, BlankRegionSettings, DeidProfile, PrivacySettings, SafePrivateTag
from ._pseudonyms import PseudonymStore, export_map, map_path_for_key
from ._verify import VerificationError, identifying_values, scan_output, verify_output

__all__ = [
    "BlankRegion", "BlankRegionSettings", "DEFAULT_SAFE_PRIVATE", "DeidProfile", "DeidReport", "DeidResult",
    "DeidentificationError", "Deidentifier", "PrivacySettings", "ProjectKey", "PseudonymStore", "SafePrivateTag",
    "VerificationError", "blank_regions", "create_key", "export_map", "identifying_values", "load_key",
    "load_or_create_key", "map_path_for_key", "pixel_review_reasons", "scan_output", "verify_output",
]

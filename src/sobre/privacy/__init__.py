"""De-identification for research: DICOM PS3.15 Basic Profile with the options research needs.

>>> from sobre.privacy import DeidProfile
>>> DeidProfile().retain_modified_dates
True

Public API
----------
``DeidProfile``, ``BlankRegion``, ``SafePrivateTag``
    Typed options (read from the ``[privacy]`` table of ``sobre.toml``).
``ProjectKey``, ``load_key``, ``create_key``
    The project key (HMAC secret) behind pseudonyms, UIDs and date shifts.
``Deidentifier``
    The engine; ``deidentify_file``, ``deidentify_tree``, ``deidentify_to_bytes``.
``deidentify_file(src, dst, profile=None, *, key_file=..., key=...)``
    One-call helper (used by ``sobre ingest --deidentify``).
``workspace_privacy(root)``
    Key, map and profile of a workspace (``secrets/project.key``, ``[privacy]`` in ``sobre.toml``).
``verify_output``, ``identifying_values``, ``VerificationError``
    The verification scan.
"""

from __future__ import annotations

from ._engine import DeidentificationError, Deidentifier, DeidReport, DeidResult, iter_files, read_instance
from ._keys import ProjectKey, create_key, load_key, load_or_create_key
from ._pixels import blank_regions, pixel_review_reasons
from ._profile import DEFAULT_SAFE_PRIVATE, BlankRegion, DeidProfile, SafePrivateTag
from ._pseudonyms import PseudonymStore, export_map, map_path_for_key
from ._verify import VerificationError, identifying_values, scan_output, verify_output
from ._workspace import WorkspacePrivacy, deidentify_file, workspace_privacy

__all__ = [
    "BlankRegion", "DEFAULT_SAFE_PRIVATE", "DeidProfile", "DeidReport", "DeidResult", "DeidentificationError",
    "Deidentifier", "ProjectKey", "PseudonymStore", "SafePrivateTag", "VerificationError", "WorkspacePrivacy",
    "blank_regions", "create_key", "deidentify_file", "export_map", "identifying_values", "iter_files",
    "load_key", "load_or_create_key", "map_path_for_key", "pixel_review_reasons", "read_instance",
    "scan_output", "verify_output", "workspace_privacy",
]

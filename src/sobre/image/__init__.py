"""The Image model, its geometry, readers/writers, and the one DICOM Part 10 layer of Sobre.

Images
    ``Image``, ``load``, ``load_all``, ``save``, ``write_dicom_series``; geometry helpers
    ``lps_to_ras``, ``ras_to_lps``, ``orientation_code``.
DICOM Part 10 (every other package reads and writes DICOM bytes through these)
    ``read_header`` (header without pixels, fast path with pydicom fallback, completeness and
    pixel-length checks), ``read_instance`` (a whole instance), ``frames_of`` (per-frame geometry),
    ``check_complete``, ``check_raw_lengths``, ``check_pixel_length``, ``received_facts`` (structural
    check of a received dataset from its bytes), ``raw_value``, ``encode_dataset`` (Part 10 bytes),
    ``file_meta_bytes``, ``tag_name``; ``write_atomic`` for the files themselves.
DICOM result objects
    ``write_seg`` (Segmentation), ``write_sr`` (TID 1500 Measurement Report), ``write_secondary_capture``
    (overlay images), with ``Segment``, ``Finding``, ``Measurement``, ``Algorithm`` and ``DicomOutput``;
    ``source_frames`` (the mask-on-source-grid check).
File discovery
    ``discover``: the one walk of files and folders shared by load, ingest, de-identification, pull
    and listen.
"""

import importlib
from typing import TYPE_CHECKING

from sobre.image._dicom import Frame, SeriesWarning, VolumePlan, assemble, check_image, frames_of, header_metadata
from sobre.image._discover import Discovery, discover
from sobre.image._formats import sniff as file_kind
from sobre.image._geometry import direction as affine_direction
from sobre.image._geometry import is_oblique, lps_to_ras, make_affine, orientation_code, ras_to_lps
from sobre.image._geometry import spacing as affine_spacing
from sobre.image._image import Image
from sobre.image._io import load, load_all, save
from sobre.image._spatial import Grid, crop_or_pad, reorient, resample
from sobre.image._part10 import (
    MEDIA_STORAGE_DIRECTORY, check_complete, check_pixel_length, check_raw_lengths, looks_like_dicom,
    raw_value, read_header, read_instance, received_facts, tag_name, verify_pixels,
)
from sobre.image._part10 import expected_pixel_bytes, header_value, pixel_module_problem

# The DICOM writers (and result objects) load on first use: they import pydicom, which reading and
# exporting a simple uncompressed series does without (``sobre export`` starts faster); so does write_atomic.
_LAZY = {
    "write_atomic": "sobre.base",  # (sobre.base's file helpers import hashlib, json, tempfile)
    "write_dicom_series": "sobre.image._dicom_write",
    **{name: "sobre.image._encode" for name in (
        "SOBRE_IMPLEMENTATION_UID", "SOBRE_IMPLEMENTATION_VERSION", "encode_dataset", "file_meta_bytes")},
    **{name: "sobre.image._dicom_objects" for name in (
        "GRID_TOLERANCE_VOXELS", "WINDOWS", "Algorithm", "DicomOutput", "Finding", "Measurement", "Segment",
        "SourceFrame", "new_uid", "render_overlay", "source_frames", "write_secondary_capture", "write_seg",
        "write_sr")},
}

if TYPE_CHECKING:  # for type checkers and import analysers: the same names, imported eagerly
    from sobre.image._dicom_objects import (
        GRID_TOLERANCE_VOXELS, WINDOWS, Algorithm, DicomOutput, Finding, Measurement, Segment, SourceFrame, new_uid,
        render_overlay, source_frames, write_secondary_capture, write_seg, write_sr,
    )
    from sobre.base import write_atomic
    from sobre.image._dicom_write import write_dicom_series
    from sobre.image._encode import (
        SOBRE_IMPLEMENTATION_UID, SOBRE_IMPLEMENTATION_VERSION, encode_dataset, file_meta_bytes,
    )


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sobre.image' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Image", "load", "load_all", "save", "write_dicom_series", "SeriesWarning", "discover", "Discovery", "file_kind",
    "lps_to_ras", "ras_to_lps", "orientation_code", "affine_spacing", "affine_direction", "is_oblique", "make_affine",
    "read_header", "read_instance", "frames_of", "Frame", "header_metadata", "check_image", "assemble",
    "VolumePlan", "check_complete",
    "check_raw_lengths", "check_pixel_length", "received_facts", "raw_value", "encode_dataset",
    "file_meta_bytes", "tag_name", "verify_pixels", "looks_like_dicom", "write_atomic", "MEDIA_STORAGE_DIRECTORY",
    "SOBRE_IMPLEMENTATION_UID", "SOBRE_IMPLEMENTATION_VERSION",
    "Grid", "resample", "reorient", "crop_or_pad",
    "expected_pixel_bytes", "pixel_module_problem", "header_value",
    "write_seg", "write_sr", "write_secondary_capture", "Segment", "Finding", "Measurement", "Algorithm",
    "DicomOutput", "SourceFrame", "source_frames", "render_overlay", "new_uid", "GRID_TOLERANCE_VOXELS", "WINDOWS",
]

"""Annotation versions to and from files: DICOM SEG, TID 1500 SR, RTSTRUCT, NIfTI, CSV; push to a PACS.

Export (a version of ``ws.annotations`` → a file)
    ``export_seg`` (masks → DICOM Segmentation, BINARY, via :func:`sobre.image.write_seg`),
    ``export_sr`` (labels → TID 1500 findings and measurements via :func:`sobre.image.write_sr`;
    points → TID 1500 3D point regions; masks → per-segment volumes referencing their SEG),
    ``export_nifti`` (masks, the stored file itself), ``export_csv`` (any kind, one row per item),
    ``export_version`` (by format name), ``push_version`` (SEG/SR to a DICOMweb PACS, STOW-RS).
Import (a file → a label map on the series' grid → a new version)
    ``read_seg`` (highdicom), ``read_rtstruct`` (contours filled on the series grid with
    scikit-image's ``polygon``), ``read_nifti`` (grid checked), ``read_import`` (by format name);
    ``import_file`` saves the result as a new annotation version.

Segments are matched by name with the project's label schema (SEG ``SegmentLabel``, RTSTRUCT
``ROIName``); a file that names a segment the schema lacks, lies on another grid or frame of
reference, or cannot be parsed is refused with :class:`~sobre.errors.InputError` /
:class:`~sobre.errors.GeometryError` (what, expected, found) and nothing is stored.
"""

from ._export import (
    FORMATS,
    export_csv,
    export_nifti,
    export_seg,
    export_sr,
    export_version,
    push_version,
)
from ._import import (
    IMPORT_FORMATS,
    import_file,
    read_import,
    read_nifti,
    read_rtstruct,
    read_seg,
)

__all__ = [
    "FORMATS",
    "IMPORT_FORMATS",
    "export_csv",
    "export_nifti",
    "export_seg",
    "export_sr",
    "export_version",
    "import_file",
    "push_version",
    "read_import",
    "read_nifti",
    "read_rtstruct",
    "read_seg",
]

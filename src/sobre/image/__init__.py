"""The Image model, its geometry, and readers/writers for DICOM, NIfTI, NRRD and optical formats."""

from sobre.image._geometry import lps_to_ras, orientation_code, ras_to_lps
from sobre.image._image import Image
from sobre.image._io import load, load_all, save
from sobre.image._dicom import SeriesWarning
from sobre.image._dicom_write import write_dicom_series

__all__ = [
    "Image", "load", "load_all", "save", "write_dicom_series", "SeriesWarning",
    "lps_to_ras", "ras_to_lps", "orientation_code",
]

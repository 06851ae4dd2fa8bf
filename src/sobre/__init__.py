"""Sobre: frugal medical-imaging AI that stays inside the hospital.

>>> import sobre
>>> sorted(n for n in sobre.__all__ if n[0].islower())[:3]
['load', 'load_all', 'save']
"""

from sobre.errors import SobreError
from sobre.image import Image, load, load_all, save, write_dicom_series

__version__ = "0.1.0"

__all__ = ["Image", "SobreError", "load", "load_all", "save", "write_dicom_series", "__version__"]


def __getattr__(name: str):  # lazy access to heavier subpackages
    if name == "Workspace":
        from sobre.catalog import Workspace

        return Workspace
    raise AttributeError(f"module 'sobre' has no attribute {name!r}")

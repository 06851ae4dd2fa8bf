"""Sobre: frugal medical-imaging AI that stays inside the hospital.

>>> import sobre
>>> sorted(n for n in sobre.__all__ if n[0].islower())[:3]
['load', 'load_all', 'save']

The names below are imported on first use (PEP 562), so ``import sobre`` (and ``sobre --version``)
does not pay for numpy, pydicom and the readers until an image is actually loaded or saved.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["Image", "SobreError", "__version__", "load", "load_all", "save", "write_dicom_series"]

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Image": "sobre.image",
    "load": "sobre.image",
    "load_all": "sobre.image",
    "save": "sobre.image",
    "write_dicom_series": "sobre.image",
    "SobreError": "sobre.errors",
    "Workspace": "sobre.catalog",  # heavier subpackage, not in __all__
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from sobre.catalog import Workspace  # noqa: F401
    from sobre.errors import SobreError
    from sobre.image import Image, load, load_all, save, write_dicom_series


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"sobre.{name}") is not None:
            return importlib.import_module(f"sobre.{name}")  # ``import sobre; sobre.image.resample(...)``
        raise AttributeError(f"module 'sobre' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses are plain attribute lookups
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

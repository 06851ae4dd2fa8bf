"""Sobre: frugal medical-imaging AI that stays inside the hospital."""

from sobre.errors import SobreError

__version__ = "0.1.0"

__all__ = ["SobreError", "__version__"]

"""The simulator's disk cache (calibrations, the second anatomy): ``~/.cache/sobre/sim``, safe to delete.

Everything cached is deterministic, so a cached result equals a fresh one; a damaged file is
recomputed, and a cache that cannot be written only costs time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def sim_cache_dir() -> Path:
    """``~/.cache/sobre/sim`` (beside the sample cache)."""
    from sobre.samples import default_cache

    return default_cache().parent / "sim"


def load_npz(path: Path | None) -> dict | None:
    """The arrays of a cached ``.npz`` file, or None (absent or damaged)."""
    if path is None or not path.exists():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None  # a damaged cache file is recomputed


def store_npz(path: Path | None, arrays: dict, compressed: bool = False) -> None:
    """Write ``arrays`` atomically (a temporary file renamed); failures are ignored (cache only)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache-", suffix=".npz")
        os.close(fd)
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation only

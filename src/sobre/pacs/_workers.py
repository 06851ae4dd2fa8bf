"""De-identification worker processes of the C-STORE listener (spawned; one Deidentifier each).

The listener acknowledges an instance, spools its bytes (owner-only folder) and hands the spool file to
a worker, so that receiving and de-identifying use different cores. The worker de-identifies,
verifies, writes the result atomically into the store and deletes the spool file.
"""

from __future__ import annotations

from pathlib import Path

from sobre.errors import SobreError, describe_exception

_WORKER = {}


def worker_init(secret: bytes, profile, map_path: str | None) -> None:
    from sobre.privacy import Deidentifier, ProjectKey, PseudonymStore

    key = ProjectKey(secret)
    store = PseudonymStore(map_path, key) if map_path else None
    _WORKER["deid"] = Deidentifier(key, profile, store)
    # import now what de-identifying the first instance would import
    import pydicom.charset  # noqa: F401
    import pydicom.filereader  # noqa: F401
    import pydicom.filewriter  # noqa: F401
    import pydicom.pixels  # noqa: F401


def worker_ready() -> int:
    import os

    return os.getpid()


def worker_deidentify(spool_file: str, store_dir: str) -> tuple[str | None, list[str], str | None]:
    """De-identify one spooled instance into ``store_dir``; returns (path, pixel review, error)."""
    import os

    import pydicom

    from sobre.image import write_atomic

    deid = _WORKER["deid"]
    try:
        ds = pydicom.dcmread(spool_file)  # checked by the handler before it was acknowledged
        data, result = deid.deidentify_to_bytes(ds, source="C-STORE", copy=False)
    except SobreError as exc:
        return None, [], str(exc)
    except Exception as exc:  # noqa: BLE001 - reported, the instance is quarantined
        return None, [], f"{describe_exception(exc)}"
    rel = f"{result.subject}/{result.study_instance_uid}/{result.series_instance_uid}/{result.sop_instance_uid}.dcm"
    target = Path(store_dir) / rel
    write_atomic(target, data)
    os.unlink(spool_file)
    return str(target), result.pixel_review, None

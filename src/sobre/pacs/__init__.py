"""PACS connectivity: DICOMweb pull/push and a DICOM C-STORE listener.

``DicomWebPacs(url).pull(dest, studies=[...] | query={...}, deidentifier=..., on_files=...)``
    QIDO-RS + WADO-RS, all-or-nothing per study.
``DicomWebPacs(url).push(paths)``
    STOW-RS in batches.
``Listener(store_dir, ae_title=..., port=..., deidentifier=..., on_files=...)``
    C-STORE/C-ECHO SCP; ``start()`` / ``stop()``.
"""

from __future__ import annotations

from ._dicomweb import DicomWebPacs, PacsError, PullReport, PushReport, parse_query
from ._listener import STATUS, Listener, ListenerStats

__all__ = ["DicomWebPacs", "Listener", "ListenerStats", "PacsError", "PullReport", "PushReport", "STATUS",
           "parse_query"]

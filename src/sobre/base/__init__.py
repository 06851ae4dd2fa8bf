"""The small shared base under every other package: files, hashes, canonical JSON, configuration, progress, compute,
the site's signing key and the one audit log of Sobre.

Nothing here knows about images or workspaces; every other package may use it.

>>> from sobre.base import canonical_json
>>> canonical_json({"z": 0, "a": None})
b'{"a":null,"z":0}'
"""

import importlib
from typing import TYPE_CHECKING

# The public names load on first use (PEP 562): `sobre.image` needs only the file helpers, and a command such as
# `sobre export` should not pay for pydantic, the audit log, the signing key or the compute layer at start-up.
_WHERE = {
    "_audit": ("AuditEntry", "AuditLog", "AuditVerification", "BadEntry", "audit_entries", "find_audit",
               "verify_audit"),
    "_compute": ("FAILED", "RETRIED", "Compute", "ComputeSettings", "DaskCompute", "LocalCompute", "code_identity",
                 "current_compute", "exit_with_parent", "open_compute", "opened", "shutdown_local_pool", "task_events",
                 "use_compute"),
    "_config": ("Config", "config_from", "load_config", "read_toml", "resolved", "validate_config"),
    "_files": ("canonical_json", "sha256_bytes", "sha256_file", "write_atomic"),
    "_progress": ("Progress", "ProgressRecorder", "no_progress"),
    "_signing": ("SiteKey", "load_public_key", "public_key_id", "verify_signature"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

if TYPE_CHECKING:  # for type checkers and import analysers: the same names, imported eagerly
    from sobre.base._audit import (AuditEntry, AuditLog, AuditVerification, BadEntry, audit_entries, find_audit,
                                   verify_audit)
    from sobre.base._compute import (FAILED, RETRIED, Compute, ComputeSettings, DaskCompute, LocalCompute,
                                     code_identity, current_compute, exit_with_parent, open_compute, opened,
                                     shutdown_local_pool, task_events, use_compute)
    from sobre.base._config import Config, config_from, load_config, read_toml, resolved, validate_config
    from sobre.base._files import canonical_json, sha256_bytes, sha256_file, write_atomic
    from sobre.base._progress import Progress, ProgressRecorder, no_progress
    from sobre.base._signing import SiteKey, load_public_key, public_key_id, verify_signature


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sobre.base' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sobre.base.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = list(_MODULE_OF)

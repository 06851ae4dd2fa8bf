"""Files written whole or not at all, content hashes, and canonical JSON.

Every file Sobre writes goes through :func:`write_atomic`: the bytes go to a temporary file in the
same folder, which is then renamed over the target, so a crash never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "sha256_file", "sha256_bytes", "canonical_json"]


def write_atomic(target: str | os.PathLike, data: bytes | str, *, mode: int | None = None,
                 fsync: bool = False) -> Path:
    """Write ``data`` to ``target`` through a temporary file in the same folder and a rename.

    Parameters
    ----------
    target : path
        Final file name; missing parent folders are created.
    data : bytes or str
        The whole content (``str`` is written as UTF-8).
    mode : int, optional
        Permission bits set before the rename (e.g. ``0o444`` for a frozen manifest).
    fsync : bool
        Flush the bytes to disk before the rename (durable across a power loss, slower).

    Returns
    -------
    Path
        ``target``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.txt"
    >>> write_atomic(p, "hello").read_text()
    'hello'
    """
    target = Path(target)
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, as 64 hex digits (read in chunks: constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8, no NaN (what content hashes cover).

    >>> canonical_json({"b": 1, "a": [1.5, "é"]})
    b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

"""The project key: the secret behind pseudonyms, UID remapping and date shifts.

Everything Sobre derives for de-identification is an HMAC-SHA256 of the original value under the
project key, so the same input gives the same output on any machine holding the key, and nobody
without it can recompute or reverse the mapping. The key is 32 random bytes stored as hex in a file
readable by its owner only (mode 0600), in ``<workspace>/secrets/project.key``. It never appears in
outputs or logs: :class:`ProjectKey` hides it from ``repr`` and ``str``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from sobre.errors import ConfigError

__all__ = ["ProjectKey", "create_key", "load_key", "load_or_create_key"]

_KEY_BYTES = 32


class ProjectKey:
    """A project key held in memory; derives pseudonyms, UIDs and date shifts.

    Parameters
    ----------
    secret : bytes
        At least 16 random bytes.
    path : Path, optional
        File it was read from (for messages only).
    """

    __slots__ = ("_secret", "path")

    def __init__(self, secret: bytes, path: Path | None = None) -> None:
        if len(secret) < 16:
            raise ConfigError("project key is too short", path=path, expected=">= 16 bytes",
                              found=f"{len(secret)} bytes", fix="create a new key with `sobre deid --new-key`")
        self._secret = bytes(secret)
        self.path = path

    def __repr__(self) -> str:  # never show the secret
        return f"ProjectKey(path={str(self.path) if self.path else None!r}, id={self.key_id})"

    __str__ = __repr__

    @property
    def key_id(self) -> str:
        """A short public fingerprint of the key (safe to log), to tell keys apart."""
        return hashlib.sha256(b"sobre-key-id\x00" + self._secret).hexdigest()[:12]

    def digest(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 of ``value`` for ``purpose`` (domain separation between uses)."""
        msg = purpose.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def seal(self, purpose: str, data: bytes) -> bytes:
        """Encrypt and authenticate ``data`` (AES-256-GCM, a key derived for ``purpose``, random nonce)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self.digest("seal", purpose)).encrypt(nonce, data, purpose.encode())

    def unseal(self, purpose: str, blob: bytes) -> bytes:
        """Decrypt what :meth:`seal` made; ConfigError when the key is not the one that sealed it."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(self.digest("seal", purpose)).decrypt(bytes(blob[:12]), bytes(blob[12:]), purpose.encode())
        except (InvalidTag, ValueError):
            raise ConfigError("sealed data cannot be opened with this project key", path=self.path,
                              fix="use the key that wrote it") from None

    def uid(self, original: str) -> str:
        """Replacement UID: ``2.25.<128-bit integer>`` (PS3.5 B.2), at most 44 characters."""
        return "2.25." + str(int.from_bytes(self.digest("uid", original.strip())[:16], "big"))

    def pseudonym(self, identity: str, prefix: str = "SUBJ-", length: int = 10) -> str:
        """Subject pseudonym: ``prefix`` + ``length`` base32 characters of the keyed hash."""
        text = base64.b32encode(self.digest("subject", identity)).decode().rstrip("=")
        return prefix + text[:length]

    def site_pseudonym(self, institution: str, length: int = 6) -> str:
        """Keyed site pseudonym: ``SITE-`` + ``length`` base32 characters; case and spacing do not matter."""
        name = " ".join(str(institution).split()).casefold()
        text = base64.b32encode(self.digest("site", name)).decode().rstrip("=")
        return "SITE-" + text[:length]

    def date_shift(self, identity: str, low: int, high: int) -> int:
        """Days to add to every date of a subject: a keyed draw in ``[low, high]``, never 0."""
        if low > high:
            raise ConfigError("date shift range is empty", expected="low <= high", found=f"[{low}, {high}]")
        span = high - low + 1
        value = low + int.from_bytes(self.digest("date-shift", identity)[:8], "big") % span
        if value == 0:
            value = low if low != 0 else high
        return value


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            "project key file is readable by other users",
            path=path,
            expected="mode 0600 (owner only)",
            found=f"mode {stat.S_IMODE(mode):04o}",
            fix=f"run `chmod 600 {path}` (and check who may have read it)",
        )


def load_key(path: str | Path) -> ProjectKey:
    """Read a project key file (hex), refusing one that others can read.

    Raises
    ------
    ConfigError
        Missing file, wrong permissions or malformed content.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("project key file not found", path=path,
                          fix="pass the key used for this project, or create one with --new-key")
    _check_private(path)
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError("project key file is not hexadecimal", path=path,
                          expected=f"{2 * _KEY_BYTES} hex characters", found=f"{len(text)} characters") from None
    return ProjectKey(secret, path)


def create_key(path: str | Path) -> ProjectKey:
    """Create a new random key at ``path`` (mode 0600, parent folder 0700); refuses to overwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("a project key already exists here; refusing to overwrite it", path=path,
                          fix="use the existing key (--key-file) or choose another path") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
    os.chmod(path, 0o600)
    return ProjectKey(secret, path)


def load_or_create_key(path: str | Path) -> tuple[ProjectKey, bool]:
    """Load the key at ``path``, creating it first if absent; returns ``(key, created)``."""
    path = Path(path)
    if path.exists():
        return load_key(path), False
    return create_key(path), True

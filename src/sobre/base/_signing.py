"""The site key: one Ed25519 key pair that signs what this site vouches for.

Audit-log checkpoints and head files (:mod:`sobre.base._audit`) and, later, model packages are signed
with the site's private key; anyone holding only the public key can check those signatures. The
private key is stored as PEM (PKCS#8, unencrypted) in a file readable by its owner only (mode 0600),
in a folder only its owner can enter (0700 when Sobre creates it). It never appears in outputs or
logs: :class:`SiteKey` hides it from ``repr`` and ``str`` and refuses to be pickled.

The public half is shared as PEM (SubjectPublicKeyInfo); its :func:`public_key_id` (16 hex digits of
the SHA-256 of the 32 raw public-key bytes) tells keys apart in records and messages.

Errors are :class:`sobre.errors.ConfigError` naming the key file, as for the project key
(``sobre.privacy``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from sobre.errors import ConfigError

__all__ = ["SiteKey", "verify_signature", "public_key_id", "load_public_key"]

_KEY_ID_HEX = 16


def _public_raw(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _id_of_raw(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_HEX]


class SiteKey:
    """The site's Ed25519 private key, held in memory; signs bytes.

    Create it once with :meth:`create`, then :meth:`load` it (or :meth:`load_or_create`). Share
    :meth:`public_key_pem` with whoever verifies.

    Parameters
    ----------
    private_key : cryptography Ed25519PrivateKey
        The key itself (use the class methods rather than this constructor).
    path : Path, optional
        File it was read from (for messages only).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> key = SiteKey.create(pathlib.Path(tempfile.mkdtemp()) / "secrets" / "site.key")
    >>> sig = key.sign(b"model package sha256 ...")
    >>> len(sig), verify_signature(key.public_key_pem(), sig, b"model package sha256 ...")
    (64, True)
    >>> verify_signature(key.public_key_pem(), sig, b"something else")
    False
    >>> key.key_id == public_key_id(key.public_key_pem()), len(key.key_id)
    (True, 16)
    >>> "PRIVATE" in repr(key)
    False
    """

    __slots__ = ("_private", "_public_raw", "path")

    def __init__(self, private_key, path: str | os.PathLike | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigError("the site key must be an Ed25519 private key", path=path,
                              found=type(private_key).__name__)
        self._private = private_key
        self._public_raw = _public_raw(private_key.public_key())
        self.path = Path(path) if path is not None else None

    def __repr__(self) -> str:  # never show the private key
        return f"SiteKey(path={str(self.path) if self.path else None!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a SiteKey cannot be pickled (that would copy the private key); "
                        "load it with SiteKey.load(path) in each process")

    @property
    def key_id(self) -> str:
        """16 hex digits of the SHA-256 of the raw public key: safe to log, tells keys apart."""
        return _id_of_raw(self._public_raw)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(bytes(data))

    def public_key_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo), to give to verifiers."""
        from cryptography.hazmat.primitives import serialization

        return self._private.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def create(cls, path: str | os.PathLike) -> SiteKey:
        """Create a new random key at ``path`` (mode 0600); refuses to overwrite an existing file.

        A missing folder is created with mode 0700. An existing folder that other users may enter,
        read or write is refused: whoever can write there can replace the key.

        Raises
        ------
        ConfigError
            The file exists, or its folder is open to other users.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = Path(path)
        folder = path.parent
        if folder.exists():
            mode = stat.S_IMODE(folder.stat().st_mode)
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError("the site key's folder is open to other users; refusing to create the key there",
                                  path=folder, expected="mode 0700 (owner only)", found=f"mode {mode:04o}",
                                  fix=f"run `chmod 700 {folder}`, or choose a private folder for the key")
        else:
            folder.mkdir(parents=True, mode=0o700)
            os.chmod(folder, 0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError("a site key already exists here; refusing to overwrite it", path=path,
                              fix="load the existing key (SiteKey.load), or choose another path") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o600)
        return cls(private, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SiteKey:
        """Read a site key file (PEM, PKCS#8, unencrypted), refusing one that other users can read.

        Raises
        ------
        ConfigError
            Missing file, permissions open to others, or content that is not an Ed25519 private key.
        """
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = Path(path)
        if not path.is_file():
            raise ConfigError("site key file not found", path=path,
                              fix="pass the site's key file, or create one with SiteKey.create(path)")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError("site key file is readable by other users", path=path,
                              expected="mode 0600 (owner only)", found=f"mode {mode:04o}",
                              fix=f"run `chmod 600 {path}` (and check who may have read it)")
        data = path.read_bytes()
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigError("site key file is encrypted with a password", path=path,
                              expected="an unencrypted PKCS#8 PEM key (protected by its file mode)",
                              fix="decrypt it with `openssl pkey -in KEY -out site.key`") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError("site key file is not a PEM private key", path=path,
                              expected="-----BEGIN PRIVATE KEY----- (PKCS#8, Ed25519)",
                              found=f"{len(data)} bytes starting {data[:27]!r}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError("site key file holds another kind of key", path=path, expected="Ed25519",
                              found=type(private).__name__.removeprefix("_"),
                              fix="create an Ed25519 key with SiteKey.create(path)")
        return cls(private, path)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> tuple[SiteKey, bool]:
        """Load the key at ``path``, creating it first if absent; returns ``(key, created)``."""
        path = Path(path)
        if path.exists():
            return cls.load(path), False
        return cls.create(path), True


def load_public_key(public_pem: bytes | str):
    """The Ed25519 public key in ``public_pem`` (cryptography object); ConfigError when it is not one.

    >>> load_public_key(b"not a key")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sobre.errors.ConfigError: public key is not PEM (expected -----BEGIN PUBLIC KEY----- (Ed25519); found 9 bytes ...)
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = public_pem.encode() if isinstance(public_pem, str) else bytes(public_pem)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError("public key is not PEM", expected="-----BEGIN PUBLIC KEY----- (Ed25519)",
                          found=f"{len(data)} bytes starting {data[:26]!r}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("public key is not an Ed25519 key", expected="Ed25519",
                          found=type(key).__name__.removeprefix("_"),
                          fix="give the public key of the site key (SiteKey.public_key_pem())")
    return key


def public_key_id(public_pem: bytes | str) -> str:
    """The key id of a public key (as :attr:`SiteKey.key_id`); ConfigError when it is not Ed25519 PEM."""
    return _id_of_raw(_public_raw(load_public_key(public_pem)))


def verify_signature(public_pem: bytes | str, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``data`` under ``public_pem``.

    Never raises for a bad, truncated or mistyped signature (returns False); raises
    :class:`~sobre.errors.ConfigError` when ``public_pem`` is not an Ed25519 public key.
    """
    return _verify_with(load_public_key(public_pem), signature, data)


def _verify_with(public_key, signature, data) -> bool:
    """:func:`verify_signature` with an already loaded public key (verifying many signatures)."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes(signature), bytes(data))
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True

"""The model package on disk: its files, the signed manifest, and the checks of both.

::

    models/NAME/VERSION/
      manifest.json        every other file (but manifest.sig) with its SHA-256 and size; signed
      manifest.sig         Ed25519 signature of manifest.json's exact bytes (JSON: algorithm, key id, base64)
      signer.pem           public key of the site that signed (listed in the manifest too)
      model/run.json       the run record, without subject identifiers or local paths (what load_model reads)
      model/checkpoints/…  the member networks' weights (one per fold)
      interface.json       input (shape, spacing, channels, modalities), preprocessing, task, outputs and codes
      config.json          the resolved training configuration
      provenance.json      run, dataset version + content hash, code version, environment, seed
      validation/          report.json + report.html of `sobre evaluate` (when there is one)
      card/                card.json, card.md, card.html
      runtime.json         memory and latency measured at registration (when measured)
      onnx/                member<i>.onnx (fp32), member<i>.int8.onnx, onnx.json (when exported)

A package is checked as a whole (:func:`check_package`): the manifest parses, its signature is the
one of ``signer.pem`` over its exact bytes, the signing key is this site's or a trusted one, every
listed file is there with its size and SHA-256, nothing else is there, and no entry is a link.
Every finding is a :class:`~sobre.errors.Problem` naming the file.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sobre.base import canonical_json, public_key_id, sha256_bytes, sha256_file, verify_signature, write_atomic
from sobre.errors import ConfigError, InputError, Problem

__all__ = ["PACKAGE_FORMAT", "MANIFEST", "SIGNATURE", "SIGNER", "PackageCheck", "check_package", "check_name",
           "parse_ref", "write_manifest", "model_digest", "rename_noreplace", "exchange_folders"]

PACKAGE_FORMAT = "sobre.model-package/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNER = "signer.pem"
_UNLISTED = (MANIFEST, SIGNATURE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


# ------------------------------------------------------------------------------------ names
def check_name(value: str, what: str = "model name") -> str:
    """``value`` if it is a valid model name or version (letters, digits, ``. _ + -``; 1 to 100)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise InputError(f"invalid {what} {value!r}", expected="1 to 100 ASCII letters, digits, '.', '_', '+' or "
                         "'-', starting with a letter or digit (e.g. brain-age, 1.0.0)", found=repr(value))
    return value


def parse_ref(ref: str) -> tuple[str, str]:
    """``"NAME@VERSION"`` → ``(name, version)``.

    >>> parse_ref("brain-age@1.0.0")
    ('brain-age', '1.0.0')
    """
    if not isinstance(ref, str) or ref.count("@") != 1:
        raise InputError(f"not a model reference: {ref!r}", expected="NAME@VERSION (e.g. brain-age@1.0.0)",
                         found=repr(ref), fix="see `sobre model list`")
    name, version = ref.split("@")
    return check_name(name), check_name(version, "model version")


# ------------------------------------------------------------------------------ folders
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2) when the C library has it; False when it cannot be used here (then the caller falls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists (atomically on Linux)."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)


def exchange_folders(a: Path, b: Path) -> None:
    """Swap two folders in one step (renameat2 RENAME_EXCHANGE); two renames where the kernel cannot."""
    if _renameat2(a, b, _RENAME_EXCHANGE):
        return
    aside = b.with_name(f".{b.name}.swap")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def discard(build: Path, created: list) -> None:
    """Remove a build folder and, newest first, the folders made for it that are left empty."""
    remove_tree(build)
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass


# ----------------------------------------------------------------------------- manifest
def _safe_rel(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and "\\" not in rel and not p.is_absolute() and ".." not in p.parts and "." not in p.parts \
        and p.as_posix() == rel


def walk_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Regular files below ``folder`` by POSIX relative path, and the entries that are neither files nor folders."""
    files, odd = {}, []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                odd.append(Path(root, d).relative_to(folder).as_posix())
                dirs.remove(d)
        for n in names:
            p = Path(root, n)
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or not p.is_file():
                odd.append(rel)
            else:
                files[rel] = p
    return files, sorted(odd)


def model_digest(files: dict) -> str:
    """SHA-256 of the model itself: the canonical JSON of ``{path: sha256}`` for the files under ``model/``.

    It names the weights and their record whatever else the package holds (card, ONNX files), so
    the card can state it.
    """
    return sha256_bytes(canonical_json({p: f["sha256"] for p, f in sorted(files.items()) if p.startswith("model/")}))


def write_manifest(folder: Path, header: dict, key) -> dict:
    """Write ``signer.pem``, then ``manifest.json`` listing every file, then ``manifest.sig``; returns the manifest."""
    write_atomic(folder / SIGNER, key.public_key_pem())
    found, odd = walk_files(folder)
    if odd:
        raise InputError("a model package may hold only regular files", path=folder / odd[0],
                         found="a link or special file")
    files = {rel: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for rel, p in sorted(found.items()) if rel not in _UNLISTED}
    manifest = {"format": PACKAGE_FORMAT, **header,
                "signer": {"algorithm": "Ed25519", "key_id": key.key_id, "public_key": SIGNER},
                "model_sha256": model_digest(files), "files": files}
    data = (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
    write_atomic(folder / MANIFEST, data)
    sig = {"algorithm": "Ed25519", "key_id": key.key_id, "signed": MANIFEST,
           "signature": base64.b64encode(key.sign(data)).decode()}
    write_atomic(folder / SIGNATURE, json.dumps(sig, indent=1, sort_keys=True) + "\n")
    return manifest


# -------------------------------------------------------------------------------- checks
@dataclass
class PackageCheck:
    """What :func:`check_package` found.

    Attributes
    ----------
    ok : bool
        No problem at level error: intact, signed, and signed by a trusted key.
    problems : list of Problem
        Each names the file concerned (``path`` relative to the package) and has a ``code``:
        ``bad-manifest``, ``bad-signature``, ``key-mismatch``, ``untrusted-key``,
        ``missing-file``, ``changed-file``, ``extra-file``, ``unsafe-file``.
    manifest : dict or None
    key_id : str or None
        The signing key's id (from the manifest).
    signed_by : str or None
        ``"this site"`` or the label of the trusted key that verified the signature.
    package_sha256 : str or None
        SHA-256 of ``manifest.json`` (identifies this exact package).
    """

    folder: Path
    problems: list = field(default_factory=list)
    manifest: dict | None = None
    key_id: str | None = None
    signed_by: str | None = None
    package_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "folder": str(self.folder), "key_id": self.key_id, "signed_by": self.signed_by,
                "package_sha256": self.package_sha256, "problems": [p.to_dict() for p in self.problems]}

    def raise_for_problems(self, what: str) -> None:
        """Raise an :class:`~sobre.errors.InputError` for the first error, naming its file; nothing when ok."""
        bad = [p for p in self.problems if p.level == "error"]
        if not bad:
            return
        first = bad[0]
        more = f" (and {len(bad) - 1} more problem(s): {', '.join(sorted({p.path for p in bad[1:] if p.path}))})" \
            if len(bad) > 1 else ""
        raise InputError(f"{what}: {first.path}: {first.message}{more}", fix=first.fix)


def _problem(code: str, path: str, message: str, fix: str | None = None) -> Problem:
    return Problem("error", message, path=path, fix=fix, code=code)


_RESTORE = "the package was altered after it was signed: restore it from the exporting site (export it again)"


def check_package(folder: str | os.PathLike, trusted: dict[str, tuple[bytes, str]] | None = None) -> PackageCheck:
    """Check a package folder: signature, signing key, and every file's SHA-256.

    Parameters
    ----------
    folder : path
    trusted : dict, optional
        ``key_id -> (public key PEM, label)`` of the keys this site trusts (its own included). None
        checks integrity and signature only (no ``untrusted-key`` problem).

    Returns
    -------
    PackageCheck
    """
    folder = Path(folder)
    chk = PackageCheck(folder)
    add = chk.problems.append
    mpath, spath, kpath = folder / MANIFEST, folder / SIGNATURE, folder / SIGNER
    for p in (mpath, spath, kpath):
        if p.is_symlink() or not p.is_file():
            add(_problem("missing-file", p.name, "missing: every package has manifest.json, manifest.sig and "
                         "signer.pem", "export the package again from its site"))
    if not chk.ok:
        return chk
    data = mpath.read_bytes()
    chk.package_sha256 = sha256_bytes(data)
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT \
                or not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("signer"), dict):
            raise ValueError(f"not a {PACKAGE_FORMAT} manifest")
    except (ValueError, UnicodeDecodeError) as exc:
        add(_problem("bad-manifest", MANIFEST, f"unreadable manifest ({exc})", _RESTORE))
        return chk
    chk.manifest = manifest
    chk.key_id = str(manifest["signer"].get("key_id"))
    # -- the signature, with the key the package carries
    signature = None
    try:
        sig = json.loads(spath.read_bytes())
        signature = base64.b64decode(sig["signature"], validate=True)
        if sig.get("algorithm") != "Ed25519":
            raise ValueError(f"algorithm {sig.get('algorithm')!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        add(_problem("bad-signature", SIGNATURE, f"unreadable signature ({type(exc).__name__})", _RESTORE))
    pem = kpath.read_bytes()
    try:
        bundled_id = public_key_id(pem)
    except ConfigError:
        bundled_id = None
        add(_problem("key-mismatch", SIGNER, "not an Ed25519 public key (PEM)", _RESTORE))
    if bundled_id is not None and bundled_id != chk.key_id:
        add(_problem("key-mismatch", SIGNER, f"holds key {bundled_id}, but the manifest says it was signed with "
                     f"key {chk.key_id}", _RESTORE))
    if signature is not None and bundled_id is not None and not verify_signature(pem, signature, data):
        add(_problem("bad-signature", MANIFEST, f"does not match its signature in {SIGNATURE} (key {bundled_id}): "
                     f"{MANIFEST} or {SIGNATURE} was changed after signing", _RESTORE))
    # -- every file
    files = manifest["files"]
    found, odd = walk_files(folder)
    for rel in odd:
        add(_problem("unsafe-file", rel, "is a link or special file; packages hold regular files only", _RESTORE))
    for rel, entry in sorted(files.items()):
        if not _safe_rel(rel) or rel in _UNLISTED:
            add(_problem("bad-manifest", MANIFEST, f"lists an unsafe path {rel!r}", _RESTORE))
            continue
        p = found.get(rel)
        if p is None:
            if rel not in odd:
                add(_problem("missing-file", rel, "listed in the manifest but missing", _RESTORE))
            continue
        want, size = str((entry or {}).get("sha256")), (entry or {}).get("size")
        got = sha256_file(p)
        if got != want or (size is not None and p.stat().st_size != size):
            add(_problem("changed-file", rel, f"differs from the signed manifest (expected sha256 {want}, "
                         f"{size} bytes; found sha256 {got}, {p.stat().st_size} bytes)", _RESTORE))
    for rel in sorted(set(found) - set(files) - set(_UNLISTED)):
        add(_problem("extra-file", rel, "is not listed in the signed manifest", "remove it, or export the package "
                     "again from its site"))
    if manifest.get("model_sha256") != model_digest({k: v for k, v in files.items() if isinstance(v, dict)}):
        add(_problem("bad-manifest", MANIFEST, "model_sha256 does not match the model files it lists", _RESTORE))
    # -- trust: the key must be this site's or one the site chose to trust, and verify the signature itself
    if trusted is not None and chk.ok:
        entry = trusted.get(chk.key_id)
        if entry is None:
            add(Problem("error", f"signed by site key {chk.key_id}, which this workspace does not trust",
                        path=SIGNER, code="untrusted-key",
                        fix=f"confirm the key id {chk.key_id} with the sending site by another channel (they read "
                            "it with `sobre model key`), then trust it: `sobre model trust ARCHIVE_OR_PEM`, and "
                            "import again"))
        elif signature is not None and not verify_signature(entry[0], signature, data):
            add(_problem("bad-signature", MANIFEST, f"does not match its signature in {SIGNATURE} under the trusted "
                         f"key {chk.key_id}", _RESTORE))
        else:
            chk.signed_by = entry[1]
    return chk

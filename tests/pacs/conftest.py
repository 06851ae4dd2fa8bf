"""Real peers for the PACS tests: a throw-away Orthanc with DICOMweb, dcmtk's storescu/echoscu.

Each is skipped with the Debian package to install when missing.
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def orthanc():
    from sobre.pacs._peers import OrthancServer, orthanc_available

    why = orthanc_available()
    if why:
        pytest.skip(why + "; install with `apt-get install orthanc orthanc-dicomweb`")
    with OrthancServer() as server:
        yield server


@pytest.fixture
def orthanc_empty(orthanc):
    orthanc.delete_all()
    return orthanc


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"dcmtk's {name} is not installed (Debian package dcmtk)")
    return exe


@pytest.fixture(scope="session")
def storescu():
    return _tool("storescu")


@pytest.fixture(scope="session")
def echoscu():
    return _tool("echoscu")


@pytest.fixture
def key():
    from sobre.privacy import ProjectKey

    return ProjectKey(bytes(range(32)))


@pytest.fixture
def workspace(tmp_path):
    """A real catalog workspace that requires de-identification."""
    from sobre.catalog import Workspace

    ws = Workspace.init(tmp_path / "ws")
    with open(ws.root / "sobre.toml", "a") as fh:
        fh.write("\n[privacy]\ndeidentify = true\n")
    yield ws
    ws.close()

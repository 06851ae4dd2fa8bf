"""Fixtures for the privacy tests: a fixed project key, dcmdump, a dataset with fake PHI."""

from __future__ import annotations

import shutil

import pytest
from .deid_helpers import KEY_HEX, make_phi_dataset


@pytest.fixture
def key():
    from sobre.privacy import ProjectKey

    return ProjectKey(bytes.fromhex(KEY_HEX))


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "secrets" / "project.key"
    path.parent.mkdir(mode=0o700)
    path.write_text(KEY_HEX + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def dcmdump():
    exe = shutil.which("dcmdump")
    if exe is None:
        pytest.skip("dcmtk's dcmdump is not installed (Debian package dcmtk)")
    return exe


@pytest.fixture
def phi_dataset():
    return make_phi_dataset()

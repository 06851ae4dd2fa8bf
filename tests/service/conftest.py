"""Fixtures for the inference-service tests: a tiny CT lesion segmenter trained once (the app tests' own,
U-Net width 4 on 16 simulated CT phantoms), real peers.

The peers (a throw-away Orthanc with DICOMweb, dcmtk's storescu/echoscu) are the PACS tests' own
fixtures; each test that needs one is skipped with the Debian package to install when it is missing.
"""

from __future__ import annotations

import pytest

from apps.conftest import _torch_threads, seg_run  # noqa: F401  (the app tests' tiny CT lesion segmenter)
from pacs.conftest import echoscu, orthanc, orthanc_empty, storescu  # noqa: F401  (the PACS tests' peers)


@pytest.fixture
def ws(tmp_path):
    """A fresh workspace (no de-identification: results go back to the PACS that holds the study)."""
    from sobre.catalog import Workspace

    w = Workspace.init(tmp_path / "ws")
    yield w
    w.close()


@pytest.fixture
def config(seg_run):
    """``config(**settings)``: a ServiceConfig running ct-lesions with the tiny model."""
    from sobre.service import ServiceConfig

    def make(**kw):
        apps = kw.pop("apps", [{"name": "ct-lesions", "model": str(seg_run)}])
        data = {"apps": apps, "receive": {"port": 0, "quiet_seconds": 0.5}, "delivery": {
            "attempts": 3, "backoff_seconds": 0.05, "timeout_seconds": 10}}
        for key, value in kw.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return ServiceConfig(**data)

    return make

"""Fixtures for the application tests: a tiny CT lesion segmenter trained once, generated CT series."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import pytest  # noqa: E402

from .helpers import phantom_image, train_tiny_segmenter, write_ct_series  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory):
    """Folder of a completed segmentation run (U-Net, patch 16³) trained on 16 CT phantoms."""
    return train_tiny_segmenter(tmp_path_factory.mktemp("seg-runs"))


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory):
    """(folder, CT Image, true lesion mask): a generated 40×36×16 CT series with two lesions, 16 files."""
    img, mask = phantom_image((40, 36, 16), seed=7, lesions=2)
    folder = tmp_path_factory.mktemp("ct-series")
    write_ct_series(folder, img)
    return folder, img, mask


@pytest.fixture(scope="session")
def mr_series(tmp_path_factory):
    """A generated MR series (the CT app must refuse it)."""
    img, _ = phantom_image((24, 24, 8), seed=3)
    folder = tmp_path_factory.mktemp("mr-series")
    write_ct_series(folder, img.with_array(img.array - img.array.min(), modality="MR"),
                    series_description="T1 axial", body_part="HEAD")
    return folder

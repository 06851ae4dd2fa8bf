"""``Workspace.volume_layout``: a catalogued volume's layout from the catalog alone equals what reading gives."""

from __future__ import annotations

import numpy as np
import pytest

import sobre
from sobre.catalog import Workspace
from sobre.errors import CatalogError

FIELDS = ("shape", "dtype", "spatial_ndim", "extra_axes", "coordinate_system", "orientation")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    data = root / "data"
    rng = np.random.default_rng(3)
    oblique = np.array([[0.0, 0.9, 0.0, -40.0], [-1.1, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
    sobre.write_dicom_series(sobre.Image(rng.integers(-100, 900, (12, 10, 7)).astype(np.int16), oblique,
                                         modality="CT"), data / "ct", uid_seed="layout-ct")
    sobre.write_dicom_series(sobre.Image(rng.integers(0, 4000, (9, 11, 1)).astype(np.uint16),
                                         np.diag([0.3, 0.3, 1.0, 1.0]), modality="CR"), data / "single",
                             uid_seed="layout-single")
    (data / "nifti").mkdir()
    sobre.save(sobre.Image(rng.normal(size=(6, 5, 4, 3)).astype(np.float32), np.diag([2.0, 2.0, 3.0, 1.0]),
                           extra_axes=("time",), modality="MR"), data / "nifti" / "bold.nii.gz")
    w = Workspace.init(root / "ws")
    w.ingest([data])
    yield w
    w.close()


def test_layout_from_the_catalog_is_what_reading_gives(ws):
    recs = ws.records()
    assert len(recs) == 3
    for rec in recs:
        got = ws.volume_layout(rec["series_uid"], rec["label"])
        img = ws.load(rec["series_uid"])
        want = {"shape": list(img.shape), "dtype": str(img.dtype), "spatial_ndim": img.spatial_ndim,
                "extra_axes": list(img.extra_axes), "coordinate_system": img.coordinate_system,
                "orientation": img.orientation}
        assert {k: got[k] for k in FIELDS} == want, rec["format"]
        assert np.allclose(got["affine"], img.affine), rec["format"]
    kinds = {(r["format"], ws.volume_layout(r["series_uid"])["spatial_ndim"],
              tuple(ws.volume_layout(r["series_uid"])["extra_axes"])) for r in recs}
    assert kinds == {("dicom", 3, ()), ("dicom", 2, ()), ("nifti", 3, ("time",))}


def test_layout_of_an_unknown_series_is_a_catalog_error(ws):
    with pytest.raises(CatalogError, match="no series '1.2.3'"):
        ws.volume_layout("1.2.3")

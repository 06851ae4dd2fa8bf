"""The Image model: lazy array, LPS affine, RAS conversion, geometry properties, extra axes."""

from __future__ import annotations

import doctest
import importlib
import json

import numpy as np
import pytest

import sobre
from sobre import Image
from sobre.errors import GeometryError
from sobre.image import _geometry as geo
from sobre.image import lps_to_ras, orientation_code, ras_to_lps


def rotation(ax_deg: float, ay_deg: float, az_deg: float = 0.0) -> np.ndarray:
    """3×3 rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.8, 0.9, 2.5), origin=(-100.0, 50.0, 30.0), ax=15.0, ay=15.0) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rotation(ax, ay) * np.asarray(spacing)[None, :]
    a[:3, 3] = origin
    return a


# --------------------------------------------------------------------------- laziness
def test_array_is_loaded_on_first_access_only():
    calls = []

    def loader():
        calls.append(1)
        return np.arange(24, dtype=np.int16).reshape(2, 3, 4)

    img = Image(loader=loader, shape=(2, 3, 4), dtype=np.int16, affine=np.eye(4))
    assert not img.is_loaded and calls == []
    assert img.shape == (2, 3, 4) and img.dtype == np.int16 and img.nbytes == 48
    assert "lazy" in repr(img)
    assert img.array[1, 2, 3] == 23
    assert img.is_loaded and len(calls) == 1
    img.array  # noqa: B018 - second access must not call the loader again
    assert len(calls) == 1
    img.unload()
    assert not img.is_loaded
    assert img.array.sum() == sum(range(24)) and len(calls) == 2


def test_loader_result_must_match_the_declared_shape_and_dtype():
    img = Image(loader=lambda: np.zeros((2, 3), np.float32), shape=(2, 3), dtype=np.int16, sources=["a.dcm"])
    with pytest.raises(GeometryError, match=r"a\.dcm: pixel data does not match the header.*int16.*float32"):
        img.array  # noqa: B018


def test_eager_image_cannot_be_unloaded():
    img = Image(np.ones((2, 2)), np.eye(4))
    img.unload()
    assert img.is_loaded


def test_construction_errors():
    with pytest.raises(ValueError, match="needs an array or a loader"):
        Image()
    with pytest.raises(ValueError, match="shape and dtype"):
        Image(loader=lambda: np.zeros(3))
    with pytest.raises(ValueError, match="affine must be 4×4"):
        Image(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(GeometryError, match="singular"):
        Image(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(GeometryError, match="singular or not finite"):
        Image(np.zeros((2, 2, 2)), np.diag([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match="extra axes must be among"):
        Image(np.zeros((2, 2, 3)), extra_axes="colour")
    with pytest.raises(ValueError, match="does not fit"):
        Image(np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="coordinate_system"):
        Image(np.zeros((2, 2)), coordinate_system="RAS")


def test_affine_is_float64_and_read_only():
    img = Image(np.zeros((2, 2, 2), np.uint8), np.diag([1, 2, 3, 1]).astype(int))
    assert img.affine.dtype == np.float64 and img.affine.shape == (4, 4)
    with pytest.raises(ValueError):
        img.affine[0, 0] = 5.0


# --------------------------------------------------------------------------- geometry
def test_lps_ras_conversion_is_an_involution_and_flips_x_y():
    a = oblique_affine()
    ras = lps_to_ras(a)
    assert np.array_equal(ras_to_lps(ras), a)
    assert np.array_equal(ras[:2], -a[:2]) and np.array_equal(ras[2:], a[2:])
    # a point in LPS (x, y, z) is (-x, -y, z) in RAS
    ijk = np.array([3.0, 4.0, 5.0, 1.0])
    lps_pt, ras_pt = a @ ijk, ras @ ijk
    assert np.allclose(ras_pt[:3], [-lps_pt[0], -lps_pt[1], lps_pt[2]])


def test_from_ras_keeps_the_world_position_of_every_voxel():
    ras = np.diag([-1.0, 1.0, 2.0, 1.0])
    ras[:3, 3] = [90.0, -126.0, -72.0]
    img = Image.from_ras(np.zeros((4, 5, 6), np.uint8), ras, modality="MR")
    assert np.array_equal(img.affine_ras, ras)
    assert np.array_equal(img.affine, geo.LPS_RAS_FLIP @ ras)
    assert img.orientation == "LAS"  # i toward Left (x RAS decreases), j Anterior, k Superior
    assert img.origin == (-90.0, 126.0, -72.0)
    assert img.modality == "MR"


@pytest.mark.parametrize(
    "diag, code",
    [((1, 1, 1), "LPS"), ((-1, -1, 1), "RAS"), ((-1, 1, 1), "RPS"), ((1, -1, -1), "LAI")],
)
def test_orientation_codes_of_axis_aligned_affines(diag, code):
    a = np.diag([*diag, 1]).astype(float)
    assert orientation_code(a) == code
    assert Image(np.zeros((2, 2, 2)), a).orientation == code
    ras_code = orientation_code(lps_to_ras(a), "RAS")
    # the same grid described in RAS has the same letters: the code names directions, not axes signs
    assert ras_code == code


def test_orientation_of_permuted_axes_and_oblique_affines():
    sagittal = np.eye(4)
    sagittal[:3, :3] = [[0, 0, -1], [1, 0, 0], [0, -1, 0]]  # i->P... columns are voxel axes
    assert orientation_code(sagittal) == "PIR"
    obl = oblique_affine()
    img = Image(np.zeros((3, 3, 3)), obl)
    assert img.is_oblique
    assert img.orientation == orientation_code(obl) == "LPS"  # 15° is closest to the axes
    assert not Image(np.zeros((3, 3, 3)), np.diag([2.0, 2.0, 2.0, 1.0])).is_oblique
    assert orientation_code(np.eye(4), "pixel") == "???"


def test_spacing_direction_origin_of_an_oblique_affine():
    a = oblique_affine(spacing=(0.8, 0.9, 2.5), origin=(-100.0, 50.0, 30.0))
    img = Image(np.zeros((4, 5, 6), np.int16), a)
    assert np.allclose(img.spacing, (0.8, 0.9, 2.5), atol=1e-12)
    d = img.direction
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert np.allclose(d, rotation(15, 15), atol=1e-12)
    assert img.origin == (-100.0, 50.0, 30.0)
    ijk = np.array([[0, 0, 0], [3, 4, 5], [1.5, 2.5, 0.25]])
    xyz = img.voxel_to_world(ijk)
    assert np.allclose(xyz[0], img.origin)
    assert np.allclose(img.world_to_voxel(xyz), ijk, atol=1e-9)


def test_make_affine_inverts_spacing_direction_origin():
    a = oblique_affine()
    b = geo.make_affine(geo.direction(a), geo.spacing(a), a[:3, 3])
    assert np.allclose(a, b, atol=1e-12)


# --------------------------------------------------------------------------- dimensionality
def test_2d_image_has_two_spacings_and_a_4x4_affine():
    img = Image(np.zeros((7, 5), np.uint8), np.diag([0.3, 0.4, 1.0, 1.0]))
    assert img.spatial_ndim == 2 and img.spatial_shape == (7, 5) and img.extra_axes == ()
    assert img.spacing == pytest.approx((0.3, 0.4))
    assert img.affine.shape == (4, 4)
    assert img.orientation == "LPS"


def test_rgb_image_has_a_channel_axis(rng):
    arr = rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)
    img = Image(arr, extra_axes="channel", coordinate_system="pixel", modality="XC")
    assert img.spatial_ndim == 2 and img.extra_axes == ("channel",) and img.spatial_shape == (8, 6)
    assert img.orientation == "???"
    assert "extra_axes=channel" in repr(img)


def test_4d_time_series_and_colour_cine(rng):
    t = Image(rng.normal(size=(4, 4, 3, 10)).astype(np.float32), np.eye(4), extra_axes="time")
    assert t.spatial_ndim == 3 and t.spatial_shape == (4, 4, 3)
    cine = Image(np.zeros((6, 5, 12, 3), np.uint8), extra_axes=("frame", "channel"))
    assert cine.spatial_ndim == 2 and cine.extra_axes == ("frame", "channel")
    # without extra axes a 4D array is not an image
    with pytest.raises(ValueError):
        Image(np.zeros((2, 2, 2, 2)))


def test_with_array_keeps_geometry_and_checks_the_grid(rng):
    img = Image(rng.normal(size=(4, 5, 6)), oblique_affine(), modality="CT", metadata={"a": 1}, sources=["x"])
    mask = img.with_array(img.array > 0)
    assert mask.dtype == np.bool_ and np.array_equal(mask.affine, img.affine)
    assert mask.modality == "CT" and mask.metadata == {"a": 1} and mask.sources == ["x"]
    mask.metadata["a"] = 2
    assert img.metadata["a"] == 1  # metadata is copied, not shared
    probs = img.with_array(np.zeros((4, 5, 6, 3)), extra_axes=("channel",))
    assert probs.extra_axes == ("channel",)
    with pytest.raises(GeometryError, match="does not match the image grid"):
        img.with_array(np.zeros((4, 5, 7)))


def test_summary_is_json_able_and_complete():
    img = Image(np.zeros((4, 5, 6), np.int16), oblique_affine(), modality="CT", metadata={"patient_age": "045Y"})
    s = img.summary()
    back = json.loads(json.dumps(s))
    assert back["shape"] == [4, 5, 6] and back["dtype"] == "int16" and back["oblique"] is True
    assert np.allclose(back["affine_lps"], img.affine) and np.allclose(back["affine_ras"], img.affine_ras)
    assert back["orientation"] == "LPS" and back["coordinate_system"] == "LPS"
    assert back["metadata"] == {"patient_age": "045Y"}


def test_repr_shows_shape_spacing_orientation():
    img = Image(np.zeros((4, 5, 6), np.int16), np.diag([0.5, 0.5, 2.0, 1.0]), modality="CT")
    assert repr(img) == ("Image(shape=(4, 5, 6), spacing=(0.5, 0.5, 2), orientation=LPS, dtype=int16, "
                         "modality=CT, loaded)")


def test_public_api_names():
    for name in ("Image", "load", "load_all", "save", "write_dicom_series"):
        assert hasattr(sobre, name), name
    assert sobre.Image is Image


# --------------------------------------------------------------------------- docstring examples
@pytest.mark.parametrize(
    "module",
    ["sobre.image._image", "sobre.image._geometry", "sobre.image._io", "sobre.image._dicom",
     "sobre.image._dicom_write", "sobre.image._formats"],
)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0

"""From a frozen dataset version to cached, memory-mapped arrays; preprocessing geometry."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sobre
from sobre.errors import InputError
from sobre.learn import Cohort, load_cohort, preprocess_image
from sobre.learn._config import DataConfig, MaskRule, PreprocessConfig

from .helpers import make_workspace


def test_cache_is_built_once_per_version_and_setting(blob_workspace):
    ws, ref = blob_workspace
    c = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig())
    assert isinstance(c.images, np.memmap) and c.images.shape == (40, 1, 16, 16, 16)
    assert c.source["content_hash"] == ref.content_hash and c.source["dataset"] == "all@v1"
    index = os.path.join(c.source["cache"], "index.json")
    stamp = os.stat(index).st_mtime_ns
    again = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig())
    assert again.source["cache"] == c.source["cache"] and os.stat(index).st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(c.images))
    other = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig(intensity="minmax"))
    assert other.source["cache"] != c.source["cache"]
    assert float(np.asarray(other.images).min()) == 0.0 and float(np.asarray(other.images).max()) == 1.0
    # metadata of the version comes along: participants.tsv columns and the site given at ingest
    assert {"subject_id", "site", "age", "sex", "diagnosis"} <= set(c.table.columns)
    assert set(c.table["site"]) == {"north", "south"}
    assert c.table["subject_id"].is_unique


def test_zscore_uses_foreground_voxels(blob_workspace):
    ws, ref = blob_workspace
    c = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig(intensity="zscore", foreground_threshold=500))
    x = np.asarray(c.images[0, 0])
    raw = sobre.load(ws.files_of(c.table.at[0, "series_uid"])[0]).array.astype(np.float32)
    fg = raw[raw > 500]
    np.testing.assert_allclose(x, (raw - fg.mean()) / fg.std(), rtol=1e-4, atol=1e-4)


def test_where_filter_and_no_match(blob_workspace):
    ws, ref = blob_workspace
    c = load_cohort(ws, DataConfig(dataset=ref.ref, where='site == "north"'), PreprocessConfig())
    assert set(c.table["site"]) == {"north"} and 0 < len(c) < 40
    with pytest.raises(InputError, match="no series of all@v1 matches data.where"):
        load_cohort(ws, DataConfig(dataset=ref.ref, where='site == "mars"'), PreprocessConfig())


def test_inconsistent_shapes_need_a_resampling_rule(tmp_path):
    sizes = [16] * 12
    sizes[5] = 20
    ws, ref = make_workspace(tmp_path, 12, sizes=sizes)
    with pytest.raises(InputError, match="images have 2 different shapes and no resampling rule") as e:
        load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig())
    assert "(20, 20, 20)" in e.value.found and "(16, 16, 16) ×11" in e.value.found
    assert 'preprocess.resample = "shape" with shape = [16, 16, 16]' in e.value.fix
    c = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig(resample="shape", shape=[12, 12, 12]))
    assert c.images.shape == (12, 1, 12, 12, 12)
    c = load_cohort(ws, DataConfig(dataset=ref.ref),
                    PreprocessConfig(resample="spacing", spacing=[4.0, 4.0, 4.0], shape=[8, 8, 8]))
    assert c.images.shape == (12, 1, 8, 8, 8)


def test_a_file_changed_after_the_freeze_is_refused(tmp_path):
    ws, ref = make_workspace(tmp_path, 8)
    victim = ws.files_of(ws.dataset(ref.ref).series[3].series_uid)[0]
    os.chmod(victim, 0o644)
    with open(victim, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputError, match="changed since the dataset version was frozen") as e:
        load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig())
    assert e.value.path == victim and "restore the original" in e.value.fix
    assert not list((ws.root / "cache" / "learn").glob("*/index.json"))  # nothing half-built is kept


def test_masks_are_paired_by_subject(tmp_path):
    ws, ref = make_workspace(tmp_path, 10, with_masks=True, where='format == "nifti"')
    c = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig(), mask_rule=MaskRule(equals="mask"))
    assert len(c) == 10 and c.masks.shape == (10, 16, 16, 16) and set(np.unique(c.masks)) == {0, 1}
    assert (c.table["protocol"] == "T1w").all()
    # the mask sits on its image: the bright ball
    img, m = np.asarray(c.images[0, 0]), np.asarray(c.masks[0]).astype(bool)
    assert img[m].mean() > img[~m].mean() + 1
    with pytest.raises(InputError, match="no mask series"):
        load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig(), mask_rule=MaskRule(equals="seg"))


def test_reorientation_keeps_world_positions():
    # a RAS-ordered volume (i -> right, j -> anterior): world LPS x = -i, y = -j
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    aff = np.array([[-2.0, 0, 0, 10], [0, -3.0, 0, 20], [0, 0, 4.0, 30], [0, 0, 0, 1]])
    img = sobre.Image(arr, aff)
    out, a2 = preprocess_image(img, PreprocessConfig(intensity="none"))
    assert out.shape == (1, 4, 5, 6)
    assert np.all(np.diag(a2)[:3] > 0)  # index axes now increase towards L, P, S
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = aff @ [*ijk, 1]
        new = np.linalg.solve(a2, world)[:3].round().astype(int)
        assert out[(0, *new)] == arr[ijk]


def test_permuted_axes_are_reordered():
    # sagittal-like: i -> P, j -> S, k -> L
    arr = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    aff = np.array([[0, 0, 2.0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    out, a2 = preprocess_image(sobre.Image(arr, aff), PreprocessConfig(intensity="none"))
    assert out.shape == (1, 5, 3, 4)
    np.testing.assert_allclose(a2[:3, :3], 2 * np.eye(3))
    np.testing.assert_array_equal(out[0], np.transpose(arr, (2, 0, 1)))


def test_spacing_resampling_preserves_world_coordinates():
    # intensity = world x coordinate (linear): after resampling every voxel holds its own world x
    n = 20
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [5.0, 0.0, 0.0]
    x = np.arange(n, dtype=np.float32) + 5.0
    arr = np.broadcast_to(x[:, None, None], (n, n, n)).copy()
    out, a2 = preprocess_image(sobre.Image(arr, aff), PreprocessConfig(resample="spacing", spacing=[2.0, 2.0, 2.0],
                                                                        intensity="none"))
    assert out.shape == (1, 10, 10, 10)
    world_x = a2[0, 0] * np.arange(10) + a2[0, 3]
    np.testing.assert_allclose(out[0, 1:-1, 5, 5], world_x[1:-1], atol=1e-4)
    out2, a3 = preprocess_image(sobre.Image(arr, aff), PreprocessConfig(resample="spacing", spacing=[2.0, 2.0, 2.0],
                                                                         shape=[12, 8, 8], intensity="none"))
    assert out2.shape == (1, 12, 8, 8)
    world_x2 = a3[0, 0] * np.arange(12) + a3[0, 3]
    np.testing.assert_allclose(out2[0, 2:-2, 4, 4], world_x2[2:-2], atol=1e-4)
    assert (out2[0, 0] == 0).all()  # zero padding outside the field of view


def test_from_arrays_subset_and_content_hash():
    imgs = np.random.default_rng(0).random((6, 4, 4, 4)).astype(np.float32)
    meta = [{"subject_id": f"s{i // 2}", "age": 30 + i} for i in range(6)]
    c = Cohort.from_arrays(imgs, meta)
    assert c.images.shape == (6, 1, 4, 4, 4) and c.spatial_dims == 3 and len(c.subjects()) == 3
    sub = c.subset([4, 1])
    np.testing.assert_array_equal(np.asarray(sub.images[0]), imgs[4][None])
    np.testing.assert_array_equal(sub.rows_of(["s0"]), [1])
    assert Cohort.from_arrays(imgs, meta).content_hash == c.content_hash
    imgs[0, 0, 0, 0] += 1
    assert Cohort.from_arrays(imgs, meta).content_hash != c.content_hash
    with pytest.raises(InputError, match="no 'subject_id' column"):
        Cohort.from_arrays(imgs, [{"age": 1}] * 6)


def test_cache_building_reports_progress_and_prints_nothing(blob_workspace, capsys):
    from sobre.base import ProgressRecorder

    ws, ref = blob_workspace
    rec = ProgressRecorder()
    c = load_cohort(ws, DataConfig(dataset=ref.ref), PreprocessConfig(intensity="percentile"), progress=rec)
    assert rec.last("caching all@v1") == (40, 40) and rec.calls[0] == ("caching all@v1", 0, 40)
    assert capsys.readouterr().out == "" and len(c) == 40


def test_spacing_is_exact_whatever_the_field_of_view():
    """resample = "spacing" gives exactly `spacing` mm, centred on the field of view, then crops/pads whole voxels.

    Cache format 1 resized to round(extent / spacing) voxels over the whole field of view instead: 181 mm at
    4 mm became 45 voxels of 4.022 mm, 182 mm 46 voxels of 3.957 mm — one scale per field of view, so two
    scans of one head could reach the network at scales 1.6 % apart. Now both are 4 mm.
    """
    cfg = PreprocessConfig(resample="spacing", spacing=[4.0, 4.0, 4.0], shape=[40, 48, 40], intensity="none")
    for n in (181, 182):
        x = np.arange(n, dtype=np.float32)  # intensity = world x in mm
        img = sobre.Image(np.broadcast_to(x[:, None, None], (n, 8, 8)).copy(), np.eye(4))
        out, aff = preprocess_image(img, cfg)
        np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [4.0, 4.0, 4.0], rtol=0, atol=1e-12)
        centre = (n - 1) / 2  # the field of view's centre stays within half a voxel of the output's centre
        assert abs(aff[0, 3] + 4.0 * 19.5 - centre) <= 2.0 + 1e-9
        world_x = aff[0, 3] + 4.0 * np.arange(40)
        inside = (world_x >= 0) & (world_x <= n - 1)
        np.testing.assert_allclose(out[0, inside, 24, 20], world_x[inside], atol=1e-3)
        assert (out[0, world_x < -0.5 - 2, 24, 20] == 0).all()  # zero padding beyond the image


@pytest.mark.parametrize("shape", [(12, 12, 12), (24, 20, 12)])
def test_resize_matches_the_trilinear_resize_of_cache_format_1(shape):
    """resample = "shape" keeps the geometry of format 1 (torch trilinear, align_corners=False); values
    differ by float32 rounding only (sobre.image interpolates in float64)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    arr = (rng.normal(500, 200, (16, 16, 16))).astype(np.float32)
    img = sobre.Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]))
    out, aff = preprocess_image(img, PreprocessConfig(resample="shape", shape=list(shape), intensity="none"))
    ref = F.interpolate(torch.from_numpy(arr)[None, None], size=shape, mode="trilinear", align_corners=False,
                        antialias=False)[0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)
    scale = np.array([16 / s for s in shape])
    np.testing.assert_allclose(np.diag(aff)[:3], 2.0 * scale)
    np.testing.assert_allclose(aff[:3, 3], 2.0 * (0.5 * scale - 0.5))  # voxel centres, same field of view

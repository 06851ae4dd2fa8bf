"""Lesion-wise detection: matching, sensitivity by size, false positives per case, FROC."""

import numpy as np
import pytest

from sobre.validate import detect_case, detection_metrics, lesions_from_mask, match_candidates


def ball(shape, centre, radius):
    g = np.indices(shape, dtype=float)
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius ** 2


SHAPE = (96, 96, 96)


@pytest.fixture(scope="module")
def cases():
    # case 1: lesions of diameter 6, 14, 24 mm; candidates on the first two (0.9, 0.4), a false positive (0.7)
    ref1 = ball(SHAPE, (20, 20, 20), 3) | ball(SHAPE, (50, 50, 30), 7) | ball(SHAPE, (70, 25, 65), 12)
    prob1 = np.zeros(SHAPE, np.float32)
    prob1[ball(SHAPE, (20, 20, 20), 2)] = 0.9
    prob1[ball(SHAPE, (51, 50, 30), 2)] = 0.4
    prob1[ball(SHAPE, (85, 85, 10), 2)] = 0.7
    # case 2: a 36 mm lesion found (0.95), two false positives (0.6, 0.3)
    ref2 = ball(SHAPE, (48, 48, 48), 18)
    prob2 = np.zeros(SHAPE, np.float32)
    prob2[ball(SHAPE, (45, 48, 48), 2)] = 0.95
    prob2[ball(SHAPE, (5, 5, 5), 2)] = 0.6
    prob2[ball(SHAPE, (90, 5, 90), 2)] = 0.3
    # case 3: no lesion, one false positive (0.8)
    ref3 = np.zeros(SHAPE, bool)
    prob3 = np.zeros(SHAPE, np.float32)
    prob3[ball(SHAPE, (30, 70, 40), 2)] = 0.8
    return [detect_case(r, p, (1.0, 1.0, 1.0), candidate_threshold=0.25)
            for r, p in ((ref1, prob1), (ref2, prob2), (ref3, prob3))]


def test_lesions_and_matching(cases):
    c1, c2, c3 = cases
    np.testing.assert_allclose(np.sort(c1.lesion_diameters), [6, 14, 24], rtol=0.08)
    assert c2.lesion_diameters[0] == pytest.approx(36, rel=0.05)
    np.testing.assert_allclose(np.sort(c1.lesion_hit_scores), [-np.inf, 0.4, 0.9], rtol=1e-6)
    np.testing.assert_allclose(c1.fp_scores, [0.7], rtol=1e-6)
    np.testing.assert_allclose(np.sort(c2.fp_scores), [0.3, 0.6], rtol=1e-6)
    assert len(c3.lesion_diameters) == 0
    np.testing.assert_allclose(c3.fp_scores, [0.8], rtol=1e-6)


def test_sensitivity_fp_and_size_strata(cases):
    res = detection_metrics(cases, threshold=0.5, n_resamples=0)
    m = {k: v.value for k, v in res.metrics.items()}
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["fp_per_case"] == pytest.approx(3 / 3)
    assert m["sensitivity[<10 mm]"] == 1.0
    assert m["sensitivity[10-20 mm]"] == 0.0
    assert m["sensitivity[20-30 mm]"] == 0.0
    assert m["sensitivity[>=30 mm]"] == 1.0
    assert res.counts["lesions_per_size"] == {"<10 mm": 1, "10-20 mm": 1, "20-30 mm": 1, ">=30 mm": 1}


def test_froc_by_hand(cases):
    # scores in descending order: 0.95 hit, 0.9 hit, 0.8 FP, 0.7 FP, 0.6 FP, 0.4 hit, 0.3 FP (3 cases, 4 lesions)
    res = detection_metrics(cases, threshold=0.5, n_resamples=0)
    m = {k: v.value for k, v in res.metrics.items()}
    expected = {0.125: 0.5, 0.25: 0.5, 0.5: 0.5, 1: 0.75, 2: 0.75, 4: 0.75, 8: 0.75}
    for rate, sens in expected.items():
        assert m[f"froc_sensitivity@{rate:g}"] == pytest.approx(sens), rate
    assert m["cpm"] == pytest.approx(4.5 / 7)
    np.testing.assert_allclose(res.froc["fp_per_case"], np.array([0, 0, 1, 2, 3, 3, 4]) / 3, rtol=1e-6)
    np.testing.assert_allclose(res.froc["sensitivity"], np.array([1, 2, 2, 2, 2, 3, 3]) / 4, rtol=1e-6)


def test_bootstrap_by_case(cases):
    res = detection_metrics(cases * 10, threshold=0.5, n_resamples=300, seed=0)
    e = res.metrics["sensitivity"]
    assert e.value == pytest.approx(0.5)
    assert e.ci_low < 0.5 < e.ci_high
    # every case has exactly one false positive at 0.5: no case-to-case variation, a point interval
    fp = res.metrics["fp_per_case"]
    assert (fp.value, fp.ci_low, fp.ci_high) == (1.0, 1.0, 1.0)
    cpm = res.metrics["cpm"]
    assert cpm.ci_low < 4.5 / 7 < cpm.ci_high


def test_point_matching_with_distance_rule():
    # lesion table: centres (mm) and diameters; detections: centres and scores
    det = match_candidates(np.array([[0, 0, 0], [50, 0, 0]]), np.array([10.0, 4.0]),
                           np.array([[3, 0, 0], [52.5, 0, 0], [100, 0, 0]]), np.array([0.9, 0.8, 0.7]))
    np.testing.assert_allclose(det.lesion_hit_scores, [0.9, -np.inf])  # 2.5 mm > radius 2 mm
    np.testing.assert_allclose(det.fp_scores, [0.8, 0.7])
    det = match_candidates(np.array([[0, 0, 0], [50, 0, 0]]), np.array([10.0, 4.0]),
                           np.array([[3, 0, 0], [52.5, 0, 0]]), np.array([0.9, 0.8]), min_radius_mm=3.0)
    np.testing.assert_allclose(det.lesion_hit_scores, [0.9, 0.8])
    assert len(det.fp_scores) == 0


def test_longest_diameter():
    m = np.zeros((30, 30, 30), bool)
    m[5, 5, 2:22] = True  # 20 voxels along z at 1.5 mm
    _, centres, d = lesions_from_mask(m, (1.0, 1.0, 1.5), size="longest")
    assert d[0] == pytest.approx(19 * 1.5 + 1.0)
    np.testing.assert_allclose(centres[0], [5.0, 5.0, 11.5 * 1.5])

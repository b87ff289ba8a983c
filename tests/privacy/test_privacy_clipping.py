"""Clipping: the bound always holds, direction is kept, small and zero updates pass."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.errors import PrivacyError
from fedsim.privacy import clip_l1, clip_l2, l1_norm, l2_norm

NORMS = {"l2": (clip_l2, lambda v: np.linalg.norm(v)), "l1": (clip_l1, lambda v: np.abs(v).sum())}


def _vectors(rng: np.random.Generator):
    for size in (1, 2, 7, 1000, 20_000):
        for log_scale in (-300, -12, -3, 0, 3, 12, 150, 300):
            for _ in range(3):
                yield rng.standard_normal(size) * 10.0**log_scale
    yield np.full(10, np.finfo(np.float64).max)  # the largest finite entries there are


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("bound", [1e-8, 0.1, 1.0, 3.7, 1e6])
def test_clipped_norm_never_exceeds_bound(kind, bound):
    clip, _ = NORMS[kind]
    norm_of = l2_norm if kind == "l2" else l1_norm
    rng = np.random.default_rng(0)
    for v in _vectors(rng):
        clipped, _ = clip(v, bound)
        assert norm_of(clipped) <= bound
        # float64 reference norm on rescaled values agrees too (no overflow here)
        _, ref = NORMS[kind]
        assert ref(clipped / bound) <= 1.0 + 1e-12


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_clip_keeps_direction_and_reports_original_norm(kind):
    clip, ref = NORMS[kind]
    rng = np.random.default_rng(1)
    v = rng.standard_normal(513) * 40.0
    clipped, norm = clip(v, 2.5)
    assert norm == pytest.approx(ref(v), rel=1e-12)
    np.testing.assert_allclose(clipped, v * (2.5 / ref(v)), rtol=1e-12)
    assert ref(clipped) == pytest.approx(2.5, rel=1e-12)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_update_within_bound_is_returned_unchanged_as_copy(kind):
    clip, ref = NORMS[kind]
    v = np.array([0.1, -0.2, 0.05])
    before = v.copy()
    clipped, norm = clip(v, 10.0)
    np.testing.assert_array_equal(clipped, v)
    assert clipped is not v
    assert norm == pytest.approx(ref(v), rel=1e-15)
    np.testing.assert_array_equal(v, before)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_zero_update_survives_without_division_by_zero(kind):
    clip, _ = NORMS[kind]
    with np.errstate(all="raise"):
        clipped, norm = clip(np.zeros(17), 1.0)
        empty, empty_norm = clip(np.zeros(0), 1.0)
    np.testing.assert_array_equal(clipped, np.zeros(17))
    assert norm == 0.0 and empty_norm == 0.0 and empty.shape == (0,)


def test_huge_entries_do_not_overflow_the_norm():
    v = np.full(4, 1e200)
    assert l2_norm(v) == pytest.approx(2e200, rel=1e-12)
    clipped, norm = clip_l2(v, 1.0)
    assert norm == pytest.approx(2e200, rel=1e-12)
    np.testing.assert_allclose(clipped, np.full(4, 0.5), rtol=1e-12)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("clip", [clip_l2, clip_l1])
def test_bad_bound_is_refused(clip, bound):
    with pytest.raises(PrivacyError, match="clip bound must be a finite number > 0"):
        clip(np.ones(3), bound)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_refused(bad):
    with pytest.raises(PrivacyError, match="NaN or infinite"):
        clip_l2(np.array([1.0, bad]), 1.0)

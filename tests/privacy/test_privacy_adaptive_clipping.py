"""Adaptive clipping (Andrew et al. 2021): quantile tracking and its accounted cost."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.errors import PrivacyError
from fedsim.privacy import (
    AdaptiveClipSpec,
    AdaptiveClipState,
    clip_indicator,
    clip_l2,
    effective_noise_multiplier,
    update_clip,
    update_noise_multiplier,
)


def test_noise_split_matches_the_paper_formula():
    # z = 1 overall with sigma_b = 5: z_u = (1 - 1/100)^(-1/2)
    z_u = update_noise_multiplier(1.0, 5.0)
    assert z_u == pytest.approx((1.0 - 0.01) ** -0.5, rel=1e-15)
    assert effective_noise_multiplier(z_u, 5.0) == pytest.approx(1.0, rel=1e-14)
    assert z_u > 1.0


def test_indicator_noise_is_an_ordinary_noise_spec_with_stddev_sigma_b():
    spec = AdaptiveClipSpec(target_quantile=0.5, learning_rate=0.2, indicator_noise_stddev=2.5)
    noise_spec = spec.indicator_noise_spec()
    assert noise_spec.clip == 0.5 and noise_spec.stddev == pytest.approx(2.5)
    draws = noise_spec.sample(np.random.default_rng(0), 1_000_000)
    assert abs(draws.std() / 2.5 - 1.0) < 5.0 / math.sqrt(2 * 1_000_000)


def test_clip_tracks_the_target_quantile_of_update_norms():
    rng = np.random.default_rng(0)
    spec = AdaptiveClipSpec(target_quantile=0.3, learning_rate=0.2, indicator_noise_stddev=1.0)
    state, clients = AdaptiveClipState(clip=0.01), 100
    for _ in range(300):
        norms = []
        for _ in range(clients):
            update = rng.standard_normal(8) * rng.lognormal(0.0, 0.5)
            _, norm = clip_l2(update, state.clip)
            norms.append(norm)
        indicators = sum(clip_indicator(n, state.clip) for n in norms)
        noised = indicators + spec.indicator_noise_spec().sample(rng, 1)[0]
        state = update_clip(state, spec, noised, expected_clients=clients)
    fresh = np.linalg.norm(rng.standard_normal((20_000, 8)), axis=1) * rng.lognormal(
        0.0, 0.5, 20_000
    )
    assert abs(np.mean(fresh <= state.clip) - 0.3) < 0.05


def test_geometric_update_numbers():
    spec = AdaptiveClipSpec(target_quantile=0.5, learning_rate=0.2, indicator_noise_stddev=1.0)
    # all 10 clients unclipped: fraction 1 -> C * exp(-0.2 * 0.5)
    state = update_clip(AdaptiveClipState(2.0), spec, 10 * 0.5, expected_clients=10)
    assert state.clip == pytest.approx(2.0 * math.exp(-0.1), rel=1e-15)
    assert clip_indicator(1.0, 1.0) == 0.5 and clip_indicator(1.0 + 1e-12, 1.0) == -0.5


def test_refusals():
    with pytest.raises(PrivacyError, match=r"need 2 \* sigma_b > z"):
        update_noise_multiplier(1.0, 0.5)
    with pytest.raises(PrivacyError, match="an un-noised indicator count is not private"):
        AdaptiveClipSpec(0.5, 0.2, 0.0)
    with pytest.raises(PrivacyError, match=r"target_quantile: must be in \(0, 1\)"):
        AdaptiveClipSpec(1.0, 0.2, 1.0)
    with pytest.raises(PrivacyError, match="expected_clients: must be > 0"):
        update_clip(AdaptiveClipState(1.0), AdaptiveClipSpec(0.5, 0.2, 1.0), 0.0, 0)

"""Noise mechanisms: scale = clip * multiplier, and distributed shares add up exactly.

Statistical tolerances are 5 standard errors of the estimator at a fixed seed, so the
tests are deterministic and would fail for a scale error of a few tenths of a percent.
For N draws: SE(sample std)/sigma = 1/sqrt(2N) for a Gaussian and sqrt(1.25/N) for a
Laplace (kurtosis 6); SE(sample variance)/variance = sqrt(5/N) for a Laplace.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedsim.errors import PrivacyError
from fedsim.privacy import Mechanism, check_survivors, make_mechanism

N = 1_000_000


def _zero_update_plus_noise(spec: Mechanism, rng: np.random.Generator) -> np.ndarray:
    clipped, norm = spec.clip_update(np.zeros(N))
    assert norm == 0.0
    return clipped + spec.sample(rng, N)


def test_gaussian_noise_stddev_is_clip_times_multiplier_on_a_zero_update():
    spec = make_mechanism("gaussian", clip=2.0, noise_multiplier=1.5)
    assert spec.scale == spec.stddev == 3.0
    noisy = _zero_update_plus_noise(spec, np.random.default_rng(0))
    assert abs(noisy.std() / 3.0 - 1.0) < 5.0 / math.sqrt(2 * N)
    assert abs(noisy.mean()) < 5.0 * 3.0 / math.sqrt(N)


def test_laplace_noise_scale_is_clip_times_multiplier_on_a_zero_update():
    spec = make_mechanism("laplace", clip=0.5, noise_multiplier=4.0)
    b = 2.0
    assert spec.scale == b and spec.stddev == pytest.approx(math.sqrt(2.0) * b)
    noisy = _zero_update_plus_noise(spec, np.random.default_rng(1))
    assert abs(noisy.std() / (math.sqrt(2.0) * b) - 1.0) < 5.0 * math.sqrt(1.25 / N)
    # mean absolute deviation of Laplace(b) is b
    assert abs(np.abs(noisy).mean() / b - 1.0) < 5.0 / math.sqrt(N)


def test_noise_is_a_function_of_the_generator_only():
    spec = make_mechanism("gaussian", clip=1.0, noise_multiplier=1.0)
    a = spec.sample(np.random.default_rng(7), 5)
    b = spec.sample(np.random.default_rng(7), 5)
    c = spec.sample(np.random.default_rng(8), 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gaussian_shares_sum_to_target_variance():
    spec = make_mechanism("gaussian", clip=1.0, noise_multiplier=2.0)
    m, size = 7, 200_000
    rng = np.random.default_rng(2)
    shares = [spec.share(rng, size, m) for _ in range(m)]
    assert abs(shares[0].std() / (2.0 / math.sqrt(m)) - 1.0) < 5.0 / math.sqrt(2 * size)
    total = np.sum(shares, axis=0)
    assert abs(total.std() / 2.0 - 1.0) < 5.0 / math.sqrt(2 * size)
    assert stats.kstest(total, stats.norm(scale=2.0).cdf).pvalue > 0.01


@pytest.mark.parametrize("m", [1, 3, 10])
def test_laplace_shares_sum_to_a_laplace(m):
    spec = make_mechanism("laplace", clip=1.0, noise_multiplier=1.5)
    b, size = 1.5, 200_000
    rng = np.random.default_rng(3 + m)
    total = np.sum([spec.share(rng, size, m) for _ in range(m)], axis=0)
    assert abs(total.var() / (2 * b**2) - 1.0) < 5.0 * math.sqrt(5.0 / size)
    assert stats.kstest(total, stats.laplace(scale=b).cdf).pvalue > 0.01
    # A single share of several is not Laplace(b): the test has the power to tell.
    if m > 1:
        one = spec.share(rng, size, m)
        assert stats.kstest(one, stats.laplace(scale=b).cdf).pvalue < 1e-6


def test_check_survivors_refuses_too_few_contributors():
    check_survivors(5, 5)
    check_survivors(9, 5)
    with pytest.raises(PrivacyError, match="only 4 clients contributed.*min_clients=5"):
        check_survivors(4, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(mechanism="gauss", clip=1.0, noise_multiplier=1.0),
            "mechanism: must be one of 'gaussian', 'laplace', got 'gauss'",
        ),
        (dict(mechanism="gaussian", clip=None, noise_multiplier=1.0), "noise without clipping"),
        (dict(mechanism="laplace", clip=0.0, noise_multiplier=1.0), "noise without clipping"),
        (
            dict(mechanism="gaussian", clip=1.0, noise_multiplier=0.0),
            "noise_multiplier: must be a finite number > 0 when DP is enabled",
        ),
        (dict(mechanism="gaussian", clip=1.0, noise_multiplier=None), "noise_multiplier"),
    ],
)
def test_noise_spec_refuses_configurations_without_a_guarantee(kwargs, message):
    with pytest.raises(PrivacyError, match=message):
        make_mechanism(**kwargs)


def test_noise_share_needs_a_positive_count():
    spec = make_mechanism("gaussian", clip=1.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="num_shares: must be an integer >= 1"):
        spec.share(np.random.default_rng(0), 3, 0)


def test_clip_update_uses_the_mechanisms_norm_and_lands_on_the_lattice_within_the_clip():
    v = np.array([3.0, 4.0])
    gauss = make_mechanism("gaussian", clip=1.0, noise_multiplier=1.0)
    lap = make_mechanism("laplace", clip=1.0, noise_multiplier=1.0)
    l2, norm2 = gauss.clip_update(v)
    l1, norm1 = lap.clip_update(v)
    assert (norm2, norm1) == (5.0, 7.0)
    # Within the rounding slack (1/1024 of the clip) of the exact clip, never above it.
    np.testing.assert_allclose(l2, [0.6, 0.8], atol=2.0 ** -10)
    np.testing.assert_allclose(l1, [3 / 7, 4 / 7], atol=2.0 ** -10)
    assert np.linalg.norm(l2) <= 1.0 and np.abs(l1).sum() <= 1.0
    for mech, out in ((gauss, l2), (lap, l1)):
        gamma, _ = mech.lattice(v.size)
        assert gamma == 2.0 ** round(np.log2(gamma))  # a power of two
        np.testing.assert_array_equal(out / gamma, np.rint(out / gamma))


@pytest.mark.parametrize("size", [1, 7, 100_000])
def test_a_clipped_update_stays_within_the_clip_after_rounding_at_any_size(size):
    rng = np.random.default_rng(size)
    mech = make_mechanism("gaussian", clip=0.37, noise_multiplier=1.0)
    for _ in range(20):
        out, _ = mech.clip_update(rng.normal(0, 5, size))
        assert np.linalg.norm(out) <= 0.37


def test_importing_the_package_does_not_import_jax():
    # The aggregator and key holders add noise and account without ever loading JAX.
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, fedsim.privacy as p; assert 'jax' not in sys.modules, 'jax loaded'; "
        "p.make_mechanism; p.Accountant; assert 'jax' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=root)

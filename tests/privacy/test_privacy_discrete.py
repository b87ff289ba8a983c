"""The discrete noise samplers: their distribution (mass function, variance, tails)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedsim.errors import PrivacyError
from fedsim.privacy.mechanisms import make_mechanism
from fedsim.privacy.mechanisms.discrete import (
    discrete_gaussian,
    discrete_laplace,
    sum_divergence,
)
from fedsim.privacy.randomness import SecretRandom


def _gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    wide = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    norm = np.exp(-wide.astype(float) ** 2 / (2 * sigma**2)).sum()
    return np.exp(-support.astype(float) ** 2 / (2 * sigma**2)) / norm


@pytest.mark.parametrize("sigma", [0.8, 2.5])
def test_discrete_gaussian_matches_its_mass_function(sigma):
    draws = discrete_gaussian(np.random.default_rng(1), sigma, 400_000)
    support = np.arange(-6, 7) if sigma < 1 else np.arange(-12, 13)
    expected = _gaussian_pmf(sigma, support) * draws.size
    observed = np.array([(draws == k).sum() for k in support])
    tail = draws.size - observed.sum()
    chi2, p = stats.chisquare(np.append(observed, tail),
                              np.append(expected, draws.size - expected.sum()))
    assert p > 1e-3, (chi2, p)


@pytest.mark.parametrize("sigma", [3.7, 1e4, 2.0e8])
def test_discrete_gaussian_variance_and_tails(sigma):
    draws = discrete_gaussian(SecretRandom(), sigma, 200_000).astype(np.float64)
    assert draws.dtype == np.float64 and np.all(draws == np.rint(draws))
    # Var of N_Z(0, s^2) is within exp(-2 pi^2 s^2)-ish of s^2 for s >= 1 (CKS 2020).
    se = sigma**2 * math.sqrt(2 / draws.size)
    assert abs(draws.var() - sigma**2) < 6 * se  # 6 standard errors: ~2e-9 by chance
    assert abs(draws.mean()) < 6 * sigma / math.sqrt(draws.size)
    # Tails: P(|X| > 3 sigma) from the exact mass function (the Gaussian's 0.0027 for
    # large sigma), nothing past 8 sigma.
    beyond = np.mean(np.abs(draws) > 3 * sigma)
    if sigma < 100:
        inner = np.arange(-math.floor(3 * sigma), math.floor(3 * sigma) + 1)
        expected = 1 - _gaussian_pmf(sigma, inner).sum()
    else:
        expected = 2 * stats.norm.sf(3)
    assert abs(beyond - expected) < 6 * math.sqrt(expected / draws.size)
    assert np.abs(draws).max() < 8 * sigma


def test_discrete_laplace_matches_its_mass_function_and_variance():
    t = 3.0
    draws = discrete_laplace(np.random.default_rng(2), t, 400_000)
    r = math.exp(-1 / t)
    support = np.arange(-10, 11)
    pmf = (1 - r) / (1 + r) * r ** np.abs(support)
    observed = np.array([(draws == k).sum() for k in support])
    _, p = stats.chisquare(np.append(observed, draws.size - observed.sum()),
                           np.append(pmf * draws.size, draws.size * (1 - pmf.sum())))
    assert p > 1e-3
    var = 2 * r / (1 - r) ** 2
    assert draws.var() == pytest.approx(var, rel=0.02)


def test_mechanism_noise_is_on_the_lattice_with_the_stated_stddev():
    mech = make_mechanism("gaussian", clip=0.05, noise_multiplier=2.0)
    size = 100_000
    gamma, _ = mech.lattice(size)
    noise = mech.sample(SecretRandom(), size)
    np.testing.assert_array_equal(noise / gamma, np.rint(noise / gamma))
    assert noise.std() == pytest.approx(0.1, rel=0.02)
    shares = sum(mech.share(SecretRandom(), size, 4) for _ in range(4))
    assert shares.std() == pytest.approx(0.1, rel=0.02)
    np.testing.assert_array_equal(shares / gamma, np.rint(shares / gamma))
    assert mech.share_divergence(size, 4) == 0.0  # tau underflows: sigma is 10^5 steps


def test_laplace_shares_sum_to_the_discrete_laplace_scale():
    mech = make_mechanism("laplace", clip=1.0, noise_multiplier=0.5)
    total = sum(mech.share(SecretRandom(), 50_000, 3) for _ in range(3))
    assert total.std() == pytest.approx(math.sqrt(2) * 0.5, rel=0.03)


def test_sum_divergence_is_the_kairouz_liu_steinke_tau():
    assert sum_divergence(0.5, 2) == pytest.approx(10 * math.exp(-2 * math.pi**2 * 0.25 / 2))
    assert sum_divergence(50.0, 100) == 0.0


def test_too_coarse_a_lattice_is_refused():
    with pytest.raises(PrivacyError, match="lattice steps"):
        make_mechanism("gaussian", clip=1.0, noise_multiplier=0.001).sample(SecretRandom(), 1)


@pytest.mark.parametrize("denominator", [1.0, 3.0, 7.0])
def test_sums_of_contributions_and_noise_are_exact_lattice_points(denominator):
    """Whatever m is, contributions (clipped, divided, rounded) and noise share one
    power-of-two lattice, so their float64 sum is exact: no low bits to read."""
    rng = np.random.default_rng(int(denominator))
    mech = make_mechanism("gaussian", clip=0.05, noise_multiplier=2.0)
    averaged = mech.averaged(denominator)
    gamma, _ = averaged.lattice(50_000)
    total = averaged.sample(SecretRandom(), 50_000)
    for _ in range(5):
        contribution, _ = mech.clip_update(rng.normal(0, 1, 50_000), denominator)
        assert np.linalg.norm(contribution) <= 0.05 / denominator
        total = total + contribution
    units = total / gamma
    np.testing.assert_array_equal(units, np.rint(units))
    assert averaged.stddev == pytest.approx(0.1 / denominator)

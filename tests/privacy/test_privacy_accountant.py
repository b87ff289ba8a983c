"""Accounting: fedsim's epsilon is dp-accounting's own, for every supported combination."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedsim.errors import PrivacyError
from fedsim.privacy import (
    Accountant,
    AccountingSpec,
    RecordLevelSpec,
    calibrate_dpsgd_noise_multiplier,
    calibrate_noise_multiplier,
    dp_event,
    dpsgd_event,
    epsilon,
)

DELTA = 1e-5
AOR = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
DISC = 1e-3  # coarser PLD grid than the default keeps the suite fast; same in both paths

# (spec, the per-round event and relation written by hand from dp-accounting's docs)
CASES = {
    "rdp-gaussian-poisson": (
        AccountingSpec("gaussian", 1.1, DELTA, sampling_probability=0.1),
        dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.1)),
        AOR,
    ),
    "rdp-gaussian-all-clients": (
        AccountingSpec("gaussian", 5.0, DELTA, sampling_probability=1.0),
        dpa.GaussianDpEvent(5.0),
        AOR,
    ),
    "rdp-laplace-all-clients": (
        AccountingSpec("laplace", 20.0, DELTA, sampling_probability=1.0),
        dpa.LaplaceDpEvent(20.0),
        AOR,
    ),
    "rdp-gaussian-fixed": (
        AccountingSpec("gaussian", 2.0, DELTA, sampling="fixed", population=100, sample_size=10),
        # replace-one relation: the sum's sensitivity is 2C, so the multiplier is z/2
        dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(1.0)),
        dpa.NeighboringRelation.REPLACE_ONE,
    ),
    "pld-gaussian-poisson": (
        AccountingSpec(
            "gaussian",
            1.1,
            DELTA,
            sampling_probability=0.1,
            accountant="pld",
            pld_discretization=DISC,
        ),
        dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.1)),
        AOR,
    ),
    "pld-laplace-poisson": (
        AccountingSpec(
            "laplace",
            2.0,
            DELTA,
            sampling_probability=0.2,
            accountant="pld",
            pld_discretization=DISC,
        ),
        dpa.PoissonSampledDpEvent(0.2, dpa.LaplaceDpEvent(2.0)),
        AOR,
    ),
    "pld-gaussian-all-clients": (
        AccountingSpec(
            "gaussian",
            5.0,
            DELTA,
            sampling_probability=1.0,
            accountant="pld",
            pld_discretization=DISC,
        ),
        dpa.GaussianDpEvent(5.0),
        AOR,
    ),
    "pld-laplace-all-clients": (
        AccountingSpec(
            "laplace",
            20.0,
            DELTA,
            sampling_probability=1.0,
            accountant="pld",
            pld_discretization=DISC,
        ),
        dpa.LaplaceDpEvent(20.0),
        AOR,
    ),
}


def _by_hand(kind: str, relation, event, delta: float = DELTA) -> float:
    if kind == "rdp":
        acc = rdp.RdpAccountant(neighboring_relation=relation)
    else:
        acc = pld.PLDAccountant(neighboring_relation=relation, value_discretization_interval=DISC)
    return acc.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("case", sorted(CASES))
def test_epsilon_equals_dp_accounting(case):
    spec, unit, relation = CASES[case]
    assert dp_event(spec, 30) == dpa.SelfComposedDpEvent(unit, 30)
    accountant = Accountant(spec)
    for rounds in (1, 30):
        expected = _by_hand(spec.accountant, relation, dpa.SelfComposedDpEvent(unit, rounds))
        assert 0 < expected < 100
        assert epsilon(spec, rounds) == expected
        # The cached accountant re-uses the per-round curve: RDP is the same arithmetic,
        # PLD self-composes the same per-round PLD by FFT (agrees to ~1e-7).
        rel = 1e-12 if spec.accountant == "rdp" else 1e-5
        assert accountant.epsilon_after(rounds) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize(
    "case", ["rdp-gaussian-poisson", "rdp-gaussian-fixed", "pld-laplace-poisson"]
)
def test_epsilon_grows_monotonically_with_rounds(case):
    accountant = Accountant(CASES[case][0])
    eps = [accountant.epsilon_after(r) for r in range(0, 41)]
    assert eps[0] == 0.0
    assert all(a < b for a, b in zip(eps[:-1], eps[1:], strict=True))
    assert accountant.epsilon_after(17) == eps[17]  # memoised, order-independent


def test_record_level_events_are_poisson_sampled_gaussian_steps():
    spec = RecordLevelSpec(
        noise_multiplier=1.0, sampling_rate=64 / 6400, steps_per_round=25, delta=DELTA
    )
    unit = dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0))
    assert dpsgd_event(spec, 4) == dpa.SelfComposedDpEvent(unit, 100)
    expected = _by_hand("rdp", AOR, dpa.SelfComposedDpEvent(unit, 100))
    assert epsilon(spec, 4) == expected
    assert Accountant(spec).epsilon_after(4) == pytest.approx(expected, rel=1e-12)
    assert epsilon(spec, 0) == 0.0


def test_calibrated_multiplier_meets_the_target_tightly():
    kwargs = dict(sampling_probability=0.1)
    z = calibrate_noise_multiplier(2.0, DELTA, 50, **kwargs)
    eps = epsilon(AccountingSpec("gaussian", z, DELTA, **kwargs), 50)
    assert eps <= 2.0
    assert eps > 2.0 * (1 - 1e-3)  # tol 1e-4 in z moves epsilon by far less than 0.1%
    assert epsilon(AccountingSpec("gaussian", z - 1e-3, DELTA, **kwargs), 50) > 2.0


def test_calibration_with_pld_laplace_and_fixed_sampling():
    z = calibrate_noise_multiplier(
        1.0,
        DELTA,
        20,
        mechanism="laplace",
        sampling_probability=0.2,
        accountant="pld",
        pld_discretization=DISC,
    )
    spec = AccountingSpec(
        "laplace", z, DELTA, sampling_probability=0.2, accountant="pld", pld_discretization=DISC
    )
    assert 1.0 * (1 - 1e-2) < epsilon(spec, 20) <= 1.0
    z = calibrate_noise_multiplier(4.0, DELTA, 20, sampling="fixed", population=50, sample_size=5)
    spec = AccountingSpec("gaussian", z, DELTA, sampling="fixed", population=50, sample_size=5)
    assert 4.0 * (1 - 1e-3) < epsilon(spec, 20) <= 4.0


def test_dpsgd_calibration():
    z = calibrate_dpsgd_noise_multiplier(3.0, DELTA, 10, sampling_rate=0.02, steps_per_round=20)
    spec = RecordLevelSpec(z, 0.02, 20, DELTA)
    assert 3.0 * (1 - 1e-3) < epsilon(spec, 10) <= 3.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(delta=0.0), r"delta: must be in \(0, 1\), got 0.0"),
        (dict(delta=1.0), r"delta: must be in \(0, 1\), got 1.0"),
        (dict(noise_multiplier=0.0), "noise_multiplier: must be a finite number > 0 when DP"),
        (dict(noise_multiplier=-1.0), "noise_multiplier: must be a finite number > 0 when DP"),
        (dict(sampling_probability=0.0), r"sampling probability q must be in \(0, 1\], got 0.0"),
        (dict(sampling_probability=1.5), r"sampling probability q must be in \(0, 1\], got 1.5"),
        (dict(sampling_probability=None), r"sampling probability q must be in \(0, 1\]"),
        (dict(sampling="uniform"), "sampling: must be 'poisson' or 'fixed', got 'uniform'"),
        (dict(accountant="moments"), "accountant: must be 'rdp' or 'pld', got 'moments'"),
        (dict(mechanism="exponential"), "mechanism: must be one of 'gaussian', 'laplace'"),
        (
            dict(sampling="fixed", population=10, sample_size=11),
            "fixed sampling needs integers 1 <= sample_size <= population",
        ),
    ],
)
def test_refuses_configurations_without_a_statable_guarantee(kwargs, message):
    base = dict(mechanism="gaussian", noise_multiplier=1.0, delta=DELTA, sampling_probability=0.1)
    with pytest.raises(PrivacyError, match=message):
        AccountingSpec(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(sampling="fixed", population=100, sample_size=10, accountant="pld"),
            "sampling='fixed' is not supported by the PLD accountant.*use accountant='rdp'",
        ),
        (
            dict(mechanism="laplace", sampling="fixed", population=100, sample_size=10),
            "mechanism='laplace' with sampling='fixed' is not supported.*accountant='pld'",
        ),
        (
            dict(mechanism="laplace", sampling_probability=0.1),
            r"Poisson subsampling \(q < 1\) is not supported by the RDP accountant; "
            "use accountant='pld'",
        ),
    ],
)
def test_unsupported_combinations_name_the_alternative(kwargs, message):
    base = dict(mechanism="gaussian", noise_multiplier=1.0, delta=DELTA)
    with pytest.raises(PrivacyError, match=message):
        AccountingSpec(**{**base, **kwargs})


def test_calibration_and_rounds_refusals():
    for target in (0.0, -1.0, float("inf")):
        with pytest.raises(PrivacyError, match="target_epsilon: must be a finite number > 0"):
            calibrate_noise_multiplier(target, DELTA, 10, sampling_probability=0.1)
    with pytest.raises(PrivacyError, match=r"delta: must be in \(0, 1\)"):
        calibrate_noise_multiplier(1.0, 0.0, 10, sampling_probability=0.1)
    with pytest.raises(PrivacyError, match="rounds: must be an integer >= 0, got -1"):
        Accountant(CASES["rdp-gaussian-poisson"][0]).epsilon_after(-1)
    with pytest.raises(PrivacyError, match="steps_per_round: must be an integer >= 1"):
        RecordLevelSpec(1.0, 0.1, 0, DELTA)
    with pytest.raises(PrivacyError, match=r"sampling_rate: sampling probability q"):
        RecordLevelSpec(1.0, 0.0, 5, DELTA)

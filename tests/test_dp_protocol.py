"""Differential privacy inside the protocol: clipping, noise placement, accounting."""

from __future__ import annotations

import numpy as np
import pytest
from builders import tiny_config

from fedsim.backend import InProcessBackend
from fedsim.coordinator import Federation, run_rounds, sample_clients
from fedsim.errors import ConfigError
from fedsim.privacy import AccountingSpec, RecordLevelSpec, epsilon
from fedsim.runner import load_dataset


def _federation(cfg, backend=None, run_id="dp"):
    fed = Federation(cfg, load_dataset(cfg), backend or InProcessBackend(), run_id=run_id)
    fed.setup()
    return fed


def dp_config(mode="plaintext", **privacy):
    return tiny_config(
        federation={"mode": mode, "rounds": 3},
        privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0, **privacy},
    )


def _clean_sum(fed, round_idx):
    """What the sampled clients contribute before any aggregator noise."""
    total = 0.0
    for name in sample_clients(fed.cfg, fed.names, round_idx):
        meta, payload = fed.backend.parties[f"client:{name}"].train(round_idx, fed.state.params)
        total = total + payload[:-1]
        assert np.linalg.norm(payload[:-1] * fed.privacy.denominator) <= 0.05 * (1 + 1e-9)
        assert meta.weight == pytest.approx(1 / 3)
    return total


@pytest.mark.parametrize(("placement", "variance_factor"),
                         [("aggregator", 1.0), ("distributed", 3 / 2)])
def test_noise_on_the_average_has_stddev_clip_times_multiplier_over_m(placement,
                                                                       variance_factor):
    fed = _federation(dp_config(placement=placement))
    before = fed.state.params.astype(np.float64)
    clean = None
    if placement == "aggregator":
        clean = _clean_sum(fed, 0)
    fed.run_round(0)
    step = fed.state.params.astype(np.float64) - before
    if clean is None:  # distributed: shares are inside the payloads; subtract clipped parts
        noiseless = _federation(dp_config(placement="aggregator", noise_multiplier=1e-9))
        clean = _clean_sum(noiseless, 0)
    noise = step - clean
    expected = 0.05 * 2.0 / 3 * np.sqrt(variance_factor)  # clip * z / m (3 of 2 shares)
    assert noise.size > 4000
    # std of n normal draws: relative standard error about 1/sqrt(2n) ~ 1.1%
    assert np.std(noise) == pytest.approx(expected, rel=0.06)
    assert abs(np.mean(noise)) < 4 * expected / np.sqrt(noise.size)


def test_reported_epsilon_equals_dp_accountings_own_computation():
    fed = _federation(dp_config())
    records = run_rounds(fed, 3)
    spec = AccountingSpec(mechanism="gaussian", noise_multiplier=2.0, delta=1e-5,
                          sampling="fixed", population=3, sample_size=3, accountant="rdp")
    for r, rec in enumerate(records):
        assert rec.extra["epsilon"] == pytest.approx(epsilon(spec, r + 1), rel=1e-9)
    assert records[0].extra["epsilon"] < records[-1].extra["epsilon"]


def test_target_epsilon_is_met_exactly_at_the_planned_round():
    cfg = tiny_config(federation={"rounds": 3, "clients_per_round": 2, "sampling": "poisson"},
                      privacy={"enabled": True, "clip": 0.05, "target_epsilon": 3.0,
                               "accountant": "pld"})
    fed = Federation(cfg, load_dataset(cfg), InProcessBackend(), run_id="cal")
    plan = fed.privacy
    assert plan.calibrated
    spent = epsilon(plan.accounting, 3)
    assert spent <= 3.0 and spent == pytest.approx(3.0, rel=0.02)


def test_record_level_dp_sgd_run_and_its_epsilon():
    cfg = tiny_config(federation={"rounds": 2},
                      privacy={"enabled": True, "level": "record", "clip": 1.0,
                               "noise_multiplier": 1.1, "record_sampling_rate": 0.1})
    fed = _federation(cfg)
    records = run_rounds(fed, 2)
    spec = RecordLevelSpec(noise_multiplier=1.1, sampling_rate=0.1, steps_per_round=5,
                           delta=1e-5)
    assert records[-1].extra["epsilon"] == pytest.approx(epsilon(spec, 2), rel=1e-9)
    assert np.all(np.isfinite(fed.state.params))


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"clip": None, "noise_multiplier": 1.0}, "privacy.clip: noise without clipping"),
        ({"delta": 1.5, "noise_multiplier": 1.0}, "privacy.delta: must be in (0, 1)"),
        ({"target_epsilon": 0.0}, "privacy.target_epsilon: must be > 0"),
        ({"target_epsilon": -1.0}, "privacy.target_epsilon: must be > 0"),
        ({}, "set exactly one of privacy.noise_multiplier and privacy.target_epsilon"),
    ],
)
def test_unstatable_guarantees_are_refused(privacy, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        tiny_config(privacy={"enabled": True, **privacy})


def test_he_with_distributed_noise_decrypts_to_the_plaintext_dp_result():
    plain = _federation(dp_config(placement="distributed"))
    enc = _federation(dp_config("he", placement="distributed"))
    run_rounds(plain, 2)
    run_rounds(enc, 2)
    assert np.max(np.abs(plain.state.params - enc.state.params)) < 1e-3


@pytest.mark.ray
def test_dp_noise_with_threshold_decryption_on_ray(ray_session):
    from actors import RayBackend

    cfg = tiny_config(federation={"mode": "he", "rounds": 2},
                      crypto={"profile": "test", "allow_insecure": True, "threshold": 2},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 1.0})
    fed = _federation(cfg, RayBackend("dp-ray"), run_id="dp-ray")
    try:
        records = run_rounds(fed, 2)
    finally:
        fed.backend.shutdown()
    local = _federation(cfg)
    run_rounds(local, 2)
    assert np.max(np.abs(fed.state.params - local.state.params)) < 1e-3
    assert all(r.extra["epsilon"] > 0 for r in records)

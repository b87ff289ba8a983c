"""Playing the coordinator against secret DP noise.

The coordinator holds the config (with the run seed), the manifest and every message it
receives. Its best attack on the noise is to regenerate it from the seed, as every
seeded stream of fedsim once allowed. Each test runs that attack twice: against a run
marked insecure (where it must succeed: the attack is real) and against a default run
(where the estimate must be no better than chance: |correlation| < 6/sqrt(n) = 0.019 over 100k
coordinates).
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import tiny_config

from fedsim.aggregate.steps import ClientContext, Pipeline, RoundContext, ServerContext, Update
from fedsim.privacy.plan import plan_privacy
from fedsim.privacy.randomness import NoiseSource, SecretRandom, SeededRandom
from fedsim.protocol.aggregator import Aggregator
from fedsim.protocol.schemes.plaintext import PlainEncoding

SIZE = 100_000
SEED = 0  # the config's seed, written to manifest.json: the coordinator has it


def _plan(placement: str, insecure: bool):
    cfg = tiny_config(privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0,
                               "placement": placement, "insecure_seeded_noise": insecure})
    assert cfg.seed == SEED
    return cfg, plan_privacy(cfg, 3, [100, 100, 100])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _judge(insecure: bool, guess: np.ndarray, truth: np.ndarray) -> None:
    """The attack recovers ``truth`` exactly from a run marked insecure, and is no better
    than chance (|correlation| < 6/sqrt(n)) against a default run."""
    if insecure:
        np.testing.assert_array_equal(guess, truth)
    else:
        # Independent draws: |r| has stddev 1/sqrt(SIZE); 6 of them (a leak gives |r| ~ 1).
        assert abs(_corr(guess, truth)) < 6 / np.sqrt(SIZE)


def _coordinator_guess_of_aggregator_noise(plan) -> np.ndarray:
    # Regenerate exactly what a seeded run draws: the same mechanism, the seeded stream.
    source = NoiseSource(SEED).draw("dp-central", 0)
    return plan.mechanism.averaged(plan.denominator).sample(source, SIZE)


@pytest.mark.parametrize("insecure", [True, False])
def test_the_coordinator_cannot_regenerate_the_aggregators_noise(insecure):
    cfg, plan = _plan("aggregator", insecure)
    pipeline = Pipeline(plan.steps(300.0))
    agg = Aggregator("run", pipeline, SIZE, NoiseSource.for_run(cfg))
    agg.use_encoding(PlainEncoding())
    agg.begin(RoundContext(0, pipeline.round_params(pipeline.init())))
    agg.add("a", np.zeros(SIZE + len(pipeline.slots) + 1))
    _, total, _ = agg.finish()
    true_noise = total[:SIZE]  # the one contribution is zero: the sum is the noise
    assert true_noise.std() > 0
    guess = _coordinator_guess_of_aggregator_noise(plan)
    _judge(insecure, guess, true_noise)


@pytest.mark.parametrize("insecure", [True, False])
def test_the_coordinator_cannot_regenerate_a_clients_noise_share(insecure):
    cfg, plan = _plan("distributed", insecure)
    dp = plan.steps(300.0)[0]
    params = dp.round_params(dp.init())
    ctx = ClientContext("h0", 0, 0, 100, NoiseSource.for_run(cfg), params)
    shared = dp.client(Update(np.zeros(SIZE)), ctx).vector  # a zero update: only its share
    assert shared.std() > 0
    guess = plan.mechanism.averaged(plan.denominator).share(
        NoiseSource(SEED).draw("dp-share", 0, 0), SIZE, plan.min_clients)
    _judge(insecure, guess, shared)


@pytest.mark.parametrize("insecure", [True, False])
def test_the_coordinator_cannot_regenerate_dpsgd_noise_or_batches(insecure):
    import jax

    cfg = tiny_config(privacy={"enabled": True, "level": "record", "clip": 1.0,
                               "noise_multiplier": 1.1, "record_sampling_rate": 0.1,
                               "insecure_seeded_noise": insecure})
    source = NoiseSource.for_run(cfg).draw("dp-sgd", 3, 1)  # what hospital 1 uses, round 3
    assert isinstance(source, SeededRandom if insecure else SecretRandom)
    replay = NoiseSource(SEED).draw("dp-sgd", 3, 1)  # the coordinator's regeneration
    true_noise = np.asarray(jax.random.normal(source.jax_key(), (SIZE,)))
    guess = np.asarray(jax.random.normal(replay.jax_key(), (SIZE,)))
    true_batch = source.random(SIZE) < 0.1
    guessed_batch = replay.random(SIZE) < 0.1
    _judge(insecure, guess, true_noise)
    _judge(insecure, guessed_batch.astype(float), true_batch.astype(float))


def test_dp_runs_do_not_reproduce_from_the_seed_unless_marked_insecure():
    from builders import federation

    from fedsim.protocol.loop import run_rounds

    def final(insecure: bool) -> np.ndarray:
        cfg = tiny_config(privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0,
                                   "insecure_seeded_noise": insecure})
        fed = federation(cfg)
        run_rounds(fed, 2)
        return np.asarray(fed.state.params)

    assert not np.array_equal(final(False), final(False))
    np.testing.assert_array_equal(final(True), final(True))


def test_server_context_without_a_source_draws_secretly():
    _, plan = _plan("aggregator", False)
    pipeline = Pipeline(plan.steps(300.0))
    ctx = ServerContext(0, (), None, pipeline.round_params(pipeline.init()))
    a, b = pipeline.noise(1000, ctx), pipeline.noise(1000, ctx)
    assert np.mean(a.vector == b.vector) < 0.2

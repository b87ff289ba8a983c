"""Epsilon against whom: both reported epsilons are dp-accounting's for the events run."""

from __future__ import annotations

import dp_accounting
import pytest
from builders import federation, tiny_config

from fedsim.aggregate.steps import Aggregate, ServerContext
from fedsim.privacy.events import AccountingSpec
from fedsim.privacy.plan import plan_privacy
from fedsim.privacy.steps import ClientLevelAccounting
from fedsim.protocol.loop import run_rounds

DELTA = 1e-5


def _rdp(event, count: int, relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
         ) -> float:
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    acc.compose(event, count)
    return acc.get_epsilon(DELTA)


def test_the_issue_numbers_participants_spend_more_than_an_observer_sees():
    # q = 0.6, z = 12.09, 20 rounds, the most-sampled client in 12 of them.
    spec = AccountingSpec("gaussian", 12.09, DELTA, sampling_probability=0.6)
    step = ClientLevelAccounting(spec)
    state = step.init()
    agg = Aggregate(None, 1.0, {}, ())
    for r in range(20):
        contributors = ("a",) if r < 12 else ("b",)
        out, state = step.server(agg, state, ServerContext(r, contributors))
    assert out.metrics["epsilon_observer"] == pytest.approx(0.904, abs=5e-4)
    assert out.metrics["epsilon_participants"] == pytest.approx(1.175, abs=5e-4)
    assert out.metrics["epsilon_observer"] == pytest.approx(_rdp(
        dp_accounting.PoissonSampledDpEvent(0.6, dp_accounting.GaussianDpEvent(12.09)), 20))
    assert out.metrics["epsilon_participants"] == pytest.approx(_rdp(
        dp_accounting.GaussianDpEvent(12.09), 12))
    assert out.metrics["epsilon"] == out.metrics["epsilon_participants"]  # the default


def test_fixed_size_sampling_participants_epsilon_is_replace_one():
    spec = AccountingSpec("gaussian", 8.0, DELTA, sampling="fixed", population=10,
                          sample_size=4)
    step = ClientLevelAccounting(spec, "observer")
    state, agg = step.init(), Aggregate(None, 1.0, {}, ())
    for r in range(5):
        out, state = step.server(agg, state, ServerContext(r, ("a", "b")))
    # Replacing one client moves the sum by 2C: the base multiplier halves.
    assert out.metrics["epsilon_participants"] == pytest.approx(_rdp(
        dp_accounting.GaussianDpEvent(4.0), 5))
    assert out.metrics["epsilon"] == out.metrics["epsilon_observer"]


def test_skipped_rounds_compose_for_the_observer_and_not_for_participants():
    spec = AccountingSpec("gaussian", 5.0, DELTA, sampling_probability=0.5)
    step = ClientLevelAccounting(spec)
    state = step.init()
    _, state = step.server(Aggregate(None, 1.0, {}, ()), state, ServerContext(0, ("a",)))
    metrics, state = step.skipped(state, ServerContext(1, ()))
    assert metrics["epsilon_observer"] == pytest.approx(_rdp(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(5.0)), 2))
    assert metrics["epsilon_participants"] == pytest.approx(_rdp(
        dp_accounting.GaussianDpEvent(5.0), 1))


@pytest.mark.parametrize("against", ["participants", "observer"])
def test_a_target_is_met_against_the_adversary_named(against):
    # 100 clients, 20 per round: a skipped round (fewer than 2 sampled) is too rare to
    # matter: it takes less than 1e-7 of delta.
    cfg = tiny_config(data={"synth": {"num_hospitals": 100, "patients_per_hospital": 50}},
                      federation={"mode": "he", "rounds": 10, "clients_per_round": 20,
                                  "sampling": "poisson", "min_clients": 2},
                      privacy={"enabled": True, "clip": 0.05, "target_epsilon": 3.0,
                               "epsilon_against": against})
    plan = plan_privacy(cfg, 100, [50] * 100)
    assert plan.observer.amplified and 1e-5 - 1e-7 < plan.observer.delta < 1e-5
    spec = plan.accounting
    worst_case = _rdp(spec.participants().unit_event(), 10)  # a client in every round
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(spec.unit_event(), 10)
    observer = acc.get_epsilon(plan.observer.delta)
    if against == "participants":
        assert worst_case <= 3.0 + 1e-3 and worst_case == pytest.approx(3.0, abs=0.02)
    else:
        assert observer == pytest.approx(3.0, abs=0.02) and worst_case > 3.0


def test_a_run_records_both_epsilons_every_round():
    cfg = tiny_config(federation={"mode": "he", "rounds": 3, "clients_per_round": 2},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0})
    fed = federation(cfg)
    records = run_rounds(fed, 3)
    spec = fed.privacy.accounting
    counts: dict[str, int] = {}
    for r, rec in enumerate(records):
        for c in rec.clients:
            counts[c] = counts.get(c, 0) + 1
        assert rec.extra["epsilon_participants"] == pytest.approx(
            _rdp(spec.participants().unit_event(), max(counts.values())))
        # The smaller of the sampled bound and the unsampled one (both valid).
        assert rec.extra["epsilon_observer"] == pytest.approx(min(
            _rdp(spec.unit_event(), r + 1, spec.neighboring_relation),
            rec.extra["epsilon_participants"]))
        assert rec.extra["epsilon"] == rec.extra["epsilon_participants"]
        assert rec.loss != rec.loss and rec.extra["update_norm"] != rec.extra["update_norm"]


def test_plaintext_claims_nothing_against_the_participants():
    import math

    cfg = tiny_config(privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0})
    fed = federation(cfg)
    record = fed.run_round(0)
    assert math.isinf(record.extra["epsilon_participants"])
    assert math.isfinite(record.extra["epsilon_observer"])
    assert "plaintext: the coordinator and aggregator see every update" in fed.privacy.describe()


def test_what_the_accounting_cannot_state_is_refused_with_one_line():
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="in plaintext mode the coordinator and aggregator"):
        tiny_config(privacy={"enabled": True, "clip": 0.05, "target_epsilon": 1.0})
    with pytest.raises(ConfigError, match="adaptive_clipping: with placement 'aggregator'"):
        tiny_config(federation={"mode": "he"},
                    privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0,
                             "adaptive_clipping": {}})


def test_distributed_noise_under_poisson_claims_no_amplification():
    cfg = tiny_config(data={"synth": {"num_hospitals": 100, "patients_per_hospital": 50}},
                      federation={"mode": "he", "rounds": 10, "clients_per_round": 20,
                                  "sampling": "poisson", "min_clients": 2},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 3.0,
                               "placement": "distributed"})
    plan = plan_privacy(cfg, 100, [50] * 100)
    assert not plan.observer.amplified and "variance" in plan.observer.why
    step = plan.steps(1.0)[1]
    out, _ = step.server(Aggregate(None, 1.0, {}, ()), step.init(), ServerContext(0, ("a",)))
    assert out.metrics["epsilon_observer"] == out.metrics["epsilon_participants"]


def test_the_observer_never_gets_a_larger_epsilon_than_the_participants():
    # Sampling 3 of 5 without replacement: dp-accounting's amplification bound at q = 0.6
    # is above plain composition; the observer's figure takes the smaller.
    spec = AccountingSpec("gaussian", 36.18, DELTA, sampling="fixed", population=5,
                          sample_size=3)
    step = ClientLevelAccounting(spec)
    state, agg = step.init(), Aggregate(None, 1.0, {}, ())
    for r in range(20):
        out, state = step.server(agg, state, ServerContext(r, ("a", "b", "c")))
    sampled = _rdp(spec.unit_event(), 20, spec.neighboring_relation)
    unsampled = _rdp(dp_accounting.GaussianDpEvent(36.18 / 2), 20)
    assert sampled > unsampled  # the library's bound, as found in the sweep
    assert out.metrics["epsilon_observer"] == pytest.approx(unsampled)
    assert out.metrics["epsilon_participants"] == pytest.approx(unsampled)


def test_an_observer_target_takes_the_smaller_multiplier_of_the_two_bounds():
    def plan(against):
        cfg = tiny_config(data={"synth": {"num_hospitals": 5, "patients_per_hospital": 50}},
                          federation={"mode": "he", "rounds": 20, "clients_per_round": 3},
                          privacy={"enabled": True, "clip": 0.01, "target_epsilon": 1.0,
                                   "epsilon_against": against})
        return plan_privacy(cfg, 5, [50] * 5)

    observer, participants = plan("observer"), plan("participants")
    assert observer.noise_multiplier == participants.noise_multiplier
    # 3 of 5 without replacement: at that multiplier the library's sampled bound is above
    # the target, so the sampled calibration alone would have needed more noise.
    assert _rdp(participants.accounting.unit_event(), 20,
                participants.accounting.neighboring_relation) > 1.0

"""Ordered steps: client hooks in order, server hooks in reverse, slots summed alongside."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from builders import tiny_config

from fedsim.aggregate.steps import (
    Aggregate,
    ClientContext,
    Pipeline,
    ServerContext,
    Step,
    Update,
    flat_payload,
    split_payload,
)
from fedsim.aggregate.weighting import FixedDenominator, SampleWeighting
from fedsim.errors import ProtocolError
from fedsim.protocol.backend import InProcessBackend
from fedsim.protocol.federation import Federation
from fedsim.run.runner import load_dataset


@dataclass(frozen=True)
class Tag(Step):
    """Appends its name to a log on each hook; counts (in tenths: a slot value is bounded
    like a weight) in a reserved slot of its own."""

    name: str
    log: list

    @property
    def slots(self):
        return (f"count_{self.name}",)

    def init(self):
        return 0

    def round_params(self, state):
        return {f"seen_{self.name}": float(state)}

    def client(self, update, ctx):
        self.log.append(("client", self.name))
        return update.but(slots={f"count_{self.name}": 0.1})

    def server(self, aggregate, state, ctx):
        self.log.append(("server", self.name))
        return aggregate.but(metrics={self.name: aggregate.slots[f"count_{self.name}"]}), state + 1


def test_client_hooks_run_in_order_and_server_hooks_in_reverse():
    log: list = []
    pipeline = Pipeline((Tag("a", log), Tag("b", log), SampleWeighting(10.0)))
    assert pipeline.slots == ("count_a", "count_b")
    states = pipeline.init()
    assert pipeline.round_params(states) == {"seen_a": 0.0, "seen_b": 0.0}
    ctx = ClientContext("c", 0, 0, num_examples=5)
    update = pipeline.client(Update(np.array([2.0, 4.0])), ctx)
    assert log == [("client", "a"), ("client", "b")]
    assert update.weight == 0.5 and update.vector.tolist() == [1.0, 2.0]
    payload = flat_payload(update, pipeline.slots) + flat_payload(update, pipeline.slots)
    summed = split_payload(payload, 2, pipeline.slots, ("c", "d"))
    assert summed.slots == {"count_a": 0.2, "count_b": 0.2} and summed.weight == 1.0
    out, states = pipeline.server(summed, states, ServerContext(0, ("c", "d")))
    assert log[2:] == [("server", "b"), ("server", "a")]
    assert out.vector.tolist() == [2.0, 4.0]  # weighting's server half divided first
    assert out.metrics == {"a": 0.2, "b": 0.2} and states == (1, 1, None)
    assert pipeline.round_params(states) == {"seen_a": 1.0, "seen_b": 1.0}
    with pytest.raises(ProtocolError, match="aggregate has 3 values, expected 5"):
        split_payload(np.zeros(3), 2, pipeline.slots, ())


def test_fixed_denominator_averages_without_the_realised_weight():
    step = FixedDenominator(4.0)
    update = step.client(Update(np.array([8.0])), ClientContext("c", 0, 0, 100))
    assert update.weight == 0.25 and update.vector.tolist() == [2.0]
    summed = Aggregate(np.array([6.0]), 0.75, {}, ("a", "b", "c"))
    assert step.server(summed, None, ServerContext(0, ()))[0].vector.tolist() == [6.0]


def test_noise_of_several_steps_is_one_contribution():
    @dataclass(frozen=True)
    class Noisy(Step):
        value: float
        aggregator_noise = True

        def noise(self, size, ctx):
            return Update(np.full(size, self.value), weight=0.0, slots={"s": self.value})

    pipeline = Pipeline((Noisy(1.0), SampleWeighting(1.0), Noisy(0.5)))
    assert pipeline.adds_noise and not Pipeline((SampleWeighting(1.0),)).adds_noise
    noise = pipeline.noise(3, ServerContext(0, ()))
    assert noise.vector.tolist() == [1.5, 1.5, 1.5] and noise.weight == 0.0
    assert noise.slots == {"s": 1.5}


@pytest.mark.parametrize("mode", ["plaintext", "he"])
def test_a_steps_reserved_slot_is_summed_with_the_updates(mode):
    """A custom step's slot travels in the payload (encrypted in he) and is summed."""
    log: list = []
    cfg = tiny_config(federation={"mode": mode})
    fed = Federation(cfg, load_dataset(cfg), InProcessBackend(), run_id="slots",
                     extra_steps=(Tag("x", log),))
    fed.setup()
    assert fed.pipeline.slots == ("count_x", "stat_loss", "stat_update_norm")
    record = fed.run_round(0)
    assert record.extra["x"] == pytest.approx(0.3, abs=1e-4)  # three clients, 0.1 each
    assert ("server", "x") in log

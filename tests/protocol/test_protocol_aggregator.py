from __future__ import annotations

import numpy as np
import pytest
from builders import tiny_config

from fedsim.aggregate.steps import Pipeline, RoundContext
from fedsim.aggregate.weighting import SampleWeighting
from fedsim.errors import ProtocolError
from fedsim.privacy.plan import plan_privacy
from fedsim.privacy.randomness import NoiseSource
from fedsim.protocol.aggregator import Aggregator
from fedsim.protocol.manifest import digest
from fedsim.protocol.schemes import Bundle
from fedsim.protocol.schemes.plaintext import PlainEncoding


def _aggregator(pipeline=None, num_values=1000, randomness=None):
    agg = Aggregator("run", pipeline or Pipeline((SampleWeighting(1.0),)), num_values,
                     randomness or NoiseSource())
    agg.use_encoding(PlainEncoding())
    return agg


def test_plaintext_sum_is_independent_of_arrival_order_and_lists_contributors():
    rng = np.random.default_rng(0)
    payloads = {name: rng.standard_normal(1001) for name in ("c", "a", "b")}
    sums = []
    for order in (("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")):
        agg = _aggregator()
        agg.begin(RoundContext(4))
        for name in order:
            agg.add(name, payloads[name])
        manifest, total, seconds = agg.finish()
        sums.append(total)
        assert manifest.round == 4 and manifest.count == 3 and seconds["aggregate"] >= 0
        assert set(manifest.contributors) == set(order)
        assert manifest.aggregate_digest == digest(total)
        assert dict(zip(manifest.contributors, manifest.digests))["a"] == digest(payloads["a"])
    assert np.array_equal(sums[0], sums[1]) and np.array_equal(sums[0], sums[2])
    np.testing.assert_allclose(sums[0], payloads["a"] + payloads["b"] + payloads["c"])


def test_malformed_contributions_are_refused_by_name():
    agg = _aggregator()
    with pytest.raises(ProtocolError, match="add\\(\\) before begin\\(\\)"):
        agg.add("a", np.zeros(3))
    agg.begin(RoundContext(0))
    agg.add("a", np.zeros(3))
    with pytest.raises(ProtocolError, match="client a already contributed"):
        agg.add("a", np.zeros(3))
    with pytest.raises(ProtocolError, match="client b: update has 4 values, expected 3"):
        agg.add("b", np.zeros(4))
    with pytest.raises(ProtocolError, match="client c: expected a float64 vector"):
        agg.add("c", np.zeros(3, np.float32))
    bad = np.zeros(3)
    bad[1] = np.inf
    with pytest.raises(ProtocolError, match="client d: update contains NaN or infinity"):
        agg.add("d", bad)
    manifest, total, _ = agg.finish()
    assert manifest.contributors == ("a",) and total.tolist() == [0.0, 0.0, 0.0]
    many = agg.add_many(Bundle((("e",), ("a", "f")), (np.zeros(3), np.ones(3))))
    assert list(many.arrived) == ["e"]  # one call per training party; a group shares a fate
    assert many.rejected == {"a": "aggregator: client a already contributed this round",
                             "f": "aggregator: client a already contributed this round"}


def test_begin_forgets_the_previous_round():
    agg = _aggregator()
    with pytest.raises(ProtocolError, match="begin\\(\\) before use_encoding"):
        Aggregator("run", Pipeline(()), 2, NoiseSource()).begin(RoundContext(0))
    agg.begin(RoundContext(0))
    agg.add("a", np.ones(2))
    agg.begin(RoundContext(1))
    with pytest.raises(ProtocolError, match="no contribution"):
        agg.finish()


def test_noise_drawn_at_begin_is_the_rounds_noise_and_never_in_the_weight_slot():
    cfg = tiny_config(privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0})
    plan = plan_privacy(cfg, 3, [100, 100, 100])
    pipeline = Pipeline(plan.steps(300.0))
    payload = np.append(np.full(50, 0.01), 0.3)
    totals = []
    for _ in range(2):  # begin draws the noise while the clients would train
        agg = _aggregator(pipeline, num_values=50)
        agg.begin(RoundContext(2, pipeline.round_params(pipeline.init())))
        agg.add("a", payload)
        manifest, total, seconds = agg.finish()
        assert manifest.noise_added and seconds["dp_noise"] >= 0
        totals.append(total)
    # The aggregator's own secret noise: two aggregators never draw the same.
    assert np.mean(totals[0][:-1] == totals[1][:-1]) < 0.2
    assert np.abs(totals[0][:-1] - 0.01).max() > 0  # the noise is there
    assert totals[0][-1] == 0.3  # and never in the weight slot
    noise = (totals[0] - payload)[:-1] * 3  # the aggregator adds the noise over m = 3
    assert np.std(noise) == pytest.approx(0.05 * 2.0, rel=0.7)  # 50 draws: ~2e-11 by chance

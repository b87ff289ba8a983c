from __future__ import annotations

import numpy as np
import pytest
from builders import tiny_config

from fedsim.aggregator import Aggregator, digest
from fedsim.dp import plan_privacy
from fedsim.errors import ProtocolError


def test_plaintext_sum_is_independent_of_arrival_order_and_lists_contributors():
    rng = np.random.default_rng(0)
    payloads = {name: rng.standard_normal(1001) for name in ("c", "a", "b")}
    sums = []
    for order in (("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")):
        agg = Aggregator("run")
        agg.begin(4)
        for name in order:
            agg.add(name, payloads[name])
        manifest, total, seconds = agg.finish()
        sums.append(total)
        assert manifest.round == 4 and manifest.count == 3 and seconds >= 0
        assert set(manifest.contributors) == set(order)
        assert manifest.aggregate_digest == digest(total)
        assert dict(zip(manifest.contributors, manifest.digests))["a"] == digest(payloads["a"])
    assert np.array_equal(sums[0], sums[1]) and np.array_equal(sums[0], sums[2])
    np.testing.assert_allclose(sums[0], payloads["a"] + payloads["b"] + payloads["c"])


def test_malformed_contributions_are_refused_by_name():
    agg = Aggregator("run")
    with pytest.raises(ProtocolError, match="add\\(\\) before begin\\(\\)"):
        agg.add("a", np.zeros(3))
    agg.begin(0)
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


def test_begin_forgets_the_previous_round():
    agg = Aggregator("run")
    agg.begin(0)
    agg.add("a", np.ones(2))
    agg.begin(1)
    with pytest.raises(ProtocolError, match="no contribution"):
        agg.finish()


def test_noise_prepared_while_clients_train_equals_noise_drawn_at_the_end():
    cfg = tiny_config(privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0})
    plan = plan_privacy(cfg, 3, [100, 100, 100])
    payload = np.append(np.full(50, 0.01), 0.3)
    totals = []
    for prepare in (True, False):
        agg = Aggregator("run")
        agg.enable_noise(plan, 50, seed=7)
        with pytest.raises(ProtocolError, match="before begin"):
            agg.prepare_dp_noise()
        agg.begin(2)
        if prepare:
            agg.prepare_dp_noise()  # what the coordinator asks for right after begin
        agg.add("a", payload)
        agg.add_dp_noise()
        manifest, total, _ = agg.finish()
        assert manifest.noise_added
        totals.append(total)
    np.testing.assert_array_equal(totals[0], totals[1])
    assert np.abs(totals[0][:-1] - 0.01).max() > 0  # the noise is there
    assert totals[0][-1] == 0.3  # and never in the weight slot

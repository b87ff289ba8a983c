"""The deployment cost model (benchmarks/deployment.py): its arithmetic, by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks.deployment import (
    Deployment,
    RoundCost,
    Task,
    _max_min,
    predict,
    round_cost,
    simulate,
)
from fedsim.errors import ConfigError


@pytest.mark.parametrize("spec, bandwidth, latency", [
    ("bandwidth=1Gbit,latency=20ms", 1e9 / 8, 0.02),
    ("bandwidth=100Mbit/s, latency=0", 1e8 / 8, 0.0),
    ("bandwidth=10gbps,latency=1.5ms", 1e10 / 8, 0.0015),
    ("bandwidth=inf,latency=0s", math.inf, 0.0),
])
def test_deployment_specs_parse(spec, bandwidth, latency):
    d = Deployment.parse(spec)
    assert (d.bandwidth, d.latency) == (pytest.approx(bandwidth), pytest.approx(latency))


@pytest.mark.parametrize("spec, said", [
    ("bandwidth=1GB", "needs a unit"),
    ("bandwidth=-1Gbit", "must be a number > 0"),
    ("latency=20", "needs a unit"),
    ("speed=1Gbit", "unknown key 'speed'"),
    ("bandwidth", "is not KEY=VALUE"),
    ("machines=many", "machines must be own, one or placed"),
    ("cores=0", "cores must be a number > 0"),
])
def test_bad_deployment_specs_say_what_is_wrong(spec, said):
    with pytest.raises(ConfigError, match=said):
        Deployment.parse(spec)


def _plain(**kw) -> RoundCost:
    return RoundCost(clients={"a": 1.0, "b": 2.0}, upload_bytes={"a": 100, "b": 100},
                     model_bytes=50, aggregator_s=0.4, aggregate_bytes=100,
                     coordinator_s=0.5, **kw)


def test_a_plaintext_round_by_hand():
    """Own machines, 100 B/s links, 0.1 s latency. The coordinator's uplink carries two
    50-byte models at once (1.0 s, +0.1): both clients start at 1.1 and finish training
    at 2.1 and 3.1. a's 100 bytes reach the aggregator at 2.2 + 1.0; b's start at 3.2
    and land at 4.2, then summed by 4.4 (0.2 CPU-s per client, once the batch is whole).
    The sum reaches the coordinator at 4.4 + 0.1 + 1.0; its update takes 0.5."""
    d = Deployment(bandwidth=100.0, latency=0.1)
    pred = predict(_plain(), d)
    assert pred.seconds == pytest.approx(6.0)
    assert pred.critical == pytest.approx({
        "download model": 1.1, "client compute": 2.0, "upload to aggregator": 1.1,
        "aggregate": 0.2, "aggregate to coordinator": 1.1, "fuse + server update": 0.5})
    assert sum(pred.critical.values()) == pytest.approx(pred.seconds)


def test_a_task_after_an_instant_one_starts_at_once():
    """A (1 CPU-s) -> X (a free transfer) -> Y (1 CPU-s), beside B (5 CPU-s) elsewhere:
    Y runs from 1 to 2, not after B's end."""
    tasks = [Task("A", "p", 1.0), Task("B", "q", 5.0), Task("X", "p", 10, ("A",), to="r"),
             Task("Y", "r", 1.0, ("X",))]
    spans = simulate(tasks, Deployment(bandwidth=math.inf, latency=0.0))
    assert spans["Y"] == pytest.approx((1.0, 2.0))
    assert spans["B"][1] == pytest.approx(5.0)


def test_a_party_never_gets_more_than_one_core():
    """Two tasks of one party on a 2-core machine share one core (0.5 each); a second
    party's task there gets the other core."""
    tasks = [Task("a1", "p", 1.0), Task("a2", "p", 1.0), Task("b", "q", 1.0)]
    spans = simulate(tasks, Deployment(bandwidth=math.inf, latency=0.0, machines="one",
                                       cores=2))
    assert spans["a1"][1] == pytest.approx(2.0) and spans["a2"][1] == pytest.approx(2.0)
    assert spans["b"][1] == pytest.approx(1.0)


def test_parties_on_one_machine_share_its_cores():
    """Free links: two clients of 1 and 2 CPU-s on one 1-core machine run at half speed
    together (a ends at 2.0, b's last CPU-second alone: 3.0); on two cores, 1.0 and 2.0;
    each on its own machine, the same."""
    cost = RoundCost(clients={"a": 1.0, "b": 2.0}, upload_bytes={"a": 0, "b": 0},
                     model_bytes=0, aggregator_s=0.0, aggregate_bytes=0)
    one = Deployment(bandwidth=math.inf, latency=0.0, machines="one", cores=1)
    spans = predict(cost, one).spans
    assert spans["train:a"][1] == pytest.approx(2.0)
    assert spans["train:b"][1] == pytest.approx(3.0)
    two = Deployment(bandwidth=math.inf, latency=0.0, machines="one", cores=2)
    assert predict(cost, two).spans["train:a"][1] == pytest.approx(1.0)
    own = Deployment(bandwidth=math.inf, latency=0.0)
    assert predict(cost, own).seconds == pytest.approx(2.0)


def test_links_are_shared_max_min_fairly():
    """a->x and b->x share x's downlink (5 each of 10); a->y then gets the 5 left of
    a's uplink, not 10."""
    flows = [Task("ax", "a", 1, to="x"), Task("bx", "b", 1, to="x"),
             Task("ay", "a", 1, to="y")]
    rates = _max_min(flows, Deployment(bandwidth=10.0))
    assert rates == pytest.approx({"ax": 5.0, "bx": 5.0, "ay": 5.0})
    # Timing: ay alone after the other two finish would take 0.1 s; shared, 0.2 s.
    spans = simulate(flows, Deployment(bandwidth=10.0, latency=0.0))
    assert spans["ay"][1] == pytest.approx(0.2) and spans["bx"][1] == pytest.approx(0.2)


def test_holders_fetch_the_batches_only_after_the_manifest_and_endorsements():
    """As fedsim runs it: a holder is asked to decrypt (and only then fetches every
    client's batch) after the aggregator's manifest and the endorsements' round trip."""
    cost = _plain(holders={"h0": 1.0, "h1": 2.0}, holder_sum_fraction=0.25,
                  share_bytes={"h0": 40, "h1": 40})
    d = Deployment(bandwidth=100.0, latency=0.1)
    pred = predict(cost, d)
    manifest = pred.spans["manifest"]
    last_sum = max(pred.spans[f"work:{c}>aggregator"][1] for c in ("a", "b"))
    assert manifest[1] == pytest.approx(last_sum + 0.3)  # three one-way messages
    # Both holders take a's batch first, sharing a's uplink (50 B/s each: 2.0 s) ...
    for h in ("h0", "h1"):
        start, end = pred.spans[f"send:a>{h}"]
        assert start == pytest.approx(manifest[1] + 0.1)
        assert end - start == pytest.approx(2.0)
        # ... and fetch b's only once a's is re-added.
        assert pred.spans[f"send:b>{h}"][0] == pytest.approx(pred.spans[f"work:a>{h}"][1])
    # h1's decryption: 2.0 x 0.75 CPU-s after both batches re-added (0.5 CPU-s).
    start, end = pred.spans["decrypt:h1"]
    assert end - start == pytest.approx(1.5)
    assert pred.seconds == pytest.approx(pred.spans["fuse"][1])
    assert sum(pred.critical.values()) == pytest.approx(pred.seconds)


def test_a_measured_round_maps_to_its_parties():
    from fedsim.protocol.records import RoundRecord

    rec = RoundRecord(round=1, wall_s=9.0, phases={"verify": 1.0, "partial_decrypt": 3.0,
                                                   "fuse": 0.5, "server_update": 0.25},
                      clients=("h0", "h1"), dropped=(), bytes_up=200, bytes_down=80,
                      loss=0.1, extra={"bytes_up_per_client": 100, "bytes_aggregate": 150})
    cpu = {"client:h0": 2.0, "client:h1": 3.0, "client:h2": 0.01, "aggregator": 0.5,
           "keyholder:0": 4.0, "coordinator": 1.0}
    cost = round_cost(rec, cpu, {"keyholder:0": 70},
                      {"h0": "client:h0", "h1": "client:h1", "h2": "client:h2"})
    assert cost.clients == {"client:h0": 2.0, "client:h1": 3.0}  # the sampled ones
    assert cost.upload_bytes == {"client:h0": 100, "client:h1": 100}
    assert (cost.model_bytes, cost.aggregator_s, cost.aggregate_bytes) == (40, 0.5, 150)
    assert cost.holders == {"keyholder:0": 4.0} and cost.holder_sum_fraction == 0.25
    assert cost.coordinator_s == pytest.approx(0.75)

from __future__ import annotations

import numpy as np
import pytest

from fedsim.aggregate.optimizers import make_server_optimizer
from fedsim.aggregate.server import server_init, server_update
from fedsim.aggregate.steps import ClientContext, Pipeline, ServerContext, Update, split_payload
from fedsim.aggregate.weighting import SampleWeighting, average
from fedsim.errors import ProtocolError
from fedsim.protocol.schemes.plaintext import PlainEncoding


def test_fedavg_is_the_sample_weighted_mean():
    deltas = [np.array([1.0, 2.0]), np.array([3.0, -1.0]), np.array([0.0, 4.0])]
    counts = [10, 30, 60]
    pipeline = Pipeline((SampleWeighting(100.0),))
    encoder, total = PlainEncoding().encoder(()), PlainEncoding().summation().start()
    for i, (d, n) in enumerate(zip(deltas, counts)):
        update = pipeline.client(Update(d), ClientContext(f"c{i}", i, 0, n))
        total.add(encoder.encode(update, client=f"c{i}")[0], f"c{i}")
    summed = split_payload(total.result(), 2, (), ("c0", "c1", "c2"))
    assert summed.weight == pytest.approx(1.0)
    avg, _ = pipeline.server(summed, pipeline.init(), ServerContext(0, summed.contributors))
    expected = (10 * deltas[0] + 30 * deltas[1] + 60 * deltas[2]) / 100
    np.testing.assert_allclose(avg.vector, expected, rtol=1e-12)

    opt = make_server_optimizer("fedavg", {})
    state = server_init(opt, np.array([0.5, 0.5], np.float32))
    new = server_update(opt, state, avg.vector)
    np.testing.assert_allclose(new.params, np.array([0.5, 0.5]) + expected, rtol=1e-6)
    assert state.params.tolist() == [0.5, 0.5]  # immutable state


def test_fedadam_moves_along_the_average_with_bounded_steps():
    opt = make_server_optimizer("fedadam", {"learning_rate": 0.1})
    state = server_init(opt, np.zeros(3, np.float32))
    new = server_update(opt, state, np.array([1.0, -2.0, 0.0]))
    assert new.params[0] > 0 > new.params[1] and new.params[2] == 0.0
    assert np.all(np.abs(new.params) <= 0.1 + 1e-6)


def test_empty_or_zero_weight_aggregates_are_refused():
    with pytest.raises(ProtocolError, match="no client contributed"):
        PlainEncoding().summation().start().result()
    with pytest.raises(ProtocolError, match="summed client weight is 0.0"):
        average(np.zeros(2), 0.0)

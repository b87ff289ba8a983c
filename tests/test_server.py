from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import FederationConfig
from fedsim.errors import ProtocolError
from fedsim.server import (
    average,
    make_server_optimizer,
    server_init,
    server_update,
    sum_payloads,
    weighted_payload,
)


def test_fedavg_is_the_sample_weighted_mean():
    deltas = [np.array([1.0, 2.0]), np.array([3.0, -1.0]), np.array([0.0, 4.0])]
    counts = [10, 30, 60]
    norm = 100.0
    total = sum_payloads([weighted_payload(d, n / norm) for d, n in zip(deltas, counts)])
    avg = average(total[:-1], total[-1])
    expected = (10 * deltas[0] + 30 * deltas[1] + 60 * deltas[2]) / 100
    np.testing.assert_allclose(avg, expected, rtol=1e-12)
    assert total[-1] == pytest.approx(1.0)

    opt = make_server_optimizer(FederationConfig())
    state = server_init(opt, np.array([0.5, 0.5], np.float32))
    new = server_update(opt, state, avg)
    np.testing.assert_allclose(new.params, np.array([0.5, 0.5]) + expected, rtol=1e-6)
    assert state.params.tolist() == [0.5, 0.5]  # immutable state


def test_fedadam_moves_along_the_average_with_bounded_steps():
    opt = make_server_optimizer(FederationConfig(server_optimizer="fedadam", server_lr=0.1))
    state = server_init(opt, np.zeros(3, np.float32))
    new = server_update(opt, state, np.array([1.0, -2.0, 0.0]))
    assert new.params[0] > 0 > new.params[1] and new.params[2] == 0.0
    assert np.all(np.abs(new.params) <= 0.1 + 1e-6)


def test_empty_or_zero_weight_aggregates_are_refused():
    with pytest.raises(ProtocolError, match="no client contributed"):
        sum_payloads([])
    with pytest.raises(ProtocolError, match="summed client weight is 0.0"):
        average(np.zeros(2), 0.0)

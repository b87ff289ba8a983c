"""Server optimizers by name: presets, optax aliases checked against their signature."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from builders import federation, tiny_config

from fedsim.aggregate.optimizers import make_server_optimizer, optimizer_names
from fedsim.aggregate.server import server_init, server_update
from fedsim.config import load_config
from fedsim.errors import ConfigError


def _steps(opt, deltas):
    state = server_init(opt, np.zeros(3, np.float32))
    for d in deltas:
        state = server_update(opt, state, np.asarray(d))
    return state.params


DELTAS = [[1.0, -2.0, 0.5], [0.5, -1.0, -0.5], [0.2, 0.1, 0.0]]


@pytest.mark.parametrize(("preset", "optax_alias"), [
    ("fedavg", optax.sgd(1.0)),
    ("fedavgm", optax.sgd(1.0, momentum=0.9)),
    ("fedadam", optax.adam(0.01, b1=0.9, b2=0.99, eps=1e-3)),
    ("fedyogi", optax.yogi(0.01, b1=0.9, b2=0.99, eps=1e-3)),
    ("fedadagrad", optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-3)),
])
def test_presets_are_the_papers_optax_optimizers(preset, optax_alias):
    np.testing.assert_array_equal(_steps(make_server_optimizer(preset, {}), DELTAS),
                                  _steps(optax_alias, DELTAS))


def test_any_optax_alias_by_name_with_checked_options():
    opt = make_server_optimizer("adam", {"learning_rate": 0.01, "b2": 0.99, "eps": 1e-3})
    np.testing.assert_array_equal(_steps(opt, DELTAS),
                                  _steps(make_server_optimizer("fedadam", {}), DELTAS))
    assert {"fedavg", "fedadam", "fedyogi", "fedadagrad", "fedavgm"} <= set(optimizer_names())


@pytest.mark.parametrize(("value", "message"), [
    ({"name": "adam", "learning_rate": 0.1, "b3": 0.9},
     "federation.server_optimizer.b3: not an option of optax.adam (options: learning_rate, b1"),
    ({"name": "adam"}, "federation.server_optimizer.learning_rate: required by optax.adam"),
    ({"name": "yogi", "learning_rate": "fast"},
     "federation.server_optimizer.learning_rate: expected a finite number, got 'fast'"),
    ({"name": "fedavgm", "momentum": True},
     "federation.server_optimizer.momentum: expected a finite number, got True"),
    ({"name": "apply_updates"}, "'apply_updates' is neither a fedsim server optimizer"),
    ({"name": "turbo"}, "'turbo' is neither a fedsim server optimizer (fedavg, fedavgm"),
    ({"learning_rate": 1.0}, "federation.server_optimizer.name: required"),
    (3, "federation.server_optimizer: expected an optimizer name or a mapping"),
])
def test_bad_server_optimizers_name_the_key(value, message):
    with pytest.raises(ConfigError) as info:
        tiny_config(federation={"server_optimizer": value})
    assert message in str(info.value)


def test_old_server_lr_says_where_it_went_and_overrides_reach_inside(tmp_path):
    with pytest.raises(ConfigError, match="federation.server_lr: moved to "
                                          "federation.server_optimizer.learning_rate"):
        tiny_config(federation={"server_lr": 0.5})
    path = tmp_path / "c.yaml"
    path.write_text("federation:\n  server_optimizer: fedyogi\n")
    cfg = load_config(path, ["federation.server_optimizer.learning_rate=0.05"])
    assert cfg.federation.server_optimizer.name == "fedyogi"
    assert dict(cfg.federation.server_optimizer.options) == {"learning_rate": 0.05}
    assert cfg.to_dict()["federation"]["server_optimizer"] == {"name": "fedyogi",
                                                               "learning_rate": 0.05}


def test_a_run_with_fedyogi_moves_the_model():
    fed = federation(tiny_config(federation={"server_optimizer": {"name": "yogi",
                                                                  "learning_rate": 0.01}}))
    before = fed.state.params.copy()
    fed.run_round(0)
    step = np.abs(fed.state.params - before)
    assert 0 < step.max() <= 0.01 * (1 + 1e-5)  # yogi's first step is at most the rate

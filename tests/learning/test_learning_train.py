from __future__ import annotations

import jax
import numpy as np

from fedsim.config import ModelConfig, TrainConfig
from fedsim.data import SynthSpec, synthetic_dataset
from fedsim.learning.model import build_model, init_params
from fedsim.learning.train import LocalTrainer, batch_plan, gather, local_steps, predict


def test_batch_plan_covers_each_epoch_once():
    plan = batch_plan(np.random.default_rng(0), num_examples=10, steps=5, batch=4)
    assert plan.shape == (5, 4)
    flat = plan.ravel()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    again = batch_plan(np.random.default_rng(0), num_examples=10, steps=5, batch=4)
    assert np.array_equal(plan, again)


def test_local_steps_from_epochs():
    assert local_steps(TrainConfig(local_steps=None, local_epochs=2.0, batch_size=10), 45) == 9
    assert local_steps(TrainConfig(local_steps=7), 1000) == 7


def _setup(**train):
    ds = synthetic_dataset(SynthSpec(num_hospitals=1, patients_per_hospital=400, vocab_size=300,
                                     mean_codes=5.0))
    c = ds.clients[0]
    model = build_model(ModelConfig(depth=2, width=8), vocab_size=ds.vocab_size,
                        num_numeric=ds.num_numeric)
    params = init_params(model, key=jax.random.PRNGKey(0), max_codes=ds.max_codes)
    trainer = LocalTrainer(model, TrainConfig(**{"lr": 0.01, "batch_size": 32,
                                                  "local_steps": 40, **train}))
    plan = batch_plan(np.random.default_rng(1), len(c.train), 40, 32)
    return c, model, params, trainer, gather(c.train, plan)


def _distance(a, b):
    return float(sum(np.sum((np.asarray(x) - np.asarray(y)) ** 2)
                     for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


def test_training_lowers_training_loss_and_is_deterministic():
    c, model, params, trainer, batches = _setup()
    before = np.mean(_bce(predict(model, params, c.train), c.train.labels))
    new, loss = trainer.train(params, batches)
    after = np.mean(_bce(predict(model, new, c.train), c.train.labels))
    assert after < before - 0.01
    again, loss2 = trainer.train(params, batches)
    assert loss == loss2 and _distance(new, again) == 0.0


def test_fedprox_term_keeps_parameters_closer_to_the_global_model():
    _, _, params, plain, batches = _setup()
    _, _, _, prox, _ = _setup(prox_mu=10.0)
    free, _ = plain.train(params, batches)
    held, _ = prox.train(params, batches)
    assert _distance(held, params) < 0.5 * _distance(free, params)


def _bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))

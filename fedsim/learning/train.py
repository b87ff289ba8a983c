"""Jitted local training and prediction (optax).

Mini-batches are gathered on the host from a seeded index plan and stacked, so one
compiled ``lax.scan`` serves every client whose batches have the same shape, and the
result depends only on the keys, never on scheduling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.special import expit

from fedsim.config import TrainConfig
from fedsim.learning.model import EHRMLP

Params = Any


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The client optimizer named in the config."""
    if cfg.optimizer == "adam":
        return optax.adam(cfg.lr)
    return optax.sgd(cfg.lr)


def local_steps(cfg: TrainConfig, num_examples: int) -> int:
    """Number of local mini-batch steps for a client with ``num_examples`` rows."""
    if cfg.local_steps is not None:
        return cfg.local_steps
    assert cfg.local_epochs is not None
    return max(1, math.ceil(cfg.local_epochs * num_examples / cfg.batch_size))


def batch_plan(rng: np.random.Generator, num_examples: int, steps: int, batch: int, *,
               shuffle: bool = True) -> np.ndarray:
    """Row indices [steps, batch]: consecutive (shuffled) epochs, cut into batches."""
    total = steps * batch
    epochs = -(-total // num_examples)
    if shuffle:
        order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    else:
        order = np.tile(np.arange(num_examples), epochs)
    return order[:total].reshape(steps, batch)


@dataclass(frozen=True)
class Batches:
    """Stacked mini-batches for one local round: leading axis is the step."""

    codes: np.ndarray
    numeric: np.ndarray
    labels: np.ndarray


def gather(split: Any, plan: np.ndarray) -> Batches:
    """Stack the rows of ``split`` named by ``plan`` ([steps, batch])."""
    return Batches(split.codes[plan], split.numeric[plan], split.labels[plan])


def make_loss(model: EHRMLP) -> Callable[..., jax.Array]:
    """Mean sigmoid cross-entropy of ``model`` on one batch."""

    def loss(params: Params, codes: jax.Array, numeric: jax.Array, labels: jax.Array):
        logits = model.apply({"params": params}, codes, numeric)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))

    return loss


class LocalTrainer:
    """Runs a client's local steps as one jitted scan.

    ``prox_mu > 0`` adds FedProx's proximal term ``mu/2 * ||w - w_global||^2``
    (Li et al., 2020). The optimizer state starts fresh every round. ``inputs`` builds
    one client's stacked batches from its public batch stream; ``train`` runs them;
    ``vmapped`` trains many clients' stacked inputs from the same global parameters in
    one call (`fedsim.protocol.cohort`).
    """

    def __init__(self, model: EHRMLP, cfg: TrainConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.optimizer = make_optimizer(cfg)
        loss = make_loss(model)
        mu = cfg.prox_mu
        optimizer = self.optimizer

        def objective(params, anchor, codes, numeric, labels):
            value = loss(params, codes, numeric, labels)
            if mu > 0:
                sq = sum(
                    jnp.sum(jnp.square(p - a))
                    for p, a in zip(jax.tree_util.tree_leaves(params),
                                    jax.tree_util.tree_leaves(anchor))
                )
                return value + 0.5 * mu * sq, value
            return value, value

        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def run(params, codes, numeric, labels):
            anchor = params
            state = optimizer.init(params)

            def step(carry, batch):
                p, s = carry
                (_, plain), grads = grad_fn(p, anchor, *batch)
                updates, s = optimizer.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), plain

            (params, _), losses = jax.lax.scan(step, (params, state), (codes, numeric, labels))
            return params, jnp.mean(losses)

        self._fn = run
        self._run = jax.jit(run)
        self._vmapped: Callable[..., Any] | None = None

    def inputs(self, rng: np.random.Generator, split: Any, steps: int, *, seed: int,
               round_idx: int, index: int, secret: Any = None) -> Batches:
        """One client's stacked batches for ``steps`` steps (batch order from ``rng``, the
        public stream; ``secret`` is unused: non-private training has no secret draws)."""
        plan = batch_plan(rng, len(split), steps, self.cfg.batch_size, shuffle=self.cfg.shuffle)
        return gather(split, plan)

    def train(self, params: Params, batches: Batches) -> tuple[Params, float]:
        """Train from ``params`` over the stacked batches; returns new params and mean loss."""
        new, loss = self._run(params, batches.codes, batches.numeric, batches.labels)
        return new, float(loss)

    def train_many(self, params: Params, batches: Sequence[Batches]) -> tuple[Params, np.ndarray]:
        """Train every client's batches from the same ``params`` in one vmapped call.

        Returns the stacked new parameters (leading axis: client) and mean losses.
        """
        if self._vmapped is None:
            self._vmapped = jax.jit(jax.vmap(self._fn, in_axes=(None, 0, 0, 0)))
        stacked = [np.stack([getattr(b, f) for b in batches]) for f in ("codes", "numeric",
                                                                         "labels")]
        new, losses = self._vmapped(params, *stacked)
        return new, np.asarray(losses, np.float64)


@partial(jax.jit, static_argnums=0)
def _logits(model: EHRMLP, params: Params, codes: jax.Array, numeric: jax.Array) -> jax.Array:
    return model.apply({"params": params}, codes, numeric)


def predict(model: EHRMLP, params: Params, split: Any, *, chunk: int = 2048) -> np.ndarray:
    """Predicted probabilities for every row of ``split`` (float64 [n])."""
    n = len(split.labels)
    out = np.empty(n, np.float64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        codes, numeric = split.codes[start:stop], split.numeric[start:stop]
        pad = chunk - (stop - start) if n > chunk else 0
        if pad:  # keep one compiled shape for the last chunk
            codes = np.pad(codes, ((0, pad), (0, 0)), constant_values=-1)
            numeric = np.pad(numeric, ((0, pad), (0, 0)))
        logits = np.asarray(_logits(model, params, codes, numeric), np.float64)
        out[start:stop] = expit(logits[: stop - start])
    return out


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary log loss, clipped away from 0 and 1."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def poisson_inputs(secret: Any, split: Any, steps: int, rate: float, max_batch: int
                   ) -> tuple[Batches, np.ndarray, jax.Array]:
    """``steps`` Poisson-sampled batches of ``split`` padded to ``max_batch``, their masks
    and one noise key per step, all from ``secret`` (a `fedsim.privacy.randomness`
    source; the OS CSPRNG when None): the sample and the noise are the hospital's
    secrets, and the public batch stream is not used."""
    from fedsim.privacy import poisson_batch_indices
    from fedsim.privacy.randomness import SecretRandom

    secret = secret if secret is not None else SecretRandom()
    idx, masks = zip(*(poisson_batch_indices(secret, len(split), rate, max_batch)
                       for _ in range(steps)))
    plan, mask = np.stack(idx), np.stack(masks).astype(np.float32)
    return gather(split, plan), mask, jax.random.split(secret.jax_key(), mask.shape[0])


class DPSGDTrainer:
    """Record-level DP local training: Poisson-sampled batches, DP-SGD steps in one scan.

    Each step samples every training record with the hospital's rate (padded to a fixed
    ``max_batch`` with a mask, so one compiled function serves all steps), clips
    per-example gradients to ``clip`` and adds Gaussian noise
    (`fedsim.privacy.make_dpsgd_step`). Memory grows with ``max_batch x parameters``
    (per-example gradients over the whole code table); `fedsim.learning.sparse` trains
    only selected rows.
    """

    def __init__(self, model: EHRMLP, cfg: TrainConfig, clip: float, spec: Any,
                 num_examples: int) -> None:
        """``spec`` is the hospital's `fedsim.privacy.RecordLevelSpec`."""
        from fedsim.privacy import make_dpsgd_step, poisson_max_batch

        self.model = model
        self.rate = float(spec.sampling_rate)
        self.spec = spec  # the hospital's own, from its config and row count
        self.max_batch = poisson_max_batch(num_examples, self.rate)
        optimizer = make_optimizer(cfg)

        def example_loss(params, ex):
            logit = model.apply({"params": params}, ex["codes"][None], ex["numeric"][None])[0]
            return optax.sigmoid_binary_cross_entropy(logit, ex["label"])

        step = make_dpsgd_step(example_loss, optimizer, l2_clip=clip,
                               noise_multiplier=spec.noise_multiplier,
                               expected_batch_size=self.rate * num_examples)

        @jax.jit
        def run(params, codes, numeric, labels, masks, keys):
            def body(carry, xs):
                p, s = carry
                c, n, y, m, k = xs
                p, s, loss = step(p, s, {"codes": c, "numeric": n, "label": y}, k, m)
                return (p, s), loss

            (params, _), losses = jax.lax.scan(
                body, (params, optimizer.init(params)), (codes, numeric, labels, masks, keys))
            return params, jnp.mean(losses)

        self._run = run

    def inputs(self, rng: np.random.Generator, split: Any, steps: int, *, seed: int,
               round_idx: int, index: int, secret: Any = None) -> tuple:
        """Poisson-sampled, padded batches for ``steps`` steps, their masks and noise keys
        (`poisson_inputs`, from the hospital's ``secret``; ``rng`` is not used)."""
        return poisson_inputs(secret, split, steps, self.rate, self.max_batch)

    def train(self, params: Params, inputs: tuple) -> tuple[Params, float]:
        data, mask, keys = inputs
        new, loss = self._run(params, data.codes, data.numeric, data.labels, mask, keys)
        return new, float(loss)

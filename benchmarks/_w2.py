"""W2 for the peer frameworks: data, model, local training, client sampling.

Only numpy, JAX, Flax and optax: the Flower peer imports this module from its own
virtual environment (no fedsim, no OpenFHE there). fedsim runs W2 from
``configs/w2.yaml`` through its own round loop; everything here is written to equal
what fedsim does there (tests/benchmarks check it): the teacher data of
`fedsim.data.teacher`, fedsim's MLP (`fedsim.learning.model.EHRMLP` with no codes: the
same parameter names, initialised from the same key), one epoch in data order, and
fedsim's seeded client sampling (`fedsim.protocol.sampling`). See BENCHMARKS.md, "W2".
"""

from __future__ import annotations

import zlib
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

FEATURES = 64
SAMPLES = 50
BATCH = 10
LR = 0.05
TEST_SEED = 999
FLIP = 0.10


def teacher() -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(64)
    b = rng.standard_normal()
    return w, float(b)


def samples(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled samples from seed ``seed`` (10% of labels flipped)."""
    w, b = teacher()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    y = x @ w + b > 0
    flip = rng.random(n) < FLIP
    y = np.where(flip, ~y, y)
    return x, y.astype(np.float32)


def client_data(i: int) -> tuple[np.ndarray, np.ndarray]:
    return samples(1000 + i, SAMPLES)


def test_data() -> tuple[np.ndarray, np.ndarray]:
    return samples(TEST_SEED, 2000)


class MLP(nn.Module):
    """64 -> 64 -> 64 -> 1, ReLU, laid out as fedsim's ``EHRMLP(depth=3, width=64)``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(64, use_bias=False, name="numeric")(x)
        h = nn.relu(h + self.param("bias_0", nn.initializers.zeros, (64,))[None, :])
        for i in (1, 2):
            h = nn.relu(nn.Dense(64, name=f"dense_{i}")(h))
        return nn.Dense(1, name="logit")(h)[..., 0]


MODEL = MLP()


def init_params(seed: int = 0) -> dict:
    """Initial parameters from fedsim's key: ``fold_in(PRNGKey(seed), 0)``."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    return MODEL.init(key, jnp.zeros((1, FEATURES), jnp.float32))["params"]


def _loss(params, x, y):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(MODEL.apply({"params": params}, x), y))


def local_train(params, x, y):
    """One epoch in data order, batch 10, SGD 0.05; returns the new parameters.

    Pure and traceable: fedsim's cohort vmaps it over clients, Flower jits it per client.
    """
    steps = x.shape[0] // BATCH
    xb = x[: steps * BATCH].reshape(steps, BATCH, -1)
    yb = y[: steps * BATCH].reshape(steps, BATCH)
    grad = jax.grad(_loss)

    def step(p, batch):
        g = grad(p, *batch)
        return jax.tree_util.tree_map(lambda a, b: a - LR * b, p, g), None

    params, _ = jax.lax.scan(step, params, (xb, yb))
    return params


local_train_jit = jax.jit(local_train)


@partial(jax.jit)
def logits(params, x):
    return MODEL.apply({"params": params}, x)


def scores(params) -> dict[str, float]:
    """Accuracy (logit > 0) and ROC AUC on the 2,000-sample test set."""
    from sklearn.metrics import roc_auc_score

    x, y = test_data()
    z = np.asarray(logits(params, x))
    return {"accuracy": float(np.mean((z > 0) == (y > 0.5))),
            "auc": float(roc_auc_score(y, z))}


def sample_round(seed: int, round_idx: int, clients: int, per_round: int) -> np.ndarray:
    """The clients of one round: uniform without replacement, from fedsim's stream
    ``SeedSequence([seed, crc32("sampling"), round])``."""
    tag = zlib.crc32(b"sampling")
    rng = np.random.default_rng(np.random.SeedSequence([seed, tag, round_idx]))
    return np.sort(rng.choice(clients, size=per_round, replace=False))

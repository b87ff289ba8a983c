"""Flax MLP for EHR data: medical codes enter through an embedding-bag.

The first hidden layer of an MLP on a one-hot (multi-hot) code vector is ``x @ W``;
for a patient with codes c_1..c_k that is ``sum_j W[c_j]``. `EmbeddingBag` computes
exactly that from the padded code list, so the 24,428-wide multi-hot input is never
materialised. Numeric features (age, labs) are projected and added before the
activation, which is the same as concatenating them to the multi-hot input.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedsim.config import ModelConfig

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
    "silu": nn.silu,
}


class EmbeddingBag(nn.Module):
    """Sum (or mean) of learned code vectors; ``codes`` is int [batch, L] padded with -1."""

    vocab_size: int
    features: int
    mode: str = "sum"

    @nn.compact
    def __call__(self, codes: jax.Array) -> jax.Array:
        table = self.param(
            "embedding",
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0),
            (self.vocab_size, self.features),
        )
        mask = codes >= 0
        rows = jnp.take(table, jnp.where(mask, codes, 0), axis=0)
        summed = jnp.sum(rows * mask[..., None].astype(rows.dtype), axis=-2)
        if self.mode == "mean":
            count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1).astype(rows.dtype)
            summed = summed / count
        return summed


class EHRMLP(nn.Module):
    """``depth`` hidden layers of ``width`` units and a scalar logit.

    The first hidden layer is the embedding-bag over codes plus a dense projection of
    the numeric features; the remaining ``depth - 1`` are dense layers.
    """

    vocab_size: int
    num_numeric: int
    depth: int
    width: int
    activation: str = "relu"
    bag: str = "sum"

    @nn.compact
    def __call__(self, codes: jax.Array, numeric: jax.Array,
                 offset: jax.Array | None = None) -> jax.Array:
        """Logits; ``offset`` [batch, width], if given, is added to the first layer's
        pre-activation: sparse DP-SGD passes the sum of a record's frozen code rows
        there and trains a table of the selected rows only (`fedsim.learning.sparse`)."""
        act = _ACTIVATIONS[self.activation]
        h = jnp.zeros((codes.shape[0], self.width), jnp.float32)
        if offset is not None:
            h = h + offset
        if self.vocab_size > 0 and codes.shape[-1] > 0:
            h = h + EmbeddingBag(self.vocab_size, self.width, self.bag, name="codes")(codes)
        if self.num_numeric > 0:
            h = h + nn.Dense(self.width, use_bias=False, name="numeric")(numeric)
        h = h + self.param("bias_0", nn.initializers.zeros, (self.width,))[None, :]
        h = act(h)
        for i in range(1, self.depth):
            h = act(nn.Dense(self.width, name=f"dense_{i}")(h))
        return nn.Dense(1, name="logit")(h)[..., 0]


def build_model(cfg: ModelConfig, *, vocab_size: int, num_numeric: int) -> EHRMLP:
    """The model a run uses, from its config and the data's shape."""
    return EHRMLP(
        vocab_size=vocab_size,
        num_numeric=num_numeric,
        depth=cfg.depth,
        width=cfg.width,
        activation=cfg.activation,
        bag=cfg.bag,
    )


def init_params(model: EHRMLP, *, key: jax.Array, max_codes: int) -> dict:
    """Initial parameters for inputs with ``max_codes`` code slots."""
    codes = -jnp.ones((1, max_codes), jnp.int32)
    numeric = jnp.zeros((1, model.num_numeric), jnp.float32)
    return model.init(key, codes, numeric)["params"]


def count_params(params: dict) -> int:
    """Number of scalars in a parameter tree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))

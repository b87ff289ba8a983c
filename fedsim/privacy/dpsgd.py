"""Record-level DP-SGD inside a client (Abadi et al. 2016, "Deep Learning with DP").

One step: per-example gradients (``jax.vmap`` of ``jax.grad``), each clipped to global
L2 norm ``C`` over the whole parameter pytree, summed, plus Gaussian noise
``N(0, (C z)^2)`` per coordinate, divided by a *fixed* denominator, the expected batch
size, then passed to an optax optimizer. The fixed denominator makes the step a
post-processing of the noised sum, so its privacy is exactly that of the
Poisson-sampled Gaussian mechanism accounted by ``RecordLevelSpec``
(``fedsim.privacy.events``); dividing by the realised batch size would not be.

Poisson sampling gives batches of random size; to keep one jitted shape, draw a padded
batch with :func:`poisson_batch_indices` and pass its ``mask``: examples with mask 0
contribute nothing (their clipped gradient is multiplied by 0 before the sum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from fedsim.errors import PrivacyError

__all__ = ["DpSgdStep", "make_dpsgd_step", "poisson_batch_indices", "poisson_max_batch"]

PyTree = Any
DpSgdStep = Callable[..., tuple[PyTree, optax.OptState, jax.Array]]


def make_dpsgd_step(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    l2_clip: float,
    noise_multiplier: float,
    expected_batch_size: float,
) -> DpSgdStep:
    """Build ``step(params, opt_state, batch, key, mask=None) -> (params, opt_state, loss)``.

    Args:
        loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example; ``example`` is
            the batch pytree without its leading batch axis.
        optimizer: any optax transformation, applied to the privatised mean gradient.
        l2_clip: per-example clip bound ``C`` > 0 (global norm over all leaves).
        noise_multiplier: ``z`` >= 0; noise stddev per coordinate is ``C * z``. ``z = 0``
            clips without noise and gives no DP guarantee (the accountant refuses it).
        expected_batch_size: the fixed denominator: ``sampling_rate * num_examples``
            for Poisson sampling, or the batch size for fixed-size batches.

    The returned step is jitted. ``batch`` is a pytree of arrays with a leading batch
    axis ``B``; ``key`` a JAX PRNG key used only for the noise (split per leaf);
    ``mask`` a ``(B,)`` array of 0/1 (default: all ones). The returned ``loss`` is the
    mean over unmasked examples, for monitoring only: it is NOT privatised.

    Clipped per-example norms are at most ``C`` up to float rounding of the dtype.
    """
    for name, value in (("l2_clip", l2_clip), ("expected_batch_size", expected_batch_size)):
        if not (math.isfinite(value) and value > 0):
            raise PrivacyError(f"{name}: must be a finite number > 0, got {value}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(
            f"noise_multiplier: must be a finite number >= 0, got {noise_multiplier}"
        )
    stddev = float(l2_clip) * float(noise_multiplier)
    per_example = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0))

    def step(
        params: PyTree,
        opt_state: optax.OptState,
        batch: PyTree,
        key: jax.Array,
        mask: jax.Array | None = None,
    ) -> tuple[PyTree, optax.OptState, jax.Array]:
        losses, grads = per_example(params, batch)
        size = losses.shape[0]
        weights = jnp.ones((size,), losses.dtype) if mask is None else mask.astype(losses.dtype)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        sq_norms = sum(jnp.sum(jnp.reshape(g, (size, -1)) ** 2, axis=1) for g in leaves)
        norms = jnp.sqrt(sq_norms)
        # min(1, C / norm) written so that a zero norm gives factor 1, never 0/0.
        factors = weights * (l2_clip / jnp.maximum(norms, l2_clip))
        summed = [jnp.tensordot(factors.astype(g.dtype), g, axes=1) for g in leaves]
        if stddev > 0.0:
            keys = jax.random.split(key, len(leaves))
            summed = [
                s + stddev * jax.random.normal(k, s.shape, s.dtype)
                for s, k in zip(summed, keys, strict=True)
            ]
        noisy_mean = jax.tree_util.tree_unflatten(
            treedef, [s / expected_batch_size for s in summed]
        )
        updates, opt_state = optimizer.update(noisy_mean, opt_state, params)
        params = optax.apply_updates(params, updates)
        loss = jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1.0)
        return params, opt_state, loss

    return jax.jit(step)


def poisson_max_batch(num_examples: int, rate: float, overflow_probability: float = 1e-9) -> int:
    """Smallest padded batch size that a Poisson(``rate``) sample exceeds with probability
    at most ``overflow_probability`` (binomial upper quantile)."""
    _check_rate(num_examples, rate)
    return max(1, int(stats.binom.isf(overflow_probability, num_examples, rate)) + 1)


def _check_rate(num_examples: int, rate: float) -> None:
    if num_examples < 1:
        raise PrivacyError(f"num_examples: must be >= 1, got {num_examples}")
    if not (0.0 < rate <= 1.0):
        raise PrivacyError(f"rate: sampling rate must be in (0, 1], got {rate}")


def poisson_batch_indices(
    rng: Any, num_examples: int, rate: float, max_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson-sample records: each of ``num_examples`` is in with probability ``rate``.

    ``rng`` is anything with ``random(size)``: the hospital's secret source
    (`fedsim.privacy.randomness`) in a run, since the accounting's amplification by
    sampling holds only while the sample is secret.

    Returns ``(indices, mask)`` of fixed shape ``(max_batch,)``: the sampled indices
    (ascending) then padding with index 0 and mask 0. Gather the batch with
    ``indices`` and pass ``mask`` to the DP-SGD step.

    Raises:
        PrivacyError: the sample is larger than ``max_batch``. Truncating would change
            the mechanism the accountant analyses, so the step is refused; size
            ``max_batch`` with :func:`poisson_max_batch`.
    """
    _check_rate(num_examples, rate)
    chosen = np.flatnonzero(rng.random(num_examples) < rate)
    if chosen.size > max_batch:
        # The sample's size is the hospital's secret: not in the text.
        raise PrivacyError(
            f"a Poisson sample of records exceeds max_batch={max_batch}; "
            f"increase max_batch (see poisson_max_batch) rather than truncate"
        )
    indices = np.zeros(max_batch, np.int64)
    mask = np.zeros(max_batch, np.float32)
    indices[: chosen.size] = chosen
    mask[: chosen.size] = 1.0
    return indices, mask

"""DP-SGD step: plain SGD in the limit, bounded per-example influence, masks, noise scale."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedsim.errors import PrivacyError
from fedsim.privacy import make_dpsgd_step, poisson_batch_indices, poisson_max_batch


def squared_error(params, example):
    pred = jnp.dot(example["x"], params["w"]) + params["b"]
    return 0.5 * (pred - example["y"]) ** 2


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + rng.standard_normal(n)).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


PARAMS = {"w": jnp.array([0.1, 0.2, -0.3], jnp.float32), "b": jnp.array(0.05, jnp.float32)}
KEY = jax.random.PRNGKey(0)


def test_no_noise_and_huge_clip_is_a_plain_optax_step():
    batch = _data(16)
    opt = optax.adam(0.05)
    step = make_dpsgd_step(
        squared_error, opt, l2_clip=1e6, noise_multiplier=0.0, expected_batch_size=16
    )
    params, state, loss = step(PARAMS, opt.init(PARAMS), batch, KEY)

    def mean_loss(p):
        return jnp.mean(jax.vmap(squared_error, in_axes=(None, 0))(p, batch))

    ref_loss, grads = jax.value_and_grad(mean_loss)(PARAMS)
    updates, ref_state = opt.update(grads, opt.init(PARAMS), PARAMS)
    ref = optax.apply_updates(PARAMS, updates)
    for k in PARAMS:
        np.testing.assert_allclose(params[k], ref[k], atol=1e-5, rtol=0)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    # a second step from the returned state matches too (state is threaded correctly)
    params2, _, _ = step(params, state, batch, KEY)
    grads2 = jax.grad(mean_loss)(ref)
    ref2 = optax.apply_updates(ref, opt.update(grads2, ref_state, ref)[0])
    for k in PARAMS:
        np.testing.assert_allclose(params2[k], ref2[k], atol=1e-5, rtol=0)


def test_tiny_clip_bounds_each_examples_contribution():
    clip, size = 1e-3, 16
    batch = _data(size, seed=1)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)  # update = new params exactly
    step = make_dpsgd_step(
        squared_error, optax.sgd(1.0), l2_clip=clip, noise_multiplier=0.0, expected_batch_size=size
    )
    params, _, _ = step(zeros, optax.sgd(1.0).init(zeros), batch, KEY)
    delta = np.concatenate([np.ravel(params[k]) for k in ("w", "b")]).astype(np.float64)
    assert np.linalg.norm(delta) <= clip * (1 + 1e-6)
    # and it is exactly minus C times the mean of per-example gradient directions
    g = jax.vmap(jax.grad(squared_error), in_axes=(None, 0))(zeros, batch)
    flat = np.concatenate([np.asarray(g["w"]), np.asarray(g["b"])[:, None]], axis=1)
    flat = flat.astype(np.float64)
    expected = -clip * np.mean(flat / np.linalg.norm(flat, axis=1, keepdims=True), axis=0)
    np.testing.assert_allclose(delta, expected, rtol=1e-5, atol=1e-10)


def test_masked_examples_contribute_nothing():
    real, padded = _data(8, seed=2), _data(12, seed=3)
    junk = {k: v.at[:8].set(real[k]) * 1.0 for k, v in padded.items()}
    junk = {"x": junk["x"].at[8:].multiply(1e4), "y": junk["y"].at[8:].set(1e6)}
    mask = jnp.array([1.0] * 8 + [0.0] * 4)
    kwargs = dict(l2_clip=0.7, noise_multiplier=1.3, expected_batch_size=10.0)
    opt = optax.sgd(0.1)
    masked = make_dpsgd_step(squared_error, opt, **kwargs)(
        PARAMS, opt.init(PARAMS), junk, KEY, mask
    )
    plain = make_dpsgd_step(squared_error, opt, **kwargs)(PARAMS, opt.init(PARAMS), real, KEY)
    for k in PARAMS:
        np.testing.assert_allclose(masked[0][k], plain[0][k], atol=1e-6, rtol=0)
    np.testing.assert_allclose(masked[2], plain[2], rtol=1e-6)


def test_noise_stddev_is_clip_times_multiplier_with_zero_gradients():
    # A loss that ignores the parameters: every per-example gradient has norm 0.
    def flat_loss(params, example):
        return jnp.sum(example) * 0.0 + 0.0 * jnp.sum(params["v"])

    size, clip, z = 200_000, 0.5, 2.0
    params = {"v": jnp.zeros(size, jnp.float32)}
    step = make_dpsgd_step(
        flat_loss, optax.sgd(1.0), l2_clip=clip, noise_multiplier=z, expected_batch_size=1.0
    )
    new, _, _ = step(params, optax.sgd(1.0).init(params), jnp.zeros((4, 2)), KEY)
    noise = -np.asarray(new["v"], np.float64)
    assert abs(noise.std() / (clip * z) - 1.0) < 5.0 / math.sqrt(2 * size)
    assert abs(noise.mean()) < 5.0 * clip * z / math.sqrt(size)
    again, _, _ = step(params, optax.sgd(1.0).init(params), jnp.zeros((4, 2)), KEY)
    other, _, _ = step(
        params, optax.sgd(1.0).init(params), jnp.zeros((4, 2)), jax.random.PRNGKey(1)
    )
    np.testing.assert_array_equal(again["v"], new["v"])
    assert not np.array_equal(other["v"], new["v"])


def test_poisson_batch_indices_are_padded_to_a_fixed_shape():
    rng = np.random.default_rng(0)
    n, rate = 1000, 0.05
    cap = poisson_max_batch(n, rate)
    counts = []
    for _ in range(400):
        idx, mask = poisson_batch_indices(rng, n, rate, cap)
        k = int(mask.sum())
        counts.append(k)
        assert idx.shape == mask.shape == (cap,)
        assert np.all(np.diff(idx[:k]) > 0) and np.all(idx[k:] == 0) and np.all(mask[k:] == 0)
    # mean batch size n*q = 50 with stddev sqrt(n q (1-q)) / sqrt(400)
    assert abs(np.mean(counts) - 50.0) < 5.0 * math.sqrt(n * rate * (1 - rate) / 400)
    assert 50 < cap < 120


def test_oversized_poisson_sample_is_refused_not_truncated():
    with pytest.raises(PrivacyError,
                       match="a Poisson sample of records exceeds max_batch=10; increase"):
        poisson_batch_indices(np.random.default_rng(0), 1000, 0.5, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(l2_clip=0.0, noise_multiplier=1.0, expected_batch_size=8), "l2_clip: must be"),
        (dict(l2_clip=1.0, noise_multiplier=-1.0, expected_batch_size=8), "noise_multiplier"),
        (dict(l2_clip=1.0, noise_multiplier=1.0, expected_batch_size=0), "expected_batch_size"),
    ],
)
def test_make_dpsgd_step_refusals(kwargs, message):
    with pytest.raises(PrivacyError, match=message):
        make_dpsgd_step(squared_error, optax.sgd(0.1), **kwargs)

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedsim.config import ModelConfig
from fedsim.learning.model import EmbeddingBag, build_model, count_params, init_params


def test_embedding_bag_equals_multi_hot_product():
    vocab, width = 11, 4
    codes = jnp.array([[0, 3, 3, -1], [10, -1, -1, -1], [-1, -1, -1, -1]], jnp.int32)
    for mode in ("sum", "mean"):
        bag = EmbeddingBag(vocab, width, mode)
        params = bag.init(jax.random.PRNGKey(1), codes)
        table = np.asarray(params["params"]["embedding"])
        multi_hot = np.zeros((3, vocab))
        for i, row in enumerate(np.asarray(codes)):
            for c in row[row >= 0]:
                multi_hot[i, c] += 1
        expected = multi_hot @ table
        if mode == "mean":
            expected = expected / np.maximum(multi_hot.sum(1, keepdims=True), 1)
        np.testing.assert_allclose(np.asarray(bag.apply(params, codes)), expected, rtol=1e-6)


def test_mlp_shapes_and_numeric_features_matter():
    model = build_model(ModelConfig(depth=3, width=16), vocab_size=50, num_numeric=2)
    params = init_params(model, key=jax.random.PRNGKey(0), max_codes=5)
    codes = jnp.array([[1, 2, -1, -1, -1], [4, -1, -1, -1, -1]], jnp.int32)
    numeric = jnp.array([[0.0, 1.0], [2.0, -1.0]], jnp.float32)
    logits = model.apply({"params": params}, codes, numeric)
    assert logits.shape == (2,)
    other = model.apply({"params": params}, codes, numeric + 1.0)
    assert not np.allclose(logits, other)
    # 50*16 bag + 2*16 numeric + 16 bias + 2*(16*16+16) dense + 16+1 logit
    assert count_params(params) == 50 * 16 + 2 * 16 + 16 + 2 * (16 * 16 + 16) + 17


def test_paper_model_has_about_17_5_million_parameters():
    model = build_model(ModelConfig(depth=20, width=512), vocab_size=24428, num_numeric=5)
    shapes = jax.eval_shape(lambda k: init_params(model, key=k, max_codes=8),
                            jax.random.PRNGKey(0))
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert n == 24428 * 512 + 5 * 512 + 512 + 19 * (512 * 512 + 512) + 513
    assert 17.4e6 < n < 17.6e6

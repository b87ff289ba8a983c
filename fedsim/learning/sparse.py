"""Sparsity-preserving DP-SGD: DP-SGD steps that train only the selected code rows.

`fedsim.privacy.sparse` selects, privately and once per run, the rows of the code table
that a hospital trains. This trainer runs Poisson-sampled DP-SGD
(`fedsim.privacy.make_dpsgd_step`) over a *compact* parameter tree: the model's dense
layers and a table of the selected rows only. Per-example gradients, their clipping and
the Gaussian noise therefore cover exactly the selected rows and the dense layers. Every
other row keeps its value from the round's start: its contribution to a record's bag is
passed to the model as a constant ``offset``, and its update is exactly zero.

Compared with dense DP-SGD the per-example gradients shrink from ``B x V x width`` to
``B x S x width`` values (``S`` selected rows), so steps are also cheaper.
Needs ``model.bag == "sum"``: a mean bag would divide the frozen and trained parts by
different counts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedsim.errors import ConfigError
from fedsim.learning.model import EHRMLP
from fedsim.learning.train import make_optimizer, poisson_inputs

Params = Any


class SparseDPSGDTrainer:
    """Record-level DP local training of the selected rows; see the module docstring.

    ``selected`` are the hospital's selected codes (sorted, from
    `fedsim.privacy.sparse.RowSelection.select`); ``spec`` its `RecordLevelSpec`.
    """

    def __init__(self, model: EHRMLP, cfg: Any, *, clip: float, spec: Any,
                 num_examples: int, selected: np.ndarray) -> None:
        from fedsim.privacy import make_dpsgd_step, poisson_max_batch

        if model.bag != "sum":
            raise ConfigError("privacy.sparse: sparse DP-SGD needs model.bag 'sum'")
        self.model = model
        self.selected = np.asarray(selected, np.int64)
        self.spec = spec  # the hospital's own, from its config and row count
        self.rate = float(spec.sampling_rate)
        self.max_batch = poisson_max_batch(num_examples, self.rate)
        rows = max(1, self.selected.size)  # an empty selection trains one unused row
        compact = model.clone(vocab_size=rows)
        lookup = np.full(model.vocab_size, -1, np.int32)
        lookup[self.selected] = np.arange(self.selected.size, dtype=np.int32)
        lookup = jnp.asarray(lookup)
        index = jnp.asarray(self.selected)
        optimizer = make_optimizer(cfg)

        def example_loss(params, ex):
            logit = compact.apply({"params": params}, ex["codes"][None], ex["numeric"][None],
                                  ex["offset"][None])[0]
            return optax.sigmoid_binary_cross_entropy(logit, ex["label"])

        step = make_dpsgd_step(example_loss, optimizer, l2_clip=clip,
                               noise_multiplier=spec.noise_multiplier,
                               expected_batch_size=self.rate * num_examples)

        def split_codes(table, codes):
            present = codes >= 0
            position = jnp.where(present, lookup[jnp.where(present, codes, 0)], -1)
            frozen = present & (position < 0)
            rows = jnp.take(table, jnp.where(frozen, codes, 0), axis=0)
            return position, jnp.sum(rows * frozen[..., None].astype(rows.dtype), axis=-2)

        @jax.jit
        def run(params, codes, numeric, labels, masks, keys):
            table = params["codes"]["embedding"]
            trained = jnp.take(table, index, axis=0) if self.selected.size else \
                jnp.zeros((1, table.shape[1]), table.dtype)
            small = {**params, "codes": {"embedding": trained}}

            def body(carry, xs):
                p, s = carry
                c, n, y, m, k = xs
                position, offset = split_codes(table, c)
                batch = {"codes": position, "numeric": n, "label": y, "offset": offset}
                p, s, loss = step(p, s, batch, k, m)
                return (p, s), loss

            (small, _), losses = jax.lax.scan(
                body, (small, optimizer.init(small)), (codes, numeric, labels, masks, keys))
            new_table = (table.at[index].set(small["codes"]["embedding"])
                         if self.selected.size else table)
            return {**small, "codes": {"embedding": new_table}}, jnp.mean(losses)

        self._run = run

    def inputs(self, rng: np.random.Generator, split: Any, steps: int, *, seed: int,
               round_idx: int, index: int, secret: Any = None) -> tuple:
        """As `fedsim.learning.train.DPSGDTrainer.inputs`: `poisson_inputs` from the
        hospital's ``secret``."""
        return poisson_inputs(secret, split, steps, self.rate, self.max_batch)

    def train(self, params: Params, inputs: tuple) -> tuple[Params, float]:
        data, mask, keys = inputs
        new, loss = self._run(params, data.codes, data.numeric, data.labels, mask, keys)
        return new, float(loss)

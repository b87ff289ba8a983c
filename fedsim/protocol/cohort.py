"""Many small clients in one process, trained together with ``jax.vmap``.

A federation of thousands of clients with a few dozen samples each spends its time on
per-client overheads (one actor call, one dispatch, one compilation per client), not on
arithmetic. A `Cohort` holds the data of many clients and trains a round's sampled
subset in one vmapped, jitted call of the same local trainer a `Hospital` runs; each
client's delta then goes through the same client steps and encoder
(`fedsim.protocol.client.Contributions`), so the round loop, the aggregator and the key
holders cannot tell a cohort's client from a hospital.

Each client's batches come from its own public stream ``(seed, "batches", round,
index)``, as a hospital's do, so a client's update does not depend on which cohort
simulates it. Every client of a cohort needs the same number of local steps (the
batches are stacked): set ``train.local_steps``, or give clients equal sizes with
``train.local_epochs``. ``pad_to`` fixes the vmapped batch size, so one compiled
function serves every round (padding rows repeat a client and are discarded).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from fedsim.aggregate.steps import Pipeline, RoundContext
from fedsim.config import RunConfig
from fedsim.crypto.identity import model_digest
from fedsim.data import ClientData
from fedsim.errors import ConfigError, ProtocolError
from fedsim.learning.model import build_model, init_params
from fedsim.learning.train import LocalTrainer, local_steps
from fedsim.privacy.randomness import NoiseSource
from fedsim.protocol.backend import Deferred
from fedsim.protocol.client import Contributions, ModelShape
from fedsim.protocol.schemes import Encoding
from fedsim.seeding import client_key, stream


class Cohort:
    """Clients ``first .. first + len(clients) - 1`` of the federation, trained in a batch."""

    def __init__(
        self,
        cfg: RunConfig,
        clients: Sequence[ClientData],
        *,
        first: int,
        shape: ModelShape,
        pipeline: Pipeline,
        pad_to: int,
        run_id: str,
    ) -> None:
        if not clients:
            raise ProtocolError("cohort: no clients")
        self.cfg = cfg
        self.clients = tuple(clients)
        self.first = first
        self.pad_to = pad_to
        self._position = {c.name: i for i, c in enumerate(self.clients)}
        steps = {local_steps(cfg.train, len(c.train)) for c in self.clients}
        if len(steps) != 1:
            raise ConfigError(
                f"federation.clients: cohort clients train stacked batches, but their local "
                f"step counts differ ({min(steps)} to {max(steps)}); set train.local_steps"
            )
        self.steps = steps.pop()
        model = build_model(cfg.model, vocab_size=shape.vocab_size,
                            num_numeric=shape.num_numeric)
        template = init_params(model, key=client_key(cfg.seed, 0), max_codes=shape.max_codes)
        _, self._unravel = ravel_pytree(template)
        self.trainer = LocalTrainer(model, cfg.train)
        self._flatten = jax.jit(jax.vmap(lambda tree: ravel_pytree(tree)[0]))
        self.contributions = Contributions(pipeline, NoiseSource.for_run(cfg), run_id,
                                           [c.name for c in self.clients],
                                           mode=cfg.federation.mode,
                                           private=cfg.privacy.client_level)

    @property
    def size(self) -> int:
        return len(self.clients)

    def identities(self) -> dict[str, bytes]:
        return self.contributions.identities()

    def endorse(self, round_idx: int, batches: Mapping[str, str]) -> dict[str, bytes]:
        return self.contributions.endorse(round_idx, batches)

    def use_encoding(self, encoding: Encoding) -> None:
        self.contributions.use_encoding(encoding)

    def train(self, round_idx: int, global_flat: np.ndarray, clients: Sequence[str],
              context: RoundContext, commitment: Deferred) -> tuple[Any, ...]:
        """``(reports, bundle)``: a report per client, in ``clients`` order, and the
        payloads of those not dropped."""
        unknown = [c for c in clients if c not in self._position]
        if unknown or not clients:
            raise ProtocolError(f"cohort of {self.clients[0].name}..{self.clients[-1].name} "
                                f"asked to train {unknown or 'no clients'}")
        start = np.asarray(global_flat, np.float32)  # what training starts from
        model = model_digest(start, context.params)
        self.contributions.check_round(round_idx, clients, model)
        t0 = time.perf_counter()
        members = [self.clients[self._position[c]] for c in clients]
        inputs = [
            self.trainer.inputs(stream(self.cfg.seed, "batches", round_idx, index),
                                data.train, self.steps, seed=self.cfg.seed,
                                round_idx=round_idx, index=index)
            for data, index in ((m, self.first + self._position[m.name]) for m in members)
        ]
        padded = inputs + inputs[:1] * max(0, self.pad_to - len(inputs))
        params = self._unravel(start)
        new, losses = self.trainer.train_many(params, padded)
        flat = np.asarray(self._flatten(new), np.float64)[: len(members)]
        deltas = flat - np.asarray(global_flat, np.float64)
        train_s = time.perf_counter() - t0
        return self.contributions.bundle([
            self.contributions.make(data.name, self.first + self._position[data.name],
                                    len(data.train), delta, float(loss), context, train_s)
            for data, delta, loss in zip(members, deltas, losses)
        ], round_idx, commitment, model)

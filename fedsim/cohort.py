"""Many small clients in one process, trained together with ``jax.vmap``.

A federation of thousands of clients with a few dozen samples each spends its time on
per-client overheads (one actor call, one dispatch, one compilation per client), not on
arithmetic. `Cohort` holds the data of many clients as stacked arrays and trains a
sampled subset in one vmapped, jitted call, then returns either the sum of their
weighted deltas (plaintext; same layout as `fedsim.server.weighted_payload`) or one
ciphertext batch per client (he; `fedsim.sealing.UpdateSealer`). It is a plain class:
place it on Ray with `fedsim.backend.PartySpec` and `actors.RayBackend`.

Contract of ``train_fn(params, x, y) -> params``: pure and traceable (it is vmapped over
clients), for one client's ``x`` [n, ...] and ``y`` [n, ...]. Every client of a cohort has
the same number of samples ``n`` (stacked arrays), so FedAvg weights are equal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fedsim.errors import ProtocolError


class Cohort:
    """Clients ``first .. first + len(features) - 1`` with their data, trained in a batch.

    ``weight_norm`` is the public FedAvg normaliser (clients per round times the largest
    sample count), so each weight ``n_i / weight_norm`` is at most 1/m, as in
    `fedsim.coordinator.Federation`. ``pad_to`` fixes the vmapped batch size so one
    compiled function serves every round (padding rows carry weight 0).
    """

    def __init__(
        self,
        train_fn: Callable[[Any, Any, Any], Any],
        template: Any,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        first: int = 0,
        weight_norm: float,
        pad_to: int | None = None,
    ) -> None:
        if len(features) != len(labels):
            raise ProtocolError(f"cohort: {len(features)} feature sets, {len(labels)} label sets")
        self.first = first
        self.features = jnp.asarray(features)
        self.labels = jnp.asarray(labels)
        self.num_examples = int(features.shape[1])
        self.weight_norm = float(weight_norm)
        self.pad_to = pad_to
        _, unravel = ravel_pytree(template)

        def delta(flat, x, y):
            new, _ = ravel_pytree(train_fn(unravel(flat), x, y))
            return new - flat

        self._deltas = jax.jit(jax.vmap(delta, in_axes=(None, 0, 0)))
        self._sealer = None

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    def enable_encryption(self, context_bytes: bytes, public_key: bytes, *,
                          update_bound: float, scale: float) -> None:
        """Seal every later update under the joint public key (see `UpdateSealer`)."""
        from fedsim.sealing import UpdateSealer

        self._sealer = UpdateSealer(context_bytes, public_key, update_bound=update_bound,
                                    scale=scale)

    def _local(self, clients: Sequence[int]) -> np.ndarray:
        local = np.asarray(clients, np.int64) - self.first
        if local.size == 0 or local.min() < 0 or local.max() >= self.size:
            raise ProtocolError(f"cohort holds clients {self.first}..{self.first + self.size - 1}"
                                f", asked for {list(clients)}")
        return local

    def deltas(self, global_flat: np.ndarray, clients: Sequence[int]) -> np.ndarray:
        """Each listed client's update (new minus global parameters), float64 [k, P]."""
        local = self._local(clients)
        k = local.size
        padded = local
        if self.pad_to is not None and k < self.pad_to:
            padded = np.concatenate([local, np.repeat(local[:1], self.pad_to - k)])
        out = self._deltas(jnp.asarray(global_flat, jnp.float32),
                           self.features[padded], self.labels[padded])
        return np.asarray(out, np.float64)[:k]

    def train_sum(self, global_flat: np.ndarray, clients: Sequence[int]) -> np.ndarray:
        """Sum over clients of ``weight * delta``, with the summed weight appended."""
        deltas = self.deltas(global_flat, clients)
        weight = self.num_examples / self.weight_norm
        out = np.empty(deltas.shape[1] + 1, np.float64)
        out[:-1] = deltas.sum(axis=0) * weight
        out[-1] = weight * len(deltas)
        return out

    def train_sealed(self, global_flat: np.ndarray, clients: Sequence[int]
                     ) -> tuple[Any, ...]:
        """One ciphertext batch per client (in ``clients`` order), then the timings dict.

        Call it with ``num_returns=len(clients) + 1`` on Ray, so each batch is its own
        object and can go to the aggregator without passing through the caller.
        """
        if self._sealer is None:
            raise ProtocolError("cohort: train_sealed before enable_encryption")
        t0 = time.perf_counter()
        deltas = self.deltas(global_flat, clients)
        t1 = time.perf_counter()
        weight = self.num_examples / self.weight_norm
        sealed = []
        for c, d in zip(clients, deltas):
            blob, _ = self._sealer.seal(d, weight, client=f"client-{int(c)}")
            sealed.append(blob)
        times = {"train": t1 - t0, "seal": time.perf_counter() - t1}
        return (*sealed, times)

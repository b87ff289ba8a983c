"""``plaintext``: contributions are float64 vectors, summed and read in the clear.

The baseline every overhead figure divides by. The sum is taken in contributor-name
order (then the noise), so the float result never depends on arrival order. A party
simulating several clients (a cohort) sends their partial sum, in client order: there
is nothing to hide in plaintext, and it saves moving a vector per client (W2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, final

import numpy as np

from fedsim.aggregate.steps import Update, flat_payload
from fedsim.errors import ProtocolError
from fedsim.protocol.manifest import digest
from fedsim.protocol.schemes import Bundle, Encoder, Encoding, RoundSum, Scheme, Summation


@final
class PlainEncoder(Encoder):
    def __init__(self, slots: Sequence[str]) -> None:
        self.slots = tuple(slots)

    def encode(self, update: Update, *, client: str) -> tuple[np.ndarray, dict[str, float]]:
        return flat_payload(update, self.slots), {}

    def bundle(self, clients: Sequence[str], payloads: Sequence[Any]) -> Bundle:
        if len(payloads) < 2:
            return super().bundle(clients, payloads)
        total = np.array(payloads[0], copy=True)
        for more in payloads[1:]:
            total += more
        return Bundle((tuple(clients),), (total,))


@final
class PlainSum(RoundSum):
    def __init__(self) -> None:
        self._payloads: dict[str, np.ndarray] = {}
        self._noise: list[np.ndarray] = []

    def add(self, payload: Any, contributor: str) -> str:
        if not isinstance(payload, np.ndarray) or payload.dtype != np.float64:
            raise ProtocolError(f"client {contributor}: expected a float64 vector in "
                                "plaintext mode")
        first = next(iter(self._payloads.values()), None)
        if first is not None and payload.shape != first.shape:
            raise ProtocolError(f"client {contributor}: update has {payload.size} values, "
                                f"expected {first.size}")
        if not np.all(np.isfinite(payload)):
            raise ProtocolError(f"client {contributor}: update contains NaN or infinity")
        self._payloads[contributor] = payload
        return digest(payload)

    def add_noise(self, payload: Any) -> None:
        self._noise.append(payload)

    def result(self) -> np.ndarray:
        if not self._payloads:
            raise ProtocolError("nothing to aggregate: no client contributed this round")
        total = np.zeros_like(next(iter(self._payloads.values())))
        for name in sorted(self._payloads):
            total += self._payloads[name]
        for noise in self._noise:
            total += noise
        return total


@final
class PlainSummation(Summation):
    def start(self) -> PlainSum:
        return PlainSum()


@final
@dataclass(frozen=True)
class PlainEncoding(Encoding):
    mode = "plaintext"

    def encoder(self, slots: Sequence[str]) -> PlainEncoder:
        return PlainEncoder(slots)

    def summation(self) -> PlainSummation:
        return PlainSummation()


@final
class Plaintext(Scheme):
    """No encryption: the aggregate is read as it is."""

    @classmethod
    def create(cls, cfg: Any, *, num_params: int, slots: Sequence[str],
               max_contributors: int) -> Plaintext:
        return cls()

    @property
    def num_ciphertexts(self) -> int:
        return 0

    def setup(self, backend: Any, training: Sequence[str], *, update_bound: float,
              noise_parts: float) -> PlainEncoding:
        return PlainEncoding()

    def open(self, backend: Any, manifest: Any, aggregate: Any, timer: Any, *, noise: Any,
             bundles: Sequence[Any], endorsements: Any,
             released: Callable[[], None] = lambda: None) -> np.ndarray:
        released()
        return backend.get(aggregate)

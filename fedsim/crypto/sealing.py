"""Client side of encryption: a contribution sealed into one ciphertext batch.

`UpdateSealer` packs a contribution (its weighted vector, then its reserved slot
values with the weight last), multiplies everything by the run's public ``scale``,
checks that the sum of all contributions stays inside the range the context decrypts
correctly, and encrypts it under the joint public key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fedsim.crypto.cipher import Encryptor
from fedsim.crypto.context import CKKSContext
from fedsim.crypto.packing import Packer, check_range
from fedsim.errors import CryptoError


def slot_scale(context: CKKSContext, update_bound: float, *, parts: float = 1) -> float:
    """Public factor applied to every packed value (and weight) before encryption.

    Weights are at most 1/m and |delta| at most ``update_bound``, so the sum of m
    contributions stays within 0.9 / ``parts`` of the context's ``value_bound`` (parts=2
    leaves room for the aggregator's noise ciphertext). The opener divides it out; the
    larger it is, the smaller CKKS's absolute error is relative to the update.
    """
    return 0.9 * context.value_bound / (max(update_bound, 1.0) * parts)


class UpdateSealer:
    """Contribution -> packed slots -> one ciphertext batch (bytes)."""

    def __init__(self, context_bytes: bytes, public_key: bytes, *, update_bound: float,
                 scale: float, contributors: int | None = None) -> None:
        """``contributors``: the most contributions one sum holds (default the context's
        ``max_contributors``, which may be larger: sized for every hospital's
        evaluation batch)."""
        self.context = CKKSContext.from_bytes(context_bytes)
        self.contributors = contributors or self.context.max_contributors
        self.encryptor = Encryptor(self.context, public_key)
        self.update_bound = update_bound
        self.scale = scale
        self._packer: Packer | None = None

    def packer(self, num_values: int, reserved: int) -> Packer:
        p = self._packer
        if p is None or (p.num_values, p.reserved) != (num_values, reserved):
            self._packer = Packer(num_values, self.context.values_per_ciphertext,
                                  reserved=reserved)
        return self._packer

    def seal(self, vector: np.ndarray, reserved: Sequence[float], *, weight: float,
             client: str = "client") -> tuple[bytes, dict[str, float]]:
        """Encrypt ``vector`` (already weighted) and ``reserved`` (the weight last), scaled.

        ``weight`` > 0 bounds the update: ``|vector| <= update_bound * weight``, i.e. the
        unweighted delta within ``crypto.update_bound``. Noise has weight 0 and only
        the context's range check.
        """
        t0 = time.perf_counter()
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        if weight > 0 and not peak <= self.update_bound * weight * (1 + 1e-12):
            # No value in the text: it reaches the coordinator, and the value is the client's.
            raise CryptoError(
                f"client {client}: an update value exceeds crypto.update_bound "
                f"{self.update_bound:g}; raise the bound or clip updates (privacy.clip)"
            )
        s = self.scale
        packed = self.packer(vector.size, len(reserved)).pack(
            vector * s, *(float(v) * s for v in reserved))
        check_range(packed, self.contributors, self.context.value_bound)
        pack_s = time.perf_counter() - t0
        blob, times = self.encryptor.encrypt_timed(packed)
        times = dict(times)
        times["encode"] = times.get("encode", 0.0) + pack_s
        return blob, times

"""Encrypted updates end to end: sealing on a client, opening on the coordinator.

`UpdateSealer` packs a client's weighted delta with its weight in the reserved slot,
checks that the sum of all contributions stays inside the range the context
decrypts correctly, and encrypts it under the joint public key.

`AggregateOpener` builds the run's CKKS context and, each round, asks every key
holder for a partial decryption of the approved aggregate, fuses the shares and
unpacks the sum. With ``crypto.threshold`` set, a key holder that is gone is stood in
for by a survivor that recovers its key from the others' Shamir shares.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedsim.aggregator import Manifest
from fedsim.config import CryptoConfig
from fedsim.crypto import CKKSContext, Encryptor, Packer, check_range, fuse
from fedsim.crypto.cipher import learn_share_layout
from fedsim.errors import CryptoError, FedSimError, ProtocolError


def slot_scale(context: CKKSContext, update_bound: float, *, parts: int = 1) -> float:
    """Public factor applied to every packed value (and weight) before encryption.

    Weights are at most 1/m and |delta| at most ``update_bound``, so the sum of m
    contributions stays within 0.9 / ``parts`` of the context's ``value_bound`` (parts=2
    leaves room for the aggregator's noise ciphertext). The opener divides it out; the
    larger it is, the smaller CKKS's absolute error is relative to the update.
    """
    return 0.9 * context.value_bound / (max(update_bound, 1.0) * parts)


class UpdateSealer:
    """Client side: weighted delta -> packed slots -> one ciphertext batch (bytes)."""

    def __init__(self, context_bytes: bytes, public_key: bytes, *, update_bound: float,
                 scale: float) -> None:
        self.context = CKKSContext.from_bytes(context_bytes)
        self.encryptor = Encryptor(self.context, public_key)
        self.update_bound = update_bound
        self.scale = scale
        self._packer: Packer | None = None

    def packer(self, num_values: int) -> Packer:
        if self._packer is None or self._packer.num_values != num_values:
            self._packer = Packer(num_values, self.context.values_per_ciphertext)
        return self._packer

    def seal(self, delta: np.ndarray, weight: float, *, client: str = "client",
             count: bool = True) -> tuple[bytes, dict[str, float]]:
        """Encrypt ``weight * delta`` with ``weight`` in the reserved slot (both scaled).

        ``count=False`` leaves the reserved slot at zero (for noise, which is no client).
        """
        t0 = time.perf_counter()
        peak = float(np.max(np.abs(delta))) if delta.size else 0.0
        if not peak <= self.update_bound:
            raise CryptoError(
                f"client {client}: update value {peak:.4g} exceeds crypto.update_bound "
                f"{self.update_bound:g}; raise the bound or clip updates (privacy.clip)"
            )
        s = self.scale * weight
        packed = self.packer(delta.size).pack(delta * s, s if count else 0.0)
        check_range(packed, self.context.max_contributors, self.context.value_bound)
        pack_s = time.perf_counter() - t0
        blob, times = self.encryptor.encrypt_timed(packed)
        times = dict(times)
        times["encode"] = times.get("encode", 0.0) + pack_s
        return blob, times


class AggregateOpener:
    """Coordinator side of threshold decryption; holds no secret key."""

    def __init__(self, context: CKKSContext, cfg: CryptoConfig, num_params: int) -> None:
        self.context = context
        self.cfg = cfg
        self.packer = Packer(num_params, context.values_per_ciphertext)
        self.scale = 1.0  # set by the coordinator: see `slot_scale`
        self.missing: set[int] = set()
        self.recovered_by: dict[int, int] = {}
        self._share_layout = None  # learned from the first round's shares
        self._layout_checked = False

    @classmethod
    def create(cls, cfg: CryptoConfig, contributors: int, num_params: int,
               rounds: int = 1000) -> AggregateOpener:
        """Build the run's context, sized for ``contributors`` per sum and the key holders.

        Flooding noise is sized for every ciphertext the joint key will ever decrypt
        (rounds x ciphertexts per round): more decryptions need more noise per share.
        """
        probe = CKKSContext.create(cfg.profile, allow_insecure=cfg.allow_insecure,
                                   max_contributors=1, max_key_holders=2, max_decryptions=1)
        per_round = Packer(num_params, probe.values_per_ciphertext).num_ciphertexts
        context = CKKSContext.create(
            cfg.profile,
            allow_insecure=cfg.allow_insecure,
            max_contributors=contributors,
            max_key_holders=max(cfg.key_holders, 2),
            max_decryptions=max(1, rounds * per_round),
        )
        return cls(context, cfg, num_params)

    @property
    def context_bytes(self) -> bytes:
        return self.context.to_bytes()

    @property
    def num_ciphertexts(self) -> int:
        return self.packer.num_ciphertexts

    def open(self, backend: Any, manifest: Manifest, aggregate: Any
             ) -> tuple[np.ndarray, float, dict[str, float]]:
        """Threshold-decrypt ``aggregate``; returns (summed vector, summed weight, timings)."""
        t0 = time.perf_counter()
        holders = [i for i in range(self.cfg.key_holders) if i not in self.missing]
        lead = holders[0] if holders else None
        calls = {i: backend.call(f"keyholder:{i}", "partial_decrypt", manifest, aggregate,
                                 lead=(i == lead)) for i in holders}
        partials: dict[int, bytes] = {}
        for i, h in calls.items():
            try:
                partials[i] = backend.get(h)
            except FedSimError:
                raise  # a refusal or a crypto failure ends the round
            except Exception:  # the holder is gone (actor died or was stopped)
                self.missing.add(i)
        for gone in sorted(set(range(self.cfg.key_holders)) - set(partials)):
            partials[gone] = self._stand_in(backend, gone, manifest, aggregate,
                                            lead=(gone == lead), alive=sorted(partials))
        t1 = time.perf_counter()
        shares = [partials[i] for i in sorted(partials)]
        if not self._layout_checked:
            self._share_layout = learn_share_layout(self.context, shares)
            self._layout_checked = True
        try:
            packed = fuse(self.context, shares, layout=self._share_layout)
        except CryptoError:
            if self._share_layout is None:
                raise
            # A share made with a recovered key (t-of-n stand-in) serializes with other
            # metadata: fuse this round through OpenFHE objects, which check everything.
            packed = fuse(self.context, shares)
        vector, weight = self.packer.unpack(packed)
        vector /= self.scale
        weight /= self.scale
        t2 = time.perf_counter()
        return vector, weight, {"partial_decrypt": t1 - t0, "fuse": t2 - t1}

    def _stand_in(self, backend: Any, gone: int, manifest: Manifest, aggregate: Any, *,
                  lead: bool, alive: list[int]) -> bytes:
        """A survivor recovers holder ``gone``'s key from t Shamir shares and decrypts for it."""
        t = self.cfg.threshold
        if t is None:
            raise ProtocolError(
                f"keyholder-{gone} is gone and decryption is n-of-n (crypto.threshold unset); "
                "the aggregate cannot be decrypted"
            )
        if len(alive) < t:
            raise ProtocolError(
                f"only {len(alive)} key holder(s) left, threshold is {t}: cannot decrypt"
            )
        helper = self.recovered_by.get(gone)
        if helper is None or helper not in alive:
            helper = alive[0]
            shares = {j: backend.get(backend.call(f"keyholder:{j}", "share_of", gone))
                      for j in alive[:t]}
            backend.get(backend.call(f"keyholder:{helper}", "recover", gone, shares))
            self.recovered_by[gone] = helper
        try:
            return backend.get(backend.call(f"keyholder:{helper}", "partial_decrypt", manifest,
                                            aggregate, lead=lead, on_behalf_of=gone))
        except CryptoError as err:
            raise ProtocolError(f"stand-in decryption for keyholder-{gone} failed: {err}") from None

"""``he``: contributions sealed under a joint CKKS key, opened by threshold decryption.

Set-up: the run's context is built once (the secure profile's noise estimation), the
key holders chain their key shares into the joint public key (and, for t-of-n,
Shamir-share them), and every client and the aggregator receive a `SealedEncoding`:
context, public key and the public slot scale. Each round the aggregator adds
ciphertext batches as they arrive (`fedsim.crypto.summation_for`); to open the sum the
coordinator asks every key holder for a partial decryption (each checks the manifest
against its own policy first), stands in for a lost holder with a survivor in t-of-n,
and fuses the shares (`fedsim.crypto.Opener`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

import numpy as np

from fedsim.aggregate.steps import Update
from fedsim.errors import CryptoError, FedSimError, ProtocolError
from fedsim.protocol.backend import Backend, PartySpec
from fedsim.protocol.manifest import Manifest
from fedsim.protocol.records import PhaseTimer
from fedsim.protocol.schemes import Encoder, Encoding, RoundSum, Scheme, Summation


def holder_role(i: int) -> str:
    return f"keyholder:{i}"


@final
class SealedEncoder(Encoder):
    """Seals ``[vector, slots..., weight]`` with `fedsim.crypto.UpdateSealer`."""

    def __init__(self, encoding: SealedEncoding, slots: Sequence[str]) -> None:
        from fedsim.crypto.sealing import UpdateSealer

        self.slots = tuple(slots)
        self._sealer = UpdateSealer(encoding.context_bytes, encoding.public_key,
                                    update_bound=encoding.update_bound, scale=encoding.scale)

    def encode(self, update: Update, *, client: str) -> tuple[bytes, dict[str, float]]:
        reserved = [update.slots.get(name, 0.0) for name in self.slots] + [update.weight]
        return self._sealer.seal(update.vector, reserved, weight=update.weight, client=client)


@final
class CipherSum(RoundSum):
    """One round's `fedsim.crypto.CiphertextSum`; DP noise is one more batch."""

    def __init__(self, total: Any) -> None:
        self._total = total

    def add(self, payload: Any, contributor: str) -> str:
        if not isinstance(payload, bytes):
            raise CryptoError(f"client {contributor}: expected ciphertext bytes in he mode")
        return self._total.add(payload, contributor=contributor)

    def add_noise(self, payload: Any) -> None:
        self._total.add(payload, contributor="aggregator-noise")

    def result(self) -> bytes:
        return self._total.result()


@final
class CipherSummation(Summation):
    """Learns once how to sum ciphertexts under this run's key (in the bytes if it can)."""

    def __init__(self, encoding: SealedEncoding) -> None:
        from fedsim.crypto import CKKSContext, summation_for

        self._new = summation_for(CKKSContext.from_bytes(encoding.context_bytes),
                                  encoding.public_key)

    def start(self) -> CipherSum:
        return CipherSum(self._new())


@final
@dataclass(frozen=True)
class SealedEncoding(Encoding):
    """The run's context, joint public key and public scale (no secret in here)."""

    context_bytes: bytes
    public_key: bytes
    update_bound: float
    scale: float

    def encoder(self, slots: Sequence[str]) -> SealedEncoder:
        return SealedEncoder(self, slots)

    def summation(self) -> CipherSummation:
        return CipherSummation(self)


@final
class ThresholdCKKS(Scheme):
    """Coordinator side: context, key ceremony and threshold opening; holds no secret key."""

    def __init__(self, cfg: Any, context: Any, num_params: int, slots: Sequence[str]) -> None:
        from fedsim.crypto import Opener

        self.crypto = cfg.crypto
        self.context = context
        self.opener = Opener(context, num_params, reserved=len(slots) + 1)
        self.scale = 1.0  # set by `setup`: see `fedsim.crypto.slot_scale`
        self.missing: set[int] = set()
        self.recovered_by: dict[int, int] = {}

    @classmethod
    def create(cls, cfg: Any, *, num_params: int, slots: Sequence[str]) -> ThresholdCKKS:
        """Build the run's context, sized for the round's contributors and key holders.

        Flooding noise is sized for every ciphertext the joint key will ever decrypt
        (rounds x ciphertexts per round): more decryptions need more noise per share.
        """
        from fedsim.crypto import CKKSContext, Packer

        c, fed = cfg.crypto, cfg.federation
        probe = CKKSContext.create(c.profile, allow_insecure=c.allow_insecure,
                                   max_contributors=1, max_key_holders=2, max_decryptions=1)
        per_round = Packer(num_params, probe.values_per_ciphertext,
                           reserved=len(slots) + 1).num_ciphertexts
        context = CKKSContext.create(
            c.profile, allow_insecure=c.allow_insecure,
            max_contributors=fed.clients_per_round, max_key_holders=max(c.key_holders, 2),
            max_decryptions=max(1, fed.rounds * per_round),
        )
        return cls(cfg, context, num_params, slots)

    @property
    def num_ciphertexts(self) -> int:
        return self.opener.num_ciphertexts

    def parties(self, cfg: Any, run_id: str) -> list[PartySpec]:
        from fedsim.protocol.keyholder import KeyHolder

        blob = self.context.to_bytes()
        return [PartySpec(holder_role(i), KeyHolder, (run_id, blob),
                          {"index": i, "num_holders": self.crypto.key_holders,
                           "threshold": self.crypto.threshold,
                           "min_clients": cfg.federation.min_clients},
                          resources=cfg.resources.keyholder, kind="keyholder")
                for i in range(self.crypto.key_holders)]

    def setup(self, backend: Backend, *, update_bound: float, noise_parts: int
              ) -> SealedEncoding:
        """The key ceremony; returns what clients and the aggregator encode with."""
        from fedsim.crypto import slot_scale

        public_key = self._key_ceremony(backend)
        self.scale = slot_scale(self.context, update_bound, parts=noise_parts)
        return SealedEncoding(self.context.to_bytes(), public_key, update_bound, self.scale)

    def _key_ceremony(self, backend: Backend) -> bytes:
        key = None
        holders = self.crypto.key_holders
        for i in range(holders):
            key = backend.get(backend.call(holder_role(i), "keygen", key))
        if self.crypto.threshold is not None:
            for i in range(holders):
                shares = backend.get(backend.call(holder_role(i), "shamir_shares"))
                for j, share in shares.items():
                    backend.get(backend.call(holder_role(j), "receive_share", i, share))
        return key

    def open(self, backend: Backend, manifest: Manifest, aggregate: Any,
             timer: PhaseTimer) -> np.ndarray:
        """Every key holder's partial decryption of the approved aggregate, fused.

        A refusal or a crypto failure ends the round; a holder that is gone is stood in
        for (t-of-n) or ends the round (n-of-n).
        """
        with timer.phase("partial_decrypt"):
            holders = [i for i in range(self.crypto.key_holders) if i not in self.missing]
            lead = holders[0] if holders else None
            calls = {i: backend.call(holder_role(i), "partial_decrypt", manifest, aggregate,
                                     lead=(i == lead)) for i in holders}
            partials: dict[int, bytes] = {}
            for i, h in calls.items():
                try:
                    partials[i] = backend.get(h)
                except FedSimError:
                    raise
                except Exception:  # the holder is gone (actor died or was stopped)
                    self.missing.add(i)
            for gone in sorted(set(range(self.crypto.key_holders)) - set(partials)):
                partials[gone] = self._stand_in(backend, gone, manifest, aggregate,
                                                lead=(gone == lead), alive=sorted(partials))
        flat, seconds = self.opener.open([partials[i] for i in sorted(partials)],
                                         scale=self.scale)
        timer.add("fuse", seconds)
        return flat

    def _stand_in(self, backend: Backend, gone: int, manifest: Manifest, aggregate: Any, *,
                  lead: bool, alive: list[int]) -> bytes:
        """A survivor recovers holder ``gone``'s key from t Shamir shares and decrypts for it."""
        t = self.crypto.threshold
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
            shares = {j: backend.get(backend.call(holder_role(j), "share_of", gone))
                      for j in alive[:t]}
            backend.get(backend.call(holder_role(helper), "recover", gone, shares))
            self.recovered_by[gone] = helper
        try:
            return backend.get(backend.call(holder_role(helper), "partial_decrypt", manifest,
                                            aggregate, lead=lead, on_behalf_of=gone))
        except CryptoError as err:
            raise ProtocolError(f"stand-in decryption for keyholder-{gone} failed: {err}") from None

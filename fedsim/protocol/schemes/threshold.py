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

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

import numpy as np

from fedsim.aggregate.steps import Update
from fedsim.crypto.batch import is_blob
from fedsim.errors import (
    CryptoError,
    FedSimError,
    NoReceipt,
    PartyLost,
    ProtocolError,
    ReceiptConflict,
    Refusal,
)
from fedsim.protocol.backend import Backend, PartySpec
from fedsim.protocol.evaluation import EvaluationPlan
from fedsim.protocol.manifest import Manifest
from fedsim.protocol.records import PhaseTimer
from fedsim.protocol.schemes import AGGREGATOR, Encoder, Encoding, RoundSum, Scheme, Summation


def holder_role(i: int) -> str:
    return f"keyholder:{i}"


@final
class SealedEncoder(Encoder):
    """Seals ``[vector, slots..., weight]`` with `fedsim.crypto.UpdateSealer`."""

    signs = True

    def __init__(self, encoding: SealedEncoding, slots: Sequence[str]) -> None:
        from fedsim.crypto.sealing import UpdateSealer

        self.slots = tuple(slots)
        self._sealer = UpdateSealer(encoding.context_bytes, encoding.public_key,
                                    update_bound=encoding.update_bound, scale=encoding.scale,
                                    contributors=encoding.round_cap)

    def encode(self, update: Update, *, client: str) -> tuple[bytes, dict[str, float]]:
        reserved = [update.slots.get(name, 0.0) for name in self.slots] + [update.weight]
        return self._sealer.seal(update.vector, reserved, weight=update.weight, client=client)

    @property
    def context(self) -> Any:
        return self._sealer.context

    def seal_values(self, values: np.ndarray, *, contributors: int) -> bytes:
        """Encrypt slot values as they are (no scale: an evaluation's codec sized them
        so that the sum of ``contributors`` of them decrypts correctly)."""
        from fedsim.crypto import Packer
        from fedsim.crypto.packing import check_range

        packer = Packer(values.size - 1, self.context.values_per_ciphertext, reserved=1)
        packed = packer.pack(values[:-1], float(values[-1]))
        check_range(packed, contributors, self.context.value_bound)
        return self._sealer.encryptor.encrypt_timed(packed)[0]


@final
class CipherSum(RoundSum):
    """One round's `fedsim.crypto.CiphertextSum`; DP noise is one more batch."""

    def __init__(self, total: Any) -> None:
        self._total = total

    def add(self, payload: Any, contributor: str) -> str:
        if not is_blob(payload):
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

    mode = "he"  # not a field: the class says which mode it belongs to
    context_bytes: bytes
    public_key: bytes
    update_bound: float
    scale: float
    round_cap: int | None = None  # most contributions of a round's sum (None: context's)

    def encoder(self, slots: Sequence[str]) -> SealedEncoder:
        return SealedEncoder(self, slots)

    def summation(self) -> CipherSummation:
        return CipherSummation(self)


@final
class ThresholdCKKS(Scheme):
    """Coordinator side: context, set-up relay and threshold opening; holds no secret key,
    no Shamir share and no client's signing key, and decides nothing a key holder takes
    on trust (each checks the batches it decrypts itself)."""

    endorsed = True

    def __init__(self, cfg: Any, context: Any, num_params: int, slots: Sequence[str],
                 evaluation: EvaluationPlan | None = None,
                 round_cap: int | None = None) -> None:
        from fedsim.crypto import Opener

        self.crypto = cfg.crypto
        self.context = context
        self.num_values = num_params + len(slots) + 1
        self.opener = Opener(context, num_params, reserved=len(slots) + 1)
        self.evaluation = evaluation
        self.round_cap = context.max_contributors if round_cap is None else round_cap
        # An evaluation sum: its values, the last one in the "reserved" slot, unscaled.
        self.eval_opener = None if evaluation is None else \
            Opener(context, evaluation.num_values(context) - 1, reserved=1)
        self.scale = 1.0  # set by `setup`: see `fedsim.crypto.slot_scale`
        self.cards: dict[int, Any] = {}  # the holders' public identities, from set-up
        self.missing: set[int] = set()
        self.share_bytes: dict[int, int] = {}  # the last round's partial decryptions

    @classmethod
    def create(cls, cfg: Any, *, num_params: int, slots: Sequence[str],
               max_contributors: int, evaluation: EvaluationPlan | None = None
               ) -> ThresholdCKKS:
        """Build the run's context, sized for the round's contributors and key holders.

        Flooding noise is sized for every ciphertext the joint key will ever decrypt
        (rounds x ciphertexts per round, and the evaluations' ciphertexts): more
        decryptions need more noise per share. An evaluation's size depends on that
        noise (its count codec), so the budget is found as a fixed point (contexts are
        cheap to make; it takes two or three).
        """
        from fedsim.crypto import CKKSContext, Packer
        from fedsim.protocol.policy import run_budget

        c, fed = cfg.crypto, cfg.federation
        round_cap = max_contributors
        if evaluation is not None:  # every hospital is in an evaluation sum
            max_contributors = max(max_contributors, evaluation.contributors)

        def make(decryptions: int) -> Any:
            return CKKSContext.create(
                c.profile, allow_insecure=c.allow_insecure,
                max_contributors=max_contributors, max_key_holders=max(c.key_holders, 2),
                max_decryptions=decryptions, statistical_security=c.statistical_security)

        context = make(1)
        per_round = Packer(num_params, context.values_per_ciphertext,
                           reserved=len(slots) + 1).num_ciphertexts
        for _ in range(8):
            needed = run_budget(fed.rounds, per_round, c.key_holders, c.threshold,
                                evaluation, context)
            if context.max_decryptions >= needed:
                return cls(cfg, context, num_params, slots, evaluation, round_cap)
            context = make(needed)
        raise CryptoError(f"no decryption budget found for {evaluation}")  # not reached

    @property
    def num_ciphertexts(self) -> int:
        return self.opener.num_ciphertexts

    @property
    def lost(self) -> tuple[str, ...]:
        """Key holders lost so far (t-of-n goes on without them)."""
        return tuple(f"keyholder-{i}" for i in sorted(self.missing))

    def caveats(self) -> list[str]:
        if self.context.flooding:
            return []
        return [f"crypto.profile {self.context.profile!r} does not flood decryption shares: "
                "decrypted sums may leak key material (Li and Micciancio 2021); this run is "
                "not provably secure"]

    def parties(self, cfg: Any, run_id: str, *, noise_batches: int) -> list[PartySpec]:
        """The key holders, each with its own policy from the run config."""
        from fedsim.protocol.keyholder import KeyHolder
        from fedsim.protocol.policy import HolderPolicy

        policy = HolderPolicy.from_config(cfg, run_id=run_id, num_values=self.num_values,
                                          noise_batches=noise_batches,
                                          max_contributors=self.round_cap,
                                          evaluation=self.evaluation)
        blob = self.context.to_bytes()
        return [PartySpec(holder_role(i), KeyHolder, (policy, blob), {"index": i},
                          resources=cfg.resources.keyholder, kind="keyholder")
                for i in range(self.crypto.key_holders)]

    def setup(self, backend: Backend, training: Sequence[str], *, update_bound: float,
              noise_parts: float) -> SealedEncoding:
        """Roster, key ceremony and (t-of-n) sealed share exchange; returns what clients
        and the aggregator encode with.

        The coordinator relays: the holders' public cards, the clients' and the
        aggregator's public signing keys to every holder (set-up is assumed to run as
        agreed, as a consortium's PKI would make it), the chained public key, and Shamir
        shares sealed for their receivers (it cannot open them).
        """
        from fedsim.crypto import slot_scale

        n = self.crypto.key_holders
        cards = dict(enumerate(backend.get([backend.call(holder_role(i), "card")
                                            for i in range(n)])))
        self.cards = cards
        clients: dict[str, bytes] = {}
        for found in backend.get([backend.call(role, "identities") for role in training]):
            clients.update(found)
        aggregator = backend.get(backend.call(AGGREGATOR, "identity"))
        backend.get([backend.call(holder_role(i), "register", clients, cards, aggregator)
                     for i in range(n)])
        key = None
        for i in range(n):
            key = backend.get(backend.call(holder_role(i), "keygen", key))
        if self.crypto.threshold is not None:
            for i in range(n):
                sealed = backend.get(backend.call(holder_role(i), "sealed_shares"))
                backend.get([backend.call(holder_role(j), "receive_sealed", i, blob)
                             for j, blob in sealed.items()])
        backend.get([backend.call(holder_role(i), "use_public_key", key) for i in range(n)])
        self.scale = slot_scale(self.context, update_bound, parts=noise_parts)
        return SealedEncoding(self.context.to_bytes(), key, update_bound, self.scale,
                              self.round_cap)

    def open(self, backend: Backend, manifest: Manifest, aggregate: Any, timer: PhaseTimer,
             *, noise: Any, bundles: Sequence[Any], endorsements: Mapping[str, bytes],
             released: Callable[[], None] = lambda: None) -> np.ndarray:
        """Partial decryptions of the round's sum by every key holder (n-of-n) or the
        first ``threshold`` live ones (t-of-n), fused.

        Each holder re-adds the signed batches itself and decrypts its own sum. A refusal
        or a crypto failure ends the round; a holder that is gone ends it in n-of-n, and
        in t-of-n the survivors decrypt again as a new set (its Lagrange weights differ).
        """
        t0 = time.perf_counter()
        partials, checked = self._partials(backend, manifest, noise, bundles, endorsements)
        # The holders check in parallel: the slowest one's checks are on the critical path.
        verify = max(checked.values())
        timer.add("verify", verify)
        timer.add("partial_decrypt", time.perf_counter() - t0 - verify)
        self.share_bytes = {i: len(p) for i, p in partials.items()}
        released()
        flat, seconds = self.opener.open([partials[i] for i in sorted(partials)],
                                         scale=self.scale)
        timer.add("fuse", seconds)
        return flat

    def open_evaluation(self, backend: Backend, manifest: Manifest, timer: PhaseTimer, *,
                        bundles: Sequence[Any], endorsements: Mapping[str, bytes]
                        ) -> np.ndarray:
        """An evaluation sum's slot values (`fedsim.protocol.evaluation`), opened as a
        round's: every holder checks and re-adds the signed batches itself."""
        if self.eval_opener is None:
            raise ProtocolError("this run has no federated evaluation")
        t0 = time.perf_counter()
        partials, checked = self._partials(backend, manifest, None, bundles, endorsements)
        verify = max(checked.values())
        timer.add("verify", verify)
        timer.add("partial_decrypt", time.perf_counter() - t0 - verify)
        flat, seconds = self.eval_opener.open([partials[i] for i in sorted(partials)],
                                              scale=1.0)
        timer.add("fuse", seconds)
        return flat

    def receipts(self, backend: Backend, run_id: str, round_idx: int, expected: bytes
                 ) -> dict[str, Any]:
        """The live key holders' signatures of the model every hospital evaluated after
        ``round_idx`` (`KeyHolder.receipt`), with their set-up identities: what
        ``fedsim verify`` checks a deployed model against. ``expected`` is the bound
        digest of the model the coordinator deploys (`EvaluationPlan.bind`): a holder
        naming another model, or whose signature does not verify under its set-up
        identity, is named in a `ReceiptConflict`, never outvoted or dropped quietly."""
        from fedsim.crypto.identity import deployment_statement, verify

        signed: dict[str, Any] = {}
        odd: list[int] = []
        statement = deployment_statement(run_id, round_idx, expected)
        for i in range(self.crypto.key_holders):
            if i in self.missing:
                continue
            try:
                said = backend.get(backend.call(holder_role(i), "receipt", round_idx))
            except (PartyLost, Refusal):  # gone, or not among the holders that opened it
                continue
            model, signature = said if isinstance(said, tuple) and len(said) == 2 \
                else (None, None)
            identity = self.cards[i].identity
            if not (isinstance(model, bytes) and isinstance(signature, bytes)
                    and model == expected and verify(identity, signature, statement)):
                odd.append(i)
                continue
            signed[str(i)] = {"identity": identity.hex(), "signature": signature.hex()}
        if odd:  # a holder attests another model: never deployed quietly
            raise ReceiptConflict(
                f"the key holders' receipts of round {round_idx}: {len(odd)} of "
                f"{len(odd) + len(signed)} do not attest the deployed model",
                party=", ".join(map(holder_role, odd)), round=round_idx)
        needed = self.crypto.threshold or self.crypto.key_holders
        if len(signed) < needed:  # holders lost or restarted since: verify could not pass
            raise NoReceipt(f"only {len(signed)} live key holder(s) that opened round "
                            f"{round_idx}'s evaluation attest it; {needed} needed")
        return {"round": round_idx, "model": expected.hex(), "holders": signed,
                "needed": needed}

    def _partials(self, backend: Backend, manifest: Manifest, noise: Any,
                  bundles: Sequence[Any], endorsements: Mapping[str, bytes]
                  ) -> tuple[dict[int, bytes], dict[int, float]]:
        from fedsim.protocol.keyholder import DecryptionRequest

        n, t = self.crypto.key_holders, self.crypto.threshold
        # Bundles travel as deferred handles: each holder fetches one at a time.
        deferred = [backend.defer(h) for h in bundles]
        while True:
            alive = [i for i in range(n) if i not in self.missing]
            if t is None and len(alive) < n:
                gone = min(self.missing)
                raise PartyLost(holder_role(gone),
                    f"keyholder-{gone} is gone and decryption is n-of-n (crypto.threshold "
                    "unset); the aggregate cannot be decrypted")
            if t is not None and len(alive) < t:
                raise ProtocolError(
                    f"only {len(alive)} key holder(s) left, threshold is {t}: cannot decrypt")
            chosen = tuple(alive if t is None else alive[:t])
            calls = {i: backend.call(holder_role(i), "partial_decrypt",
                                     DecryptionRequest(manifest, chosen, i == chosen[0],
                                                       dict(endorsements)),
                                     noise, deferred)
                     for i in chosen}
            partials: dict[int, bytes] = {}
            checked: dict[int, float] = {}
            for i, h in calls.items():
                try:
                    partials[i], checked[i] = backend.get(h)
                except PartyLost:  # the holder is gone (actor died or was stopped)
                    self.missing.add(i)
                except FedSimError:
                    raise  # a refusal or a crypto failure ends the round
            if len(partials) == len(chosen):
                return partials, checked

"""A key holder: one secret-key share, and the checks it makes before using it.

The share lives inside `fedsim.crypto.KeyShareHolder` and never leaves it. The holder
follows its own `HolderPolicy` (from the run config it was started with), never the
coordinator's word:

* set-up: it refuses a context outside its policy (profile, insecure rings, flooding
  too small by its own noise estimate, a decryption budget too small); it generates an
  identity (Ed25519) and a channel (X25519) key; in t-of-n it seals each Shamir share
  for its receiver, so whoever relays them sees only ciphertexts.
* every decryption: it is handed the clients' signed batches themselves (as object
  references), the aggregator's signed noise batch and each contributor's endorsement
  of the round's sum, and checks that every batch signature is a registered client's
  over (run, round, client, batch digest, model digest, noise commitment), that every
  batch was trained from the same model and round parameters, that the noise batch is
  signed by the registered aggregator for this run and round and is the one the
  clients saw committed, that every contributor endorsed exactly these batches (a
  client endorses one sum per round, so no two different sums of a round can be
  decrypted, not even by two disjoint sets of holders in t-of-n), that the
  contributors are distinct, at least ``min_clients`` and at most the run's
  clients per round, that the round is one of the run's and newer than every round it
  decrypted (t-of-n may ask again with other holders, for the same sum only), that the
  holders named to decrypt are a valid set that includes it, and that its decryption
  budget tau allows it. It then adds the ciphertexts itself (in their bytes) and
  decrypts only its own sum, after checking that the aggregator's sum is the same bytes.

Other sums (``Manifest.kind``: an evaluation, `fedsim.protocol.evaluation`, or a query's
scores, `fedsim.protocol.prediction`) are checked the same way, only when the policy
plans them, with statements signed for their kind and this policy's plan, replay guards
per kind, no DP-noise batch, and every registered client in them (never a subset).
A refusal raises `ProtocolError` naming the holder and the reason (kept in `refusals`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from fedsim.crypto.batch import is_blob
from fedsim.crypto.identity import (
    ChannelKey,
    SigningKey,
    deployment_statement,
    digest,
    endorsement,
    noise_statement,
    statement,
    sum_digest,
    verify,
)
from fedsim.crypto.memory import release_memory
from fedsim.errors import CryptoError, Refusal
from fedsim.protocol.backend import Deferred
from fedsim.protocol.evaluation import plan_digest
from fedsim.protocol.manifest import Manifest
from fedsim.protocol.policy import HolderPolicy
from fedsim.protocol.schemes import Bundle, NoiseBatch


@dataclass(frozen=True)
class HolderCard:
    """A key holder's public identity: index, Ed25519 key, X25519 key signed by it."""

    index: int
    identity: bytes
    channel: bytes
    signature: bytes


@dataclass(frozen=True)
class DecryptionRequest:
    """What the coordinator asks of a key holder for one aggregate: the manifest, the
    holders that decrypt it together (sorted), whether this one leads, and each
    contributor's endorsement of the round's sum."""

    manifest: Manifest
    participants: tuple[int, ...]
    lead: bool
    endorsements: Mapping[str, bytes]


class KeyHolder:
    """Policy, checks and channels around one `KeyShareHolder`; the plain class behind
    a Ray actor."""

    def __init__(self, policy: HolderPolicy, context_bytes: bytes, *, index: int) -> None:
        from fedsim.crypto import CKKSContext, KeyShareHolder, summation_for

        self.policy = policy
        self.index = index
        self.refusals: list[str] = []
        try:
            context = CKKSContext.from_bytes(context_bytes)
            policy.check_context(context)
        except CryptoError as err:
            raise self._refuse(f"the run's context: {err}") from None
        self._context = context
        self._share = KeyShareHolder(context_bytes, index, policy.num_holders, policy.threshold)
        self._summation_for = summation_for
        self._new_sum: Any = None  # learned once the joint public key is known
        self._signing = SigningKey()
        self._channel = ChannelKey()
        self._clients: dict[str, bytes] = {}
        self._aggregator = b""
        self._holders: dict[int, HolderCard] = {}
        # (kind, round) -> digest of the one sum of that kind and round decrypted
        self._decrypted: dict[tuple[str, int], str] = {}
        self._attempts: set[tuple[str, int, tuple[int, ...]]] = set()
        self._opened: dict[tuple[str, int], bytes] = {}  # -> the model its batches signed
        self._model = b""
        self._used = 0  # ciphertexts partially decrypted so far (against tau)
        self._budget = policy.budget(context)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a KeyHolder holds a secret-key share and must never be pickled")

    def _refuse(self, problem: str) -> Refusal:
        message = f"keyholder-{self.index} refuses {problem}"
        self.refusals.append(message)
        return Refusal(message, party=f"keyholder-{self.index}")

    # ---- set-up ---------------------------------------------------------------------
    def card(self) -> HolderCard:
        """This holder's public identity, for the other holders."""
        return HolderCard(self.index, self._signing.public, self._channel.public,
                          self._signing.sign(self._channel.public))

    def register(self, clients: Mapping[str, bytes], holders: Mapping[int, HolderCard],
                 aggregator: bytes) -> None:
        """The run's roster (once): each client's and the aggregator's signing key, each
        holder's card."""
        if self._clients or self._holders:
            raise self._refuse("a second roster: the run's roster is fixed at set-up")
        if len(clients) < self.policy.min_clients:
            raise self._refuse(f"a roster of {len(clients)} client(s): fewer than "
                               f"min_clients {self.policy.min_clients}")
        if sorted(holders) != list(range(self.policy.num_holders)) or \
                holders[self.index] != self.card():
            raise self._refuse("a holder roster without exactly this run's holders, "
                               "this one's own card unchanged")
        for card in holders.values():
            if not verify(card.identity, card.signature, card.channel):
                raise self._refuse(f"holder {card.index}'s card: its channel key is not "
                                   "signed by its identity key")
        self._clients = dict(clients)
        self._holders = dict(holders)
        self._aggregator = bytes(aggregator)

    def keygen(self, previous_public_key: bytes | None) -> bytes:
        """Generate this holder's share; returns the public key chained so far."""
        return self._share.keygen(previous_public_key)

    def use_public_key(self, public_key: bytes) -> None:
        """The joint public key (once): how this holder adds the ciphertexts it checks."""
        if self._new_sum is not None:
            raise self._refuse("a second joint public key: the run's key is fixed at set-up")
        self._new_sum = self._summation_for(self._context, public_key)

    def sealed_shares(self) -> dict[int, bytes]:
        """This holder's Shamir shares, each sealed for the holder it is meant for."""
        self._need_roster()
        return {j: self._channel.seal_for(self._holders[j].channel, share,
                                          run_id=self.policy.run_id,
                                          sender=f"keyholder-{self.index}",
                                          receiver=f"keyholder-{j}")
                for j, share in self._share.outgoing_shares().items()}

    def receive_sealed(self, owner: int, sealed: bytes) -> None:
        """Open and keep holder ``owner``'s share sealed for this holder."""
        self._need_roster()
        share = self._channel.open_from(self._holders[owner].channel, sealed,
                                        run_id=self.policy.run_id,
                                        sender=f"keyholder-{owner}",
                                        receiver=f"keyholder-{self.index}")
        self._share.receive_share(owner, share)

    def _need_roster(self) -> None:
        if not self._holders:
            raise self._refuse("to share keys before the roster is registered")

    # ---- decryption -----------------------------------------------------------------
    def partial_decrypt(self, request: DecryptionRequest, noise: NoiseBatch | None,
                        bundles: Sequence[Bundle | Deferred]) -> tuple[bytes, float]:
        """This holder's partial decryption of the sum it re-adds from the signed batches,
        and the seconds its checks took (verifying signatures, re-adding).

        ``bundles``: every training party's bundle, or a deferred handle of it, fetched
        one at a time and dropped once added (a holder never holds every client's batch
        at once)."""
        t0 = time.perf_counter()
        try:
            total, count = self.check(request, noise, bundles)
        except Refusal as refusal:
            refusal.round = request.manifest.round
            raise
        checked_s = time.perf_counter() - t0
        m = request.manifest
        self._decrypted[(m.kind, m.round)] = m.aggregate_digest
        self._opened[(m.kind, m.round)] = self._model  # what every batch was made from
        self._attempts.add((m.kind, m.round, request.participants))
        self._used += count
        share = self._share.partial_decrypt(total.items(), lead=request.lead,
                                            participants=request.participants)
        handled = total.nbytes * (1 + len(request.manifest.contributors))
        del total
        release_memory(handled)  # idle between rounds, a holder should not sit on its peak
        return share, checked_s

    def receipt(self, round_idx: int) -> tuple[bytes, bytes]:
        """The model (bound to its plan) that every registered hospital signed its
        evaluation batch of ``round_idx`` with, and this holder's signature of it
        (`fedsim.crypto.identity.deployment_statement`; checked by ``fedsim verify``):
        only for an evaluation this holder opened itself."""
        model = self._opened.get(("evaluate", round_idx))
        if model is None:
            raise self._refuse(f"a deployment receipt of round {round_idx}: it opened no "
                               "evaluation of that round")
        return model, self._signing.sign(
            deployment_statement(self.policy.run_id, round_idx, model))

    def check(self, request: DecryptionRequest, noise: NoiseBatch | None,
              bundles: Sequence[Bundle | Deferred]) -> tuple[Any, int]:
        """The checked sum (a `fedsim.crypto.CiphertextSum`) and its ciphertext count;
        raises `ProtocolError` (recorded)."""
        m = request.manifest
        if m.run_id != self.policy.run_id:
            raise self._refuse(f"an aggregate of run {m.run_id!r}, not "
                               f"{self.policy.run_id!r}")
        plan = self.policy.evaluation
        if m.kind != "train" and (plan is None or m.kind != plan.kind):
            raise self._refuse(f"a sum of kind {m.kind!r}: not one this run decrypts")
        if not 0 <= m.round < self.policy.rounds:
            raise self._refuse(f"round {m.round}: the run has rounds 0..{self.policy.rounds - 1}")
        self._check_participants(m.round, request.participants)
        if (m.kind, m.round, request.participants) in self._attempts:
            raise self._refuse(f"round {m.round} again: already decrypted by these holders")
        if self._decrypted.get((m.kind, m.round), m.aggregate_digest) != m.aggregate_digest:
            # Another sum of the same round (another subset of its clients) would let
            # differences of decrypted sums isolate one client.
            raise self._refuse(f"round {m.round} as another sum than the one it decrypted")
        newest = max((r for k, r in self._decrypted if k == m.kind), default=-1)
        if m.round < newest:
            raise self._refuse(f"round {m.round}: older than round {newest}")
        if m.kind == "train" and plan is not None and not plan.with_training:
            raise self._refuse(f"round {m.round}: a training sum under a key made for "
                               f"{plan.purpose}")
        commitment = self._signed_noise(m, noise)
        if m.kind != "train":  # what the batches must have been made by: this policy's plan
            commitment = plan_digest(plan)
        self._check_contributors(m)
        if self._new_sum is None:
            raise self._refuse("to decrypt before the joint public key is known")
        total_sum = self._new_sum()
        digests = self._add_signed(m, bundles, commitment, total_sum)
        self._check_endorsements(m, digests, request.endorsements, commitment)
        try:
            if noise is not None:
                total_sum.add(noise.payload, contributor="aggregator-noise",
                              authenticate=self._committed(m, commitment))
            # The digest of the sum's bytes, a block at a time (never serialized whole).
            summed = total_sum.digest()
        except CryptoError as err:
            raise self._refuse(f"round {m.round}: {err}") from None
        if summed != m.aggregate_digest:
            raise self._refuse(f"round {m.round}: the aggregator's sum is not the sum of the "
                               "signed batches")
        count = total_sum.num_ciphertexts
        if self._used + count > self._budget:
            raise self._refuse(
                f"round {m.round}: its {count} ciphertexts would pass this holder's "
                f"decryption budget tau = {self._budget} (used {self._used})")
        return total_sum, count

    def _check_participants(self, round_idx: int, participants: tuple[int, ...]) -> None:
        n, t = self.policy.num_holders, self.policy.threshold
        size = n if t is None else t
        if not (isinstance(participants, tuple) and len(participants) == size
                and list(participants) == sorted(set(participants))
                and all(isinstance(i, int) and 0 <= i < n for i in participants)
                and self.index in participants):
            raise self._refuse(f"round {round_idx}: decrypting with holders {participants!r}: "
                               f"not {size} distinct holders of 0..{n - 1} in order, "
                               "this one among them")

    def _signed_noise(self, m: Manifest, noise: NoiseBatch | None) -> bytes:
        """The noise commitment, once the noise batch is checked as the aggregator's."""
        wanted = self.policy.noise_batches if m.kind == "train" else 0
        if (noise is not None) != bool(wanted):
            raise self._refuse(f"round {m.round}: {'no' if wanted else 'a'} DP-noise batch "
                               f"where the run {'has' if wanted else 'has none'}")
        if noise is None:
            return b""
        if not isinstance(noise, NoiseBatch) or not is_blob(noise.payload):
            raise self._refuse(f"round {m.round}: a DP-noise batch that is not ciphertexts")
        commitment = digest(noise.payload)  # checked again on the private copy it adds
        if not verify(self._aggregator, noise.signature,
                      noise_statement(self.policy.run_id, m.round, commitment)):
            raise self._refuse(f"round {m.round}: a DP-noise batch not signed by the "
                               "aggregator for this run and round")
        return commitment

    def _committed(self, m: Manifest, commitment: bytes) -> Any:
        """A check that the noise batch added is the one committed to and signed."""
        def check(batch_digest: str) -> None:
            if bytes.fromhex(batch_digest) != commitment:
                raise self._refuse(f"round {m.round}: the DP-noise batch changed after it "
                                   "was checked")
        return check

    def _check_endorsements(self, m: Manifest, digests: Mapping[str, str],
                            endorsements: Mapping[str, bytes], commitment: bytes) -> None:
        summed = sum_digest(digests)
        for client in m.contributors:
            said = endorsement(self.policy.run_id, m.round, client, summed, commitment,
                               kind=m.kind)
            if not verify(self._clients[client], endorsements.get(client, b""), said):
                raise self._refuse(f"round {m.round}: {client} did not endorse this sum "
                                   "(these batches and this noise)")

    def _check_contributors(self, m: Manifest) -> None:
        contributors = list(m.contributors)
        if len(set(contributors)) != len(contributors):
            raise self._refuse(f"round {m.round}: the manifest lists a contributor twice")
        if m.kind != "train" and sorted(contributors) != sorted(self._clients):
            # Two evaluations of different hospitals would differ by one hospital's
            # histograms (the models of nearby rounds score alike): all or none.
            raise self._refuse(f"round {m.round}: an {m.kind} sum of "
                               f"{len(contributors)} of the {len(self._clients)} registered "
                               "clients; it must hold every one")
        if len(contributors) < self.policy.min_clients:
            raise self._refuse(f"round {m.round}: {len(contributors)} contributor(s); at least "
                               f"{self.policy.min_clients} required")
        cap = min(self.policy.max_contributors if m.kind == "train" else
                  self.policy.most_summed, self._context.max_contributors)
        if len(contributors) > cap:
            raise self._refuse(f"round {m.round}: {len(contributors)} contributors, more than "
                               f"the run's {cap} per round")
        unknown = [c for c in contributors if c not in self._clients]
        if unknown:
            raise self._refuse(f"round {m.round}: {unknown[0]} is not a registered client")

    def _add_signed(self, m: Manifest, bundles: Sequence[Bundle | Deferred],
                    commitment: bytes, total_sum: Any) -> dict[str, str]:
        """Add every contributor's batch to ``total_sum`` once its signature is checked,
        one bundle at a time; returns each contributor's batch digest (hex)."""
        wanted = set(m.contributors)
        digests: dict[str, str] = {}
        seen: set[str] = set()
        models: set[bytes] = set()
        for item in bundles:
            bundle = item if isinstance(item, Bundle) else item.get()
            if not isinstance(bundle, Bundle) or \
                    len(bundle.signatures) != len(bundle.payloads):
                raise self._refuse(f"round {m.round}: a bundle with unsigned batches")
            for group, payload, signature in zip(bundle.groups, bundle.payloads,
                                                 bundle.signatures, strict=True):
                if len(group) != 1 or not is_blob(payload):
                    raise self._refuse(f"round {m.round}: a batch that is not one client's "
                                       "ciphertexts")
                (client,) = group
                if client in seen:
                    raise self._refuse(f"round {m.round}: client {client} twice")
                seen.add(client)
                if client not in wanted:
                    continue  # not in this sum
                model = bytes(bundle.model)

                def authentic(batch_digest: str, client: str = client, model: bytes = model,
                              signature: bytes = signature) -> None:
                    # Checked on the digest of the very bytes about to be added, before
                    # any of them is read (this sum is this holder's own, thrown away on
                    # any refusal).
                    said = statement(self.policy.run_id, m.round, client,
                                     bytes.fromhex(batch_digest), model, commitment,
                                     kind=m.kind)
                    if not verify(self._clients[client], signature, said):
                        raise self._refuse(f"round {m.round}: {client}'s batch is not signed "
                                           f"by {client} for this run, round, model and "
                                           f"{'noise' if m.kind == 'train' else 'plan'}")

                try:
                    batch_digest = total_sum.add(payload, contributor=client,
                                                 authenticate=authentic)
                except CryptoError as err:
                    raise self._refuse(f"round {m.round}: {err}") from None
                digests[client] = batch_digest
                models.add(model)
            del bundle, item  # one party's batches in memory at a time
        missing = [c for c in m.contributors if c not in digests]
        if missing:
            raise self._refuse(f"round {m.round}: no signed batch from {missing[0]}")
        self._model = next(iter(models), b"")
        if len(models) > 1:
            # A client trained from a model or round parameters of its own could be told
            # apart from the others in the sum (e.g. a zero learning rate for all but one).
            raise self._refuse(f"round {m.round}: its batches were trained from "
                               f"{len(models)} different models or round parameters")
        return digests

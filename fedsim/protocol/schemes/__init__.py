"""How contributions travel: encoded by clients, summed by the aggregator, opened by the
coordinator. One scheme per ``federation.mode``, one file each.

Three halves of one concept:

* `Encoding`: a picklable description the coordinator hands every client and the
  aggregator at set-up; each builds its `Encoder` (an `Update` to a payload) and the
  aggregator its `Summation` (payloads to one sum) from it.
* `Scheme`: the coordinator's side: the extra parties the scheme needs (key holders),
  its set-up (a key ceremony), and how an aggregate is opened.

``plaintext`` (`fedsim.protocol.schemes.plaintext`) sends float64 vectors and reads the
sum directly; ``he`` (`fedsim.protocol.schemes.threshold`) seals every contribution
under a joint CKKS key and opens the sum by threshold decryption.
"""

from __future__ import annotations

import abc
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.aggregate.steps import Update
from fedsim.crypto.batch import is_blob

if TYPE_CHECKING:
    from fedsim.config import RunConfig
    from fedsim.protocol.backend import Backend, PartySpec
    from fedsim.protocol.manifest import Manifest
    from fedsim.protocol.records import PhaseTimer

AGGREGATOR = "aggregator"


@dataclass(frozen=True)
class Bundle:
    """A training party's payloads of one round: ``payloads[i]`` carries the
    contributions of the clients ``groups[i]`` (one client each, unless the scheme lets a
    party pre-sum its clients), and ``signatures[i]`` is that client's signature of it
    when the scheme signs (`fedsim.crypto.identity.statement`); ``model`` is the digest
    of the global model and round parameters the party trained from, which every
    signature covers (`fedsim.crypto.identity.model_digest`)."""

    groups: tuple[tuple[str, ...], ...] = ()
    payloads: tuple[Any, ...] = ()
    signatures: tuple[bytes, ...] = ()
    model: bytes = b""

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        return _bundle, (self.groups, tuple(_out_of_band(p, protocol) for p in self.payloads),
                         self.signatures, self.model)


@dataclass(frozen=True)
class NoiseBatch:
    """The aggregator's DP-noise payload of one round and, when the scheme signs, the
    aggregator's signature of it (`fedsim.crypto.identity.noise_statement`)."""

    payload: Any
    signature: bytes = b""

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        return _noise_batch, (_out_of_band(self.payload, protocol), self.signature)


def _out_of_band(payload: Any, protocol: Any) -> Any:
    """Bytes pickled out of band (pickle protocol 5): Ray writes them once into its
    object store and a receiver on the node gets a view of them there instead of Ray's
    own copy; the one that sums them copies them once (see `fedsim.crypto.batch.is_blob`).
    A ciphertext batch is hundreds of MB and every key holder reads each one."""
    if isinstance(payload, bytes) or is_blob(payload):  # a received batch, sent on
        if isinstance(protocol, int) and protocol >= 5:
            return pickle.PickleBuffer(payload)
        return bytes(payload)
    return payload


def _in_band(payload: Any) -> Any:
    """What `_out_of_band` sent, as bytes or a read-only uint8 view of the buffer."""
    if isinstance(payload, (bytes, np.ndarray)):
        return payload
    view = np.frombuffer(payload, dtype=np.uint8)
    view.flags.writeable = False
    return view


def _bundle(groups: Any, payloads: Any, signatures: Any, model: Any) -> Bundle:
    return Bundle(groups, tuple(_in_band(p) for p in payloads), signatures, model)


def _noise_batch(payload: Any, signature: Any) -> NoiseBatch:
    return NoiseBatch(_in_band(payload), signature)


class Encoder(abc.ABC):
    """Turns one contribution into its payload (in one party's process).

    ``signs``: whether each payload goes out signed by its client, bound to the round's
    noise commitment (he: the key holders check every batch they decrypt).
    """

    signs = False

    @abc.abstractmethod
    def encode(self, update: Update, *, client: str) -> tuple[Any, dict[str, float]]:
        """The payload and the seconds spent per phase (encode, encrypt, serialize)."""

    def bundle(self, clients: Sequence[str], payloads: Sequence[Any]) -> Bundle:
        """What a party sends for ``clients``: by default every payload on its own."""
        return Bundle(tuple((c,) for c in clients), tuple(payloads))

    @staticmethod
    def size(payload: Any) -> int:
        """Bytes the payload takes on the wire."""
        return len(payload) if isinstance(payload, bytes) else int(payload.nbytes)


class RoundSum(abc.ABC):
    """One round's running sum on the aggregator."""

    @abc.abstractmethod
    def add(self, payload: Any, contributor: str) -> str:
        """Add a payload (``contributor`` names it: a client, or the first of a group);
        return its digest. Raises a FedSimError, the sum unchanged."""

    @abc.abstractmethod
    def add_noise(self, payload: Any) -> None:
        """Add the aggregator's DP noise (an encoded contribution of weight 0)."""

    @abc.abstractmethod
    def result(self) -> Any:
        """The sum, as a payload."""


class Summation(abc.ABC):
    """Makes each round's `RoundSum` (built once per run in the aggregator's process)."""

    @abc.abstractmethod
    def start(self) -> RoundSum: ...


class Encoding(abc.ABC):
    """What clients and the aggregator are told at set-up; picklable. ``mode``: the
    ``federation.mode`` it belongs to (a party accepts only its run's)."""

    mode = ""

    @abc.abstractmethod
    def encoder(self, slots: Sequence[str]) -> Encoder: ...

    @abc.abstractmethod
    def summation(self) -> Summation: ...


class Scheme(abc.ABC):
    """The coordinator's side of a scheme.

    ``endorsed``: whether a round's contributors must each endorse its sum (its batches)
    before the sum is opened (he: the key holders require every endorsement).
    """

    endorsed = False

    @property
    @abc.abstractmethod
    def num_ciphertexts(self) -> int:
        """Ciphertexts per contribution (0 without encryption)."""

    def caveats(self) -> list[str]:
        """What a run with this scheme must warn about, every time (one line each)."""
        return []

    @property
    def lost(self) -> tuple[str, ...]:
        """Parties of the scheme lost so far that the run goes on without."""
        return ()

    def parties(self, cfg: RunConfig, run_id: str, *, noise_batches: int) -> list[PartySpec]:
        """Parties the scheme adds to the run (none by default)."""
        return []

    @abc.abstractmethod
    def setup(self, backend: Backend, training: Sequence[str], *, update_bound: float,
              noise_parts: float) -> Encoding:
        """Run after every party started (``training``: the training parties' roles);
        returns the encoding to hand out."""

    @abc.abstractmethod
    def open(self, backend: Backend, manifest: Manifest, aggregate: Any, timer: PhaseTimer,
             *, noise: Any, bundles: Sequence[Any], endorsements: Mapping[str, bytes],
             released: Callable[[], None] = lambda: None) -> Any:
        """The opened sum as a flat float64 vector ``[vector..., slots..., weight]``.

        ``noise`` and ``bundles`` are handles of the round's `NoiseBatch` and of every
        training party's bundle: what a key holder re-adds itself; ``endorsements`` maps
        each contributor to its endorsement of the round's sum. ``released`` is called
        once the coordinator can read the sum (every partial decryption in hand), before
        it does: a release lost to a fault after that is still charged.
        """


def scheme_for(cfg: RunConfig, *, num_params: int, slots: Sequence[str],
               max_contributors: int, evaluation: Any = None) -> Scheme:
    """The scheme ``federation.mode`` names, sized for ``max_contributors`` per round
    (`fedsim.protocol.sampling.max_contributors`) and, in he, for the evaluations of
    ``evaluation`` (a `fedsim.protocol.evaluation.EvaluationPlan`, or None)."""
    from fedsim.protocol.schemes.plaintext import Plaintext
    from fedsim.protocol.schemes.threshold import ThresholdCKKS

    if cfg.federation.encrypted:
        return ThresholdCKKS.create(cfg, num_params=num_params, slots=slots,
                                    max_contributors=max_contributors, evaluation=evaluation)
    return Plaintext.create(cfg, num_params=num_params, slots=slots,
                            max_contributors=max_contributors)

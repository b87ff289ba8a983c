"""The aggregator: sums client contributions as they arrive, holds no secret key.

What a contribution is and how it is summed comes from the run's encoding
(`fedsim.protocol.schemes`), handed over at set-up with `use_encoding`: float64
vectors summed in name order (plaintext), or ciphertext batches added as they arrive
(he; CKKS addition is exact modular arithmetic, so order does not matter). A round is
``begin`` (which draws and encodes this round's DP noise when the run places it here,
while the clients train, and signs it in he mode with the key it registered at set-up),
``add_many`` as each training party reports (its `Bundle` of
payloads), and ``finish``, which returns the aggregate with the `Manifest` the key
holders check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsim.aggregate.steps import Pipeline, RoundContext, ServerContext
from fedsim.crypto.identity import SigningKey, noise_statement
from fedsim.crypto.identity import digest as digest_bytes
from fedsim.errors import CryptoError, ProtocolError
from fedsim.privacy.randomness import NoiseSource
from fedsim.protocol.manifest import Manifest, digest
from fedsim.protocol.schemes import Bundle, Encoder, Encoding, NoiseBatch, RoundSum, Summation

NOISE = "aggregator-noise"


@dataclass(frozen=True)
class AddResult:
    """Per client of one `Aggregator.add_many` call: arrival time, or why it was refused."""

    arrived: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


class Aggregator:
    """Streaming sum of one round's contributions (the plain class behind the actor)."""

    def __init__(self, run_id: str, pipeline: Pipeline, num_values: int,
                 randomness: NoiseSource) -> None:
        """``randomness``: where the DP noise this party adds comes from (its own OS
        CSPRNG, unless the run is marked insecure: `fedsim.privacy.randomness`)."""
        self.run_id = run_id
        self._signing = SigningKey()  # OS CSPRNG, never leaves this process
        self._pipeline = pipeline  # its noise hook is what this party adds, if anything
        self._num_values = num_values
        self._randomness = randomness
        self._summation: Summation | None = None
        self._encoder: Encoder | None = None
        self._round: int | None = None
        self._begun = -1  # the newest round begun (he: rounds only move forward)
        self._sum: RoundSum | None = None
        self._noise: Any = None
        self._contributors: list[str] = []
        self._digests: list[str] = []
        self._busy_s = 0.0
        self._noise_s = 0.0

    def identity(self) -> bytes:
        """The aggregator's public signing key, for the key holders' roster."""
        return self._signing.public

    def use_encoding(self, encoding: Encoding) -> None:
        """How contributions are summed, and DP noise encoded: once, at set-up."""
        if self._summation is not None:
            raise ProtocolError("aggregator: a second encoding refused: the run's encoding "
                                "is fixed at set-up")
        self._summation = encoding.summation()
        self._encoder = encoding.encoder(self._pipeline.slots)

    def begin(self, context: RoundContext) -> tuple[bytes, NoiseBatch | None]:
        """Start a new round's sum, dropping anything left from the previous one.

        Draws and encodes the round's DP noise now when this party places it: the
        coordinator does not wait for ``begin``, so that work overlaps local training.
        Returns the noise commitment (the noise payload's digest, empty without noise:
        clients sign it with their batches) and the noise batch (None without noise, for
        the key holders to add themselves), signed by this party when the encoder signs.
        The round is open only once ``begin`` has completed: should it fail, every
        ``add`` and ``finish`` of the round is refused (no sum without its noise). In he
        mode rounds only move forward (a second noise batch of a round is refused).
        """
        if self._summation is None or self._encoder is None:
            raise ProtocolError("aggregator: begin() before use_encoding()")
        if self._encoder.signs and context.round <= self._begun:
            # A second noise batch of a round would be a second signed sum to difference.
            raise ProtocolError(f"aggregator: round {context.round} begun after round "
                                f"{self._begun}: rounds only move forward")
        self._begun = context.round
        t0 = time.perf_counter()
        self._round = None
        self._sum = self._summation.start()
        self._contributors, self._digests = [], []
        self._busy_s = self._noise_s = 0.0
        self._noise = None
        noise = self._pipeline.noise(self._num_values, ServerContext(
            context.round, (), self._randomness, context.params))
        commitment, batch = b"", None
        if noise is not None:
            self._noise, _ = self._encoder.encode(noise, client=NOISE)
            commitment = digest_bytes(self._noise if isinstance(self._noise, bytes)
                                      else self._noise.tobytes())
            signature = b""
            if self._encoder.signs:
                signature = self._signing.sign(
                    noise_statement(self.run_id, context.round, commitment))
            batch = NoiseBatch(self._noise, signature)
        self._noise_s = time.perf_counter() - t0
        self._round = context.round
        return commitment, batch

    def add(self, client: str | Sequence[str], payload: Any) -> float:
        """Add one client's contribution (or one party's partial sum of several clients);
        returns the arrival time (epoch seconds).

        A malformed contribution raises an error naming ``client`` and leaves the sum
        unchanged, so the round can go on without it.
        """
        arrived = time.time()
        group = (client,) if isinstance(client, str) else tuple(client)
        if self._round is None or self._sum is None:
            raise ProtocolError("aggregator: add() before begin()")
        twice = [c for c in group if c in self._contributors]
        if twice or len(set(group)) != len(group):
            raise ProtocolError(f"aggregator: client {(twice or group)[0]} already "
                                "contributed this round")
        t0 = time.perf_counter()
        try:
            d = self._sum.add(payload, group[0])
        finally:
            self._busy_s += time.perf_counter() - t0
        self._contributors.extend(group)
        self._digests.extend([d] * len(group))
        return arrived

    def add_many(self, bundle: Bundle) -> AddResult:
        """``add`` a training party's bundle; refusals are returned, not raised."""
        result = AddResult()
        for group, payload in zip(bundle.groups, bundle.payloads, strict=True):
            try:
                arrived = self.add(group, payload)
            except (CryptoError, ProtocolError) as err:
                result.rejected.update({c: str(err) for c in group})
            else:
                result.arrived.update({c: arrived for c in group})
        return result

    def finish(self) -> tuple[Manifest, Any, dict[str, float]]:
        """The manifest, the aggregate and the seconds spent ("aggregate", "dp_noise")."""
        if self._round is None or self._sum is None or not self._contributors:
            raise ProtocolError("aggregator: no contribution to finish this round")
        t0 = time.perf_counter()
        if self._noise is not None:
            self._sum.add_noise(self._noise)
        t1 = time.perf_counter()
        aggregate = self._sum.result()
        self._busy_s += time.perf_counter() - t1
        manifest = Manifest(
            run_id=self.run_id,
            round=self._round,
            contributors=tuple(self._contributors),
            digests=tuple(self._digests),
            aggregate_digest=digest(aggregate),
            aggregate_bytes=Encoder.size(aggregate),
            noise_added=self._noise is not None,
        )
        return manifest, aggregate, {"aggregate": self._busy_s, "dp_noise": t1 - t0,
                                     "dp_noise_prepare": self._noise_s}

    def sum_evaluation(self, round_idx: int, *bundles: Bundle, kind: str = "evaluate"
                       ) -> tuple[Manifest, Any, float]:
        """The sum of the hospitals' evaluation batches (`fedsim.protocol.evaluation`) of
        the model after ``round_idx``, or of their scores of a query (``kind``
        ``predict``): its manifest, the aggregate and the seconds spent. Separate from
        the round's sum, which it leaves as it is."""
        if self._summation is None:
            raise ProtocolError("aggregator: sum_evaluation() before use_encoding()")
        t0 = time.perf_counter()
        total = self._summation.start()
        contributors: list[str] = []
        digests: list[str] = []
        for bundle in bundles:
            for group, payload in zip(bundle.groups, bundle.payloads, strict=True):
                if len(group) != 1 or group[0] in contributors:
                    raise ProtocolError(f"aggregator: evaluation batch of {list(group)}: "
                                        "not one new client's")
                digests.append(total.add(payload, group[0]))
                contributors.append(group[0])
        if not contributors:
            raise ProtocolError("aggregator: an evaluation sum of no batch")
        aggregate = total.result()
        manifest = Manifest(run_id=self.run_id, round=round_idx,
                            contributors=tuple(contributors), digests=tuple(digests),
                            aggregate_digest=digest(aggregate),
                            aggregate_bytes=Encoder.size(aggregate), kind=kind)
        return manifest, aggregate, time.perf_counter() - t0


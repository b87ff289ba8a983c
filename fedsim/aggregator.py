"""The aggregator: sums client contributions as they arrive, holds no secret key.

In `plaintext` mode a contribution is a float64 vector (weighted delta plus the
weight as its last value), checked on arrival and summed in client-name order at
`finish`, so the float result never depends on arrival order; in `he` mode it is a
ciphertext batch (bytes) that is deserialized and added to a running encrypted sum
immediately (CKKS addition is exact modular arithmetic, so order does not matter).
`finish` returns the aggregate with a `Manifest` that the key holders check before
they decrypt.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from fedsim.errors import CryptoError, ProtocolError


@dataclass(frozen=True)
class Manifest:
    """What an aggregate claims to be: key holders decrypt only what this describes."""

    run_id: str
    round: int
    contributors: tuple[str, ...]
    digests: tuple[str, ...]
    aggregate_digest: str
    aggregate_bytes: int = 0
    noise_added: bool = False

    @property
    def count(self) -> int:
        return len(self.contributors)


def digest(payload: bytes | np.ndarray) -> str:
    """sha256 hex digest of a payload's bytes."""
    data = payload if isinstance(payload, bytes) else np.ascontiguousarray(payload).tobytes()
    return hashlib.sha256(data).hexdigest()


class Aggregator:
    """Streaming sum of one round's contributions; `context_bytes` selects encrypted mode."""

    def __init__(self, run_id: str, context_bytes: bytes | None = None) -> None:
        self.run_id = run_id
        self._context_bytes = context_bytes
        self._layout = None  # fedsim.crypto.raw.Layout once the public key is known
        self._round: int | None = None
        self._reset()

    def _reset(self) -> None:
        self._plain: dict[str, np.ndarray] = {}
        self._noise: np.ndarray | None = None
        self._cipher = None
        self._contributors: list[str] = []
        self._digests: list[str] = []
        self._noise_added = False
        self.busy_s = 0.0

    @property
    def encrypted(self) -> bool:
        return self._context_bytes is not None

    def begin(self, round_idx: int) -> None:
        """Start a new round's sum, dropping anything left from the previous one."""
        self._round = round_idx
        self._reset()
        if self.encrypted:
            from fedsim.crypto import CiphertextSum

            self._cipher = CiphertextSum(self._ckks(), layout=self._layout)

    def _ckks(self):
        """This run's CKKS context (fedsim.crypto.CKKSContext), built on first use."""
        if not hasattr(self, "_context"):
            from fedsim.crypto import CKKSContext

            self._context = CKKSContext.from_bytes(self._context_bytes)
        return self._context

    def use_public_key(self, public_key: bytes) -> bool:
        """Sum later rounds in the serialized bytes, checked against this key's ciphertexts.

        Learns where the residues of a fresh ciphertext under ``public_key`` sit (see
        ``fedsim.crypto.raw``); every later batch must match such a ciphertext byte for
        byte outside its residues. Returns False (and keeps OpenFHE objects) if the
        layout cannot be learned and checked.
        """
        import openfhe as fhe

        from fedsim.crypto import raw

        if not self.encrypted:
            raise ProtocolError("aggregator: a public key in plaintext mode")
        context = self._ckks()
        try:
            key = fhe.DeserializePublicKeyString(public_key, fhe.BINARY)
        except RuntimeError as exc:
            raise CryptoError(f"aggregator: public key does not deserialize: {exc}") from exc
        self._layout = raw.learn_ciphertext(context.openfhe, key, context.slots)
        return self._layout is not None

    def add(self, client: str, payload: bytes | np.ndarray) -> float:
        """Add one client's contribution; returns the arrival time (epoch seconds).

        A malformed contribution raises an error naming ``client`` and leaves the sum
        unchanged, so the round can go on without it.
        """
        arrived = time.time()
        if self._round is None:
            raise ProtocolError("aggregator: add() before begin()")
        if client in self._contributors:
            raise ProtocolError(f"aggregator: client {client} already contributed this round")
        t0 = time.perf_counter()
        if self.encrypted:
            if not isinstance(payload, bytes):
                raise CryptoError(f"client {client}: expected ciphertext bytes in he mode")
            d = self._cipher.add(payload, contributor=client)
        else:
            if not isinstance(payload, np.ndarray) or payload.dtype != np.float64:
                raise ProtocolError(f"client {client}: expected a float64 vector in plaintext mode")
            first = next(iter(self._plain.values()), None)
            if first is not None and payload.shape != first.shape:
                raise ProtocolError(
                    f"client {client}: update has {payload.size} values, expected {first.size}"
                )
            if not np.all(np.isfinite(payload)):
                raise ProtocolError(f"client {client}: update contains NaN or infinity")
            d = digest(payload)
            self._plain[client] = payload
        self._contributors.append(client)
        self._digests.append(d)
        self.busy_s += time.perf_counter() - t0
        return arrived

    def enable_noise(self, plan: object, num_params: int, seed: int, *,
                     public_key: bytes | None = None, update_bound: float = 1.0,
                     scale: float = 1.0) -> None:
        """Add client-level DP noise to every later sum (placement ``aggregator``).

        The aggregator draws the noise itself, so it knows it: that is the paper's
        placement, and the reason fedsim also offers ``distributed``.
        """
        self._dp = (plan, num_params, seed)
        self._noise_sealer = None
        if self.encrypted:
            from fedsim.sealing import UpdateSealer

            self._noise_sealer = UpdateSealer(self._context_bytes, public_key,
                                              update_bound=update_bound, scale=scale)

    def prepare_dp_noise(self) -> None:
        """Draw (and in he mode encrypt) this round's noise ahead of `add_dp_noise`.

        The noise depends on nothing the clients send, so the coordinator asks for it
        right after `begin`: the aggregator then encrypts it while the clients train,
        instead of on the round's critical path after the last update arrives.
        """
        from fedsim.dp import aggregator_noise

        if self._round is None:
            raise ProtocolError("aggregator: prepare_dp_noise() before begin()")
        plan, num_params, seed = self._dp
        noise = aggregator_noise(plan, num_params, seed=seed, round_idx=self._round)
        if self._noise_sealer is not None:
            payload, _ = self._noise_sealer.seal(noise, 1.0, client="aggregator-noise",
                                                 count=False)
        else:
            payload = np.append(noise, 0.0)
        self._prepared_noise = (self._round, payload)

    def add_dp_noise(self) -> None:
        """Add this round's noise (prepared earlier, or drawn now) to the sum."""
        prepared = getattr(self, "_prepared_noise", None)
        if prepared is None or prepared[0] != self._round:
            self.prepare_dp_noise()
        _, payload = self._prepared_noise
        self._prepared_noise = None
        self.add_noise(payload)

    def add_noise(self, payload: bytes | np.ndarray) -> None:
        """Add DP noise (already encrypted in he mode) to the sum; recorded in the manifest."""
        t0 = time.perf_counter()
        if self.encrypted:
            self._cipher.add(payload, contributor="aggregator-noise")
        else:
            self._noise = payload
        self._noise_added = True
        self.busy_s += time.perf_counter() - t0

    def finish(self) -> tuple[Manifest, bytes | np.ndarray, float]:
        """The manifest, the aggregate and the seconds spent adding this round."""
        if self._round is None or not self._contributors:
            raise ProtocolError("aggregator: no contribution to finish this round")
        t0 = time.perf_counter()
        if self.encrypted:
            aggregate = self._cipher.result()
        else:
            aggregate = np.zeros_like(next(iter(self._plain.values())))
            for name in sorted(self._plain):
                aggregate += self._plain[name]
            if self._noise is not None:
                aggregate += self._noise
        self.busy_s += time.perf_counter() - t0
        manifest = Manifest(
            run_id=self.run_id,
            round=self._round,
            contributors=tuple(self._contributors),
            digests=tuple(self._digests),
            aggregate_digest=digest(aggregate),
            aggregate_bytes=len(aggregate) if isinstance(aggregate, bytes) else aggregate.nbytes,
            noise_added=self._noise_added,
        )
        return manifest, aggregate, self.busy_s

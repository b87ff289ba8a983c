"""What an aggregate claims to be: the manifest the key holders check before decrypting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    kind: str = "train"  # or "evaluate": score histograms of the model after ``round``

    @property
    def count(self) -> int:
        return len(self.contributors)


def digest(payload: bytes | np.ndarray) -> str:
    """Hex digest of a payload's bytes (`fedsim.crypto.identity.digest`)."""
    from fedsim.crypto.identity import digest as digest_bytes

    data = payload if isinstance(payload, bytes) else \
        memoryview(np.ascontiguousarray(payload)).cast("B")
    return digest_bytes(data).hex()

"""What an aggregate claims to be: the manifest the key holders check before decrypting."""

from __future__ import annotations

import hashlib
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

    @property
    def count(self) -> int:
        return len(self.contributors)


def digest(payload: bytes | np.ndarray) -> str:
    """sha256 hex digest of a payload's bytes."""
    data = payload if isinstance(payload, bytes) else np.ascontiguousarray(payload).tobytes()
    return hashlib.sha256(data).hexdigest()

"""Shamir secret sharing of residue vectors over Z_q, one prime modulus q per RNS tower.

A secret-key share is a ring element stored as residue vectors; sharing each residue
independently over its prime field is Shamir sharing of the ring element itself (Shamir,
1979). Holder ``i`` (0-based) evaluates at x = i + 1. Polynomial coefficients come from
``os.urandom`` by rejection sampling, so they are uniform modulo q. Exact integer
arithmetic (Python ints in object arrays): residues are up to 60 bits.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.errors import CryptoError

_MAGIC = b"FSSH"
_VERSION = 1
_HEAD = struct.Struct("<4sHHHHHI16s")


def point(holder: int) -> int:
    """The evaluation point of 0-based holder ``holder``."""
    return holder + 1


def random_below(q: int, n: int) -> np.ndarray:
    """``n`` integers uniform in [0, q) from the OS's cryptographic RNG."""
    mask = np.uint64((1 << q.bit_length()) - 1)
    out = np.empty(0, dtype=np.uint64)
    while out.size < n:
        draw = np.frombuffer(os.urandom(8 * (n - out.size) + 64), dtype="<u8") & mask
        out = np.concatenate([out, draw[draw < np.uint64(q)]])
    return out[:n].astype(np.uint64)


def split(
    secret: Sequence[np.ndarray], moduli: Sequence[int], *, threshold: int, holders: Sequence[int]
) -> dict[int, list[np.ndarray]]:
    """Shares of ``secret`` for each of ``holders``; any ``threshold`` of them rebuild it."""
    shares: dict[int, list[np.ndarray]] = {h: [] for h in holders}
    for tower, q in zip(secret, moduli, strict=True):
        coeffs = [tower.astype(object)]
        coeffs += [random_below(q, tower.size).astype(object) for _ in range(threshold - 1)]
        for h in holders:
            x, acc = point(h), coeffs[-1]
            for c in reversed(coeffs[:-1]):
                acc = (acc * x + c) % q
            shares[h].append(np.asarray(acc, dtype=object).astype(np.uint64))
    return shares


def interpolate(
    shares: Mapping[int, Sequence[np.ndarray]], moduli: Sequence[int], *, at: int = 0
) -> list[np.ndarray]:
    """Lagrange-interpolate the shared polynomial at x = ``at`` (0 gives the secret)."""
    xs = {h: point(h) for h in shares}
    result = []
    for t, q in enumerate(moduli):
        acc = np.zeros(len(next(iter(shares.values()))[t]), dtype=object)
        for h, values in shares.items():
            num = den = 1
            for m, xm in xs.items():
                if m != h:
                    num, den = num * (at - xm) % q, den * (xs[h] - xm) % q
            weight = num * pow(den, -1, q) % q
            acc = (acc + values[t].astype(object) * weight) % q
        result.append(acc.astype(np.uint64))
    return result


def lagrange_at_zero(holder: int, participants: Sequence[int], q: int) -> int:
    """lambda_holder(participants) mod q: sum_j lambda_j f(x_j) = f(0) over ``participants``."""
    xj = point(holder)
    num = den = 1
    for m in participants:
        if m != holder:
            xm = point(m)
            num, den = num * xm % q, den * (xm - xj) % q
    return num * pow(den, -1, q) % q


def scale(tower: np.ndarray, factor: int, q: int) -> np.ndarray:
    """``factor * tower`` mod q, exactly."""
    return (tower.astype(object) * factor % q).astype(np.uint64)


def add(parts: Sequence[Sequence[np.ndarray]], moduli: Sequence[int]) -> list[np.ndarray]:
    """The residue-wise sum mod q of several shares (each a list of towers)."""
    out = []
    for t, q in enumerate(moduli):
        acc = np.zeros(parts[0][t].size, dtype=object)
        for part in parts:
            acc = (acc + part[t].astype(object)) % q
        out.append(acc.astype(np.uint64))
    return out


@dataclass(frozen=True)
class Share:
    """One holder's Shamir share of one owner's secret key, bound to a context."""

    context: str  # CKKSContext.fingerprint
    owner: int
    holder: int
    threshold: int
    num_holders: int
    moduli: tuple[int, ...]
    towers: tuple[np.ndarray, ...]

    def to_bytes(self) -> bytes:
        ring = self.towers[0].size
        head = _HEAD.pack(
            _MAGIC,
            _VERSION,
            self.owner,
            self.holder,
            self.threshold,
            self.num_holders,
            ring,
            self.context.encode("ascii"),
        )
        tail = np.asarray(self.moduli, dtype="<u8").tobytes()
        return (
            head
            + struct.pack("<H", len(self.moduli))
            + tail
            + b"".join(t.astype("<u8").tobytes() for t in self.towers)
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Share:
        try:
            magic, version, owner, holder, threshold, num_holders, ring, ctx = _HEAD.unpack_from(
                blob
            )
            (count,) = struct.unpack_from("<H", blob, _HEAD.size)
            start = _HEAD.size + 2
            moduli = np.frombuffer(blob, dtype="<u8", count=count, offset=start)
            start += 8 * count
            if magic != _MAGIC or version != _VERSION or len(blob) != start + 8 * count * ring:
                raise ValueError("bad magic, version or length")
            data = np.frombuffer(blob, dtype="<u8", offset=start).reshape(count, ring)
        except (struct.error, ValueError) as exc:
            raise CryptoError(f"malformed Shamir share: {exc}") from exc
        if np.any(data >= moduli[:, None]):
            raise CryptoError("malformed Shamir share: residue out of range")
        return cls(
            ctx.decode("ascii"),
            owner,
            holder,
            threshold,
            num_holders,
            tuple(int(q) for q in moduli),
            tuple(row.astype(np.uint64) for row in data),
        )

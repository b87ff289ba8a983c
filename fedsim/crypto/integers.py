"""Exact sums of non-negative integers under CKKS, whose decryption is approximate.

A decrypted CKKS sum is right only to ``context.error_bound`` per value (in the secure
profile the flooding noise makes that about 3% of ``value_bound``), so a count sent as
one slot value would come back off by many units. `CountCodec` sends each integer as
its digits in a small base instead, one digit per slot, each digit worth ``unit`` in the
slot: the sum of ``contributors`` digits stays below ``value_bound`` and ``unit`` is
several times the error, so every summed digit rounds back exactly, and the digits'
sums recombine into the exact sum of the integers (carries need no care: a digit sum
may exceed the base, ``sum_k digit_sum_k * base**k`` is still the sum).

Every party derives the same codec from public facts: the context, the most
contributors a sum has, and the largest integer one contributor sends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.errors import CryptoError

_MARGIN = 2.5  # unit / error_bound: a summed digit's error stays below 0.4 of a unit


@dataclass(frozen=True)
class CountCodec:
    """Digits of ``base`` in ``digits`` slots per integer, one digit worth ``unit``."""

    base: int
    digits: int
    unit: float

    @classmethod
    def for_context(cls, context, *, contributors: int, max_value: int) -> CountCodec:
        """The codec for sums of up to ``contributors`` vectors of integers in
        ``[0, max_value]`` under ``context`` (its ``error_bound`` and ``value_bound``)."""
        if contributors < 1 or max_value < 1:
            raise CryptoError(f"a count codec needs contributors >= 1 and max_value >= 1, "
                              f"got {contributors} and {max_value}")
        unit = _MARGIN * context.error_bound
        capacity = int(0.9 * context.value_bound / unit)  # the largest digit sum
        base = capacity // contributors + 1
        if base < 2:
            raise CryptoError(
                f"this context decrypts a sum only to {context.error_bound:.3g} of "
                f"{context.value_bound:g}: too coarse for exact counts of {contributors} "
                "contributors")
        digits = max(1, math.ceil(math.log(max_value + 1, base) - 1e-12))
        while base**digits <= max_value:  # log's rounding
            digits += 1
        return cls(base, digits, unit)

    def size(self, count: int) -> int:
        """Slots ``count`` integers take."""
        return count * self.digits

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Slot values of ``values`` (integers in ``[0, base**digits)``), digit-major:
        the lowest digit of every value first."""
        ints = np.asarray(values)
        if ints.ndim != 1 or not np.array_equal(ints, np.rint(ints)):
            raise CryptoError("a count codec encodes a 1-D vector of integers")
        ints = ints.astype(np.int64)
        if ints.size and (ints.min() < 0 or ints.max() >= self.base**self.digits):
            raise CryptoError(f"a value outside [0, {self.base**self.digits}) for this codec")
        out = np.empty((self.digits, ints.size))
        rest = ints.copy()
        for k in range(self.digits):
            out[k] = rest % self.base
            rest //= self.base
        return (out * self.unit).ravel()

    def decode(self, slots: np.ndarray) -> np.ndarray:
        """The exact integer sums from decrypted summed slot values; raises CryptoError
        when a digit sum is not within 0.4 of a unit's multiple (not a sum of this
        codec's encodings, or a context noisier than it says)."""
        digits = np.asarray(slots, np.float64) / self.unit
        if digits.size % self.digits:
            raise CryptoError(f"{digits.size} slot values are not whole integers of "
                              f"{self.digits} digits")
        rounded = np.rint(digits)
        if np.any(np.abs(digits - rounded) > 0.4) or np.any(rounded < 0):
            raise CryptoError("decrypted digit sums are not whole units: not a sum of "
                              "this codec's encodings")
        weights = np.array([self.base**k for k in range(self.digits)], dtype=np.int64)
        return (rounded.astype(np.int64).reshape(self.digits, -1) * weights[:, None]).sum(0)

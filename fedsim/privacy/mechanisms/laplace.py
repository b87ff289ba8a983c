"""The Laplace mechanism: L1 clipping, discrete Laplace noise of scale ``b = C z`` on a
lattice (the geometric mechanism, Ghosh, Roughgarden and Sundararajan 2009).

Accounting: dp-accounting's ``LaplaceDpEvent(z)``. At integer sensitivity ``k`` and
scale ``t = b / gamma`` the discrete Laplace is exactly ``k / t = 1 / z``-DP, as the
continuous one; composed over rounds or subsampled, fedsim uses the continuous
Laplace's accounting, an approximation whose gap (of order ``gamma / b``, at most
2^-10 / z per value here) is not bounded formally. The Gaussian mechanism's accounting
is the one with a stated bound: prefer it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, final

import dp_accounting
import numpy as np

from fedsim.privacy.mechanisms.base import Mechanism, Norm, check_shares, check_size
from fedsim.privacy.mechanisms.discrete import discrete_laplace
from fedsim.privacy.mechanisms.registry import register_mechanism


@register_mechanism
@final
@dataclass(frozen=True)
class LaplaceMechanism(Mechanism):
    """Discrete Laplace noise of scale ``b = clip * noise_multiplier`` on an L1-clipped sum.

    Shares: ``gamma * (N1 - N2)`` with ``N1, N2`` negative binomial of ``1/m`` successes
    at ``p = 1 - exp(-gamma / b)``; ``m`` such variables sum to a geometric one, and the
    difference of two independent geometrics is the discrete Laplace (infinite
    divisibility, as used for the continuous case by Goryczka and Xiong 2017).
    Tail: ``P(|Laplace(0, 1)| > 40) = e^-40`` per value.
    """

    name: ClassVar[str] = "laplace"
    norm: ClassVar[Norm] = "l1"
    tail: ClassVar[float] = 40.0
    clip: float
    noise_multiplier: float

    @property
    def stddev(self) -> float:
        return math.sqrt(2.0) * self.scale

    def sample(self, rng: Any, size: int) -> np.ndarray:
        gamma, steps = self.lattice_scale(check_size(size))
        return gamma * discrete_laplace(rng, steps, size).astype(np.float64)

    def share(self, rng: Any, size: int, num_shares: int) -> np.ndarray:
        m = check_shares(num_shares)
        gamma, steps = self.lattice_scale(check_size(size))
        p = -math.expm1(-1.0 / steps)
        g = rng.generator() if hasattr(rng, "generator") else rng
        counts = g.negative_binomial(1.0 / m, p, (2, size))
        return gamma * (counts[0] - counts[1]).astype(np.float64)

    @classmethod
    def dp_event(cls, noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.LaplaceDpEvent(noise_multiplier)

    @classmethod
    def unsupported(cls, *, sampling: str, accountant: str, q: float) -> str | None:
        if sampling == "fixed":
            return ("mechanism='laplace' with sampling='fixed' is not supported: dp-accounting "
                    "bounds sampling without replacement only for the Gaussian mechanism; use "
                    "sampling='poisson' with accountant='pld', or mechanism='gaussian'")
        if accountant == "rdp" and q < 1.0:
            return ("mechanism='laplace' with Poisson subsampling (q < 1) is not supported by "
                    "the RDP accountant; use accountant='pld'")
        return None

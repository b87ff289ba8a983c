"""The Laplace mechanism: L1 clipping, i.i.d. ``Laplace(0, b = C z)`` noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, final

import dp_accounting
import numpy as np

from fedsim.privacy.mechanisms.base import Mechanism, Norm, check_shares, check_size
from fedsim.privacy.mechanisms.registry import register_mechanism


@register_mechanism
@final
@dataclass(frozen=True)
class LaplaceMechanism(Mechanism):
    """Laplace noise of scale ``b = clip * noise_multiplier`` on an L1-clipped sum.

    Shares: ``b * (G1 - G2)`` with ``G1, G2 ~ Gamma(1/m, 1)``; the sum of ``m`` such
    Gammas is ``Exp(1)`` and the difference of two independent ``Exp(1)`` is
    ``Laplace(0, 1)`` (infinite divisibility, as used by Goryczka and Xiong 2017).
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

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.laplace(0.0, self.scale, check_size(size))

    def share(self, rng: np.random.Generator, size: int, num_shares: int) -> np.ndarray:
        shape = 1.0 / check_shares(num_shares)
        size = check_size(size)
        return self.scale * (rng.gamma(shape, 1.0, size) - rng.gamma(shape, 1.0, size))

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

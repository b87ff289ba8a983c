"""The Gaussian mechanism: L2 clipping, i.i.d. ``N(0, (C z)^2)`` noise (Dwork and Roth 2014)."""

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
class GaussianMechanism(Mechanism):
    """Gaussian noise of stddev ``clip * noise_multiplier`` on an L2-clipped sum.

    Shares: ``N(0, sigma^2 / m)`` each, so ``m`` of them sum to ``N(0, sigma^2)``.
    Tail: ``P(|N(0, 1)| > 8) < 1.3e-15`` per value.
    """

    name: ClassVar[str] = "gaussian"
    norm: ClassVar[Norm] = "l2"
    tail: ClassVar[float] = 8.0
    clip: float
    noise_multiplier: float

    @property
    def stddev(self) -> float:
        return self.scale

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.normal(0.0, self.scale, check_size(size))

    def share(self, rng: np.random.Generator, size: int, num_shares: int) -> np.ndarray:
        m = check_shares(num_shares)
        return rng.normal(0.0, self.scale / math.sqrt(m), check_size(size))

    @classmethod
    def dp_event(cls, noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.GaussianDpEvent(noise_multiplier)

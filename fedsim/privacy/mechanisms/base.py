"""What a noise mechanism for the client-level aggregate is: the abstract `Mechanism`.

The aggregate is the sum of clipped client updates. Its sensitivity to adding or
removing one client is the clip bound ``C`` in the mechanism's norm, so noise of scale
``C * z`` (``z`` the noise multiplier) gives the guarantee the accountant computes for
the mechanism's dp-accounting event at multiplier ``z``.

A concrete mechanism is a frozen dataclass with fields ``clip`` and
``noise_multiplier``, registered with `fedsim.privacy.mechanisms.register_mechanism`.
It says which norm it clips in, how to draw the whole noise (the aggregator's
placement) and one of ``m`` shares that sum to it (distributed placement), a tail
bound on any drawn value, and its dp-accounting event. Every sampler takes an explicit
``numpy.random.Generator``; nothing reads global RNG.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar, Literal

import dp_accounting
import numpy as np

from fedsim.errors import PrivacyError
from fedsim.privacy.clipping import clip_l1, clip_l2

Norm = Literal["l2", "l1"]
_CLIP = {"l2": clip_l2, "l1": clip_l1}


class Mechanism(abc.ABC):
    """An additive noise mechanism with its clip bound and noise multiplier (abstract).

    Subclasses are frozen dataclasses (fields ``clip``, ``noise_multiplier``) and final.
    """

    name: ClassVar[str]
    norm: ClassVar[Norm]
    tail: ClassVar[float]  # |drawn value| < tail * scale, per value, with overwhelming probability
    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if self.clip is None or not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(
                f"clip: noise without clipping has no stated guarantee; clip must be a "
                f"finite number > 0, got {self.clip}"
            )
        if self.noise_multiplier is None or not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise PrivacyError(
                f"noise_multiplier: must be a finite number > 0 when DP is enabled, "
                f"got {self.noise_multiplier}"
            )

    @property
    def scale(self) -> float:
        """The distribution's scale parameter: ``clip * noise_multiplier``."""
        return self.clip * self.noise_multiplier

    @property
    @abc.abstractmethod
    def stddev(self) -> float:
        """Standard deviation of the noise per coordinate."""

    def with_clip(self, clip: float) -> Mechanism:
        """The same mechanism at another clip bound (same multiplier)."""
        return dataclasses.replace(self, clip=clip)  # type: ignore[type-var]

    def with_noise_multiplier(self, noise_multiplier: float) -> Mechanism:
        return dataclasses.replace(self, noise_multiplier=noise_multiplier)  # type: ignore

    def clip_update(self, update: np.ndarray) -> tuple[np.ndarray, float]:
        """Clip ``update`` to ``clip`` in this mechanism's norm: ``(clipped, norm before)``."""
        return _CLIP[self.norm](update, self.clip)

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """The whole noise vector for the sum, float64 of shape (size,)."""

    @abc.abstractmethod
    def share(self, rng: np.random.Generator, size: int, num_shares: int) -> np.ndarray:
        """One of ``num_shares`` independent shares whose sum is distributed as ``sample``."""

    @classmethod
    @abc.abstractmethod
    def dp_event(cls, noise_multiplier: float) -> dp_accounting.DpEvent:
        """The event of one application at sensitivity ``clip`` with this multiplier."""

    @classmethod
    def unsupported(cls, *, sampling: str, accountant: str, q: float) -> str | None:
        """Why dp-accounting cannot account this mechanism so, naming an alternative (or None)."""
        return None


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise PrivacyError(f"size: must be an integer >= 0, got {size!r}")
    return int(size)


def check_shares(num_shares: int) -> int:
    if isinstance(num_shares, bool) or not isinstance(num_shares, (int, np.integer)) \
            or num_shares < 1:
        raise PrivacyError(f"num_shares: must be an integer >= 1, got {num_shares!r}")
    return int(num_shares)

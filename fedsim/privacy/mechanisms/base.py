"""What a noise mechanism for the client-level aggregate is: the abstract `Mechanism`.

The aggregate is the sum of clipped client updates. Its sensitivity to adding or
removing one client is the clip bound ``C`` in the mechanism's norm, so noise of scale
``C * z`` (``z`` the noise multiplier) gives the guarantee the accountant computes for
the mechanism's dp-accounting event at multiplier ``z``.

A concrete mechanism is a frozen dataclass with fields ``clip`` and
``noise_multiplier``, registered with `fedsim.privacy.mechanisms.register_mechanism`.
It says which norm it clips in, how to draw the whole noise (the aggregator's
placement) and one of ``m`` shares that sum to it (distributed placement), a tail
bound on any drawn value, and its dp-accounting event.

Noise is integer-valued on a power-of-two lattice (`fedsim.privacy.mechanisms.discrete`,
against floating-point attacks): `clip_update` clips to ``clip`` less the rounding
allowance and rounds to the lattice of the vector's size, and the samplers draw lattice
multiples, so every noised sum is a lattice point and its sensitivity stays ``clip``.
Every sampler takes an explicit source (`fedsim.privacy.randomness`: the OS CSPRNG, or
the insecure seeded one); nothing reads global RNG.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Literal

import dp_accounting
import numpy as np

from fedsim.errors import PrivacyError
from fedsim.privacy.clipping import clip_l1, clip_l2
from fedsim.privacy.mechanisms.discrete import lattice, round_to

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

    def lattice(self, size: int) -> tuple[float, float]:
        """``(gamma, rounding)`` for a vector of ``size`` values: the lattice step noise
        and contributions live on, and the norm rounding to it may add."""
        return lattice(self.clip, size, self.norm)

    def clip_update(self, update: np.ndarray, denominator: float = 1.0
                    ) -> tuple[np.ndarray, float]:
        """``(contribution, norm before)``: ``update`` clipped in this mechanism's norm,
        divided by the public ``denominator`` and rounded to the lattice of
        `averaged(denominator)`, with norm at most ``clip / denominator``.

        The clip is reduced by the rounding allowance (and by 2^-40 relative, for the
        division's float rounding), so the rounded contribution stays within the bound.
        Add noise from `averaged(denominator)`: the sum is then an exact lattice point.
        """
        gamma, rounding = self.averaged(denominator).lattice(update.size)
        bound = (self.clip - denominator * rounding) * (1.0 - 2.0 ** -40)
        clipped, norm = _CLIP[self.norm](update, bound)
        return round_to(clipped / denominator, gamma), norm

    def averaged(self, denominator: float) -> Mechanism:
        """The mechanism on contributions divided by ``denominator``: clip and noise
        scale both divided, so the same multiplier (and accounting)."""
        return self.with_clip(self.clip / denominator)

    def lattice_scale(self, size: int, shares: int = 1) -> tuple[float, float]:
        """``(gamma, scale / gamma)`` of one of ``shares`` shares, refused when the
        lattice is too coarse for the stated accounting (fewer than 4 steps per scale)."""
        gamma, _ = self.lattice(size)
        steps = self.scale / gamma / math.sqrt(shares)
        if steps < 4.0:
            raise PrivacyError(f"noise scale {self.scale:g} is only {steps:.3g} lattice steps "
                               f"of {gamma:g}; raise noise_multiplier")
        return gamma, steps

    @abc.abstractmethod
    def sample(self, rng: Any, size: int) -> np.ndarray:
        """The whole noise vector for the sum: lattice multiples, float64 of shape (size,)."""

    @abc.abstractmethod
    def share(self, rng: Any, size: int, num_shares: int) -> np.ndarray:
        """One of ``num_shares`` independent shares whose sum is distributed as ``sample``
        (exactly, or within the stated divergence of the mechanism)."""

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

"""Adaptive client-level clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping").

The clip bound tracks a target quantile ``gamma`` of the client update norms. Each
round every contributing client also reports ``b_i - 1/2`` with ``b_i = 1`` if its
update norm was within the current bound; the server adds Gaussian noise (stddev
``sigma_b``) to their sum and moves the bound geometrically:

    b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / expected_clients + 1/2
    C    <- C * exp(-eta * (b_bar - gamma))

Privacy cost, accounted (paper, Thm. 1): the pair (update sum with multiplier ``z_u``,
indicator sum with noise ``sigma_b``; each client's centred indicator has magnitude
1/2) is one Gaussian mechanism with multiplier
``z = (z_u^-2 + (2 sigma_b)^-2)^-1/2``. Choose the total ``z`` for the accountant
(``AccountingSpec.noise_multiplier``) and noise the updates with
``update_noise_multiplier(z, sigma_b)`` > ``z``.

The indicator noise is an ordinary Gaussian `Mechanism` (sensitivity 1/2, multiplier
``2 sigma_b``), so its ``sample`` or ``share`` places it in the encrypted sum exactly
like the update noise (`fedsim.privacy.steps.ClientLevelDP` does).
``expected_clients`` must be a fixed, public number (``q * n`` or ``m``), never the
realised count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsim.errors import PrivacyError
from fedsim.privacy.mechanisms import Mechanism, make_mechanism

__all__ = [
    "AdaptiveClipSpec",
    "AdaptiveClipState",
    "clip_indicator",
    "effective_noise_multiplier",
    "update_clip",
    "update_noise_multiplier",
]


@dataclass(frozen=True)
class AdaptiveClipSpec:
    """Hyper-parameters of adaptive clipping; the paper's defaults are eta = 0.2,
    gamma = 0.5 and sigma_b = expected_clients / 20.

    Attributes:
        target_quantile: ``gamma`` in (0, 1), the fraction of updates left unclipped.
        learning_rate: ``eta`` > 0 of the geometric update.
        indicator_noise_stddev: ``sigma_b`` > 0, noise on the summed indicators.
    """

    target_quantile: float
    learning_rate: float
    indicator_noise_stddev: float

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise PrivacyError(f"target_quantile: must be in (0, 1), got {self.target_quantile}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise PrivacyError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if not (math.isfinite(self.indicator_noise_stddev) and self.indicator_noise_stddev > 0):
            raise PrivacyError(
                f"indicator_noise_stddev: must be > 0 (an un-noised indicator count is not "
                f"private), got {self.indicator_noise_stddev}"
            )

    def indicator_noise_spec(self) -> Mechanism:
        """Noise for the indicator sum: Gaussian, sensitivity 1/2, stddev ``sigma_b``."""
        return make_mechanism("gaussian", clip=0.5,
                              noise_multiplier=2.0 * self.indicator_noise_stddev)


@dataclass(frozen=True)
class AdaptiveClipState:
    """The current clip bound (> 0)."""

    clip: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(f"clip: must be a finite number > 0, got {self.clip}")


def clip_indicator(norm: float, clip: float) -> float:
    """A client's centred indicator ``b_i - 1/2``: +0.5 if ``norm <= clip``, else -0.5.

    ``norm`` is the update's norm before clipping (``clip_l2`` returns it).
    """
    return 0.5 if norm <= clip else -0.5


def update_clip(
    state: AdaptiveClipState,
    spec: AdaptiveClipSpec,
    noised_indicator_sum: float,
    expected_clients: float,
) -> AdaptiveClipState:
    """Next round's bound from the decrypted, noised sum of centred indicators."""
    if not (math.isfinite(expected_clients) and expected_clients > 0):
        raise PrivacyError(f"expected_clients: must be > 0, got {expected_clients}")
    unclipped_fraction = noised_indicator_sum / expected_clients + 0.5
    step = -spec.learning_rate * (unclipped_fraction - spec.target_quantile)
    return AdaptiveClipState(clip=state.clip * math.exp(step))


def effective_noise_multiplier(update_multiplier: float, indicator_noise_stddev: float) -> float:
    """The multiplier to account for: ``(z_u^-2 + (2 sigma_b)^-2)^-1/2``."""
    if update_multiplier <= 0 or indicator_noise_stddev <= 0:
        raise PrivacyError("update_multiplier and indicator_noise_stddev must be > 0")
    return (update_multiplier**-2 + (2.0 * indicator_noise_stddev) ** -2) ** -0.5


def update_noise_multiplier(total_multiplier: float, indicator_noise_stddev: float) -> float:
    """The update-noise multiplier ``z_u`` that leaves total multiplier ``z`` overall.

    Raises:
        PrivacyError: ``2 sigma_b <= z``: the indicators alone would spend the budget.
    """
    if total_multiplier <= 0 or indicator_noise_stddev <= 0:
        raise PrivacyError("total_multiplier and indicator_noise_stddev must be > 0")
    rest = total_multiplier**-2 - (2.0 * indicator_noise_stddev) ** -2
    if rest <= 0:
        raise PrivacyError(
            f"indicator_noise_stddev {indicator_noise_stddev} is too small for total noise "
            f"multiplier {total_multiplier}: need 2 * sigma_b > z"
        )
    return rest**-0.5

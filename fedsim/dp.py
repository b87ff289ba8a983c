"""A run's differential-privacy plan: what to clip, how much noise, where, and epsilon.

Built once by the coordinator from the config (calibrating the noise multiplier
when ``privacy.target_epsilon`` is set) and handed to every party that needs it.

Client level (DP-FedAvg, McMahan et al. 2018): each client clips its delta (L2 for
Gaussian, L1 for Laplace) to ``clip`` and divides it by the fixed public denominator
m (clients per round; the expected count under Poisson sampling). Noise of scale
``clip * z`` is added to the sum, by the aggregator (``placement: aggregator``, the
seed paper's eq. 4; the aggregator then knows the noise it added) or as shares by the
clients (``placement: distributed``; calibrated so that ``min_clients`` shares already
make the full noise; more survivors add more noise, never less). The average is the
noised sum itself: dividing by the realised count would depend on who took part.

Record level (DP-SGD, Abadi et al. 2016): every client privatises its own training;
epsilon is per client and the worst client is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.config import RunConfig
from fedsim.privacy import (
    Accountant,
    AccountingSpec,
    NoiseSpec,
    RecordLevelSpec,
    calibrate_dpsgd_noise_multiplier,
    calibrate_noise_multiplier,
    central_noise,
    clip_update,
    noise_share,
)
from fedsim.seeding import stream

# Tail multiples of the noise scale below which every drawn value stays, with
# probability about 1 - 1e-15 per value (Gaussian) or e^-40 (Laplace).
_TAIL = {"gaussian": 8.0, "laplace": 40.0}


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything the parties need to apply DP; frozen, built by `plan_privacy`."""

    level: str
    mechanism: str
    placement: str
    clip: float
    noise_multiplier: float
    delta: float
    denominator: float
    min_clients: int
    calibrated: bool
    accounting: AccountingSpec | RecordLevelSpec

    @property
    def noise(self) -> NoiseSpec:
        return NoiseSpec(self.mechanism, self.clip, self.noise_multiplier)

    @property
    def update_bound(self) -> float:
        """Largest |value| a client's clipped (and noised) update can take, w.h.p."""
        if self.level == "record":
            return math.inf
        return self.clip + _TAIL[self.mechanism] * self.noise.scale

    def describe(self) -> str:
        how = "calibrated to the target" if self.calibrated else "as configured"
        where = {"aggregator": "by the aggregator",
                 "distributed": f"in shares by the clients (full noise from "
                                f"{self.min_clients} surviving clients)"}[self.placement]
        if self.level == "record":
            return (f"record-level DP-SGD: clip {self.clip:g}, noise multiplier "
                    f"{self.noise_multiplier:.4g} ({how}), delta {self.delta:g}")
        return (f"client-level {self.mechanism} DP: clip {self.clip:g}, noise multiplier "
                f"{self.noise_multiplier:.4g} ({how}), added {where}, delta {self.delta:g}")


def plan_privacy(cfg: RunConfig, num_clients: int, train_sizes: list[int]) -> PrivacyPlan | None:
    """The run's privacy plan, or None when DP is off."""
    p = cfg.privacy
    if not p.enabled:
        return None
    fed = cfg.federation
    m, n = fed.clients_per_round, num_clients
    if p.level == "record":
        rate = p.record_sampling_rate or min(1.0, cfg.train.batch_size / min(train_sizes))
        steps = cfg.train.local_steps or 1
        z = p.noise_multiplier
        if z is None:
            z = calibrate_dpsgd_noise_multiplier(p.target_epsilon, p.delta, fed.rounds,
                                                 sampling_rate=rate, steps_per_round=steps,
                                                 accountant=p.accountant)
        spec: AccountingSpec | RecordLevelSpec = RecordLevelSpec(
            noise_multiplier=z, sampling_rate=rate, steps_per_round=steps, delta=p.delta,
            accountant=p.accountant)
    else:
        sampling = {"poisson": {"sampling": "poisson", "sampling_probability": m / n},
                    "fixed": {"sampling": "fixed", "population": n, "sample_size": m}}
        kwargs = dict(mechanism=p.mechanism, accountant=p.accountant, **sampling[fed.sampling])
        z = p.noise_multiplier
        if z is None:
            z = calibrate_noise_multiplier(p.target_epsilon, p.delta, fed.rounds, **kwargs)
        spec = AccountingSpec(noise_multiplier=z, delta=p.delta, **kwargs)
    return PrivacyPlan(
        level=p.level, mechanism=p.mechanism if p.level == "client" else "gaussian",
        placement=p.placement, clip=float(p.clip), noise_multiplier=float(z), delta=p.delta,
        denominator=float(m), min_clients=fed.min_clients,
        calibrated=p.noise_multiplier is None, accounting=spec,
    )


def privatize_update(plan: PrivacyPlan, delta: np.ndarray, *, seed: int, round_idx: int,
                     client_index: int) -> tuple[np.ndarray, float]:
    """Client-level step on a client: clip, then add this client's noise share if any.

    Returns the vector to contribute (before division by the denominator) and the
    update's norm before clipping.
    """
    clipped, norm = clip_update(delta, plan.noise)
    if plan.placement == "distributed":
        rng = stream(seed, "dp-share", round_idx, client_index)
        clipped = clipped + noise_share(rng, clipped.size, plan.noise, plan.min_clients)
    return clipped, norm


def aggregator_noise(plan: PrivacyPlan, size: int, *, seed: int, round_idx: int) -> np.ndarray:
    """The whole noise for one round's sum, drawn by the aggregator (already / m)."""
    rng = stream(seed, "dp-central", round_idx)
    return central_noise(rng, size, plan.noise) / plan.denominator


class EpsilonLedger:
    """Epsilon spent after each round, from the plan's accountant."""

    def __init__(self, plan: PrivacyPlan) -> None:
        self.plan = plan
        self.accountant = Accountant(plan.accounting)
        self.participations: dict[str, int] = {}

    def after_round(self, round_idx: int, participants: tuple[str, ...]) -> float:
        if self.plan.level == "client":
            return self.accountant.epsilon_after(round_idx + 1)
        for name in participants:
            self.participations[name] = self.participations.get(name, 0) + 1
        worst = max(self.participations.values(), default=0)
        return self.accountant.epsilon_after(worst) if worst else 0.0

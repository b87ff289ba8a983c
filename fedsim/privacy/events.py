"""What a run does, privacy-wise, as dp-accounting ``DpEvent``s.

Two frozen, validated descriptions:

* :class:`AccountingSpec`, client level (one hospital is the privacy unit): every round
  samples clients, sums their clipped updates and adds noise of multiplier ``z``.
* :class:`RecordLevelSpec`, record level (one patient is the unit): DP-SGD inside a
  client, ``steps_per_round`` Poisson-sampled Gaussian steps per round it takes part in.

Per-round events (dp-accounting, Google), composed over rounds with
``SelfComposedDpEvent``:

* ``poisson``, q < 1: ``PoissonSampledDpEvent(q, GaussianDpEvent(z) | LaplaceDpEvent(z))``,
  neighbours differ by adding or removing one client.
* ``poisson``, q = 1 (every client, every round): ``GaussianDpEvent(z)`` or
  ``LaplaceDpEvent(z)``, add/remove.
* ``fixed`` (m of n): ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z / 2))``,
  neighbours differ by replacing one client.

Against a party that sees who took part (the coordinator and the aggregator), sampling
amplifies nothing: `AccountingSpec.participants` is the same spec with ``sampled=False``,
whose unit event is the base event alone (``GaussianDpEvent(z)``, or ``z / 2`` for the
replace-one relation of fixed-size sampling), composed over the rounds a client took part
in.

Fixed-size sampling is only analysed under the replace-one relation (n is public;
Wang, Balle and Kasiviswanathan 2019, Thm. 27). Replacing one client moves a sum of
updates clipped to ``C`` by up to ``2C``, and dp-accounting's RDP bound takes the
multiplier relative to that sensitivity, hence ``z / 2``.

Supported (anything else raises PrivacyError naming an alternative):

* RDP: Gaussian with Poisson or fixed sampling; Laplace only with q = 1.
* PLD: Gaussian or Laplace with Poisson sampling (any q); no fixed-size sampling.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Literal

import dp_accounting

from fedsim.errors import PrivacyError
from fedsim.privacy.mechanisms import mechanism_class

__all__ = [
    "ACCOUNTANTS",
    "SAMPLINGS",
    "AccountingSpec",
    "RecordLevelSpec",
    "dp_event",
    "dpsgd_event",
]

Sampling = Literal["poisson", "fixed"]
AccountantKind = Literal["rdp", "pld"]
SAMPLINGS: tuple[str, ...] = ("poisson", "fixed")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
NeighboringRelation = dp_accounting.NeighboringRelation


def _check_common(noise_multiplier: float, delta: float, accountant: str, pld_disc: float) -> None:
    if not (isinstance(delta, numbers.Real) and 0.0 < delta < 1.0):
        raise PrivacyError(f"delta: must be in (0, 1), got {delta}")
    if noise_multiplier is None or not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise PrivacyError(
            f"noise_multiplier: must be a finite number > 0 when DP is enabled, "
            f"got {noise_multiplier}"
        )
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"accountant: must be 'rdp' or 'pld', got {accountant!r}")
    if not (math.isfinite(pld_disc) and pld_disc > 0):
        raise PrivacyError(f"pld_discretization: must be > 0, got {pld_disc}")


def _check_q(q: float, name: str) -> None:
    if q is None or not (math.isfinite(q) and 0.0 < q <= 1.0):
        raise PrivacyError(f"{name}: sampling probability q must be in (0, 1], got {q}")


@dataclass(frozen=True)
class AccountingSpec:
    """Client-level DP of one round; validated (and checked supported) when built.

    Attributes:
        mechanism: a registered mechanism name (``"gaussian"``, ``"laplace"``, ...).
        noise_multiplier: ``z`` > 0, noise scale over the clip bound.
        delta: target delta in (0, 1).
        sampling: ``"poisson"`` (each client joins with probability
            ``sampling_probability``) or ``"fixed"`` (``sample_size`` of ``population``
            clients, uniformly without replacement).
        sampling_probability: q in (0, 1], for Poisson sampling.
        population, sample_size: n and m, for fixed-size sampling.
        accountant: ``"rdp"`` (Mironov 2017) or ``"pld"`` (Koskela et al. 2020;
            Doroshenko et al. 2022), the latter tighter but slower.
        pld_discretization: PLD value discretization interval (dp-accounting default).
        sampled: False for the view of a party that sees who took part: the unit event
            is the base event, with no amplification by sampling.
    """

    mechanism: str
    noise_multiplier: float
    delta: float
    sampling: Sampling = "poisson"
    sampling_probability: float | None = None
    population: int | None = None
    sample_size: int | None = None
    accountant: AccountantKind = "rdp"
    pld_discretization: float = 1e-4
    sampled: bool = True

    def __post_init__(self) -> None:
        mechanism_class(self.mechanism)
        _check_common(self.noise_multiplier, self.delta, self.accountant, self.pld_discretization)
        if self.sampling == "poisson":
            _check_q(self.sampling_probability, "sampling_probability")
        elif self.sampling == "fixed":
            n, m = self.population, self.sample_size
            if not (
                isinstance(n, numbers.Integral) and isinstance(m, numbers.Integral) and 1 <= m <= n
            ):
                raise PrivacyError(
                    f"sample_size: fixed sampling needs integers 1 <= sample_size <= "
                    f"population (q = m/n in (0, 1]), got sample_size={m}, population={n}"
                )
        else:
            raise PrivacyError(f"sampling: must be 'poisson' or 'fixed', got {self.sampling!r}")
        self._check_supported()

    def _check_supported(self) -> None:
        problem = mechanism_class(self.mechanism).unsupported(
            sampling=self.sampling, accountant=self.accountant,
            q=self.q if self.sampled else 1.0)
        if problem is not None:
            raise PrivacyError(problem)
        if self.sampling == "fixed" and self.sampled and self.accountant == "pld":
            raise PrivacyError(
                "sampling='fixed' is not supported by the PLD accountant (dp-accounting has "
                "no PLD for sampling without replacement); use accountant='rdp' or "
                "sampling='poisson'"
            )

    @property
    def q(self) -> float:
        """Probability that a given client takes part in a round."""
        if self.sampling == "fixed":
            return self.sample_size / self.population  # type: ignore[operator]
        return float(self.sampling_probability)  # type: ignore[arg-type]

    def participants(self) -> AccountingSpec:
        """This spec as seen by a party that sees who took part: no amplification."""
        return replace(self, sampled=False)

    @property
    def neighboring_relation(self) -> NeighboringRelation:
        """Add/remove one client (Poisson) or replace one client (fixed size); without
        sampling, the replace-one sensitivity 2C is in the halved multiplier instead."""
        if self.sampling == "fixed" and self.sampled:
            return NeighboringRelation.REPLACE_ONE
        return NeighboringRelation.ADD_OR_REMOVE_ONE

    @property
    def units_per_round(self) -> int:
        """Mechanism applications per round: one noised aggregate."""
        return 1

    def unit_event(self) -> dp_accounting.DpEvent:
        """The event of one round (see the module table)."""
        event_of = mechanism_class(self.mechanism).dp_event
        if not self.sampled:
            return event_of(self.noise_multiplier / (2.0 if self.sampling == "fixed" else 1.0))
        if self.sampling == "fixed":
            # Replacing one client moves the sum by up to 2C: the multiplier halves.
            return dp_accounting.SampledWithoutReplacementDpEvent(
                self.population, self.sample_size, event_of(self.noise_multiplier / 2.0))
        base = event_of(self.noise_multiplier)
        if self.q == 1.0:
            return base
        return dp_accounting.PoissonSampledDpEvent(self.q, base)


@dataclass(frozen=True)
class RecordLevelSpec:
    """Record-level DP of DP-SGD inside one client (Abadi et al. 2016).

    Each step Poisson-samples the client's records with ``sampling_rate`` (expected
    batch size over local examples), clips per-example gradients to L2 norm ``C`` and
    adds ``N(0, (C z)^2)`` to their sum; see ``fedsim.privacy.dpsgd``. Neighbouring
    datasets differ by adding or removing one patient record.

    Attributes:
        noise_multiplier: ``z`` > 0.
        sampling_rate: q = expected_batch_size / num_local_examples, in (0, 1].
        steps_per_round: local DP-SGD steps in each round the client takes part in.
        delta: target delta in (0, 1).
        accountant: ``"rdp"`` or ``"pld"``.
        pld_discretization: PLD value discretization interval.
        selection_noise_multiplier: the multiplier of the Gaussian partition selection
            of embedding rows that sparse DP-SGD runs once before training
            (`fedsim.privacy.sparse`), or None without it. It composes once with the
            steps of the rounds the client took part in.
    """

    noise_multiplier: float
    sampling_rate: float
    steps_per_round: int
    delta: float
    accountant: AccountantKind = "rdp"
    pld_discretization: float = 1e-4
    selection_noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        _check_common(self.noise_multiplier, self.delta, self.accountant, self.pld_discretization)
        _check_q(self.sampling_rate, "sampling_rate")
        if not (
            isinstance(self.steps_per_round, numbers.Integral)
            and not isinstance(self.steps_per_round, bool)
            and self.steps_per_round >= 1
        ):
            raise PrivacyError(
                f"steps_per_round: must be an integer >= 1, got {self.steps_per_round!r}"
            )
        z = self.selection_noise_multiplier
        if z is not None and not (math.isfinite(z) and z > 0):
            raise PrivacyError(f"selection_noise_multiplier: must be a finite number > 0, "
                               f"got {z}")

    @property
    def neighboring_relation(self) -> NeighboringRelation:
        return NeighboringRelation.ADD_OR_REMOVE_ONE

    @property
    def units_per_round(self) -> int:
        """Mechanism applications per round: one per DP-SGD step."""
        return self.steps_per_round

    def unit_event(self) -> dp_accounting.DpEvent:
        """The event of one DP-SGD step."""
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_rate == 1.0:
            return gaussian
        return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)


def _check_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 0:
        raise PrivacyError(f"rounds: must be an integer >= 0, got {rounds!r}")
    return int(rounds)


def selection_event(spec: AccountingSpec | RecordLevelSpec) -> dp_accounting.DpEvent | None:
    """The one-off event composed with the steps: sparse DP-SGD's Gaussian selection."""
    z = getattr(spec, "selection_noise_multiplier", None)
    return None if z is None else dp_accounting.GaussianDpEvent(z)


def _composed(spec: AccountingSpec | RecordLevelSpec, rounds: int) -> dp_accounting.DpEvent:
    count = _check_rounds(rounds) * spec.units_per_round
    if count == 0:  # a client that never took part released nothing, its selection neither
        return dp_accounting.NoOpDpEvent()
    steps = dp_accounting.SelfComposedDpEvent(spec.unit_event(), count)
    once = selection_event(spec)
    return steps if once is None else dp_accounting.ComposedDpEvent([once, steps])


def dp_event(spec: AccountingSpec, rounds: int) -> dp_accounting.DpEvent:
    """Client-level event of ``rounds`` rounds: the per-round event self-composed."""
    return _composed(spec, rounds)


def dpsgd_event(spec: RecordLevelSpec, rounds_participated: int) -> dp_accounting.DpEvent:
    """Record-level event of a client that took part in ``rounds_participated`` rounds.

    ``steps_per_round * rounds_participated`` Poisson-sampled Gaussian steps, and the
    selection of sparse DP-SGD once when the spec has one. Client sampling would
    amplify this further; it is ignored (a valid upper bound).
    """
    return _composed(spec, rounds_participated)

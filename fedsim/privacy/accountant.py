"""Epsilon spent so far, from dp-accounting, cheap enough to ask after every round.

* :func:`make_library_accountant` builds dp-accounting's own accountant (RDP or PLD)
  with the neighbouring relation the spec needs; :func:`epsilon` composes the whole
  event into a fresh one. This is the reference computation.
* :class:`Accountant` gives the same numbers (RDP: identical; PLD: equal to ~1e-7
  relative) without recomputing the expensive per-round part: the per-round RDP curve
  (Mironov 2017) or privacy loss distribution (Koskela et al. 2020; Doroshenko et al.
  2022) is built once, then scaled (RDP) or self-composed by FFT (PLD) for ``r`` rounds.
* :func:`calibrate_noise_multiplier` and :func:`calibrate_dpsgd_noise_multiplier` find
  the smallest multiplier meeting a target epsilon with dp-accounting's
  ``calibrate_dp_mechanism``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import dp_accounting
from dp_accounting import pld, rdp
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from fedsim.errors import PrivacyError
from fedsim.privacy.events import (
    AccountantKind,
    AccountingSpec,
    RecordLevelSpec,
    Sampling,
    _check_rounds,
    _composed,
    selection_event,
)

__all__ = [
    "Accountant",
    "calibrate_dpsgd_noise_multiplier",
    "calibrate_noise_multiplier",
    "calibrate_selection_noise_multiplier",
    "epsilon",
    "make_library_accountant",
    "selection_epsilon",
]

Spec = AccountingSpec | RecordLevelSpec


def make_library_accountant(spec: Spec) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant of the kind and relation ``spec`` needs."""
    if spec.accountant == "pld":
        return pld.PLDAccountant(
            neighboring_relation=spec.neighboring_relation,
            value_discretization_interval=spec.pld_discretization,
        )
    return rdp.RdpAccountant(neighboring_relation=spec.neighboring_relation)


def epsilon(spec: Spec, rounds: int) -> float:
    """Epsilon at ``spec.delta`` after ``rounds`` rounds, composed from scratch.

    For a :class:`RecordLevelSpec`, ``rounds`` counts the rounds the client took part in.
    """
    accountant = make_library_accountant(spec)
    accountant.compose(_composed(spec, rounds))
    return float(accountant.get_epsilon(spec.delta))


def _event_pld(event: dp_accounting.DpEvent, spec: Spec) -> pld_lib.PrivacyLossDistribution:
    """The PLD of one (Poisson-sampled) Gaussian or Laplace event, built exactly as
    ``PLDAccountant`` builds it, with ``spec``'s relation and discretization."""
    q = 1.0
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        q, event = event.sampling_probability, event.event
    disc = spec.pld_discretization
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return pld_lib.from_gaussian_mechanism(
            standard_deviation=event.noise_multiplier,
            value_discretization_interval=disc,
            sampling_prob=q,
            neighboring_relation=spec.neighboring_relation,
        )
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        return pld_lib.from_laplace_mechanism(
            parameter=event.noise_multiplier,
            value_discretization_interval=disc,
            sampling_prob=q,
        )
    raise PrivacyError(f"no PLD for event {event}; use accountant='rdp'")  # specs prevent this


class Accountant:
    """Epsilon after ``r`` rounds for a fixed spec, with the per-round work done once.

    ``epsilon_after(r)`` is a pure function of ``(spec, r)``, memoised; call it after
    every round with the number of rounds completed (client level) or taken part in
    (record level). Costs: RDP microseconds; PLD one FFT self-composition (~0.1-0.3 s).
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._cache: dict[int, float] = {}
        if spec.accountant == "rdp":
            unit = rdp.RdpAccountant(neighboring_relation=spec.neighboring_relation)
            unit.compose(spec.unit_event())
            self._orders, self._unit_rdp = unit.orders, unit.rdp
            self._once_rdp = 0.0
            once = selection_event(spec)
            if once is not None:
                single = rdp.RdpAccountant(neighboring_relation=spec.neighboring_relation)
                single.compose(once)
                self._once_rdp = single.rdp
        else:
            self._unit_pld = _event_pld(spec.unit_event(), spec)
            once = selection_event(spec)
            self._once_pld = None if once is None else _event_pld(once, spec)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at ``spec.delta`` after ``rounds`` rounds (0.0 for zero rounds)."""
        rounds = _check_rounds(rounds)
        if rounds not in self._cache:
            self._cache[rounds] = self._compute(rounds * self.spec.units_per_round)
        return self._cache[rounds]

    def _compute(self, count: int) -> float:
        if count == 0:
            return 0.0
        if self.spec.accountant == "rdp":
            # Same arithmetic as RdpAccountant.compose(SelfComposedDpEvent(e, count)), plus
            # the one-off selection's RDP (composition adds RDP order by order).
            eps, _ = rdp.compute_epsilon(self._orders, count * self._unit_rdp + self._once_rdp,
                                         self.spec.delta)
            return float(eps)
        composed = self._unit_pld.self_compose(count)
        if self._once_pld is not None:
            composed = composed.compose(self._once_pld)
        return float(composed.get_epsilon_for_delta(self.spec.delta))


def _calibrate(
    make_spec: Callable[[float], Spec], target_epsilon: float, rounds: int, tol: float
) -> float:
    if not (
        isinstance(target_epsilon, numbers.Real)
        and math.isfinite(target_epsilon)
        and target_epsilon > 0
    ):
        raise PrivacyError(f"target_epsilon: must be a finite number > 0, got {target_epsilon}")
    if _check_rounds(rounds) < 1:
        raise PrivacyError(f"rounds: calibration needs rounds >= 1, got {rounds}")
    if not (math.isfinite(tol) and tol > 0):
        raise PrivacyError(f"tol: must be > 0, got {tol}")
    template = make_spec(1.0)  # validates everything but the multiplier

    @functools.cache
    def eps_at(z: float) -> float:
        return epsilon(make_spec(z), rounds)

    # Bracket the answer by doubling/halving from z = 1 so that no evaluation strays far
    # below it (tiny multipliers make PLDs huge and slow).
    lo, hi = 1.0, 1.0
    if eps_at(1.0) > target_epsilon:
        while eps_at(hi) > target_epsilon:
            lo, hi = hi, 2.0 * hi
            if hi > 2.0**30:
                raise PrivacyError(
                    f"target_epsilon {target_epsilon} needs a noise multiplier above 2**30"
                )
    else:
        while eps_at(lo) <= target_epsilon:
            lo, hi = lo / 2.0, lo
            if lo < 1e-6:
                raise PrivacyError(
                    f"target_epsilon {target_epsilon} is met by any noise "
                    f"multiplier >= 1e-6; it protects nothing"
                )
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: make_library_accountant(template),
        lambda zz: _composed(make_spec(zz), rounds),
        target_epsilon,
        template.delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
        tol=tol,
    )
    return float(z)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    mechanism: str = "gaussian",
    sampling: Sampling = "poisson",
    sampling_probability: float | None = None,
    population: int | None = None,
    sample_size: int | None = None,
    accountant: AccountantKind = "rdp",
    pld_discretization: float = 1e-4,
    sampled: bool = True,
    tol: float = 1e-4,
) -> float:
    """Smallest client-level multiplier whose epsilon after ``rounds`` is <= target.

    ``sampled=False`` calibrates against a party that sees who took part (no
    amplification; a client may take part in every round).

    The result ``z`` satisfies ``epsilon(spec(z), rounds) <= target_epsilon`` and is
    within ``tol`` of the exact root (the contract of ``calibrate_dp_mechanism``).
    Keyword arguments are those of :class:`AccountingSpec`.

    Raises:
        PrivacyError: invalid target, delta, sampling or an unsupported combination.
    """

    def make_spec(z: float) -> AccountingSpec:
        return AccountingSpec(
            mechanism=mechanism,
            noise_multiplier=z,
            delta=delta,
            sampling=sampling,
            sampling_probability=sampling_probability,
            population=population,
            sample_size=sample_size,
            accountant=accountant,
            pld_discretization=pld_discretization,
            sampled=sampled,
        )

    return _calibrate(make_spec, target_epsilon, rounds, tol)


def calibrate_dpsgd_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    sampling_rate: float,
    steps_per_round: int,
    accountant: AccountantKind = "rdp",
    pld_discretization: float = 1e-4,
    tol: float = 1e-4,
    selection_noise_multiplier: float | None = None,
) -> float:
    """Smallest DP-SGD multiplier whose record-level epsilon after ``rounds`` is <= target.

    ``rounds`` is the number of rounds the client takes part in (at most the run's). With
    ``selection_noise_multiplier`` the target covers sparse DP-SGD's selection too; a
    selection that alone spends the target raises PrivacyError.
    """
    if selection_noise_multiplier is not None:
        alone = selection_epsilon(selection_noise_multiplier, delta, accountant=accountant,
                                  pld_discretization=pld_discretization)
        if alone >= target_epsilon:
            raise PrivacyError(
                f"the embedding-row selection alone spends epsilon {alone:.3g} of the target "
                f"{target_epsilon:g}; raise privacy.sparse.noise_multiplier or lower "
                f"privacy.sparse.epsilon_share")

    def make_spec(z: float) -> RecordLevelSpec:
        return RecordLevelSpec(
            noise_multiplier=z,
            sampling_rate=sampling_rate,
            steps_per_round=steps_per_round,
            delta=delta,
            accountant=accountant,
            pld_discretization=pld_discretization,
            selection_noise_multiplier=selection_noise_multiplier,
        )

    return _calibrate(make_spec, target_epsilon, rounds, tol)


def _gaussian_alone(delta: float, accountant: AccountantKind, pld_discretization: float
                    ) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant for one unsampled add/remove-one mechanism."""
    return make_library_accountant(
        RecordLevelSpec(1.0, 1.0, 1, delta, accountant, pld_discretization))


def selection_epsilon(noise_multiplier: float, delta: float, *,
                      accountant: AccountantKind = "rdp", pld_discretization: float = 1e-4
                      ) -> float:
    """Epsilon at ``delta`` of the Gaussian selection alone (one Gaussian mechanism of
    ``noise_multiplier``, add/remove-one), from a fresh dp-accounting accountant."""
    library = _gaussian_alone(delta, accountant, pld_discretization)
    library.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
    return float(library.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def calibrate_selection_noise_multiplier(epsilon: float, delta: float,
                                         accountant: AccountantKind = "rdp",
                                         pld_discretization: float = 1e-4) -> float:
    """The Gaussian selection's multiplier whose epsilon alone is at most ``epsilon``."""
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _gaussian_alone(delta, accountant, pld_discretization),
        dp_accounting.GaussianDpEvent, epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(0.1, 1e4), tol=1e-4))

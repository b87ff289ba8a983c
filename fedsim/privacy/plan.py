"""A run's differential-privacy plan: what to clip, how much noise, where, and epsilon.

Built once by the coordinator from the config (calibrating the noise multiplier when
``privacy.target_epsilon`` is set); it turns into the run's ordered steps
(`fedsim.aggregate.steps`) and, for record level, the clients' DP-SGD trainer.

Client level (`ClientLevelPlan`; DP-FedAvg, McMahan et al. 2018): each client clips its
delta in the mechanism's norm and divides it by the fixed public denominator m (clients
per round; the expected count under Poisson sampling). Noise of scale ``clip * z`` is
added to the sum by the aggregator or in shares by the clients (`fedsim.privacy.
placement`). The average is the noised sum itself: dividing by the realised count would
depend on who took part. With adaptive clipping (Andrew et al. 2021) the accountant
sees the total multiplier ``z`` and the update noise uses ``z_u > z``.

Record level (`RecordLevelPlan`; DP-SGD, Abadi et al. 2016): every client privatises its
own training at its own Poisson rate and multiplier (calibrated for its row count); each
epsilon is reported, the worst as ``epsilon``. With ``privacy.sparse`` the clients train
only rows they select privately (`fedsim.privacy.sparse`, `fedsim.learning.sparse`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, final

from fedsim.aggregate.steps import Step
from fedsim.aggregate.weighting import FixedDenominator, SampleWeighting
from fedsim.config import RunConfig
from fedsim.errors import ProtocolError
from fedsim.privacy.accountant import (
    calibrate_dpsgd_noise_multiplier,
    calibrate_noise_multiplier,
    calibrate_selection_noise_multiplier,
)
from fedsim.privacy.adaptive_clipping import AdaptiveClipSpec, update_noise_multiplier
from fedsim.privacy.events import AccountingSpec, RecordLevelSpec
from fedsim.privacy.mechanisms import Mechanism, make_mechanism
from fedsim.privacy.placement import AggregatorPlacement, DistributedPlacement
from fedsim.privacy.sparse import RowSelection
from fedsim.privacy.steps import ClientLevelAccounting, ClientLevelDP, RecordLevelAccounting

# privacy.placement -> the placement, given min_clients
PLACEMENTS = {"aggregator": lambda min_clients: AggregatorPlacement(),
              "distributed": DistributedPlacement}


@final
@dataclass(frozen=True)
class ClientLevelPlan:
    """Client-level DP; see the module docstring.

    ``noise_multiplier`` is the multiplier the accountant sees; ``mechanism`` carries
    the initial clip bound and the update noise's own multiplier (larger with adaptive
    clipping, which spends part of the budget on the clipping indicators).
    """

    mechanism: Mechanism
    placement: AggregatorPlacement | DistributedPlacement
    accounting: AccountingSpec
    noise_multiplier: float
    delta: float
    denominator: float
    min_clients: int
    calibrated: bool
    adaptive: AdaptiveClipSpec | None = None
    max_clip: float = math.inf
    against: str = "participants"
    secret: bool = True
    observer: Any = None  # ObserverView
    participants_bounded: bool = True  # False in plaintext: they see every update

    @property
    def clip(self) -> float:
        return self.mechanism.clip

    @property
    def observer_view(self) -> ObserverView:
        """What the sampling buys against an observer (amplified when not given)."""
        return self.observer or ObserverView(True, self.delta)

    @property
    def update_bound(self) -> float:
        """Largest |value| a client's clipped (and noised) update can take, w.h.p."""
        clip = self.max_clip if self.adaptive is not None else self.mechanism.clip
        return clip + self.mechanism.tail * self.mechanism.with_clip(clip).scale

    def steps(self, weight_norm: float) -> tuple[Step, ...]:
        dp = ClientLevelDP(self.mechanism, self.placement, self.denominator, self.adaptive,
                           self.max_clip)
        view = self.observer_view
        accounting = ClientLevelAccounting(self.accounting, self.against, view.amplified,
                                           view.delta, self.participants_bounded)
        return (dp, accounting, FixedDenominator(self.denominator, scale_vector=False))

    def trainer(self, model: Any, cfg: RunConfig, split: Any, secret: Any) -> Any:
        from fedsim.learning.train import LocalTrainer

        return LocalTrainer(model, cfg.train)

    def describe(self) -> str:
        how = "calibrated to the target" if self.calibrated else "as configured"
        where = self.placement.describe(self.min_clients)
        clip = f"clip {self.clip:g}"
        if self.adaptive is not None:
            clip = (f"adaptive clip from {self.clip:g} (target quantile "
                    f"{self.adaptive.target_quantile:g}, at most {self.max_clip:g})")
        caveats = ""
        if not self.participants_bounded:
            caveats += ("; plaintext: the coordinator and aggregator see every update (no "
                        "epsilon holds against them)")
        if not self.observer_view.amplified:
            caveats += f"; no amplification by sampling claimed: {self.observer_view.why}"
        return (f"client-level discrete {self.mechanism.name} DP: {clip}, noise multiplier "
                f"{self.noise_multiplier:.4g} ({how}, epsilon against {self.against}), added "
                f"{where}, delta {self.delta:g}{caveats}{_randomness(self.secret)}")

    def manifest(self) -> Mapping[str, Any]:
        view = self.observer_view
        out = {"plan": self.describe(), "level": "client", "mechanism": self.mechanism.name,
               "observer_amplified": view.amplified, "observer_delta": view.delta,
               "participants_bounded": self.participants_bounded,
               "noise": f"discrete {self.mechanism.name} on a power-of-two lattice",
               "noise_multiplier": self.noise_multiplier, "clip": self.clip,
               "delta": self.delta, "calibrated": self.calibrated,
               "epsilon_against": self.against, **_randomness_fields(self.secret)}
        if not view.amplified:
            out["observer_not_amplified"] = view.why
        if self.adaptive is not None:
            out["update_noise_multiplier"] = self.mechanism.noise_multiplier
        return out


@final
@dataclass(frozen=True)
class RecordLevelPlan:
    """Record-level DP-SGD inside every client; see the module docstring.

    ``hospitals``: each hospital's `RecordLevelSpec` (its own Poisson rate and noise
    multiplier, calibrated to the target from its own row count), as the coordinator
    accounts for it. A hospital never takes its spec from here: it derives it from its
    own config and rows (`hospital_spec`), so a coordinator cannot thin its noise.
    ``selection``: sparse DP-SGD's row selection (`fedsim.privacy.sparse`), or None.
    """

    hospitals: tuple[tuple[str, RecordLevelSpec], ...]
    clip: float
    delta: float
    calibrated: bool
    selection: RowSelection | None = None
    secret: bool = True

    update_bound = None  # DP-SGD bounds no single update: crypto.update_bound applies

    @property
    def noise_multiplier(self) -> float:
        """The largest of the hospitals' multipliers (one number for tables)."""
        return max(spec.noise_multiplier for _, spec in self.hospitals)

    def steps(self, weight_norm: float) -> tuple[Step, ...]:
        return (RecordLevelAccounting(self.hospitals), SampleWeighting(weight_norm))

    def trainer(self, model: Any, cfg: RunConfig, split: Any, secret: Any) -> Any:
        """The hospital's DP-SGD trainer, from its own ``cfg`` and training ``split``;
        ``secret`` is its source for the row selection's noise."""
        spec, clip = hospital_spec(cfg, len(split)), float(cfg.privacy.clip)
        selection = _selection(cfg)
        if selection is None:
            from fedsim.learning.train import DPSGDTrainer

            return DPSGDTrainer(model, cfg.train, clip, spec, len(split))
        from fedsim.learning.sparse import SparseDPSGDTrainer

        selected = selection.select(split.codes, model.vocab_size, secret)
        return SparseDPSGDTrainer(model, cfg.train, clip=clip, spec=spec,
                                  num_examples=len(split), selected=selected)

    def describe(self) -> str:
        how = "calibrated per hospital to the target" if self.calibrated else "as configured"
        zs = [spec.noise_multiplier for _, spec in self.hospitals]
        qs = [spec.sampling_rate for _, spec in self.hospitals]
        sparse = "" if self.selection is None else (
            f", sparse: rows selected with multiplier {self.selection.noise_multiplier:g} "
            f"over at most {self.selection.max_codes} codes a record")
        return (f"record-level DP-SGD: clip {self.clip:g}, noise multiplier "
                f"{min(zs):.4g}-{max(zs):.4g} at sampling rates {min(qs):.3g}-{max(qs):.3g} "
                f"({how}), delta {self.delta:g}{sparse}{_randomness(self.secret)}")

    def manifest(self) -> Mapping[str, Any]:
        out = {"plan": self.describe(), "level": "record",
               "noise_multiplier": self.noise_multiplier, "clip": self.clip,
               "delta": self.delta, "calibrated": self.calibrated,
               "hospitals": {name: {"sampling_rate": spec.sampling_rate,
                                    "noise_multiplier": spec.noise_multiplier,
                                    "steps_per_round": spec.steps_per_round}
                             for name, spec in self.hospitals},
               **_randomness_fields(self.secret)}
        if self.selection is not None:
            out["sparse"] = {"noise_multiplier": self.selection.noise_multiplier,
                             "max_codes": self.selection.max_codes,
                             "threshold": self.selection.threshold}
        return out


def trainer_for(cfg: RunConfig, privacy: PrivacyPlan | None, model: Any, data: Any,
                secret: Any) -> Any:
    """A hospital's local trainer from its own ``cfg``; ``secret`` is its source for the
    row selection. A hospital whose config asks for record-level DP-SGD refuses a plan
    that is not one (a coordinator cannot switch its noise off)."""
    if cfg.privacy.record_level and type(privacy) is not RecordLevelPlan:
        raise ProtocolError(f"hospital {data.name} refuses to train without the "
                            "record-level DP-SGD its config requires")
    if privacy is None:
        from fedsim.learning.train import LocalTrainer

        return LocalTrainer(model, cfg.train)
    return privacy.trainer(model, cfg, data.train, secret)


INSECURE = ("INSECURE: DP noise and sampling derived from the run seed "
            "(privacy.insecure_seeded_noise); anyone with the config can remove the noise")


def _randomness(secret: bool) -> str:
    return "" if secret else f"; {INSECURE}"


def _randomness_fields(secret: bool) -> dict[str, Any]:
    if secret:
        return {"randomness": "OS CSPRNG of the party adding it (never derived or sent)"}
    return {"randomness": "seeded", "insecure": INSECURE}


PrivacyPlan = ClientLevelPlan | RecordLevelPlan


def plan_privacy(cfg: RunConfig, num_clients: int, train_sizes: list[int],
                 names: list[str] | None = None) -> PrivacyPlan | None:
    """The run's privacy plan, or None when DP is off. ``names`` (default
    ``client-<i>``) are the clients ``train_sizes`` belong to, in order."""
    p = cfg.privacy
    if not p.enabled:
        return None
    names = list(names) if names is not None else [f"client-{i}" for i in range(num_clients)]
    return _PLANNERS[p.level](cfg, names, train_sizes)


def hospital_spec(cfg: RunConfig, num_examples: int) -> RecordLevelSpec:
    """One hospital's DP-SGD spec from its config and its training row count: Poisson
    rate ``privacy.record_sampling_rate``, else its expected batch
    (``privacy.record_batch_size``, default ``train.batch_size``) over its rows; the
    multiplier as configured, else calibrated so that the hospital's epsilon after
    taking part in every round (its selection included) meets the target."""
    from fedsim.learning.train import local_steps

    p, fed = cfg.privacy, cfg.federation
    batch = p.record_batch_size or cfg.train.batch_size
    rate = p.record_sampling_rate or min(1.0, batch / num_examples)
    steps = local_steps(cfg.train, num_examples)
    zs = selection_multiplier(cfg)
    z = p.noise_multiplier
    if z is None:
        z = _calibrated(p.target_epsilon, p.delta, fed.rounds, rate, steps, p.accountant, zs)
    return RecordLevelSpec(noise_multiplier=float(z), sampling_rate=rate,
                           steps_per_round=steps, delta=p.delta, accountant=p.accountant,
                           selection_noise_multiplier=zs)


@functools.lru_cache(maxsize=256)
def _calibrated(target: float, delta: float, rounds: int, rate: float, steps: int,
                accountant: str, selection: float | None) -> float:
    return calibrate_dpsgd_noise_multiplier(target, delta, rounds, sampling_rate=rate,
                                            steps_per_round=steps, accountant=accountant,
                                            selection_noise_multiplier=selection)


def _record_level(cfg: RunConfig, names: list[str], train_sizes: list[int]
                  ) -> RecordLevelPlan:
    p = cfg.privacy
    hospitals = tuple((name, hospital_spec(cfg, size))
                      for name, size in zip(names, train_sizes, strict=True))
    return RecordLevelPlan(hospitals, float(p.clip), p.delta, p.noise_multiplier is None,
                           _selection(cfg), secret=not p.insecure_seeded_noise)


def _selection(cfg: RunConfig) -> RowSelection | None:
    s = cfg.privacy.sparse
    return (None if s is None else
            RowSelection(selection_multiplier(cfg), s.max_codes, s.threshold))


def selection_multiplier(cfg: RunConfig) -> float | None:
    """The row selection's multiplier: as configured, else the one whose epsilon alone
    is ``privacy.sparse.epsilon_share`` of the target; None without sparse DP-SGD."""
    p = cfg.privacy
    if p.sparse is None:
        return None
    if p.sparse.noise_multiplier is not None:
        return float(p.sparse.noise_multiplier)
    return calibrate_selection_noise_multiplier(p.sparse.epsilon_share * p.target_epsilon,
                                                p.delta, p.accountant)


def _client_level(cfg: RunConfig, names: list[str], train_sizes: list[int]
                  ) -> ClientLevelPlan:
    p, fed = cfg.privacy, cfg.federation
    m, n = fed.clients_per_round, len(names)
    sampling = {"poisson": {"sampling": "poisson", "sampling_probability": m / n},
                "fixed": {"sampling": "fixed", "population": n, "sample_size": m}}
    kwargs = dict(mechanism=p.mechanism, accountant=p.accountant, **sampling[fed.sampling])
    observer = observer_view(cfg, n)
    z = p.noise_multiplier
    if z is None:
        # Against the participants: no amplification, a client in every round. Against
        # the observer, the smaller multiplier of the sampled bound and that one: the
        # reported figure is the smaller of the two bounds (`ClientLevelAccounting`).
        z = calibrate_noise_multiplier(p.target_epsilon, p.delta, fed.rounds, sampled=False,
                                       **kwargs)
        if p.epsilon_against == "observer" and observer.amplified:
            z = min(z, calibrate_noise_multiplier(p.target_epsilon, observer.delta,
                                                  fed.rounds, sampled=True, **kwargs))
    spec = AccountingSpec(noise_multiplier=z, delta=p.delta, **kwargs)
    adaptive, update_z, max_clip = None, float(z), math.inf
    if p.adaptive_clipping is not None:
        a = p.adaptive_clipping
        sigma_b = a.indicator_noise_stddev or m / 20.0
        adaptive = AdaptiveClipSpec(a.target_quantile, a.learning_rate, sigma_b)
        update_z = update_noise_multiplier(float(z), sigma_b)
        max_clip = a.max_clip
    return ClientLevelPlan(
        mechanism=make_mechanism(p.mechanism, float(p.clip), update_z),
        placement=PLACEMENTS[p.placement](fed.min_clients),
        accounting=spec, noise_multiplier=float(z), delta=p.delta, denominator=float(m),
        min_clients=fed.min_clients, calibrated=p.noise_multiplier is None,
        adaptive=adaptive, max_clip=max_clip, against=p.epsilon_against,
        secret=not p.insecure_seeded_noise, observer=observer,
        participants_bounded=fed.encrypted,
    )


@final
@dataclass(frozen=True)
class ObserverView:
    """What the secret sampling buys against an observer of the released models.

    ``amplified``: whether ``epsilon_observer`` credits the sampling, at ``delta`` (the
    run's delta less what skipped rounds may reveal); ``why`` says why not, if not.
    """

    amplified: bool
    delta: float
    why: str = ""


def observer_view(cfg: RunConfig, num_clients: int) -> ObserverView:
    """When amplification by sampling holds against an observer of the models.

    * Distributed noise under Poisson sampling: the noise variance grows with the
      number of contributors, so a client's presence changes the output's variance
      (the Renyi divergence of the mixture is unbounded at orders above about
      ``min_clients + 1``): no amplification is claimed.
    * Poisson rounds skipped (fewer than ``min_clients``, or more than the sum's cap,
      sampled) release that they were skipped. Whether a client's presence decides the
      skip depends only on the count ``k`` of the others sampled: it does iff
      ``k = min_clients - 1`` or ``k = cap``. That event's probability, summed over
      the rounds, is taken out of delta (a union bound); if it exceeds half of delta,
      no amplification is claimed.
    """
    from scipy import stats

    from fedsim.protocol.sampling import max_contributors

    p, fed = cfg.privacy, cfg.federation
    m, n = fed.clients_per_round, num_clients
    if fed.sampling != "poisson" or m >= n:
        return ObserverView(True, p.delta)
    if p.noise_in_shares:
        return ObserverView(False, p.delta, "distributed noise under Poisson sampling: the "
                            "noise variance reveals how many took part")
    others = stats.binom(n - 1, m / n)
    decisive = float(others.pmf(fed.min_clients - 1) + others.pmf(max_contributors(cfg, n)))
    spent = fed.rounds * decisive
    if spent > p.delta / 2:
        return ObserverView(False, p.delta, f"a round skipped for too few sampled clients "
                            f"would reveal a client's presence (probability {spent:.2g} over "
                            f"the run, above delta/2)")
    return ObserverView(True, p.delta - spent)


_PLANNERS = {"client": _client_level, "record": _record_level}

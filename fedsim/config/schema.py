"""The whole run configuration: one frozen `RunConfig` of the sections in
`fedsim.config.sections`, with the checks that span sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedsim.config.sections import (
    CryptoConfig,
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    ModelConfig,
    PrivacyConfig,
    ResourcesConfig,
    TrainConfig,
)
from fedsim.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; frozen and validated on construction."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    crypto: CryptoConfig = field(default_factory=CryptoConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def __post_init__(self) -> None:
        fed = self.federation
        if fed.min_clients > fed.clients_per_round:
            raise ConfigError(
                f"federation.min_clients: {fed.min_clients} is more than "
                f"federation.clients_per_round ({fed.clients_per_round})"
            )
        p = self.privacy
        if p.enabled and p.sparse is not None and fed.max_restarts != 0:
            raise ConfigError(
                "federation.max_restarts: a run with privacy.sparse cannot restart its "
                "parties (each rebuilt hospital would select its rows again, a cost its "
                "epsilon does not count); set federation.max_restarts: 0")
        if p.enabled and p.sparse is not None and self.model.bag != "sum":
            raise ConfigError("privacy.sparse: sparse DP-SGD needs model.bag 'sum' (a mean "
                              "bag divides frozen and trained rows by different counts)")
        if p.client_level and not fed.encrypted \
                and p.target_epsilon is not None and p.epsilon_against == "participants":
            raise ConfigError(
                "privacy.epsilon_against: in plaintext mode the coordinator and aggregator "
                "see every update, so no epsilon holds against them; use federation.mode=he, "
                "or privacy.epsilon_against=observer (a party that sees only the models)")
        if p.client_level and p.adaptive_clipping is not None and not p.noise_in_shares:
            raise ConfigError(
                "privacy.adaptive_clipping: with placement 'aggregator' the aggregator would "
                "learn the unnoised count of clipped clients from the public clip bound and "
                "its own indicator noise; use privacy.placement=distributed")
        if self.privacy.enabled and self.privacy.level == "record":
            if self.train.local_steps is None:
                raise ConfigError("privacy.level: record-level DP-SGD needs train.local_steps")
            if fed.clients == "cohort":
                raise ConfigError("privacy.level: record-level DP-SGD runs one client per "
                                  "actor; use federation.clients: hospital")
        if self.evaluation.noise_stddev is not None and not self.evaluation.federated_in(fed):
            raise ConfigError("evaluation.noise_stddev: DP on the evaluation histograms needs "
                              "federated evaluation (federation.mode: he, hospital clients)")
        if self.evaluation.federated and not (fed.encrypted and fed.clients == "hospital"):
            raise ConfigError(
                "evaluation.federated: federated evaluation sums the hospitals' encrypted "
                "score histograms, so it needs federation.mode: he and federation.clients: "
                "hospital (plaintext runs and cohorts are scored by the coordinator)")
        n = self.num_hospitals
        if n is not None and fed.clients_per_round > n:
            raise ConfigError(
                f"federation.clients_per_round: {fed.clients_per_round} sampled clients but "
                f"only {n} hospitals"
            )
        if n is not None and fed.clients == "cohort" and fed.cohorts > n:
            raise ConfigError(f"federation.cohorts: {fed.cohorts} cohorts but only {n} clients")

    @property
    def num_hospitals(self) -> int | None:
        """Number of clients when known from the config alone."""
        if self.data.hospitals is not None:
            return len(self.data.hospitals)
        if self.data.source == "synthetic":
            return self.data.synth.num_hospitals
        if self.data.source == "teacher":
            return self.data.teacher.num_clients
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML or JSON."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_config"):
            return _plain(value.to_config())
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

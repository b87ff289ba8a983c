"""The sections of a run configuration: frozen dataclasses, validated when built.

Every problem is a `ConfigError` naming the dotted key, e.g. ``train.lr: must be > 0,
got -0.1``. Names that select a pluggable piece (a crypto profile, a DP mechanism, a
server optimizer) are checked against that piece's registry, so adding a piece never
means editing this file. `fedsim.config.schema.RunConfig` holds one of each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedsim.config.evaluation import EvaluationConfig  # noqa: F401 (re-exported)
from fedsim.config.privacy import (  # noqa: F401 (re-exported)
    AdaptiveClippingConfig,
    PrivacyConfig,
    SparseConfig,
)
from fedsim.config.resources import ResourcesConfig, ResourceSpec  # noqa: F401 (re-exported)
from fedsim.data.loader import ColumnSpec
from fedsim.errors import ConfigError


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic EHR generator settings (see `fedsim.data.SynthSpec`)."""

    num_hospitals: int = 5
    patients_per_hospital: int = 2000
    vocab_size: int = 24428
    mean_codes: float = 12.0
    zipf_exponent: float = 1.1
    numeric_features: bool = True
    site_shift: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "num_hospitals", "patients_per_hospital", "vocab_size", "mean_codes")
        if not (math.isfinite(self.site_shift) and self.site_shift >= 0):
            raise ConfigError(f"data.synth.site_shift: must be a number >= 0, got "
                              f"{self.site_shift}")


@dataclass(frozen=True)
class TeacherConfig:
    """Many small tabular clients labelled by a hidden linear teacher (W2; see
    `fedsim.data.TeacherSpec`): a held-out test set stands apart from every client."""

    num_clients: int = 1000
    samples_per_client: int = 50
    features: int = 64
    label_noise: float = 0.10
    test_samples: int = 2000

    def __post_init__(self) -> None:
        _positive(self, "num_clients", "samples_per_client", "features", "test_samples")
        if not 0 <= self.label_noise < 0.5:
            raise ConfigError(f"data.teacher.label_noise: must be in [0, 0.5), got "
                              f"{self.label_noise}")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from: ``synthetic`` EHR (generated in memory), a Parquet/CSV
    ``file``, or ``teacher`` tabular clients (the many-small-clients workload)."""

    source: Literal["synthetic", "file", "teacher"] = "synthetic"
    path: str | None = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    hospitals: tuple[str, ...] | None = None
    vocab_size: int | None = None
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    # Numeric features' scale: each hospital's own training statistics, the pooled
    # ones opened by secure federated statistics (`fedsim.protocol.summary`), or raw.
    standardize: Literal["per_hospital", "federated", "none"] = "per_hospital"
    statistics_min_rows: int = 10  # a hospital with fewer training rows refuses them
    # Categories held by fewer pooled training records fold into one "name=other"
    # feature, decided from the federated statistics (0: keep every declared one).
    min_category_count: int = 0

    def __post_init__(self) -> None:
        if self.statistics_min_rows < 1:
            raise ConfigError(f"data.statistics_min_rows: expected an integer >= 1, got "
                              f"{self.statistics_min_rows}")
        if self.min_category_count < 0:
            raise ConfigError(f"data.min_category_count: expected an integer >= 0, got "
                              f"{self.min_category_count}")
        if self.min_category_count and self.standardize != "federated":
            raise ConfigError("data.min_category_count: rare categories are found from the "
                              "federated statistics; set data.standardize: federated")
        if self.columns.categorical and self.source != "file":
            raise ConfigError("data.columns.categorical: only a data file has categorical "
                              "columns (data.source: file)")
        if self.source == "file" and not self.path:
            raise ConfigError("data.path: required when data.source is 'file'")
        if self.hospitals is not None and len(self.hospitals) == 0:
            raise ConfigError("data.hospitals: the hospital list is empty; omit it to use all")
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"data.fractions: train/val/test fractions must be >= 0 and sum to 1, "
                f"got {list(self.fractions)}"
            )
        if self.fractions[0] == 0 or self.fractions[2] == 0:
            raise ConfigError("data.fractions: train and test fractions must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    """MLP whose first layer is an embedding-bag over medical codes."""

    depth: int = 2
    width: int = 64
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    bag: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        _positive(self, "depth", "width")


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each client. ``shuffle: false`` takes batches in data order."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.001
    batch_size: int = 128
    local_steps: int | None = 200
    local_epochs: float | None = None
    prox_mu: float = 0.0
    shuffle: bool = True

    def __post_init__(self) -> None:
        _positive(self, "lr", "batch_size")
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ConfigError("train: set exactly one of train.local_steps and train.local_epochs")
        if self.local_steps is not None and self.local_steps <= 0:
            raise ConfigError(f"train.local_steps: must be > 0, got {self.local_steps}")
        if self.local_epochs is not None and self.local_epochs <= 0:
            raise ConfigError(f"train.local_epochs: must be > 0, got {self.local_epochs}")
        if self.prox_mu < 0:
            raise ConfigError(f"train.prox_mu: must be >= 0, got {self.prox_mu}")


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """A server optimizer by name with its keyword options.

    In YAML: ``server_optimizer: fedavg`` or ``server_optimizer: {name: adam,
    learning_rate: 0.01, b2: 0.99}``. The name is a fedsim preset (``fedavg``,
    ``fedadam``, ``fedyogi``, ``fedadagrad``, ``fedavgm``, or one registered with
    `fedsim.aggregate.register_server_optimizer`) or any optax optimizer alias; the
    options are checked against that function's signature.
    """

    name: str = "fedavg"
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        from fedsim.aggregate.optimizers import check_options

        check_options(self.name, dict(self.options), key="federation.server_optimizer")

    @classmethod
    def from_config(cls, value: Any, key: str) -> ServerOptimizerConfig:
        """Build from a name or a mapping ``{name: ..., <option>: ...}``."""
        if isinstance(value, str):
            return cls(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected an optimizer name or a mapping with 'name', "
                              f"got {type(value).__name__} {value!r}")
        if not isinstance(value.get("name"), str):
            raise ConfigError(f"{key}.name: required, the server optimizer's name "
                              "(e.g. fedavg, fedadam, adam, yogi)")
        from fedsim.config.coerce import parse_number

        options = {k: parse_number(v) if isinstance(v, str) else v
                   for k, v in value.items() if k != "name"}
        return cls(value["name"], tuple(sorted(options.items())))

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}


@dataclass(frozen=True)
class FederationConfig:
    """Rounds, clients, sampling and the server optimizer.

    ``clients: hospital`` runs one actor per client; ``clients: cohort`` simulates the
    clients in ``cohorts`` actors that train their sampled clients together with
    ``jax.vmap`` (thousands of small clients). Both go through the same round loop.
    """

    mode: Literal["plaintext", "he"] = "plaintext"
    rounds: int = 20
    clients_per_round: int = 3
    sampling: Literal["fixed", "poisson"] = "fixed"
    min_clients: int = 2
    server_optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    clients: Literal["hospital", "cohort"] = "hospital"
    cohorts: int = 1
    # Seconds from the round's start that the clients have to report; late clients are
    # dropped from the round (None: no deadline).
    round_timeout_s: float | None = None
    # Times a run restarts every party from its last checkpoint after losing one (a
    # client's, the aggregator's or, in n-of-n, a key holder's process); 0: stop instead.
    max_restarts: int = 3
    # A round with fewer than min_clients valid updates: run it again with every party
    # restarted (retry, at most max_restarts times), release nothing (skip), or stop.
    on_short_round: Literal["retry", "skip", "fail"] = "retry"

    hospital_parties = property(lambda self: self.clients == "hospital")  # not cohorts

    @property
    def encrypted(self) -> bool:
        """Updates are encrypted (he mode): only key holders together open a sum."""
        return self.mode == "he"

    def __post_init__(self) -> None:
        _positive(self, "rounds", "clients_per_round", "min_clients", "cohorts")
        if self.max_restarts < 0:
            raise ConfigError(f"federation.max_restarts: must be >= 0, got {self.max_restarts}")
        if self.round_timeout_s is not None:
            _positive(self, "round_timeout_s")
        if self.encrypted and self.min_clients < 2:
            raise ConfigError(
                f"federation.min_clients: must be >= 2 in he mode, got {self.min_clients}: "
                "the key holders would decrypt a sum of one update, that hospital's own "
                "update in plaintext")


@dataclass(frozen=True)
class CryptoConfig:
    """Threshold CKKS settings (used when federation.mode is 'he').

    ``statistical_security`` is the flooding's s (at least 30, OpenFHE's minimum; every
    2 bits more cost one bit of precision). A profile that does not flood decryption
    shares (``fast``) runs only with ``accept_unflooded_decryption: true``.
    """

    profile: str = "secure"
    allow_insecure: bool = False
    key_holders: int = 3
    threshold: int | None = None
    update_bound: float = 1.0
    statistical_security: int = 30
    accept_unflooded_decryption: bool = False

    def __post_init__(self) -> None:
        from fedsim.crypto.profiles import get_profile, profile_names

        _registered(self.profile, profile_names(), "crypto.profile")
        profile = get_profile(self.profile)
        if not self.update_bound > 0:
            raise ConfigError(f"crypto.update_bound: must be > 0, got {self.update_bound}")
        if self.key_holders < 2:
            raise ConfigError(f"crypto.key_holders: need at least 2, got {self.key_holders}")
        if self.threshold is not None and not (
            self.key_holders / 2 < self.threshold <= self.key_holders
        ):
            raise ConfigError(
                f"crypto.threshold: must satisfy key_holders/2 < threshold <= key_holders "
                f"(Shamir sharing needs a majority), got threshold {self.threshold} "
                f"with {self.key_holders} key holders"
            )
        if profile.insecure and not self.allow_insecure:
            raise ConfigError(
                f"crypto.profile: {self.profile!r} is an insecure ring; set "
                "crypto.allow_insecure: true to use it"
            )
        if not profile.flooding and not self.accept_unflooded_decryption:
            raise ConfigError(
                f"crypto.profile: {self.profile!r} does not flood decryption shares, so a "
                "decrypted sum may leak key material (Li and Micciancio 2021): not "
                "provably secure; set crypto.accept_unflooded_decryption: true to run it")
        if self.statistical_security < 30:
            raise ConfigError(f"crypto.statistical_security: must be >= 30 (OpenFHE's "
                              f"minimum), got {self.statistical_security}")


def _registered(name: str, names: tuple[str, ...], key: str) -> None:
    if name not in names:
        allowed = ", ".join(repr(n) for n in names)
        raise ConfigError(f"{key}: must be one of {allowed}, got {name!r}")


def _positive(obj: Any, *names: str) -> None:
    section = _SECTION_OF.get(type(obj), "")
    for name in names:
        value = getattr(obj, name)
        if not value > 0:  # NaN too
            raise ConfigError(f"{section}{name}: must be > 0, got {value}")


_SECTION_OF: dict[type, str] = {
    SynthConfig: "data.synth.",
    TeacherConfig: "data.teacher.",
    ModelConfig: "model.",
    TrainConfig: "train.",
    FederationConfig: "federation.",
}

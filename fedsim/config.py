"""Frozen, typed run configuration; the only module that reads YAML.

A config file is a nested mapping whose sections match the dataclasses below.
`load_config(path, overrides)` builds and validates it; every problem is a
`ConfigError` naming the dotted key, e.g. ``train.lr: must be > 0, got -0.1``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

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

    def __post_init__(self) -> None:
        _positive(self, "num_hospitals", "patients_per_hospital", "vocab_size", "mean_codes")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from: `synthetic` (generated in memory) or a Parquet/CSV path."""

    source: Literal["synthetic", "file"] = "synthetic"
    path: str | None = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    hospitals: tuple[str, ...] | None = None
    vocab_size: int | None = None
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)

    def __post_init__(self) -> None:
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
    """Local training on each client."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.001
    batch_size: int = 128
    local_steps: int | None = 200
    local_epochs: float | None = None
    prox_mu: float = 0.0

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
class FederationConfig:
    """Rounds, client sampling and the server optimizer."""

    mode: Literal["plaintext", "he"] = "plaintext"
    rounds: int = 20
    clients_per_round: int = 3
    sampling: Literal["fixed", "poisson"] = "fixed"
    min_clients: int = 2
    server_optimizer: Literal["fedavg", "fedadam"] = "fedavg"
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "rounds", "clients_per_round", "min_clients", "server_lr")


@dataclass(frozen=True)
class CryptoConfig:
    """Threshold CKKS settings (used when federation.mode is 'he')."""

    profile: Literal["secure", "fast", "test"] = "secure"
    allow_insecure: bool = False
    key_holders: int = 3
    threshold: int | None = None
    update_bound: float = 1.0

    def __post_init__(self) -> None:
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
        if self.profile == "test" and not self.allow_insecure:
            raise ConfigError(
                "crypto.profile: 'test' is an insecure ring; set crypto.allow_insecure: true "
                "to use it"
            )


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy (client level and record level)."""

    enabled: bool = False
    level: Literal["client", "record"] = "client"
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    placement: Literal["aggregator", "distributed"] = "aggregator"
    clip: float | None = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: Literal["rdp", "pld"] = "rdp"
    record_sampling_rate: float | None = None

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if self.clip is None or not self.clip > 0:
            raise ConfigError("privacy.clip: noise without clipping has no stated guarantee; "
                              "set privacy.clip > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta: must be in (0, 1), got {self.delta}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("privacy: set exactly one of privacy.noise_multiplier and "
                              "privacy.target_epsilon")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"privacy.target_epsilon: must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(
                f"privacy.noise_multiplier: must be > 0, got {self.noise_multiplier}")
        if self.record_sampling_rate is not None and not 0 < self.record_sampling_rate <= 1:
            raise ConfigError(f"privacy.record_sampling_rate: must be in (0, 1], got "
                              f"{self.record_sampling_rate}")
        if self.level == "record" and self.mechanism != "gaussian":
            raise ConfigError("privacy.mechanism: record-level DP-SGD uses 'gaussian'")


@dataclass(frozen=True)
class ResourceSpec:
    """Ray resources for one actor of a role."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("resources: num_cpus and num_gpus must be >= 0")


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-role Ray resources and placement."""

    client: ResourceSpec = field(default_factory=ResourceSpec)
    aggregator: ResourceSpec = field(default_factory=lambda: ResourceSpec(num_cpus=0.5))
    keyholder: ResourceSpec = field(default_factory=lambda: ResourceSpec(num_cpus=0.5))
    placement_timeout_s: float = 60.0
    # Key holders on distinct nodes, so one machine's compromise yields no quorum.
    # strict: refuse to start on fewer nodes than key holders; best_effort: warn.
    keyholder_spread: Literal["strict", "best_effort"] = "best_effort"

    def __post_init__(self) -> None:
        if not self.placement_timeout_s > 0:
            raise ConfigError(f"resources.placement_timeout_s: must be > 0, "
                              f"got {self.placement_timeout_s}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; frozen and validated on construction."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
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
        if self.privacy.enabled and self.privacy.level == "record" and \
                self.train.local_steps is None:
            raise ConfigError("privacy.level: record-level DP-SGD needs train.local_steps")
        n = self.num_hospitals
        if n is not None and fed.clients_per_round > n:
            raise ConfigError(
                f"federation.clients_per_round: {fed.clients_per_round} sampled clients but "
                f"only {n} hospitals"
            )

    @property
    def num_hospitals(self) -> int | None:
        """Number of clients when known from the config alone."""
        if self.data.hospitals is not None:
            return len(self.data.hospitals)
        if self.data.source == "synthetic":
            return self.data.synth.num_hospitals
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML or JSON."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _positive(obj: Any, *names: str) -> None:
    section = _SECTION_OF.get(type(obj), "")
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}{name}: must be > 0, got {value}")


_SECTION_OF: dict[type, str] = {
    SynthConfig: "data.synth.",
    ModelConfig: "model.",
    TrainConfig: "train.",
    FederationConfig: "federation.",
}


# ---------------------------------------------------------------- building from mappings


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a `RunConfig` from a nested mapping, checking keys and types."""
    return _build(RunConfig, data, "")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {err}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, key)
        raise ConfigError(f"{key}: unsupported type")  # pragma: no cover
    if value is None:
        raise ConfigError(f"{key}: must not be empty")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"


# ---------------------------------------------------------------- files and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. federation.rounds=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted overrides applied (sections created as needed)."""
    out = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is a `ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML config, apply dotted overrides, validate, and return a frozen config."""
    return from_dict(apply_overrides(read_yaml(path), overrides))


def replace(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A copy of `cfg` with dotted overrides applied and validated again."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides))

"""The ``resources`` section: Ray resources per role and the key holders' placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedsim.errors import ConfigError


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
    """Per-role Ray resources and placement (``client`` is per training actor: one
    hospital, or one cohort)."""

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

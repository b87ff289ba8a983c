"""The ``privacy`` section: differential privacy at client or record level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedsim.errors import ConfigError


@dataclass(frozen=True)
class SparseConfig:
    """Sparse DP-SGD (`fedsim.privacy.sparse`): each hospital trains only the code rows
    its DP partition selection keeps. The selection's Gaussian multiplier is
    ``noise_multiplier``, or by default the one whose epsilon alone is
    ``epsilon_share`` of ``privacy.target_epsilon`` (the rest goes to the DP-SGD steps;
    both are in the hospital's epsilon). ``max_codes``: codes a record counts for;
    ``threshold``: the noisy count a row needs (default: about one spurious row)."""

    noise_multiplier: float | None = None
    epsilon_share: float = 0.25
    max_codes: int = 8
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.epsilon_share < 1:
            raise ConfigError(f"privacy.sparse.epsilon_share: must be in (0, 1), got "
                              f"{self.epsilon_share}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"privacy.sparse.noise_multiplier: must be > 0, got "
                              f"{self.noise_multiplier}")
        if isinstance(self.max_codes, bool) or not isinstance(self.max_codes, int) \
                or self.max_codes < 1:
            raise ConfigError(f"privacy.sparse.max_codes: must be an integer >= 1, got "
                              f"{self.max_codes!r}")
        if self.threshold is not None and not self.threshold >= 0:
            raise ConfigError(f"privacy.sparse.threshold: must be >= 0, got "
                              f"{self.threshold}")


@dataclass(frozen=True)
class AdaptiveClippingConfig:
    """Adaptive client-level clipping (Andrew et al. 2021): the clip bound follows the
    ``target_quantile`` of update norms. ``indicator_noise_stddev`` defaults to the
    paper's clients per round / 20; ``max_clip`` caps the bound (it sizes the
    encryption's value range)."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    indicator_noise_stddev: float | None = None
    max_clip: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise ConfigError(f"privacy.adaptive_clipping.target_quantile: must be in (0, 1), "
                              f"got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise ConfigError(f"privacy.adaptive_clipping.learning_rate: must be > 0, got "
                              f"{self.learning_rate}")
        if self.indicator_noise_stddev is not None and not self.indicator_noise_stddev > 0:
            raise ConfigError("privacy.adaptive_clipping.indicator_noise_stddev: must be > 0 "
                              f"(an un-noised count is not private), got "
                              f"{self.indicator_noise_stddev}")
        if not self.max_clip > 0:
            raise ConfigError(f"privacy.adaptive_clipping.max_clip: must be > 0, got "
                              f"{self.max_clip}")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy (client level and record level)."""

    enabled: bool = False
    level: Literal["client", "record"] = "client"
    mechanism: str = "gaussian"
    placement: Literal["aggregator", "distributed"] = "aggregator"
    clip: float | None = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: Literal["rdp", "pld"] = "rdp"
    # Record level: one Poisson rate for every hospital; by default each hospital samples
    # at its own rate, record_batch_size (train.batch_size if unset) over its row count.
    record_sampling_rate: float | None = None
    record_batch_size: float | None = None
    sparse: SparseConfig | None = None
    adaptive_clipping: AdaptiveClippingConfig | None = None
    # Which adversary privacy.target_epsilon is met against: "participants" (the
    # coordinator and aggregator, who see who took part: no amplification by sampling)
    # or "observer" (sees only the released models: amplified by the secret sampling).
    epsilon_against: Literal["participants", "observer"] = "participants"
    # INSECURE, for tests only: draw DP noise and DP sampling from the run seed (anyone
    # with the config regenerates them). Marked in the manifest and the progress line.
    insecure_seeded_noise: bool = False

    def check_resumable(self, where: object) -> None:
        """Refuse to resume a sparse run: every hospital would select its rows again, a
        cost its epsilon does not count."""
        if self.enabled and self.sparse is not None:
            raise ConfigError(f"{where}: a run with privacy.sparse cannot be resumed: every "
                              "hospital would select its rows again, a cost its epsilon "
                              "does not count; start a new run")

    @property
    def record_level(self) -> bool:
        """Record-level DP-SGD is on in every hospital."""
        return self.enabled and self.level == "record"

    @property
    def client_level(self) -> bool:
        """Client-level DP is on (its accounting relies on the client sampling)."""
        return self.enabled and self.level == "client"

    @property
    def noise_in_shares(self) -> bool:
        """The clients add the noise in shares (distributed placement)."""
        return self.placement == "distributed"

    def __post_init__(self) -> None:
        from fedsim.config.sections import _registered
        from fedsim.privacy.mechanisms import mechanism_names

        _registered(self.mechanism, mechanism_names(), "privacy.mechanism")
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
        if self.record_batch_size is not None and not self.record_batch_size > 0:
            raise ConfigError(f"privacy.record_batch_size: must be > 0, got "
                              f"{self.record_batch_size}")
        if self.sparse is not None and self.level != "record":
            raise ConfigError("privacy.sparse: sparse DP-SGD is record level; set "
                              "privacy.level=record")
        if self.sparse is not None and self.sparse.noise_multiplier is None \
                and self.target_epsilon is None:
            raise ConfigError("privacy.sparse.noise_multiplier: needed when privacy."
                              "noise_multiplier is set (epsilon_share splits a target_epsilon)")
        if self.level == "record" and self.mechanism != "gaussian":
            raise ConfigError("privacy.mechanism: record-level DP-SGD uses 'gaussian'")
        if self.adaptive_clipping is not None:
            if self.level == "record":
                raise ConfigError("privacy.adaptive_clipping: adaptive clipping is client "
                                  "level; record-level DP-SGD clips at privacy.clip")
            if self.mechanism != "gaussian":
                raise ConfigError("privacy.adaptive_clipping: its accounting (Andrew et al. "
                                  "2021, Thm. 1) needs mechanism 'gaussian'")
            if self.clip > self.adaptive_clipping.max_clip:
                raise ConfigError(f"privacy.clip: the initial bound {self.clip:g} exceeds "
                                  f"privacy.adaptive_clipping.max_clip "
                                  f"{self.adaptive_clipping.max_clip:g}")

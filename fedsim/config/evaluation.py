"""The ``evaluation`` section: how often the global model is scored, and where."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fedsim.errors import ConfigError

if TYPE_CHECKING:
    from fedsim.config.sections import FederationConfig


@dataclass(frozen=True)
class EvaluationConfig:
    """How often the model is scored (``every: 0``: at the end) and where: ``federated``
    (default on in he mode with hospital clients), only the encrypted sum of the
    hospitals' score histograms (``bins``; ``max_rows``: most rows of a split) is opened
    (`fedsim.protocol.evaluation`), else the coordinator scores pooled copies.
    ``noise_stddev``: record-level DP on those histograms (the Gaussian stddev of the
    noise on each pooled count, drawn by the hospitals in shares); ``disclose_hospitals``:
    each hospital also reports its own metrics. ``baselines``: beside the run's model,
    each hospital's trained alone (``local``) and, with ``all``, the same model trained
    on the pooled rows (`fedsim.run.baselines`). ``select``: the model the run reports
    and deploys, the last round's (``last``) or the evaluated round's with the best pooled
    validation ROC AUC (``best_val``, `fedsim.learning.selection`)."""

    every: int = 1
    federated: bool | None = None
    bins: int = 4096
    max_rows: int = 1_000_000
    disclose_hospitals: bool = False
    noise_stddev: float | None = None
    baselines: Literal["none", "local", "all"] = "all"
    select: Literal["last", "best_val"] = "last"

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"evaluation.every: must be >= 0, got {self.every}")
        for name, low in (("bins", 2), ("max_rows", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"evaluation.{name}: must be >= {low}, got "
                                  f"{getattr(self, name)}")
        if self.select == "best_val" and self.every == 0:
            raise ConfigError("evaluation.select: best_val chooses among evaluated rounds, "
                              "and evaluation.every: 0 evaluates only the last; set every "
                              ">= 1")
        if self.noise_stddev is not None and not (math.isfinite(self.noise_stddev)
                                                  and self.noise_stddev >= 1):
            raise ConfigError(f"evaluation.noise_stddev: must be a number >= 1 (counts), "
                              f"got {self.noise_stddev}")

    @property
    def selects_best(self) -> bool:
        """Whether the run keeps the best-validating evaluated round's model."""
        return self.select == "best_val"

    def federated_in(self, federation: FederationConfig) -> bool:
        """Whether this run evaluates federated (resolving the default)."""
        if self.federated is None:
            return federation.encrypted and federation.clients == "hospital"
        return self.federated

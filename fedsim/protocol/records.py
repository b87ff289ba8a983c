"""What a round records: its phases' times (one timer) and one `RoundRecord`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fedsim.learning.metrics import BinaryMetrics

CLIENT_PHASES = ("train", "encode", "encrypt", "serialize")
PHASES = CLIENT_PHASES + (
    "transfer", "aggregate", "dp_noise", "verify", "partial_decrypt", "fuse", "server_update",
    "evaluate",
)
_METRIC_FIELDS = ("auc", "pr_auc", "balanced_accuracy", "precision", "recall", "threshold",
                  "accuracy")


class PhaseTimer:
    """Seconds per named phase of one round; ``with timer.phase("fuse"): ...``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + float(seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class RoundRecord:
    """Everything recorded about one round (one row of rounds.parquet).

    ``metrics`` is None for a round the evaluation callback skipped.
    """

    round: int
    wall_s: float
    phases: Mapping[str, float]
    clients: tuple[str, ...]
    dropped: tuple[str, ...]
    bytes_up: int
    bytes_down: int
    loss: float
    metrics: BinaryMetrics | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    def evaluated(self, metrics: BinaryMetrics, seconds: float) -> RoundRecord:
        """This record with the global model's scores, their time counted in the round."""
        phases = {**self.phases, "evaluate": self.phases.get("evaluate", 0.0) + seconds}
        return replace(self, metrics=metrics, phases=phases, wall_s=self.wall_s + seconds)

    def row(self) -> dict[str, Any]:
        m = self.metrics
        nan = float("nan")
        out: dict[str, Any] = {
            "round": self.round,
            "wall_s": self.wall_s,
            **{f"t_{p}_s": self.phases.get(p, 0.0) for p in PHASES},
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "loss": self.loss,
            "test_loss": m.loss if m is not None else nan,
            **{k: getattr(m, k) if m is not None else nan for k in _METRIC_FIELDS},
            "num_clients": len(self.clients),
            "clients": ",".join(self.clients),
            "dropped": ",".join(self.dropped),
        }
        out.update(self.extra)
        return out

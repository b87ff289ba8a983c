"""Per-round metrics on Ray's Prometheus endpoint, for the dashboard and Grafana.

`RunTelemetry.record(record)` turns one `RoundRecord` into Ray custom metrics
(`ray.util.metrics`), tagged ``run_id`` and ``role`` (and ``phase`` for phase
times). Ray exports them on each node's metrics port with a ``ray_`` prefix and
counters with a ``_total`` suffix, e.g. ``ray_fedsim_bytes_up_total{run_id=...}``.
The terminal line and rounds.parquet stay the primary record; this is for watching.

Without an initialised Ray (the in-process backend) every call is a no-op, and this
module imports Ray only when it is already initialised, so `fedsim` stays Ray-free.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.protocol.records import RoundRecord

ROLE = "coordinator"

# name -> (kind, description, extra tag keys); names as Ray registers them.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fedsim_round": ("gauge", "Index of the last completed round (0-based)", ()),
    "fedsim_rounds_completed": ("counter", "Rounds completed", ()),
    "fedsim_round_seconds": ("gauge", "Wall time of the last round", ()),
    "fedsim_round_duration_seconds": ("histogram", "Wall time per round", ()),
    "fedsim_phase_seconds": ("gauge", "Time of each phase in the last round (client "
                             "phases: mean over clients)", ("phase",)),
    "fedsim_bytes_up": ("counter", "Bytes uploaded by clients (model updates)", ()),
    "fedsim_bytes_down": ("counter", "Bytes downloaded by clients (global model)", ()),
    "fedsim_ciphertexts": ("counter", "CKKS ciphertexts produced by clients", ()),
    "fedsim_clients_active": ("gauge", "Clients whose update entered the last round", ()),
    "fedsim_clients_dropped": ("gauge", "Sampled clients dropped in the last round", ()),
    "fedsim_dropouts": ("counter", "Sampled clients dropped, all rounds", ()),
    "fedsim_epsilon": ("gauge", "Spent differential-privacy epsilon (at the run's delta), "
                       "against the adversary the run's target names", ()),
    "fedsim_epsilon_against": ("gauge", "Spent epsilon against each adversary: participants "
                               "(coordinator, aggregator) or observer (released models)",
                               ("adversary",)),
    "fedsim_test_auc": ("gauge", "Pooled test ROC AUC of the global model", ()),
}
# Round times from tens of milliseconds (tiny tests) to an hour (paper scale, secure CKKS).
_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]


class RunTelemetry:
    """Publishes one run's round records as Ray metrics; a no-op without Ray."""

    def __init__(self, run_id: str, *, ciphertexts_per_update: int = 0) -> None:
        self.run_id = run_id
        self.ciphertexts_per_update = ciphertexts_per_update
        self._metrics: dict[str, Any] | None = _make_metrics() if ray_active() else None

    @property
    def enabled(self) -> bool:
        return self._metrics is not None

    def record(self, record: RoundRecord) -> None:
        """Publish one round's record."""
        if self._metrics is None:
            return
        m, tags = self._metrics, {"run_id": self.run_id, "role": ROLE}
        m["fedsim_round"].set(record.round, tags=tags)
        m["fedsim_rounds_completed"].inc(1, tags=tags)
        m["fedsim_round_seconds"].set(record.wall_s, tags=tags)
        m["fedsim_round_duration_seconds"].observe(record.wall_s, tags=tags)
        for phase, seconds in record.phases.items():
            m["fedsim_phase_seconds"].set(seconds, tags={**tags, "phase": phase})
        _inc(m["fedsim_bytes_up"], record.bytes_up, tags)
        _inc(m["fedsim_bytes_down"], record.bytes_down, tags)
        _inc(m["fedsim_ciphertexts"], self.ciphertexts_per_update * len(record.clients), tags)
        m["fedsim_clients_active"].set(len(record.clients), tags=tags)
        m["fedsim_clients_dropped"].set(len(record.dropped), tags=tags)
        _inc(m["fedsim_dropouts"], len(record.dropped), tags)
        epsilon = record.extra.get("epsilon")
        if epsilon is not None:
            m["fedsim_epsilon"].set(float(epsilon), tags=tags)
        for adversary in ("participants", "observer"):
            value = record.extra.get(f"epsilon_{adversary}")
            if value is not None:
                m["fedsim_epsilon_against"].set(float(value),
                                                tags={**tags, "adversary": adversary})
        auc = record.metrics.auc if record.metrics is not None else float("nan")
        if auc == auc:  # NaN when not scored or one class: leave the last value
            m["fedsim_test_auc"].set(float(auc), tags=tags)


def ray_active() -> bool:
    """True when this process is connected to Ray (without importing Ray otherwise)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _inc(counter: Any, value: float, tags: dict[str, str]) -> None:
    if value > 0:  # Ray refuses increments <= 0
        counter.inc(value, tags=tags)


def _make_metrics() -> dict[str, Any]:
    from ray.util.metrics import Counter, Gauge, Histogram

    out: dict[str, Any] = {}
    for name, (kind, description, extra) in METRICS.items():
        keys = ("run_id", "role", *extra)
        if kind == "gauge":
            out[name] = Gauge(name, description=description, tag_keys=keys)
        elif kind == "counter":
            out[name] = Counter(name, description=description, tag_keys=keys)
        else:
            out[name] = Histogram(name, description=description, boundaries=_BOUNDARIES,
                                  tag_keys=keys)
    return out

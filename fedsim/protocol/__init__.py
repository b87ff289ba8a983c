"""The parties and the round: training parties (hospitals, cohorts), the aggregator, the
key holders, the schemes that carry contributions between them, the coordinator's
`Federation` and the round loop `run_rounds`, over a `Backend` (in-process or Ray)."""

from __future__ import annotations

from fedsim._lazy import lazy_names

_WHERE = {
    "Aggregator": "aggregator",
    "Backend": "backend",
    "InProcessBackend": "backend",
    "PartySpec": "backend",
    "Cohort": "cohort",
    "Hospital": "client",
    "Federation": "federation",
    "KeyHolder": "keyholder",
    "Callback": "loop",
    "run_rounds": "loop",
    "Manifest": "manifest",
    "RoundRecord": "records",
    "sample_clients": "sampling",
}

__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)

"""Between the clients and the global model: ordered steps, weighting, server optimizers.

Names load on first use: the aggregator and key holders use the steps without
importing the server optimizers (optax, JAX).
"""

from __future__ import annotations

from fedsim._lazy import lazy_names

_WHERE = {
    "Aggregate": "steps",
    "ClientContext": "steps",
    "Pipeline": "steps",
    "RoundContext": "steps",
    "ServerContext": "steps",
    "Step": "steps",
    "Update": "steps",
    "FixedDenominator": "weighting",
    "SampleWeighting": "weighting",
    "average": "weighting",
    "make_server_optimizer": "optimizers",
    "optimizer_names": "optimizers",
    "register_server_optimizer": "optimizers",
    "ServerState": "server",
    "server_init": "server",
    "server_update": "server",
}

__all__ = sorted(_WHERE)
__getattr__ = lazy_names(__name__, _WHERE)

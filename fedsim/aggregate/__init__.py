"""Between the clients and the global model: ordered steps, weighting, server optimizers.

Names load on first use: the aggregator and key holders use the steps without
importing the server optimizers (optax, JAX).
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

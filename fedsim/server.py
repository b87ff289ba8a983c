"""Server-side maths: weighted aggregation and the server optimizer.

Pure functions with immutable state, in the optax style. The averaged client delta
is treated as a negative pseudo-gradient (Reddi et al., 2021, "Adaptive Federated
Optimization"): FedAvg is SGD with rate 1.0 on it, FedAdam is Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from fedsim.config import FederationConfig
from fedsim.errors import ProtocolError


def weighted_payload(delta: np.ndarray, weight: float) -> np.ndarray:
    """A client's contribution: ``weight * delta`` with ``weight`` appended as the last value.

    The trailing weight mirrors the reserved slot of the encrypted packing, so sums of
    payloads carry the summed weight in both modes.
    """
    out = np.empty(delta.size + 1, np.float64)
    np.multiply(delta, weight, out=out[:-1])
    out[-1] = weight
    return out


def sum_payloads(payloads: list[np.ndarray]) -> np.ndarray:
    """Element-wise sum of plaintext payloads (float64)."""
    if not payloads:
        raise ProtocolError("nothing to aggregate: no client contributed this round")
    total = np.zeros_like(payloads[0], dtype=np.float64)
    for p in payloads:
        total += p
    return total


def average(summed: np.ndarray, total_weight: float) -> np.ndarray:
    """Weighted mean from a sum of weighted deltas and the summed weight."""
    if not total_weight > 0:
        raise ProtocolError(f"summed client weight is {total_weight}; cannot average")
    return summed / total_weight


def make_server_optimizer(cfg: FederationConfig) -> optax.GradientTransformation:
    """FedAvg (SGD, usually rate 1.0) or FedAdam on the negative averaged delta."""
    if cfg.server_optimizer == "fedadam":
        return optax.adam(cfg.server_lr, b1=0.9, b2=0.99, eps=1e-3)
    return optax.sgd(cfg.server_lr)


@dataclass(frozen=True)
class ServerState:
    """Global parameters (flat float32 vector) and the server optimizer state."""

    params: np.ndarray
    opt_state: Any


def server_init(opt: optax.GradientTransformation, params: np.ndarray) -> ServerState:
    """Initial server state for a flat parameter vector."""
    return ServerState(params=params.astype(np.float32), opt_state=opt.init(jnp.asarray(params)))


def server_update(
    opt: optax.GradientTransformation, state: ServerState, avg_delta: np.ndarray
) -> ServerState:
    """Apply the averaged client delta through the server optimizer."""
    grad = jnp.asarray(-avg_delta, jnp.float32)
    params = jnp.asarray(state.params)
    updates, opt_state = opt.update(grad, state.opt_state, params)
    new = np.asarray(optax.apply_updates(params, updates), np.float32)
    return ServerState(params=new, opt_state=opt_state)

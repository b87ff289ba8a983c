"""The server's state and its update: pure functions with immutable state, optax style.

The averaged client delta is a negative pseudo-gradient (Reddi et al., 2021): the
optimizer's update of ``-average`` is added to the global parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax


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

"""Which clients take part in a round: seeded (public) sampling."""

from __future__ import annotations

import numpy as np

from fedsim.config import RunConfig
from fedsim.seeding import stream


def sample_clients(cfg: RunConfig, names: list[str], round_idx: int) -> list[str]:
    """Seeded client sampling: fixed-size without replacement, or Poisson with rate m/n.

    Returns names in federation order. The stream is ``(seed, "sampling", round)``, so
    a round's sample never depends on scheduling and every run reproduces it.
    """
    rng = stream(cfg.seed, "sampling", round_idx)
    m, n = cfg.federation.clients_per_round, len(names)
    if cfg.federation.sampling == "poisson":
        chosen = np.flatnonzero(rng.random(n) < m / n)
    else:
        chosen = np.sort(rng.choice(n, size=m, replace=False))
    return [names[i] for i in chosen]

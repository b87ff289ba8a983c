"""Which clients take part in a round: public (seeded) or, under client-level DP, secret.

Without client-level DP the sample is public randomness: the stream ``(seed,
"sampling", round)``, so every run reproduces it and Ray's scheduling never changes it.
With client-level DP the accounting's amplification by sampling relies on it, so the
coordinator draws it from its own OS CSPRNG (`fedsim.privacy.randomness`) and it is
never derived from the seed. The coordinator and the aggregator still see who took
part; the epsilon reported against them (``epsilon_participants``) claims no
amplification for that reason (`fedsim.privacy.steps`).
"""

from __future__ import annotations

import numpy as np

from fedsim.config import RunConfig
from fedsim.privacy.randomness import NoiseSource
from fedsim.seeding import stream


def max_contributors(cfg: RunConfig, num_clients: int) -> int:
    """Most clients a round may sum: ``m`` for fixed-size sampling; for Poisson the
    binomial tail's 1e-12 upper quantile (at most every client). The encrypted sum is
    sized for it; the rare round sampled above it is skipped, never truncated."""
    from scipy import stats

    m, n = cfg.federation.clients_per_round, num_clients
    if cfg.federation.sampling != "poisson" or m >= n:
        return m
    return int(min(n, stats.binom.isf(1e-12, n, m / n) + 1))


def sample_clients(cfg: RunConfig, names: list[str], round_idx: int) -> list[str]:
    """Fixed-size sampling without replacement, or Poisson with rate m/n.

    Returns names in federation order.
    """
    m, n = cfg.federation.clients_per_round, len(names)
    secret = cfg.privacy.client_level  # the accounting relies on it: it must be secret
    rng = (NoiseSource.for_run(cfg).draw("sampling", round_idx) if secret
           else stream(cfg.seed, "sampling", round_idx))
    if cfg.federation.sampling == "poisson":
        chosen = np.flatnonzero(rng.random(n) < m / n)
    elif secret:  # the m smallest of n i.i.d. uniforms: a uniform m-subset
        chosen = np.sort(np.argsort(rng.random(n), kind="stable")[:m])
    else:
        chosen = np.sort(rng.choice(n, size=m, replace=False))
    return [names[i] for i in chosen]

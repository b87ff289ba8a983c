"""Many small tabular clients labelled by a hidden linear teacher (BENCHMARKS.md, W2).

A teacher ``w ~ N(0, I_features)``, ``b ~ N(0, 1)`` from ``default_rng(seed)``. A set
of ``n`` samples from seed ``s``: ``x ~ N(0, I)`` (float32) from ``default_rng(s)``,
``y = [x @ w + b > 0]``, then each label flipped with probability ``label_noise``.
Client ``i`` draws its samples from seed ``1000 + i``, the held-out test set (which no
client holds) from seed ``999``; a run seed other than 0 adds ``1_000_000 * seed`` to
both, so seed 0 is exactly the W2 workload. Every client's rows are its training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.data.dataset import ClientData, FederatedDataset, Split
from fedsim.errors import DataError

__all__ = ["TeacherSpec", "teacher_dataset"]

_CLIENT_SEED, _TEST_SEED, _PER_RUN = 1000, 999, 1_000_000


@dataclass(frozen=True)
class TeacherSpec:
    num_clients: int = 1000
    samples_per_client: int = 50
    features: int = 64
    label_noise: float = 0.10
    test_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_clients", "samples_per_client", "features", "test_samples"):
            if getattr(self, name) < 1:
                raise DataError(f"TeacherSpec.{name} must be >= 1, got {getattr(self, name)}")


def teacher(spec: TeacherSpec) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(spec.seed)
    w = rng.standard_normal(spec.features)
    b = rng.standard_normal()
    return w, float(b)


def samples(spec: TeacherSpec, seed: int, n: int) -> Split:
    """``n`` labelled samples from seed ``seed`` (labels flipped at ``label_noise``)."""
    w, b = teacher(spec)
    rng = np.random.default_rng(seed + _PER_RUN * spec.seed)
    x = rng.standard_normal((n, spec.features), dtype=np.float32)
    y = x @ w + b > 0
    flip = rng.random(n) < spec.label_noise
    y = np.where(flip, ~y, y)
    return Split(np.zeros((n, 0), np.int32), x, y.astype(np.float32))


def teacher_dataset(spec: TeacherSpec) -> FederatedDataset:
    """``num_clients`` clients named ``client-0000``... and the held-out test set."""
    width = len(str(spec.num_clients - 1))
    empty = Split(np.zeros((0, 0), np.int32), np.zeros((0, spec.features), np.float32),
                  np.zeros(0, np.float32))
    clients = tuple(
        ClientData(f"client-{i:0{width}d}",
                   samples(spec, _CLIENT_SEED + i, spec.samples_per_client), empty, empty)
        for i in range(spec.num_clients)
    )
    holdout = samples(spec, _TEST_SEED, spec.test_samples)
    return FederatedDataset(clients, vocab_size=0, num_numeric=spec.features, max_codes=0,
                            holdout=holdout)

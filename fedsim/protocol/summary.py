"""Secure federated statistics: ``fedsim stats CONFIG`` and ``data.standardize: federated``.

Before any training, every hospital puts its training rows' count, and per numeric
feature the sums of the values and of their squares (and, with a codes column, how
many of its training records hold each code), into one batch of integers, encrypted
under a joint key made for this one sum by a fresh set of key holders and signed for
(run, ``stats``, 0, hospital) and this plan. The aggregator sums the batches, every
hospital endorses the sum, and the key holders check and open it like every other
sum: it must hold every registered hospital (never a subset, so no difference of two
openings is one hospital's sums), once. The coordinator learns the pooled count, mean
and standard deviation of each feature and the pooled code frequencies, never one
hospital's. In plaintext mode the same figures are computed in the clear.

Integers come back exact from the approximate (flooded) CKKS decryption as digits
(`fedsim.crypto.integers.CountCodec`). A value enters as an integer multiple of
``UNIT``: each hospital's sum of values (positive and negative parts apart, so every
integer is non-negative) and of squares is rounded once, so a pooled mean or variance
is off by at most ``hospitals * UNIT / n`` from the pooled rows' own. Values must lie
within ``MAX_ABS`` (a hospital refuses otherwise, naming the column).

A hospital with fewer training rows than ``data.statistics_min_rows`` refuses to take
part, with its count: its sums would say too much about too few patients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedsim.crypto.integers import CountCodec
from fedsim.errors import ConfigError, CryptoError, DataError, ProtocolError

UNIT = 2.0**-8  # sums of values and of squares travel as integers of this
MAX_ABS = 2.0**16  # the largest |value| of a numeric feature (ints stay below 2^62)


@dataclass(frozen=True)
class SummaryPlan:
    """Public facts every party derives the statistics' encoding from."""

    kind: ClassVar[str] = "stats"
    with_training: ClassVar[bool] = False  # its key opens no training sum
    purpose: ClassVar[str] = "federated statistics"
    evaluations: ClassVar[int] = 1  # sums opened under this key: one

    features: tuple[str, ...]  # the numeric columns, in the model's order
    vocab_size: int  # code frequencies of this many codes (0: none)
    contributors: int  # every registered hospital
    max_rows: int  # the most training rows one hospital may have
    min_rows: int  # a hospital with fewer refuses

    @classmethod
    def from_config(cls, cfg: Any, dataset: Any) -> SummaryPlan:
        features = tuple(columns_of(cfg))
        if len(features) != dataset.num_numeric:
            raise ConfigError(f"{len(features)} numeric column names for "
                              f"{dataset.num_numeric} numeric features")
        return cls(features, dataset.vocab_size, len(dataset.clients),
                   cfg.evaluation.max_rows, cfg.data.statistics_min_rows)

    def bind(self) -> bytes:
        """What every batch of the sum signs in a model's place: this plan."""
        from fedsim.protocol.evaluation import _bound

        return _bound(b"federated statistics", self)

    def codecs(self, context: Any) -> tuple[CountCodec, CountCodec]:
        """The codecs of the sums (n, sums, sums of squares) and of the code counts."""
        largest = math.ceil(self.max_rows * MAX_ABS**2 / UNIT)
        sums = CountCodec.for_context(context, contributors=self.contributors,
                                      max_value=largest)
        counts = CountCodec.for_context(context, contributors=self.contributors,
                                        max_value=self.max_rows)
        return sums, counts

    @property
    def num_sums(self) -> int:
        return 1 + 3 * len(self.features)  # n; per feature sum+, sum-, sum of squares

    def num_values(self, context: Any) -> int:
        sums, counts = self.codecs(context)
        return sums.size(self.num_sums) + counts.size(self.vocab_size)

    def ciphertexts(self, context: Any) -> int:
        return -(-self.num_values(context) // context.values_per_ciphertext)

    def integers(self, name: str, numeric: np.ndarray, codes: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """One hospital's sums and code counts, as integers; raises `DataError` when it
        has fewer rows than ``min_rows`` or more than ``max_rows``, or a value beyond
        ``MAX_ABS``."""
        x = np.asarray(numeric, np.float64)
        n = len(x)
        if n < self.min_rows:
            raise DataError(f"hospital {name} refuses federated statistics: its {n} "
                            f"training rows are fewer than data.statistics_min_rows = "
                            f"{self.min_rows}")
        if n > self.max_rows:
            raise DataError(f"hospital {name}: more training rows than "
                            "evaluation.max_rows; raise it")
        beyond = [f for f, column in zip(self.features, x.T, strict=True)
                  if column.size and np.max(np.abs(column)) > MAX_ABS]
        if beyond:
            raise DataError(f"hospital {name}: numeric column {beyond[0]!r} has values "
                            f"beyond +-{MAX_ABS:g}; rescale it (other units)")
        parts = [np.clip(x, 0, None).sum(axis=0), np.clip(-x, 0, None).sum(axis=0),
                 (x * x).sum(axis=0)]
        sums = np.concatenate([[n * 1.0], *(np.rint(p / UNIT) for p in parts)])
        counts = np.zeros(self.vocab_size, np.int64)
        if self.vocab_size:
            for row in np.asarray(codes):
                counts[np.unique(row[row >= 0])] += 1  # a record counts once per code
        return sums.astype(np.int64), counts

    def encode(self, context: Any, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        s, c = self.codecs(context)
        return np.concatenate([s.encode(sums), c.encode(counts)])

    def decode(self, context: Any, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The summed integers (n and the sums; the code counts) from the opened values."""
        s, c = self.codecs(context)
        cut = s.size(self.num_sums)
        return (s.decode(values[:cut]),
                c.decode(values[cut: cut + c.size(self.vocab_size)]))


def columns_of(cfg: Any) -> tuple[str, ...]:
    """The numeric features' names, as the data config gives them (a categorical
    column's one-hot features as ``name=category``: their pooled means are the
    categories' frequencies)."""
    from dataclasses import asdict

    d = cfg.data
    if d.source == "synthetic":
        from fedsim.data import SynthSpec
        from fedsim.data.loader import synthetic_columns

        return tuple(synthetic_columns(SynthSpec(**asdict(d.synth), seed=cfg.seed)).numeric)
    if d.source == "teacher":
        return tuple(f"x{j}" for j in range(d.teacher.features))
    return d.columns.features  # numeric columns, then the one-hot categories


@dataclass(frozen=True)
class FederatedSummary:
    """The pooled statistics of every hospital's training rows."""

    features: tuple[str, ...]
    hospitals: tuple[str, ...]
    n: int
    mean: np.ndarray
    std: np.ndarray
    code_counts: np.ndarray  # training records holding each code (empty: no codes)
    encrypted: bool  # opened under the joint key (he) or computed in the clear
    precision: float  # the largest error of a mean from the integer encoding
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_sums(cls, plan: SummaryPlan, sums: np.ndarray, counts: np.ndarray,
                  hospitals: tuple[str, ...], encrypted: bool,
                  seconds: dict[str, float] | None = None) -> FederatedSummary:
        f = len(plan.features)
        n = int(sums[0])
        if n < 1:
            raise CryptoError("the opened statistics count no training rows")
        pos, neg, sq = (np.asarray(sums[1 + k * f: 1 + (k + 1) * f], np.float64) * UNIT
                        for k in range(3))
        mean = (pos - neg) / n
        var = np.maximum(sq / n - mean**2, 0.0)
        return cls(plan.features, hospitals, n, mean, np.sqrt(var),
                   np.asarray(counts, np.int64), encrypted, len(hospitals) * UNIT / n,
                   dict(seconds or {}))

    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and standard deviation every hospital standardises with (a constant
        column, std 0 or rounding noise around it, is only centred)."""
        std = np.where(self.std > 1e-6 * np.maximum(1.0, np.abs(self.mean)), self.std, 1.0)
        return self.mean.copy(), std

    def as_dict(self) -> dict[str, Any]:
        """What ``statistics.json`` holds (code counts as the most frequent 50)."""
        top = np.argsort(-self.code_counts, kind="stable")[:50]
        return {"mode": ("plaintext", "he")[self.encrypted],
                "hospitals": list(self.hospitals), "n": self.n,
                "precision": self.precision, "seconds": self.seconds,
                "features": {f: {"mean": float(m), "std": float(s)}
                             for f, m, s in zip(self.features, self.mean, self.std,
                                                strict=True)},
                "codes": {"distinct_in_use": int(np.count_nonzero(self.code_counts)),
                          "most_frequent": [[int(c), int(self.code_counts[c])]
                                            for c in top if self.code_counts[c]]}}


def hospital_sums(plan: SummaryPlan, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """A hospital's integers from its own training rows, on their raw scale."""
    return plan.integers(data.name, data.raw("train"), np.asarray(data.train.codes))


def seal_summary(hospital: Any, plan: SummaryPlan, own_min_rows: int
                 ) -> tuple[Any, dict[str, float]]:
    """A hospital's side (`fedsim.protocol.client.Hospital.summarise`): check the plan
    against its own config, seal and sign its integers, and say how long it took."""
    encoder = hospital.contributions.encoder
    if encoder is None or not hasattr(encoder, "seal_values"):
        raise ProtocolError(f"hospital {hospital.name} refuses federated statistics "
                            "outside the run's he encoding")
    if type(plan) is not SummaryPlan or plan.min_rows < own_min_rows or \
            len(plan.features) != hospital.data.train.numeric.shape[1]:
        raise ProtocolError(f"hospital {hospital.name} refuses a statistics plan outside "
                            "its config (data.statistics_min_rows, its numeric columns)")
    t0 = time.perf_counter()
    values = plan.encode(encoder.context, *hospital_sums(plan, hospital.data))
    payload = encoder.seal_values(values, contributors=plan.contributors)
    bundle = hospital.contributions.evaluations.bundle(hospital.name, 0, payload,
                                                       plan.bind(), kind="stats", plan=plan)
    return bundle, {"encrypt": time.perf_counter() - t0}


def summary_config(cfg: Any) -> Any:
    """The run's config as the statistics need it: he mode, one planned sum, no
    evaluation sums, hospitals."""
    from fedsim.config import replace

    fed = cfg.federation
    if not fed.hospital_parties:
        raise ConfigError("federated statistics: the run's clients are cohorts; they are "
                          "summed over hospitals (federation.clients: hospital)")
    return replace(cfg, ["federation.mode=he", "federation.rounds=1",
                         "evaluation.federated=false", "privacy.enabled=false",
                         f"federation.min_clients={max(2, fed.min_clients)}"])


def federated_summary(cfg: Any, dataset: Any, *, backend: Any, run_id: str
                      ) -> FederatedSummary:
    """The pooled statistics of ``dataset``'s hospitals: opened under a joint key of
    their own (he mode; every hospital's party started with its own rows, the
    coordinator's view holds none), or computed in the clear (plaintext mode)."""
    from fedsim.protocol.evaluator import open_hospital_sum
    from fedsim.protocol.federation import Federation
    from fedsim.protocol.records import PhaseTimer

    plan = SummaryPlan.from_config(cfg, dataset)
    if not cfg.federation.encrypted:
        total = [hospital_sums(plan, c) for c in dataset.clients]
        return FederatedSummary.from_sums(plan, sum(t[0] for t in total),
                                          sum(t[1] for t in total), dataset.names,
                                          False)
    timer = PhaseTimer()
    t0 = time.perf_counter()
    fed = Federation(summary_config(cfg), dataset.withheld(), backend, run_id=run_id,
                     hospital_data=dataset, evaluation=plan)
    fed.setup()
    timer.add("setup", time.perf_counter() - t0)
    values, said, manifest = open_hospital_sum(fed, 0, "summarise", (plan,), timer,
                                               kind="stats")
    timer.add("encrypt", max(s["encrypt"] for s in said.values()))
    sums, counts = plan.decode(fed.scheme.context, values)
    return FederatedSummary.from_sums(plan, sums, counts, tuple(manifest.contributors),
                                      True, dict(timer.phases))

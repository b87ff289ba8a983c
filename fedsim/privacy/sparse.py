"""DP partition selection of embedding rows for sparsity-preserving DP-SGD.

Dense DP-SGD (`fedsim.privacy.dpsgd`) adds ``N(0, (C z)^2)`` to every row of the code
table at every step, although a batch touches a few hundred of its 24,428 rows. The
noise random-walks every row far past its initial scale (``1/sqrt(V)``, about 0.006),
and every patient's bag sums a dozen such rows: the model drowns in noise on codes it
has no signal for. Sparsity-preserving DP-SGD (after Ghazi et al., "Sparsity-Preserving
Differentially Private Training of Large Embedding Models", NeurIPS 2023: DP-FEST)
trains only rows selected privately; the others keep the global value, so their update
is exactly zero and no noise lands on them (`fedsim.learning.sparse`).

The selection, once per run, inside the hospital and from its training rows only:

1. Every record counts once for each of at most ``max_codes`` of its distinct codes
   (the first ``max_codes`` in sorted order), so adding or removing one record moves the
   count vector by at most ``sqrt(max_codes)`` in L2.
2. Gaussian noise of stddev ``z_s sqrt(max_codes)`` is added to the count of every one of
   the ``V`` codes, zero counts included, from the hospital's own secret source.
3. The codes whose noisy count exceeds ``threshold`` are selected.

This is one Gaussian mechanism of multiplier ``z_s`` (``GaussianDpEvent(z_s)``), composed
with the DP-SGD steps in the record-level accountant (`RecordLevelSpec.
selection_noise_multiplier`). The selected set is a post-processing of the noisy counts,
so that it shows in which rows of an update are non-zero costs nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, final

import numpy as np
from scipy import stats

from fedsim.errors import PrivacyError

__all__ = ["RowSelection", "code_counts", "default_threshold"]


def code_counts(codes: np.ndarray, vocab_size: int, max_codes: int) -> np.ndarray:
    """Records per code, each record counting once for each of at most ``max_codes`` of
    its distinct codes (the smallest ``max_codes``); ``codes`` is int [n, L], -1 padded."""
    if max_codes < 1:
        raise PrivacyError(f"max_codes: must be >= 1, got {max_codes}")
    codes = np.asarray(codes, np.int64)
    if codes.size == 0:
        return np.zeros(vocab_size, np.int64)
    ordered = np.sort(np.where(codes >= 0, codes, np.iinfo(np.int64).max), axis=1)
    first = np.ones(ordered.shape, bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # drop repeats of a code in a record
    valid = first & (ordered < vocab_size)
    rank = np.cumsum(valid, axis=1)  # 1-based position among the record's distinct codes
    kept = ordered[valid & (rank <= max_codes)]
    return np.bincount(kept.astype(np.int64), minlength=vocab_size)


def default_threshold(stddev: float, vocab_size: int) -> float:
    """The threshold at which a code no record has is selected with probability
    ``1 / vocab_size``: about one spurious row per selection."""
    return float(stddev * stats.norm.isf(1.0 / max(vocab_size, 2)))


@final
@dataclass(frozen=True)
class RowSelection:
    """The selection's public parameters; see the module docstring."""

    noise_multiplier: float
    max_codes: int
    threshold: float | None = None  # None: `default_threshold`

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(f"selection noise_multiplier: must be > 0, got "
                               f"{self.noise_multiplier}")
        if self.max_codes < 1:
            raise PrivacyError(f"selection max_codes: must be >= 1, got {self.max_codes}")

    @property
    def stddev(self) -> float:
        """Stddev of the noise on each count: the multiplier times the L2 sensitivity."""
        return self.noise_multiplier * math.sqrt(self.max_codes)

    def cut(self, vocab_size: int) -> float:
        return (self.threshold if self.threshold is not None
                else default_threshold(self.stddev, vocab_size))

    def select(self, codes: np.ndarray, vocab_size: int, secret: Any) -> np.ndarray:
        """The selected codes (sorted int64) of one hospital's training ``codes``.

        ``secret`` is the hospital's source (`fedsim.privacy.randomness`): the noise is
        secret randomness, never derived from the run seed unless the run says so.
        """
        counts = code_counts(codes, vocab_size, self.max_codes).astype(np.float64)
        noisy = counts + secret.generator().normal(0.0, self.stddev, vocab_size)
        return np.flatnonzero(noisy > self.cut(vocab_size)).astype(np.int64)

"""The arrays a client trains on: `Split`, `ClientData` and `FederatedDataset`.

These frozen containers are the contract between the data layer and the model and
training code. Their arrays are read-only; `Split.take` makes subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.errors import DataError

__all__ = ["Split", "ClientData", "FederatedDataset", "SPLITS", "Withheld"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """Rows of one split of one client.

    ``codes`` is int32 [n, L] padded with -1 (L is the same for every client and may
    be 0 when there is no codes column), ``numeric`` float32 [n, F] (F may be 0) and
    ``labels`` float32 [n] with values 0.0 and 1.0.
    """

    codes: np.ndarray
    numeric: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        arrays = {
            "codes": (np.asarray(self.codes, np.int32), 2),
            "numeric": (np.asarray(self.numeric, np.float32), 2),
            "labels": (np.asarray(self.labels, np.float32), 1),
        }
        for name, (array, ndim) in arrays.items():
            if array.ndim != ndim:
                raise ValueError(f"Split.{name} must have {ndim} dimensions, got {array.shape}")
            if array.flags.writeable:
                array = array.copy() if array is getattr(self, name) else array
                array.flags.writeable = False
            object.__setattr__(self, name, array)
        n = {len(self.codes), len(self.numeric), len(self.labels)}
        if len(n) != 1:
            raise ValueError(
                f"Split arrays disagree on the number of rows: codes {self.codes.shape}, "
                f"numeric {self.numeric.shape}, labels {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: np.ndarray | Sequence[int] | slice) -> Split:
        """The rows ``idx`` (integer indices, a boolean mask or a slice), as a new Split."""
        return Split(self.codes[idx], self.numeric[idx], self.labels[idx])

    @staticmethod
    def concatenate(splits: Sequence[Split]) -> Split:
        """Rows of all ``splits`` in order (they must share L and F)."""
        if not splits:
            raise ValueError("Split.concatenate needs at least one split")
        return Split(
            np.concatenate([s.codes for s in splits]),
            np.concatenate([s.numeric for s in splits]),
            np.concatenate([s.labels for s in splits]),
        )


@dataclass(frozen=True, eq=False)
class ClientData:
    """One hospital's train, validation and test rows, and ``scaler``: the mean and
    standard deviation of its own training rows' numeric features that standardised
    them (None where the numeric features are used as they are), so rows from outside
    (a query) can be put on the same scale by this hospital."""

    name: str
    train: Split
    val: Split
    test: Split
    scaler: tuple[np.ndarray, np.ndarray] | None = None

    def standardise(self, numeric: np.ndarray) -> np.ndarray:
        """Raw numeric features on this hospital's training scale (float32)."""
        if self.scaler is None:
            return np.asarray(numeric, np.float32)
        mean, std = self.scaler
        return ((np.asarray(numeric, np.float64) - mean) / std).astype(np.float32)

    def raw(self, which: str) -> np.ndarray:
        """``which`` split's numeric features on their raw scale (float64; float32's
        rounding of the standardised values stays)."""
        numeric = np.asarray(self.split(which).numeric, np.float64)
        if self.scaler is None:
            return numeric
        mean, std = self.scaler
        return numeric * std + mean

    def rescaled(self, scaler: tuple[np.ndarray, np.ndarray] | None) -> ClientData:
        """These rows with the numeric features standardised by ``scaler`` (mean, std)
        instead, or raw when None."""
        def one(which: str) -> Split:
            rows, raw = self.split(which), self.raw(which)
            numeric = raw if scaler is None else (raw - scaler[0]) / scaler[1]
            return Split(rows.codes, numeric.astype(np.float32), rows.labels)

        return ClientData(self.name, one("train"), one("val"), one("test"), scaler=scaler)

    def remapped(self, matrix: np.ndarray) -> ClientData:
        """These rows with raw numeric features ``raw @ matrix`` (e.g. rare categories
        folded into one), unscaled."""
        def one(which: str) -> Split:
            rows = self.split(which)
            return Split(rows.codes, (self.raw(which) @ matrix).astype(np.float32),
                         rows.labels)

        return ClientData(self.name, one("train"), one("val"), one("test"))

    def split(self, which: str) -> Split:
        """``train``, ``val`` or ``test`` by name."""
        if which not in SPLITS:
            raise ValueError(f"unknown split {which!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, which)


@dataclass(frozen=True, eq=False)
class FederatedDataset:
    """All clients, in sorted hospital-name order, with the shapes the model needs.

    ``vocab_size`` is the number of code embeddings (0 without a codes column),
    ``num_numeric`` is F and ``max_codes`` is L. ``holdout``, when given, is a test set
    that no client holds (a benchmark's public test set); evaluation then uses it
    instead of the clients' pooled test splits.
    """

    clients: tuple[ClientData, ...]
    vocab_size: int
    num_numeric: int
    max_codes: int
    holdout: Split | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clients)

    def client(self, name: str) -> ClientData:
        for c in self.clients:
            if c.name == name:
                return c
        raise DataError(f"no client named {name!r}; clients are: {', '.join(self.names)}")

    def pooled(self, which: str) -> Split:
        """Concatenation of every client's ``which`` split (train, val or test)."""
        return Split.concatenate([c.split(which) for c in self.clients])

    def test_set(self) -> Split:
        """What the global model is scored on: the holdout, or the pooled test splits."""
        return self.holdout if self.holdout is not None else self.pooled("test")

    def rescaled(self, scaler: tuple[np.ndarray, np.ndarray] | None) -> FederatedDataset:
        """Every hospital's rows standardised with one ``scaler`` (`ClientData.rescaled`);
        the holdout as it is."""
        return FederatedDataset(tuple(c.rescaled(scaler) for c in self.clients),
                                self.vocab_size, self.num_numeric, self.max_codes,
                                self.holdout)

    def remapped(self, matrix: np.ndarray) -> FederatedDataset:
        """Every hospital's rows with raw numeric features ``raw @ matrix``
        (`ClientData.remapped`), unscaled; the holdout as it is."""
        return FederatedDataset(tuple(c.remapped(matrix) for c in self.clients),
                                self.vocab_size, matrix.shape[1], self.max_codes,
                                self.holdout)

    def withheld(self) -> FederatedDataset:
        """This dataset as a party that holds no hospital's rows sees it: names, shapes,
        each hospital's number of training rows (public: it weights the sum) and the
        public holdout; reading any row, or a validation or test size, raises
        `DataError`."""
        return FederatedDataset(
            tuple(ClientData(c.name, Withheld(c.name, "train", len(c.train)),
                             Withheld(c.name, "val"), Withheld(c.name, "test"))
                  for c in self.clients),
            self.vocab_size, self.num_numeric, self.max_codes, self.holdout)


class Withheld:
    """A split of another party's: its row count when public, no rows."""

    def __init__(self, owner: str, split: str, rows: int | None = None) -> None:
        self._where = f"{owner}'s {split} split"
        self._rows = rows

    def __len__(self) -> int:
        if self._rows is None:
            raise DataError(f"this party does not know the size of {self._where}")
        return self._rows

    def __getattr__(self, name: str) -> None:
        raise DataError(f"this party holds no rows of {self._where} (asked for {name!r})")

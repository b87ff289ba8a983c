"""Load a user's Parquet or CSV table and partition it into per-hospital clients.

`partition` is where every data check happens; each failure is a `DataError` with one
line that names the column or hospital at fault. The hospital column gives the natural
partition. Without a split column each hospital's rows are split train/val/test by a
seeded split stratified by label. Numeric features are standardised per client with
the mean and standard deviation of that client's own training rows (the pooled scale,
``data.standardize: federated``, is applied afterwards from secure federated statistics,
`fedsim.run.datasets`). Categorical columns (`CategoricalColumn`) become one 0/1
feature per declared category, after the numeric ones, and are never rescaled.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedsim.data import _columns
from fedsim.data.dataset import SPLITS, ClientData, FederatedDataset, Split
from fedsim.data.synth import NUM_LABS, SynthSpec, generate_ehr
from fedsim.errors import DataError

__all__ = [
    "CategoricalColumn",
    "ColumnSpec",
    "DataWarning",
    "load_table",
    "partition",
    "query_rows",
    "synthetic_columns",
    "synthetic_dataset",
]


class DataWarning(UserWarning):
    """Data that is usable but probably not what was meant (e.g. a one-class client)."""


@dataclass(frozen=True)
class CategoricalColumn:
    """A column of categories (integers or strings, e.g. chest-pain type 1 to 4) and
    the list of its categories, declared: every party derives the same one-hot layout
    from it, and a hospital whose rows hold a value outside it refuses them, naming the
    column (fedsim does not discover categories from the rows)."""

    name: str
    values: tuple[str, ...]  # the categories as text: 1 and "1" are one category

    @classmethod
    def from_config(cls, value: Any, key: str) -> CategoricalColumn:
        """``{name: cp, values: [1, 2, 3, 4]}`` from a config file."""
        from fedsim.errors import ConfigError

        if isinstance(value, str):
            raise ConfigError(f"{key}: {value!r} needs its category list: "
                              f"{{name: {value}, values: [...]}} (fedsim does not discover "
                              "categories from the hospitals' rows)")
        if not isinstance(value, dict) or set(value) != {"name", "values"}:
            raise ConfigError(f"{key}: expected {{name: COLUMN, values: [CATEGORY, ...]}}")
        name, values = value["name"], value["values"]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}.name: expected a column name")
        if not isinstance(values, list) or not values or any(
                isinstance(v, bool) or not isinstance(v, (int, str)) for v in values):
            raise ConfigError(f"{key}.values: expected a list of integers or strings")
        texts = tuple(str(v) for v in values)
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{key}.values: a category is listed twice")
        return cls(name, texts)

    @property
    def features(self) -> tuple[str, ...]:
        """The one-hot features' names, ``name=value``."""
        return tuple(f"{self.name}={v}" for v in self.values)


@dataclass(frozen=True)
class ColumnSpec:
    """Which columns mean what. ``codes``, ``numeric`` and ``categorical`` may not all
    be empty."""

    hospital: str = "hospital"
    label: str = "label"
    codes: str | None = "codes"
    numeric: tuple[str, ...] = ()
    split: str | None = None
    categorical: tuple[CategoricalColumn, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        """The model's numeric inputs in order: the numeric columns, then each
        categorical column's one-hot features."""
        return (*self.numeric, *(f for c in self.categorical for f in c.features))

    @property
    def num_onehot(self) -> int:
        return sum(len(c.values) for c in self.categorical)


def load_table(path: str | os.PathLike[str]) -> pa.Table:
    """Read a ``.parquet`` or ``.csv`` file into an Arrow table."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            table = pacsv.read_csv(path)
            # Arrow reads a text column with bytes that are not UTF-8 as binary.
            if any(pa.types.is_binary(t) or pa.types.is_large_binary(t)
                   for t in table.schema.types):
                _check_utf8(path)
            return table
    except (pa.ArrowException, OSError) as exc:
        if suffix == ".csv" and "utf8" in str(exc).lower().replace("-", ""):
            _check_utf8(path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path}: {first}") from exc
    raise DataError(f"cannot read {path}: unknown suffix {path.suffix!r} (use .parquet or .csv)")


def _check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """Raise `DataError` at the first byte of ``path`` that is not UTF-8, if any."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1  # where the next block starts
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            held = len(decoder.getstate()[0])  # a character cut by the last block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                data = err.object  # the held bytes, then the block
                at, line = offset - held + err.start, line + data.count(b"\n", 0, err.start)
                raise DataError(
                    f"{path} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {at} "
                    f"(line {line}) is not valid UTF-8 (Latin-1 or Windows-1252 perhaps); "
                    f"re-save the file as UTF-8") from None
            if not block:
                return
            offset += len(block)
            line += block.count(b"\n")


def partition(
    table: pa.Table,
    columns: ColumnSpec,
    *,
    vocab_size: int | None = None,
    hospitals: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> FederatedDataset:
    """Check ``table`` and split it into one `ClientData` per hospital.

    ``vocab_size`` bounds the codes (default: largest code + 1); ``hospitals`` keeps
    only those hospitals, each of which must have rows; ``fractions`` (train, val,
    test) and ``seed`` drive the stratified split when ``columns.split`` is None
    (with a split column, ``fractions`` and ``seed`` are unused).
    The split of a hospital depends on ``seed`` and its name only, so filtering other
    hospitals out does not change it.
    """
    fractions = _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    table = _columns.select(table, columns, hospitals)
    names = _columns.hospital_names(table, columns.hospital)
    labels = _columns.labels(table, columns.label)
    numeric = np.hstack([_columns.numeric(table, columns.numeric),
                         _columns.onehot(table, columns.categorical)])
    codes, vocab = _columns.codes(table, columns.codes, vocab_size)
    split = None if columns.split is None else _columns.split_values(table, columns.split)

    hospital_names, inverse = np.unique(names, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    clients = []
    for name, rows in zip(hospital_names.tolist(), groups, strict=True):
        if split is None:
            parts = _stratified_split(labels[rows], fractions, _hospital_rng(seed, name))
            parts = [rows[p] for p in parts]
        else:
            parts = [rows[split[rows] == s] for s in SPLITS]
        clients.append(_client(name, parts, codes, numeric, labels, columns.num_onehot))
    return FederatedDataset(
        clients=tuple(clients),
        vocab_size=vocab,
        num_numeric=numeric.shape[1],
        max_codes=codes.shape[1],
    )


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(not np.isfinite(x) or x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
        raise DataError(
            f"fractions must be three numbers >= 0 (train, val, test) summing to 1, "
            f"got {list(fractions)}"
        )
    if f[0] == 0 or f[2] == 0:
        raise DataError(f"fractions: train and test fractions must be > 0, got {list(f)}")
    return f  # type: ignore[return-value]


def _hospital_rng(seed: int, name: str) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def _stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[np.ndarray]:
    """Positions into ``labels`` for train, val and test, each class split by ``fractions``.

    A class of n rows gives round(f_train * n) rows to train and
    round((f_train + f_val) * n) to train+val, so each split's class mix matches the
    hospital's within a row, and a class of one row goes to train.
    """
    parts: list[list[np.ndarray]] = [[], [], []]
    bounds = np.cumsum(fractions)[:2]
    for value in (0.0, 1.0):
        idx = np.flatnonzero(labels == value)
        idx = idx[rng.permutation(idx.size)]
        cut = np.floor(bounds * idx.size + 0.5).astype(int)
        for part, chunk in zip(parts, np.split(idx, cut), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _client(
    name: str,
    parts: list[np.ndarray],
    codes: np.ndarray,
    numeric: np.ndarray,
    labels: np.ndarray,
    onehot: int = 0,
) -> ClientData:
    train = parts[0]
    if train.size == 0:
        raise DataError(f"hospital {name!r} has no rows in its training split")
    classes = np.unique(labels[train])
    if classes.size == 1:
        warnings.warn(
            f"hospital {name!r}: every training label is {int(classes[0])}; "
            f"it cannot learn to separate the classes",
            DataWarning,
            stacklevel=3,
        )
    # Standardise with this hospital's own training statistics only. A constant column
    # (std 0, or rounding noise around it) is only centred; one-hot features stay 0/1.
    mean = numeric[train].mean(axis=0)
    std = numeric[train].std(axis=0)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    mean, std = keep_onehot((mean, std), onehot)

    def make(rows: np.ndarray) -> Split:
        scaled = ((numeric[rows] - mean) / std).astype(np.float32)
        return Split(codes[rows], scaled, labels[rows])

    return ClientData(name, *(make(p) for p in parts), scaler=(mean, std))


def keep_onehot(scaler: tuple[np.ndarray, np.ndarray], onehot: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``scaler`` with its last ``onehot`` features (categories) left as they are."""
    mean, std = (np.array(a, np.float64) for a in scaler)
    if onehot:
        mean[-onehot:], std[-onehot:] = 0.0, 1.0
    return mean, std


def query_rows(table: pa.Table, columns: ColumnSpec, *, vocab_size: int,
               num_numeric: int) -> tuple[np.ndarray, np.ndarray]:
    """A query's features (codes int32 [n, L] padded with -1, raw numeric float64
    [n, F]) from the feature columns ``columns`` names; hospital, label and split
    columns are not needed and not read. Checked as `partition` checks a table."""
    used = ([columns.codes] if columns.codes is not None else []) + list(columns.numeric) \
        + [c.name for c in columns.categorical]
    missing = [c for c in dict.fromkeys(used) if c not in table.column_names]
    if missing:
        raise DataError(f"the query lacks the run's feature column"
                        f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                        f"it has: {', '.join(table.column_names[:30])}")
    if table.num_rows == 0:
        raise DataError("the query has no rows")
    if len(columns.features) != num_numeric:
        raise DataError(f"the run's model takes {num_numeric} numeric features, the query "
                        f"columns give {len(columns.features)}")
    for name in used:
        _columns._no_nulls(table, name)
    numeric = np.hstack([_columns.numeric(table, columns.numeric),
                         _columns.onehot(table, columns.categorical)])
    codes, _ = _columns.codes(table, columns.codes, vocab_size)
    return codes, numeric


def synthetic_columns(spec: SynthSpec) -> ColumnSpec:
    """The columns `generate_ehr` writes for ``spec``."""
    numeric = ("age", *(f"lab_{j}" for j in range(NUM_LABS))) if spec.numeric_features else ()
    return ColumnSpec(numeric=numeric)


def synthetic_dataset(
    spec: SynthSpec,
    *,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> FederatedDataset:
    """Generate ``spec`` in memory and `partition` it with the default columns."""
    table = generate_ehr(spec)
    return partition(
        table,
        synthetic_columns(spec),
        vocab_size=spec.vocab_size,
        fractions=fractions,
        seed=seed,
    )

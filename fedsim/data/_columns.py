"""Column checks and conversions behind `fedsim.data.partition`.

Each function takes an Arrow table and one column name, checks it and returns numpy
arrays; a problem is a `DataError` with one line naming the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedsim.data.dataset import SPLITS
from fedsim.errors import DataError

if TYPE_CHECKING:
    from fedsim.data.loader import CategoricalColumn, ColumnSpec


def _listing(values: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def select(table: pa.Table, columns: ColumnSpec, hospitals: Sequence[str] | None) -> pa.Table:
    """Check presence and nulls of the used columns; keep the listed hospitals' rows.

    The hospital column comes back as strings, whatever its type was.
    """
    if columns.codes is None and not columns.numeric and not columns.categorical:
        raise DataError("no feature columns: set a codes column and/or numeric columns "
                        "(or categorical ones)")
    both = sorted(set(columns.numeric) & {c.name for c in columns.categorical})
    if both:
        raise DataError(f"column {both[0]!r} is listed as numeric and as categorical")
    for kind, names in (("numeric", list(columns.numeric)),
                        ("categorical", [c.name for c in columns.categorical])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"column {twice[0]!r} is listed twice as {kind}")
    clash = sorted(set(columns.numeric) & {f for c in columns.categorical for f in c.features})
    if clash:  # a numeric column named like a one-hot feature: two inputs, one name
        raise DataError(f"numeric column {clash[0]!r} has the name of a category feature "
                        "(name=value) of a categorical column; rename one of them")
    used = [columns.hospital, columns.label]
    used += [columns.codes] if columns.codes is not None else []
    used += list(columns.numeric) + [c.name for c in columns.categorical]
    used += [columns.split] if columns.split is not None else []
    missing = [c for c in dict.fromkeys(used) if c not in table.column_names]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(
            f"missing column{plural} {_listing([repr(c) for c in missing])}; "
            f"the table has: {_listing(table.column_names, 30)}"
        )
    _no_nulls(table, columns.hospital)
    table = table.set_column(
        table.column_names.index(columns.hospital),
        columns.hospital,
        _as_strings(table.column(columns.hospital), columns.hospital),
    )
    if hospitals is not None:
        wanted = list(dict.fromkeys(str(h) for h in hospitals))
        if not wanted:
            raise DataError("the hospital filter is empty; pass None to use every hospital")
        present = set(table.column(columns.hospital).to_pylist())
        absent = [h for h in wanted if h not in present]
        if absent:
            raise DataError(
                f"hospital {_listing([repr(h) for h in absent])} has no rows in column "
                f"{columns.hospital!r}; hospitals present: {_listing(sorted(present))}"
            )
        table = table.filter(pc.is_in(table.column(columns.hospital), pa.array(wanted)))
    if table.num_rows == 0:
        raise DataError("the table has no rows")
    for name in dict.fromkeys(used):
        _no_nulls(table, name)
    return table


def _no_nulls(table: pa.Table, name: str) -> None:
    column = table.column(name)
    nulls = column.null_count
    if nulls:
        raise DataError(f"column {name!r} has {nulls} null value{'s' if nulls > 1 else ''}")
    if _is_list(column.type):
        inner = pc.list_flatten(column).null_count
        if inner:
            raise DataError(f"column {name!r} has {inner} null codes inside its lists")


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _as_strings(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type):
        return column
    try:
        return column.cast(pa.string())
    except pa.ArrowException as exc:
        raise DataError(f"column {name!r} must hold names (strings), found {column.type}") from exc


def hospital_names(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=object)


def labels(table: pa.Table, name: str) -> np.ndarray:
    """float32 [n] of 0.0/1.0 from an integer, boolean or 0/1-valued float column."""
    column = table.column(name)
    t = column.type
    if not (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)):
        raise DataError(f"column {name!r} must hold integer or boolean labels, found {t}")
    values = np.asarray(column.to_numpy(), dtype=np.float64)
    found = np.unique(values)
    if not np.isin(found, (0.0, 1.0)).all():
        shown = [int(v) if float(v).is_integer() else v for v in found.tolist()]
        raise DataError(f"column {name!r} must be binary (0/1); found values {_listing(shown)}")
    return values.astype(np.float32)


def numeric(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    """float64 [n, F] of the columns' float32 values (F may be 0)."""
    out = np.zeros((table.num_rows, len(names)), np.float64)
    for j, name in enumerate(names):
        column = table.column(name)
        t = column.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"column {name!r} must be numeric, found {t}")
        wide = np.asarray(column.to_numpy(), dtype=np.float64)
        bad = int((~np.isfinite(wide)).sum())
        if bad:
            raise DataError(f"column {name!r} has {bad} NaN or infinite values")
        big = np.flatnonzero(np.abs(wide) > _FLOAT32_MAX)
        if big.size:
            raise DataError(
                f"column {name!r} has {big.size} value{'s' if big.size > 1 else ''} out of "
                f"float32 range (|x| <= {_FLOAT32_MAX:.4g}), e.g. {wide[big[0]]:g}; rescale "
                f"the column (other units, or a log)")
        # Through float32 so that Parquet and CSV copies of a float32 column agree exactly.
        out[:, j] = wide.astype(np.float32)
    return out


def onehot(table: pa.Table, columns: Sequence[CategoricalColumn]) -> np.ndarray:
    """float64 [n, sum of categories] of 0/1, one feature per declared category of each
    column in order; a value outside a column's list is a `DataError` naming it."""
    blocks = [np.zeros((table.num_rows, 0))]
    for spec in columns:
        column = table.column(spec.name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        t = column.type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise DataError(f"column {spec.name!r} is categorical: it must hold integers or "
                            f"strings, found {t}")
        texts = np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False), object)
        index = {v: i for i, v in enumerate(spec.values)}
        unknown = sorted({v for v in texts.tolist() if v not in index})
        if unknown:
            raise DataError(f"column {spec.name!r} holds values outside its declared "
                            f"categories ({_listing(list(spec.values))}): "
                            f"{_listing(unknown)}")
        block = np.zeros((table.num_rows, len(spec.values)))
        block[np.arange(table.num_rows), [index[v] for v in texts.tolist()]] = 1.0
        blocks.append(block)
    return np.hstack(blocks)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Largest vocabulary inferred from the codes alone (data.vocab_size not set): a float32
# embedding of 2**22 rows takes 16 MiB per unit of model.width (1 GiB at width 64), once
# in every client, in the server and in its optimizer state; a larger largest code is
# far more often an identifier (a raw code number) than a vocabulary.
MAX_INFERRED_VOCAB = 2**22
_INT32_LIMIT = 2**31  # codes are stored as int32: at most 2**31 - 1, so vocab <= 2**31


def codes(table: pa.Table, name: str | None, vocab_size: int | None) -> tuple[np.ndarray, int]:
    """(int32 [n, L] padded with -1, vocabulary size) from a codes column.

    Accepts a list of integers per row, a string of integers separated by spaces or
    commas (the CSV form), or one integer per row.
    """
    n = table.num_rows
    if vocab_size is not None and (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, (int, np.integer))
        or not 1 <= vocab_size <= _INT32_LIMIT
    ):
        raise DataError(f"vocab_size must be an integer in [1, {_INT32_LIMIT}] (codes are "
                        f"int32), got {vocab_size!r}")
    if name is None:
        return np.zeros((n, 0), np.int32), 0
    column = table.column(name)
    t = column.type
    if _is_list(t) and pa.types.is_integer(t.value_type):
        lengths = pc.list_value_length(column).to_numpy().astype(np.int64)
        flat = np.asarray(pc.list_flatten(column).to_numpy(), dtype=np.int64)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        lengths, flat = _parse_code_strings(column, name)
    elif pa.types.is_integer(t):
        lengths, flat = np.ones(n, np.int64), np.asarray(column.to_numpy(), dtype=np.int64)
    else:
        raise DataError(
            f"column {name!r} must hold lists of integer codes "
            f"(or space-separated integers in CSV), found {t}"
        )
    if flat.size:
        low, high = int(flat.min()), int(flat.max())
        limit = vocab_size if vocab_size is not None else high + 1
        if low < 0 or high >= limit:
            raise DataError(
                f"column {name!r} has codes outside [0, {limit}): they range from {low} to {high}"
            )
        if vocab_size is None and limit > MAX_INFERRED_VOCAB:
            raise DataError(
                f"column {name!r}: the largest code is {high}, so the code embedding would "
                f"need {limit:,} rows ({limit * 4 / 2**30:,.1f} GiB of float32 per unit of "
                f"model.width), over the {MAX_INFERRED_VOCAB:,} rows fedsim infers without "
                f"data.vocab_size; renumber the codes 0..N-1, or set data.vocab_size if you "
                f"mean a table that large")
    vocab = int(vocab_size) if vocab_size is not None else (int(flat.max()) + 1 if flat.size else 0)
    width = int(lengths.max()) if n else 0
    out = np.full((n, width), -1, np.int32)
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(np.arange(n), lengths)
    out[rows, np.arange(flat.size) - np.repeat(starts, lengths)] = flat
    return out, vocab


def _parse_code_strings(column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, np.ndarray]:
    tokens = pc.split_pattern_regex(pc.utf8_trim_whitespace(column.combine_chunks()), r"[\s,]+")
    flat = pc.list_flatten(tokens)
    owner = pc.list_parent_indices(tokens).to_numpy()
    keep = pc.not_equal(flat, "")
    flat, owner = flat.filter(keep), owner[keep.to_numpy(zero_copy_only=False)]
    try:
        values = np.asarray(flat.cast(pa.int64()).to_numpy(), dtype=np.int64)
    except pa.ArrowInvalid as exc:
        bad = next((s for s in flat.to_pylist() if not s.lstrip("-").isdigit()), "?")
        raise DataError(
            f"column {name!r} must hold integer codes separated by spaces; cannot read {bad!r}"
        ) from exc
    return np.bincount(owner, minlength=len(column)).astype(np.int64), values


def split_values(table: pa.Table, name: str) -> np.ndarray:
    """The split column as an object array of ``train``/``val``/``test``."""
    column = _as_strings(table.column(name), name)
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)
    other = sorted(set(values.tolist()) - set(SPLITS))
    if other:
        raise DataError(
            f"column {name!r} must hold only train, val or test; "
            f"found also {_listing([repr(v) for v in other])}"
        )
    return values

"""`Split`, `ClientData` and `FederatedDataset`: shapes, subsets, pooling, immutability."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data import ClientData, FederatedDataset, Split
from fedsim.errors import DataError


def _split(labels: list[float], offset: int = 0) -> Split:
    n = len(labels)
    codes = np.arange(offset, offset + 2 * n, dtype=np.int64).reshape(n, 2)
    return Split(codes, np.full((n, 1), offset, np.float64), np.array(labels))


def test_split_converts_dtypes_and_is_read_only():
    codes = np.array([[1, -1], [2, 3]])
    split = Split(codes, np.zeros((2, 3)), np.array([0, 1]))
    assert (split.codes.dtype, split.numeric.dtype, split.labels.dtype) == (
        np.int32,
        np.float32,
        np.float32,
    )
    assert len(split) == 2
    with pytest.raises(ValueError, match="read-only"):
        split.labels[0] = 1.0
    same_dtype = np.array([[1, -1]], np.int32)
    Split(same_dtype, np.zeros((1, 0), np.float32), np.zeros(1, np.float32))
    same_dtype[0, 0] = 7  # the caller's own array stays writable


def test_split_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="Split arrays disagree on the number of rows"):
        Split(np.zeros((2, 1)), np.zeros((3, 0)), np.zeros(2))
    with pytest.raises(ValueError, match=r"Split.labels must have 1 dimensions, got \(2, 1\)"):
        Split(np.zeros((2, 1)), np.zeros((2, 0)), np.zeros((2, 1)))


def test_take_selects_rows():
    split = _split([0.0, 1.0, 1.0, 0.0])
    sub = split.take([2, 0])
    assert sub.labels.tolist() == [1.0, 0.0]
    assert sub.codes.tolist() == [[4, 5], [0, 1]]
    assert len(split.take(split.labels == 1.0)) == 2
    assert len(split.take(slice(1, 3))) == 2


def test_pooled_concatenates_clients_in_order():
    a = ClientData("a", _split([0.0, 1.0], 0), _split([1.0], 0), _split([0.0], 0))
    b = ClientData("b", _split([1.0], 10), _split([], 10), _split([0.0, 0.0], 10))
    data = FederatedDataset((a, b), vocab_size=20, num_numeric=1, max_codes=2)
    pooled = data.pooled("train")
    assert pooled.labels.tolist() == [0.0, 1.0, 1.0]
    assert pooled.numeric[:, 0].tolist() == [0.0, 0.0, 10.0]
    assert len(data.pooled("val")) == 1 and len(data.pooled("test")) == 3
    assert data.names == ("a", "b")
    assert data.client("b") is b
    with pytest.raises(DataError, match="^no client named 'c'; clients are: a, b$"):
        data.client("c")
    with pytest.raises(ValueError, match="unknown split 'dev'; expected one of train, val, test"):
        data.pooled("dev")

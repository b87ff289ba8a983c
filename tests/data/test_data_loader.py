"""`load_table` and `partition`: round trips, every error text, splits, standardisation."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fedsim.data import (
    ColumnSpec,
    DataWarning,
    FederatedDataset,
    SynthSpec,
    load_table,
    partition,
    synthetic_dataset,
    write_table,
)
from fedsim.errors import DataError

NUMERIC = ColumnSpec(numeric=("age", "lab_0", "lab_1", "lab_2", "lab_3"))


def _assert_same(a: FederatedDataset, b: FederatedDataset) -> None:
    assert a.names == b.names
    assert (a.vocab_size, a.num_numeric, a.max_codes) == (b.vocab_size, b.num_numeric, b.max_codes)
    for ca, cb in zip(a.clients, b.clients, strict=True):
        for which in ("train", "val", "test"):
            sa, sb = ca.split(which), cb.split(which)
            np.testing.assert_array_equal(sa.codes, sb.codes)
            np.testing.assert_array_equal(sa.numeric, sb.numeric)
            np.testing.assert_array_equal(sa.labels, sb.labels)


def _tiny(**overrides) -> pa.Table:
    columns = {
        "hospital": ["a", "a", "a", "b", "b"],
        "codes": pa.array([[0, 2], [1], [3, 4, 5], [2], [0]], pa.list_(pa.int32())),
        "age": pa.array([50.0, 60.0, 70.0, 40.0, 45.0], pa.float32()),
        "label": pa.array([0, 1, 0, 1, 0], pa.int8()),
    }
    columns.update(overrides)
    return pa.table(columns)


# Round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_file_round_trip_gives_the_same_arrays(tmp_path, small_table, suffix):
    in_memory = partition(small_table, NUMERIC, vocab_size=24428)
    path = write_table(small_table, tmp_path / f"ehr{suffix}")
    _assert_same(partition(load_table(path), NUMERIC, vocab_size=24428), in_memory)


def test_synthetic_dataset_matches_generate_then_partition(small_spec, small_table):
    _assert_same(synthetic_dataset(small_spec), partition(small_table, NUMERIC, vocab_size=24428))
    bare = synthetic_dataset(
        SynthSpec(num_hospitals=2, patients_per_hospital=50, numeric_features=False)
    )
    assert bare.num_numeric == 0 and bare.clients[0].train.numeric.shape[1] == 0


def test_codes_are_padded_to_the_longest_list_with_minus_one(small_table):
    data = partition(small_table, NUMERIC)
    lengths = pc.list_value_length(small_table.column("codes")).to_numpy()
    assert data.max_codes == lengths.max()
    assert data.vocab_size == pc.max(pc.list_flatten(small_table.column("codes"))).as_py() + 1
    codes = _tiny().column("codes")
    tiny = partition(_tiny(), ColumnSpec(split=None), fractions=(0.5, 0.0, 0.5))
    assert tiny.max_codes == 3 and tiny.vocab_size == 6
    rows = np.concatenate([np.concatenate([c.train.codes, c.test.codes]) for c in tiny.clients])
    expected = {tuple(r) + (-1,) * (3 - len(r)) for r in codes.to_pylist()}
    assert {tuple(r) for r in rows.tolist()} == expected
    assert all(
        s.codes.dtype == np.int32 and s.labels.dtype == np.float32 for s in (tiny.pooled("train"),)
    )


def test_other_codes_encodings_are_accepted():
    strings = _tiny(codes=["0, 2", " 1 ", "3 4  5", "2", "0"])
    single = _tiny(codes=pa.array([0, 1, 3, 2, 0], pa.int64()))
    lists = partition(_tiny(), ColumnSpec(), fractions=(0.5, 0.0, 0.5))
    _assert_same(partition(strings, ColumnSpec(), fractions=(0.5, 0.0, 0.5)), lists)
    assert partition(single, ColumnSpec(), fractions=(0.5, 0.0, 0.5)).max_codes == 1


def test_bool_and_float_labels_and_integer_hospitals_are_accepted():
    ints = partition(_tiny(), ColumnSpec(), fractions=(0.5, 0.0, 0.5))
    as_bool = _tiny(label=pa.array([False, True, False, True, False]))
    as_float = _tiny(label=pa.array([0.0, 1.0, 0.0, 1.0, 0.0]))
    _assert_same(partition(as_bool, ColumnSpec(), fractions=(0.5, 0.0, 0.5)), ints)
    _assert_same(partition(as_float, ColumnSpec(), fractions=(0.5, 0.0, 0.5)), ints)
    numbered = partition(_tiny(hospital=[3, 3, 3, 10, 10]), ColumnSpec(), fractions=(0.5, 0.0, 0.5))
    assert numbered.names == ("10", "3")


def test_numeric_only_table_has_no_codes():
    data = partition(_tiny(), ColumnSpec(codes=None, numeric=("age",)), fractions=(0.5, 0.0, 0.5))
    assert (data.vocab_size, data.max_codes, data.num_numeric) == (0, 0, 1)
    assert data.client("a").train.codes.shape == (len(data.client("a").train), 0)


# Errors --------------------------------------------------------------------------------


def _raises(message: str):
    return pytest.raises(DataError, match="^" + __import__("re").escape(message) + "$")


def test_load_errors(tmp_path):
    with _raises(f"data file not found: {tmp_path / 'none.parquet'}"):
        load_table(tmp_path / "none.parquet")
    (tmp_path / "data.txt").write_text("x")
    with _raises(
        f"cannot read {tmp_path / 'data.txt'}: unknown suffix '.txt' (use .parquet or .csv)"
    ):
        load_table(tmp_path / "data.txt")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"^cannot read .*bad\.parquet: "):
        load_table(tmp_path / "bad.parquet")


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        (
            _tiny(),
            ColumnSpec(numeric=("age", "lab_9"), split="fold"),
            "missing columns 'lab_9', 'fold'; the table has: hospital, codes, age, label",
        ),
        (
            _tiny(),
            ColumnSpec(label="outcome"),
            "missing column 'outcome'; the table has: hospital, codes, age, label",
        ),
        (
            _tiny(),
            ColumnSpec(codes=None),
            "no feature columns: set a codes column and/or numeric columns (or categorical ones)",
        ),
        (
            _tiny(label=["no", "yes", "no", "yes", "no"]),
            ColumnSpec(),
            "column 'label' must hold integer or boolean labels, found string",
        ),
        (
            _tiny(age=["50", "60", "70", "40", "45"]),
            ColumnSpec(numeric=("age",)),
            "column 'age' must be numeric, found string",
        ),
        (
            _tiny(codes=pa.array([[0.5], [1.0], [2.0], [3.0], [4.0]])),
            ColumnSpec(),
            "column 'codes' must hold lists of integer codes (or space-separated integers in CSV), "
            "found list<item: double>",
        ),
        (
            _tiny(codes=["0 2", "1", "x3", "2", "0"]),
            ColumnSpec(),
            "column 'codes' must hold integer codes separated by spaces; cannot read 'x3'",
        ),
        (
            _tiny(label=pa.array([0, 1, 2, 1, 0])),
            ColumnSpec(),
            "column 'label' must be binary (0/1); found values 0, 1, 2",
        ),
        (
            _tiny(label=pa.array([0.0, 1.0, 0.5, 1.0, 0.0])),
            ColumnSpec(),
            "column 'label' must be binary (0/1); found values 0, 0.5, 1",
        ),
        (
            _tiny(age=pa.array([50.0, None, 70.0, 40.0, 45.0])),
            ColumnSpec(numeric=("age",)),
            "column 'age' has 1 null value",
        ),
        (
            _tiny(age=pa.array([50.0, np.nan, np.inf, 40.0, 45.0])),
            ColumnSpec(numeric=("age",)),
            "column 'age' has 2 NaN or infinite values",
        ),
        (
            _tiny(hospital=["a", None, "a", "b", None]),
            ColumnSpec(),
            "column 'hospital' has 2 null values",
        ),
        (
            _tiny(codes=pa.array([[0, None], [1], [3], [2], [0]], pa.list_(pa.int32()))),
            ColumnSpec(),
            "column 'codes' has 1 null codes inside its lists",
        ),
        (
            _tiny(codes=pa.array([[0, -2], [1], [3], [2], [0]], pa.list_(pa.int32()))),
            ColumnSpec(),
            "column 'codes' has codes outside [0, 4): they range from -2 to 3",
        ),
        (
            _tiny(split=["train", "dev", "test", "train", "validation"]),
            ColumnSpec(split="split"),
            "column 'split' must hold only train, val or test; found also 'dev', 'validation'",
        ),
        (
            _tiny(split=["train", "val", "test", "val", "test"]),
            ColumnSpec(split="split"),
            "hospital 'b' has no rows in its training split",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::fedsim.data.DataWarning")
def test_partition_errors_name_the_column(table, columns, message):
    with _raises(message):
        partition(table, columns)


def test_codes_beyond_the_given_vocabulary_are_refused():
    with _raises("column 'codes' has codes outside [0, 5): they range from 0 to 5"):
        partition(_tiny(), ColumnSpec(), vocab_size=5)
    assert partition(_tiny(), ColumnSpec(), vocab_size=6, fractions=(0.5, 0.0, 0.5)).vocab_size == 6


def test_hospital_filter(small_table):
    with _raises(
        "hospital 'hospital-9' has no rows in column 'hospital'; "
        "hospitals present: hospital-0, hospital-1, hospital-2, hospital-3"
    ):
        partition(small_table, NUMERIC, hospitals=("hospital-1", "hospital-9"))
    with _raises("the hospital filter is empty; pass None to use every hospital"):
        partition(small_table, NUMERIC, hospitals=())
    full = partition(small_table, NUMERIC, vocab_size=24428)
    only = partition(small_table, NUMERIC, vocab_size=24428, hospitals=("hospital-2", "hospital-0"))
    assert only.names == ("hospital-0", "hospital-2")
    # A hospital's split and standardisation do not depend on which others are kept.
    for name in only.names:
        for which in ("train", "val", "test"):
            np.testing.assert_array_equal(
                only.client(name).split(which).numeric, full.client(name).split(which).numeric
            )
            np.testing.assert_array_equal(
                only.client(name).split(which).labels, full.client(name).split(which).labels
            )


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        (
            (0.7, 0.2, 0.2),
            "fractions must be three numbers >= 0 (train, val, test) summing to 1, "
            "got [0.7, 0.2, 0.2]",
        ),
        ((0.0, 0.5, 0.5), "fractions: train and test fractions must be > 0, got [0.0, 0.5, 0.5]"),
    ],
)
def test_bad_fractions(small_table, fractions, message):
    with _raises(message):
        partition(small_table, NUMERIC, fractions=fractions)


# Splits --------------------------------------------------------------------------------


def test_single_class_training_split_warns():
    table = _tiny(label=pa.array([0, 1, 0, 0, 0]))
    with pytest.warns(DataWarning, match="^hospital 'b': every training label is 0; "):
        data = partition(table, ColumnSpec(), fractions=(0.5, 0.0, 0.5))
    assert data.client("b").train.labels.tolist() == [0.0]


def test_no_warning_when_every_client_sees_both_classes(small_table):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        partition(small_table, NUMERIC)


def test_stratified_split_keeps_class_proportions(small_table):
    data = partition(small_table, NUMERIC, seed=3)
    names = small_table.column("hospital").to_numpy(zero_copy_only=False)
    labels = small_table.column("label").to_numpy()
    for client in data.clients:
        y = labels[names == client.name]
        for value in (0, 1):
            n = int((y == value).sum())
            got = [int((client.split(s).labels == value).sum()) for s in ("train", "val", "test")]
            assert sum(got) == n
            for count, fraction in zip(got, (0.7, 0.1, 0.2), strict=True):
                assert abs(count - fraction * n) <= 1.0, (client.name, value, got, n)


def test_split_depends_on_seed_and_is_reproducible(small_table):
    a = partition(small_table, NUMERIC, seed=1)
    _assert_same(a, partition(small_table, NUMERIC, seed=1))
    b = partition(small_table, NUMERIC, seed=2)
    assert not np.array_equal(a.clients[0].train.codes, b.clients[0].train.codes)


def test_tiny_classes_do_not_crash():
    table = pa.table(
        {"hospital": ["h"] * 3, "codes": [[0], [1], [2]], "label": pa.array([1, 0, 0], pa.int8())}
    )
    data = partition(table, ColumnSpec())
    client = data.client("h")
    # Negatives: round(0.7 * 2) = 1 train, round(0.8 * 2) - 1 = 1 val; the positive: train.
    assert (len(client.train), len(client.val), len(client.test)) == (2, 1, 0)
    assert sorted(client.train.labels.tolist()) == [0.0, 1.0]
    assert client.test.codes.shape == (0, 1) and client.test.numeric.shape == (0, 0)


def test_split_column_is_honoured(small_split_table):
    columns = ColumnSpec(numeric=NUMERIC.numeric, split="split")
    data = partition(small_split_table, columns)
    names = small_split_table.column("hospital").to_numpy(zero_copy_only=False)
    split = small_split_table.column("split").to_numpy(zero_copy_only=False)
    labels = small_split_table.column("label").to_numpy().astype(np.float32)
    for client in data.clients:
        for which in ("train", "val", "test"):
            rows = (names == client.name) & (split == which)
            np.testing.assert_array_equal(client.split(which).labels, labels[rows])


# Standardisation -----------------------------------------------------------------------


def test_each_client_is_standardised_with_its_own_training_statistics():
    table = pa.table(
        {
            "hospital": ["a"] * 6 + ["b"] * 3,
            "x": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 10.0, 10.0, 12.0], pa.float32()),
            "label": pa.array([0, 1, 0, 1, 0, 1, 0, 1, 1], pa.int8()),
            "split": ["train"] * 4 + ["val", "test"] + ["train", "train", "test"],
        }
    )
    data = partition(table, ColumnSpec(codes=None, numeric=("x",), split="split"))
    a, b = data.client("a"), data.client("b")
    std = np.sqrt(1.25)  # population std of 1, 2, 3, 4
    np.testing.assert_allclose(
        a.train.numeric[:, 0], (np.array([1, 2, 3, 4]) - 2.5) / std, rtol=1e-6
    )
    np.testing.assert_allclose(a.val.numeric[:, 0], [(5 - 2.5) / std], rtol=1e-6)
    np.testing.assert_allclose(a.test.numeric[:, 0], [(0 - 2.5) / std], rtol=1e-6)
    # b's train values are constant: std 0 is replaced by 1, so test is just shifted.
    np.testing.assert_array_equal(b.train.numeric[:, 0], [0.0, 0.0])
    np.testing.assert_array_equal(b.test.numeric[:, 0], [2.0])
    assert b.val.numeric.shape == (0, 1)


def test_synthetic_clients_have_standardised_training_numerics(small_spec):
    data = synthetic_dataset(small_spec)
    assert data.num_numeric == 5
    for client in data.clients:
        x = client.train.numeric.astype(np.float64)
        np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)
        assert client.train.numeric.dtype == np.float32


def test_constant_column_is_centred_not_blown_up_by_rounding():
    # mean(0.1 x 7) differs from 0.1 by 1e-17, so a naive std > 0 test divides by 1e-17.
    table = pa.table(
        {
            "hospital": ["a"] * 7,
            "x": pa.array([0.1] * 7, pa.float64()),
            "label": pa.array([0, 1] * 3 + [0], pa.int8()),
        }
    )
    data = partition(table, ColumnSpec(codes=None, numeric=("x",)))
    for which in ("train", "val", "test"):
        assert np.abs(data.client("a").split(which).numeric).max(initial=0.0) < 1e-6

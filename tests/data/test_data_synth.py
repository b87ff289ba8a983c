"""The synthetic EHR generator: determinism, schema, prevalence, case mix, learnability."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fedsim.data import SynthSpec, generate_ehr, reference_logistic_auc, synthetic_dataset
from fedsim.errors import DataError


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _per_hospital(table: pa.Table) -> dict[str, np.ndarray]:
    names = table.column("hospital").to_numpy(zero_copy_only=False)
    labels = table.column("label").to_numpy()
    return {h: labels[names == h] for h in np.unique(names)}


@pytest.fixture(scope="module")
def default_table() -> pa.Table:
    return generate_ehr(SynthSpec())


def test_same_spec_gives_byte_identical_table(small_spec, small_table):
    again = generate_ehr(small_spec)
    assert again.equals(small_table)
    assert _parquet_bytes(again) == _parquet_bytes(small_table)


def test_different_seed_gives_different_table(small_spec, small_table):
    other = generate_ehr(dataclasses.replace(small_spec, seed=small_spec.seed + 1))
    assert not other.equals(small_table)
    assert other.column("label") != small_table.column("label")


def test_schema_default_spec(default_table):
    expected = pa.schema(
        [
            ("hospital", pa.string()),
            ("patient_id", pa.int64()),
            ("codes", pa.list_(pa.int32())),
            ("age", pa.float32()),
            ("lab_0", pa.float32()),
            ("lab_1", pa.float32()),
            ("lab_2", pa.float32()),
            ("lab_3", pa.float32()),
            ("label", pa.int8()),
        ]
    )
    assert default_table.schema.equals(expected)
    assert default_table.column("patient_id").to_numpy().tolist() == list(
        range(default_table.num_rows)
    )
    names = set(default_table.column("hospital").to_pylist())
    assert names == {f"hospital-{h}" for h in range(5)}
    assert set(np.unique(default_table.column("label").to_numpy()).tolist()) == {0, 1}
    age = default_table.column("age").to_numpy()
    assert age.min() >= 18.0 and age.max() <= 95.0


def test_codes_are_distinct_sorted_nonempty_and_in_vocabulary(default_table):
    codes = default_table.column("codes")
    lengths = pc.list_value_length(codes).to_numpy()
    flat = pc.list_flatten(codes).to_numpy()
    assert lengths.min() >= 1
    assert flat.min() >= 0 and flat.max() < 24428
    owner = np.repeat(np.arange(lengths.size), lengths)
    same_patient = owner[1:] == owner[:-1]
    assert (np.diff(flat)[same_patient] > 0).all()  # strictly increasing: sorted, distinct
    assert 10.5 < lengths.mean() < 13.5  # mean_codes = 12, hospital factors around 1
    # Zipf-like: the 10 most frequent ranks appear far more often than ranks 1000-1009.
    counts = np.bincount(flat, minlength=24428)
    assert counts[:10].sum() > 20 * counts[1000:1010].sum()


def test_numeric_features_toggle_only_drops_columns(small_spec, small_table):
    bare = generate_ehr(dataclasses.replace(small_spec, numeric_features=False))
    assert bare.column_names == ["hospital", "patient_id", "codes", "label"]
    assert bare.equals(small_table.select(bare.column_names))


def test_with_split_adds_a_70_10_20_split_per_hospital(small_table, small_split_table):
    assert small_split_table.drop_columns(["split"]).equals(small_table)
    assert small_split_table.schema.field("split").type == pa.string()
    names = small_split_table.column("hospital").to_numpy(zero_copy_only=False)
    split = small_split_table.column("split").to_numpy(zero_copy_only=False)
    for h in np.unique(names):
        n = int((names == h).sum())
        got = [int(((names == h) & (split == s)).sum()) for s in ("train", "val", "test")]
        assert got == [round(0.7 * n), round(0.8 * n) - round(0.7 * n), n - round(0.8 * n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prevalence_per_hospital_is_between_10_and_30_percent(seed, default_table):
    table = default_table if seed == 0 else generate_ehr(SynthSpec(seed=seed))
    prevalence = {h: y.mean() for h, y in _per_hospital(table).items()}
    assert len(prevalence) == 5
    assert all(0.10 <= p <= 0.30 for p in prevalence.values()), prevalence
    assert max(prevalence.values()) - min(prevalence.values()) > 0.05  # differs by hospital


def test_hospitals_differ_in_size_and_case_mix(default_table):
    sizes = [y.size for y in _per_hospital(default_table).values()]
    assert sizes == [1452, 2032, 2034, 1592, 2157]  # pinned: seed 0 must not drift
    names = default_table.column("hospital").to_numpy(zero_copy_only=False)
    codes = default_table.column("codes")
    freq = []
    for h in ("hospital-0", "hospital-1"):
        rows = pc.list_flatten(codes.filter(pa.array(names == h))).to_numpy()
        freq.append(np.bincount(rows, minlength=24428)[:200] / rows.size)
    # The same top-200 codes, with hospital-specific frequencies (case mix).
    assert np.abs(freq[0] - freq[1]).sum() > 0.05


def test_hospital_parameters_do_not_depend_on_the_number_of_hospitals():
    three = generate_ehr(SynthSpec(num_hospitals=3, patients_per_hospital=200))
    five = generate_ehr(SynthSpec(num_hospitals=5, patients_per_hospital=200))
    assert five.slice(0, three.num_rows).equals(three)


def test_many_hospitals_get_zero_padded_names():
    table = generate_ehr(SynthSpec(num_hospitals=12, patients_per_hospital=5, vocab_size=100))
    names = sorted(set(table.column("hospital").to_pylist()))
    assert names[:3] == ["hospital-00", "hospital-01", "hospital-02"]
    assert names[-1] == "hospital-11"


def test_tiny_vocabulary_still_gives_distinct_codes():
    table = generate_ehr(SynthSpec(num_hospitals=2, patients_per_hospital=200, vocab_size=10))
    lengths = pc.list_value_length(table.column("codes")).to_numpy()
    assert lengths.min() == 1 and lengths.max() <= 2  # capped at vocab_size // 4
    for row in table.column("codes").to_pylist():
        assert len(set(row)) == len(row) and all(0 <= c < 10 for c in row)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_hospitals", 0, "SynthSpec.num_hospitals must be an integer >= 1, got 0"),
        ("patients_per_hospital", 2.5, "SynthSpec.patients_per_hospital must be an integer >= 1"),
        ("vocab_size", 5, "SynthSpec.vocab_size must be an integer >= 10, got 5"),
        ("mean_codes", 0.5, "SynthSpec.mean_codes must be a number >= 1, got 0.5"),
        ("zipf_exponent", float("nan"), "SynthSpec.zipf_exponent must be a number >= 0"),
        ("numeric_features", "yes", "SynthSpec.numeric_features must be true or false"),
        ("seed", -1, "SynthSpec.seed must be an integer >= 0, got -1"),
    ],
)
def test_spec_validation_names_the_field(field, value, message):
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        SynthSpec(**{field: value})


def test_reference_logistic_regression_learns_but_not_trivially():
    dataset = synthetic_dataset(SynthSpec(patients_per_hospital=800))
    auc = reference_logistic_auc(dataset)
    assert 0.75 <= auc <= 0.95


def test_distinct_code_sampler_falls_back_when_redraws_do_not_converge():
    from fedsim.data.synth import _distinct_codes

    p = np.arange(1, 11.0) ** -3  # so skewed that drawing all 10 codes by redraws stalls
    lengths = np.array([10, 9, 1, 5, 10])
    codes = _distinct_codes(np.random.default_rng(0), np.cumsum(p / p.sum()), lengths)
    rows = np.split(codes, np.cumsum(lengths)[:-1])
    assert [r.tolist() for r in rows][0] == list(range(10))
    assert all(len(set(r)) == len(r) and (np.diff(r) > 0).all() for r in rows)
    assert [len(r) for r in rows] == lengths.tolist()


def _table_digest(table: pa.Table) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode())
        h.update(repr(table[name].combine_chunks().to_pylist()).encode())
    return h.hexdigest()


def test_no_site_shift_leaves_the_table_as_it_was_before_the_knob():
    """The digest of this table from the generator before ``site_shift`` existed."""
    spec = SynthSpec(num_hospitals=4, patients_per_hospital=200, vocab_size=300, seed=3)
    assert _table_digest(generate_ehr(spec, with_split=True)) == (
        "569626f0d73c0a292a284faff720442578eb3e53f2bcd07dea4f18a9c5b1911a")


def test_a_site_shift_moves_labs_age_and_prevalence_together():
    base = SynthSpec(num_hospitals=12, patients_per_hospital=1500, vocab_size=2000)
    calm, shifted = generate_ehr(base), generate_ehr(dataclasses.replace(base, site_shift=0.5))
    assert calm.column("codes").equals(shifted.column("codes"))  # case mix of codes kept
    names = shifted.column("hospital").to_numpy(zero_copy_only=False)
    hospitals = np.unique(names)

    def by_site(table, column):
        values = table.column(column).to_numpy().astype(float)
        return np.array([values[names == h].mean() for h in hospitals])

    # The severity moves the site's mean age and its prevalence the same way.
    moved_age = by_site(shifted, "age") - by_site(calm, "age")
    moved_prevalence = by_site(shifted, "label") - by_site(calm, "label")
    assert np.corrcoef(moved_age, moved_prevalence)[0, 1] > 0.8
    assert np.ptp(by_site(shifted, "label")) > 2 * np.ptp(by_site(calm, "label"))


def test_site_shift_must_be_a_number_at_least_zero():
    with pytest.raises(DataError, match="site_shift must be a number >= 0"):
        SynthSpec(site_shift=-0.1)
    from fedsim.config import from_dict
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="data.synth.site_shift: must be a number >= 0"):
        from_dict({"data": {"synth": {"site_shift": -1.0}}})

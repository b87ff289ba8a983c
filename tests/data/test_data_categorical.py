"""Categorical columns (`fedsim.data.CategoricalColumn`): one 0/1 feature per declared
category after the numeric ones, never rescaled (per hospital or pooled), the pooled
category frequencies from federated statistics, predictions on the same layout, and a
one-line refusal for every input mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedsim.data import (
    CategoricalColumn,
    ColumnSpec,
    SynthSpec,
    generate_ehr,
    partition,
)
from fedsim.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
CP = CategoricalColumn("cp", ("1", "2", "3", "4"))
UNIT = CategoricalColumn("unit", ("icu", "ward"))


def table_with_categories(seed: int = 0, hospitals: int = 3, patients: int = 200,
                          rare: int = 0) -> pa.Table:
    """The synthetic table with an informative integer category (quartile of lab_0;
    its first ``rare`` rows category 5) and a string one."""
    t = generate_ehr(SynthSpec(num_hospitals=hospitals, patients_per_hospital=patients,
                               vocab_size=300, seed=seed))
    lab = t.column("lab_0").to_numpy()
    cp = 1 + np.searchsorted(np.quantile(lab, [0.25, 0.5, 0.75]), lab)
    cp[:rare] = 5
    unit = np.where(np.arange(t.num_rows) % 3 == 0, "icu", "ward")
    return t.append_column("cp", pa.array(cp.astype(np.int64))).append_column(
        "unit", pa.array(unit))


def spec(**kw) -> ColumnSpec:
    return ColumnSpec(numeric=("age", "lab_1"), categorical=(CP, UNIT), **kw)


def test_categories_become_one_hot_features_after_the_numeric_ones():
    t = table_with_categories()
    ds = partition(t, spec(), vocab_size=300)
    assert spec().features == ("age", "lab_1", "cp=1", "cp=2", "cp=3", "cp=4",
                               "unit=icu", "unit=ward")
    assert ds.num_numeric == 8
    cp = t.column("cp").to_numpy()
    names = np.asarray(t.column("hospital").to_pylist())
    for client in ds.clients:
        x = np.concatenate([client.raw(s) for s in ("train", "val", "test")])
        onehot = client.train.numeric[:, 2:]
        # Exactly 0/1 even after per-hospital standardization, one category per column.
        assert set(np.unique(onehot)) <= {0.0, 1.0}
        np.testing.assert_array_equal(onehot[:, :4].sum(1), 1)
        np.testing.assert_array_equal(onehot[:, 4:].sum(1), 1)
        np.testing.assert_array_equal(client.scaler[0][2:], 0)
        np.testing.assert_array_equal(client.scaler[1][2:], 1)
        # The numeric columns are standardized as before.
        assert abs(client.train.numeric[:, 0].mean()) < 1e-5
        counts = np.bincount(cp[names == client.name].astype(int), minlength=5)[1:]
        np.testing.assert_array_equal(x[:, 2:6].sum(0), counts)


def test_category_mistakes_are_one_line_data_errors():
    t = table_with_categories()
    narrow = CategoricalColumn("cp", ("1", "2", "3"))
    with pytest.raises(DataError, match=r"column 'cp' holds values outside its declared "
                                        r"categories \(1, 2, 3\): 4"):
        partition(t, ColumnSpec(numeric=("age",), categorical=(narrow,)))
    with pytest.raises(DataError, match="missing column 'stage'"):
        partition(t, ColumnSpec(categorical=(CategoricalColumn("stage", ("a",)),)))
    with pytest.raises(DataError, match="'age' is listed as numeric and as categorical"):
        partition(t, ColumnSpec(numeric=("age",), categorical=(
            CategoricalColumn("age", ("1",)),)))
    cp = CategoricalColumn("stage", ("1", "2"))
    with pytest.raises(DataError, match="'stage' is listed twice as categorical"):
        partition(t, ColumnSpec(categorical=(cp, cp)))
    with pytest.raises(DataError, match="'age' is listed twice as numeric"):
        partition(t, ColumnSpec(numeric=("age", "age")))
    with pytest.raises(DataError, match="numeric column 'stage=1' has the name of a "
                                        "category feature"):
        partition(t, ColumnSpec(numeric=("stage=1",), categorical=(cp,)))
    with pytest.raises(DataError, match="categorical: it must hold integers or strings"):
        partition(t, ColumnSpec(categorical=(CategoricalColumn("lab_0", ("1",)),)))


def test_the_config_declares_each_column_with_its_categories():
    from fedsim.config import from_dict

    columns = {"numeric": ["age"], "categorical": [{"name": "cp", "values": [1, 2, 3, 4]},
                                                   {"name": "unit", "values": ["icu", "ward"]}]}
    cfg = from_dict({"data": {"source": "file", "path": "x.parquet", "columns": columns}})
    assert cfg.data.columns.categorical == (CP, UNIT)
    assert from_dict(cfg.to_dict()).data.columns == cfg.data.columns  # the manifest's copy
    for value, message in (("cp", "needs its category list"),
                           ({"name": "cp", "values": [1, 1]}, "listed twice"),
                           ({"name": "cp", "values": [True]}, "integers or strings"),
                           ({"name": "cp"}, "expected {name: COLUMN")):
        with pytest.raises(ConfigError, match=message):
            from_dict({"data": {"columns": {"categorical": [value]}}})


def test_pooled_statistics_give_category_frequencies_and_keep_them_0_1(tmp_path):
    from fedsim.config import from_dict
    from fedsim.protocol.summary import federated_summary
    from fedsim.run.datasets import load_dataset, standardised

    path = tmp_path / "t.parquet"
    pq.write_table(table_with_categories(), path)
    cfg = from_dict({"data": {"source": "file", "path": str(path), "standardize": "federated",
                              "columns": {"numeric": ["age", "lab_1"], "categorical": [
                                  {"name": "cp", "values": [1, 2, 3, 4]},
                                  {"name": "unit", "values": ["icu", "ward"]}]}},
                     "federation": {"mode": "plaintext"}})
    ds = load_dataset(cfg)
    summary = federated_summary(cfg, ds, backend=None, run_id="t")
    assert summary.features[2:] == ("cp=1", "cp=2", "cp=3", "cp=4", "unit=icu", "unit=ward")
    pooled = np.concatenate([c.raw("train") for c in ds.clients])
    np.testing.assert_allclose(summary.mean[2:], pooled[:, 2:].mean(0), atol=1e-6)
    scaled = standardised(cfg, ds, lambda: None, "t", tmp_path)
    stats = json.loads((tmp_path / "statistics.json").read_text())
    assert stats["scaler"]["mean"][2:] == [0.0] * 6 and stats["scaler"]["std"][2:] == [1.0] * 6
    x = scaled.pooled("train").numeric
    assert set(np.unique(x[:, 2:])) <= {0.0, 1.0}
    assert abs(x[:, 0].mean()) < 1e-4  # the numeric ones on the pooled scale


@pytest.mark.slow
def test_a_run_and_its_predictions_on_categorical_columns(tmp_path):
    """End to end in he: federated statistics open the category frequencies, the model
    trains on them, and fedsim predict one-hot encodes a query alike; a query whose
    category the run never declared is refused in one line."""
    pq.write_table(table_with_categories(rare=6), tmp_path / "t.parquet")
    cfg = tmp_path / "cat.yaml"
    cfg.write_text(
        "name: cat\nseed: 0\n"
        f"data: {{source: file, path: {tmp_path / 't.parquet'}, standardize: federated,\n"
        "  min_category_count: 10,\n"
        "  columns: {numeric: [age, lab_1], categorical: [{name: cp, values: [1, 2, 3, 4, 5]},\n"
        "            {name: unit, values: [icu, ward]}]}}\n"
        "model: {depth: 1, width: 8}\ntrain: {local_steps: 3}\n"
        "federation: {mode: he, rounds: 1, clients_per_round: 3}\n"
        "evaluation: {baselines: none}\n"
        "crypto: {profile: test, allow_insecure: true}\n")

    def fedsim(*args):
        return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    run = tmp_path / "run"
    done = fedsim("run", str(cfg), "--out", str(run), "--backend", "inprocess",
                  "--no-reference")
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads((run / "statistics.json").read_text())
    assert stats["mode"] == "he" and "cp=5" in stats["features"]
    assert stats["folded"] == {"cp": ["5"]}  # 6 records, fewer than 10
    query = table_with_categories(seed=5, hospitals=1, patients=30, rare=2)
    pq.write_table(query, tmp_path / "q.parquet")
    done = fedsim("predict", str(run), "--query", str(tmp_path / "q.parquet"), "--out",
                  str(tmp_path / "s.parquet"), "--backend", "inprocess")
    assert done.returncode == 0, done.stderr[-2000:]
    assert pq.read_table(tmp_path / "s.parquet").num_rows == query.num_rows
    odd = query.set_column(query.column_names.index("unit"), "unit",
                           pa.array(["er"] * query.num_rows))
    pq.write_table(odd, tmp_path / "odd.parquet")
    done = fedsim("predict", str(run), "--query", str(tmp_path / "odd.parquet"), "--out",
                  str(tmp_path / "o.parquet"), "--backend", "inprocess")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "column 'unit' holds values outside its declared categories" in done.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_rare_categories_fold_into_one_feature_and_a_finished_run_reads_the_fold(tmp_path):
    from fedsim.config import from_dict
    from fedsim.run.datasets import load_dataset, run_scale, standardised

    path = tmp_path / "t.parquet"
    pq.write_table(table_with_categories(rare=4), path)
    data = {"source": "file", "path": str(path), "standardize": "federated",
            "min_category_count": 10,
            "columns": {"numeric": ["age"], "categorical": [
                {"name": "cp", "values": [1, 2, 3, 4, 5]},
                {"name": "unit", "values": ["icu", "ward"]}]}}
    cfg = from_dict({"data": data, "federation": {"mode": "plaintext"}})
    raw = load_dataset(cfg)
    assert raw.num_numeric == 8
    scaled = standardised(cfg, raw, lambda: None, "t", tmp_path)
    stats = json.loads((tmp_path / "statistics.json").read_text())
    assert stats["folded"] == {"cp": ["5"]}  # 4 records; unit's are common
    assert scaled.num_numeric == 8  # cp=1..4, cp=other, unit=icu, unit=ward after age
    assert len(stats["scaler"]["mean"]) == 8
    x = np.concatenate([c.raw("train") for c in scaled.clients])
    before = np.concatenate([c.raw("train") for c in raw.clients])
    np.testing.assert_array_equal(x[:, 5], before[:, 5])  # "other" is cp=5 alone here
    np.testing.assert_array_equal(x[:, 1:6].sum(1), 1)
    # A finished run's scale and fold come back from statistics.json, not the rows.
    again = run_scale(cfg, load_dataset(cfg), tmp_path)
    for a, b in zip(again.clients, scaled.clients, strict=True):
        np.testing.assert_allclose(a.train.numeric, b.train.numeric, atol=1e-5)
    # Nothing rare: nothing folded, the declared layout stays.
    common = from_dict({"data": {**data, "min_category_count": 2},
                        "federation": {"mode": "plaintext"}})
    assert standardised(common, raw, lambda: None, "t", tmp_path).num_numeric == 8
    assert json.loads((tmp_path / "statistics.json").read_text())["folded"] == {}


def test_folding_needs_federated_statistics_and_categories_need_a_file():
    from fedsim.config import from_dict

    with pytest.raises(ConfigError, match="min_category_count: rare categories are found"):
        from_dict({"data": {"min_category_count": 5}})
    with pytest.raises(ConfigError, match="only a data file has categorical columns"):
        from_dict({"data": {"columns": {"categorical": [{"name": "cp", "values": [1]}]}}})

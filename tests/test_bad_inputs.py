"""User mistakes found by fault injection: each is one `FedSimError` line naming the
problem (exit code 2 from the CLI), found before any run starts."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from fedsim import load_config, load_run
from fedsim.cli import main
from fedsim.config import RunConfig, from_dict
from fedsim.data import ColumnSpec, load_table, partition
from fedsim.errors import ConfigError, DataError, FedSimError
from fedsim.run.results import RunWriter, write_json
from fedsim.run.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs/quick.yaml"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), lines
    return lines[0]


# 1. Non-finite numbers ---------------------------------------------------------------

def _float_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of every float (or optional float) field of a config dataclass."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        if tp is float:
            keys.append(prefix + f.name)
        elif dataclasses.is_dataclass(tp) and not hasattr(tp, "from_config"):
            keys += _float_keys(tp, f"{prefix}{f.name}.")
    return keys


def _nested(key: str, value) -> dict:
    *sections, leaf = key.split(".")
    data: dict = {leaf: value}
    for section in reversed(sections):
        data = {section: data}
    return data


FLOAT_KEYS = _float_keys(RunConfig)


def test_every_float_setting_is_found():
    assert {"train.lr", "privacy.delta", "crypto.update_bound", "resources.placement_timeout_s",
            "privacy.adaptive_clipping.max_clip", "resources.client.num_cpus"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_setting_refuses_non_finite_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got {value}$"):
        from_dict(_nested(key, value))


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=.nan", "train.lr: must be a finite number, got nan"),
    ("train.lr=.inf", "train.lr: must be a finite number, got inf"),
    ("train.lr=-.Inf", "train.lr: must be a finite number, got -inf"),
    ("train.lr=1e999", "train.lr: must be a finite number, got inf"),
    ("privacy.delta=.NaN", "privacy.delta: must be a finite number, got nan"),
    ("data.fractions=[.nan, 0.5, 0.5]", "data.fractions[0]: must be a finite number, got nan"),
])
def test_non_finite_overrides_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=f"^{message.replace('[', '.').replace(']', '.')}$"):
        load_config(QUICK, [override])


def test_a_non_finite_value_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match="^train.lr: must be a finite number, got nan$"):
        load_config(path)


def test_the_cli_refuses_lr_nan_before_any_run(tmp_path, capsys):
    line = one_line_error(capsys, ["run", str(QUICK), "train.lr=.nan", "--backend",
                                   "inprocess", "--out", str(tmp_path / "run")])
    assert line == "fedsim: error: train.lr: must be a finite number, got nan"
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_sweep_refuses_an_infinite_epsilon(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {QUICK}\ntarget_epsilons: [1, .inf]\n")
    with pytest.raises(ConfigError, match="target_epsilons: inf is not a positive number"):
        load_sweep(path)


# 2. Duplicate keys ------------------------------------------------------------------

def test_a_duplicate_key_is_refused_naming_key_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: duplicate key 'lr' (line 4); each key may appear "
                              "once in a mapping")


def test_a_duplicate_section_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0.1}\nfederation: {rounds: 2}\ntrain: {batch_size: 8}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'train' \(line 3\)"):
        load_config(path)


def test_a_duplicate_key_in_a_sweep_file_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {QUICK}\ntarget_epsilons: [1]\ntarget_epsilons: [2]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: duplicate key 'target_epsilons' "
                                          r"\(line 3\)"):
        load_sweep(path)


def test_a_duplicate_key_in_an_override_is_refused():
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(QUICK, ["train={lr: 0.1, lr: 0.2, batch_size: 8}"])


def test_a_yaml_merge_may_still_override_what_it_brings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("common: &c {lr: 0.1, batch_size: 8, local_steps: 3}\n"
                    "train:\n  <<: *c\n  lr: 0.2\n")
    from fedsim.config import read_yaml

    assert read_yaml(path)["train"] == {"lr": 0.2, "batch_size": 8, "local_steps": 3}


# 3. Standard JSON -------------------------------------------------------------------

def _strict_json(text: str):
    def refuse(name: str):
        raise AssertionError(f"not standard JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_writes_null_for_non_finite_floats(tmp_path):
    data = {"auc": math.nan, "up": math.inf, "f32": np.float32("nan"), "f64": np.float64(0.5),
            "n": np.int64(3), "nested": [{"x": -math.inf}, (1.0, np.nan)],
            "array": np.array([1.0, np.nan]), "path": tmp_path}
    out = _strict_json(write_json(tmp_path / "m.json", data).read_text())
    assert out == {"auc": None, "up": None, "f32": None, "f64": 0.5, "n": 3,
                   "nested": [{"x": None}, [1.0, None]], "array": [1.0, None],
                   "path": str(tmp_path)}


def test_a_hospital_with_one_test_row_gives_valid_metrics_json(tmp_path, capsys):
    from fedsim.learning.metrics import evaluate
    from fedsim.run.progress import summary_table

    one = {**evaluate(np.array([1]), np.array([0.7])).as_dict(), "roc": {"fpr": [], "tpr": []}}
    assert math.isnan(one["auc"])
    report = {"threshold": 0.5, "hospitals": {"h": one}, "pooled": one}
    writer = RunWriter(tmp_path)
    writer.manifest(from_dict({}), run_id="r", status="completed")
    writer.metrics(report)
    metrics = _strict_json((tmp_path / "metrics.json").read_text())
    assert metrics["pooled"]["auc"] is None and metrics["pooled"]["n"] == 1
    assert load_run(tmp_path).metrics == metrics
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(summary_table(metrics, title="t"))
    assert "n/a" in console.export_text()
    assert main(["report", str(tmp_path)]) == 0


# 4. Truncated or corrupt run files -------------------------------------------------

RUN_FILES = ("manifest.json", "rounds.parquet", "params.npz", "metrics.json")


def _run_dir(path: Path) -> Path:
    writer = RunWriter(path)
    writer.manifest(from_dict({}), run_id="r", status="completed")
    writer.round({"round": 0, "wall_s": 1.0, "auc": 0.5})
    writer.params({"dense": {"kernel": np.ones((3, 2), np.float32)}})
    writer.metrics({"threshold": 0.5, "hospitals": {}, "pooled": {"n": 1}})
    load_run(path)  # whole, it reads
    return path


@pytest.mark.parametrize("name", RUN_FILES)
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_run_file_is_one_error_naming_it(tmp_path, name, keep):
    run = _run_dir(tmp_path / "run")
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FedSimError, match=rf"^{run / name} is truncated or not readable"):
        load_run(run)


@pytest.mark.parametrize("name", RUN_FILES)
def test_report_on_a_corrupt_run_file_is_one_line(tmp_path, capsys, name):
    run = _run_dir(tmp_path / "run")
    (run / name).write_bytes(b"\x00garbage\xff" * 3)
    line = one_line_error(capsys, ["report", str(run)])
    assert f"{run / name} is truncated or not readable" in line


# 5. Data files ----------------------------------------------------------------------

def _table(**columns) -> pa.Table:
    base = {"hospital": ["a", "a", "a", "b", "b", "b"],
            "codes": pa.array([[0], [1], [2], [0], [1], [2]]),
            "age": pa.array([50.0, 60.0, 70.0, 40.0, 45.0, 55.0]),
            "label": [0, 1, 0, 1, 0, 1]}
    return pa.table({**base, **columns})


def test_a_value_beyond_float32_is_out_of_range_not_nan():
    table = _table(age=pa.array([50.0, 1e39, 70.0, 40.0, 45.0, 55.0]))
    with pytest.raises(DataError, match=r"^column 'age' has 1 value out of float32 range "
                                        r"\(\|x\| <= 3.403e\+38\), e.g. 1e\+39; rescale"):
        partition(table, ColumnSpec(numeric=("age",)))


def test_a_value_beyond_float32_in_a_csv_is_out_of_range(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("hospital,codes,age,label\na,0,50,0\na,1,-2e39,1\nb,0,1,0\nb,1,3,1\n")
    with pytest.raises(DataError, match="column 'age' has 1 value out of float32 range"):
        partition(load_table(path), ColumnSpec(numeric=("age",)))


def test_a_latin1_csv_is_named_not_utf8(tmp_path):
    path = tmp_path / "d.csv"
    text = "hospital,codes,label\nh\xf4pital-a,0 1,0\nb,1,1\n"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xf4")
    with pytest.raises(DataError) as err:
        load_table(path)
    assert str(err.value) == (f"{path} is not UTF-8 text: byte 0xf4 at offset {offset} "
                              "(line 2) is not valid UTF-8 (Latin-1 or Windows-1252 perhaps); "
                              "re-save the file as UTF-8")
    path.write_bytes(text.encode("utf-8"))
    assert load_table(path).column("hospital")[0].as_py() == "h\xf4pital-a"


def test_a_huge_code_without_vocab_size_is_refused_before_anything_is_built():
    table = _table(codes=pa.array([[0], [1], [2_000_000_000], [0], [1], [2]]))
    with pytest.raises(DataError) as err:
        partition(table, ColumnSpec())
    message = str(err.value)
    assert message.startswith("column 'codes': the largest code is 2000000000, so the code "
                              "embedding would need 2,000,000,001 rows (7.5 GiB of float32 "
                              "per unit of model.width)")
    assert "data.vocab_size" in message and "\n" not in message
    # Set explicitly, the size is the user's call; just under the cap, it is inferred.
    assert partition(table, ColumnSpec(), vocab_size=2_000_000_001).vocab_size == 2_000_000_001
    below = _table(codes=pa.array([[0], [1], [2**22 - 1], [0], [1], [2]]))
    assert partition(below, ColumnSpec()).vocab_size == 2**22


def test_the_cli_refuses_a_huge_code_in_one_line(tmp_path, capsys):
    path = tmp_path / "d.parquet"
    pq.write_table(_table(hospital=["a", "b", "c", "a", "b", "c"],
                          codes=pa.array([[0], [1], [2_000_000_000], [0], [1], [2]])), path)
    line = one_line_error(capsys, ["run", str(QUICK), "data.source=file", f"data.path={path}",
                                   "--backend", "inprocess", "--out", str(tmp_path / "run")])
    assert "the largest code is 2000000000" in line and "data.vocab_size" in line
    assert not (tmp_path / "run" / "rounds.parquet").exists()


def test_a_latin1_csv_run_is_one_line(tmp_path, capsys):
    path = tmp_path / "d.csv"
    pacsv.write_csv(_table(hospital=["a", "b", "c", "a", "b", "c"]).drop_columns(["codes"]),
                    path)
    path.write_bytes(path.read_bytes().replace(b'"a"', "\"caf\xe9\"".encode("latin-1")))
    line = one_line_error(capsys, ["run", str(QUICK), "data.source=file", f"data.path={path}",
                                   "data.columns.codes=null", "--backend", "inprocess",
                                   "--out", str(tmp_path / "run")])
    assert "is not UTF-8 text" in line and "re-save the file as UTF-8" in line


# 6. he mode needs two contributors -------------------------------------------------

def test_he_mode_refuses_min_clients_below_two():
    with pytest.raises(ConfigError, match=r"^federation.min_clients: must be >= 2 in he mode, "
                                          r"got 1: .*that hospital's own update in plaintext$"):
        from_dict({"federation": {"mode": "he", "clients_per_round": 1, "min_clients": 1}})
    with pytest.raises(ConfigError, match="federation.min_clients: must be >= 2 in he mode"):
        load_config(QUICK, ["federation.min_clients=1"])
    plain = from_dict({"federation": {"mode": "plaintext", "clients_per_round": 1,
                                      "min_clients": 1}})
    assert plain.federation.min_clients == 1

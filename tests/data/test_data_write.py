"""`write_table`: Parquet or CSV by suffix, atomic replacement, CSV code strings."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from fedsim.data import load_table, write_table
from fedsim.data import synth as synth_module
from fedsim.errors import DataError


def _table(values: list[int]) -> pa.Table:
    return pa.table({"hospital": ["a"] * len(values), "label": pa.array(values, pa.int8())})


def test_overwrite_leaves_new_content_and_no_temp_files(tmp_path):
    path = tmp_path / "data.parquet"
    write_table(_table([0, 1]), path)
    write_table(_table([1, 1, 0]), path)
    assert pq.read_table(path).equals(_table([1, 1, 0]))
    assert os.listdir(tmp_path) == ["data.parquet"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "data.parquet"
    write_table(_table([0, 1]), path)

    def crash(table, where):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(synth_module.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_table(_table([1, 1, 1]), path)
    monkeypatch.undo()
    assert pq.read_table(path).equals(_table([0, 1]))
    assert os.listdir(tmp_path) == ["data.parquet"]


def test_csv_writes_codes_as_space_separated_integers(tmp_path):
    table = pa.table(
        {
            "hospital": ["a", "b"],
            "codes": pa.array([[0, 17, 4031], [5]], pa.list_(pa.int32())),
            "label": pa.array([1, 0], pa.int8()),
        }
    )
    path = write_table(table, tmp_path / "data.csv")
    assert path.read_text().splitlines() == [
        '"hospital","codes","label"',
        '"a","0 17 4031",1',
        '"b","5",0',
    ]
    back = pacsv.read_csv(path)
    assert back.column("codes").to_pylist() == ["0 17 4031", "5"]


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"unknown suffix '\.txt' \(use \.parquet or \.csv\)"):
        write_table(_table([0]), tmp_path / "data.txt")
    assert os.listdir(tmp_path) == []


def test_parquet_round_trip_keeps_schema(tmp_path, small_table):
    path = write_table(small_table, tmp_path / "ehr.parquet")
    assert load_table(path).equals(small_table)

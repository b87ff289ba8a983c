"""The command line: data synth, user-data errors as one line and exit code 2, report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def fedsim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), proc.stderr
    return lines[0]


def test_data_synth_writes_the_documented_schema(tmp_path):
    out = tmp_path / "ehr.parquet"
    proc = fedsim("data", "synth", "--out", str(out), "--hospitals", "3", "--patients", "200",
                  "--vocab", "500", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column_names == ["hospital", "patient_id", "codes", "age", "lab_0", "lab_1",
                                  "lab_2", "lab_3", "label"]
    assert sorted(set(table.column("hospital").to_pylist())) == [
        "hospital-0", "hospital-1", "hospital-2"]
    assert f"to {out}" in proc.stdout


def _file_run(tmp_path: Path, data_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return fedsim("run", "configs/quick.yaml", "data.source=file", f"data.path={data_path}",
                  "federation.rounds=1", *extra, "--backend", "inprocess",
                  "--out", str(tmp_path / "run"))


def test_user_data_errors_are_one_line(tmp_path):
    assert "data file not found" in one_line_error(_file_run(tmp_path, tmp_path / "none.csv"))

    synth = tmp_path / "ehr.csv"
    assert fedsim("data", "synth", "--out", str(synth), "--hospitals", "3", "--patients", "100",
                  "--vocab", "300").returncode == 0
    table = pacsv.read_csv(synth)
    pacsv.write_csv(table.drop_columns(["label"]), tmp_path / "nolabel.csv")
    line = one_line_error(_file_run(tmp_path, tmp_path / "nolabel.csv"))
    assert "label" in line and "missing" in line

    import pyarrow as pa

    doubled = pa.array(table.column("label").to_numpy() * 2)
    three = table.set_column(table.column_names.index("label"), "label", doubled)
    pacsv.write_csv(three, tmp_path / "labels.csv")
    assert "binary" in one_line_error(_file_run(tmp_path, tmp_path / "labels.csv"))

    line = one_line_error(_file_run(tmp_path, synth, "data.hospitals=[hospital-0,hospital-9]",
                                    "federation.clients_per_round=2"))
    assert "hospital-9" in line
    assert not (tmp_path / "run" / "rounds.parquet").exists()


def test_a_csv_of_ones_own_runs_and_report_reads_it(tmp_path):
    synth = tmp_path / "ehr.csv"
    fedsim("data", "synth", "--out", str(synth), "--hospitals", "3", "--patients", "150",
           "--vocab", "300")
    proc = _file_run(tmp_path, synth, "federation.mode=plaintext", "--no-reference")
    assert proc.returncode == 0, proc.stderr
    report = fedsim("report", str(tmp_path / "run"))
    assert report.returncode == 0 and "status completed, 1 rounds" in report.stdout
    assert "pooled" in report.stdout


def test_overrides_may_follow_options(tmp_path):
    proc = fedsim("run", "configs/quick.yaml", "--out", str(tmp_path / "r"), "train.lr=-2")
    assert "train.lr: must be > 0, got -2.0" in one_line_error(proc)

"""A results directory inside a Ray job's unpacked working directory is refused.

`ray job submit --working-dir .` runs the entrypoint in Ray's unpacked copy of the
directory, ``<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>``; Ray owns
that copy (it unpacks it again, and deletes it), so a relative ``--out`` (or none: the
default is ``runs/<name>-<timestamp>``) must not land there. Faked here without a
cluster: the same layout under tmp_path, and the job config Ray's job supervisor sets
for the entrypoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from builders import tiny_config

from fedsim.cli import main
from fedsim.errors import ConfigError
from fedsim.run.results import check_out_dir, load_run

PKG = "_ray_pkg_5f1c0ffee5f1c0ffee5f1c0ffee5f1c0"


def _working_dir(root: Path, name: str = PKG) -> Path:
    wd = root / "session_2026-01-01_00-00-00_000000_1" / "runtime_resources" / \
        "working_dir_files" / name
    (wd / "configs").mkdir(parents=True)
    return wd


def _config(where: Path) -> str:
    cfg = tiny_config(federation={"rounds": 1, "mode": "plaintext"})
    path = where / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return str(path)


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), lines
    return lines[0]


@pytest.mark.parametrize("out", [None, "runs/x", "./deep/../runs/y"])
def test_a_relative_or_default_out_in_a_job_working_dir_is_one_line(
        tmp_path, monkeypatch, capsys, out):
    wd = _working_dir(tmp_path)
    config = _config(wd / "configs")
    monkeypatch.chdir(wd)
    argv = ["run", "configs/tiny.yaml", "--backend", "inprocess", "--no-reference"]
    assert main(argv + (["--out", out] if out else [])) == 2
    line = _one_line(capsys)
    assert "results directory " in line and f"inside the Ray job's working directory {wd}" \
        in line, line
    assert "give --out an absolute path outside it" in line and "--out /shared/runs/" in line
    assert sorted(p.name for p in wd.rglob("*")) == ["configs", Path(config).name]


def test_an_absolute_out_outside_the_job_working_dir_still_runs(tmp_path, monkeypatch):
    wd = _working_dir(tmp_path)
    _config(wd / "configs")
    monkeypatch.chdir(wd)
    out = tmp_path / "kept" / "run"
    assert main(["run", "configs/tiny.yaml", "--backend", "inprocess", "--no-reference",
                 "--out", str(out)]) == 0
    assert load_run(out).rounds.num_rows == 1
    assert not (wd / "runs").exists()


def test_the_job_config_names_the_working_dir_wherever_ray_unpacked_it(
        tmp_path, monkeypatch):
    # Layout aside, the package the job's runtime env names (gcs://<pkg>.zip) is refused.
    wd = tmp_path / "elsewhere" / PKG
    wd.mkdir(parents=True)
    monkeypatch.chdir(wd)
    check_out_dir(Path("runs/a"))  # not recognisable without the job config
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": f"gcs://{PKG}.zip"}, "metadata": {}}))
    with pytest.raises(ConfigError, match="inside the Ray job's working directory"):
        check_out_dir(Path("runs/b"))
    # A symlink out of the working dir does not hide it; an outside path is fine.
    (tmp_path / "link").symlink_to(wd)
    with pytest.raises(ConfigError, match="inside the Ray job's working directory"):
        check_out_dir(tmp_path / "link" / "runs" / "c")
    check_out_dir(tmp_path / "outside")
    # A job whose working dir is used in place (local://) is not Ray's to delete.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": f"local://{wd}"}}))
    check_out_dir(Path("runs/d"))
    for broken in ("not json", "[]", '{"runtime_env": null}'):
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", broken)
        check_out_dir(Path("runs/e"))

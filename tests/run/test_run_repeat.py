"""Repeated runs (``fedsim run CONFIG --seeds N``, `fedsim.run.repeat`): one run
directory per seed, and a summary whose numbers are those the runs wrote."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from builders import tiny_config

from fedsim.cli import main


def _config_file(tmp_path, **sections):
    cfg = tiny_config(federation={"mode": "plaintext", "rounds": 2}, **sections)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return str(path)


def test_seeds_run_one_directory_each_and_summarise_what_they_wrote(tmp_path, capsys):
    config = _config_file(tmp_path, evaluation={"baselines": "all"})
    out = tmp_path / "rep"
    assert main(["run", config, "--seeds", "3", "--backend", "inprocess",
                 "--out", str(out)]) == 0
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["tiny-seed0", "tiny-seed1", "tiny-seed2"]
    rows = pq.read_table(out / "seeds.parquet").to_pylist()
    assert [r["seed"] for r in rows] == [0, 1, 2]
    aucs, local, central = [], [], []
    for r, name in zip(rows, runs, strict=True):
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["config"]["seed"] == r["seed"] and manifest["status"] == "completed"
        metrics = json.loads((out / name / "metrics.json").read_text())
        b = metrics["baselines"]
        assert r["auc"] == pytest.approx(metrics["pooled"]["auc"])
        assert r["best_local_auc"] == pytest.approx(
            b["local"][b["best_local"]]["pooled_test_auc"])
        assert r["centralized_auc"] == pytest.approx(b["centralized"]["pooled_test_auc"])
        aucs.append(metrics["pooled"]["auc"])
        local.append(r["best_local_auc"])
        central.append(r["centralized_auc"])
    assert len(set(aucs)) > 1  # the seed changes the data and the model
    summary = (out / "seeds.md").read_text()
    mean = sum(aucs) / 3
    assert (f"| ROC AUC | {mean:.4f} | {min(aucs):.4f} | {max(aucs):.4f} | 3 |"
            in summary)
    assert f"| centralized model's ROC AUC | {sum(central) / 3:.4f} |" in summary
    assert f"| {max(local):.4f} | 3 |" in summary
    assert (out / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    assert "3 runs; table and plot in" in capsys.readouterr().out


def test_a_repeat_directory_never_mixes_runs(tmp_path, capsys):
    config = _config_file(tmp_path)
    out = tmp_path / "rep"
    args = ["run", config, "--seeds", "1", "--backend", "inprocess", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2  # again, without --overwrite
    err = capsys.readouterr().err
    assert "already holds this repetition's results; pass --overwrite" in err
    assert "Traceback" not in err
    before = (out / "seeds.md").read_text()
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 2  # a file that is not of this repetition
    assert "holds 'notes.txt', which is not of this repetition" in capsys.readouterr().err
    assert (out / "seeds.md").read_text() == before and (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    (out / "tiny-seed0" / "mine.txt").write_text("mine")  # not a run's file
    assert main([*args, "--overwrite"]) == 2
    assert "holds 'tiny-seed0/mine.txt'" in capsys.readouterr().err
    (out / "tiny-seed0" / "mine.txt").unlink()
    (out / "tiny-seed0" / ".rounds.parquet.x1.tmp").write_text("")  # a SIGKILL's leftover
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "tiny-seed0" / ".rounds.parquet.x1.tmp").exists()
    assert main(["run", config, "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--seeds: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_overwriting_repetition_that_fails_halfway_leaves_no_old_run(tmp_path, capsys,
                                                                        monkeypatch):
    from fedsim.run import runner

    config = _config_file(tmp_path)
    out = tmp_path / "rep"
    args = ["run", config, "--seeds", "2", "--backend", "inprocess", "--out", str(out),
            "--no-reference"]
    assert main(args) == 0
    honest = runner.run_federated

    def second_fails(cfg, **kw):
        if cfg.seed == 1:
            raise KeyboardInterrupt
        return honest(cfg, **kw)

    monkeypatch.setattr(runner, "run_federated", second_fails)
    assert main([*args, "--overwrite"]) == 130  # interrupted in its second run
    assert sorted(p.name for p in out.iterdir()) == ["seeds.md", "seeds.parquet",
                                                    "seeds.png", "tiny-seed0"]
    assert "1 runs (seeds 0 to 0) (of 2; the others are not done)" in (
        out / "seeds.md").read_text()
    assert pq.read_table(out / "seeds.parquet").column("seed").to_pylist() == [0]


def test_a_seed_name_taken_by_a_file_is_refused_and_an_empty_summary_plots(tmp_path, capsys):
    from fedsim.run.plots import plot_seeds

    config = _config_file(tmp_path)
    out = tmp_path / "rep"
    out.mkdir()
    (out / "tiny-seed0").write_text("not a run")
    assert main(["run", config, "--seeds", "1", "--backend", "inprocess", "--out", str(out),
                 "--overwrite"]) == 2
    assert "holds 'tiny-seed0', which is not of this repetition" in capsys.readouterr().err
    row = {"auc": None, "best_local_auc": None, "centralized_auc": None}
    plot_seeds([row], tmp_path / "empty.png", title="one-class")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"

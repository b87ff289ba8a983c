"""``fedsim sweep``: every point's config checked up front, one run each, table and plot."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from fedsim.errors import ConfigError
from fedsim.run.sweep import load_sweep, run_sweep, sweep_config

BASE = {
    "name": "tiny", "seed": 0,
    "data": {"synth": {"num_hospitals": 3, "patients_per_hospital": 300, "vocab_size": 500,
                       "mean_codes": 6.0}},
    "model": {"depth": 2, "width": 8},
    "train": {"lr": 0.01, "batch_size": 32, "local_steps": 5},
    "federation": {"rounds": 2, "clients_per_round": 3, "min_clients": 2},
}


def _sweep(tmp_path, **fields):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    data = {"base": "base.yaml", "name": "eps", "target_epsilons": [None, 8.0],
            # plaintext: no epsilon holds against the participants; target the observer
            "privacy": {"clip": 0.05, "delta": 1e-5, "epsilon_against": "observer"}, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sweep_runs_each_point_and_tabulates_it(tmp_path):
    spec = load_sweep(_sweep(tmp_path, overrides=["federation.rounds=2"]))
    assert spec.target_epsilons == (None, 8.0) and spec.base == (tmp_path / "base.yaml")
    nodp, eps8 = (sweep_config(spec, e, ()) for e in spec.target_epsilons)
    assert not nodp.privacy.enabled and nodp.name == "eps-nodp"
    assert eps8.privacy.target_epsilon == 8.0 and eps8.privacy.clip == 0.05
    table = run_sweep(spec, tmp_path / "out", backend="inprocess")
    rows = pq.read_table(tmp_path / "out" / "sweep.parquet").to_pylist()
    assert table.num_rows == 2 and [r["target_epsilon"] for r in rows] == [None, 8.0]
    assert rows[0]["spent_epsilon"] is None and rows[0]["noise_multiplier"] is None
    assert 0 < rows[1]["spent_epsilon"] <= 8.0 and rows[1]["noise_multiplier"] > 0
    assert all(r["rounds"] == 2 and 0 <= r["auc"] <= 1 for r in rows)
    text = (tmp_path / "out" / "sweep.md").read_text()
    assert text.startswith("# eps") and "| no DP |" in text and "| 8 (observer) |" in text
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"eps-nodp", "eps-eps8"}


@pytest.mark.parametrize(("fields", "message"), [
    ({"target_epsilons": []}, "target_epsilons: expected a non-empty list"),
    ({"target_epsilons": [0]}, "target_epsilons: 0 is not a positive number or null"),
    ({"epsilons": [1]}, "epsilons: unknown sweep key"),
    ({"overrides": ["train.lr=-1"]}, "train.lr: must be > 0"),
])
def test_bad_sweeps_are_refused_before_any_run(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_sweep(tmp_path, **fields))


def test_a_sweep_with_seeds_runs_each_point_per_seed_and_reports_min_and_max(tmp_path):
    spec = load_sweep(_sweep(tmp_path, target_epsilons=[None], seeds=2,
                             overrides=["federation.rounds=1"]))
    assert spec.seeds == 2
    configs = [sweep_config(spec, None, (), r) for r in range(2)]
    assert [c.seed for c in configs] == [0, 1]
    assert [c.name for c in configs] == ["eps-nodp-seed0", "eps-nodp-seed1"]
    run_sweep(spec, tmp_path / "out", backend="inprocess")
    rows = pq.read_table(tmp_path / "out" / "sweep.parquet").to_pylist()
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["auc"] != rows[1]["auc"]
    text = (tmp_path / "out" / "sweep.md").read_text()
    low, high = sorted(r["auc"] for r in rows)
    assert f"{(low + high) / 2:.3f} [{low:.3f}, {high:.3f}]" in text
    assert "2 runs (seeds)" in text
    assert (tmp_path / "out" / "sweep_roc.png").read_bytes()[:4] == b"\x89PNG"


def test_the_summary_of_a_point_is_the_mean_min_and_max_over_its_seeds():
    from fedsim.run.sweep import METRICS, summarise

    def row(eps, seed, auc):
        return {"target_epsilon": eps, "seed": seed, "epsilon_against": None,
                "insecure_seeded_noise": False, "epsilon_participants": eps,
                "epsilon_observer": eps, "noise_multiplier": None,
                **{key: auc for key in METRICS}}

    points = summarise([row(None, 0, 0.8), row(None, 1, 0.9), row(None, 2, 0.7),
                        row(1.0, 0, 0.6)])
    assert [p["target_epsilon"] for p in points] == [None, 1.0]
    nodp = points[0]
    assert nodp["auc"] == pytest.approx(0.8) and (nodp["auc_min"], nodp["auc_max"]) == (0.7, 0.9)
    assert nodp["median_seed"] == 0 and nodp["seeds"] == 3 and points[1]["seeds"] == 1


def test_seeds_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ConfigError, match="seeds: expected an integer >= 1"):
        load_sweep(_sweep(tmp_path, seeds=0))

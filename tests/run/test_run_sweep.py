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

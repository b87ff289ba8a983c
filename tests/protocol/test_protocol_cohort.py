"""Cohorts: many clients per party through the same round loop, key ceremony and
decryption as hospitals; the W2 workload and its peer's twin of fedsim's pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import federation, leaves, scored_rounds, tiny_config

from fedsim import load_config, load_run
from fedsim.errors import ConfigError
from fedsim.protocol.federation import Federation
from fedsim.protocol.sampling import sample_clients
from fedsim.run.runner import load_dataset, run_federated

ROOT = Path(__file__).resolve().parents[2]
W2 = ROOT / "configs/w2.yaml"


def w2_config(*overrides):
    return load_config(W2, ["data.teacher.num_clients=40", "federation.rounds=3",
                            "crypto.profile=test", "crypto.allow_insecure=true", *overrides])


@pytest.mark.parametrize("mode", ["plaintext", "he"])
def test_a_cohort_trains_its_clients_as_hospitals_would(mode):
    """Same seed, same data: two cohorts give the hospitals' model (vmap vs one by one)."""
    hospitals = federation(tiny_config(federation={"mode": mode}))
    cohorts = federation(tiny_config(federation={"mode": mode, "clients": "cohort",
                                                 "cohorts": 2}))
    assert sorted(cohorts.population.party_roles) == ["cohort:0", "cohort:1"]
    a = scored_rounds(hospitals, 3)
    b = scored_rounds(cohorts, 3)
    assert [r.clients for r in a] == [r.clients for r in b]
    tolerance = 1e-6 if mode == "plaintext" else 1e-4  # CKKS noise on top of vmap rounding
    assert np.max(np.abs(hospitals.state.params - cohorts.state.params)) <= tolerance
    assert abs(a[-1].metrics.auc - b[-1].metrics.auc) <= 1e-3
    if mode == "he":
        assert b[0].phases["partial_decrypt"] > 0 and b[0].phases["encrypt"] > 0


def test_fedsim_run_drives_a_cohort_under_encryption(tmp_path):
    """The many-clients workload goes through ``fedsim run`` (he, key holders, manifest)."""
    cfg = w2_config("federation.mode=he")
    outcome = run_federated(cfg, out_dir=tmp_path / "w2", backend="inprocess", reference=False)
    run = load_run(tmp_path / "w2")
    assert run.manifest["status"] == "completed" and run.rounds.num_rows == 3
    assert run.rounds.column("num_clients").to_pylist() == [10, 10, 10]
    assert all(t > 0 for t in run.rounds.column("t_partial_decrypt_s").to_pylist())
    # evaluation.every 0: scored once, after the last round, on the held-out test set
    assert np.isnan(run.rounds.column("auc").to_pylist()[0])
    assert run.metrics["pooled"]["n"] == 2000 and run.metrics["hospitals"] == {}
    assert outcome.report["pooled"]["auc"] == pytest.approx(run.rounds.column("auc")[-1].as_py())


def test_the_many_clients_benchmark_runs_the_same_round(monkeypatch):
    from benchmarks import many_clients

    calls = []
    honest = Federation.run_round

    def counted(self, round_idx):
        calls.append((self.cfg.federation.mode, round_idx))
        return honest(self, round_idx)

    monkeypatch.setattr(Federation, "run_round", counted)
    row = many_clients.run_fedsim("he", clients=30, per_round=5, rounds=2, backend="inprocess",
                                  profile="fast")
    assert calls == [("he", 0), ("he", 1)]
    assert row["mode"] == "he-fast" and 0.5 <= row["accuracy"] <= 1.0
    source = Path(many_clients.__file__).read_text()
    assert "KeyHolder" not in source and "Aggregator" not in source  # no second loop


def test_w2_peer_twins_fedsims_data_model_sampling_and_training():
    from benchmarks import _w2

    cfg = w2_config()
    dataset = load_dataset(cfg)
    fed = Federation(cfg, dataset, backend=None, run_id="twin")
    flat_peer = np.concatenate([np.ravel(v) for v in leaves(_w2.init_params())])
    flat_ours = np.concatenate([np.ravel(v) for v in leaves(fed.params)])
    np.testing.assert_array_equal(flat_peer, flat_ours)
    for i in (0, 7, 39):
        x, y = _w2.client_data(i)
        np.testing.assert_array_equal(dataset.clients[i].train.numeric, x)
        np.testing.assert_array_equal(dataset.clients[i].train.labels, y)
    x, y = _w2.test_data()
    np.testing.assert_array_equal(dataset.holdout.numeric, x)
    for r in range(5):
        ours = sample_clients(cfg, fed.names, r)
        assert ours == [fed.names[i] for i in _w2.sample_round(0, r, 40, 10)]
    # one client's local epoch: the peer's training function against fedsim's trainer
    from fedsim.learning.train import LocalTrainer
    from fedsim.seeding import stream

    trainer = LocalTrainer(fed.model, cfg.train)
    inputs = trainer.inputs(stream(0, "batches", 0, 3), dataset.clients[3].train, 5, seed=0,
                            round_idx=0, index=3)
    ours, _ = trainer.train(fed.params, inputs)
    peer = _w2.local_train(_w2.init_params(), *_w2.client_data(3))
    for a, b in zip(leaves(ours), leaves(peer)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_cohort_clients_need_equal_local_steps():
    cfg = tiny_config(train={"local_steps": None, "local_epochs": 1.0},
                      federation={"clients": "cohort"})
    with pytest.raises(ConfigError, match="local step counts differ .* set train.local_steps"):
        federation(cfg)
    with pytest.raises(ConfigError, match="record-level DP-SGD runs one client per actor"):
        tiny_config(federation={"clients": "cohort"},
                    privacy={"enabled": True, "level": "record", "noise_multiplier": 1.0})
    with pytest.raises(ConfigError, match="federation.cohorts: 4 cohorts but only 3 clients"):
        tiny_config(federation={"clients": "cohort", "cohorts": 4})

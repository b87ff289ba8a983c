"""One round's logic, in process and on Ray, and what a run writes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from builders import federation, leaves, scored_rounds, tiny_config, train_one

from fedsim import load_run
from fedsim.protocol.sampling import sample_clients
from fedsim.run.runner import run_federated


def test_sampling_is_seeded_and_fixed_size():
    cfg = tiny_config(federation={"clients_per_round": 2})
    names = ["a", "b", "c"]
    picks = [sample_clients(cfg, names, r) for r in range(20)]
    assert all(len(p) == 2 and len(set(p)) == 2 for p in picks)
    assert picks == [sample_clients(cfg, names, r) for r in range(20)]
    assert len({tuple(p) for p in picks}) > 1


def test_round_is_the_weighted_average_of_client_deltas():
    cfg = tiny_config()
    fed = federation(cfg)
    before = fed.state.params.copy()
    # What each client would contribute, computed independently of the aggregator.
    deltas, weights = [], []
    for name in fed.names:
        meta, payload = train_one(fed, name, 0, before)
        deltas.append(payload[:fed.num_params] / payload[-1])
        weights.append(payload[-1])  # n_i / the public normaliser
    record = fed.run_round(0)
    expected = before + np.average(np.stack(deltas), axis=0, weights=weights)
    np.testing.assert_allclose(fed.state.params, expected, atol=1e-6)
    assert record.clients == tuple(sorted(fed.names)) and record.dropped == ()
    # The update, the summed statistics (loss, update norm) and the weight.
    assert record.bytes_up == sum(8 * (before.size + 3) for _ in fed.names)


def test_a_client_with_a_broken_update_is_dropped_and_the_round_goes_on():
    cfg = tiny_config()
    fed = federation(cfg)
    victim = fed.backend.parties[f"client:{fed.names[0]}"]
    honest = victim.train

    def broken(round_idx, flat, clients, context, commitment):
        reports, bundle = honest(round_idx, flat, clients, context, commitment)
        payload = bundle.payloads[0].copy()
        payload[3] = np.nan
        return reports, replace(bundle, payloads=(payload,))

    victim.train = broken
    record = fed.run_round(0)
    assert record.dropped == (fed.names[0],)
    assert len(record.clients) == 2
    assert any("NaN" in w for w in fed.warnings)


def test_run_writes_complete_results(tmp_path):
    cfg = tiny_config()
    outcome = run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess", reference=False)
    run = load_run(tmp_path / "run")
    assert run.config == cfg
    assert run.manifest["status"] == "completed" and run.manifest["rounds_completed"] == 3
    assert run.rounds.num_rows == 3
    cols = set(run.rounds.column_names)
    for c in ("round", "wall_s", "t_train_s", "t_aggregate_s", "t_evaluate_s", "bytes_up",
              "bytes_down", "loss", "auc", "pr_auc", "balanced_accuracy", "precision",
              "recall", "clients"):
        assert c in cols
    assert run.rounds.column("round").to_pylist() == [0, 1, 2]
    assert all(t > 0 for t in run.rounds.column("t_train_s").to_pylist())
    assert run.rounds.column("auc").to_pylist()[-1] == pytest.approx(
        outcome.report["pooled"]["auc"])
    fed = federation(cfg)
    scored_rounds(fed, 3)
    flat_loaded = np.concatenate([np.ravel(v) for v in leaves(run.params)])
    flat_fresh = np.concatenate([np.ravel(v) for v in leaves(fed.params)])
    np.testing.assert_array_equal(flat_loaded, flat_fresh)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert set(metrics["hospitals"]) == set(fed.names)
    assert (tmp_path / "run/roc.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "run").glob(".*tmp"))



@pytest.mark.ray
def test_ray_backend_matches_in_process(ray_session):
    from actors import RayBackend

    cfg = tiny_config()
    local = federation(cfg)
    on_ray = federation(cfg, RayBackend("ray-eq"), run_id="ray-eq")
    try:
        names = sorted(ray_session.util.list_named_actors(all_namespaces=True),
                       key=str)
        listed = {n["name"] if isinstance(n, dict) else n for n in names}
        assert {"ray-eq/aggregator", *(f"ray-eq/client-{c}" for c in on_ray.names)} <= listed
        a = scored_rounds(local, 3)
        b = scored_rounds(on_ray, 3)
    finally:
        on_ray.backend.shutdown()
    np.testing.assert_array_equal(local.state.params, on_ray.state.params)
    assert [r.metrics.auc for r in a] == [r.metrics.auc for r in b]
    assert [r.clients for r in a] == [r.clients for r in b]

"""Secure prediction aggregation (`fedsim.protocol.prediction`, ``fedsim predict``): the
querier gets every query row's ensemble score within the stated CKKS precision of the
hospitals' plaintext mean, and nothing in its view is one hospital's score."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from builders import RecordingBackend, numbers_in, tiny_config

from fedsim.data import Split
from fedsim.errors import ProtocolError, Refusal
from fedsim.learning.model import build_model, init_params
from fedsim.learning.train import LocalTrainer, predict
from fedsim.protocol.backend import InProcessBackend
from fedsim.protocol.prediction import PredictionPlan, QueryRows, predict_ensemble
from fedsim.run.runner import load_dataset
from fedsim.seeding import client_key

ROOT = Path(__file__).resolve().parents[2]


def setting():
    cfg = tiny_config(federation={"mode": "he", "rounds": 2})
    data = load_dataset(cfg)
    model = build_model(cfg.model, vocab_size=data.vocab_size, num_numeric=data.num_numeric)
    params = init_params(model, key=client_key(cfg.seed, 1), max_codes=data.max_codes)
    from jax.flatten_util import ravel_pytree

    flat, _ = ravel_pytree(params)
    # The querier's patients: hospital 0's test rows, on their raw numeric scale.
    rows = data.clients[0].test
    mean, std = data.clients[0].scaler
    query = QueryRows(np.asarray(rows.codes), np.asarray(rows.numeric, np.float64) * std + mean)
    return cfg, data, model, params, np.asarray(flat), query


def _spy_on_scores(monkeypatch) -> list[np.ndarray]:
    """Each hospital's own scores as it seals them (what the querier must never see)."""
    seen: list[np.ndarray] = []
    encode = PredictionPlan.encode

    def spying(self, context, scores):
        seen.append(np.asarray(scores, np.float64).copy())
        return encode(self, context, scores)

    monkeypatch.setattr(PredictionPlan, "encode", spying)
    return seen


def test_the_querier_gets_the_ensemble_within_ckks_precision(monkeypatch):
    cfg, data, model, params, flat, query = setting()
    own = _spy_on_scores(monkeypatch)
    backend = RecordingBackend()
    result = predict_ensemble(cfg, data, flat, query, backend=backend, run_id="q")
    each = np.array([predict(model, params, Split(query.codes, c.standardise(query.numeric),
                                                  np.zeros(len(query), np.float32)))
                     for c in data.clients])
    assert result.hospitals == data.names and result.scores.shape == (len(query),)
    assert 0 < result.error_bound < 1e-4
    assert np.max(np.abs(result.scores - each.mean(axis=0))) <= result.error_bound
    # Each hospital scored on its own scale: their scores differ, so a leak would show.
    assert len(own) == 3 and np.all(np.abs(own[0] - own[1]) > 1e-5)
    seen: list[float] = []
    numbers_in(backend.seen, seen)
    numbers_in(result, seen)
    seen_arr = np.array(seen)
    assert seen_arr.size >= len(query)
    for scores in own:
        for value in scores:
            assert not np.isclose(seen_arr, value, rtol=1e-6, atol=0).any(), \
                f"a hospital's score {value!r} reached the querier"


def test_fine_tuned_hospitals_score_with_models_of_their_own(monkeypatch):
    cfg, data, _, _, flat, query = setting()
    own = _spy_on_scores(monkeypatch)
    trained = []
    train = LocalTrainer.train

    def counting(self, params, inputs):
        trained.append(1)
        return train(self, params, inputs)

    monkeypatch.setattr(LocalTrainer, "train", counting)
    tuned = predict_ensemble(cfg, data, flat, query, backend=InProcessBackend(), run_id="q",
                             fine_tune=True)
    assert len(trained) == 3
    assert np.max(np.abs(tuned.scores - np.mean(own, axis=0))) <= tuned.error_bound


def test_key_holders_refuse_a_prediction_of_some_hospitals_only():
    cfg, data, _, _, flat, query = setting()
    calls = {}

    class Intercepting(InProcessBackend):
        def call(self, role, method, *args, **kwargs):
            if method == "sum_evaluation":  # the coordinator sums two hospitals only
                args = (args[0], *args[1:3])
                calls["summed"] = len(args) - 1
            return super().call(role, method, *args, **kwargs)

    with pytest.raises(Refusal, match="predict sum of 2 of the 3 registered clients"):
        predict_ensemble(cfg, data, flat, query, backend=Intercepting(), run_id="q")
    assert calls["summed"] == 2


def test_a_prediction_plan_checks_what_it_opens():
    plan = PredictionPlan(rows=3, contributors=2)

    class Context:
        value_bound, error_bound, values_per_ciphertext = 0.5, 1e-6, 2

    values = plan.encode(Context, np.array([0.1, 0.5, 0.9])) * 2  # two hospitals, alike
    assert np.allclose(plan.decode(Context, values), [0.1, 0.5, 0.9])
    assert plan.ciphertexts(Context) == 2
    from fedsim.errors import CryptoError

    with pytest.raises(CryptoError, match="counts 1.000 hospitals"):
        plan.decode(Context, values / 2)
    with pytest.raises(CryptoError, match="in \\[0, 1\\]"):
        plan.encode(Context, np.array([0.1, 1.5, 0.9]))


@pytest.mark.slow
def test_fedsim_predict_and_verify_on_a_finished_run(tmp_path):
    env_run = [sys.executable, "-m", "fedsim.cli"]
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\nseed: 0\n"
        "data: {synth: {num_hospitals: 3, patients_per_hospital: 200, vocab_size: 300}}\n"
        "model: {depth: 1, width: 8}\ntrain: {local_steps: 3}\n"
        "federation: {mode: he, rounds: 1, clients_per_round: 3}\n"
        "crypto: {profile: test, allow_insecure: true}\n")
    run = tmp_path / "run"

    def fedsim(*args):
        return subprocess.run([*env_run, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)

    done = fedsim("run", str(cfg), "--out", str(run), "--backend", "inprocess",
                  "--no-reference")
    assert done.returncode == 0, done.stderr[-2000:]
    query = tmp_path / "query.parquet"
    assert fedsim("data", "synth", "--out", str(query), "--hospitals", "1", "--patients",
                  "40", "--vocab", "300", "--seed", "7").returncode == 0
    out = tmp_path / "scores.parquet"
    done = fedsim("predict", str(run), "--query", str(query), "--out", str(out),
                  "--backend", "inprocess")
    assert done.returncode == 0, done.stderr[-2000:]
    table = pq.read_table(out)
    assert table.column_names == ["row", "score"]
    assert table.num_rows == pq.read_table(query).num_rows
    assert all(0 <= s <= 1 for s in table.column("score").to_pylist())
    assert b"error_bound" in table.schema.metadata[b"fedsim"]
    # User mistakes: one line, exit 2, nothing written over.
    again = fedsim("predict", str(run), "--query", str(query), "--out", str(out),
                   "--backend", "inprocess")
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "exists; pass --overwrite" in again.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("x\n1\n")
    wrong = fedsim("predict", str(run), "--query", str(bad), "--out", str(tmp_path / "b.parquet"),
                   "--backend", "inprocess")
    assert wrong.returncode == 2 and "lacks the run's feature column" in wrong.stderr
    assert not (tmp_path / "b.parquet").exists()
    # fedsim verify: the run's own params pass; another model fails (exit 1, one line).
    ok = fedsim("verify", str(run))
    assert ok.returncode == 0 and "fedsim verify: OK" in ok.stdout, ok.stderr[-2000:]
    with np.load(run / "params.npz") as loaded:
        other = {k: loaded[k] * 1.001 for k in loaded.files}
    np.savez(tmp_path / "other.npz", **other)
    failed = fedsim("verify", str(run), "--params", str(tmp_path / "other.npz"))
    assert failed.returncode == 1 and failed.stderr.startswith("fedsim verify: FAILED")
    assert failed.stderr.count("\n") == 1


def test_a_query_or_plan_of_its_own_for_some_hospitals_is_refused():
    """The coordinator hands the query and the plan: the same bytes as another dtype (so
    that the other hospitals' scores saturate to 0 or 1) or a plan of another class
    would leave one hospital's scores readable in the ensemble."""
    cfg, data, _, _, flat, query = setting()
    swapped = QueryRows.__new__(QueryRows)  # the same bytes, read as integers
    object.__setattr__(swapped, "codes", query.codes)
    object.__setattr__(swapped, "numeric", query.numeric.view(np.int64))

    class Swapping(InProcessBackend):
        def call(self, role, method, *args, **kwargs):
            if method == "predict" and not role.endswith("hospital-0"):
                args = (args[0], swapped, *args[2:])
            return super().call(role, method, *args, **kwargs)

    with pytest.raises(Refusal, match="different models"):
        predict_ensemble(cfg, data, flat, query, backend=Swapping(), run_id="q")

    class Other(PredictionPlan):
        pass

    class Replanning(InProcessBackend):
        def call(self, role, method, *args, **kwargs):
            if method == "predict":
                args = (*args[:2], Other(len(query), 3), *args[3:])
            return super().call(role, method, *args, **kwargs)

    with pytest.raises(ProtocolError, match="refuses a prediction plan"):
        predict_ensemble(cfg, data, flat, query, backend=Replanning(), run_id="q")


def test_a_key_made_for_a_query_opens_no_training_sum():
    from fedsim.protocol.federation import Federation
    from fedsim.protocol.prediction import prediction_config

    cfg, data, _, _, _, query = setting()
    fed = Federation(prediction_config(cfg), data.withheld(), InProcessBackend(), run_id="q",
                     hospital_data=data, evaluation=PredictionPlan(len(query), 3))
    fed.setup()
    with pytest.raises(Refusal, match="training sum under a key made for a query"):
        fed.run_round(0)

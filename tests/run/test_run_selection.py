"""Model selection (``evaluation.select: best_val``, `fedsim.learning.selection`): the run
reports and deploys the evaluated round's model with the best pooled validation AUC,
test metrics at it and at the last round, chosen on validation alone; kept across a
resume; attested by the key holders in he mode."""

from __future__ import annotations

import json

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from builders import tiny_config
from jax.flatten_util import ravel_pytree

from fedsim.aggregate.server import ServerState
from fedsim.errors import ConfigError
from fedsim.learning.evaluation import CentralEvaluator
from fedsim.learning.metrics import evaluate
from fedsim.learning.selection import Selection, Snapshot
from fedsim.learning.train import predict
from fedsim.run import checkpoint
from fedsim.run.results import unflatten_params


def flip_output(fed) -> None:
    """Give the coordinator's global model a negated output layer: its scores rank
    patients backwards (AUC 1 - AUC), a round that must not be selected."""
    tree = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), fed.params)
    tree["logit"] = {k: -v for k, v in tree["logit"].items()}
    flat, _ = ravel_pytree(tree)
    fed.state = ServerState(params=np.asarray(flat, np.float32), opt_state=fed.state.opt_state)


def auc_of(fed, params, rows):
    return evaluate(rows.labels, predict(fed.model, params, rows)).auc


def test_selection_keeps_the_strictly_best_finite_validation_score():
    saved = []
    s = Selection(True)
    s.on_change = saved.append
    assert s.offer(0, 0.70, {"w": np.ones(2)})
    assert not s.offer(1, 0.70, {"w": np.zeros(2)})  # a tie keeps the earlier round
    assert not s.offer(2, float("nan"), {"w": np.zeros(2)})
    assert s.offer(3, 0.80, {"w": np.full(2, 3.0)})
    assert not s.offer(4, 0.75, {"w": np.zeros(2)})
    assert [snap.round for snap in saved] == [0, 3]
    assert s.chosen(4).round == 3 and s.chosen(3) is None
    assert s.describe(4) == {"rule": "best_val", "round": 4, "val_auc": 0.80}
    last = Selection(False)
    assert not last.offer(0, 0.9, {"w": np.ones(2)}) and last.chosen(5) is None
    assert last.describe(5) == {"rule": "last", "round": 6}
    none = Selection(True)
    none.offer(0, float("nan"), {})
    assert "no evaluated round had a finite" in none.describe(0)["note"]


def test_a_snapshot_is_a_copy_not_a_view_of_the_live_model():
    live = {"w": np.ones(3)}
    s = Selection(True)
    s.offer(0, 0.6, live)
    live["w"] += 1
    np.testing.assert_array_equal(s.best.params["w"], np.ones(3))


def test_config_refuses_best_val_without_evaluated_rounds_and_unknown_rules():
    with pytest.raises(ConfigError, match="evaluation.select: best_val chooses among"):
        tiny_config(evaluation={"select": "best_val", "every": 0})
    with pytest.raises(ConfigError, match="evaluation.select"):
        tiny_config(evaluation={"select": "best_test"})
    assert tiny_config().evaluation.select == "last"


def test_central_selection_reports_and_deploys_the_best_validating_round():
    from builders import federation

    cfg = tiny_config(federation={"mode": "plaintext", "rounds": 3},
                      evaluation={"select": "best_val"})
    fed = federation(cfg)
    ev = CentralEvaluator(fed.model, fed.dataset, Selection(True))
    val, test = fed.dataset.pooled("val"), fed.dataset.test_set()
    fed.run_round(0)
    fed.run_round(1)
    _, extra = ev.score_round(fed, 1)
    good = jax.tree_util.tree_map(np.asarray, fed.params)
    assert extra["val_auc"] == pytest.approx(auc_of(fed, good, val))
    flip_output(fed)  # round 2's model, scored by the coordinator, is the worse one
    _, extra = ev.score_round(fed, 2)
    assert extra["val_auc"] < ev.selection.best.val_auc
    report = ev.final_report(fed)
    assert report["selection"] == {"rule": "best_val", "round": 2,
                                   "val_auc": pytest.approx(auc_of(fed, good, val))}
    assert report["pooled"]["auc"] == pytest.approx(auc_of(fed, good, test))
    assert report["last_round"]["round"] == 3
    assert report["last_round"]["auc"] == pytest.approx(auc_of(fed, fed.params, test))
    deployed = ev.deployed_params(fed)
    for a, b in zip(jax.tree_util.tree_leaves(deployed), jax.tree_util.tree_leaves(good),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # Under "last" the same rounds report the flipped model, and no last_round block.
    plain = CentralEvaluator(fed.model, fed.dataset)
    plain.score_round(fed, 2)
    assert "last_round" not in plain.final_report(fed)


def test_the_selected_snapshot_survives_a_resume(tmp_path):
    params = {"logit": {"bias": np.array([0.5], np.float32),
                        "kernel": np.arange(4, dtype=np.float32).reshape(4, 1)}}
    report = {"pooled": {"auc": 0.81, "loss": float("nan")}}
    checkpoint.save_selection(tmp_path, Snapshot(3, 0.77, params, report))
    back = checkpoint.load_selection(tmp_path)
    assert (back.round, back.val_auc) == (3, 0.77)
    assert back.report == {"pooled": {"auc": 0.81, "loss": None}}
    np.testing.assert_array_equal(back.params["logit"]["kernel"], params["logit"]["kernel"])
    cfg = tiny_config(evaluation={"select": "best_val"})
    assert checkpoint.selection_for(cfg, tmp_path, resumed=True).best.round == 3
    assert checkpoint.selection_for(cfg, tmp_path, resumed=False).best is None
    (tmp_path / checkpoint.SELECTION).write_bytes(b"torn")
    with pytest.raises(checkpoint.CheckpointError, match="not a fedsim selection"):
        checkpoint.load_selection(tmp_path)


def test_he_selection_is_attested_by_the_key_holders(tmp_path):
    """The coordinator sends a worse model in the last round: the hospitals' summed
    validation histograms rank it below round 1's, the report and params.npz are
    round 1's, and fedsim verify attests that model and refuses the last one."""
    from fedsim.protocol.backend import InProcessBackend
    from fedsim.protocol.evaluator import FederatedEvaluator
    from fedsim.protocol.federation import Federation
    from fedsim.run.results import flatten_params, write_json
    from fedsim.run.runner import load_dataset
    from fedsim.run.verify import VerificationFailed, verify_run

    cfg = tiny_config(federation={"mode": "he", "rounds": 2},
                      evaluation={"select": "best_val"})
    data = load_dataset(cfg)  # the coordinator holds none of its rows
    fed = Federation(cfg, data.withheld(), InProcessBackend(), run_id="t", hospital_data=data)
    fed.setup()
    ev = FederatedEvaluator(fed.evaluation, selection=Selection(True))
    fed.run_round(0)
    ev.score_round(fed, 0)
    good = jax.tree_util.tree_map(np.asarray, fed.params)
    fed.run_round(1)
    flip_output(fed)
    _, extra = ev.score_round(fed, 1)
    assert extra["val_auc"] < ev.selection.best.val_auc
    report = ev.final_report(fed)
    assert report["selection"]["round"] == 1 and report["evaluated_after_round"] == 1
    assert report["deployment"]["round"] == 0 and report["last_round"]["round"] == 2
    assert report["pooled"]["auc"] == pytest.approx(auc_of(fed, good, data.test_set()),
                                                    abs=report["pooled"]["auc_bound"] + 1e-6)
    write_json(tmp_path / "metrics.json", report)
    np.savez(tmp_path / "params.npz", **flatten_params(ev.deployed_params(fed)))
    assert "after round 1 " in verify_run(tmp_path)
    np.savez(tmp_path / "last.npz", **flatten_params(fed.params))
    with pytest.raises(VerificationFailed):
        verify_run(tmp_path, tmp_path / "last.npz")


def test_a_best_val_run_writes_the_selected_model_and_its_round(tmp_path):
    from fedsim.learning.model import build_model
    from fedsim.run.runner import load_dataset, run_federated

    cfg = tiny_config(federation={"mode": "plaintext", "rounds": 4},
                      train={"lr": 0.3}, evaluation={"select": "best_val"})
    out = run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess", reference=False)
    rows = pq.read_table(tmp_path / "run" / "rounds.parquet").to_pylist()
    vals = [r["val_auc"] for r in rows]
    best = int(np.argmax(vals))  # the first of equal maxima, as the selection keeps
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selection"]["round"] == best + 1
    assert metrics["selection"]["val_auc"] == pytest.approx(vals[best])
    assert ("last_round" in metrics) == (best != len(rows) - 1)
    with np.load(tmp_path / "run" / "params.npz") as npz:
        params = unflatten_params({k: npz[k] for k in npz.files})
    data = load_dataset(cfg)
    model = build_model(cfg.model, vocab_size=data.vocab_size, num_numeric=data.num_numeric)
    assert evaluate(data.pooled("val").labels,
                    predict(model, params, data.pooled("val"))).auc == pytest.approx(vals[best])
    assert out.report["pooled"]["auc"] == pytest.approx(
        evaluate(data.test_set().labels, predict(model, params, data.test_set())).auc)


def test_overwriting_a_run_removes_every_file_it_wrote(tmp_path):
    """A directory never mixes two runs: the baselines plot, the statistics and the
    selection of an earlier run go with its manifest (a run with baselines none, or
    select last, would otherwise leave them beside its own results)."""
    from fedsim.run.results import RUN_FILES, RunWriter, unlock_run_dir

    for name in ("manifest.json", "baselines.png", "statistics.json", "selection.npz"):
        (tmp_path / name).write_text("{}")
    assert {"baselines.png", "statistics.json", "selection.npz"} <= set(RUN_FILES)
    writer = RunWriter.create(tmp_path, overwrite=True)
    unlock_run_dir(writer.dir)
    assert not any((tmp_path / n).exists() for n in ("baselines.png", "statistics.json",
                                                       "selection.npz"))

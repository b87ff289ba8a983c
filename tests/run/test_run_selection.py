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
from fedsim.learning.selection import Selection
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
    s = Selection(True)
    kept = [r for r, auc in enumerate([0.70, 0.70, float("nan"), 0.80, 0.75])
            if s.offer(r, auc, {"w": np.full(2, float(r))})]
    assert kept == [0, 3]  # a tie keeps the earlier round; NaN never wins
    assert s.last.round == 4 and s.deployed() is s.best
    assert s.chosen(4).round == 3 and s.chosen(3) is None
    assert s.describe(4) == {"rule": "best_val", "round": 4, "val_auc": 0.80}
    last = Selection(False)
    assert not last.offer(0, 0.9, {"w": np.ones(2)}) and last.chosen(0) is None
    assert last.describe(0) == {"rule": "last", "round": 1}
    assert last.deployed().round == 0 and last.best is None
    none = Selection(True)
    none.offer(0, float("nan"), {})
    assert "no evaluated round had a finite" in none.describe(0)["note"]


def test_a_final_round_left_unevaluated_is_said_and_not_deployed():
    s = Selection(False)
    s.offer(2, 0.7, {"w": np.full(2, 2.0)})  # rounds 0..4: round 4's evaluation skipped
    described = s.describe(4)
    assert described["round"] == 3
    assert "the model after round 5 (the last) was not evaluated" in described["note"]
    np.testing.assert_array_equal(s.deployed().params["w"], np.full(2, 2.0))


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


def _saved(tmp_path, selection):
    from builders import federation

    fed = federation(tiny_config(federation={"mode": "plaintext", "rounds": 4}))
    checkpoint.save(tmp_path, fed, 4, selection)
    return checkpoint.load(tmp_path)


def test_the_checkpoint_holds_the_selection_of_the_rounds_it_covers(tmp_path):
    params = {"logit": {"bias": np.array([0.5], np.float32),
                        "kernel": np.arange(4, dtype=np.float32).reshape(4, 1)}}
    report = {"pooled": {"auc": np.float64(0.81), "loss": float("nan")}}
    s = Selection(True)
    s.offer(1, 0.77, params, lambda: report)
    s.offer(3, 0.70, {"logit": {k: v + 1 for k, v in params["logit"].items()}})
    back = _saved(tmp_path, s)
    assert (back.best.round, back.best.val_auc, back.last.round) == (1, 0.77, 3)
    assert back.best.report["pooled"]["auc"] == 0.81
    assert np.isnan(back.best.report["pooled"]["loss"])  # NaN stays NaN, not null
    np.testing.assert_array_equal(back.best.params["logit"]["kernel"],
                                  params["logit"]["kernel"])
    np.testing.assert_array_equal(back.last.params["logit"]["bias"], [1.5])
    again = Selection(True)
    again.rewind(back.best, back.last)
    assert again.chosen(3).round == 1
    # The best is the last: one copy in the file, both read back.
    one = Selection(True)
    one.offer(2, 0.9, params)
    back = _saved(tmp_path, one)
    assert back.best is back.last and back.best.round == 2
    # No selection (a checkpoint before round 0): nothing read back.
    back = _saved(tmp_path, None)
    assert back.best is None and back.last is None


def test_a_fault_between_evaluation_and_checkpoint_leaves_no_snapshot_of_that_round(
        tmp_path, monkeypatch):
    """The round's evaluation is done, its checkpoint is not: the checkpoint on disk
    knows only the rounds before it, and the resumed run reports and deploys what an
    uninterrupted one does."""
    from fedsim.errors import Interrupted
    from fedsim.run.results import load_run
    from fedsim.run.runner import resume_run, run_federated

    cfg = tiny_config(federation={"mode": "plaintext", "rounds": 4}, train={"lr": 0.3},
                      evaluation={"select": "best_val"})
    honest = checkpoint.save

    def save(d, f, n, selection=None):
        if n == 3:  # round 2 evaluated and written, its checkpoint not
            raise KeyboardInterrupt
        return honest(d, f, n, selection)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", save)
        with pytest.raises(Interrupted):
            run_federated(cfg, out_dir=tmp_path / "cut", backend="inprocess",
                          reference=False)
    on_disk = checkpoint.load(tmp_path / "cut")
    assert on_disk.next_round == 2 and on_disk.last.round == 1 and on_disk.best.round <= 1
    resume_run(tmp_path / "cut", backend="inprocess", reference=False)
    whole = run_federated(cfg, out_dir=tmp_path / "whole", backend="inprocess",
                          reference=False)
    done = load_run(tmp_path / "cut")
    assert done.metrics["selection"] == whole.report["selection"]
    assert done.metrics["pooled"]["auc"] == whole.report["pooled"]["auc"]
    np.testing.assert_array_equal(ravel_pytree(done.params)[0],
                                  ravel_pytree(load_run(tmp_path / "whole").params)[0])


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


def _he_federation(rounds: int, **evaluation):
    from fedsim.protocol.backend import InProcessBackend
    from fedsim.protocol.federation import Federation
    from fedsim.run.runner import load_dataset

    cfg = tiny_config(federation={"mode": "he", "rounds": rounds}, evaluation=evaluation)
    data = load_dataset(cfg)  # the coordinator holds none of its rows
    fed = Federation(cfg, data.withheld(), InProcessBackend(), run_id="t", hospital_data=data)
    fed.setup()
    return fed, data


def test_a_skipped_last_evaluation_deploys_the_last_evaluated_model(tmp_path):
    """A hospital is lost in the last round, so its evaluation is skipped: the run
    deploys and reports round 1's model (which every hospital scored and the holders
    attest), not the final one nobody evaluated, and says so."""
    from fedsim.protocol.evaluator import FederatedEvaluator
    from fedsim.run.results import flatten_params, write_json
    from fedsim.run.verify import verify_run

    fed, data = _he_federation(2)
    ev = FederatedEvaluator(fed.evaluation)
    fed.run_round(0)
    ev.score_round(fed, 0)
    evaluated = jax.tree_util.tree_map(np.asarray, fed.params)
    fed.run_round(1)
    fed.lost = [fed.population.party_roles[0]]
    assert ev.score_round(fed, 1) is None
    report = ev.final_report(fed)
    assert report["selection"]["round"] == 1 and report["deployment"]["round"] == 0
    assert "round 2 (the last) was not evaluated" in report["selection"]["note"]
    from fedsim.learning.selection import which_model

    assert which_model(report, 2) == "model after round 1 (the last evaluated)"
    deployed = ev.deployed_params(fed)
    for a, b in zip(jax.tree_util.tree_leaves(deployed),
                    jax.tree_util.tree_leaves(evaluated), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ravel_pytree(deployed)[0], ravel_pytree(fed.params)[0])
    write_json(tmp_path / "metrics.json", report)
    np.savez(tmp_path / "params.npz", **flatten_params(deployed))
    assert "after round 1 " in verify_run(tmp_path)


def test_a_run_whose_last_release_came_before_a_resume_is_evaluated_at_the_end():
    """Nothing was evaluated (a resume after the final round's release, charged under
    DP): the final report scores the final model with the live parties instead of
    failing for want of an evaluation."""
    from fedsim.protocol.evaluator import FederatedEvaluator

    fed, data = _he_federation(1)
    fed.run_round(0)
    ev = FederatedEvaluator(fed.evaluation)
    report = ev.final_report(fed)
    assert report["selection"] == {"rule": "last", "round": 1}
    assert report["deployment"]["round"] == 0
    assert report["pooled"]["auc"] == pytest.approx(
        auc_of(fed, fed.params, data.test_set()), abs=report["pooled"]["auc_bound"] + 1e-6)


def test_holders_naming_two_models_stop_the_report_and_none_live_is_said(monkeypatch):
    """A receipt that names another model than the one deployed, or whose signature does
    not verify, is never folded into "no receipt" or outvoted: the report refuses and
    names exactly those holders, even when they are the majority. With no holder that
    opened it live (a restart, a resume), the report says the model has no receipt."""
    from fedsim.errors import ReceiptConflict, Refusal
    from fedsim.protocol.evaluator import FederatedEvaluator

    fed, _ = _he_federation(1, select="best_val")
    ev = FederatedEvaluator(fed.evaluation, selection=Selection(True))
    fed.run_round(0)
    ev.score_round(fed, 0)
    holder = fed.backend.parties["keyholder:1"]
    honest = holder.receipt
    with monkeypatch.context() as m:
        m.setattr(holder, "receipt", lambda r: (b"another model", honest(r)[1]))
        with pytest.raises(Refusal, match="1 of 3 do not attest") as refused:
            ev.final_report(fed)
    assert (refused.value.party, refused.value.round) == ("keyholder:1", 0)
    assert isinstance(refused.value, ReceiptConflict)
    # The right model with another holder's signature: named too.
    other = fed.backend.parties["keyholder:2"]
    with monkeypatch.context() as m:
        m.setattr(other, "receipt", lambda r: (honest(r)[0], honest(r)[1]))
        with pytest.raises(ReceiptConflict, match="1 of 3") as refused:
            ev.final_report(fed)
    assert refused.value.party == "keyholder:2"
    # Two holders agreeing on a model other than the deployed one are no majority.
    other_honest = other.receipt
    with monkeypatch.context() as m:
        m.setattr(holder, "receipt", lambda r: (b"another model", honest(r)[1]))
        m.setattr(other, "receipt", lambda r: (b"another model", other_honest(r)[1]))
        with pytest.raises(ReceiptConflict, match="2 of 3") as refused:
            ev.final_report(fed)
    assert refused.value.party == "keyholder:1, keyholder:2"
    # Every holder names what was evaluated, but the coordinator deploys other
    # parameters: all three refuse it.
    snapshot = ev.selection.deployed()
    with monkeypatch.context() as m:
        import dataclasses

        import jax

        moved = jax.tree_util.tree_map(lambda a: a + 1.0, snapshot.params)
        m.setattr(ev.selection, "deployed",
                  lambda: dataclasses.replace(snapshot, params=moved))
        with pytest.raises(ReceiptConflict, match="3 of 3") as refused:
            ev.final_report(fed)
    assert refused.value.party == "keyholder:0, keyholder:1, keyholder:2"
    # A reply that is not (model, signature): named, never a crash.
    with monkeypatch.context() as m:
        m.setattr(holder, "receipt", lambda r: "not a receipt")
        with pytest.raises(ReceiptConflict, match="1 of 3") as refused:
            ev.final_report(fed)
    assert refused.value.party == "keyholder:1"
    # Fewer holders attest it than verify needs (one lost since): no receipt is
    # written that could never verify; the note says how many.
    with monkeypatch.context() as m:
        def lost(r):
            raise Refusal("opened no evaluation of that round", party="keyholder:2")

        m.setattr(other, "receipt", lost)
        report = ev.final_report(fed)
    assert "deployment" not in report
    assert "only 2 live key holder(s)" in report["selection"]["note"]
    assert "3 needed" in report["selection"]["note"]
    report = ev.final_report(fed)  # the honest path: every holder attests it
    assert sorted(report["deployment"]["holders"]) == ["0", "1", "2"]
    for i in range(fed.cfg.crypto.key_holders):
        h = fed.backend.parties[f"keyholder:{i}"]

        def refuse(r, party=f"keyholder:{i}"):
            raise Refusal("opened no evaluation of that round", party=party)

        monkeypatch.setattr(h, "receipt", refuse)
    report = ev.final_report(fed)
    assert "deployment" not in report
    assert "the deployed model has no deployment receipt" in report["selection"]["note"]


def test_a_run_stopped_by_conflicting_receipts_cannot_be_resumed(tmp_path, monkeypatch,
                                                                 capsys):
    """The run stops on the conflict, its manifest says who, and a resume (whose new
    holders would attest the coordinator's model) is refused in one line."""
    from fedsim.cli import main
    from fedsim.protocol.keyholder import KeyHolder
    from fedsim.run.results import read_manifest
    from fedsim.run.runner import run_federated

    honest = KeyHolder.receipt

    def receipt(self, r):
        model, signature = honest(self, r)
        return (b"another model" if self.index == 1 else model), signature

    cfg = tiny_config(federation={"mode": "he", "rounds": 1})
    with monkeypatch.context() as m:
        m.setattr(KeyHolder, "receipt", receipt)
        with pytest.raises(Exception, match="1 of 3 do not attest"):
            run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess",
                          reference=False)
    manifest = read_manifest(tmp_path / "run")
    assert manifest["status"] == "failed"
    assert manifest["refused"]["by"] == "keyholder:1" and manifest["refused"]["receipts"]
    assert main(["resume", str(tmp_path / "run"), "--backend", "inprocess"]) == 2
    err = capsys.readouterr().err
    assert "a resume cannot attest its model" in err and "Traceback" not in err


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
        (tmp_path / name).write_text("{}")  # selection.npz: an earlier fedsim's
    assert {"baselines.png", "statistics.json", "selection.npz"} <= set(RUN_FILES)
    writer = RunWriter.create(tmp_path, overwrite=True)
    unlock_run_dir(writer.dir)
    assert not any((tmp_path / n).exists() for n in ("baselines.png", "statistics.json",
                                                       "selection.npz"))

"""Federated evaluation (`fedsim.protocol.evaluation`): a coordinator that holds no row
of any hospital gets the pooled metrics, within the stated bound, and nothing else; the
attacks it could mount with what it holds (the manifest, every signed batch and
endorsement, the aggregator) are refused by the key holders or the hospitals."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from builders import tiny_config

from fedsim.errors import ConfigError, DataError, ProtocolError, Refusal
from fedsim.learning.histograms import histogram, youden_threshold
from fedsim.learning.metrics import evaluate
from fedsim.learning.train import predict
from fedsim.protocol.backend import InProcessBackend
from fedsim.protocol.evaluation import LOSS_UNIT, evaluation_rounds
from fedsim.protocol.evaluator import FederatedEvaluator
from fedsim.protocol.federation import Federation
from fedsim.protocol.keyholder import DecryptionRequest
from fedsim.run.runner import load_dataset

HE = {"mode": "he", "rounds": 3}


def withheld(**sections):
    """A set-up he federation whose coordinator holds no hospital's rows, and the data
    the hospitals' parties were started with."""
    cfg = tiny_config(federation={**HE, **sections.pop("federation", {})}, **sections)
    data = load_dataset(cfg)
    fed = Federation(cfg, data.withheld(), InProcessBackend(), run_id="t", hospital_data=data)
    fed.setup()
    return fed, data


def scored(fed, data, split):
    rows = data.pooled(split)
    return rows.labels, predict(fed.model, fed.params, rows)


def holders(fed):
    return [fed.backend.parties[f"keyholder:{i}"] for i in range(fed.cfg.crypto.key_holders)]


def evaluation_inputs(fed, round_idx, roles=None):
    """What the coordinator holds before an evaluation sum is opened: the hospitals'
    bundles, the aggregator's manifest of them and the hospitals' endorsements."""
    b = fed.backend
    roles = list(roles or fed.population.party_roles)
    ref = b.put(fed.state.params)
    bundles = [b.get(b.call(role, "evaluate", round_idx, ref, fed.evaluation,
                            num_returns=2)[0]) for role in roles]
    manifest_h, _, _ = b.call("aggregator", "sum_evaluation", round_idx, *bundles,
                              num_returns=3)
    manifest = b.get(manifest_h)
    batches = dict(zip(manifest.contributors, manifest.digests, strict=True))
    endorsed = {}
    for role in roles:
        endorsed.update(b.get(b.call(role, "endorse_evaluation", round_idx, batches)))
    return manifest, bundles, endorsed


def test_a_coordinator_without_any_row_gets_the_pooled_metrics_within_the_bound():
    fed, data = withheld()
    for split in ("val", "test"):
        with pytest.raises(DataError, match="holds no rows"):
            _ = fed.dataset.clients[0].split(split).labels
    with pytest.raises(DataError, match="does not know the size"):
        len(fed.dataset.clients[0].test)
    evaluator = FederatedEvaluator(fed.evaluation)
    bins = fed.evaluation.bins
    for r in range(2):
        fed.run_round(r)
        metrics, extra = evaluator.score_round(fed, r)
        val_y, val_p = scored(fed, data, "val")
        y, p = scored(fed, data, "test")
        # The threshold is the Youden edge of the exact pooled validation histogram, and
        # every thresholded metric is exactly scikit-learn's at it.
        assert metrics.threshold == youden_threshold(histogram(val_y, val_p, bins), bins)
        exact = evaluate(y, p, threshold=metrics.threshold)
        assert (metrics.n, metrics.positives) == (exact.n, exact.positives) == (len(y),
                                                                                 y.sum())
        for name in ("balanced_accuracy", "precision", "recall", "accuracy"):
            assert getattr(metrics, name) == pytest.approx(getattr(exact, name), abs=1e-12)
        assert abs(metrics.auc - exact.auc) <= extra["auc_bound"] + 1e-12
        assert 0 < extra["auc_bound"] < 0.02
        # Each hospital rounds its loss sum to LOSS_UNIT (3 hospitals, 2 splits' worth).
        assert abs(metrics.loss - exact.loss) <= 3 * LOSS_UNIT / len(y) + 1e-6
        assert extra["t_evaluate_partial_decrypt_s"] > 0 and extra["t_evaluate_encrypt_s"] > 0
    report = evaluator.final_report(fed)
    assert report["evaluation"] == "federated" and report["hospitals"] == {}
    assert report["pooled"]["roc"]["fpr"][0] == 0 and report["pooled"]["roc"]["tpr"][-1] == 1


def test_a_hospital_tells_its_own_metrics_only_when_its_config_says_so():
    fed, data = withheld(evaluation={"disclose_hospitals": True})
    evaluator = FederatedEvaluator(fed.evaluation)
    fed.run_round(0)
    evaluator.score_round(fed, 0)
    assert sorted(evaluator.disclosed) == list(fed.names)
    own = data.client(fed.names[0]).test
    exact = evaluate(own.labels, predict(fed.model, fed.params, own))
    assert evaluator.disclosed[fed.names[0]]["auc"] == pytest.approx(exact.auc, abs=1e-12)


def test_key_holders_open_an_evaluation_only_of_every_hospital_once_and_in_order():
    fed, _ = withheld()
    fed.run_round(0)
    holder = holders(fed)[0]
    everyone = tuple(range(fed.cfg.crypto.key_holders))
    # The coordinator leaves one hospital out: the sum of two evaluations differing by
    # one hospital would be that hospital's histograms. Its two hospitals endorse it
    # (it holds their batches), the holders refuse it.
    two = fed.population.party_roles[:2]
    subset = evaluation_inputs(fed, 0, roles=two)
    with pytest.raises(Refusal, match="evaluate sum of 2 of the 3 registered clients"):
        holder.partial_decrypt(DecryptionRequest(subset[0], everyone, True, subset[2]), None,
                               subset[1])
    # The honest evaluation, of every hospital, labelled round 2 before round 2 trains.
    fed.run_round(1)
    manifest, bundles, endorsed = evaluation_inputs(fed, 2)
    ask = DecryptionRequest(manifest, everyone, True, endorsed)
    # The same signed batches passed off as round 2's training sum: signed for another kind.
    with pytest.raises(Refusal, match="not signed by"):
        holder.partial_decrypt(replace(ask, manifest=replace(manifest, kind="train")),
                               None, bundles)
    with pytest.raises(Refusal, match="kind 'predict'"):
        holder.partial_decrypt(replace(ask, manifest=replace(manifest, kind="predict")),
                               None, bundles)
    holder.partial_decrypt(ask, None, bundles)  # opened once
    with pytest.raises(Refusal, match="again"):
        holder.partial_decrypt(ask, None, bundles)
    # An older round's evaluation, once a newer one was decrypted.
    with pytest.raises(Refusal, match="older than round 2"):
        holder.partial_decrypt(DecryptionRequest(subset[0], everyone, True, subset[2]), None,
                               subset[1])


def test_a_hospital_signs_one_evaluation_per_round_and_endorses_only_a_sum_with_its_batch():
    fed, _ = withheld()
    fed.run_round(0)
    b, role = fed.backend, fed.population.party_roles[0]
    ref = b.put(fed.state.params)
    b.get(b.call(role, "evaluate", 0, ref, fed.evaluation, num_returns=2)[0])
    with pytest.raises(ProtocolError, match="signed a batch to evaluate round 0 already"):
        b.get(b.call(role, "evaluate", 0, ref, fed.evaluation, num_returns=2)[0])
    name = role.split(":", 1)[1]
    with pytest.raises(ProtocolError, match="does not hold its batch"):
        b.get(b.call(role, "endorse_evaluation", 0, {name: "00" * 32}))


def test_a_run_without_federated_evaluation_has_its_holders_refuse_one():
    cfg = tiny_config(federation=HE, evaluation={"federated": False})
    data = load_dataset(cfg)
    fed = Federation(cfg, data, InProcessBackend(), run_id="t")
    fed.setup()
    assert fed.evaluation is None
    holder = holders(fed)[0]
    assert holder.policy.evaluation is None
    from fedsim.protocol.manifest import Manifest

    forged = Manifest("t", 0, tuple(fed.names), ("00",) * 3, "00", kind="evaluate")
    with pytest.raises(Refusal, match="kind 'evaluate': not one this run decrypts"):
        holder.partial_decrypt(DecryptionRequest(forged, (0, 1, 2), True, {}), None, [])


def test_federated_evaluation_is_configured_only_where_it_can_run():
    assert tiny_config(federation=HE).evaluation.federated_in(tiny_config(
        federation=HE).federation)
    assert not tiny_config().evaluation.federated_in(tiny_config().federation)
    with pytest.raises(ConfigError, match="needs federation.mode: he"):
        tiny_config(evaluation={"federated": True})
    assert evaluation_rounds(5, 2) == (1, 3, 4) and evaluation_rounds(3, 0) == (2,)


def test_the_key_holders_budget_covers_every_evaluation():
    fed, _ = withheld(federation={"rounds": 4}, evaluation={"every": 2})
    plan, context = fed.evaluation, fed.scheme.context
    assert plan.evaluations == 2
    policy = holders(fed)[0].policy
    assert policy.budget(context) == 4 * policy.ciphertexts_per_round(context) + \
        2 * plan.ciphertexts(context)
    assert context.max_decryptions >= policy.budget(context)
    # The count codec read back exactly what the hospitals summed, at this context's error.
    counts, _ = plan.codecs(context)
    assert counts.unit > 2 * context.error_bound
    assert np.all(counts.decode(counts.encode(np.array([0, 1, 300])) * 3) == [0, 3, 900])


def test_a_plan_of_its_own_for_one_hospital_is_refused_by_hospital_or_holders():
    """The coordinator hands the plan: a layout of its own for one hospital would put
    that hospital's values in slots no other hospital fills."""
    fed, _ = withheld()
    fed.run_round(0)
    b, roles = fed.backend, fed.population.party_roles
    ref = b.put(fed.state.params)
    wider = replace(fed.evaluation, bins=replace(fed.evaluation.bins, count=8192))
    with pytest.raises(ProtocolError, match="plan outside its config"):
        b.get(b.call(roles[0], "evaluate", 0, ref, wider, num_returns=2)[0])
    other = replace(fed.evaluation, contributors=1)  # within the config, another encoding
    bundles = [b.get(b.call(role, "evaluate", 0, ref,
                            other if role == roles[0] else fed.evaluation,
                            num_returns=2)[0]) for role in roles]
    manifest = b.get(b.call("aggregator", "sum_evaluation", 0, *bundles, num_returns=3)[0])
    batches = dict(zip(manifest.contributors, manifest.digests, strict=True))
    endorsed = {}
    for role in roles:
        endorsed.update(b.get(b.call(role, "endorse_evaluation", 0, batches)))
    with pytest.raises(Refusal, match="batch is not signed by .* model and plan"):
        holders(fed)[0].partial_decrypt(
            DecryptionRequest(manifest, (0, 1, 2), True, endorsed), None, bundles)


def test_fedsim_verify_accepts_the_evaluated_model_and_nothing_else(tmp_path):
    from fedsim.run.results import flatten_params, write_json
    from fedsim.run.verify import VerificationFailed, verify_run

    fed, _ = withheld(federation={"rounds": 2})
    evaluator = FederatedEvaluator(fed.evaluation)
    for r in range(2):
        fed.run_round(r)
        evaluator.score_round(fed, r)
    with pytest.raises(Refusal, match="opened no evaluation of that round"):
        holders(fed)[0].receipt(5)
    report = evaluator.final_report(fed)
    block = report["deployment"]
    assert block["round"] == 1 and sorted(block["holders"]) == ["0", "1", "2"]
    write_json(tmp_path / "metrics.json", report)

    def save(params, name="params.npz"):
        np.savez(tmp_path / name, **flatten_params(params))
        return tmp_path / name

    save(fed.params)
    assert "attested by key holders 0, 1, 2" in verify_run(tmp_path)
    # A hospital's copy changed in one weight, or the model of an earlier round.
    import jax

    nudged = jax.tree_util.tree_map(lambda a: np.asarray(a).copy(), fed.params)
    leaf = jax.tree_util.tree_leaves(nudged)[0]
    leaf.flat[0] += 1e-3
    with pytest.raises(VerificationFailed, match="not the model the key holders attested"):
        verify_run(tmp_path, save(nudged, "mine.npz"))
    # n-of-n: one signature that does not verify is one too few.
    forged = json.loads((tmp_path / "metrics.json").read_text())
    forged["deployment"]["holders"]["2"]["signature"] = "00" * 64
    (tmp_path / "metrics.json").write_text(json.dumps(forged))
    with pytest.raises(VerificationFailed, match="2 of the 3 signatures needed"):
        verify_run(tmp_path)


def test_dp_noise_shares_make_the_stated_stddev_on_every_pooled_count():
    from fedsim.learning.histograms import ScoreBins
    from fedsim.privacy.randomness import SecretRandom
    from fedsim.protocol.evaluation import EvaluationPlan

    class Context:  # exact arithmetic: the codec's digits and the noise alone
        value_bound, error_bound, values_per_ciphertext = 0.5, 1e-9, 4096

    plan = EvaluationPlan(ScoreBins(1024), contributors=3, max_rows=10**6, evaluations=1,
                          noise_stddev=3.0, min_clients=2)
    hist = np.concatenate([np.full(2 * 1024, 100.0), [7.5, 2048 * 100.0]])
    summed = sum(plan.encode(Context, hist, hist, noise=SecretRandom()) for _ in range(3))
    val, test = plan.decode(Context, summed)
    noise = np.concatenate([val[:2048], test[:2048]]) - 300
    # 3 shares of stddev 3/sqrt(2): 3 sqrt(3/2) in all; 4096 counts give a relative
    # standard error of 1.1% on the stddev: 6 of them.
    assert np.std(noise) == pytest.approx(3.0 * np.sqrt(1.5), rel=0.066)
    assert abs(np.mean(noise)) < 6 * 3.0 * np.sqrt(1.5) / np.sqrt(noise.size)
    # n is the noised counts' sum and the log-loss is not released under DP.
    assert val[-1] == val[:2048].sum() and np.isnan(val[-2]) and np.isnan(test[-2])


def test_noised_evaluation_reports_its_epsilon_and_hospitals_refuse_less_noise():
    import dp_accounting

    fed, data = withheld(federation={"rounds": 2}, evaluation={"noise_stddev": 4.0})
    evaluator = FederatedEvaluator(fed.evaluation)
    for r in range(2):
        fed.run_round(r)
        metrics, extra = evaluator.score_round(fed, r)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(4.0), 2)
    assert extra["evaluation_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5))
    y, p = scored(fed, data, "test")
    exact = evaluate(y, p, threshold=metrics.threshold)
    assert np.isnan(metrics.loss) and abs(metrics.auc - exact.auc) < 0.1
    report = evaluator.final_report(fed)
    assert report["pooled"]["dp"]["epsilon"] == extra["evaluation_epsilon"]
    b, role = fed.backend, fed.population.party_roles[0]
    quieter = replace(fed.evaluation, noise_stddev=1.0)
    with pytest.raises(ProtocolError, match="plan outside its config"):
        b.get(b.call(role, "evaluate", 5, b.put(fed.state.params), quieter,
                     num_returns=2)[0])


def test_every_evaluation_released_is_composed_across_sessions(tmp_path):
    """The evaluation epsilon counts every evaluation the hospitals were asked for: a
    resumed session reads the count back (a resume at the last round reports it) and
    goes on counting (a round evaluated again after a fault: tests/run/test_run_resume)."""
    import dp_accounting

    from fedsim.learning.selection import Selection
    from fedsim.run.checkpoint import Checkpoint, CheckpointError, watch_evaluations

    def eps(n):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(4.0), n)
        return accountant.get_epsilon(1e-5)

    fed, _ = withheld(federation={"rounds": 3}, evaluation={"noise_stddev": 4.0})
    first = FederatedEvaluator(fed.evaluation)
    watch_evaluations(first, tmp_path, fed.cfg, None)
    for r in range(2):
        fed.run_round(r)
        first.score_round(fed, r)
    assert json.loads((tmp_path / "evaluations.json").read_text()) == {"released": 2}
    resumed = FederatedEvaluator(fed.evaluation, selection=Selection(
        False, last=first.selection.last))
    watch_evaluations(resumed, tmp_path, fed.cfg, Checkpoint(2, "t", None, [], ()))
    assert resumed.final_report(fed)["pooled"]["dp"]["epsilon"] == pytest.approx(eps(2))
    fed.run_round(2)
    _, extra = resumed.score_round(fed, 2)  # the session goes on: 3 released in all
    assert extra["evaluation_epsilon"] == pytest.approx(eps(3))
    assert json.loads((tmp_path / "evaluations.json").read_text()) == {"released": 3}
    # Without the record a resume counts the evaluation rounds before its checkpoint;
    # a record that is not a count is refused.
    (tmp_path / "evaluations.json").unlink()
    again = FederatedEvaluator(fed.evaluation)
    watch_evaluations(again, tmp_path, fed.cfg, Checkpoint(2, "t", None, [], ()))
    assert again.released == 2
    (tmp_path / "evaluations.json").write_text('{"released": 2.5}')
    with pytest.raises(CheckpointError, match="cannot tell how many evaluations"):
        watch_evaluations(again, tmp_path, fed.cfg, Checkpoint(2, "t", None, [], ()))

"""Sparse DP-SGD: the private row selection, its accounting, the noise on exactly the
selected rows, and each hospital's own calibration (issue 14)."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import jax
import numpy as np
import pytest
from dp_accounting import rdp

from fedsim.errors import ConfigError, PrivacyError
from fedsim.learning.model import EHRMLP, init_params
from fedsim.learning.sparse import SparseDPSGDTrainer
from fedsim.learning.train import Batches
from fedsim.privacy import Accountant, RecordLevelSpec
from fedsim.privacy.accountant import selection_epsilon
from fedsim.privacy.plan import hospital_spec, plan_privacy
from fedsim.privacy.randomness import SeededRandom
from fedsim.privacy.sparse import RowSelection, code_counts
from fedsim.privacy.steps import RecordLevelAccounting
from fedsim.run.runner import load_dataset
from tests.builders import tiny_config

DELTA = 1e-5


def _config(**sections):
    """`tiny_config` without restarts: a sparse run cannot restart its parties."""
    sections["federation"] = {"max_restarts": 0, **sections.get("federation", {})}
    return tiny_config(**sections)


def test_each_record_counts_once_for_at_most_max_codes_distinct_codes():
    codes = np.array([[4, 4, 1, -1, -1], [0, 1, 2, 3, 9], [-1, -1, -1, -1, -1]])
    counts = code_counts(codes, 10, max_codes=3)
    # row 0: {1, 4} (the repeat counts once); row 1: its 3 smallest codes {0, 1, 2}
    assert counts.tolist() == [1, 2, 1, 0, 1, 0, 0, 0, 0, 0]
    rng = np.random.default_rng(3)
    base = rng.integers(-1, 40, size=(60, 12))
    for _ in range(50):  # adding one record moves the counts by at most sqrt(max_codes)
        extra = rng.integers(-1, 40, size=(1, 12))
        moved = code_counts(np.vstack([base, extra]), 40, 5) - code_counts(base, 40, 5)
        assert np.linalg.norm(moved) <= math.sqrt(5) + 1e-12


class _Recording:
    """A secret source that records what was drawn from it."""

    def __init__(self):
        self.inner, self.calls = SeededRandom(0, "t", (1,)), 0

    def generator(self):
        self.calls += 1
        return self.inner.generator()


def test_the_selection_keeps_frequent_codes_with_noise_from_the_hospitals_source():
    frequent = np.tile(np.arange(5), (400, 1))  # codes 0-4 in every one of 400 records
    rare = np.full((400, 1), -1)
    rare[:3, 0] = 7  # code 7 in 3 records
    codes = np.hstack([frequent, rare])
    selection = RowSelection(noise_multiplier=2.0, max_codes=8)
    source = _Recording()
    chosen = selection.select(codes, 1000, source)
    assert source.calls == 1
    assert set(range(5)) <= set(chosen.tolist()) and 7 not in chosen
    # about one spurious row in 1,000 by default; never many
    assert len(set(chosen.tolist()) - set(range(5))) <= 8
    assert selection.cut(1000) == pytest.approx(selection.stddev * 3.0902, rel=1e-3)


def test_the_selections_epsilon_is_dp_accountings_for_the_same_events():
    zs, z, q, steps, rounds = 12.0, 1.3, 0.05, 20, 7
    assert selection_epsilon(zs, DELTA) == pytest.approx(_library([
        dp_accounting.GaussianDpEvent(zs)]), rel=1e-12)
    spec = RecordLevelSpec(z, q, steps, DELTA, selection_noise_multiplier=zs)
    expected = _library([dp_accounting.GaussianDpEvent(zs), dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)),
        rounds * steps)])
    assert Accountant(spec).epsilon_after(rounds) == pytest.approx(expected, rel=1e-9)
    bare = Accountant(dataclasses.replace(spec, selection_noise_multiplier=None))
    assert bare.epsilon_after(rounds) < expected  # the selection is charged
    pld = dataclasses.replace(spec, accountant="pld")
    reference = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=pld.pld_discretization)
    reference.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(zs), dp_accounting.SelfComposedDpEvent(
            pld.unit_event(), rounds * steps)]))
    assert Accountant(pld).epsilon_after(rounds) == pytest.approx(
        reference.get_epsilon(DELTA), rel=1e-3)


def _library(events) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return accountant.get_epsilon(DELTA)


def _trainer(selected, *, z=1.5, clip=0.7, rate=0.2, n=100, width=8, vocab=50):
    model = EHRMLP(vocab_size=vocab, num_numeric=2, depth=2, width=width)
    spec = RecordLevelSpec(z, rate, 1, DELTA)
    cfg = _config(train={"lr": 1.0, "optimizer": "sgd"}).train
    trainer = SparseDPSGDTrainer(model, cfg, clip=clip, spec=spec, num_examples=n,
                                 selected=np.asarray(selected))
    params = init_params(model, key=jax.random.PRNGKey(0), max_codes=6)
    return trainer, params


def test_the_noise_lands_exactly_on_the_selected_rows_with_the_stated_stddev():
    selected = np.arange(0, 50, 2)[:20]  # 20 of 50 rows
    z, clip, rate, n, steps = 1.5, 0.7, 0.2, 100, 25
    trainer, params = _trainer(selected, z=z, clip=clip, rate=rate, n=n)
    rng = np.random.default_rng(1)
    b = trainer.max_batch
    data = Batches(rng.integers(-1, 50, (steps, b, 6)).astype(np.int32),
                   rng.normal(size=(steps, b, 2)).astype(np.float32),
                   rng.integers(0, 2, (steps, b)).astype(np.float32))
    empty = np.zeros((steps, b), np.float32)  # no record sampled: the update is the noise
    moves, others = [], []
    for call in range(16):
        keys = jax.random.split(jax.random.PRNGKey(100 + call), steps)
        new, _ = trainer.train(params, (data, empty, keys))
        before, after = (np.asarray(t["codes"]["embedding"]) for t in (params, new))
        moves.append((after - before)[selected].ravel())
        others.append((after - before)[np.setdiff1d(np.arange(50), selected)])
        dense = np.asarray(new["dense_1"]["kernel"]) - np.asarray(params["dense_1"]["kernel"])
        assert np.all(dense != 0)  # the dense layers are trained (and noised) too
    assert all(np.all(o == 0) for o in others)  # not one bit moves outside the selection
    moved = np.concatenate(moves)
    # sgd lr 1: each step moves a row by its noise over the expected batch size
    stated = clip * z / (rate * n) * math.sqrt(steps)
    # 16 x 20 x 8 = 2,560 draws: the sample stddev's relative error has sd 1.4%; 6 sigma
    assert np.std(moved) == pytest.approx(stated, rel=0.085)
    assert abs(np.mean(moved)) < 6 * stated / math.sqrt(moved.size)


def test_training_moves_the_selected_rows_only():
    selected = np.array([1, 2, 3])
    trainer, params = _trainer(selected)
    split = load_dataset(_config(data={"synth": {
        "num_hospitals": 1, "patients_per_hospital": 200, "vocab_size": 50,
        "mean_codes": 4.0}}, federation={"clients_per_round": 1, "min_clients": 1}
        )).clients[0].train
    split = dataclasses.replace(split, codes=split.codes[:, :6], numeric=split.numeric[:, :2])
    inputs = trainer.inputs(None, split, 3, seed=0, round_idx=0, index=0,
                            secret=SeededRandom(0, "t", (2,)))
    new, loss = trainer.train(params, inputs)
    diff = np.asarray(new["codes"]["embedding"]) - np.asarray(params["codes"]["embedding"])
    assert np.flatnonzero(np.any(diff != 0, axis=1)).tolist() == [1, 2, 3]
    assert math.isfinite(loss)


def test_each_hospital_is_calibrated_to_the_target_at_its_own_rate():
    cfg = _config(federation={"rounds": 4},
                      privacy={"enabled": True, "level": "record", "target_epsilon": 2.0,
                               "record_batch_size": 24.0,
                               "sparse": {"noise_multiplier": 15.0, "max_codes": 4}})
    sizes, names = [120, 300, 950], ["a", "b", "c"]
    plan = plan_privacy(cfg, 3, sizes, names)
    rates, zs = [], []
    for (_name, spec), size in zip(plan.hospitals, sizes, strict=True):
        assert spec.sampling_rate == pytest.approx(24.0 / size)
        assert spec.selection_noise_multiplier == 15.0
        spent = Accountant(spec).epsilon_after(4)  # took part in every round
        assert spent <= 2.0 and spent == pytest.approx(2.0, abs=0.01)
        assert hospital_spec(cfg, size) == spec  # what the hospital derives itself
        rates.append(spec.sampling_rate)
        zs.append(spec.noise_multiplier)
    assert rates[0] > rates[1] > rates[2] and zs[0] > zs[2]
    # the accounting reports each hospital after the rounds it took part in
    accounting = RecordLevelAccounting(plan.hospitals)
    state = (("a", 1), ("b", 3), ("c", 2))
    metrics = accounting._metrics(state)
    for (name, spec), (_, count) in zip(plan.hospitals, state, strict=True):
        assert metrics[f"epsilon[{name}]"] == Accountant(spec).epsilon_after(count)
    assert metrics["epsilon"] == max(metrics[f"epsilon[{n}]"] for n in names)


def test_a_hospital_takes_its_noise_from_its_own_config_not_the_coordinators_plan():
    cfg = _config(privacy={"enabled": True, "level": "record", "target_epsilon": 2.0,
                               "sparse": {}})
    data = load_dataset(cfg)
    sizes = [len(c.train) for c in data.clients]
    plan = plan_privacy(cfg, 3, sizes, list(data.names))
    weak = dataclasses.replace(plan, hospitals=tuple(
        (name, dataclasses.replace(spec, noise_multiplier=1e-3)) for name, spec in
        plan.hospitals), clip=100.0)  # a coordinator thinning everyone's noise
    model = EHRMLP(vocab_size=data.vocab_size, num_numeric=data.num_numeric, depth=2, width=8)
    trainer = weak.trainer(model, cfg, data.clients[0].train, SeededRandom(0, "s", (0,)))
    assert trainer.spec == hospital_spec(cfg, sizes[0]) and trainer.spec.noise_multiplier > 1


def test_by_default_the_selection_spends_its_share_of_the_target():
    cfg = _config(privacy={"enabled": True, "level": "record", "target_epsilon": 2.0,
                               "sparse": {"epsilon_share": 0.3}})
    plan = plan_privacy(cfg, 3, [100, 200, 300])
    zs = plan.selection.noise_multiplier
    assert selection_epsilon(zs, DELTA) == pytest.approx(0.6, abs=1e-3)
    assert selection_epsilon(zs, DELTA) <= 0.6
    for _, spec in plan.hospitals:
        assert spec.selection_noise_multiplier == zs
        assert Accountant(spec).epsilon_after(3) == pytest.approx(2.0, abs=0.01)


def test_a_selection_that_spends_the_target_alone_is_refused():
    cfg = _config(privacy={"enabled": True, "level": "record", "target_epsilon": 0.5,
                               "sparse": {"noise_multiplier": 3.0}})
    with pytest.raises(PrivacyError, match="selection alone spends epsilon"):
        plan_privacy(cfg, 3, [100, 100, 100])


@pytest.mark.parametrize(("privacy", "model", "message"), [
    ({"sparse": {"max_codes": 0}}, {}, "privacy.sparse.max_codes: must be an integer >= 1"),
    ({"sparse": {"noise_multiplier": 0}}, {}, "privacy.sparse.noise_multiplier: must be > 0"),
    ({"sparse": {}, "level": "client"}, {}, "privacy.sparse: sparse DP-SGD is record level"),
    ({"sparse": {}}, {"bag": "mean"}, "privacy.sparse: sparse DP-SGD needs model.bag 'sum'"),
    ({"record_batch_size": -1}, {}, "privacy.record_batch_size: must be > 0"),
])
def test_bad_sparse_settings_are_refused(privacy, model, message):
    with pytest.raises(ConfigError, match=message):
        _config(model=model, privacy={"enabled": True, "level": "record",
                                          "target_epsilon": 2.0, **privacy})


def test_a_sparse_run_neither_restarts_nor_resumes(tmp_path):
    sparse = {"enabled": True, "level": "record", "target_epsilon": 2.0, "sparse": {}}
    with pytest.raises(ConfigError, match="federation.max_restarts: a run with "
                                          "privacy.sparse cannot restart"):
        _config(federation={"max_restarts": 1}, privacy=sparse)
    cfg = _config(federation={"max_restarts": 0}, privacy=sparse)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        cfg.privacy.check_resumable(tmp_path)


def test_a_hospital_refuses_to_train_without_the_dp_sgd_its_config_asks_for():
    from fedsim.errors import ProtocolError
    from fedsim.privacy.plan import trainer_for

    cfg = _config(privacy={"enabled": True, "level": "record", "target_epsilon": 2.0})
    data = load_dataset(cfg)
    model = EHRMLP(vocab_size=data.vocab_size, num_numeric=data.num_numeric, depth=2, width=8)
    client_plan = plan_privacy(_config(privacy={
        "enabled": True, "target_epsilon": 2.0, "epsilon_against": "observer"}), 3,
        [100, 100, 100])
    for handed in (None, client_plan):  # a coordinator switching the hospital's DP off
        with pytest.raises(ProtocolError, match="refuses to train without the record-level"):
            trainer_for(cfg, handed, model, data.clients[0], SeededRandom(0, "s", (0,)))

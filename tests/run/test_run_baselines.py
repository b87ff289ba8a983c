"""fedsim.run.baselines: what federating bought (local-only and centralized models)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from builders import tiny_config
from rich.console import Console
from sklearn.metrics import roc_auc_score

from fedsim.data import FederatedDataset
from fedsim.errors import ConfigError
from fedsim.learning.model import build_model, init_params
from fedsim.learning.train import LocalTrainer, batch_plan, gather, predict
from fedsim.run.baselines import baseline_table, baselines, centralized, local_only
from fedsim.run.datasets import load_dataset
from fedsim.run.runner import run_federated
from fedsim.run.sweep import SweepSpec, sweep_config
from fedsim.seeding import client_key, stream


def _cfg(**sections):
    return tiny_config(federation={"mode": "plaintext", "rounds": 3},
                       evaluation={"baselines": "all"}, **sections)


def _by_hand(cfg, dataset):
    """The run's model, and for each hospital (index, data) its parameters after every
    round of training alone: the run's init, its train split, the public stream of the
    local baseline's purpose."""
    model = build_model(cfg.model, vocab_size=dataset.vocab_size,
                        num_numeric=dataset.num_numeric)
    trainer = LocalTrainer(model, cfg.train)

    def rounds(i, c):
        params = init_params(model, key=client_key(cfg.seed, 0), max_codes=dataset.max_codes)
        for r in range(cfg.federation.rounds):
            plan = batch_plan(stream(cfg.seed, "baseline-local", r, i), len(c.train),
                              cfg.train.local_steps, cfg.train.batch_size)
            params, _ = trainer.train(params, gather(c.train, plan))
            yield params

    return model, rounds


def test_a_local_model_is_the_run_model_trained_on_that_hospital_alone():
    """By hand: the run's init, the hospital's train split, the public stream of its
    purpose, as many rounds as the run; scored with scikit-learn."""
    cfg = _cfg()
    dataset = load_dataset(cfg)
    got = local_only(cfg, dataset)
    model, rounds = _by_hand(cfg, dataset)
    for i, c in enumerate(dataset.clients):
        *_, params = rounds(i, c)
        own = roc_auc_score(c.test.labels, predict(model, params, c.test))
        pooled = dataset.test_set()
        assert got[c.name]["own_test_auc"] == pytest.approx(own, abs=1e-9)
        assert got[c.name]["pooled_test_auc"] == pytest.approx(
            roc_auc_score(pooled.labels, predict(model, params, pooled)), abs=1e-9)
        assert got[c.name]["steps"] == cfg.train.local_steps * cfg.federation.rounds


def test_under_best_val_a_local_model_is_its_best_validating_round():
    """By hand, as above, scoring every round on the hospital's own validation split:
    the kept round is the first with the best validation AUC, and its test AUC is
    reported (the run's own selection rule, on rows the hospital holds)."""
    cfg = tiny_config(federation={"mode": "plaintext", "rounds": 3}, train={"lr": 0.3},
                      evaluation={"baselines": "local", "select": "best_val"})
    dataset = load_dataset(cfg)
    got = local_only(cfg, dataset)
    model, rounds = _by_hand(cfg, dataset)
    for i, c in enumerate(dataset.clients):
        kept = [(roc_auc_score(c.val.labels, predict(model, params, c.val)),
                 roc_auc_score(c.test.labels, predict(model, params, c.test)))
                for params in rounds(i, c)]
        best = max(range(len(kept)), key=lambda k: (kept[k][0], -k))
        assert got[c.name]["round"] == best + 1
        assert got[c.name]["own_test_auc"] == pytest.approx(kept[best][1], abs=1e-9)


def test_a_local_model_never_sees_another_hospitals_rows():
    """Replace hospital-1's training rows: hospital-0's local model scores the same on
    its own test split, hospital-1's does not."""
    cfg = _cfg()
    dataset = load_dataset(cfg)
    a, b, c = dataset.clients
    swapped = FederatedDataset((a, dataclasses.replace(b, train=c.train), c),
                               dataset.vocab_size, dataset.num_numeric, dataset.max_codes,
                               dataset.holdout)
    before, after = local_only(cfg, dataset), local_only(cfg, swapped)
    assert after[a.name]["own_test_auc"] == before[a.name]["own_test_auc"]
    assert after[b.name]["own_test_auc"] != before[b.name]["own_test_auc"]


def test_the_centralized_model_trains_on_the_pooled_rows_for_the_federations_steps():
    cfg = _cfg()
    dataset = load_dataset(cfg)
    got = centralized(cfg, dataset)
    fed = cfg.federation
    assert got["steps"] == fed.rounds * fed.clients_per_round * cfg.train.local_steps
    assert set(got["own_test_auc"]) == set(dataset.names)
    # Pooled rows: more than any one hospital's local model had.
    assert 0.5 < got["pooled_test_auc"] <= 1.0


def test_a_run_writes_its_baselines_beside_its_metrics(tmp_path):
    out = tmp_path / "run"
    console = Console(record=True, width=140)
    outcome = run_federated(_cfg(), out_dir=out, backend="inprocess", reference=False,
                            console=console)
    b = json.loads((out / "metrics.json").read_text())["baselines"]
    assert b["federated"]["pooled_test_auc"] == outcome.report["pooled"]["auc"]
    assert set(b["local"]) == {"hospital-0", "hospital-1", "hospital-2"}
    ranked = max(b["local"], key=lambda n: b["local"][n]["pooled_test_auc"])
    assert b["best_local"] == ranked and "centralized" in b
    assert (out / "baselines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = console.export_text()
    assert "what federating bought" in text and "federated - best local" in text


def test_baselines_none_writes_none_and_a_cohort_run_is_skipped_with_a_warning(tmp_path):
    run_federated(tiny_config(federation={"mode": "plaintext", "rounds": 1}),
                  out_dir=tmp_path / "none", backend="inprocess", reference=False)
    assert "baselines" not in json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert not (tmp_path / "none" / "baselines.png").exists()

    cfg = tiny_config(federation={"mode": "plaintext", "rounds": 1, "clients": "cohort",
                                  "cohorts": 2}, evaluation={"baselines": "local"})
    console = Console(record=True, width=140)
    run_federated(cfg, out_dir=tmp_path / "cohort", backend="inprocess", reference=False,
                  console=console)
    assert "no baselines for a cohort run" in console.export_text()
    assert "baselines" not in json.loads((tmp_path / "cohort" / "metrics.json").read_text())
    with pytest.raises(ConfigError, match="baselines need hospitals"):
        baselines(cfg, load_dataset(cfg), {"pooled": {"auc": 0.5}}, "local")


def test_a_bad_baselines_value_is_a_config_error():
    with pytest.raises(ConfigError, match="baselines"):
        tiny_config(evaluation={"baselines": "every"})


def test_the_table_says_how_the_federated_model_compares():
    b = {"federated": {"pooled_test_auc": 0.80, "own_test_auc": {"a": 0.81, "b": 0.70}},
         "local": {"a": {"own_test_auc": 0.75, "pooled_test_auc": 0.72, "steps": 10},
                   "b": {"own_test_auc": 0.72, "pooled_test_auc": 0.66, "steps": 10}},
         "best_local": "a",
         "centralized": {"pooled_test_auc": 0.83, "own_test_auc": {}, "steps": 20}}
    console = Console(record=True, width=160)
    console.print(baseline_table(b))
    text = console.export_text()
    assert "federated - best local (a): +0.0800" in text
    assert "federated - centralized: -0.0300" in text
    assert "beats the hospital's local model at 1 of 2" in text


def test_sweep_points_skip_baselines_unless_the_base_config_asks(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("name: b\nfederation: {mode: plaintext}\n")
    spec = SweepSpec(base=base, name="s", overrides=(), target_epsilons=(None,), privacy={})
    assert sweep_config(spec, None, ()).evaluation.baselines == "none"
    assert sweep_config(spec, None, ("evaluation.baselines=local",)
                        ).evaluation.baselines == "local"

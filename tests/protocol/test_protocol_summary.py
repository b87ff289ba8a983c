"""Secure federated statistics (`fedsim.protocol.summary`, ``fedsim stats``,
``data.standardize: federated``): the coordinator gets the pooled count, mean and std
of every numeric feature and the pooled code frequencies within the stated precision,
and nothing of one hospital; what it could try with what it holds (a subset sum, a
weaker plan, the statistics key for a training sum) is refused."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import RecordingBackend, tiny_config

from fedsim.errors import DataError, ProtocolError, Refusal
from fedsim.protocol.backend import InProcessBackend
from fedsim.protocol.summary import MAX_ABS, SummaryPlan, federated_summary
from fedsim.run.datasets import load_dataset, run_scale

ROOT = Path(__file__).resolve().parents[2]


def setting(**data):
    cfg = tiny_config(federation={"mode": "he", "rounds": 2}, data=data)
    return cfg, load_dataset(cfg)


def pooled_truth(dataset):
    """The pooled training rows' own statistics, computed with every row in one place."""
    raw = np.concatenate([c.raw("train") for c in dataset.clients])
    counts = np.zeros(dataset.vocab_size, np.int64)
    for c in dataset.clients:
        for row in np.asarray(c.train.codes):
            counts[np.unique(row[row >= 0])] += 1
    return raw, counts


def integers_in(value, out: list[int], depth: int = 0) -> None:
    """Every integer in ``value`` (int arrays too), for the no-leak check."""
    if depth > 8 or value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, np.integer)):
        out.append(int(value))
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        out.append(int(value))
    elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        flat = value.ravel()
        out.extend(int(v) for v in flat if float(v).is_integer())
    elif isinstance(value, dict):
        for v in value.values():
            integers_in(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            integers_in(v, out, depth + 1)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            integers_in(getattr(value, f.name), out, depth + 1)


def test_the_opened_statistics_equal_the_pooled_rows_and_nothing_of_one_hospital(
        monkeypatch):
    cfg, data = setting()
    own: list[np.ndarray] = []
    integers = SummaryPlan.integers

    def spying(self, name, numeric, codes):
        sums, counts = integers(self, name, numeric, codes)
        own.append(sums.copy())
        return sums, counts

    monkeypatch.setattr(SummaryPlan, "integers", spying)
    backend = RecordingBackend()
    summary = federated_summary(cfg, data, backend=backend, run_id="s")
    raw, counts = pooled_truth(data)
    assert summary.encrypted and summary.hospitals == data.names
    assert summary.n == len(raw) and 0 < summary.precision < 1e-3
    assert np.max(np.abs(summary.mean - raw.mean(axis=0))) <= summary.precision
    assert np.allclose(summary.std, raw.std(axis=0), rtol=1e-6, atol=1e-4)
    assert np.array_equal(summary.code_counts, counts)  # exact: integers through CKKS
    # The hospitals differ (assays), so one hospital's figures would be telling.
    means = [c.raw("train").mean(axis=0) for c in data.clients]
    assert np.min(np.abs(means[0] - means[1])) > 1e-3
    # No hospital's sums of values or of squares reach the coordinator (its n is public:
    # it weights the training sum).
    seen: list[int] = []
    integers_in(backend.seen, seen)
    integers_in(summary, seen)
    assert len(own) == 3 and len(seen) > 100
    seen_set = set(seen)
    for sums in own:
        for value in sums[1:]:
            if value > 1000:
                assert int(value) not in seen_set, f"a hospital's sum {value} reached it"


def test_plaintext_computes_the_same_in_the_clear():
    cfg, data = setting()
    he = federated_summary(cfg, data, backend=InProcessBackend(), run_id="s")
    plain = federated_summary(dataclasses.replace(
        cfg, federation=dataclasses.replace(cfg.federation, mode="plaintext")), data,
        backend=None, run_id="s")
    assert not plain.encrypted and plain.n == he.n
    assert np.array_equal(plain.mean, he.mean) and np.array_equal(plain.std, he.std)
    assert np.array_equal(plain.code_counts, he.code_counts)


def test_key_holders_refuse_statistics_of_some_hospitals_only():
    cfg, data = setting()

    class Intercepting(InProcessBackend):
        def call(self, role, method, *args, **kwargs):
            if method == "sum_evaluation":  # the coordinator sums two hospitals only
                args = (args[0], *args[1:3])
            return super().call(role, method, *args, **kwargs)

    with pytest.raises(Refusal, match="stats sum of 2 of the 3 registered clients"):
        federated_summary(cfg, data, backend=Intercepting(), run_id="s")


def test_a_hospital_refuses_a_plan_weaker_than_its_config_or_too_few_rows():
    cfg, data = setting()

    class Replanning(InProcessBackend):
        def call(self, role, method, *args, **kwargs):
            if method == "summarise":  # a plan that lets a tiny site through
                args = (dataclasses.replace(args[0], min_rows=1),)
            return super().call(role, method, *args, **kwargs)

    with pytest.raises(ProtocolError, match="refuses a statistics plan outside its config"):
        federated_summary(cfg, data, backend=Replanning(), run_id="s")
    small, data = setting(statistics_min_rows=10_000)
    with pytest.raises(DataError, match=r"its \d+ training rows are fewer than "
                       "data.statistics_min_rows = 10000"):
        federated_summary(small, data, backend=InProcessBackend(), run_id="s")


def test_a_key_made_for_statistics_opens_no_training_sum():
    from fedsim.protocol.federation import Federation
    from fedsim.protocol.summary import summary_config

    cfg, data = setting()
    fed = Federation(summary_config(cfg), data.withheld(), InProcessBackend(), run_id="s",
                     hospital_data=data, evaluation=SummaryPlan.from_config(cfg, data))
    fed.setup()
    with pytest.raises(Refusal, match="training sum under a key made for federated "
                       "statistics"):
        fed.run_round(0)


def test_the_plan_refuses_values_it_cannot_sum_exactly():
    plan = SummaryPlan(("age", "dose"), 0, 2, 100, 1)
    with pytest.raises(DataError, match="numeric column 'dose' has values beyond"):
        plan.integers("h", np.array([[50.0, 1.0], [60.0, MAX_ABS * 2]]), np.zeros((2, 0)))
    sums, _ = plan.integers("h", np.array([[-1.5, 2.0], [0.5, 4.0]]), np.zeros((2, 0)))
    # n; positive and negative parts apart; squares; in units of 2^-8
    assert sums.tolist() == [2, 128, 1536, 384, 0, 640, 5120]


@pytest.mark.slow
def test_a_federated_run_trains_on_the_pooled_scale(tmp_path):
    from fedsim.run.runner import run_federated

    cfg = tiny_config(federation={"mode": "he", "rounds": 1},
                      data={"standardize": "federated"})
    out = tmp_path / "run"
    run_federated(cfg, out_dir=out, backend="inprocess", reference=False)
    stats = json.loads((out / "statistics.json").read_text())
    data = load_dataset(cfg)
    raw, _ = pooled_truth(data)
    assert stats["mode"] == "he" and stats["n"] == len(raw)
    assert np.allclose(stats["scaler"]["mean"], raw.mean(axis=0), atol=1e-3)
    scaled = run_scale(cfg, data, out)
    train = np.concatenate([c.train.numeric for c in scaled.clients])
    assert np.allclose(train.mean(axis=0), 0, atol=1e-3)
    assert np.allclose(train.std(axis=0), 1, atol=1e-3)
    # Each hospital keeps its offset from the others (per hospital, each would be 0).
    assert np.abs(scaled.clients[0].train.numeric.mean(axis=0)).max() > 0.05
    none = load_dataset(tiny_config(data={"standardize": "none"}))
    assert np.allclose(none.clients[0].train.numeric, data.clients[0].raw("train"),
                       rtol=1e-6)


def test_fedsim_stats_prints_the_table_and_refuses_an_existing_out(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: s\ndata: {synth: {num_hospitals: 3, patients_per_hospital: 200, "
                   "vocab_size: 300}}\nfederation: {mode: plaintext}\n")
    out = tmp_path / "stats.json"
    cmd = [sys.executable, "-m", "fedsim.cli", "stats", str(cfg), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "lab_1" in done.stdout and "computed in the clear" in done.stdout
    assert json.loads(out.read_text())["features"]["age"]["std"] > 1
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "exists" in again.stderr

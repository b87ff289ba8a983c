"""In he mode nothing computed from one client's data reaches the coordinator.

Plays the coordinator: records every object any party returns to the driver (reports,
manifests, endorsements, the opened aggregate, ...) and every row written to
rounds.parquet, then searches them for each client's training loss, update norm and
weight (sample count over the public normaliser) of every round. None may appear; the
round's weighted mean loss may (it is what the summed slots give).
"""

from __future__ import annotations

import math

import numpy as np
from builders import RecordingBackend, federation, numbers_in, tiny_config

from fedsim.protocol import client as client_module
from fedsim.protocol.loop import run_rounds


def _spy_on_clients(monkeypatch) -> list[tuple[int, float, float]]:
    """Each client's ``(sample count, training loss, update norm)`` as it makes its
    contribution, in the order made (what the coordinator must never see)."""
    made: list[tuple[int, float, float]] = []
    make = client_module.Contributions.make

    def spying_make(self, name, index, num_examples, delta, loss, context, train_s):
        made.append((num_examples, float(loss), float(np.linalg.norm(delta))))
        return make(self, name, index, num_examples, delta, loss, context, train_s)

    monkeypatch.setattr(client_module.Contributions, "make", spying_make)
    return made


def _losses_and_norms(made: list[tuple[int, float, float]]) -> list[float]:
    return [v for _, loss, norm in made for v in (loss, norm)]


def _assert_none_of(secrets: list[float], seen: list[float], *, at_least: int) -> None:
    seen_arr = np.array([v for v in seen if math.isfinite(v)])
    assert seen_arr.size > at_least
    for value in secrets:
        close = np.isclose(seen_arr, value, rtol=1e-6, atol=0.0)
        assert not close.any(), f"a per-client value {value!r} reached the coordinator"


def test_an_he_run_sends_the_coordinator_no_per_client_value(monkeypatch):
    made = _spy_on_clients(monkeypatch)
    backend = RecordingBackend()
    fed = federation(tiny_config(federation={"mode": "he", "rounds": 2}), backend)
    records = run_rounds(fed, 2)
    secrets = _losses_and_norms(made)
    secrets.extend(len(c.train) / fed.weight_norm for c in fed.dataset.clients)
    assert len(secrets) == 2 * 2 * 3 + 3  # 2 rounds x 3 clients x (loss, norm), 3 weights

    seen: list[float] = []
    numbers_in(backend.seen, seen)
    for record in records:
        numbers_in(record.row(), seen)
    _assert_none_of(secrets, seen, at_least=1000)  # the opened aggregates are in there
    # What it does get: the weighted mean loss from the summed slots, per round.
    assert all(0.0 < r.loss < 1.5 and 0.0 < r.extra["update_norm"] for r in records)


def test_the_summed_statistics_equal_the_weighted_means_in_plaintext(monkeypatch):
    seen = _spy_on_clients(monkeypatch)
    fed = federation(tiny_config())
    record = fed.run_round(0)
    n, loss, norm = (np.array(c) for c in zip(*seen))
    assert abs(record.loss - np.sum(n * loss) / np.sum(n)) < 1e-12
    assert abs(record.extra["update_norm"] - np.sum(n * norm) / np.sum(n)) < 1e-12


def test_an_he_runs_written_files_hold_no_per_client_training_value(monkeypatch, tmp_path):
    """rounds.parquet, manifest.json and metrics.json of a `fedsim run` (he, in process)
    hold no client's training loss, update norm or weight. (metrics.json's per-hospital
    *test* metrics are the coordinator's own evaluation of pooled test data, which the
    simulation still holds: issue 16.)"""
    import json

    import pyarrow.parquet as pq

    from fedsim.run.runner import run_federated

    made = _spy_on_clients(monkeypatch)
    cfg = tiny_config(federation={"mode": "he", "rounds": 2})
    outcome = run_federated(cfg, out_dir=tmp_path / "run", backend="inprocess",
                            reference=False)
    # (The tiny hospitals are of one size, so their weights are 1/m, a public value:
    # only losses and norms are searched here; the test above searches weights too.)
    secrets = _losses_and_norms(made)
    assert len(secrets) == 2 * 3 * 2 and outcome.records

    seen: list[float] = []
    numbers_in(pq.read_table(tmp_path / "run" / "rounds.parquet").to_pydict(), seen)
    for name in ("manifest.json", "metrics.json"):
        numbers_in(json.loads((tmp_path / "run" / name).read_text()), seen)
    _assert_none_of(secrets, seen, at_least=50)

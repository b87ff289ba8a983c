"""Faults inside a round on Ray: a stopped client cannot hold the round."""

from __future__ import annotations

import os
import signal
import time

import pytest
from builders import federation, tiny_config


@pytest.mark.ray
def test_a_stopped_client_cannot_hold_the_round_past_its_deadline(ray_session):
    from actors import RayBackend

    cfg = tiny_config(federation={"rounds": 3, "round_timeout_s": 5.0})
    fed = federation(cfg, RayBackend("deadline"), run_id="deadline")
    role = fed.population.roles["hospital-0"]
    actor = fed.backend.handles[role]
    pid = ray_session.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    try:
        first = fed.run_round(0)  # compiles the training step everywhere
        assert first.dropped == ()
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        late = fed.run_round(1)
        took = time.monotonic() - t0
        assert late.dropped == ("hospital-0",) and late.clients == ("hospital-1", "hospital-2")
        assert late.extra["late"] == "hospital-0"
        # The deadline, then the others' aggregation (generous: tests share the cores).
        assert took < 5.0 + 60.0, took
        assert any("hospital-0: no update within the round deadline "
                   "(federation.round_timeout_s 5)" in w for w in fed.warnings)
    finally:
        os.kill(pid, signal.SIGCONT)
        fed.backend.shutdown()


# ----------------------------------------------------------------- lost parties
def _lose_at(monkeypatch, round_idx: int, role: str, kill) -> None:
    """``role``'s process is gone as round ``round_idx`` starts (first time only)."""
    from fedsim.protocol.federation import Federation

    honest, done = Federation.run_round, []

    def run_round(self, r):
        if r == round_idx and not done:
            done.append(r)
            kill(self.backend, role)
        return honest(self, r)

    monkeypatch.setattr(Federation, "run_round", run_round)


def _stop(backend, role):  # the in-process backend's stand-in for a dead actor
    backend.stop(role)


def _run(cfg, out, backend="inprocess"):
    from fedsim.run.runner import run_federated

    return run_federated(cfg, out_dir=out, backend=backend, reference=False)


def _params(out):
    from fedsim.run.results import flatten_params, load_run

    return flatten_params(load_run(out).params)


def _same(a, b) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_lost_aggregator_is_restarted_and_its_round_run_again(tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"rounds": 4})
    _run(cfg, tmp_path / "whole")
    _lose_at(monkeypatch, 2, "aggregator", _stop)
    outcome = _run(cfg, tmp_path / "lost")
    run = load_run(tmp_path / "lost")
    assert run.manifest["status"] == "completed"
    assert run.rounds.column("round").to_pylist() == [0, 1, 2, 3]
    assert run.rounds.column("restarted").to_pylist() == ["", "", "aggregator", ""]
    (restart,) = run.manifest["restarts"]
    assert restart["lost"] == "aggregator" and restart["from_round"] == 2
    assert "aggregator is gone" in restart["reason"]
    assert _same(_params(tmp_path / "lost"), _params(tmp_path / "whole"))
    assert len(outcome.records) == 4


def test_a_lost_client_is_dropped_for_its_round_and_back_the_next(tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"rounds": 4})
    _lose_at(monkeypatch, 1, "client:hospital-0", _stop)
    _run(cfg, tmp_path / "lost")
    rows = load_run(tmp_path / "lost").rounds.to_pylist()
    assert rows[1]["dropped"] == "hospital-0" and "hospital-0" not in rows[1]["clients"]
    assert rows[2]["restarted"] == "client:hospital-0"
    assert rows[2]["clients"] == rows[3]["clients"] == "hospital-0,hospital-1,hospital-2"


def test_a_lost_key_holder_in_n_of_n_restarts_the_holders_and_the_run_completes(
        tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"mode": "he", "rounds": 3},
                      crypto={"key_holders": 3, "threshold": None})
    _lose_at(monkeypatch, 1, "keyholder:1", _stop)
    _run(cfg, tmp_path / "lost")
    run = load_run(tmp_path / "lost")
    assert run.manifest["status"] == "completed"
    assert run.rounds.column("restarted").to_pylist() == ["", "keyholder:1", ""]
    (restart,) = run.manifest["restarts"]
    assert "keyholder-1 is gone and decryption is n-of-n" in restart["reason"]


def test_a_lost_key_holder_in_t_of_n_is_recorded_and_survived(tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"mode": "he", "rounds": 3},
                      crypto={"key_holders": 3, "threshold": 2})
    _lose_at(monkeypatch, 1, "keyholder:0", _stop)
    _run(cfg, tmp_path / "lost")
    run = load_run(tmp_path / "lost")
    assert run.manifest["status"] == "completed" and "restarts" not in run.manifest
    assert run.rounds.column("holders_lost").to_pylist() == ["", "keyholder-0", "keyholder-0"]


def test_restarts_stop_at_max_restarts_with_a_resumable_run(tmp_path, monkeypatch):
    from fedsim.errors import PartyLost
    from fedsim.protocol.federation import Federation
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"rounds": 3, "max_restarts": 1})
    honest = Federation.run_round

    def run_round(self, r):  # the aggregator dies every time round 1 starts
        if r == 1:
            self.backend.stop("aggregator")
        return honest(self, r)

    monkeypatch.setattr(Federation, "run_round", run_round)
    with pytest.raises(PartyLost, match="aggregator is gone"):
        _run(cfg, tmp_path / "lost")
    run = load_run(tmp_path / "lost")
    assert run.manifest["status"] == "failed" and len(run.manifest["restarts"]) == 1
    assert run.manifest["resume"] == f"fedsim resume {tmp_path / 'lost'}"


@pytest.mark.ray
def test_an_aggregator_actor_killed_on_ray_is_restarted_and_the_run_completes(
        ray_session, tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    def kill(backend, role):
        ray_session.kill(backend.handles[role], no_restart=True)

    cfg = tiny_config(federation={"rounds": 3})
    _run(cfg, tmp_path / "whole")
    _lose_at(monkeypatch, 1, "aggregator", kill)
    _run(cfg, tmp_path / "lost", backend="ray")
    run = load_run(tmp_path / "lost")
    assert run.manifest["status"] == "completed"
    assert run.manifest["restarts"][0]["reason"].startswith("aggregator is gone (")
    assert _same(_params(tmp_path / "lost"), _params(tmp_path / "whole"))


def _failing(monkeypatch, round_idx: int, times: int) -> None:
    """hospital-0's update fails to encode in round ``round_idx``, ``times`` times."""
    from fedsim.errors import CryptoError
    from fedsim.protocol.client import Hospital

    honest, left = Hospital.train, [times]

    def train(self, r, flat, clients, context, commitment):
        if r == round_idx and self.name == "hospital-0" and left[0] > 0:
            left[0] -= 1
            raise CryptoError("client hospital-0: simulated encryption failure")
        return honest(self, r, flat, clients, context, commitment)

    monkeypatch.setattr(Hospital, "train", train)


def test_a_round_short_of_a_lost_client_is_retried_with_restarted_parties(
        tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"rounds": 3, "min_clients": 3})
    _run(cfg, tmp_path / "whole")
    _lose_at(monkeypatch, 1, "client:hospital-0", _stop)
    _run(cfg, tmp_path / "short")
    run = load_run(tmp_path / "short")
    assert run.rounds.column("restarted").to_pylist() == ["", "quorum", ""]
    assert "round 1: only 2 valid update(s) (hospital-0 dropped)" in \
        run.manifest["restarts"][0]["reason"]
    assert _same(_params(tmp_path / "short"), _params(tmp_path / "whole"))


def test_a_short_round_a_retry_would_only_repeat_fails_at_once(tmp_path, monkeypatch):
    from fedsim.errors import ProtocolError, RoundFailed
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"rounds": 3, "min_clients": 3})
    _failing(monkeypatch, 1, times=10)  # the same client fails the same way every time
    with pytest.raises(ProtocolError, match="round 1: only 2 valid update") as err:
        _run(cfg, tmp_path / "short")
    assert not isinstance(err.value, RoundFailed)
    assert "restarts" not in load_run(tmp_path / "short").manifest


@pytest.mark.parametrize("mode", ["plaintext", "he"])
def test_a_short_round_is_skipped_when_so_configured(tmp_path, monkeypatch, mode):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"rounds": 3, "min_clients": 3, "on_short_round": "skip",
                                  "mode": mode},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0})
    _failing(monkeypatch, 1, times=10)
    _run(cfg, tmp_path / "short")
    rows = load_run(tmp_path / "short").rounds.to_pylist()
    assert [r["skipped"] for r in rows] == [0.0, 1.0, 0.0]
    assert rows[1]["clients"] == "" and rows[1]["dropped"] == "hospital-0"
    # (epsilon_observer: against the participants plaintext has no bound at all)
    if mode == "he":  # nothing opened in round 1: hospitals 1 and 2 are not charged
        assert rows[1]["epsilon_observer"] == rows[0]["epsilon_observer"]
    else:  # the aggregator read hospitals 1 and 2's updates: charged
        assert rows[1]["epsilon_observer"] > rows[0]["epsilon_observer"]


def test_a_dp_round_lost_before_any_decryption_is_run_again_not_charged(
        tmp_path, monkeypatch):
    from fedsim.run.results import load_run

    cfg = tiny_config(federation={"mode": "he", "rounds": 3},
                      crypto={"key_holders": 3, "threshold": None},
                      privacy={"enabled": True, "clip": 0.05, "noise_multiplier": 2.0})
    _lose_at(monkeypatch, 1, "keyholder:1", _stop)
    _run(cfg, tmp_path / "lost")
    rows = load_run(tmp_path / "lost").rounds.to_pylist()
    assert [r.get("lost_release") for r in rows] == [None, None, None]
    assert [r["skipped"] for r in rows] == [0.0, 0.0, 0.0] and rows[1]["restarted"]

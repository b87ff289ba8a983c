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
        assert took < 5.0 + 20.0, took  # the deadline, then the others' aggregation
        assert any("hospital-0: no update within the round deadline "
                   "(federation.round_timeout_s 5)" in w for w in fed.warnings)
    finally:
        os.kill(pid, signal.SIGCONT)
        fed.backend.shutdown()

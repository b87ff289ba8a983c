"""A run on Ray ends quietly: no teardown traceback from the parties' workers.

Removing a placement group while an actor in it is still alive makes the raylet SIGTERM
that worker, and Ray's SIGTERM handler in it raises ``SystemExit: 1`` wherever the
worker is, printing ``Exception ignored in: <function WeakKeyDictionary...>`` and a
traceback that reads as a crash. `RayBackend.shutdown` lets the actors exit first and
frees the groups after. The run's own embedded Ray keeps its logs in RAY_TMPDIR, where
the raylet records every worker it signalled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from builders import tiny_config

from fedsim.run.results import load_run

ROOT = Path(__file__).resolve().parents[2]


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_run_ends_without_teardown_tracebacks_or_leftovers(tmp_path):
    cfg = tiny_config(federation={"rounds": 1, "mode": "plaintext"})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    ray_tmp = Path(tempfile.mkdtemp(prefix="frt", dir="/tmp"))  # short: Ray's socket paths
    try:
        env = {**os.environ, "RAY_ADDRESS": "local", "RAY_TMPDIR": str(ray_tmp)}
        proc = subprocess.run(
            [sys.executable, "-m", "fedsim.cli", "run", str(config), "--backend", "ray",
             "--out", str(tmp_path / "run"), "--no-reference"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        ended = time.monotonic()
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert load_run(tmp_path / "run").rounds.num_rows == 1
        for noise in ("Traceback", "Exception ignored", "SystemExit"):
            assert noise not in proc.stderr, proc.stderr[-3000:]
            assert noise not in proc.stdout, proc.stdout[-3000:]
        logs = [Path(p) for p in ray_tmp.glob("ray/session_2*/logs")]
        assert len(logs) == 1, logs
        # worker-<worker id>-<job id>-<pid>.out: the run's job (01000000) ran its actors.
        workers = {p.stem.split("-")[1]: int(p.stem.split("-")[3])
                   for p in logs[0].glob("worker-*-01000000-*.out")}
        assert len(workers) >= 4  # 3 clients and the aggregator
        raylet = (logs[0] / "raylet.out").read_text()
        signalled = [line for line in raylet.splitlines() if "sending SIGTERM" in line
                     and line.rsplit("worker_id=", 1)[-1].strip() in workers]
        assert not signalled, "\n".join(signalled)
        pids = set(workers.values())
        time.sleep(max(0.0, 1.0 - (time.monotonic() - ended)))
        assert not _alive(pids), "actor processes left behind"
        for err in logs[0].glob("worker-*-01000000-*.err"):
            text = err.read_text()
            for noise in ("Traceback", "Exception ignored", "SystemExit"):
                assert noise not in text, f"{err.name}: {text[-2000:]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

"""The CLI on the shipped quick config, and encrypted vs plaintext over 20 rounds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from builders import federation, scored_rounds

from fedsim import load_config, load_run
from fedsim.run.results import flatten_params

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs/quick.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`fedsim run configs/quick.yaml` exactly as the README's demo runs it (he, secure),
    on its own embedded Ray whose logs stay in a directory of ours until the module ends."""
    out = tmp_path_factory.mktemp("demo") / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fdm", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_TMPDIR": str(ray_tmp)}
    try:
        proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", str(QUICK), "--out",
                               str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield out, proc.stderr + proc.stdout, ray_tmp
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray
def test_demo_reaches_auc_075_and_prints_a_reference(demo_run):
    out, log, _ = demo_run
    run = load_run(out)
    assert run.config.federation.mode == "he" and run.config.crypto.profile == "secure"
    assert run.rounds.num_rows == 20
    assert run.metrics["pooled"]["auc"] >= 0.75
    assert "centralized logistic-regression reference" in log
    assert run.manifest["reference_logistic_auc"] > 0.75
    assert "round 20/20" in log and "crypto" in log
    enc = run.rounds.column("t_encrypt_s").to_pylist()
    pdec = run.rounds.column("t_partial_decrypt_s").to_pylist()
    assert all(t > 0 for t in enc) and all(t > 0 for t in pdec)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pooled"]["n"] > 1000
    # The demo's baselines: every hospital alone, and the model on the pooled rows.
    b = metrics["baselines"]
    assert len(b["local"]) == 5 and b["centralized"]["pooled_test_auc"] > 0.75
    assert (out / "baselines.png").is_file() and "what federating bought" in log


@pytest.mark.slow
@pytest.mark.ray
def test_the_demo_ends_without_teardown_tracebacks_or_signalled_actors(demo_run):
    """Removing a placement group while an actor in it is alive makes the raylet SIGTERM
    that worker, whose Ray handler then prints ``Exception ignored ...`` and
    ``SystemExit: 1``: `RayBackend.shutdown` lets the actors exit before it frees them."""
    _, log, ray_tmp = demo_run
    for noise in ("Traceback", "Exception ignored", "SystemExit"):
        assert noise not in log, log[-3000:]
    (logs,) = ray_tmp.glob("ray/session_2*/logs")
    # worker-<worker id>-<job id>-<pid>.out: the run's job (01000000) ran its actors.
    workers = {p.stem.split("-")[1] for p in logs.glob("worker-*-01000000-*.out")}
    assert len(workers) >= 9  # 5 hospitals, the aggregator, 3 key holders
    signalled = [line for line in (logs / "raylet.out").read_text().splitlines()
                 if "sending SIGTERM" in line
                 and line.rsplit("worker_id=", 1)[-1].strip() in workers]
    assert not signalled, "\n".join(signalled)
    for err in logs.glob("worker-*-01000000-*.err"):
        for noise in ("Traceback", "Exception ignored", "SystemExit"):
            assert noise not in err.read_text(), err.name


def test_secure_he_demo_matches_plaintext_auc(demo_run, quick_plaintext):
    out, _, _ = demo_run
    run = load_run(out)
    plain, records = quick_plaintext
    assert abs(run.metrics["pooled"]["auc"] - records[-1].metrics.auc) <= 1e-3
    secure = np.concatenate([v.ravel() for v in flatten_params(run.params).values()])
    exact = np.concatenate([v.ravel() for v in flatten_params(plain.params).values()])
    # The secure profile floods each decryption with noise (about 1e-5 per value here);
    # local SGD amplifies it a little each round, so only a loose bound holds.
    assert np.max(np.abs(secure - exact)) < 0.05


@pytest.mark.slow
def test_fast_he_matches_plaintext_to_1e5_after_20_rounds(quick_plaintext):
    enc = federation(load_config(QUICK, ["crypto.profile=fast",
                                         "crypto.accept_unflooded_decryption=true"]),
                     run_id="fast")
    enc_records = scored_rounds(enc, 20)
    plain, records = quick_plaintext
    assert np.max(np.abs(enc.state.params - plain.state.params)) <= 1e-5
    assert round(enc_records[-1].metrics.auc, 3) == round(records[-1].metrics.auc, 3)

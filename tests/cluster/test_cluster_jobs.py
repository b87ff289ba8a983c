"""fedsim on a real two-node Ray cluster (loopback): Ray Jobs, placement, metrics, CLI.

One encrypted 2-round run is submitted as a Ray job; the tests read its logs, the
actors the state API lists for it, and the metrics scraped while it ran.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest
from raycluster import VENV_BIN, http_get, ray_env, write_tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@dataclass
class JobRun:
    submission_id: str
    name: str
    logs: str
    status: str
    metrics: str
    actors: list[dict]


def _ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=ray_env(), capture_output=True,
                          text=True, timeout=timeout)


def _job_status(cluster, submission_id: str) -> str:
    return json.loads(http_get(f"{cluster.dashboard}/api/jobs/{submission_id}"))["status"]


@pytest.fixture(scope="module")
def job_run(cluster, tmp_path_factory) -> JobRun:
    """Submit a 2-round he run with strict key-holder spreading; scrape while it runs."""
    workdir = tmp_path_factory.mktemp("job")
    name = f"jobtest{uuid.uuid4().hex[:6]}"
    write_tiny_config(workdir, name, federation={"mode": "he", "rounds": 2},
                      crypto={"key_holders": 2},
                      resources={"keyholder_spread": "strict", "placement_timeout_s": 60})
    submission_id = f"{name}-job"
    out = tmp_path_factory.mktemp("results")
    submit = _ray("job", "submit", "--address", cluster.dashboard, "--working-dir",
                  str(workdir), "--submission-id", submission_id, "--no-wait", "--",
                  "fedsim", "run", f"{name}.yaml", "--out", str(out), "--no-reference")
    assert submit.returncode == 0, submit.stderr[-2000:]

    metrics, status = "", "PENDING"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = _job_status(cluster, submission_id)
        for port in cluster.metrics_ports:
            try:
                text = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except OSError:
                continue
            ours = "\n".join(line for line in text.splitlines() if f'run_id="{name}-' in line)
            if "ray_fedsim_round{" in ours and "ray_fedsim_test_auc{" in ours:
                metrics = ours
        if status in ("SUCCEEDED", "FAILED", "STOPPED") and (metrics or status != "SUCCEEDED"):
            break
        if status == "SUCCEEDED":  # finished before the export caught up: a few more polls
            deadline = min(deadline, time.monotonic() + 20)
        time.sleep(1.0)
    logs = _ray("job", "logs", "--address", cluster.dashboard, submission_id).stdout
    actors = json.loads(http_get(f"{cluster.dashboard}/api/v0/actors?detail=1&limit=1000"))
    ours = [a for a in actors["data"]["result"]["result"]
            if (a.get("name") or "").startswith(f"{name}-")]
    return JobRun(submission_id, name, logs, status, metrics, ours)


def test_job_runs_to_completion_and_logs_the_summary(job_run):
    assert job_run.status == "SUCCEEDED", job_run.logs[-3000:]
    assert "pooled test ROC AUC" in job_run.logs
    assert "after 2 rounds" in job_run.logs


def test_every_actor_is_named_in_the_fedsim_namespace(job_run):
    names = {a["name"].split("/", 1)[1] for a in job_run.actors}
    assert names == {"aggregator", "keyholder-0", "keyholder-1",
                     "client-hospital-0", "client-hospital-1", "client-hospital-2"}
    assert {a["ray_namespace"] for a in job_run.actors} == {"fedsim"}
    run_ids = {a["name"].split("/", 1)[0] for a in job_run.actors}
    assert len(run_ids) == 1


def test_key_holders_land_on_distinct_nodes_and_clients_are_packed(job_run):
    node_of = {a["name"].split("/", 1)[1]: a["node_id"] for a in job_run.actors}
    assert node_of["keyholder-0"] != node_of["keyholder-1"]
    clients = {node_of[f"client-hospital-{i}"] for i in range(3)}
    assert len(clients) == 1  # 3 x 0.25 CPU + aggregator fit one 2-CPU node: PACK


def test_metrics_endpoint_exports_fedsim_metrics_with_the_run_id(job_run):
    text = job_run.metrics
    assert text, "no fedsim metrics scraped from the nodes' metrics ports"
    for metric in ("ray_fedsim_round{", "ray_fedsim_test_auc{", "ray_fedsim_bytes_up_total{",
                   "ray_fedsim_ciphertexts_total{", "ray_fedsim_clients_active{",
                   "ray_fedsim_phase_seconds{"):
        assert metric in text, metric
    assert 'role="coordinator"' in text
    assert 'phase="partial_decrypt"' in text
    active = [line for line in text.splitlines() if line.startswith("ray_fedsim_clients_active{")]
    assert float(active[-1].rsplit(" ", 1)[1]) == 3.0


def test_unplaceable_gpu_request_fails_fast_with_one_line_and_exit_code_2(cluster, tmp_path):
    config = write_tiny_config(tmp_path, "gpu")
    env = ray_env()
    env.pop("RAY_AUTH_MODE")  # fedsim finds the token (RAY_AUTH_TOKEN) itself when joining
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "fedsim"), "run", str(config), "resources.client.num_gpus=1",
         "--address", cluster.address, "--out", str(tmp_path / "out"), "--no-reference"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedsim: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "resources.client.num_gpus" in errors[0]
    assert "GPU 1" in errors[0] and "largest: GPU 0" in errors[0]


def test_strict_spread_with_too_few_nodes_is_refused_before_the_run(cluster, tmp_path):
    config = write_tiny_config(tmp_path, "spread", federation={"mode": "he"},
                               crypto={"key_holders": 3},
                               resources={"keyholder_spread": "strict"})
    proc = subprocess.run(
        [str(VENV_BIN / "fedsim"), "run", str(config), "--address", cluster.address,
         "--out", str(tmp_path / "out"), "--no-reference"],
        env=ray_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "3 key holders but only 2 node(s) can host one" in proc.stderr
    assert "round 1/" not in proc.stderr

"""Helpers: a multi-node Ray cluster on loopback, from ``ray start``, stopped by pid.

Each node is a ``ray start --block`` process in its own session; stopping kills those
process groups (never ``ray stop``, which would end every Ray on the machine, including
other test sessions'). The session's ``ray_session`` fixture is never touched: the
cluster is reached only through subprocesses and HTTP.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# This session's clusters' own token: a fresh machine has no ~/.ray/auth_token, and with
# RAY_AUTH_MODE=token and no token `ray start --head` refuses to start.
TOKEN = secrets.token_hex(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """Environment of a shell where fedsim's virtualenv is active (as on a real node)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.5x+ clusters need a token
    env["RAY_AUTH_TOKEN"] = TOKEN
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("JAX_PLATFORMS", None)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def auth_header() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def http_get(url: str, timeout: float = 10.0) -> str:
    req = urllib.request.Request(url, headers=auth_header())
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


class LocalCluster:
    """A head and worker nodes on this machine, each with its own ports."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="fsc", dir="/tmp")  # short: socket paths
        self.port = free_port()
        self.dashboard_port = free_port()
        self.metrics_ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def _start(self, args: list[str]) -> None:
        metrics = free_port()
        self.metrics_ports.append(metrics)
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address", HOST,
               "--num-cpus", "2", "--metrics-export-port", str(metrics),
               "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats",
               *args]
        log = open(Path(self.temp_dir) / f"node{len(self.procs)}.log", "w")
        self.procs.append(subprocess.Popen(cmd, env=ray_env(), stdout=log, stderr=log,
                                           start_new_session=True))

    def start(self, workers: int = 1, timeout: float = 90.0) -> LocalCluster:
        self._start(["--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                     "--dashboard-host", HOST, "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(free_port())])
        self.wait_nodes(1, timeout)
        for _ in range(workers):
            self._start(["--address", self.address])
        self.wait_nodes(1 + workers, timeout)
        return self

    def nodes(self) -> list[dict]:
        data = json.loads(http_get(f"{self.dashboard}/nodes?view=summary"))
        return [n for n in data["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE"]

    def wait_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.nodes()) >= count:
                    return
            except (OSError, ValueError, KeyError):
                pass
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {proc.returncode}; "
                                       f"logs in {self.temp_dir}")
            time.sleep(1.0)
        raise RuntimeError(f"{count} Ray node(s) not up within {timeout:g}s; logs in "
                           f"{self.temp_dir}")

    def stop(self) -> None:
        """Terminate the process groups this cluster started, workers first."""
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        time.sleep(2)  # let the raylets' children notice and exit
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this Popen created (start_new_session)
    except ProcessLookupError:
        pass


def write_tiny_config(directory: Path, name: str, **sections) -> Path:
    """A tiny config as YAML (tests/builders.tiny_config), for the CLI and Ray Jobs."""
    from builders import tiny_config

    path = directory / f"{name}.yaml"
    data = tiny_config(**sections).to_dict()
    data["name"] = name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

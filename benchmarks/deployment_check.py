"""Check the deployment model on a real two-node Ray cluster (loopback), one core per node.

Starts a head and a worker node on this machine, each pinned to its own core
(``os.sched_setaffinity`` of ``ray start`` and so of every process it spawns), pins this
driver (the coordinator) to the head's core, and runs W1 (`benchmarks.overhead`) on that
cluster with ``--deployment machines=placed,cores=1,bandwidth=inf,latency=0``: the model
replays every measured round on the nodes the parties actually ran on, and
``overhead.md`` sets the prediction (``d0_s``) beside the measured round (``wall_s``).
Needs at least 2 cores; stops only the processes it started (never ``ray stop``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_SET = ["model.depth=2", "model.width=128", "data.synth.vocab_size=4000",
               "data.synth.patients_per_hospital=400", "train.local_steps=20"]


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _node(args: list[str], core: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--block", "--node-ip-address", HOST, "--num-cpus", "8",
           "--disable-usage-stats", "--dashboard-agent-listen-port", str(_port()),
           "--metrics-export-port", str(_port()), *args]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deployment_check",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                        "deployment_check"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default="plaintext,he-secure")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help=f"config overrides (default: {' '.join(DEFAULT_SET)})")
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        p.error("needs at least 2 cores (one per node)")
    temp = Path(tempfile.mkdtemp(prefix="fsd", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1")
    port = _port()
    procs = [_node(["--head", "--port", str(port), "--temp-dir", str(temp),
                    "--include-dashboard", "false",
                    "--ray-client-server-port", str(_port())], cores[0], env,
                   temp / "head.log")]
    try:
        time.sleep(8)
        procs.append(_node(["--address", f"{HOST}:{port}"], cores[1], env,
                           temp / "worker.log"))
        time.sleep(8)
        os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        os.environ["RAY_ADDRESS"] = f"{HOST}:{port}"
        os.sched_setaffinity(0, {cores[0]})  # the coordinator shares the head's core
        from benchmarks import overhead

        overrides = args.set if args.set is not None else DEFAULT_SET
        return overhead.main(["--rounds", str(args.rounds), "--variants", args.variants,
                              "--out", args.out,
                              "--deployment", "machines=placed,cores=1,bandwidth=inf,latency=0",
                              *[a for o in overrides for a in ("--set", o)]])
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

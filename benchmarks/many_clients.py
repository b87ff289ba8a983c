"""W2: 1000 small clients, 10 per round, 100 rounds; fedsim (cohort + vmap) against Flower.

fedsim runs ``configs/w2.yaml`` through the same round loop as ``fedsim run``
(`fedsim.protocol.loop.run_rounds` over a `Federation`): the clients live in
`fedsim.protocol.cohort.Cohort` actors (one jitted, vmapped call trains a round's
sampled clients), and in ``he`` mode the run's key ceremony, aggregator, key holders
and threshold decryption are those of every encrypted run. The peer (``--peer
flower``) is Flower's simulation engine in its own virtual environment
(``.venv-flower``, created on demand: flwr 1.30 pins ray 2.51.1), with the same data,
model, initialisation, training (`benchmarks._w2`) and client sampling.
"""

from __future__ import annotations

from benchmarks._common import single_thread_env

single_thread_env()

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import _common as common  # noqa: E402
from benchmarks import _w2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "w2.yaml"
FLOWER_VENV = ROOT / ".venv-flower"
FLOWER_REQS = ["flwr[simulation]==1.30.0", "jax==0.6.2", "jaxlib==0.6.2", "flax==0.10.7",
               "optax==0.2.8", "scikit-learn>=1.4,<2"]


def w2_config(mode: str, *, clients: int, per_round: int, rounds: int, cohorts: int = 1,
              profile: str = "secure", seed: int = 0) -> Any:
    """configs/w2.yaml with the benchmark's settings."""
    from fedsim.config import load_config
    from fedsim.crypto.profiles import get_profile

    accept = [] if get_profile(profile).flooding else ["crypto.accept_unflooded_decryption=true"]
    return load_config(CONFIG, [f"federation.mode={mode}", f"crypto.profile={profile}", *accept,
                                f"data.teacher.num_clients={clients}",
                                f"federation.clients_per_round={per_round}",
                                f"federation.rounds={rounds}", f"federation.cohorts={cohorts}",
                                f"seed={seed}"])


def run_fedsim(mode: str, *, clients: int, per_round: int, rounds: int, backend: str,
               cohorts: int = 1, profile: str = "secure", seed: int = 0) -> dict:
    """One fedsim run of W2 through fedsim's round loop; timings and final test scores."""
    from fedsim.learning.evaluation import CentralEvaluator
    from fedsim.protocol.federation import Federation
    from fedsim.protocol.loop import run_rounds
    from fedsim.run.callbacks import Evaluate
    from fedsim.run.runner import load_dataset, make_backend

    t_start = time.perf_counter()
    cfg = w2_config(mode, clients=clients, per_round=per_round, rounds=rounds,
                    cohorts=cohorts, profile=profile, seed=seed)
    dataset = load_dataset(cfg)
    parties = make_backend(backend, f"w2-{os.getpid()}-{mode}", cfg)
    try:
        federation = Federation(cfg, dataset, parties, run_id=f"w2-{os.getpid()}-{mode}")
        federation.setup()
        startup_s = time.perf_counter() - t_start
        evaluate = Evaluate(CentralEvaluator(federation.model, dataset), every=0, rounds=rounds)
        records = run_rounds(federation, rounds, [evaluate])
    finally:
        parties.shutdown()
    round_s = [r.wall_s - r.phases.get("evaluate", 0.0) for r in records]
    metrics = records[-1].metrics
    total = time.perf_counter() - t_start
    return {"framework": "fedsim", "mode": mode if mode == "plaintext" else f"he-{profile}",
            "backend": backend, "clients": clients, "per_round": per_round, "rounds": rounds,
            "cohorts": cohorts, "num_params": federation.num_params, "total_s": total,
            "startup_s": startup_s, "rounds_s": float(sum(round_s)),
            "first_round_s": round_s[0],
            "s_per_round": float(np.mean(round_s[1:])) if rounds > 1 else round_s[0],
            "accuracy": metrics.accuracy, "auc": metrics.auc}


def ensure_flower_venv() -> Path:
    """``.venv-flower`` with flwr[simulation] 1.30 and the same JAX stack; made once."""
    python = FLOWER_VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import flwr, jax, flax, optax, sklearn"],
                               capture_output=True)
        if probe.returncode == 0:
            return python
    base = Path(sys.base_prefix) / "bin" / "python3"
    print(f"creating {FLOWER_VENV} for the Flower peer (one-time, a few minutes)", flush=True)
    subprocess.run([str(base), "-m", "venv", str(FLOWER_VENV)], check=True)
    # Two steps: resolving everything at once backtracks for many minutes.
    for reqs in (["--upgrade", "pip"], FLOWER_REQS[:1], FLOWER_REQS[1:]):
        subprocess.run([str(python), "-m", "pip", "install", "-q", *reqs], check=True)
    return python


def run_flower(*, clients: int, per_round: int, rounds: int, num_cpus: int | None,
               seed: int = 0) -> dict:
    python = ensure_flower_venv()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"w2-flower-{os.getpid()}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [str(python), "-m", "benchmarks._flower_w2", "--clients", str(clients),
           "--per-round", str(per_round), "--rounds", str(rounds), "--seed", str(seed),
           "--out", str(out)]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    return result


def _plot(rows: list[dict], path: Path) -> None:
    plt = common.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['framework']}\n{r['mode']}" for r in rows]
    a1.bar(labels, [r["s_per_round"] for r in rows], color="tab:blue")
    a1.set_yscale("log")
    a1.set_ylabel("seconds per round (after the first)")
    a1.set_title("W2: time per round")
    x = np.arange(len(rows))
    a2.bar(x - 0.2, [r["accuracy"] for r in rows], 0.4, label="accuracy")
    a2.bar(x + 0.2, [r["auc"] for r in rows], 0.4, label="ROC AUC")
    a2.set_xticks(x, labels)
    a2.set_ylim(0.5, 1.0)
    a2.set_title("final test scores (2,000 samples)")
    a2.legend()
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("many_clients", __doc__)
    p.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    p.add_argument("--rounds", type=int, help="rounds (default 100; --quick 10)")
    p.add_argument("--clients", type=int, help="clients (default 1000; --quick 100)")
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--cohorts", type=int, default=1, help="cohort actors (default 1)")
    p.add_argument("--modes", default="plaintext,he", help="plaintext,he")
    p.add_argument("--profile", default="secure", choices=("secure", "fast"))
    p.add_argument("--peer", choices=("none", "flower"),
                   help="peer framework (default flower, or none with --quick)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    args = p.parse_args(argv)
    out = common.out_dir(args, "many_clients")
    rounds = args.rounds or (10 if args.quick else 100)
    clients = args.clients or (100 if args.quick else 1000)
    peer = args.peer or ("none" if args.quick else "flower")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    rows = []
    started = False
    if args.backend == "ray":
        from actors import connect

        started = connect(num_cpus=args.num_cpus, include_dashboard=False)
    try:
        for mode in modes:
            rows.append(run_fedsim(mode, clients=clients, per_round=args.per_round,
                                   rounds=rounds, backend=args.backend, cohorts=args.cohorts,
                                   profile=args.profile))
            print(f"  fedsim {rows[-1]['mode']}: {rows[-1]['s_per_round']:.4f} s/round, "
                  f"accuracy {rows[-1]['accuracy']:.3f}", flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    flower_error = None
    if peer == "flower":
        try:
            rows.append(run_flower(clients=clients, per_round=args.per_round, rounds=rounds,
                                   num_cpus=args.num_cpus))
            print(f"  flower plaintext: {rows[-1]['s_per_round']:.4f} s/round, "
                  f"accuracy {rows[-1]['accuracy']:.3f}", flush=True)
        except (subprocess.CalledProcessError, OSError) as err:
            flower_error = f"Flower peer failed: {err}"
            print(flower_error, file=sys.stderr)
    common.write_table(out / "many_clients.parquet", rows)
    _plot(rows, out / "many_clients.png")
    flower = next((r for r in rows if r["framework"] == "flower"), None)
    plain = next((r for r in rows if r["framework"] == "fedsim" and r["mode"] == "plaintext"),
                 None)
    headline = "many_clients: fedsim plaintext " + (
        f"{plain['s_per_round']:.4f} s/round, accuracy {plain['accuracy']:.3f}" if plain else
        "not run")
    if flower and plain:
        speedup = flower["s_per_round"] / plain["s_per_round"]
        headline = (f"many_clients: flower/fedsim s/round = {speedup:.1f}x  "
                    f"accuracy fedsim {plain['accuracy']:.3f} flower {flower['accuracy']:.3f}")
    cols = ["framework", "mode", "backend", "clients", "rounds", "total_s", "startup_s",
            "rounds_s", "first_round_s", "s_per_round", "accuracy", "auc"]
    fmt = {c: ".3f" for c in ("total_s", "startup_s", "rounds_s", "first_round_s")}
    fmt.update({"s_per_round": ".4f", "accuracy": ".3f", "auc": ".3f"})
    cmd = "python -m benchmarks.many_clients" + (" --quick" if args.quick else "") + \
        "".join(f" --{k} {v}" for k, v in (("rounds", args.rounds), ("clients", args.clients),
                                           ("peer", args.peer), ("backend", args.backend))
                if v and v != "ray")
    text = "\n".join([
        "# many_clients (W2): 1000 small clients, fedsim cohort vs Flower simulation",
        "",
        f"- command: `{cmd}`",
        f"- setting: {clients} clients x {_w2.SAMPLES} samples, {args.per_round} per round, "
        f"{rounds} rounds, MLP 64-64-64-1 ({rows[0]['num_params']:,} parameters), "
        f"1 local epoch, batch {_w2.BATCH}, SGD {_w2.LR}; fedsim with {args.cohorts} cohort "
        f"actor(s) on {args.backend}; he uses the `{args.profile}` profile, 3 key holders",
        *common.machine_lines(),
        "- total_s includes start-up (data, actors, JIT, key ceremony; for fedsim not ray.init, "
        "done once before both modes); rounds_s excludes "
        "it; s_per_round is the mean over rounds after the first. Flower: its own venv "
        "(flwr 1.30, ray 2.51.1), run_simulation with one supernode per client, a strategy "
        "that sends each round to fedsim's sampled clients; its total_s includes its Ray "
        "start-up.",
        *([f"- {flower_error}"] if flower_error else []),
        *(["- Flower peer skipped (--quick or --peer none)."] if peer == "none" else []),
        "",
        common.md_table(rows, cols, fmt),
        "",
        "![W2](many_clients.png)",
        "",
    ])
    common.write_text(out / "many_clients.md", text)
    print(headline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

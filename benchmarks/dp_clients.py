"""Client-level DP on the cohort path: test AUC against clients per round at a fixed epsilon.

Client-level DP (DP-FedAvg, McMahan et al. 2018) protects a whole client; the noise on
the average update is ``z C / m`` for ``m`` clients per round, so it pays off only when
many clients take part. This benchmark runs W2's task (`configs/w2.yaml`: small clients
labelled by a hidden teacher, one cohort actor, vmapped training) with ``--clients``
clients, for each ``m`` in ``--per-round`` with and without client-level Gaussian DP at
``--epsilon`` (delta 1e-5, calibrated for the run's rounds), and plots the final test
AUC of both against ``m``, marking the smallest ``m`` where DP comes within 0.02 of
no DP.

The runs are plaintext, so epsilon is met against an observer of the released models
(amplified by the secret Poisson sampling of clients); in he mode against the
coordinator and the aggregator, who see who took part, no amplification holds and the
noise at the same epsilon is larger (`fedsim.privacy.plan`). Results go to
``benchmarks/results/dp_clients/``.
"""

from __future__ import annotations

from benchmarks._common import single_thread_env

single_thread_env()

import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import _common as common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "w2.yaml"
GAP = 0.02


def config(*, clients: int, per_round: int, rounds: int, epsilon: float | None,
           clip: float, seed: int) -> Any:
    from fedsim.config import load_config

    sets = [f"data.teacher.num_clients={clients}", f"federation.clients_per_round={per_round}",
            f"federation.rounds={rounds}", "federation.sampling=poisson",
            f"federation.min_clients={max(2, per_round // 4)}", f"seed={seed}"]
    if epsilon is not None:
        sets += ["privacy.enabled=true", "privacy.level=client", f"privacy.clip={clip}",
                 f"privacy.target_epsilon={epsilon}", "privacy.epsilon_against=observer",
                 "privacy.delta=1e-5"]
    return load_config(CONFIG, sets)


def run_one(cfg: Any) -> dict:
    """One plaintext run in process through the round loop; final test scores."""
    from fedsim.learning.evaluation import CentralEvaluator
    from fedsim.protocol.federation import Federation
    from fedsim.protocol.loop import run_rounds
    from fedsim.run.callbacks import Evaluate
    from fedsim.run.runner import load_dataset, make_backend

    t0 = time.perf_counter()
    dataset = load_dataset(cfg)
    parties = make_backend("inprocess", "dp-clients", cfg)
    try:
        federation = Federation(cfg, dataset, parties, run_id="dp-clients")
        federation.setup()
        evaluate = Evaluate(CentralEvaluator(federation.model, dataset), every=0,
                            rounds=cfg.federation.rounds)
        records = run_rounds(federation, cfg.federation.rounds, [evaluate])
    finally:
        parties.shutdown()
    last = records[-1]
    return {"auc": last.metrics.auc, "accuracy": last.metrics.accuracy,
            "epsilon": last.extra.get("epsilon"),
            "noise_multiplier": (federation.privacy.noise_multiplier
                                 if federation.privacy else None),
            "wall_s": time.perf_counter() - t0}


def _plot(rows: list[dict], marked: int | None, epsilon: float, path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for dp, label in ((False, "no DP"), (True, f"client-level DP, epsilon {epsilon:g}")):
        points = sorted((r["per_round"], r["auc"]) for r in rows if r["dp"] == dp)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if marked is not None:
        ax.axvline(marked, ls="--", color="grey")
        ax.annotate(f"within {GAP} of no DP\nfrom {marked} clients/round", (marked, 0.55),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("clients per round (expected, Poisson sampling)")
    ax.set_ylabel("final test ROC AUC")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"client-level DP on the cohort path ({rows[0]['clients']} clients)")
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("dp_clients", __doc__)
    p.add_argument("--clients", type=int, help="clients (default 10000; --quick 200)")
    p.add_argument("--per-round", help="comma-separated m (default 10,30,100,300,1000)")
    p.add_argument("--rounds", type=int, help="rounds (default 50; --quick 3)")
    p.add_argument("--epsilon", type=float, default=2.0)
    p.add_argument("--clip", type=float, default=0.5, help="client update clip bound")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    clients = args.clients or (200 if args.quick else 10_000)
    rounds = args.rounds or (3 if args.quick else 50)
    per_round = [int(x) for x in (args.per_round or ("10,40" if args.quick else
                                                      "10,30,100,300,1000")).split(",")]
    out = common.out_dir(args, "dp_clients")
    rows = []
    total = 2 * len(per_round)
    for m in per_round:
        for epsilon in (None, args.epsilon):
            cfg = config(clients=clients, per_round=m, rounds=rounds, epsilon=epsilon,
                         clip=args.clip, seed=args.seed)
            result = run_one(cfg)
            rows.append({"clients": clients, "per_round": m, "rounds": rounds,
                         "dp": epsilon is not None, "target_epsilon": epsilon,
                         "clip": args.clip if epsilon is not None else None, **result})
            print(f"[{len(rows)}/{total}] m={m} {'DP' if epsilon else 'no DP'}: "
                  f"AUC {result['auc']:.4f} ({result['wall_s']:.1f} s)", flush=True)
    base = {r["per_round"]: r["auc"] for r in rows if not r["dp"]}
    for r in rows:
        r["gap_to_no_dp"] = base[r["per_round"]] - r["auc"]
    within = [r["per_round"] for r in rows if r["dp"] and r["gap_to_no_dp"] <= GAP]
    marked = min(within) if within else None
    common.write_table(out / "dp_clients.parquet", rows)
    _plot(rows, marked, args.epsilon, out / "dp_clients.png")
    table = common.md_table(rows, ["per_round", "dp", "noise_multiplier", "epsilon", "auc",
                                   "gap_to_no_dp", "wall_s"],
                            {"noise_multiplier": ".3f", "epsilon": ".3f", "auc": ".4f",
                             "gap_to_no_dp": ".4f", "wall_s": ".1f"})
    verdict = (f"DP comes within {GAP} of no DP from {marked} clients per round." if marked
               else f"DP never comes within {GAP} of no DP at these sizes.")
    common.write_text(out / "dp_clients.md", "\n".join([
        f"# Client-level DP against clients per round (epsilon {args.epsilon:g}, observer)",
        "", *common.machine_lines(), "", f"{clients} clients, {rounds} rounds, clip "
        f"{args.clip:g}, seed {args.seed}.", "", table, "", verdict, ""]))
    print(verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

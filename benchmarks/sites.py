"""Hospitals that differ: what federating buys, by standardization, when site case mix
carries signal.

Runs `configs/sites.yaml` (quick.yaml's model and rounds on 5 synthetic hospitals whose
severity shifts labs, ages and prevalence together, ``data.synth.site_shift``) end to
end through `fedsim.run.runner.run_federated`, once per ``data.standardize`` in
``--standardize`` (default ``per_hospital,federated``), in ``--mode`` (default he:
federated statistics and federated evaluation under the joint key), with every
baseline: each hospital's model trained alone and the same model on the pooled rows,
both on the run's standardization. Writes ``sites.parquet`` (one row per run), ``sites.md``
(the table, the acceptance checks: federated beats the best local model's pooled test
AUC, and comes within 0.01 of centralized) and ``sites.png`` under
``benchmarks/results/sites/``; each run's own directory is kept beside them.
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
CONFIG = ROOT / "configs" / "sites.yaml"
WITHIN = 0.01  # of the centralized model's pooled test AUC


def run_one(standardize: str, mode: str, out: Path, sets: Sequence[str],
            backend: str) -> dict[str, Any]:
    from rich.console import Console

    from fedsim.config import load_config
    from fedsim.run.runner import run_federated

    cfg = load_config(CONFIG, [f"data.standardize={standardize}",
                               f"federation.mode={mode}", *sets])
    t0 = time.perf_counter()
    outcome = run_federated(cfg, out_dir=out / f"run-{standardize}", backend=backend,
                            reference=False, overwrite=True,
                            console=Console(quiet=True))
    b = outcome.report["baselines"]
    local = {name: m["pooled_test_auc"] for name, m in b["local"].items()}
    best = max(local, key=local.get)
    fed_auc = outcome.report["pooled"]["auc"]
    central = b["centralized"]["pooled_test_auc"]
    return {"standardize": standardize, "mode": mode, "federated_auc": fed_auc,
            "centralized_auc": central, "best_local": best, "best_local_auc": local[best],
            "worst_local_auc": min(local.values()),
            "minus_best_local": fed_auc - local[best], "minus_centralized": fed_auc - central,
            "beats_best_local": fed_auc > local[best],
            "within_centralized": fed_auc >= central - WITHIN,
            "wall_s": time.perf_counter() - t0, "baselines_s": b.get("seconds")}


def _plot(rows: list[dict], path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    labels = ("best local", "federated", "centralized")
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        values = (r["best_local_auc"], r["federated_auc"], r["centralized_auc"])
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(3)]
        bars = ax.bar(xs, values, width, label=f"standardize: {r['standardize']}")
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(3), labels)
    ax.set_ylim(0.6, 1.0)
    ax.set_ylabel("pooled test ROC AUC")
    ax.set_title(f"hospitals that differ (sites.yaml, {rows[0]['mode']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("sites", __doc__)
    p.add_argument("--mode", default="he", choices=("he", "plaintext"))
    p.add_argument("--standardize", default="per_hospital,federated",
                   help="comma-separated data.standardize values")
    p.add_argument("--backend", default="inprocess", choices=("inprocess", "ray"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run")
    args = p.parse_args(argv)
    from fedsim.errors import ConfigError

    choices = [s for s in args.standardize.split(",") if s]
    for s in choices:
        if s not in ("per_hospital", "federated", "none"):
            raise ConfigError(f"--standardize: {s!r} is not per_hospital, federated or none")
    sets = list(args.set)
    if args.quick:  # a smoke run: 2 rounds of 5 steps on small hospitals, plaintext
        sets += ["federation.rounds=2", "train.local_steps=5",
                 "data.synth.patients_per_hospital=300", "data.synth.vocab_size=500"]
    mode = "plaintext" if args.quick else args.mode
    out = common.out_dir(args, "sites")
    rows = []
    for i, standardize in enumerate(choices, 1):
        row = run_one(standardize, mode, out, sets, args.backend)
        rows.append(row)
        print(f"[{i}/{len(choices)}] standardize {standardize}: federated "
              f"{row['federated_auc']:.4f}, best local {row['best_local_auc']:.4f}, "
              f"centralized {row['centralized_auc']:.4f} ({row['wall_s']:.0f} s)",
              flush=True)
    common.write_table(out / "sites.parquet", rows)
    _plot(rows, out / "sites.png")
    table = common.md_table(rows, ["standardize", "federated_auc", "best_local",
                                   "best_local_auc", "centralized_auc", "minus_best_local",
                                   "minus_centralized", "wall_s"],
                            {k: ".4f" for k in ("federated_auc", "best_local_auc",
                                                "centralized_auc", "minus_best_local",
                                                "minus_centralized")} | {"wall_s": ".0f"})
    checks = [f"- standardize {r['standardize']}: federated beats the best local model: "
              f"{'yes' if r['beats_best_local'] else 'NO'}; within {WITHIN} of centralized: "
              f"{'yes' if r['within_centralized'] else 'NO'}" for r in rows]
    common.write_text(out / "sites.md", "\n".join([
        f"# Hospitals that differ: configs/sites.yaml, mode {mode}", "",
        *common.machine_lines(), "", f"overrides: {' '.join(sets) or 'none'}; backend "
        f"{args.backend}; pooled test ROC AUC; baselines in plaintext without DP on the "
        "run's standardization.", "", table, "", *checks, ""]))
    print("\n".join(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

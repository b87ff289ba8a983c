"""W1: the cost of encryption and DP on the paper's round (configs/paper.yaml).

Variants: ``plaintext``, ``he-secure``, ``he-fast``, ``he-secure-dp`` (client-level DP,
noise multiplier 1.0, clip 1.0). Each variant gets fresh parties, one warm-up round and
``--rounds`` measured rounds; the table gives the median and range of the round wall
time, the median per-phase times, bytes uploaded per client per round, and the overhead
ratio variant / plaintext, all from this one run. Full W1 (17.5M parameters, 200 local
steps) is slow on a small machine: ``--local-steps`` and ``--set KEY=VALUE`` overrides
change the setting, and the markdown says which one produced the numbers.
"""

from __future__ import annotations

from benchmarks._common import single_thread_env

single_thread_env()

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import _common as common  # noqa: E402
from benchmarks._federation import Session, phase_row  # noqa: E402
from benchmarks.deployment import STAGES, Deployment, predict, round_cost  # noqa: E402
from fedsim.config import load_config, replace  # noqa: E402
from fedsim.errors import ConfigError  # noqa: E402
from fedsim.protocol.records import PHASES  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"
VARIANTS = {
    "plaintext": ["federation.mode=plaintext"],
    "he-secure": ["federation.mode=he", "crypto.profile=secure"],
    "he-fast": ["federation.mode=he", "crypto.profile=fast",
                "crypto.accept_unflooded_decryption=true"],
    "he-secure-dp": ["federation.mode=he", "crypto.profile=secure", "privacy.enabled=true",
                     "privacy.noise_multiplier=1.0", "privacy.clip=1.0"],
}
QUICK = ["model.depth=2", "model.width=64", "data.synth.patients_per_hospital=300",
         "data.synth.vocab_size=2000", "data.synth.num_hospitals=3", "train.local_steps=5",
         "train.batch_size=32"]
STACK = PHASES + ("other",)
CORES = os.cpu_count() or 1
PAPER_STEPS = 200


def summarise(rows: list[dict]) -> list[dict]:
    """One row per variant: median/min/max round time, median phases, ratio to plaintext."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant and not r["warmup"]]
        walls = np.array([r["wall_s"] for r in mine])
        row = {"variant": variant, "rounds": len(mine), "median_s": float(np.median(walls)),
               "min_s": float(walls.min()), "max_s": float(walls.max()),
               "bytes_up_per_client": int(np.median([r["bytes_up_per_client"] for r in mine])),
               "num_params": mine[0]["num_params"], "local_steps": mine[0]["local_steps"],
               "cpu_s": float(np.median([r["cpu_s"] for r in mine]))}
        row["cpu_busy"] = row["cpu_s"] / (row["median_s"] * CORES)
        for p in STACK:
            row[f"{p}_s"] = float(np.median([r[f"t_{p}_s"] for r in mine]))
        out.append(row)
    plain = next((r for r in out if r["variant"] == "plaintext"), None)
    base = plain["median_s"] if plain else float("nan")
    # Projection to the paper's 200 local steps: add the plaintext train time per step
    # for the missing steps to every variant (training is the same work in each).
    extra = 0.0
    if plain and plain["local_steps"] < PAPER_STEPS:
        extra = plain["train_s"] / plain["local_steps"] * (PAPER_STEPS - plain["local_steps"])
    for row in out:
        row["overhead"] = row["median_s"] / base
        # No schedule runs a round's CPU work on CORES cores in less than cpu_s / CORES.
        row["cpu_floor_overhead"] = row["cpu_s"] / CORES / base
        row["projected_200_steps_s"] = row["median_s"] + extra
        row["projected_overhead"] = (row["median_s"] + extra) / (base + extra)
    return out


def _plot(summary: list[dict], path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    x = np.arange(len(summary))
    bottom = np.zeros(len(summary))
    cmap = plt.get_cmap("tab20")
    for k, phase in enumerate(STACK):
        v = np.array([s[f"{phase}_s"] for s in summary])
        if v.sum() <= 0:
            continue
        ax.bar(x, v, 0.6, bottom=bottom, label=phase, color=cmap(k))
        bottom += v
    for i, s in enumerate(summary):
        if np.isfinite(s.get("cpu_s", np.nan)) and s["cpu_s"] > 0:
            ax.hlines(s["cpu_s"] / CORES, i - 0.38, i + 0.38, colors="black",
                      linestyles="dashed", label="CPU floor: cpu_s / cores" if i == 0 else None)
        ax.errorbar(i, s["median_s"], yerr=[[s["median_s"] - s["min_s"]],
                                            [s["max_s"] - s["median_s"]]],
                    color="black", capsize=4)
        ax.text(i, bottom[i] * 1.02, f"{s['overhead']:.2f}x", ha="center", va="bottom")
    ax.set_xticks(x, [s["variant"] for s in summary])
    ax.set_ylabel("seconds per round (median; bar = range)")
    ax.set_title("W1 round time by phase (client phases: mean over sampled clients)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("overhead", __doc__)
    p.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    p.add_argument("--rounds", type=int,
                   help="measured rounds per variant (default 3; --quick 2)")
    p.add_argument("--local-steps", type=int, help="override train.local_steps")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dotted config overrides, e.g. model.depth=10")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    p.add_argument("--deployment", action="append", default=[], metavar="SPEC",
                   help="also project each round onto a deployment (repeatable), e.g. "
                        "bandwidth=1Gbit,latency=20ms (benchmarks/deployment.py; ray only)")
    args = p.parse_args(argv)
    try:
        deployments = [Deployment.parse(spec) for spec in args.deployment]
    except ConfigError as err:
        p.error(str(err))
    if deployments and args.backend != "ray":
        p.error("--deployment needs --backend ray (each party's CPU is metered per process)")
    out = common.out_dir(args, "overhead")
    rounds = args.rounds or (2 if args.quick else 3)
    overrides = (QUICK if args.quick else []) + list(args.set)
    if args.local_steps:
        overrides.append(f"train.local_steps={args.local_steps}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if "plaintext" not in variants:
        variants.insert(0, "plaintext")  # every ratio needs it

    rows: list[dict] = []
    projections: list[dict] = []
    with Session(args.backend, num_cpus=args.num_cpus) as session:
        for variant in variants:
            cfg = load_config(CONFIG, overrides + VARIANTS[variant])
            cfg = replace(cfg, [f"federation.rounds={rounds + 1}"])
            m = session.measure(cfg, rounds=rounds, warmup=1, parties=bool(deployments))
            cpu = [float("nan")] * len(m.warmup) + m.cpu_s
            pairs = [(r, True) for r in m.warmup] + [(r, False) for r in m.records]
            for (rec, warm), cpu_s in zip(pairs, cpu, strict=True):
                row = {"variant": variant, "round": rec.round, "warmup": warm,
                       "wall_s": rec.wall_s, "setup_s": m.setup_s, "cpu_s": cpu_s,
                       **{f"t_{k}_s": v for k, v in phase_row(rec).items()},
                       "bytes_up_per_client": int(rec.extra["bytes_up_per_client"]),
                       "bytes_aggregate": int(rec.extra.get("bytes_aggregate", 0)),
                       "num_params": m.num_params, "local_steps": cfg.train.local_steps,
                       "clients_per_round": cfg.federation.clients_per_round,
                       "backend": args.backend, "auc": rec.metrics.auc}
                if "epsilon" in rec.extra:
                    row["epsilon"] = float(rec.extra["epsilon"])
                rows.append(row)
            if deployments:
                projections += [project(variant, rec, m, k, deployments, m.cpu_s[k])
                                for k, rec in enumerate(m.records)
                                if not rec.extra.get("skipped")]
            print(f"  {variant}: median round "
                  f"{np.median([r.wall_s for r in m.records]):.2f}s "
                  f"(setup {m.setup_s:.1f}s)", flush=True)

    summary = summarise(rows)
    common.write_table(out / "overhead.parquet", rows)
    common.write_table(out / "overhead_summary.parquet", summary)
    _plot(summary, out / "overhead.png")
    projected = summarise_projections(projections) if projections else []
    if projected:
        common.write_table(out / "deployment.parquet", projections)
    write_md(out, summary, args, overrides, projected, deployments)
    ratio = {s["variant"]: s["overhead"] for s in summary}
    print(f"overhead he-secure/plaintext = {ratio.get('he-secure', float('nan')):.2f}  "
          f"he-fast/plaintext = {ratio.get('he-fast', float('nan')):.2f} "
          "(he-fast: no flooding, not provably secure)")
    return 0


def project(variant: str, rec, m, k: int, deployments, cpu_s: float) -> dict:
    """One measured round replayed on this machine (the model's check) and on each
    deployment asked for."""
    cost = round_cost(rec, m.party_cpu[k], m.share_bytes[k], m.roles)
    here = predict(cost, Deployment(bandwidth=float("inf"), latency=0.0, cores=CORES,
                                    machines="one"))
    row = {"variant": variant, "round": rec.round, "wall_s": rec.wall_s,
           # The model's inputs, so a later model can replay this round again.
           "cost": json.dumps(dataclasses.asdict(cost)),
           "here_s": here.seconds, "party_cpu_s": sum(m.party_cpu[k].values()),
           "machine_cpu_s": cpu_s}
    for j, d in enumerate(deployments):
        if d.machines == "placed":
            d = dataclasses.replace(d, placement=m.nodes)
        pred = predict(cost, d)
        row[f"d{j}_s"] = pred.seconds
        row.update({f"d{j}:{stage}": s for stage, s in pred.critical.items()})
    return row


def summarise_projections(rows: list[dict]) -> list[dict]:
    """Per variant: medians of measured, predicted-here and per-deployment round times,
    and each deployment's ratio to plaintext's predicted time there."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        keys = dict.fromkeys(k for r in mine for k in r
                             if k not in ("variant", "round", "cost"))
        out.append({"variant": variant, **{k: float(np.median([r.get(k, 0.0) for r in mine]))
                                           for k in keys}})
    plain = next((r for r in out if r["variant"] == "plaintext"), None)
    for row in out:
        row["here_error"] = row["here_s"] / row["wall_s"] - 1
        for key in [k for k in row if k.startswith("d") and k.endswith("_s")]:
            row[key.replace("_s", "_ratio")] = row[key] / plain[key] if plain else float("nan")
    return out


def deployment_md(projected: list[dict], deployments) -> list[str]:
    lines = [
        "## Projected onto a deployment (benchmarks/deployment.py)",
        "",
        "Each measured round is replayed from its parties' own CPU-seconds (psutil, per "
        "actor process) and the bytes it recorded. `here_s`: the model replaying it on "
        f"this machine ({CORES} shared cores, free transfers) next to the measured "
        "`wall_s` (`here_error` = here_s / wall_s - 1: how far the model is from what it "
        "can check); `party_cpu_s` vs `machine_cpu_s`: CPU the parties spent vs the whole "
        "machine (the rest is Ray, the OS and the benchmark, which the model leaves out).",
        "",
        common.md_table(projected, ["variant", "wall_s", "here_s", "here_error",
                                    "party_cpu_s", "machine_cpu_s"],
                        {"wall_s": ".2f", "here_s": ".2f", "here_error": "+.1%",
                         "party_cpu_s": ".1f", "machine_cpu_s": ".1f"}),
        ""]
    for j, d in enumerate(deployments):
        used = {k.split(":", 1)[1] for r in projected for k in r if k.startswith(f"d{j}:")}
        stages = [s for s in STAGES if s in used]
        rows = [{"variant": r["variant"], "round_s": r[f"d{j}_s"],
                 "ratio": r[f"d{j}_ratio"], **{s: r.get(f"d{j}:{s}", 0.0) for s in stages}}
                for r in projected]
        lines += [f"### {d.label()}", "",
                  "round_s: the projected round time; ratio: over plaintext projected on "
                  "the same deployment; the other columns: seconds of the critical path "
                  "in each stage (latency and link sharing included).", "",
                  common.md_table(rows, ["variant", "round_s", "ratio", *stages],
                                  {"round_s": ".2f", "ratio": ".2f",
                                   **{s: ".2f" for s in stages}}), ""]
    return lines


def write_md(out: Path, summary: list[dict], args, overrides: list[str],
             projected: list[dict] | None = None, deployments=()) -> None:
    cols = ["variant", "rounds", "median_s", "min_s", "max_s", "overhead",
            "projected_overhead", "cpu_s", "cpu_busy", "cpu_floor_overhead",
            "bytes_up_per_client"] + [f"{p}_s" for p in STACK]
    fmt = {c: ".2f" for c in cols if c.endswith("_s")}
    fmt.update({"overhead": ".2f", "projected_overhead": ".2f", "bytes_up_per_client": ",d",
                "cpu_busy": ".2f", "cpu_floor_overhead": ".2f"})
    s0 = summary[0]
    cmd = "python -m benchmarks.overhead " + " ".join(
        a for a in (["--quick"] if args.quick else []) +
        ([f"--backend {args.backend}"] if args.backend != "ray" else []) +
        ([f"--rounds {args.rounds}"] if args.rounds else []) +
        ([f"--local-steps {args.local_steps}"] if args.local_steps else []) +
        [f"--set {s}" for s in args.set] + [f"--deployment {d}" for d in args.deployment])
    text = "\n".join([
        "# overhead (W1): encryption and DP on the paper's round",
        "",
        f"- command: `{cmd.strip()}`",
        f"- setting: configs/paper.yaml with overrides `{' '.join(overrides) or 'none'}`: "
        f"{s0['num_params']:,} parameters, {s0['local_steps']} local steps, 3 of 5 clients, "
        f"3 key holders; backend {args.backend}; 1 warm-up round + {s0['rounds']} measured "
        "rounds per variant",
        *common.machine_lines(),
        "- overhead = median round time of the variant / median round time of plaintext, "
        "measured in this run. Targets (reported, not asserted): he-secure <= 1.5, "
        "he-fast <= 1.25.",
        "- every client trains once before the warm-up round (results discarded) so no "
        "measured round pays a client's first JIT compilation.",
        f"- projected_overhead: the same ratio if local work were the paper's {PAPER_STEPS} "
        "steps, adding the measured plaintext train time per step for the missing steps to "
        "every variant (an extrapolation, not a measurement; equals overhead at 200 steps).",
        f"- cpu_s: CPU-seconds the whole machine spent per round (psutil, all processes; "
        f"median over measured rounds); cpu_busy = cpu_s / (median_s x {CORES} cores); "
        f"cpu_floor_overhead = cpu_s / {CORES} / plaintext median_s: the overhead no "
        "scheduling or overlap can beat on this machine, only less CPU work can.",
        "- phases: client phases (train, encode, encrypt, serialize) are means over the "
        "sampled clients, which run in parallel on Ray; `other` is round time not covered "
        "by any phase (scheduling, waiting for the slowest client, object transfer).",
        "",
        common.md_table(summary, cols, fmt),
        "",
        "![phases](overhead.png)",
        "",
        *(deployment_md(projected, deployments) if projected else []),
    ])
    common.write_text(out / "overhead.md", text)


if __name__ == "__main__":
    raise SystemExit(main())

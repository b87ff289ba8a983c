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

import os  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import _common as common  # noqa: E402
from benchmarks._federation import Session, phase_row  # noqa: E402
from fedsim.config import load_config, replace  # noqa: E402
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
    args = p.parse_args(argv)
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

    rows = []
    with Session(args.backend, num_cpus=args.num_cpus) as session:
        for variant in variants:
            cfg = load_config(CONFIG, overrides + VARIANTS[variant])
            cfg = replace(cfg, [f"federation.rounds={rounds + 1}"])
            m = session.measure(cfg, rounds=rounds, warmup=1)
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
            print(f"  {variant}: median round "
                  f"{np.median([r.wall_s for r in m.records]):.2f}s "
                  f"(setup {m.setup_s:.1f}s)", flush=True)

    summary = summarise(rows)
    common.write_table(out / "overhead.parquet", rows)
    common.write_table(out / "overhead_summary.parquet", summary)
    _plot(summary, out / "overhead.png")
    write_md(out, summary, args, overrides)
    ratio = {s["variant"]: s["overhead"] for s in summary}
    print(f"overhead he-secure/plaintext = {ratio.get('he-secure', float('nan')):.2f}  "
          f"he-fast/plaintext = {ratio.get('he-fast', float('nan')):.2f} "
          "(he-fast: no flooding, not provably secure)")
    return 0


def write_md(out: Path, summary: list[dict], args, overrides: list[str]) -> None:
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
        [f"--set {s}" for s in args.set])
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
    ])
    common.write_text(out / "overhead.md", text)


if __name__ == "__main__":
    raise SystemExit(main())

"""Scaling: round time against clients per round, model size, key holders and Ray workers.

All sweeps run fedsim's real round (`Federation.run_round`, ``he`` with the ``secure``
profile unless ``--mode plaintext``) from a small base setting, one parameter varied at a
time; each point gets fresh parties, one warm-up round and ``--rounds`` measured rounds.
Per point: median round time and its phases, peak RSS of the driver and of the largest
actor (psutil sampling every 0.2 s during the measured rounds; Ray backend only), and
object-store bytes per round, estimated as bytes uploaded by all clients plus the
aggregate's bytes (the payloads that cross the object store; the broadcast of the global
parameters is left out). Log-log slopes are least-squares fits.

Ray workers: the driver pins itself (and so every Ray process it starts) to the first W
cores with ``sched_setaffinity`` and starts Ray with ``num_cpus=W``; actors' CPU shares
shrink to fit. Only Ray backends run that sweep (``--quick`` skips it).
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
from fedsim.config import RunConfig, from_dict, replace  # noqa: E402

BASE = {
    "name": "scaling", "seed": 0,
    "data": {"source": "synthetic", "synth": {"num_hospitals": 4, "patients_per_hospital": 200,
                                               "vocab_size": 2000}},
    "model": {"depth": 2, "width": 64},
    "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 32, "local_steps": 10},
    "federation": {"mode": "he", "rounds": 3, "clients_per_round": 3, "min_clients": 2},
    "crypto": {"profile": "secure", "key_holders": 3},
    "resources": {"client": {"num_cpus": 0.15}, "aggregator": {"num_cpus": 0.1},
                  "keyholder": {"num_cpus": 0.05}},
}
# (vocab, width, depth): roughly 1e4 .. 2e7 parameters.
MODELS_FULL = [(500, 16, 2), (2000, 64, 2), (10000, 128, 2), (24428, 256, 4), (24428, 800, 2)]
MODELS_QUICK = [(500, 16, 2), (1000, 32, 2)]
# he mode needs at least 2 clients a round (a sum of one is that client's update).
SWEEPS_FULL = {"clients": [2, 4, 8, 16], "key_holders": [2, 3, 5, 7], "workers": [1, 2]}
SWEEPS_QUICK = {"clients": [2, 3], "key_holders": [2, 3], "workers": []}
QUICK = ["data.synth.num_hospitals=3", "data.synth.patients_per_hospital=100",
         "data.synth.vocab_size=500", "model.width=16", "train.local_steps=5"]


def point_config(base: RunConfig, sweep: str, value) -> RunConfig:
    if sweep == "clients":
        # many client actors on few cores: shrink each one's CPU share so they all fit
        share = min(base.resources.client.num_cpus, round(1.6 / value, 3))
        return replace(base, [f"federation.clients_per_round={value}",
                              f"resources.client.num_cpus={share}",
                              f"federation.min_clients={min(value, base.federation.min_clients)}",
                              f"data.synth.num_hospitals={max(value, base.num_hospitals)}"])
    if sweep == "model":
        vocab, width, depth = value
        return replace(base, [f"data.synth.vocab_size={vocab}", f"model.width={width}",
                              f"model.depth={depth}"])
    if sweep == "key_holders":
        return replace(base, [f"crypto.key_holders={value}"])
    return base


def _row(sweep: str, x: float, label: str, m, cfg: RunConfig, backend: str) -> dict:
    walls = [r.wall_s for r in m.records]
    phases = [phase_row(r) for r in m.records]
    peaks = m.peak_rss
    actors = {k: v for k, v in peaks.items() if k != "driver"}
    largest = max(actors, key=actors.get) if actors else ""
    rec = m.records[-1]
    return {
        "sweep": sweep, "x": float(x), "label": label, "backend": backend,
        "mode": cfg.federation.mode, "num_params": m.num_params,
        "clients_per_round": cfg.federation.clients_per_round,
        "key_holders": cfg.crypto.key_holders, "rounds": len(walls),
        "median_s": float(np.median(walls)), "min_s": float(np.min(walls)),
        "max_s": float(np.max(walls)), "setup_s": m.setup_s,
        "cpu_s": float(np.median(m.cpu_s)) if m.cpu_s else float("nan"),
        "cpu_busy": (float(np.median(m.cpu_s)) / (float(np.median(walls)) * (os.cpu_count() or 1))
                     if m.cpu_s else float("nan")),
        **{f"{k}_s": float(np.median([p[k] for p in phases])) for k in phases[0]},
        "peak_rss_driver_mb": peaks.get("driver", 0) / 2**20,
        "peak_rss_largest_actor_mb": actors.get(largest, 0) / 2**20,
        "largest_actor": largest,
        "object_store_bytes_per_round": int(rec.bytes_up + rec.extra.get("bytes_aggregate", 0)),
    }


def _measure(session: Session, sweep: str, x, label: str, cfg: RunConfig, rounds: int,
             backend: str, done: dict) -> dict:
    # A point whose configuration another sweep of this run already measured reuses that
    # measurement (the base setting sits in several sweeps).
    key = (session.num_cpus, repr(cfg))
    m = done.get(key)
    if m is None:
        m = done[key] = session.measure(cfg, rounds=rounds, warmup=1, memory=backend == "ray")
    row = _row(sweep, x, label, m, cfg, backend)
    print(f"  {sweep}={label}: {row['median_s']:.2f}s/round ({m.num_params:,} params)",
          flush=True)
    return row


def _workers_config(base: RunConfig, workers: int) -> RunConfig:
    actors = base.num_hospitals + 1 + base.crypto.key_holders
    share = round(0.9 * workers / actors, 3)
    return replace(base, [f"resources.client.num_cpus={share}",
                          f"resources.aggregator.num_cpus={share}",
                          f"resources.keyholder.num_cpus={share}"])


def run(args) -> list[dict]:
    cfg0 = from_dict(BASE)
    if args.mode == "plaintext":
        cfg0 = replace(cfg0, ["federation.mode=plaintext"])
    if args.quick:
        cfg0 = replace(cfg0, QUICK)
    sweeps = SWEEPS_QUICK if args.quick else SWEEPS_FULL
    models = MODELS_QUICK if args.quick else MODELS_FULL
    rounds = args.rounds or (1 if args.quick else 2)
    rows, done = [], {}
    # Model sizes go last: a process keeps its peak heap, so the driver's peak RSS of
    # every later point would show the largest model's instead of its own.
    with Session(args.backend, num_cpus=args.num_cpus) as session:
        for m in sweeps["clients"]:
            rows.append(_measure(session, "clients", m, str(m),
                                 point_config(cfg0, "clients", m), rounds, args.backend, done))
        if cfg0.federation.mode == "he":
            for k in sweeps["key_holders"]:
                rows.append(_measure(session, "key_holders", k, str(k),
                                     point_config(cfg0, "key_holders", k), rounds,
                                     args.backend, done))
    if args.backend == "ray" and sweeps["workers"] and hasattr(os, "sched_setaffinity"):
        original = os.sched_getaffinity(0)
        cores = sorted(original)
        try:
            for w in sweeps["workers"]:
                if w > len(cores):
                    continue
                os.sched_setaffinity(0, set(cores[:w]))
                with Session("ray", num_cpus=w) as session:
                    rows.append(_measure(session, "workers", w, str(w),
                                         _workers_config(cfg0, w), rounds, "ray", done))
        finally:
            os.sched_setaffinity(0, original)
    with Session(args.backend, num_cpus=args.num_cpus) as session:
        for spec in models:
            cfg = point_config(cfg0, "model", spec)
            rows.append(_measure(session, "model", 0, "x".join(map(str, spec)), cfg, rounds,
                                 args.backend, done))
            rows[-1]["x"] = float(rows[-1]["num_params"])
    return rows


def _plot(rows: list[dict], path: Path) -> dict[str, float]:
    plt = common.pyplot()
    sweeps = [s for s in ("clients", "model", "key_holders", "workers")
              if any(r["sweep"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.8), squeeze=False)
    slopes = {}
    xlabel = {"clients": "clients per round", "model": "parameters",
              "key_holders": "key holders", "workers": "Ray workers (cores)"}
    for ax, sweep in zip(axes[0], sweeps):
        pts = sorted((r for r in rows if r["sweep"] == sweep), key=lambda r: r["x"])
        x = [r["x"] for r in pts]
        y = [r["median_s"] for r in pts]
        slopes[sweep] = common.loglog_slope(x, y)
        ax.loglog(x, y, "o-", label=f"round (slope {slopes[sweep]:.2f})")
        for phase, style in (("train_s", "--"), ("encrypt_s", ":"),
                             ("partial_decrypt_s", "-.")):
            v = [r[phase] for r in pts]
            if any(t > 0 for t in v):
                ax.loglog(x, [max(t, 1e-4) for t in v], style, label=phase[:-2])
        ax.set_xlabel(xlabel[sweep])
        ax.set_ylabel("seconds per round (median)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    common.save_figure(fig, path)
    return slopes


PHASE_NAMES = ("train", "encode", "encrypt", "serialize", "transfer", "aggregate", "verify",
               "partial_decrypt", "fuse", "server_update", "evaluate", "other")


def reading(rows: list[dict], slopes: dict[str, float]) -> list[str]:
    """A short, data-driven reading of where the time goes as each swept quantity grows."""
    lines = []
    for sweep, slope in slopes.items():
        pts = sorted((r for r in rows if r["sweep"] == sweep), key=lambda r: r["x"])
        if len(pts) < 2:
            continue
        first, last = pts[0], pts[-1]
        growth = {p: last[f"{p}_s"] - first[f"{p}_s"] for p in PHASE_NAMES
                  if f"{p}_s" in last}
        total = last["median_s"] - first["median_s"]
        moved = sorted(growth.items(), key=lambda kv: -abs(kv[1]))[:2]
        top = max(PHASE_NAMES, key=lambda p: last.get(f"{p}_s", 0.0))
        share = last.get(f"{top}_s", 0.0) / max(last["median_s"], 1e-9)
        lines.append(
            f"- {sweep} ({first['label']} to {last['label']}): log-log slope {slope:.2f}; the "
            f"round goes from {first['median_s']:.2f}s to {last['median_s']:.2f}s "
            f"({total:+.2f}s), mostly "
            + ", ".join(f"{p} {v:+.2f}s" for p, v in moved)
            + f"; at the largest point {top} is {share:.0%} of the round; machine CPU busy "
            f"{last.get('cpu_busy', float('nan')):.0%}."
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser("scaling", __doc__)
    p.add_argument("--backend", choices=("ray", "inprocess"), default="ray")
    p.add_argument("--mode", choices=("he", "plaintext"), default="he")
    p.add_argument("--rounds", type=int, help="measured rounds per point (default 2; quick 1)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    args = p.parse_args(argv)
    out = common.out_dir(args, "scaling")
    rows = run(args)
    common.write_table(out / "scaling.parquet", rows)
    slopes = _plot(rows, out / "scaling.png")
    cols = ["sweep", "label", "num_params", "clients_per_round", "key_holders", "median_s",
            "cpu_busy", "train_s", "encrypt_s", "partial_decrypt_s", "fuse_s", "other_s",
            "peak_rss_driver_mb", "peak_rss_largest_actor_mb", "largest_actor",
            "object_store_bytes_per_round"]
    fmt = {c: ".2f" for c in cols if c.endswith("_s")}
    fmt.update({"cpu_busy": ".2f", "peak_rss_driver_mb": ".0f", "peak_rss_largest_actor_mb": ".0f",
                "num_params": ",d", "object_store_bytes_per_round": ",d"})
    cmd = "python -m benchmarks.scaling" + (" --quick" if args.quick else "") + \
        (f" --backend {args.backend}" if args.backend != "ray" else "") + \
        (f" --mode {args.mode}" if args.mode != "he" else "")
    text = "\n".join([
        "# scaling: round time against clients, model size, key holders, Ray workers",
        "",
        f"- command: `{cmd}`",
        f"- base: {BASE['data']['synth']['num_hospitals']} synthetic hospitals x "
        f"{BASE['data']['synth']['patients_per_hospital']} patients, vocab 2000, MLP 2x64, "
        + (f"with --quick overrides `{' '.join(QUICK)}`, " if args.quick else "") +
        f"{BASE['train']['local_steps']} local Adam steps of batch 32, 3 clients per round, "
        f"3 key holders, mode {args.mode} (secure profile); backend {args.backend}. One "
        "parameter varies per sweep; every client trains once (discarded, to pay JIT "
        "compilation), then 1 warm-up round + "
        f"{args.rounds or (1 if args.quick else 2)} measured round(s) per point; a point "
        "whose configuration another sweep already measured reuses that measurement.",
        *common.machine_lines(),
        "- memory: peak RSS (psutil, 0.2 s sampling over the measured rounds) of the driver "
        "and of the largest actor; object-store bytes per round = bytes uploaded by all "
        "clients + the aggregate (a proxy: the global-parameter broadcast is not counted).",
        "- cpu_busy: CPU-seconds the whole machine spent per round (psutil, all processes) "
        "over round time x cores; near 1 means the round is CPU-bound on this machine.",
        "",
        "## Reading",
        "",
        *reading(rows, slopes),
        "",
        common.md_table(rows, cols, fmt),
        "",
        "![scaling](scaling.png)",
        "",
    ])
    common.write_text(out / "scaling.md", text)
    print("scaling slopes: " + "  ".join(f"{k} = {v:.2f}" for k, v in slopes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

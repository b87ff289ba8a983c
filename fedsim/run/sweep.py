"""Sweeps: the same run at several values of one setting, tabulated and plotted.

A sweep file names a base config, overrides common to every run, and the values of
the privacy budget to try (``null`` = no DP)::

    base: paper.yaml                 # relative to the sweep file
    name: paper-eps-sweep
    overrides: [federation.mode=he]
    target_epsilons: [null, 1, 2, 3, 4]
    privacy: {clip: 1.0, delta: 1.0e-5, mechanism: gaussian}

``seeds: N`` (or ``fedsim sweep --seeds N``) runs every point with the seeds ``seed`` to
``seed + N - 1`` of the base config (data, initialisation and batch order all change;
the DP noise is secret in every run), as the paper ran 10 federated runs per point.

Each run writes its own directory under the sweep's; the sweep writes
``sweep.parquet`` (one row per run), ``sweep.md`` (mean, min and max over the seeds of
each point), ``sweep.png`` (ROC AUC, balanced accuracy and precision of the final model
against epsilon, with the min-max range) and ``sweep_roc.png`` (one pooled ROC curve per
point, from the run of median AUC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from fedsim.config import apply_overrides, from_dict, read_yaml
from fedsim.errors import ConfigError
from fedsim.run.results import atomic_write

_KEYS = {"base", "name", "overrides", "target_epsilons", "privacy", "seeds"}
METRICS = ("auc", "balanced_accuracy", "precision", "recall", "pr_auc")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    base: Path
    name: str
    overrides: tuple[str, ...]
    target_epsilons: tuple[float | None, ...]
    privacy: dict[str, Any]
    seeds: int = 1


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (every run's config is validated up front)."""
    path = Path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown sweep key (allowed: {', '.join(sorted(_KEYS))})")
    if "base" not in data or "target_epsilons" not in data:
        raise ConfigError(f"{path}: a sweep needs 'base' and 'target_epsilons'")
    eps = data["target_epsilons"]
    if not isinstance(eps, list) or not eps:
        raise ConfigError("target_epsilons: expected a non-empty list (null = no DP)")
    from fedsim.config.coerce import parse_number

    eps = [parse_number(e) if isinstance(e, str) else e for e in eps]  # YAML reads 1e-1 as str
    for e in eps:
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float))
                              or not 0 < e < math.inf):  # NaN fails too
            raise ConfigError(f"target_epsilons: {e!r} is not a positive number or null")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds: expected an integer >= 1, got {seeds!r}")
    spec = SweepSpec(
        seeds=seeds,
        base=(path.parent / data["base"]).resolve(),
        name=str(data.get("name", path.stem)),
        overrides=tuple(data.get("overrides") or ()),
        target_epsilons=tuple(None if e is None else float(e) for e in eps),
        privacy=dict(data.get("privacy") or {}),
    )
    for e in spec.target_epsilons:
        sweep_config(spec, e, ())
    return spec


def sweep_config(spec: SweepSpec, epsilon: float | None, extra: tuple[str, ...],
                 replicate: int = 0):
    """The `RunConfig` of one point of the sweep (its ``replicate``-th seed)."""
    data = apply_overrides(read_yaml(spec.base), [*spec.overrides, *extra])
    if replicate:
        data["seed"] = int(data.get("seed", 0)) + replicate
    privacy = dict(data.get("privacy") or {})
    if epsilon is None:
        privacy["enabled"] = False
    else:
        privacy.update(spec.privacy)
        privacy.update(enabled=True, target_epsilon=epsilon, noise_multiplier=None)
    data["privacy"] = privacy
    # Baselines do not depend on epsilon: a sweep's points skip them unless asked.
    data["evaluation"] = {"baselines": "none", **(data.get("evaluation") or {})}
    label = "nodp" if epsilon is None else f"eps{epsilon:g}"
    data["name"] = f"{spec.name}-{label}" + (f"-seed{data.get('seed', 0)}" if spec.seeds > 1
                                              else "")
    return from_dict(data)


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, extra: tuple[str, ...] = (),
              backend: str = "ray", address: str | None = None,
              console: Console | None = None) -> pa.Table:
    """Run every point at every seed, then write the tables and the plots."""
    from fedsim.run.runner import run_federated

    console = console or Console(stderr=True)
    out = Path(out_dir)
    rows, rocs = [], {}
    for eps in spec.target_epsilons:
        for replicate in range(spec.seeds):
            cfg = sweep_config(spec, eps, extra, replicate)
            console.print(f"[bold]sweep {spec.name}[/]: epsilon "
                          f"{'none' if eps is None else f'{eps:g}'}, seed {cfg.seed} "
                          f"({len(rows) + 1} of {len(spec.target_epsilons) * spec.seeds})")
            outcome = run_federated(cfg, out_dir=out / cfg.name, backend=backend,
                                    address=address, console=console, reference=False)
            last = outcome.records[-1]
            pooled = outcome.report["pooled"]
            rocs[(eps, cfg.seed)] = pooled.get("roc")
            rows.append({
                "target_epsilon": eps,
                "seed": cfg.seed,
                "spent_epsilon": last.extra.get("epsilon"),
                "epsilon_participants": last.extra.get("epsilon_participants"),
                "epsilon_observer": last.extra.get("epsilon_observer"),
                "epsilon_against": cfg.privacy.epsilon_against if eps is not None else None,
                "insecure_seeded_noise": bool(last.extra.get("insecure_seeded_noise")),
                "noise_multiplier": _noise_multiplier(out / cfg.name),
                **{key: pooled[key] for key in METRICS},
                "rounds": len(outcome.records),
                "wall_s": outcome.seconds,
                "run_dir": str(out / cfg.name),
            })
    table = pa.Table.from_pylist(rows)
    points = summarise(rows)
    atomic_write(out / "sweep.parquet", lambda p: pq.write_table(table, p))
    atomic_write(out / "sweep.md", lambda p: p.write_text(sweep_markdown(spec, points)))
    from fedsim.run.plots import plot_sweep, plot_sweep_roc

    atomic_write(out / "sweep.png", lambda p: plot_sweep(points, p, title=spec.name))
    curves = {point["target_epsilon"]: rocs[(point["target_epsilon"], point["median_seed"])]
              for point in points}
    atomic_write(out / "sweep_roc.png", lambda p: plot_sweep_roc(curves, p, title=spec.name))
    return table


def summarise(rows: list[dict]) -> list[dict]:
    """One row per target epsilon: every metric's mean, min and max over its seeds
    (``<metric>``, ``<metric>_min``, ``<metric>_max``), the largest epsilon spent, and
    the seed whose AUC is the median (the lower middle one for an even count)."""
    points: dict[Any, list[dict]] = {}
    for row in rows:
        points.setdefault(row["target_epsilon"], []).append(row)
    out = []
    for eps, runs in points.items():
        point = {"target_epsilon": eps, "seeds": len(runs),
                 "epsilon_against": runs[0]["epsilon_against"],
                 "insecure_seeded_noise": any(r["insecure_seeded_noise"] for r in runs)}
        for key in ("epsilon_participants", "epsilon_observer", "noise_multiplier"):
            values = [r[key] for r in runs if r[key] is not None]
            point[key] = max(values) if values else None
        for key in METRICS:
            values = [float(r[key]) for r in runs]
            point.update({key: sum(values) / len(values), f"{key}_min": min(values),
                          f"{key}_max": max(values)})
        ranked = sorted(runs, key=lambda r: r["auc"])
        point["median_seed"] = ranked[(len(ranked) - 1) // 2]["seed"]
        out.append(point)
    return out


def _noise_multiplier(run_dir: Path) -> float | None:
    import json

    manifest = json.loads((run_dir / "manifest.json").read_text())
    return (manifest.get("privacy") or {}).get("noise_multiplier")


def sweep_markdown(spec: SweepSpec, points: list[dict]) -> str:
    """The sweep's table as markdown: per point, each metric's mean and, over more than
    one seed, its [min, max]."""
    seeds = max(p["seeds"] for p in points)
    lines = [
        f"# {spec.name}",
        "",
        "The target is met against the adversary named; epsilon vs participants: against "
        "the coordinator and the aggregator, who see who took part (no amplification by "
        "sampling); vs observer: against a party that sees only the released models.",
        "",
    ]
    if seeds > 1:
        lines += [f"Each point: {seeds} runs (seeds); a metric is its mean [min, max].", ""]
    lines += [
        "| target epsilon (against) | epsilon vs participants | epsilon vs observer "
        "| noise multiplier | ROC AUC | balanced accuracy | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def metric(point: dict, key: str) -> str:
        if point["seeds"] == 1:
            return f"{point[key]:.3f}"
        return f"{point[key]:.3f} [{point[key + '_min']:.3f}, {point[key + '_max']:.3f}]"

    for p in points:
        eps = ("no DP" if p["target_epsilon"] is None
               else f"{p['target_epsilon']:g} ({p.get('epsilon_against')})")
        if p.get("insecure_seeded_noise"):
            eps += " INSECURE seeded noise"
        lines.append(f"| {eps} | {num(p.get('epsilon_participants'), '.3f')} | "
                     f"{num(p.get('epsilon_observer'), '.3f')} | "
                     f"{num(p['noise_multiplier'], '.3f')} | {metric(p, 'auc')} | "
                     f"{metric(p, 'balanced_accuracy')} | {metric(p, 'precision')} | "
                     f"{metric(p, 'recall')} |")
    return "\n".join(lines) + "\n"

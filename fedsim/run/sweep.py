"""Sweeps: the same run at several values of one setting, tabulated and plotted.

A sweep file names a base config, overrides common to every run, and the values of
the privacy budget to try (``null`` = no DP)::

    base: paper.yaml                 # relative to the sweep file
    name: paper-eps-sweep
    overrides: [federation.mode=he]
    target_epsilons: [null, 1, 2, 3, 4]
    privacy: {clip: 1.0, delta: 1.0e-5, mechanism: gaussian}

Each run writes its own directory under the sweep's; the sweep writes
``sweep.parquet``, ``sweep.md`` and ``sweep.png`` (ROC AUC, balanced accuracy and
precision of the final model against epsilon).
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

_KEYS = {"base", "name", "overrides", "target_epsilons", "privacy"}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file."""

    base: Path
    name: str
    overrides: tuple[str, ...]
    target_epsilons: tuple[float | None, ...]
    privacy: dict[str, Any]


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
    spec = SweepSpec(
        base=(path.parent / data["base"]).resolve(),
        name=str(data.get("name", path.stem)),
        overrides=tuple(data.get("overrides") or ()),
        target_epsilons=tuple(None if e is None else float(e) for e in eps),
        privacy=dict(data.get("privacy") or {}),
    )
    for e in spec.target_epsilons:
        sweep_config(spec, e, ())
    return spec


def sweep_config(spec: SweepSpec, epsilon: float | None, extra: tuple[str, ...]):
    """The `RunConfig` of one point of the sweep."""
    data = apply_overrides(read_yaml(spec.base), [*spec.overrides, *extra])
    privacy = dict(data.get("privacy") or {})
    if epsilon is None:
        privacy["enabled"] = False
    else:
        privacy.update(spec.privacy)
        privacy.update(enabled=True, target_epsilon=epsilon, noise_multiplier=None)
    data["privacy"] = privacy
    label = "nodp" if epsilon is None else f"eps{epsilon:g}"
    data["name"] = f"{spec.name}-{label}"
    return from_dict(data)


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, extra: tuple[str, ...] = (),
              backend: str = "ray", address: str | None = None,
              console: Console | None = None) -> pa.Table:
    """Run every point, then write the table and the plot."""
    from fedsim.run.runner import run_federated

    console = console or Console(stderr=True)
    out = Path(out_dir)
    rows = []
    for eps in spec.target_epsilons:
        cfg = sweep_config(spec, eps, extra)
        outcome = run_federated(cfg, out_dir=out / cfg.name, backend=backend, address=address,
                                console=console, reference=False)
        last = outcome.records[-1]
        pooled = outcome.report["pooled"]
        rows.append({
            "target_epsilon": eps,
            "spent_epsilon": last.extra.get("epsilon"),
            "epsilon_participants": last.extra.get("epsilon_participants"),
            "epsilon_observer": last.extra.get("epsilon_observer"),
            "epsilon_against": cfg.privacy.epsilon_against if eps is not None else None,
            "insecure_seeded_noise": bool(last.extra.get("insecure_seeded_noise")),
            "noise_multiplier": _noise_multiplier(out / cfg.name),
            "auc": pooled["auc"],
            "balanced_accuracy": pooled["balanced_accuracy"],
            "precision": pooled["precision"],
            "recall": pooled["recall"],
            "pr_auc": pooled["pr_auc"],
            "rounds": len(outcome.records),
            "wall_s": outcome.seconds,
            "run_dir": str(out / cfg.name),
        })
    table = pa.Table.from_pylist(rows)
    atomic_write(out / "sweep.parquet", lambda p: pq.write_table(table, p))
    atomic_write(out / "sweep.md", lambda p: p.write_text(sweep_markdown(spec, rows)))
    from fedsim.run.plots import plot_sweep

    atomic_write(out / "sweep.png", lambda p: plot_sweep(rows, p, title=spec.name))
    return table


def _noise_multiplier(run_dir: Path) -> float | None:
    import json

    manifest = json.loads((run_dir / "manifest.json").read_text())
    return (manifest.get("privacy") or {}).get("noise_multiplier")


def sweep_markdown(spec: SweepSpec, rows: list[dict]) -> str:
    """The sweep's table as markdown."""
    lines = [
        f"# {spec.name}",
        "",
        "The target is met against the adversary named; epsilon vs participants: against "
        "the coordinator and the aggregator, who see who took part (no amplification by "
        "sampling); vs observer: against a party that sees only the released models.",
        "",
        "| target epsilon (against) | epsilon vs participants | epsilon vs observer "
        "| noise multiplier | ROC AUC | balanced accuracy | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        eps = ("no DP" if r["target_epsilon"] is None
               else f"{r['target_epsilon']:g} ({r.get('epsilon_against')})")
        if r.get("insecure_seeded_noise"):
            eps += " INSECURE seeded noise"
        lines.append(f"| {eps} | {num(r.get('epsilon_participants'), '.3f')} | "
                     f"{num(r.get('epsilon_observer'), '.3f')} | "
                     f"{num(r['noise_multiplier'], '.3f')} | {r['auc']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    return "\n".join(lines) + "\n"

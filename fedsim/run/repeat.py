"""Repeated runs: ``fedsim run CONFIG --seeds N``, the same config at N seeds.

The seed paper ran 10 federated runs and reported the highest and lowest score; one run
says little on a few hundred test patients. Run ``k`` uses the seed ``seed + k`` of the
config (data, initialisation and batch order all change; DP noise, keys and masks are
secret in every run, as always) and writes its own run directory,
``<out>/<name>-seed<seed>``. The repetition then writes, beside them:

* ``seeds.parquet``: one row per run (its pooled test metrics, the selected round, the
  baselines' pooled test AUCs when the run had them, its wall time and directory);
* ``seeds.md``: each metric's mean, min and max over the runs;
* ``seeds.png``: every run's pooled test ROC AUC, federated beside the best local-only
  and the centralized model, with the means.

Its directory holds only those runs and files: one that holds anything else is refused
(``--overwrite`` first removes this repetition's own runs and files, nothing more). The
summary is rewritten after each run, so a repetition stopped halfway keeps the runs it
finished and says how many of how many they are.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from fedsim.errors import ConfigError
from fedsim.run.results import atomic_write
from fedsim.run.sweep import METRICS  # the metrics a sweep tabulates, the same here

BASELINES = ("best_local_auc", "centralized_auc")
FILES = ("seeds.parquet", "seeds.md", "seeds.png")


def seeded(cfg: Any, replicate: int) -> Any:
    """The config of the ``replicate``-th run: seed ``cfg.seed + replicate``."""
    seed = cfg.seed + replicate
    return dataclasses.replace(cfg, seed=seed, name=f"{cfg.name}-seed{seed}")


def check_repeat_dir(out: Path, cfg: Any, seeds: int, *, overwrite: bool) -> None:
    """Refuse, in one line, a directory holding anything but this repetition's runs and
    files (any of them at all, unless ``overwrite``)."""
    if seeds < 1:
        raise ConfigError(f"--seeds: expected an integer >= 1, got {seeds}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a results directory")
    if not out.is_dir():
        return
    from fedsim.run.results import LOCK, RUN_FILES

    runs = {seeded(cfg, k).name for k in range(seeds)}
    present = sorted(p.name for p in out.iterdir() if not _leftover(p))
    foreign = [name for name in present if name not in runs | set(FILES)
               or (name in runs) != (out / name).is_dir()]
    foreign += [f"{name}/{p.name}" for name in present if name in runs
                and (out / name).is_dir() for p in sorted((out / name).iterdir())
                if p.name not in (*RUN_FILES, LOCK) and not _leftover(p)]
    if foreign:
        raise ConfigError(f"{out} holds {foreign[0]!r}, which is not of this repetition "
                          f"({cfg.name} at {seeds} seeds): choose another --out")
    if present and not overwrite:
        raise ConfigError(f"{out} already holds this repetition's results; pass "
                          "--overwrite to replace them")


def run_seeds(cfg: Any, seeds: int, out_dir: str | Path, *, backend: str = "ray",
              address: str | None = None, console: Console | None = None,
              overwrite: bool = False, reference: bool = False) -> list[dict]:
    """Run ``cfg`` at ``seeds`` seeds, then write the table, summary and plot; the rows."""
    from fedsim.run.runner import run_federated

    console = console or Console(stderr=True)
    out = Path(out_dir)
    check_repeat_dir(out, cfg, seeds, overwrite=overwrite)
    if overwrite:
        _clear(out, cfg, seeds)
    rows = []
    for k in range(seeds):
        run_cfg = seeded(cfg, k)
        eta = (f", about {_duration(sum(r['wall_s'] for r in rows) / k * (seeds - k))} "
               "left" if rows else "")
        console.print(f"[bold]{cfg.name}[/]: seed {run_cfg.seed} (run {k + 1} of {seeds}"
                      f"{eta})", highlight=False)
        outcome = run_federated(run_cfg, out_dir=out / run_cfg.name, backend=backend,
                                address=address, console=console, reference=reference,
                                overwrite=overwrite)
        rows.append(row_of(run_cfg, outcome.report, outcome.seconds, out / run_cfg.name))
        write_summary(out, cfg.name, rows, seeds)  # of the runs done: a failure keeps them
    return rows


def _clear(out: Path, cfg: Any, seeds: int) -> None:
    """Before an overwriting repetition's first run: the earlier one's summary and runs
    go (each run's files as ``fedsim run --overwrite`` removes them, refused while a live
    driver holds it), so a failure halfway leaves no old run beside the new ones."""
    from fedsim.run.results import RunWriter, lock_run_dir, unlock_run_dir

    dirs = [d for d in (out / seeded(cfg, k).name for k in range(seeds)) if d.is_dir()]
    taken: list[Path] = []
    try:  # every run's lock first: nothing goes while one of them is live
        for d in dirs:
            lock_run_dir(d)
            taken.append(d)
        for name in FILES:
            (out / name).unlink(missing_ok=True)
        for d in dirs:
            RunWriter.create(d, overwrite=True)  # its run's files, as run --overwrite
            for p in d.iterdir():
                if _leftover(p):
                    p.unlink()
    finally:
        for d in taken:
            unlock_run_dir(d)
    for d in dirs:
        d.rmdir()


def _leftover(p: Path) -> bool:
    """A temporary file of an atomic write that a killed process left behind."""
    return p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp")


def row_of(cfg: Any, report: dict, seconds: float, run_dir: Path) -> dict:
    """One run's row of ``seeds.parquet``."""
    pooled, b = report["pooled"], report.get("baselines") or {}
    best = b.get("best_local")
    return {"seed": cfg.seed, **{key: _num(pooled.get(key)) for key in METRICS},
            "selected_round": report["selection"]["round"],
            "best_local": best,
            "best_local_auc": _num(b["local"][best]["pooled_test_auc"]) if best else None,
            "centralized_auc": _num((b.get("centralized") or {}).get("pooled_test_auc")),
            "wall_s": seconds, "run_dir": str(run_dir)}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _num(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Each metric's mean, min and max over the runs that have it (a one-class test
    split's undefined AUC, or a run without baselines, is left out of its column)."""
    out = {}
    for key in (*METRICS, *BASELINES):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            out[key] = {"mean": sum(values) / len(values), "min": min(values),
                        "max": max(values), "runs": len(values)}
    return out


_NAMES = {"auc": "ROC AUC", "balanced_accuracy": "balanced accuracy",
          "precision": "precision", "recall": "recall", "pr_auc": "PR AUC",
          "best_local_auc": "best local-only model's ROC AUC",
          "centralized_auc": "centralized model's ROC AUC"}


def seeds_markdown(name: str, rows: list[dict], summary: dict) -> str:
    """``seeds.md``: the summary table, then one line per run."""
    seeds = [r["seed"] for r in rows]
    lines = [f"# {name}: {len(rows)} runs (seeds {min(seeds)} to {max(seeds)})", "",
             "Pooled test metrics of each run's reported model (baselines: plaintext, no "
             "DP, the same model and compute).", "",
             "| metric | mean | min | max | runs |", "|---|---|---|---|---|"]
    for key, s in summary.items():
        lines.append(f"| {_NAMES[key]} | {s['mean']:.4f} | {s['min']:.4f} | "
                     f"{s['max']:.4f} | {s['runs']} |")
    lines += ["", "| seed | ROC AUC | balanced accuracy | round | best local | centralized |",
              "|---|---|---|---|---|---|"]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    for r in rows:
        lines.append(f"| {r['seed']} | {num(r['auc'])} | {num(r['balanced_accuracy'])} | "
                     f"{r['selected_round']} | {num(r['best_local_auc'])} | "
                     f"{num(r['centralized_auc'])} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, name: str, rows: list[dict], seeds: int) -> None:
    """``seeds.parquet``, ``seeds.md`` and ``seeds.png`` of the runs done of ``seeds``
    (each written atomically)."""
    from fedsim.run.plots import plot_seeds

    summary = summarise(rows)
    table = pa.Table.from_pylist(rows)
    text = seeds_markdown(name, rows, summary)
    if len(rows) < seeds:
        text = text.replace("\n", f" (of {seeds}; the others are not done)\n", 1)
    atomic_write(out / "seeds.parquet", lambda p: pq.write_table(table, p))
    atomic_write(out / "seeds.md", lambda p: p.write_text(text))
    atomic_write(out / "seeds.png", lambda p: plot_seeds(rows, p, title=name))

"""The data a run trains on, on the scale its config asks for (``data.standardize``),
and ``fedsim stats CONFIG``: the federated summary table without training.

``per_hospital`` (the default) standardises each hospital's numeric features with its
own training rows' mean and standard deviation; ``none`` leaves them raw; ``federated``
standardises every hospital alike with the pooled mean and standard deviation, opened
by secure federated statistics (`fedsim.protocol.summary`) before the first round, so
differences between sites stay in the features. A federated run writes what was
opened to ``statistics.json``; ``fedsim predict`` puts a query on the same scale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data import (
    FederatedDataset,
    SynthSpec,
    TeacherSpec,
    load_table,
    partition,
    synthetic_dataset,
    teacher_dataset,
)
from fedsim.errors import DataError

STATISTICS = "statistics.json"


def load_dataset(cfg: Any) -> FederatedDataset:
    """The federated dataset a config describes (generated or read from a file), per
    hospital standardised or raw (``federated`` is applied by `standardised`)."""
    d = cfg.data
    if d.source == "synthetic":
        spec = SynthSpec(**asdict(d.synth), seed=cfg.seed)
        dataset = synthetic_dataset(spec, fractions=d.fractions, seed=cfg.seed)
    elif d.source == "teacher":
        dataset = teacher_dataset(TeacherSpec(**asdict(d.teacher), seed=cfg.seed))
    else:
        dataset = partition(load_table(d.path), d.columns, vocab_size=d.vocab_size,
                            hospitals=d.hospitals, fractions=d.fractions, seed=cfg.seed)
    return dataset.rescaled(None) if d.standardize == "none" else dataset


def open_summary(cfg: Any, dataset: FederatedDataset, make_backend: Callable[[], Any],
                 run_id: str) -> Any:
    """The `fedsim.protocol.summary.FederatedSummary` of ``dataset``: in he on a backend
    of its own (``make_backend()``, its parties shut down afterwards), in plaintext in
    the clear."""
    from fedsim.protocol.summary import federated_summary

    backend = make_backend() if cfg.federation.encrypted else None
    try:
        return federated_summary(cfg, dataset, backend=backend, run_id=f"{run_id}-stats")
    finally:
        if backend is not None:
            backend.shutdown()


def standardised(cfg: Any, dataset: FederatedDataset, make_backend: Callable[[], Any],
                 run_id: str, out_dir: Path) -> FederatedDataset:
    """``dataset`` on the pooled scale when ``data.standardize`` is ``federated``
    (the statistics opened on a backend of their own, written to ``statistics.json``),
    else as it is."""
    if cfg.data.standardize != "federated":
        return dataset
    from fedsim.data.loader import keep_onehot
    from fedsim.run.results import atomic_write

    summary = open_summary(cfg, dataset, make_backend, run_id)
    # Categories stay 0/1 (synthetic and teacher data have none).
    scaler = keep_onehot(summary.scaler(), cfg.data.columns.num_onehot)
    text = json.dumps({**summary.as_dict(), "scaler": _scaler_dict(scaler)}, indent=2)
    atomic_write(out_dir / STATISTICS, lambda p: p.write_text(text))
    return dataset.rescaled(scaler)


def _scaler_dict(scaler: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    return {"mean": [float(v) for v in scaler[0]], "std": [float(v) for v in scaler[1]]}


def run_scale(cfg: Any, dataset: FederatedDataset, run_dir: str | Path) -> FederatedDataset:
    """``dataset`` as a finished run trained on it: a federated run's pooled scale is
    read back from its ``statistics.json`` (never recomputed from the rows)."""
    if cfg.data.standardize != "federated":
        return dataset
    path = Path(run_dir) / STATISTICS
    try:
        scaler = json.loads(path.read_text())["scaler"]
        mean, std = (np.asarray(scaler[k], np.float64) for k in ("mean", "std"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: the run's federated statistics are missing or "
                        f"unreadable ({type(err).__name__})") from None
    if mean.shape != (dataset.num_numeric,) or std.shape != mean.shape:
        raise DataError(f"{path}: a scaler of {mean.size} features, the data has "
                        f"{dataset.num_numeric}")
    return dataset.rescaled((mean, std))


def stats_command(cfg: Any, *, backend: str, address: str | None, out: str | None,
                  console: Any) -> Any:
    """``fedsim stats``: open the federated statistics of ``cfg``'s hospitals (in he,
    under encryption; in plaintext, in the clear), print the table, and write the JSON
    to ``out`` when given; returns the summary."""
    from rich.table import Table

    from fedsim.run.results import atomic_write
    from fedsim.run.runner import make_backend

    if out is not None and Path(out).exists():
        raise DataError(f"{out} exists; choose another --out")
    dataset = load_dataset(cfg)  # the sums are of raw values, whatever the scale
    run_id = f"stats-{time.strftime('%H%M%S')}"
    started_ray = False
    if backend == "ray" and cfg.federation.encrypted:
        from actors import connect

        started_ray = connect(address)
    try:
        summary = open_summary(cfg, dataset, lambda: make_backend(
            backend, run_id, cfg, warn=lambda m: console.print(f"[yellow]warning:[/] {m}")),
                               run_id)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    how = ("opened under encryption: the key holders decrypted only the sum of every "
           "hospital's" if summary.encrypted else "computed in the clear (plaintext)")
    table = Table(title=f"federated statistics: {len(summary.hospitals)} hospitals, "
                  f"{summary.n:,} training rows")
    for column in ("feature", "mean", "std"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for f, m, s in zip(summary.features, summary.mean, summary.std, strict=True):
        table.add_row(f, f"{m:.4f}", f"{s:.4f}")
    console.print(table)
    console.print(f"pooled over the hospitals' training rows, {how}", highlight=False)
    codes = summary.as_dict()["codes"]
    if summary.code_counts.size:
        top = ", ".join(f"{c} ({k})" for c, k in codes["most_frequent"][:10])
        console.print(f"codes: {codes['distinct_in_use']:,} of {summary.code_counts.size:,} "
                      f"held by a training record; the most frequent (records): {top}",
                      highlight=False)
    console.print(f"each mean within {summary.precision:.1e} of the pooled rows' own "
                  "(integer encoding)", highlight=False)
    if out is not None:
        text = json.dumps(summary.as_dict(), indent=2)
        atomic_write(Path(out), lambda p: p.write_text(text))
    return summary

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
    from fedsim.run.results import atomic_write

    summary = open_summary(cfg, dataset, make_backend, run_id)
    columns = cfg.data.columns  # synthetic and teacher data have no categories
    folded = rare_categories(columns, summary, cfg.data.min_category_count)
    matrix = fold_matrix(columns, folded)
    mean, std = summary.scaler()
    width = len(mean) - columns.num_onehot  # the numeric features, before the categories
    onehot = (matrix.shape[1] if matrix is not None else len(mean)) - width
    scaler = (np.concatenate([mean[:width], np.zeros(onehot)]),  # categories stay 0/1
              np.concatenate([std[:width], np.ones(onehot)]))
    text = json.dumps({**summary.as_dict(), "scaler": _scaler_dict(scaler),
                       "folded": folded}, indent=2)
    atomic_write(out_dir / STATISTICS, lambda p: p.write_text(text))
    if matrix is not None:
        dataset = dataset.remapped(matrix)
    return dataset.rescaled(scaler)


def rare_categories(columns: Any, summary: Any, min_count: int) -> dict[str, list[str]]:
    """Per categorical column, its categories held by fewer than ``min_count`` pooled
    training records (the one-hot features' pooled sums, from the federated
    statistics); columns with none are left out."""
    if not min_count:
        return {}
    counts = dict(zip(summary.features, np.rint(summary.mean * summary.n), strict=True))
    folded = {}
    for c in columns.categorical:
        rare = [v for v, f in zip(c.values, c.features, strict=True) if counts[f] < min_count]
        if rare:
            folded[c.name] = rare
    return folded


def fold_matrix(columns: Any, folded: dict[str, list[str]]) -> np.ndarray | None:
    """The linear map from the declared features to the run's (each column's rare
    categories summed into one ``name=other`` feature after its kept ones), or None
    when nothing is folded."""
    if not folded:
        return None
    out: list[np.ndarray] = []
    eye = np.eye(len(columns.features))
    out += [eye[:, j] for j in range(len(columns.numeric))]
    j = len(columns.numeric)
    for c in columns.categorical:
        rare = set(folded.get(c.name, ()))
        block = range(j, j + len(c.values))
        out += [eye[:, k] for k, v in zip(block, c.values, strict=True) if v not in rare]
        if rare:
            out.append(sum(eye[:, k] for k, v in zip(block, c.values, strict=True)
                           if v in rare))
        j += len(c.values)
    return np.stack(out, axis=1)


def run_folds(cfg: Any, run_dir: str | Path) -> np.ndarray | None:
    """The fold a finished federated run applied to its features (`fold_matrix`),
    read back from its ``statistics.json``; None when it folded nothing."""
    if cfg.data.standardize != "federated":
        return None
    return fold_matrix(cfg.data.columns, _statistics(run_dir).get("folded") or {})


def _statistics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / STATISTICS
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        return data
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: the run's federated statistics are missing or "
                        f"unreadable ({type(err).__name__})") from None


def _scaler_dict(scaler: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    return {"mean": [float(v) for v in scaler[0]], "std": [float(v) for v in scaler[1]]}


def run_scale(cfg: Any, dataset: FederatedDataset, run_dir: str | Path) -> FederatedDataset:
    """``dataset`` as a finished run trained on it: a federated run's pooled scale is
    read back from its ``statistics.json`` (never recomputed from the rows)."""
    if cfg.data.standardize != "federated":
        return dataset
    path = Path(run_dir) / STATISTICS
    matrix = run_folds(cfg, run_dir)
    if matrix is not None:
        dataset = dataset.remapped(matrix)
    try:
        scaler = _statistics(run_dir)["scaler"]
        mean, std = (np.asarray(scaler[k], np.float64) for k in ("mean", "std"))
    except (KeyError, TypeError) as err:
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

"""What a run writes, and how to read it back.

Every file is written to a temporary name in the run directory and renamed into
place, so a reader never sees a half-written file; ``rounds.parquet`` is rewritten
after every round, so an interrupted run keeps every completed round.

Layout of a run directory::

    manifest.json    resolved config, seeds, versions, machine, run id, status
    rounds.parquet   one row per round (see `RoundRecord.row`)
    params.npz       final global parameters, keyed by "/"-joined tree paths
    metrics.json     final per-hospital and pooled test metrics with ROC points
    roc.png          final ROC curves per hospital and pooled
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedsim.config import RunConfig, from_dict
from fedsim.errors import FedSimError

_PACKAGES = ("fedsim", "ray", "jax", "jaxlib", "flax", "optax", "openfhe", "numpy", "pyarrow",
             "scikit-learn", "dp-accounting")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)))


def versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """A short description of the machine the run used."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def flatten_params(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": array}."""
    if isinstance(tree, dict):
        out: dict[str, np.ndarray] = {}
        for key in sorted(tree):
            out.update(flatten_params(tree[key], f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): np.asarray(tree)}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b/c": array} -> nested dict of arrays."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class RunWriter:
    """Writes one run directory; each method replaces its file atomically."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []

    def manifest(self, cfg: RunConfig, **extra: Any) -> None:
        data = {"config": cfg.to_dict(), "seed": cfg.seed, "versions": versions(),
                "machine": machine(), **extra}
        write_json(self.dir / "manifest.json", data)

    def update_manifest(self, **fields: Any) -> None:
        path = self.dir / "manifest.json"
        data = json.loads(path.read_text())
        data.update(fields)
        write_json(path, data)

    def round(self, row: dict) -> None:
        self.rows.append(row)
        # Every column any round has (a skipped round has fewer), in first-seen order.
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        table = pa.table({k: [r.get(k) for r in self.rows] for k in columns})
        atomic_write(self.dir / "rounds.parquet", lambda p: pq.write_table(table, p))

    def params(self, tree: Any) -> None:
        flat = flatten_params(tree)

        def save(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez(f, **flat)

        atomic_write(self.dir / "params.npz", save)

    def metrics(self, report: dict) -> None:
        write_json(self.dir / "metrics.json", report)

    def roc_plot(self, report: dict) -> None:
        from fedsim.run.plots import plot_roc

        atomic_write(self.dir / "roc.png", lambda p: plot_roc(report, p))


@dataclass(frozen=True)
class Run:
    """A finished (or interrupted) run read back from its directory."""

    path: Path
    config: RunConfig
    manifest: dict
    rounds: pa.Table
    params: dict | None
    metrics: dict | None


def load_run(path: str | Path) -> Run:
    """Read a run directory: config, rounds table, final parameters and metrics."""
    p = Path(path)
    if not (p / "manifest.json").is_file():
        raise FedSimError(f"not a fedsim run directory (no manifest.json): {p}")
    manifest = json.loads((p / "manifest.json").read_text())
    rounds = pq.read_table(p / "rounds.parquet") if (p / "rounds.parquet").is_file() \
        else pa.table({})
    params = None
    if (p / "params.npz").is_file():
        with np.load(p / "params.npz") as npz:
            params = unflatten_params({k: npz[k] for k in npz.files})
    metrics = json.loads((p / "metrics.json").read_text()) if (p / "metrics.json").is_file() \
        else None
    return Run(p, from_dict(manifest["config"]), manifest, rounds, params, metrics)

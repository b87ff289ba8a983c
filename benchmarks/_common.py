"""What every benchmark shares: flags, output files, machine notes, small statistics.

Each benchmark writes ``<name>.parquet`` (one row per measurement), ``<name>.md`` (a
table with the settings, machine and date) and PNG plots to its output directory,
every file through `fedsim.run.results.atomic_write`, and prints its headline last.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def single_thread_env() -> None:
    """One native thread per process (crypto and XLA), as the actors run them."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"fedsim bench {name}", description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small settings that finish in under a minute (used by the tests)")
    p.add_argument("--out", help=f"output directory (default benchmarks/results/{name}/)")
    return p


def out_dir(args: argparse.Namespace, name: str) -> Path:
    path = Path(args.out) if args.out else RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fedsim.run.results import atomic_write

    # from_pylist takes its columns from the first row: use every row's keys.
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows])
    return _readable(atomic_write(path, lambda p: pq.write_table(table, p)))


def write_text(path: Path, text: str) -> Path:
    from fedsim.run.results import atomic_write

    return _readable(atomic_write(path, lambda p: p.write_text(text)))


def _readable(path: Path) -> Path:
    """Results are for sharing: 0644, not the 0600 of a temporary file."""
    os.chmod(path, 0o644)
    return path


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from fedsim.run.results import atomic_write

    def write(p: Path) -> None:
        fig.savefig(p, format="png", dpi=110)

    try:
        return _readable(atomic_write(path, write))
    finally:
        plt.close(fig)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def machine_lines() -> list[str]:
    from fedsim.run.results import machine, versions

    m = machine()
    v = versions()
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {m['platform']}, {m['processor']}, {m['cpus']} logical CPUs, "
        f"Python {m['python']}",
        f"- load average (1/5/15 min) when written: "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} on {m['cpus']} CPUs, the "
        "benchmark's own work included (a load well above the CPU count while it ran means "
        "other jobs shared the cores: trust same-run ratios over absolute seconds)",
        "- packages: " + ", ".join(f"{k} {v[k]}" for k in ("ray", "jax", "flax", "openfhe",
                                                             "numpy")),
    ]


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
             formats: dict[str, str] | None = None) -> str:
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            fmt = formats.get(c)
            if fmt and isinstance(value, (int, float, np.floating, np.integer)) and \
                    np.isfinite(value):
                cells.append(format(value, fmt))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (nan with fewer than two points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2 or len(np.unique(x[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


class RssSampler:
    """Peak resident memory of some processes, sampled every ``every_s`` in a thread.

    ``pids`` is a callable so processes that start later (Ray actors) are picked up.
    """

    def __init__(self, pids: Callable[[], dict[str, int]], every_s: float = 0.2) -> None:
        self._pids = pids
        self._every = every_s
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        procs: dict[int, Any] = {}
        while not self._stop.is_set():
            try:
                current = self._pids()
            except Exception:  # Ray state briefly unavailable: try again next tick
                current = {}
            for label, pid in current.items():
                try:
                    proc = procs.setdefault(pid, psutil.Process(pid))
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peak[label] = max(self.peak.get(label, 0), rss)
            self._stop.wait(self._every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

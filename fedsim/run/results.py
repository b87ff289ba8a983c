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
import socket
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
from fedsim.errors import ConfigError, FedSimError

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
        _fsync(tmp)  # on disk before it replaces the old file (a host crash loses neither)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync(path: str | Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as `json_text`."""
    # Serialised before anything is written: a failure leaves the old file whole.
    text = json_text(data)
    return atomic_write(path, lambda p: p.write_text(text))


def json_text(data: Any) -> str:
    """``data`` as standard JSON: NaN and infinities (Python or numpy floats, e.g.
    the AUC of a one-class test split) become null, numpy scalars and arrays become
    numbers and lists, anything else unknown its ``str``."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, np.ndarray)):
            return [plain(v) for v in value]
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return json.dumps(plain(data), indent=2, default=str, allow_nan=False)


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


# Every file a run writes (`fedsim.run.checkpoint` adds checkpoint, opening, evaluations;
# `fedsim.run.baselines` and `fedsim.run.datasets` the plot and statistics): an
# overwritten run directory loses them all, so it never mixes two runs.
RUN_FILES = ("manifest.json", "rounds.parquet", "params.npz", "metrics.json", "roc.png",
             "baselines.png", "statistics.json", "checkpoint.npz", "opening.json",
             "evaluations.json",
             "selection.npz")  # the last: written by earlier fedsims, removed all the same


def check_out_dir(path: Path, *, overwrite: bool = False) -> None:
    """Refuse, in one line, a results directory that is a file, not writable, or already
    holds a run (unless ``overwrite``): a directory never mixes two runs. Refuse one inside
    a Ray job's unpacked working directory too: Ray may delete it under a running run."""
    # A Ray job's entrypoint starts in Ray's unpacked copy of --working-dir,
    # <session>/runtime_resources/working_dir_files/_ray_pkg_<hash> (Ray's working_dir
    # plugin and packaging), so a relative --out, or none, lands there. Ray owns that
    # copy: it unpacks it again (another node's runtime-env agent sharing the path) and
    # deletes it from its cache, taking the results with it. Recognised by its layout,
    # and by the package the job names in RAY_JOB_CONFIG_JSON_ENV_VAR (which the job
    # supervisor sets for the entrypoint: {"runtime_env": {"working_dir": "gcs://..."}}).
    packages: set[str] = set()
    try:
        uri = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}"
                         )["runtime_env"]["working_dir"]
    except (ValueError, TypeError, KeyError):  # not in a job, or a job without one
        uri = None
    if isinstance(uri, str) and "://" in uri and not uri.lower().startswith("local://"):
        name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        for ext in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".jar"):
            if name.endswith(ext):
                name = name[: -len(ext)]
                break
        if name.startswith("_ray_pkg_"):  # uploaded by `ray job submit --working-dir`
            packages.add(name)
    resolved = path.expanduser().resolve()
    for part in (resolved, *resolved.parents):
        if (part.name in packages
                or (part.parent.name == "working_dir_files"
                    and (part.name.startswith("_ray_pkg_")
                         or part.parent.parent.name == "runtime_resources"))):
            raise ConfigError(
                f"results directory {path} is inside the Ray job's working directory "
                f"{part}, Ray's unpacked copy of --working-dir, which Ray may delete or "
                f"unpack again during the run (a relative --out, or none, lands there): "
                f"give --out an absolute path outside it, on storage the driver's node "
                f"keeps, e.g. --out /shared/runs/{resolved.name}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"results directory {path} is a file, not a directory")
    held = [name for name in RUN_FILES if (path / name).exists()]
    if held and not overwrite:
        raise ConfigError(f"results directory {path} already holds a run ({held[0]}): choose "
                          f"another --out, pass --overwrite to replace it, or continue it "
                          f"with fedsim resume {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fedsim-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"cannot write results to {path}: {err.strerror or err}") from None


LOCK = "run.lock"


def lock_run_dir(path: Path) -> None:
    """Take ``path/run.lock`` for this process, so two drivers never write one run
    directory; a lock left by a process of this host that is gone (SIGKILL) is taken
    over. `ConfigError` (one line) when another live fedsim holds it."""
    lock = path / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text())
                pid, host = int(held["pid"]), str(held["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = -1, me["host"]  # torn or foreign: treat as stale
            if pid == me["pid"] and host == me["host"]:
                return
            if host != me["host"] or _alive(pid):
                raise ConfigError(f"{path} is in use by fedsim process {pid} on {host} "
                                  f"({LOCK}); wait for it to end, or remove {lock} if that "
                                  "process is gone") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return


def unlock_run_dir(path: Path) -> None:
    """Release ``path/run.lock`` if this process holds it."""
    lock = path / LOCK
    try:
        held = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunWriter:
    """Writes one run directory; each method replaces its file atomically."""

    def __init__(self, out_dir: str | Path, rows: list[dict] | None = None) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = list(rows or [])

    @classmethod
    def create(cls, out_dir: str | Path, *, overwrite: bool = False) -> RunWriter:
        """A writer for a new run in ``out_dir`` (`check_out_dir`); with ``overwrite``
        the previous run's files are removed first."""
        path = Path(out_dir)
        check_out_dir(path, overwrite=overwrite)
        lock_run_dir(path)  # before anything of a run that may still be live is removed
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        return cls(path)

    @classmethod
    def reopen(cls, run_dir: str | Path, next_round: int) -> RunWriter:
        """A writer that continues ``run_dir`` from round ``next_round``: rows of later
        rounds (written after the checkpoint) are dropped, to be run again."""
        path = Path(run_dir)
        lock_run_dir(path)
        table = _read_run_file(path / "rounds.parquet", pq.read_table)
        rows: list[dict] = table.to_pylist() if table is not None else []
        writer = cls(path, [r for r in rows if r["round"] < next_round])
        if len(writer.rows) != len(rows):
            writer.flush()
        for name in ("params.npz", "metrics.json", "roc.png"):  # of the final model only
            (path / name).unlink(missing_ok=True)
        return writer

    def manifest(self, cfg: RunConfig, **extra: Any) -> None:
        data = {"config": cfg.to_dict(), "seed": cfg.seed, "versions": versions(),
                "machine": machine(), **extra}
        write_json(self.dir / "manifest.json", data)

    def update_manifest(self, **fields: Any) -> None:
        data = read_manifest(self.dir)
        data.update(fields)
        write_json(self.dir / "manifest.json", data)

    def round(self, row: dict) -> None:
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        """Rewrite rounds.parquet from the rows held."""
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


def read_manifest(run_dir: str | Path) -> dict:
    """A run directory's manifest; one-line `FedSimError` when missing or unreadable."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise FedSimError(f"not a fedsim run directory (no manifest.json): {run_dir}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise FedSimError(f"{path} is truncated or not readable ({type(err).__name__})") \
            from None
    if not isinstance(data, dict) or "config" not in data:
        raise FedSimError(f"{path} is not a fedsim manifest (no config)")
    return data


@dataclass(frozen=True)
class Run:
    """A finished (or interrupted) run read back from its directory."""

    path: Path
    config: RunConfig
    manifest: dict
    rounds: pa.Table
    params: dict | None
    metrics: dict | None


def _read_run_file(file: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(file)``, None if the file is missing; a truncated, corrupt or unreadable
    one is a one-line `FedSimError` that names it."""
    import zipfile

    if not file.is_file():
        return None
    try:
        return reader(file)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile,
            pa.ArrowException) as err:
        raise FedSimError(f"{file} is truncated or not readable "
                          f"({type(err).__name__})") from None


def load_run(path: str | Path) -> Run:
    """Read a run directory: config, rounds table, final parameters and metrics.

    A file that is truncated, corrupt or not readable is a one-line `FedSimError` that
    names it; a missing optional file (a run interrupted early) is an empty table or None.
    """
    p = Path(path)
    manifest = read_manifest(p)

    def npz(file: Path) -> dict:
        loaded = np.load(file)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded:
            return unflatten_params({k: loaded[k] for k in loaded.files})

    def metrics_json(file: Path) -> dict:
        data = json.loads(file.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        return data

    rounds = _read_run_file(p / "rounds.parquet", pq.read_table)
    params = _read_run_file(p / "params.npz", npz)
    metrics = _read_run_file(p / "metrics.json", metrics_json)
    try:
        config = from_dict(manifest["config"])
    except ConfigError as err:
        raise ConfigError(f"{p / 'manifest.json'}: {err}") from None
    return Run(p, config, manifest, pa.table({}) if rounds is None else rounds, params, metrics)

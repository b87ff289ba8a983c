"""A run's checkpoint: everything the coordinator needs to continue after a fault.

Once the parties are set up, and after every completed round, the runner replaces
``checkpoint.npz`` in the run directory, atomically (one file, renamed into place), with:

* the global parameters and the server optimizer's state (its leaves, in the tree order
  of a fresh state: restoring rebuilds the tree from the same config);
* the run's step states (the privacy ledger: participations per client, the adaptive
  clip bound), as JSON (`encode_state`: plain values, tuples and fedsim's own frozen
  dataclasses; nothing is unpickled);
* the next round's index;
* the model selection's snapshots (`fedsim.learning.selection`): the last evaluated
  round's model and report, and under ``evaluation.select: best_val`` the best one's.
  In the same file as the round they follow, so a resume never chooses or deploys a
  model of a round it runs again.

Public randomness (data, initialisation, batch order, client sampling without DP) is
derived from the run seed and the round index, so it needs no saved position. No secret
is saved: a resumed ``he`` run holds a new key ceremony (new keys, new client signing
keys), and secret DP randomness is drawn afresh.

As a round releases its contributors' data (he: every partial decryption in the
coordinator's hands; plaintext: their updates reaching the aggregator), ``opening.json``
records that round and its contributors. If a run dies after that and before the round's
checkpoint, the release may have been seen: a resumed or restarted DP run charges that
round to its ledger (`Pipeline.charged`) and goes on with the next one, rather than
releasing the same clients' data a second time uncounted.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from fedsim.aggregate.server import ServerState
from fedsim.errors import FedSimError
from fedsim.run.results import (
    atomic_write,
    flatten_params,
    unflatten_params,
    write_json,
)

if TYPE_CHECKING:
    from fedsim.learning.selection import Selection, Snapshot
    from fedsim.protocol.federation import Federation

CHECKPOINT = "checkpoint.npz"
OPENING = "opening.json"
EVALUATIONS = "evaluations.json"  # federated evaluations asked so far, every session
FORMAT = 2  # 2: the model selection's snapshots inside


class CheckpointError(FedSimError):
    """A checkpoint that is missing, unreadable or not of this run."""


# ----------------------------------------------------------------- step-state codec
def encode_state(value: Any) -> Any:
    """A step state as JSON-able data; the inverse is `decode_state`."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, tuple):
        return {"tuple": [encode_state(v) for v in value]}
    if isinstance(value, list):
        return {"list": [encode_state(v) for v in value]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type) \
            and type(value).__module__.startswith("fedsim."):
        cls = type(value)
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: encode_state(getattr(value, f.name))
                           for f in dataclasses.fields(value)}}
    raise TypeError(f"a step state of type {type(value).__name__} cannot be checkpointed")


def decode_state(data: Any) -> Any:
    """The step state `encode_state` wrote (only fedsim's own dataclasses are built)."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, dict):
        if "float" in data:
            return float(data["float"])
        if "tuple" in data:
            return tuple(decode_state(v) for v in data["tuple"])
        if "list" in data:
            return [decode_state(v) for v in data["list"]]
        if "dataclass" in data:
            module, _, name = data["dataclass"].partition(":")
            if not module.startswith("fedsim."):
                raise CheckpointError(f"checkpoint names a class outside fedsim: {module}")
            cls = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
            if not dataclasses.is_dataclass(cls):
                raise CheckpointError(f"checkpoint names {name}, which is not a state")
            return cls(**{k: decode_state(v) for k, v in data["fields"].items()})
    raise CheckpointError(f"checkpoint holds an unreadable step state: {str(data)[:80]}")


# ----------------------------------------------------------------- checkpoint file
@dataclass(frozen=True)
class Checkpoint:
    """What `load` read back: the round to run next and the coordinator's state."""

    next_round: int
    run_id: str
    params: np.ndarray
    opt_leaves: list[np.ndarray]
    step_states: tuple[Any, ...]
    best: Snapshot | None = None
    last: Snapshot | None = None

    def restore(self, federation: Federation) -> None:
        """Put this state into a freshly built ``federation`` of the same config."""
        fresh = federation.state
        leaves, treedef = jax.tree_util.tree_flatten(fresh.opt_state)
        if len(leaves) != len(self.opt_leaves) or fresh.params.shape != self.params.shape:
            raise CheckpointError("the checkpoint does not fit this run's model and server "
                                  "optimizer (was the config changed?)")
        opt_state = jax.tree_util.tree_unflatten(
            treedef, [np.asarray(v, np.asarray(leaf).dtype).reshape(np.shape(leaf))
                      for v, leaf in zip(self.opt_leaves, leaves, strict=True)])
        federation.state = ServerState(params=self.params.astype(np.float32),
                                       opt_state=opt_state)
        if len(self.step_states) != len(federation.step_states):
            raise CheckpointError("the checkpoint's privacy and weighting steps differ from "
                                  "this run's (was the config changed?)")
        federation.step_states = self.step_states


def save(run_dir: Path, federation: Federation, next_round: int,
         selection: Selection | None = None) -> Path:
    """Replace the run's checkpoint with the state after round ``next_round - 1`` (and
    ``selection``'s snapshots, all of rounds before ``next_round``)."""
    leaves = jax.tree_util.tree_leaves(federation.state.opt_state)
    snaps = {"best": selection.best, "last": selection.last} if selection else {}
    snaps = {k: v for k, v in snaps.items() if v is not None}
    last_is_best = "best" in snaps and snaps["best"] is snaps.get("last")
    if last_is_best:
        del snaps["last"]  # one copy: "last" reads "best" back
    meta = {"format": FORMAT, "next_round": next_round, "run_id": federation.run_id,
            "opt_leaves": len(leaves),
            "step_states": encode_state(tuple(federation.step_states)),
            "snapshots": {k: {"round": v.round, "val_auc": v.val_auc, "report": v.report}
                          for k, v in snaps.items()},
            "last_is_best": last_is_best}
    arrays = {"params": np.asarray(federation.state.params),
              **{f"opt_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)},
              **{f"{k}/{name}": np.asarray(a) for k, v in snaps.items()
                 for name, a in flatten_params(v.params).items()}}
    text = json.dumps(meta, default=_plain)  # NaN stays NaN (a one-class split's AUC)

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # straight to the file: no second copy in memory
            np.savez(f, meta=np.frombuffer(text.encode(), np.uint8), **arrays)

    return atomic_write(run_dir / CHECKPOINT, write)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a report, as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def _snapshots(npz: Any, meta: dict) -> dict[str, Snapshot]:
    from fedsim.learning.selection import Snapshot

    out = {}
    for key, m in meta.get("snapshots", {}).items():
        params = unflatten_params({n[len(key) + 1:]: npz[n] for n in npz.files
                                   if n.startswith(key + "/")})
        out[key] = Snapshot(int(m["round"]), float(m["val_auc"]), params, m["report"])
    if meta.get("last_is_best"):
        out["last"] = out["best"]
    return out


def load(run_dir: Path) -> Checkpoint:
    """The run's checkpoint; `CheckpointError` (one line) if there is none or it is bad."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {CHECKPOINT}: the run stopped before its "
                              "first round began (before its parties were set up); start "
                              "it again with fedsim run (--overwrite)")
    try:
        # Our own handle: np.load leaks its file when a torn archive fails to open.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            params = npz["params"]
            opt = [npz[f"opt_{i}"] for i in range(int(meta["opt_leaves"]))]
            snaps = _snapshots(npz, meta)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {meta.get('format')} is not "
                                  f"this fedsim's ({FORMAT})")
        states = decode_state(meta["step_states"])
        return Checkpoint(int(meta["next_round"]), str(meta["run_id"]), params, opt,
                          tuple(states), snaps.get("best"), snaps.get("last"))
    except CheckpointError:
        raise
    except Exception as err:  # truncated, corrupt, or not a checkpoint
        raise CheckpointError(f"{path} is truncated or not a fedsim checkpoint "
                              f"({type(err).__name__})") from None


def record_opening(run_dir: Path, round_idx: int, contributors: tuple[str, ...]) -> None:
    """Note that round ``round_idx`` has released ``contributors``' data."""
    write_json(run_dir / OPENING, {"round": round_idx, "contributors": list(contributors)})


def opened_since(run_dir: Path, checkpoint: Checkpoint) -> tuple[str, ...] | None:
    """The contributors of a round released after the checkpoint (None if none was)."""
    path = run_dir / OPENING
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        round_idx, contributors = int(data["round"]), tuple(data["contributors"])
    except Exception:  # a torn write cannot happen (atomic); anything else is tampering
        raise CheckpointError(f"{path} is not readable: cannot tell whether the round "
                              "after the checkpoint was released") from None
    return contributors if round_idx == checkpoint.next_round else None


def watch_evaluations(evaluator: Any, run_dir: Path, cfg: Any,
                      resume: Checkpoint | None) -> None:
    """Keep ``evaluations.json`` at the count of federated evaluations the hospitals were
    asked for (read back on resume), so the evaluation epsilon composes every release:
    one re-run after a fault, or before a resume, included. Without the file a resume
    counts every evaluation round before its checkpoint (at least that many were asked
    for). Central evaluation releases nothing."""
    if not hasattr(evaluator, "released"):
        return
    path = run_dir / EVALUATIONS
    if resume is not None:
        from fedsim.protocol.evaluation import evaluation_rounds

        due = evaluation_rounds(cfg.federation.rounds, cfg.evaluation.every)
        released = sum(r < resume.next_round for r in due)
        if path.is_file():
            try:
                n = json.loads(path.read_text())["released"]
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise ValueError(n)
            except Exception:  # written atomically: anything else is tampering
                raise CheckpointError(f"{path} is not readable: cannot tell how many "
                                      "evaluations were released") from None
            released = n  # the record; the rounds due are only the fallback
        evaluator.released = released
    evaluator.on_release = lambda n: write_json(path, {"released": n})


def check_resumable(manifest: dict, run_dir: Path) -> None:
    """Refuse to resume a run stopped by conflicting deployment receipts: a resume's new
    key holders would attest whatever model the coordinator kept, hiding the conflict."""
    refused = manifest.get("refused") or {}
    if refused.get("receipts"):
        raise CheckpointError(f"{run_dir}: stopped because {refused['reason']} (holders "
                              f"{refused['by']}); a resume cannot attest its model: start "
                              "the run again (fedsim run --overwrite)")

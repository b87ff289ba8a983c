"""What federating bought: the run's model beside the same model trained without it
(``evaluation.baselines``, ``fedsim run --baselines none|local|all``).

- ``local``: every hospital trains the run's model alone, from the run's initial
  parameters, for as many local rounds as the run has (each round the steps it would
  take when sampled, `fedsim.learning.train.local_steps`, optimizer state fresh each
  round as in federated training): the most local compute the run could give it. Each
  local model is scored on its own test split and on the pooled test set.
- ``all`` adds ``centralized``: the same model trained on the pooled training rows for
  the federation's total local steps (rounds x clients per round x steps).

Baselines train without DP and without encryption, whatever the run's mode: they
show what the data allows alone or pooled. They are the simulator's measurement (the
driver holds every hospital's rows to start the parties), not part of the protocol: in
a consortium each hospital would train and score its own local model, and the pooled
test score of one would need a federated evaluation. Batch order is public
randomness from the run seed (`fedsim.seeding.stream`, its own purposes).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from fedsim.errors import ConfigError

WHICH = ("none", "local", "all")


def _scores(model: Any, params: Any, split: Any) -> float | None:
    """Test ROC AUC of ``params`` on ``split`` (None with one class or no rows)."""
    from fedsim.learning.metrics import evaluate
    from fedsim.learning.train import predict

    if not len(split):
        return None
    auc = evaluate(split.labels, predict(model, params, split)).auc
    return None if math.isnan(auc) else auc


class _Trainer:
    """The run's model, its initial parameters and a plain (non-private) local trainer."""

    def __init__(self, cfg: Any, dataset: Any) -> None:
        from fedsim.learning.model import build_model, init_params
        from fedsim.learning.train import LocalTrainer
        from fedsim.seeding import client_key

        self.cfg = cfg
        self.model = build_model(cfg.model, vocab_size=dataset.vocab_size,
                                 num_numeric=dataset.num_numeric)
        self.params0 = init_params(self.model, key=client_key(cfg.seed, 0),
                                   max_codes=dataset.max_codes)
        self.trainer = LocalTrainer(self.model, dataclasses.replace(cfg.train, prox_mu=0.0))

    def train(self, split: Any, steps: int, purpose: str, index: int,
              val: Any = None) -> tuple[Any, int]:
        """``federation.rounds`` rounds of ``steps`` steps on ``split`` alone, and the
        round whose model is kept: the last, or under ``evaluation.select: best_val``
        the evaluated round's with the best AUC on ``val`` (the run's own selection,
        on the validation rows this baseline would hold)."""
        from fedsim.learning.selection import Selection
        from fedsim.protocol.evaluation import evaluation_rounds
        from fedsim.seeding import stream

        e, rounds = self.cfg.evaluation, self.cfg.federation.rounds
        selection = Selection(e.selects_best and val is not None)
        scored = set(evaluation_rounds(rounds, e.every)) if selection.best_val else set()
        params = self.params0
        for r in range(rounds):
            rng = stream(self.cfg.seed, purpose, r, index)
            batches = self.trainer.inputs(rng, split, steps, seed=self.cfg.seed,
                                          round_idx=r, index=index)
            params, _ = self.trainer.train(params, batches)
            if r in scored:
                auc = _scores(self.model, params, val)
                selection.offer(r, math.nan if auc is None else auc, params)
        chosen = selection.chosen(rounds - 1)
        return (params, rounds) if chosen is None else (chosen.params, chosen.round + 1)


def local_only(cfg: Any, dataset: Any, on_progress: Any = None) -> dict[str, dict]:
    """Each hospital's model trained alone: its AUC on its own test split and on the
    pooled test set, and its steps."""
    from fedsim.learning.train import local_steps

    t = _Trainer(cfg, dataset)
    pooled_test = dataset.test_set()
    out: dict[str, dict] = {}
    for i, c in enumerate(dataset.clients):
        steps = local_steps(cfg.train, len(c.train))
        params, kept = t.train(c.train, steps, "baseline-local", i, c.val)
        out[c.name] = {"own_test_auc": _scores(t.model, params, c.test),
                       "pooled_test_auc": _scores(t.model, params, pooled_test),
                       "steps": steps * cfg.federation.rounds, "round": kept}
        if on_progress is not None:
            on_progress(c.name)
    return out


def centralized(cfg: Any, dataset: Any) -> dict[str, Any]:
    """The run's model on the pooled training rows for the federation's total steps."""
    from fedsim.learning.train import local_steps

    t = _Trainer(cfg, dataset)
    sizes = [len(c.train) for c in dataset.clients]
    steps = cfg.federation.clients_per_round * local_steps(cfg.train,
                                                           int(np.mean(sizes)))
    params, kept = t.train(dataset.pooled("train"), steps, "baseline-centralized", 0,
                           dataset.pooled("val"))
    own = {c.name: _scores(t.model, params, c.test) for c in dataset.clients}
    return {"pooled_test_auc": _scores(t.model, params, dataset.test_set()),
            "own_test_auc": own, "steps": steps * cfg.federation.rounds, "round": kept}


def baselines(cfg: Any, dataset: Any, report: dict, which: str,
              on_progress: Any = None) -> dict[str, Any]:
    """metrics.json's ``baselines``: the federated model's pooled test AUC (and each
    hospital's own, where the report has it) beside the local-only models and, with
    ``all``, the centralized one; ``best_local`` names the local model with the best
    pooled test AUC."""
    if which not in WHICH:
        raise ConfigError(f"--baselines must be one of {', '.join(WHICH)}, not {which!r}")
    if not cfg.federation.hospital_parties:
        raise ConfigError("baselines need hospitals (federation.clients: hospital); "
                          "a cohort's simulated clients have no local model to compare")
    hospitals = report.get("hospitals", {})
    out: dict[str, Any] = {
        "federated": {"pooled_test_auc": report["pooled"]["auc"],
                      "own_test_auc": {n: m.get("auc") for n, m in hospitals.items()}},
        "local": local_only(cfg, dataset, on_progress),
    }
    ranked = [(v["pooled_test_auc"], n) for n, v in out["local"].items()
              if v["pooled_test_auc"] is not None]
    out["best_local"] = max(ranked)[1] if ranked else None
    if which == "all":
        out["centralized"] = centralized(cfg, dataset)
    return out


def baseline_rows(b: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """(model, pooled test AUC, what it is) for the report table and the plot: the
    federated model first, the centralized one, then each local-only model."""
    rows = [("federated", b["federated"]["pooled_test_auc"], "this run")]
    if "centralized" in b:
        rows.append(("centralized", b["centralized"]["pooled_test_auc"],
                     "same model, pooled rows"))
    for name, v in b["local"].items():
        rows.append((f"local: {name}", v["pooled_test_auc"],
                     "best local" if name == b["best_local"] else "alone"))
    return rows


def add_baselines(cfg: Any, dataset: Any, report: dict, out_dir: Any, console: Any) -> None:
    """``report["baselines"]`` (metrics.json) and ``baselines.png`` for a finished run, as
    ``evaluation.baselines`` asks, with progress and an ETA; a cohort run is skipped
    with a warning (its simulated clients have no local model to compare)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from fedsim.run.plots import plot_baselines
    from fedsim.run.results import atomic_write

    which = cfg.evaluation.baselines
    if which == "none":
        return
    if not cfg.federation.hospital_parties:
        console.print("[yellow]warning:[/] no baselines for a cohort run "
                      "(evaluation.baselines applies to federation.clients: hospital)")
        return
    t0 = time.perf_counter()
    total = len(dataset.clients) + (which == "all")
    with Progress(TextColumn("baselines (plaintext, no DP): {task.description}"),
                  BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("local models", total=total)
        step = lambda name: bar.advance(task)  # noqa: E731
        b = baselines(cfg, dataset, report, "local", on_progress=step)
        if which == "all":
            bar.update(task, description="centralized model")
            b["centralized"] = centralized(cfg, dataset)
            bar.advance(task)
    b["seconds"] = time.perf_counter() - t0
    report["baselines"] = b
    atomic_write(out_dir / "baselines.png", lambda p: plot_baselines(b, p))


def baseline_table(b: dict[str, Any]) -> Any:
    """The baselines as a rich table, with a caption saying what federating bought."""
    from rich.table import Table

    table = Table(title="what federating bought: pooled test ROC AUC (baselines "
                        "plaintext, no DP)")
    for col in ("model", "pooled test ROC AUC", "own test ROC AUC", ""):
        table.add_column(col, justify="left" if col in ("model", "") else "right")

    def score(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    own_fed = b["federated"]["own_test_auc"]
    for model, auc, what in baseline_rows(b):
        name = model.removeprefix("local: ")
        own = (b["local"][name]["own_test_auc"] if model.startswith("local: ") else None)
        table.add_row(model, score(auc), score(own) if own is not None else "", what,
                      style="bold" if model == "federated" else None)
    fed = b["federated"]["pooled_test_auc"]
    best = b["best_local"]
    lines = []
    if best is not None and fed is not None:
        lines.append(f"federated - best local ({best}): "
                     f"{fed - b['local'][best]['pooled_test_auc']:+.4f}")
    if "centralized" in b and b["centralized"]["pooled_test_auc"] is not None and fed:
        lines.append(f"federated - centralized: "
                     f"{fed - b['centralized']['pooled_test_auc']:+.4f}")
    if own_fed and any(v is not None for v in own_fed.values()):
        gains = [own_fed[n] - v["own_test_auc"] for n, v in b["local"].items()
                 if own_fed.get(n) is not None and v["own_test_auc"] is not None]
        if gains:
            lines.append(f"on its own test split the federated model beats the hospital's "
                         f"local model at {sum(g > 0 for g in gains)} of {len(gains)}")
    table.caption = "; ".join(lines)
    return table

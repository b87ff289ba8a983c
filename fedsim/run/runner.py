"""One run from config to results directory: data, parties, rounds, records.

`run_federated` is what ``fedsim run`` calls; tests call it with the in-process
backend. Ray is imported only when the Ray backend is chosen. The rounds go through
`fedsim.protocol.loop.run_rounds` with the callbacks of `fedsim.run.callbacks`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsim.config import RunConfig
from fedsim.data import (
    FederatedDataset,
    SynthSpec,
    TeacherSpec,
    load_table,
    partition,
    synthetic_dataset,
    teacher_dataset,
)
from fedsim.errors import Refusal
from fedsim.privacy.plan import INSECURE
from fedsim.protocol.federation import Federation
from fedsim.protocol.loop import run_rounds
from fedsim.protocol.records import RoundRecord
from fedsim.run.callbacks import Evaluate, PublishTelemetry, ShowProgress, WriteRounds
from fedsim.run.progress import RoundProgress, summary_table
from fedsim.run.results import RunWriter
from fedsim.run.telemetry import RunTelemetry


def load_dataset(cfg: RunConfig) -> FederatedDataset:
    """The federated dataset a config describes (generated or read from a file)."""
    d = cfg.data
    if d.source == "synthetic":
        spec = SynthSpec(**asdict(d.synth), seed=cfg.seed)
        return synthetic_dataset(spec, fractions=d.fractions, seed=cfg.seed)
    if d.source == "teacher":
        return teacher_dataset(TeacherSpec(**asdict(d.teacher), seed=cfg.seed))
    return partition(load_table(d.path), d.columns, vocab_size=d.vocab_size,
                     hospitals=d.hospitals, fractions=d.fractions, seed=cfg.seed)


def default_out_dir(cfg: RunConfig, run_id: str) -> Path:
    return Path("runs") / run_id


def make_run_id(cfg: RunConfig) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_backend(kind: str, run_id: str, cfg: RunConfig,
                 warn: Callable[[str], None] | None = None) -> Any:
    """The parties' backend: ``ray`` (Ray must be connected) or ``inprocess``."""
    if kind == "ray":
        from actors import RayBackend

        return RayBackend(run_id, placement_timeout_s=cfg.resources.placement_timeout_s,
                          keyholder_spread=cfg.resources.keyholder_spread, on_warning=warn)
    from fedsim.protocol.backend import InProcessBackend

    return InProcessBackend()


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run returns to its caller."""

    run_id: str
    out_dir: Path
    records: list[RoundRecord]
    report: dict
    reference_auc: float | None
    seconds: float


def run_federated(
    cfg: RunConfig,
    *,
    out_dir: str | Path | None = None,
    backend: str = "ray",
    address: str | None = None,
    console: Console | None = None,
    reference: bool = True,
    run_id: str | None = None,
) -> RunOutcome:
    """Run ``cfg`` end to end and write its results directory."""
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    run_id = run_id or make_run_id(cfg)
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg, run_id)
    dataset = load_dataset(cfg)
    writer = RunWriter(out)
    writer.manifest(cfg, run_id=run_id, status="running", backend=backend,
                    hospitals=list(dataset.names), started=time.strftime("%Y-%m-%dT%H:%M:%S"))

    started_ray = False
    if backend == "ray":
        from actors import connect

        started_ray = connect(address)
    parties = make_backend(backend, run_id, cfg,
                           warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
    records: list[RoundRecord] = []
    try:
        federation = Federation(cfg, dataset, parties, run_id=run_id)
        console.print(
            f"fedsim run {run_id}: {len(dataset.clients)} clients "
            f"({cfg.federation.clients}), {federation.num_params:,} parameters, "
            f"mode {cfg.federation.mode}, backend {backend}, results in {out}",
            highlight=False,
        )
        insecure = federation.insecure
        if federation.privacy is not None:
            console.print(federation.privacy.describe(), highlight=False)
            writer.update_manifest(privacy=dict(federation.privacy.manifest()),
                                   insecure_seeded_noise=insecure)
        if insecure:
            console.print(f"[bold red]warning:[/] {INSECURE}")
        for caveat in federation.scheme.caveats():
            federation.warnings.append(caveat)
            console.print(f"[yellow]warning:[/] {caveat}")
        writer.update_manifest(caveats=federation.scheme.caveats())
        federation.setup()
        from fedsim.learning.evaluation import CentralEvaluator

        evaluator = CentralEvaluator(federation.model, dataset)
        telemetry = RunTelemetry(run_id, ciphertexts_per_update=federation.scheme.num_ciphertexts)
        with RoundProgress(cfg.federation.rounds, console, insecure=insecure) as progress:
            records = run_rounds(federation, cfg.federation.rounds, [
                Evaluate(evaluator, every=cfg.evaluation.every, rounds=cfg.federation.rounds),
                WriteRounds(writer), PublishTelemetry(telemetry), ShowProgress(progress),
            ])
        report = evaluator.report(federation.params)
        report["title"] = f"{run_id}: test ROC, final global model"
        writer.params(federation.params)
        writer.metrics(report)
        writer.roc_plot(report)
        for message in federation.warnings:
            console.print(f"[yellow]warning:[/] {message}")
    except BaseException as err:
        failed = {"status": "failed", "rounds_completed": len(writer.rows),
                  "error": str(err).splitlines()[0] if str(err) else type(err).__name__}
        if isinstance(err, Refusal):
            failed["refused"] = {"round": err.round, "by": err.party, "reason": str(err)}
        writer.update_manifest(**failed)
        raise
    finally:
        parties.shutdown()
        if started_ray:
            import ray

            ray.shutdown()

    ref_auc = None
    if reference:
        from fedsim.data import reference_logistic_auc

        ref_auc = reference_logistic_auc(dataset, seed=cfg.seed)
    seconds = time.perf_counter() - t0
    writer.update_manifest(status="completed", rounds_completed=len(records),
                           wall_s=seconds, reference_logistic_auc=ref_auc,
                           final_pooled_auc=report["pooled"]["auc"],
                           num_params=federation.num_params)
    console.print(summary_table(report, title=f"{run_id}: test metrics of the final model"))
    if ref_auc is not None:
        console.print(f"centralized logistic-regression reference (pooled data, no "
                      f"federation): test ROC AUC {ref_auc:.4f}", highlight=False)
    console.print(f"pooled test ROC AUC {report['pooled']['auc']:.4f} after {len(records)} "
                  f"rounds in {seconds:.1f}s; results in {out}", highlight=False)
    return RunOutcome(run_id, out, records, report, ref_auc, seconds)

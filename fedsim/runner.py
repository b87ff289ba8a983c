"""One run from config to results directory: data, parties, rounds, records.

`run_federated` is what ``fedsim run`` calls; tests call it with the in-process
backend. Ray is imported only when the Ray backend is chosen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from fedsim.config import RunConfig
from fedsim.coordinator import Federation, RoundRecord
from fedsim.data import (
    FederatedDataset,
    SynthSpec,
    load_table,
    partition,
    synthetic_dataset,
)
from fedsim.progress import RoundProgress, summary_table
from fedsim.results import RunWriter
from fedsim.telemetry import RunTelemetry


def load_dataset(cfg: RunConfig) -> FederatedDataset:
    """The federated dataset a config describes (generated or read from a file)."""
    d = cfg.data
    if d.source == "synthetic":
        spec = SynthSpec(**asdict(d.synth), seed=cfg.seed)
        return synthetic_dataset(spec, fractions=d.fractions, seed=cfg.seed)
    return partition(load_table(d.path), d.columns, vocab_size=d.vocab_size,
                     hospitals=d.hospitals, fractions=d.fractions, seed=cfg.seed)


def default_out_dir(cfg: RunConfig, run_id: str) -> Path:
    return Path("runs") / run_id


def make_run_id(cfg: RunConfig) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


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
        from actors import RayBackend, connect

        started_ray = connect(address)
        parties = RayBackend(run_id, placement_timeout_s=cfg.resources.placement_timeout_s,
                             keyholder_spread=cfg.resources.keyholder_spread,
                             on_warning=lambda m: console.print(f"[yellow]warning:[/] {m}"))
    else:
        from fedsim.backend import InProcessBackend

        parties = InProcessBackend()
    records: list[RoundRecord] = []
    try:
        federation = Federation(cfg, dataset, parties, run_id=run_id)
        console.print(
            f"fedsim run {run_id}: {len(dataset.clients)} hospitals, "
            f"{federation.num_params:,} parameters, mode {cfg.federation.mode}, "
            f"backend {backend}, results in {out}",
            highlight=False,
        )
        if federation.privacy is not None:
            plan = federation.privacy
            console.print(plan.describe(), highlight=False)
            writer.update_manifest(privacy={"plan": plan.describe(),
                                            "noise_multiplier": plan.noise_multiplier,
                                            "clip": plan.clip, "delta": plan.delta,
                                            "calibrated": plan.calibrated})
        federation.setup()
        telemetry = RunTelemetry(run_id, ciphertexts_per_update=(
            federation.crypto.num_ciphertexts if federation.crypto is not None else 0))
        with RoundProgress(cfg.federation.rounds, console) as progress:
            for r in range(cfg.federation.rounds):
                record = federation.run_round(r)
                records.append(record)
                writer.round(record.row())
                telemetry.record(record)
                progress.update(record, record.extra.get("epsilon"))
        report = federation.final_report()
        report["title"] = f"{run_id}: test ROC, final global model"
        writer.params(federation.params)
        writer.metrics(report)
        writer.roc_plot(report)
        for message in federation.warnings:
            console.print(f"[yellow]warning:[/] {message}")
    except BaseException as err:
        writer.update_manifest(status="failed", error=str(err).splitlines()[0] if str(err)
                               else type(err).__name__, rounds_completed=len(records))
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

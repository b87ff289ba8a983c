"""One run from config to results directory: data, parties, rounds, records.

`run_federated` (``fedsim run``; tests use the in-process backend; Ray is imported only for
Ray) runs the rounds with `fedsim.protocol.loop.run_rounds` and `fedsim.run.callbacks`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsim.config import RunConfig, from_dict
from fedsim.data import FederatedDataset
from fedsim.errors import ConfigError, Interrupted, ReceiptConflict, Refusal, RoundFailed
from fedsim.learning.selection import Selection, which_model
from fedsim.privacy.plan import INSECURE
from fedsim.protocol.federation import Federation
from fedsim.protocol.loop import run_rounds
from fedsim.protocol.records import RoundRecord
from fedsim.run import checkpoint
from fedsim.run.baselines import add_baselines, baseline_table
from fedsim.run.callbacks import (
    Collect,
    Evaluate,
    PublishTelemetry,
    RestartLostParties,
    SaveCheckpoint,
    ShowProgress,
    ShowWarnings,
    WriteRounds,
)
from fedsim.run.datasets import load_dataset, standardised
from fedsim.run.progress import RoundProgress, summary_table
from fedsim.run.results import RunWriter, check_out_dir, read_manifest, unlock_run_dir
from fedsim.run.telemetry import RunTelemetry


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
    overwrite: bool = False,
) -> RunOutcome:
    """Run ``cfg`` end to end and write its results directory.

    A directory that already holds a run is refused unless ``overwrite``
    (`fedsim.run.results.check_out_dir`); `resume_run` continues an interrupted one.
    """
    run_id = run_id or make_run_id(cfg)
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg, run_id)
    check_out_dir(out, overwrite=overwrite)
    dataset = load_dataset(cfg)
    writer = RunWriter.create(out, overwrite=overwrite)
    writer.manifest(cfg, run_id=run_id, status="running", backend=backend,
                    hospitals=list(dataset.names), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return _execute(cfg, dataset, writer, run_id, backend=backend, address=address,
                    console=console, reference=reference)


def resume_run(
    run_dir: str | Path,
    *,
    backend: str = "ray",
    address: str | None = None,
    console: Console | None = None,
    reference: bool = True,
) -> RunOutcome:
    """Continue an interrupted or failed run from its checkpoint to its planned rounds.

    The config is the manifest's; the coordinator's state is the checkpoint's
    (`fedsim.run.checkpoint`); every party starts afresh (in ``he`` a new key ceremony).
    """
    path = Path(run_dir)
    manifest = read_manifest(path)
    status = manifest.get("status")
    if status == "completed":
        raise ConfigError(f"{path}: the run is already completed; nothing to resume")
    cfg = from_dict(manifest["config"])
    cfg.privacy.check_resumable(path)
    checkpoint.check_resumable(manifest, path)
    ckpt = checkpoint.load(path)
    if ckpt.run_id != manifest.get("run_id"):
        raise ConfigError(f"{path}: the checkpoint is of run {ckpt.run_id}, the manifest of "
                          f"{manifest.get('run_id')}")
    check_out_dir(path, overwrite=True)  # writable
    dataset = load_dataset(cfg)
    writer = RunWriter.reopen(path, ckpt.next_round)
    resumed = [*manifest.get("resumed", []),
               {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_round": ckpt.next_round,
                "status_before": status, "error_before": manifest.get("error"),
                "refused_before": manifest.get("refused")}]
    writer.update_manifest(status="running", resumed=resumed, backend=backend, error=None,
                           refused=None, resume=None)
    return _execute(cfg, dataset, writer, str(manifest["run_id"]), backend=backend,
                    address=address, console=console, reference=reference, resume=ckpt)


def _execute(
    cfg: RunConfig,
    dataset: FederatedDataset,
    writer: RunWriter,
    run_id: str,
    *,
    backend: str,
    address: str | None,
    console: Console | None,
    reference: bool,
    resume: checkpoint.Checkpoint | None = None,
) -> RunOutcome:
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    out = writer.dir
    started_ray = False
    interrupts: _InterruptOnTerm | None = None
    records: list[RoundRecord] = []
    selection = Selection(cfg.evaluation.selects_best)  # in every checkpoint
    parties = _Parties(cfg, dataset, run_id, backend, writer, console, records, selection)
    try:
        if backend == "ray":
            from actors import connect

            started_ray = connect(address)
        interrupts = _InterruptOnTerm()  # after Ray's own SIGTERM handler, to replace it
        federation = parties.build()
        start = 0 if resume is None else resume.next_round
        console.print(
            f"fedsim {'run' if resume is None else 'resume'} {run_id}: "
            f"{len(dataset.clients)} clients ({cfg.federation.clients}), "
            f"{federation.num_params:,} parameters, mode {cfg.federation.mode}, backend "
            f"{backend}, results in {out}"
            + (f"; continuing at round {start + 1} of {cfg.federation.rounds}"
               if resume is not None else ""),
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
            console.print(f"[yellow]warning:[/] {caveat}")
        writer.update_manifest(caveats=federation.scheme.caveats())
        start = parties.setup(resume)
        from fedsim.protocol.evaluator import evaluator_for

        evaluator = evaluator_for(federation, parties.dataset, selection)
        checkpoint.watch_evaluations(evaluator, writer.dir, cfg, resume)
        telemetry = RunTelemetry(run_id, ciphertexts_per_update=federation.scheme.num_ciphertexts)
        rounds = cfg.federation.rounds
        with RoundProgress(rounds, console, insecure=insecure, start=start) as progress:
            callbacks = [
                Evaluate(evaluator, every=cfg.evaluation.every, rounds=rounds),
                WriteRounds(writer), SaveCheckpoint(writer.dir, selection),
                PublishTelemetry(telemetry),
                ShowProgress(progress), ShowWarnings(console), Collect(records),
                RestartLostParties(rounds),
            ]
            while True:
                try:
                    run_rounds(parties.federation, rounds, callbacks, start=start)
                    break
                except RoundFailed as err:  # a lost party, a short round
                    start = parties.restart(err)
        federation = parties.federation
        report = evaluator.final_report(federation)
        which = which_model(report, cfg.federation.rounds)
        report["title"] = f"{run_id}: test ROC, {which}"
        add_baselines(cfg, parties.dataset, report, writer.dir, console)
        writer.params(evaluator.deployed_params(federation))
        writer.metrics(report)
        writer.roc_plot(report)
        for caveat in federation.scheme.caveats():  # again, beside the results
            console.print(f"[yellow]warning:[/] {caveat}")
        ref_auc = None
        if reference:
            from fedsim.data import reference_logistic_auc

            ref_auc = reference_logistic_auc(parties.dataset, seed=cfg.seed)
        seconds = time.perf_counter() - t0
        completed = len(writer.rows)
        # Completed before the parties are shut down: an interrupt during the shutdown
        # leaves a finished run finished.
        writer.update_manifest(status="completed", rounds_completed=completed,
                               wall_s=seconds, reference_logistic_auc=ref_auc,
                               final_pooled_auc=report["pooled"]["auc"],
                               num_params=federation.num_params)
    except BaseException as err:
        _record_stop(writer, err, console)
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(_resume_hint(writer, "interrupted")) from None
        raise
    finally:
        if interrupts is not None:
            interrupts.restore()
        try:
            parties.shutdown()
        finally:
            unlock_run_dir(writer.dir)
            if started_ray:
                import ray

                ray.shutdown()

    console.print(summary_table(report, title=f"{run_id}: test metrics of the {which}"))
    if "baselines" in report:
        console.print(baseline_table(report["baselines"]))
    if ref_auc is not None:
        console.print(f"centralized logistic-regression reference (pooled data, no "
                      f"federation): test ROC AUC {ref_auc:.4f}", highlight=False)
    console.print(f"pooled test ROC AUC {report['pooled']['auc']:.4f} after {completed} "
                  f"rounds in {seconds:.1f}s; results in {out}", highlight=False)
    return RunOutcome(run_id, out, records, report, ref_auc, seconds)


class _Parties:
    """The run's parties and coordinator: built, set up (restored from a checkpoint
    when resuming), and restarted from the last checkpoint after one is lost."""

    def __init__(self, cfg: RunConfig, dataset: FederatedDataset, run_id: str, kind: str,
                 writer: RunWriter, console: Console, records: list[RoundRecord],
                 selection: Selection) -> None:
        self.cfg, self.dataset, self.run_id, self.kind = cfg, dataset, run_id, kind
        self.writer, self.console, self.records = writer, console, records
        self.selection = selection
        self.backend: Any = None
        self.federation: Federation | None = None
        # Restarts of earlier sessions of this run (resumed) stay in the manifest.
        self.restarts: list[dict[str, Any]] = list(
            read_manifest(writer.dir).get("restarts") or [])
        self.session_restarts = 0

    def build(self) -> Federation:
        warn = lambda m: self.console.print(f"[yellow]warning:[/] {m}")  # noqa: E731
        if self.federation is None:  # the run's scale, once (`fedsim.run.datasets`)
            self.dataset = standardised(self.cfg, self.dataset, lambda: make_backend(
                self.kind, self.run_id, self.cfg, warn=warn), self.run_id, self.writer.dir)
        self.backend = make_backend(self.kind, self.run_id, self.cfg, warn=warn)
        warnings = self.federation.warnings if self.federation is not None else []
        # In federated evaluation the coordinator gets no row of any hospital: the
        # launcher, standing in for each hospital's data steward, starts its party with
        # its own rows.
        federated = self.cfg.evaluation.federated_in(self.cfg.federation)
        self.federation = Federation(
            self.cfg, self.dataset.withheld() if federated else self.dataset, self.backend,
            run_id=self.run_id, hospital_data=self.dataset if federated else None)
        self.federation.warnings[:0] = warnings  # one list of events for the whole run
        return self.federation

    def setup(self, resume: checkpoint.Checkpoint | None) -> int:
        """Start the parties (a new key ceremony in he); the round to run next."""
        fed = self.federation
        assert fed is not None
        fed.setup()
        out = self.writer.dir
        fed.on_open = lambda r, who: checkpoint.record_opening(out, r, who)
        if resume is None:
            # A checkpoint before round 0 too: a fault in round 0 after its release is
            # then charged on resume like any other (`_charge_lost_release`).
            checkpoint.save(out, fed, 0)
            return 0
        resume.restore(fed)
        self.selection.rewind(resume.best, resume.last)
        return _charge_lost_release(fed, self.writer, resume, self.console, self.records,
                                    self.selection)

    def restart(self, err: RoundFailed) -> int:
        """After ``err``: every party anew from the last checkpoint (a lost party is
        replaced, a round in progress is run again), at most ``federation.max_restarts``
        times; the round to run next."""
        limit = self.cfg.federation.max_restarts
        if self.session_restarts >= limit:
            raise err
        self.session_restarts += 1
        resume = checkpoint.load(self.writer.dir)  # saved once set up, then every round
        at = resume.next_round
        self.restarts.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "lost": err.role,
                              "reason": str(err), "from_round": at})
        line = (f"{err}; restarting every party from round {at + 1} (restart "
                f"{self.session_restarts} of at most {limit}, federation.max_restarts)")
        self.console.print(f"[yellow]warning:[/] {line}", highlight=False)
        self.writer.update_manifest(restarts=self.restarts)
        self.shutdown()
        fed = self.build()
        start = self.setup(resume)
        fed.restarted = err.role
        return start

    def shutdown(self) -> None:
        if self.backend is not None:
            self.backend.shutdown()
            self.backend = None


def _charge_lost_release(federation: Federation, writer: RunWriter,
                         resume: checkpoint.Checkpoint, console: Console,
                         records: list[RoundRecord], selection: Selection) -> int:
    """The round to start at: after the checkpoint, or after a DP round that was
    released before the fault (charged to the ledger, not released twice)."""
    start = resume.next_round
    lost = checkpoint.opened_since(writer.dir, resume)
    if lost is None or federation.privacy is None or start >= federation.cfg.federation.rounds:
        return start
    record = federation.lost_release(start, lost)
    console.print(f"[yellow]warning:[/] {federation.warnings[-1]}")
    writer.round(record.row())
    records.append(record)
    checkpoint.save(writer.dir, federation, start + 1, selection)
    return start + 1


class _InterruptOnTerm:
    """SIGTERM raises KeyboardInterrupt in the main thread, like Ctrl-C, while a run is
    on (Ray's driver handler would exit without a word); restored afterwards."""

    def __init__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _resume_hint(writer: RunWriter, what: str) -> str:
    done = len(writer.rows)
    if (writer.dir / checkpoint.CHECKPOINT).is_file():
        return (f"{what} after {done} round(s); continue with: fedsim resume {writer.dir}")
    return f"{what} before the first round completed; nothing to resume"


def _record_stop(writer: RunWriter, err: BaseException, console: Console) -> None:
    """The manifest's status for a run that stopped early; the resume command if any."""
    interrupted = isinstance(err, KeyboardInterrupt)
    fields: dict[str, Any] = {
        "status": "interrupted" if interrupted else "failed",
        "rounds_completed": len(writer.rows),
        "error": ("interrupted" if interrupted else
                  str(err).splitlines()[0] if str(err) else type(err).__name__)}
    if isinstance(err, Refusal):
        fields["refused"] = {"round": err.round, "by": err.party, "reason": str(err),
                             **({"receipts": True} if isinstance(err, ReceiptConflict) else {})}
    if (writer.dir / checkpoint.CHECKPOINT).is_file():
        fields["resume"] = f"fedsim resume {writer.dir}"
        if not interrupted:
            console.print(f"[yellow]note:[/] {_resume_hint(writer, 'stopped')}",
                          highlight=False)
    writer.update_manifest(**fields)

"""What a run does around each round, as `fedsim.protocol.loop.Callback`s.

In the order ``fedsim run`` uses them: `Evaluate` scores the global model (its time
counts in the round's ``evaluate`` phase), `WriteRounds` rewrites rounds.parquet,
`SaveCheckpoint` replaces the checkpoint, `PublishTelemetry` updates the Ray metrics,
`ShowProgress` the progress line.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.errors import PartyLost
from fedsim.protocol.loop import Callback
from fedsim.protocol.records import RoundRecord

if TYPE_CHECKING:
    from rich.console import Console

    from fedsim.learning.evaluation import CentralEvaluator
    from fedsim.learning.selection import Selection
    from fedsim.protocol.evaluator import FederatedEvaluator
    from fedsim.protocol.federation import Federation
    from fedsim.run.progress import RoundProgress
    from fedsim.run.results import RunWriter
    from fedsim.run.telemetry import RunTelemetry


class Evaluate(Callback):
    """Score the global model every ``every`` rounds and after the last (0: last only)."""

    def __init__(self, evaluator: CentralEvaluator | FederatedEvaluator, *, every: int,
                 rounds: int) -> None:
        self.evaluator = evaluator
        self.every = every
        self.rounds = rounds

    def due(self, round_idx: int) -> bool:
        from fedsim.protocol.evaluation import evaluation_rounds

        return round_idx in evaluation_rounds(self.rounds, self.every)

    def after_round(self, federation: Federation, record: RoundRecord) -> RoundRecord | None:
        if not self.due(record.round):
            return None
        t0 = time.perf_counter()
        scored = self.evaluator.score_round(federation, record.round)
        if scored is None:  # a federated evaluation that could not hold every hospital
            return None
        metrics, extra = scored
        record = record.evaluated(metrics, time.perf_counter() - t0)
        return replace(record, extra={**record.extra, **extra}) if extra else record


class WriteRounds(Callback):
    """Append the round to rounds.parquet (rewritten atomically)."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        self.writer.round(record.row())


class SaveCheckpoint(Callback):
    """Replace the run's checkpoint after each round, after its row is written (a row
    without a checkpoint is run again on resume; never a checkpoint without its row)."""

    def __init__(self, run_dir: Path, selection: Selection | None = None) -> None:
        self.run_dir = run_dir
        self.selection = selection  # its snapshots go in the same file

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        from fedsim.run import checkpoint

        checkpoint.save(self.run_dir, federation, record.round + 1, self.selection)


class PublishTelemetry(Callback):
    def __init__(self, telemetry: RunTelemetry) -> None:
        self.telemetry = telemetry

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        self.telemetry.record(record)


class ShowProgress(Callback):
    def __init__(self, progress: RoundProgress) -> None:
        self.progress = progress

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        self.progress.update(record, record.extra.get("epsilon"))


class ShowWarnings(Callback):
    """Print the run's new warnings (drops, late clients, lost holders) after each round."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.shown: int | None = None

    def on_train_begin(self, federation: Federation) -> None:
        # What came before (caveats, a restart's own lines) was printed already.
        self.shown = len(federation.warnings)

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        for message in federation.warnings[self.shown:]:
            self.console.print(f"[yellow]warning:[/] {message}", highlight=False)
        self.shown = len(federation.warnings)


class Collect(Callback):
    """Keep every round's final record in ``records`` (across restarts)."""

    def __init__(self, records: list[RoundRecord]) -> None:
        self.records = records

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        self.records.append(record)


class RestartLostParties(Callback):
    """After a round that lost a training party (its clients were dropped), raise
    `PartyLost` so the runner restarts the parties before the next round. Last in the
    list: the round is written and checkpointed first."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        if federation.lost and record.round < self.rounds - 1:
            raise PartyLost(federation.lost[0], f"round {record.round}: "
                            f"{', '.join(federation.lost)} gone (its clients were dropped "
                            f"from the round)")

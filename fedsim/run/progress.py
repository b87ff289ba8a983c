"""Live progress for long runs: a rich bar on a terminal, one line per round otherwise."""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fedsim.protocol.records import RoundRecord

ENCRYPTION_PHASES = ("encode", "encrypt", "serialize", "verify", "partial_decrypt", "fuse")


INSECURE_LABEL = "INSECURE seeded DP noise"


def describe(record: RoundRecord, epsilon: float | None = None, *,
             insecure: bool = False) -> str:
    """One compact description of a finished round.

    With DP, both epsilons: against an observer of the released models and against the
    participants (coordinator, aggregator), who see who took part.
    """
    crypto = sum(record.phases.get(p, 0.0) for p in ENCRYPTION_PHASES)
    auc = f"{record.metrics.auc:.4f}" if record.metrics is not None else "-"
    parts = [f"{record.wall_s:6.2f}s"]
    if math.isfinite(record.loss):  # a DP run reports no training loss
        parts.append(f"loss {record.loss:.4f}")
    parts.append(f"AUC {auc}")
    if record.extra.get("skipped"):
        parts.append("skipped (too few clients sampled)")
    if crypto > 0:
        parts.append(f"crypto {100 * min(1.0, crypto / max(record.wall_s, 1e-9)):.0f}%")
    observer = record.extra.get("epsilon_observer")
    participants = record.extra.get("epsilon_participants")
    if observer is not None and participants is not None:
        parts.append(f"eps {participants:.2f} vs participants, {observer:.2f} vs observer")
    elif epsilon is not None:
        parts.append(f"eps {epsilon:.2f}")
    if insecure:
        parts.append(INSECURE_LABEL)
    if record.dropped:
        parts.append(f"dropped {','.join(record.dropped)}")
    return "  ".join(parts)


class RoundProgress:
    """Context manager: call `update(record)` after each round."""

    def __init__(self, total: int, console: Console | None = None, *, title: str = "rounds",
                 insecure: bool = False, start: int = 0):
        """``start``: rounds already done (a resumed run); the ETA counts only this
        session's rounds."""
        self.total = total
        self.insecure = insecure
        self.console = console or Console(stderr=True)
        self.title = title
        self.done = self.start = start
        self.t0 = time.perf_counter()
        self._bar: Progress | None = None

    def __enter__(self) -> RoundProgress:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=self.total, status="starting",
                                            completed=self.start)
        return self

    def update(self, record: RoundRecord, epsilon: float | None = None) -> None:
        self.done += 1
        status = describe(record, epsilon, insecure=self.insecure)
        if self._bar is not None:
            self._bar.update(self._task, advance=1, status=status)
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / (self.done - self.start) * (self.total - self.done)
        width = int(math.log10(max(self.total, 1))) + 1
        self.console.print(
            f"round {record.round + 1:>{width}}/{self.total}  {status}  ETA {eta:5.0f}s",
            highlight=False,
        )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def summary_table(report: dict, *, title: str) -> Table:
    """Final per-hospital and pooled test metrics as a rich table."""
    table = Table(title=title)
    columns = ("hospital", "n", "pos", "ROC AUC", "PR AUC", "bal. acc", "precision", "recall")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")

    def score(value: float | None) -> str:
        # metrics.json holds null where a score is undefined (a one-class test split).
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"

    def add(name: str, m: dict, style: str | None = None) -> None:
        table.add_row(name, str(m["n"]), str(m["positives"]),
                      *(score(m[k]) for k in ("auc", "pr_auc", "balanced_accuracy",
                                              "precision", "recall")), style=style)

    for name, m in sorted(report["hospitals"].items()):
        add(name, m)
    add("pooled", report["pooled"], style="bold")
    if report.get("evaluation") == "federated":
        bound = report["pooled"].get("auc_bound")
        table.caption = ("pooled from the hospitals' encrypted score histograms"
                         + (f" (ROC AUC within {bound:.1e})" if bound is not None else "")
                         + "; a hospital's own metrics stay with it unless it discloses them")
    return table

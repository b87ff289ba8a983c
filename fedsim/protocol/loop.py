"""The round loop, with callbacks around it (pfl-research's ``FederatedAlgorithm.run``).

`run_rounds` is the only loop over rounds in fedsim: ``fedsim run``, the sweep, every
benchmark and the many-clients workload go through it. What happens around a round
(scoring the model, writing the results, telemetry, the progress line, measuring CPU)
is a `Callback`; each ``after_round`` may return an amended record (the evaluation
callback adds the model's scores), which the later callbacks then see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedsim.protocol.records import RoundRecord

if TYPE_CHECKING:
    from fedsim.protocol.federation import Federation


class Callback:
    """Hooks around the round loop; each does nothing unless overridden."""

    def on_train_begin(self, federation: Federation) -> None:
        pass

    def on_round_begin(self, federation: Federation, round_idx: int) -> None:
        pass

    def after_round(self, federation: Federation, record: RoundRecord) -> RoundRecord | None:
        """Return a new record to replace ``record`` for later callbacks (or None)."""
        return None

    def on_train_end(self, federation: Federation, records: Sequence[RoundRecord]) -> None:
        pass


def run_rounds(
    federation: Federation,
    rounds: int,
    callbacks: Sequence[Callback] = (),
    *,
    start: int = 0,
) -> list[RoundRecord]:
    """Run rounds ``start .. rounds - 1`` with ``callbacks``; returns the final records."""
    for cb in callbacks:
        cb.on_train_begin(federation)
    records: list[RoundRecord] = []
    for r in range(start, rounds):
        for cb in callbacks:
            cb.on_round_begin(federation, r)
        record = federation.run_round(r)
        for cb in callbacks:
            record = cb.after_round(federation, record) or record
        records.append(record)
    for cb in callbacks:
        cb.on_train_end(federation, records)
    return records

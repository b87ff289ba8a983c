"""Federated evaluation: pooled metrics from the hospitals' summed score histograms.

In he mode the coordinator holds no hospital's validation or test rows. After a round
it asks every hospital to score its own validation and test split with the new global
model and to send, as one ciphertext batch signed for (run, ``evaluate``, round,
client), the two histograms `fedsim.learning.histograms.histogram` makes of them:
negatives and positives per public score bin, the summed log-loss and n. The aggregator
sums the batches; every hospital endorses the sum; the key holders check it as they
check a training sum (signatures, endorsements, re-added bytes, their budget) and, for
an evaluation, that it is the sum of *every* registered hospital: never a subset, so no
difference of two evaluations isolates one hospital. Only that sum is decrypted.

Counts must come back exact from an approximate (flooded) CKKS decryption, so each is
sent as digits (`fedsim.crypto.integers.CountCodec`); the log-loss sums are sent as
integers of `LOSS_UNIT`. The codec is derived by every party from public facts: the
context, the number of hospitals and ``evaluation.max_rows`` (the most rows one
hospital's split may have). The decision threshold is the Youden edge of the summed
validation histogram; thresholded metrics are exact at it, ROC AUC within the stated
``auc_bound`` (`fedsim.learning.histograms`).

What each party learns: the coordinator and the aggregator, the pooled histograms (so
the pooled metrics, the pooled n and prevalence of each split) and nothing of one
hospital (a hospital's own metrics are computed by that hospital and leave it only
when ``evaluation.disclose_hospitals`` is set); the key holders, nothing but the
ciphertexts and manifest they check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedsim.crypto.integers import CountCodec
from fedsim.errors import ProtocolError
from fedsim.learning.histograms import ScoreBins, histogram
from fedsim.learning.metrics import PROB_CLIP

LOSS_UNIT = 2.0**-10  # a hospital's summed log-loss is sent rounded to this (exact sum)
_MAX_ROW_LOSS = -math.log(PROB_CLIP)  # the log-loss of one row is at most this


def plan_digest(plan: Any) -> bytes:
    """A plan's digest (its type and fields), signed with every batch made by it."""
    from fedsim.crypto.identity import digest

    return digest(f"{type(plan).__module__}.{type(plan).__qualname__}|{plan!r}".encode())


def _bound(model: bytes, *facts: Any) -> bytes:
    from fedsim.crypto.identity import digest

    return digest(model + b"|".join(repr(f).encode() for f in facts))


def evaluation_rounds(rounds: int, every: int) -> tuple[int, ...]:
    """The rounds after which the global model is scored: every ``every`` and the last."""
    return tuple(r for r in range(rounds)
                 if r == rounds - 1 or (every > 0 and (r + 1) % every == 0))


@dataclass(frozen=True)
class EvaluationPlan:
    """Public facts every party derives the evaluation's encoding from."""

    kind: ClassVar[str] = "evaluate"  # the manifests and statements of its sums
    with_training: ClassVar[bool] = True  # opened beside the run's training sums
    purpose: ClassVar[str] = "federated evaluation"

    bins: ScoreBins
    contributors: int  # every registered hospital contributes to every evaluation
    max_rows: int  # the most rows of one hospital's validation or test split
    evaluations: int  # evaluation sums decrypted over the run
    # Record-level DP: the stddev of each pooled count's noise, and the hospitals whose
    # shares make it whole (each draws noise_stddev / sqrt(min_clients)); None: no noise.
    noise_stddev: float | None = None
    min_clients: int = 2

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> EvaluationPlan | None:
        """The run's plan, or None when the coordinator evaluates (plaintext, cohorts)."""
        e = cfg.evaluation
        if not e.federated_in(cfg.federation):
            return None
        return cls(ScoreBins(e.bins), num_clients, e.max_rows,
                   len(evaluation_rounds(cfg.federation.rounds, e.every)), e.noise_stddev,
                   cfg.federation.min_clients)

    @property
    def share_stddev(self) -> float:
        """The stddev of one hospital's noise share on each count."""
        return (self.noise_stddev or 0.0) / math.sqrt(self.min_clients)

    @property
    def offset(self) -> int:
        """Public offset on every noised count, so that it stays non-negative (a share
        below -offset, 14 share stddevs, has probability below 1e-44; it is clipped)."""
        return math.ceil(14 * self.share_stddev) if self.noise_stddev else 0

    def epsilon(self, evaluations: int, delta: float) -> float:
        """Epsilon at ``delta`` of ``evaluations`` noised histograms against whoever reads
        them: one patient moves one count by 1 (l2 sensitivity 1; n and the log-loss are
        not released under DP), Gaussian noise of stddev ``noise_stddev`` while at least
        ``min_clients`` hospitals' shares are honest (RDP, dp-accounting; the sum of
        discrete Gaussian shares is treated as Gaussian, as for the training noise)."""
        import dp_accounting

        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(self.noise_stddev), evaluations)
        return float(accountant.get_epsilon(delta))

    def bind(self, model: bytes) -> bytes:
        """Digest of ``model`` (a 32-byte `fedsim.crypto.identity.model_digest`) and
        this plan, which every batch of one sum signs: the key holders open only a sum
        whose batches name the same, so all hospitals encode alike and no hospital's
        values sit in slots of their own."""
        return _bound(model, self)

    @property
    def num_counts(self) -> int:
        """Integers per contribution: both splits' per-bin counts and n."""
        return 2 * (2 * self.bins.count + 1)

    def codecs(self, context: Any) -> tuple[CountCodec, CountCodec]:
        """The codecs of the counts and of the log-loss sums under ``context``."""
        counts = CountCodec.for_context(context, contributors=self.contributors,
                                        max_value=self.max_rows + 2 * self.offset)
        losses = CountCodec.for_context(
            context, contributors=self.contributors,
            max_value=math.ceil(self.max_rows * _MAX_ROW_LOSS / LOSS_UNIT))
        return counts, losses

    def num_values(self, context: Any) -> int:
        counts, losses = self.codecs(context)
        return counts.size(self.num_counts) + losses.size(2)

    def ciphertexts(self, context: Any) -> int:
        """Ciphertexts of one evaluation batch (and of its sum)."""
        return -(-self.num_values(context) // context.values_per_ciphertext)

    def encode(self, context: Any, val: np.ndarray, test: np.ndarray,
               noise: Any = None) -> np.ndarray:
        """The slot values of one hospital's two histograms (``histogram``'s layout);
        with DP, its noise share (``noise``: the hospital's secret source) on every
        count, n and the log-loss left out."""
        c = self.bins.count
        for h in (val, test):
            if h[-1] > self.max_rows:
                # No number in the text: a hospital's split size is its own.
                raise ProtocolError("a split has more rows than evaluation.max_rows; raise it")
        ints = np.concatenate([val[: 2 * c], val[-1:], test[: 2 * c], test[-1:]])
        loss = np.rint(np.array([val[-2], test[-2]]) / LOSS_UNIT)
        if self.noise_stddev:
            from fedsim.privacy.mechanisms.discrete import discrete_gaussian

            if noise is None:
                raise ProtocolError("a noised evaluation needs the hospital's noise source")
            shares = discrete_gaussian(noise, self.share_stddev, ints.size)
            ints = np.clip(ints + shares + self.offset, 0, self.max_rows + 2 * self.offset)
            ints[[2 * c, 4 * c + 1]] = self.offset  # n: not released under DP
            loss = np.zeros(2)
        counts, losses = self.codecs(context)
        return np.concatenate([counts.encode(ints), losses.encode(loss)])

    def decode(self, context: Any, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The summed validation and test histograms from a decrypted sum's values."""
        counts, losses = self.codecs(context)
        cut = counts.size(self.num_counts)
        ints = counts.decode(values[:cut]).astype(np.float64)
        loss = losses.decode(values[cut: cut + losses.size(2)]) * LOSS_UNIT
        c = self.bins.count
        if self.noise_stddev:  # noised counts, n their sum, no log-loss
            ints = np.maximum(ints - self.contributors * self.offset, 0)
            ints[2 * c] = ints[: 2 * c].sum()
            ints[4 * c + 1] = ints[2 * c + 1: 4 * c + 1].sum()
            loss = np.full(2, np.nan)
        out = []
        for k, part in enumerate((ints[: 2 * c + 1], ints[2 * c + 1:])):
            out.append(np.concatenate([part[: 2 * c], [loss[k]], part[-1:]]))
        return out[0], out[1]


def own_histograms(labels_probs: dict[str, tuple[np.ndarray, np.ndarray]],
                   bins: ScoreBins) -> dict[str, np.ndarray]:
    """A hospital's histogram of each of its splits (``{"val": (labels, probs), ...}``)."""
    return {split: histogram(labels, probs, bins)
            for split, (labels, probs) in labels_probs.items()}


class Evaluations:
    """A training party's side of the sums other than training (an evaluation of the
    model after a round, or a prediction on a query: ``kind``): its clients' signed
    batches and endorsements, with the signing keys of its `Contributions`.

    As for training, what a client agrees to it agrees to once: one batch of a kind per
    round, rounds strictly increasing, and one endorsement per kind and round, of a sum
    that holds its own batch.
    """

    def __init__(self, run_id: str, keys: dict[str, Any]) -> None:
        self.run_id = run_id
        self._keys = keys
        # (kind, client) -> (round, batch hex digest) / (round, sum digest)
        self._sent: dict[tuple[str, str], tuple[int, str]] = {}
        self._endorsed: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._plans: dict[tuple[str, str], bytes] = {}  # the plan digest it last signed

    def bundle(self, name: str, round_idx: int, payload: bytes, model: bytes, *,
               kind: str = "evaluate", plan: Any = None) -> Any:
        """``name``'s sealed batch of ``kind`` for ``round_idx``, signed for (run, kind,
        round, client, batch digest, model digest, plan digest): the plan digest sits
        where a training batch signs the noise commitment, and each key holder checks
        it against its own policy's plan."""
        from fedsim.crypto.identity import digest, statement
        from fedsim.protocol.schemes import Bundle

        last = self._sent.get((kind, name), (-1, ""))[0]
        if last >= round_idx:
            raise ProtocolError(f"client {name} refuses to {kind} round {round_idx}: it "
                                f"signed a batch to {kind} round {last} already")
        batch = digest(payload)
        planned = plan_digest(plan)
        signature = self._keys[name].sign(statement(self.run_id, round_idx, name, batch,
                                                    model, planned, kind=kind))
        self._sent[(kind, name)] = (round_idx, batch.hex())
        self._plans[(kind, name)] = planned
        return Bundle(((name,),), (payload,), (signature,), model)

    def endorse(self, round_idx: int, batches: dict[str, str], *, kind: str = "evaluate"
                ) -> dict[str, bytes]:
        """Each of this party's clients in ``batches`` signs that the ``kind`` sum of
        ``round_idx`` is exactly these batches (refusing another sum of that round)."""
        from fedsim.crypto.identity import endorsement, sum_digest

        summed = sum_digest(batches)
        mine = sorted(set(batches).intersection(self._keys))
        for client in mine:
            sent_round, sent = self._sent.get((kind, client), (-1, ""))
            if sent_round != round_idx or batches[client] != sent:
                raise ProtocolError(f"client {client} refuses to endorse the {kind} sum of "
                                    f"round {round_idx}: the sum does not hold its batch")
            endorsed_round, endorsed = self._endorsed.get((kind, client), (-1, summed))
            if endorsed_round == round_idx and endorsed != summed:
                raise ProtocolError(f"client {client} refuses to endorse the {kind} sum of "
                                    f"round {round_idx} as another sum")
        out = {}
        for client in mine:
            self._endorsed[(kind, client)] = (round_idx, summed)
            out[client] = self._keys[client].sign(
                endorsement(self.run_id, round_idx, client, summed,
                            self._plans[(kind, client)], kind=kind))
        return out

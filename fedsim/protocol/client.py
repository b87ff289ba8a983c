"""Training parties: a hospital (this module) or a cohort of many simulated clients
(`fedsim.protocol.cohort`), behind one interface the round loop drives.

A training party holds the data of the clients it simulates for the whole run and
answers ``train(round, global_params, clients, context)`` with two objects: a report
per client (`UpdateMeta`, or `Dropped` with the reason) and a `Bundle` of the payloads
of the clients not dropped, which goes to the aggregator as one object, without passing
through the coordinator. What happens to a client's delta after training is shared by every kind
of party (`Contributions`): the run's client steps in order (privacy, weighting), then
the run's encoder (a float64 vector, or a sealed ciphertext batch).

`Hospital` is a plain class; `actors.RayBackend` places it on Ray unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from jax.flatten_util import ravel_pytree

from fedsim.aggregate.steps import ClientContext, Pipeline, RoundContext, Update
from fedsim.config import RunConfig
from fedsim.crypto.identity import model_digest
from fedsim.crypto.memory import release_memory
from fedsim.data import ClientData
from fedsim.errors import FedSimError, ProtocolError
from fedsim.learning.histograms import ScoreBins
from fedsim.learning.model import build_model, init_params
from fedsim.learning.train import local_steps
from fedsim.privacy.plan import trainer_for
from fedsim.privacy.randomness import NoiseSource
from fedsim.protocol.backend import Deferred
from fedsim.protocol.evaluation import EvaluationPlan, Evaluations
from fedsim.protocol.schemes import Bundle, Encoder, Encoding
from fedsim.seeding import client_key, stream


@dataclass(frozen=True)
class ModelShape:
    """What every party needs to build the same model: data dimensions."""

    vocab_size: int
    num_numeric: int
    max_codes: int


@dataclass(frozen=True)
class UpdateMeta:
    """What a client reports to the coordinator besides its payload: who, the round, the
    payload's size and its phases' times. Nothing computed from its data (its loss,
    update norm, sample count and weight travel inside the payload, summed:
    `fedsim.aggregate.statistics`)."""

    client: str
    round: int
    bytes_up: int
    timings: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0


@dataclass(frozen=True)
class Dropped:
    """A client whose update cannot enter this round, and why (one line)."""

    client: str
    reason: str


Report = UpdateMeta | Dropped


class Contributions:
    """A party's shared tail of local work: delta -> client steps -> encoded payload,
    signed for the key holders when the scheme signs.

    Each simulated client has its own Ed25519 signing key, made here from the OS CSPRNG
    and never leaving this process; `identities` gives the public keys to register.

    What a client agrees to, it agrees to once, so the coordinator cannot replay a
    party's memory against it:

    * the encoding: handed over once at set-up, and of the run's mode (``he``: nothing
      is encoded before it arrives, and no later encoding, plaintext or under another
      key, replaces it);
    * a signed batch per round, rounds strictly increasing (no second batch of a round
      the client already signed, no older round: the difference of two batches of one
      round, each summed with the same others, would be one client's update);
    * one endorsement per round (`endorse`): the exact batches summed and the noise
      commitment it signed its batch with.
    """

    def __init__(self, pipeline: Pipeline, randomness: NoiseSource, run_id: str,
                 clients: Sequence[str], *, mode: str = "plaintext",
                 private: bool = False) -> None:
        """``private``: client-level DP is on, so a client's contribution (or its
        absence) must not depend on its data outside the noised sum."""
        from fedsim.crypto.identity import SigningKey

        self.pipeline = pipeline
        self.randomness = randomness  # the party's secret draws (DP noise shares)
        self.private = private
        self.run_id = run_id
        self.mode = mode
        self.encoder: Encoder | None = None  # the run's, from `use_encoding` at set-up
        self._keys = {name: SigningKey() for name in clients}
        self.evaluations = Evaluations(run_id, self._keys)
        # client -> (round, batch hex digest, noise commitment) of its newest signed batch
        self._sent: dict[str, tuple[int, str, bytes]] = {}
        self._endorsed: dict[str, tuple[int, bytes]] = {}  # client -> (round, sum digest)
        self._signed_from: dict[str, bytes] = {}  # client -> model of its newest batch
        # Models its clients endorsed a sum of batches trained from: a sum that can be
        # decrypted. A batch never endorsed (a round skipped, or lost before its
        # endorsements) cannot be, so training again from its model is no second release.
        self._models: set[bytes] = set()

    def identities(self) -> dict[str, bytes]:
        """Each client's public signing key, for the key holders' roster."""
        return {name: key.public for name, key in self._keys.items()}

    def use_encoding(self, encoding: Encoding) -> None:
        """The run's encoding, accepted once and only of the run's mode."""
        if self.encoder is not None:
            raise ProtocolError("a second encoding refused: the run's encoding is fixed at "
                                "set-up")
        if encoding.mode != self.mode:
            raise ProtocolError(f"a {encoding.mode} encoding refused in a {self.mode} run")
        self.encoder = encoding.encoder(self.pipeline.slots)

    def check_round(self, round_idx: int, clients: Sequence[str], model: bytes) -> None:
        """Refuse to train ``clients`` twice in one call, for a round not newer than one
        they signed for, or from a model (`fedsim.crypto.identity.model_digest`) they
        endorsed a sum for before (the exact cross-round difference of a frozen model)."""
        if self.encoder is None:
            raise ProtocolError(f"client {clients[0]} refuses to train before the run's "
                                f"{self.mode} encoding is set up")
        if len(set(clients)) != len(clients):
            raise ProtocolError(f"asked to train {list(clients)}: a client listed twice")
        if not self.encoder.signs:
            return
        stale = [c for c in clients if self._sent.get(c, (-1,))[0] >= round_idx]
        if stale:
            raise ProtocolError(f"client {stale[0]} refuses to train round {round_idx}: it "
                                f"signed a batch for round {self._sent[stale[0]][0]} already")
        if model in self._models:
            raise ProtocolError(f"client {clients[0]} refuses to train round {round_idx} "
                                "from a model and round parameters it trained from before "
                                "(and endorsed the sum of)")

    def make(self, name: str, index: int, num_examples: int, delta: np.ndarray, loss: float,
             context: RoundContext, train_s: float) -> tuple[Report, Any]:
        """One client's report and payload (None when dropped)."""
        assert self.encoder is not None  # check_round ran first
        if not np.all(np.isfinite(delta)):
            if self.private:
                # Under client-level DP, dropping would tell the coordinator a bit of the
                # client's data (and, with distributed noise, change the noise): the
                # client contributes a zero update with its noise share instead.
                delta, loss = np.zeros_like(delta), 0.0
            else:
                return Dropped(name, f"client {name}: local training diverged (non-finite "
                                     f"update in round {context.round}); lower train.lr"), None
        ctx = ClientContext(name, index, context.round, num_examples, self.randomness,
                            context.params)
        update = Update(delta, metrics={"update_norm": float(np.linalg.norm(delta)),
                                        "loss": float(loss)})
        try:
            update = self.pipeline.client(update, ctx)
            payload, timings = self.encoder.encode(update, client=name)
        except FedSimError as err:
            return Dropped(name, str(err)), None
        meta = UpdateMeta(client=name, round=context.round, bytes_up=Encoder.size(payload),
                          timings={"train": train_s, **timings}, finished_at=time.time())
        return meta, payload

    def bundle(self, made: Sequence[tuple[Report, Any]], round_idx: int,
               commitment: Deferred, model: bytes = b"") -> tuple[tuple[Report, ...], Bundle]:
        """The party's answer: every report, and the payloads of the clients kept.

        When the encoder signs, each client signs its batch for this run and round, the
        model it trained from (``model``: `fedsim.crypto.identity.model_digest`) and the
        aggregator's noise commitment, which it waits for only now (the noise is drawn
        while the clients train): a batch never leaves the party before the noise it
        will be summed with is fixed.
        """
        from fedsim.crypto.identity import digest, statement

        assert self.encoder is not None
        kept = [(r.client, p) for r, p in made if isinstance(r, UpdateMeta)]
        bundle = self.encoder.bundle([c for c, _ in kept], [p for _, p in kept])
        if self.encoder.signs and kept:
            seen = commitment.get()
            digests = {c: digest(p) for c, p in kept}
            bundle = replace(bundle, model=model, signatures=tuple(
                self._keys[c].sign(statement(self.run_id, round_idx, c, digests[c], model,
                                             seen))
                for c, _ in kept))
            self._sent.update({c: (round_idx, digests[c].hex(), seen) for c, _ in kept})
            self._signed_from.update({c: model for c, _ in kept})
        # The encryption's freed temporaries go back before the next round.
        release_memory(sum(Encoder.size(p) for _, p in kept))
        return tuple(r for r, _ in made), bundle

    def endorse(self, round_idx: int, batches: Mapping[str, str]) -> dict[str, bytes]:
        """Each of this party's clients among the keys of ``batches`` (contributor ->
        batch hex digest, as in the round's manifest) signs that round ``round_idx``'s
        sum is exactly these batches and the noise it saw committed
        (`fedsim.crypto.identity.endorsement`).

        A client endorses only a round it sent a signed batch in, only with that batch,
        and only one sum per round: asked again for the same sum it signs again (t-of-n
        may ask other holders), for another it refuses (`ProtocolError`), so no two
        different sums of one round can both be decrypted. All of a party's clients
        endorse, or none.
        """
        from fedsim.crypto.identity import endorsement, sum_digest

        summed = sum_digest(batches)
        mine = sorted(set(batches).intersection(self._keys))
        for client in mine:
            sent_round, sent_digest, _ = self._sent.get(client, (-1, "", b""))
            if sent_round != round_idx:
                raise ProtocolError(f"client {client} refuses to endorse round {round_idx}: "
                                    "it sent no batch in that round (or a newer one since)")
            if batches[client] != sent_digest:
                raise ProtocolError(f"client {client} refuses to endorse round {round_idx}: "
                                    "the sum lists another batch as its own")
            endorsed_round, endorsed = self._endorsed.get(client, (-1, summed))
            if endorsed_round == round_idx and endorsed != summed:
                raise ProtocolError(f"client {client} refuses to endorse round {round_idx} "
                                    "as another sum than the one it endorsed")
        signatures: dict[str, bytes] = {}
        for client in mine:
            self._endorsed[client] = (round_idx, summed)
            self._models.add(self._signed_from[client])
            signatures[client] = self._keys[client].sign(
                endorsement(self.run_id, round_idx, client, summed, self._sent[client][2]))
        return signatures


class Hospital:
    """One hospital's local work. Holds its data shard for the whole run."""

    def __init__(
        self,
        cfg: RunConfig,
        data: ClientData,
        *,
        index: int,
        shape: ModelShape,
        pipeline: Pipeline,
        run_id: str,
        privacy: Any = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.index = index
        self.model = build_model(cfg.model, vocab_size=shape.vocab_size,
                                 num_numeric=shape.num_numeric)
        template = init_params(self.model, key=client_key(cfg.seed, 0), max_codes=shape.max_codes)
        _, self._unravel = ravel_pytree(template)
        self.steps = local_steps(cfg.train, len(data.train))
        self.randomness = NoiseSource.for_run(cfg)
        self.trainer = trainer_for(cfg, privacy, self.model, data,
                                   self.randomness.draw("selection", index))
        self.contributions = Contributions(pipeline, self.randomness, run_id, [data.name],
                                           mode=cfg.federation.mode,
                                           private=cfg.privacy.client_level)

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def num_examples(self) -> int:
        return len(self.data.train)

    def identities(self) -> dict[str, bytes]:
        return self.contributions.identities()

    def endorse(self, round_idx: int, batches: Mapping[str, str]) -> dict[str, bytes]:
        return self.contributions.endorse(round_idx, batches)

    def use_encoding(self, encoding: Encoding) -> None:
        """Encode every later contribution with ``encoding`` (e.g. seal it)."""
        self.contributions.use_encoding(encoding)

    def train(self, round_idx: int, global_flat: np.ndarray, clients: Sequence[str],
              context: RoundContext, commitment: Deferred) -> tuple[Any, ...]:
        """Train on the global parameters: ``(reports, bundle)`` for this one hospital."""
        if tuple(clients) != (self.name,):
            raise ProtocolError(f"hospital {self.name} asked to train {list(clients)}")
        start = np.asarray(global_flat, np.float32)  # what training starts from
        model = model_digest(start, context.params)
        self.contributions.check_round(round_idx, clients, model)
        t0 = time.perf_counter()
        params = self._unravel(start)
        rng = stream(self.cfg.seed, "batches", round_idx, self.index)
        inputs = self.trainer.inputs(rng, self.data.train, self.steps, seed=self.cfg.seed,
                                     round_idx=round_idx, index=self.index,
                                     secret=self.randomness.draw("dp-sgd", round_idx,
                                                                 self.index))
        new_params, loss = self.trainer.train(params, inputs)
        new_flat, _ = ravel_pytree(new_params)
        delta = np.asarray(new_flat, np.float64) - np.asarray(global_flat, np.float64)
        made = self.contributions.make(self.name, self.index, self.num_examples, delta, loss,
                                       context, time.perf_counter() - t0)
        return self.contributions.bundle([made], round_idx, commitment, model)

    # ---- federated evaluation (`fedsim.protocol.evaluation`) ----------------------------
    def evaluate(self, round_idx: int, global_flat: np.ndarray, plan: EvaluationPlan
                 ) -> tuple[Bundle, dict[str, Any]]:
        """Score this hospital's validation and test rows with the model after round
        ``round_idx``: the sealed, signed batch of their histograms, and what this
        hospital tells the coordinator in plaintext (the seconds it took, and its own
        metrics only when its config sets ``evaluation.disclose_hospitals``)."""
        from fedsim.learning.metrics import evaluate, roc_points, youden_threshold
        from fedsim.learning.train import predict
        from fedsim.protocol.evaluation import own_histograms

        encoder = self.contributions.encoder
        if encoder is None or not hasattr(encoder, "seal_values"):
            raise ProtocolError(f"hospital {self.name} refuses to evaluate: federated "
                                "evaluation runs only under the run's he encoding")
        own = self.cfg.evaluation
        if type(plan) is not EvaluationPlan or type(plan.bins) is not ScoreBins or \
                (plan.bins, plan.max_rows, plan.noise_stddev) != \
                (ScoreBins(own.bins), own.max_rows, own.noise_stddev) or \
                plan.min_clients != self.cfg.federation.min_clients:
            raise ProtocolError(f"hospital {self.name} refuses an evaluation plan outside "
                                "its config (evaluation.bins, max_rows, noise_stddev)")
        t0 = time.perf_counter()
        start = np.asarray(global_flat, np.float32)
        params = self._unravel(start)
        scored = {split: (self.data.split(split).labels,
                          predict(self.model, params, self.data.split(split)))
                  for split in ("val", "test")}
        hist = own_histograms(scored, plan.bins)
        t1 = time.perf_counter()
        values = plan.encode(encoder.context, hist["val"], hist["test"],
                             noise=self.randomness.draw("eval-noise", round_idx, self.index))
        payload = encoder.seal_values(values, contributors=plan.contributors)
        bundle = self.contributions.evaluations.bundle(
            self.name, round_idx, payload, plan.bind(model_digest(start, {})), plan=plan)
        said: dict[str, Any] = {"score": t1 - t0, "encrypt": time.perf_counter() - t1}
        if self.cfg.evaluation.disclose_hospitals and len(self.data.test):
            (val_y, val_p), (y, p) = scored["val"], scored["test"]
            threshold = youden_threshold(val_y, val_p) if len(val_y) else 0.5
            said["metrics"] = {**evaluate(y, p, threshold=threshold).as_dict(),
                               "roc": roc_points(y, p)}
        return bundle, said

    def endorse_evaluation(self, round_idx: int, batches: Mapping[str, str], *,
                           kind: str = "evaluate") -> dict[str, bytes]:
        return self.contributions.evaluations.endorse(round_idx, dict(batches), kind=kind)

    def predict(self, global_flat: np.ndarray, query: Any, plan: Any, fine_tune: bool
                ) -> tuple[Bundle, dict[str, float]]:
        """Score a query (`fedsim.protocol.prediction.score_query`)."""
        from fedsim.protocol.prediction import score_query

        return score_query(self, global_flat, query, plan, fine_tune)

    def summarise(self, plan: Any) -> tuple[Bundle, dict[str, float]]:
        """Sealed sums of this hospital's training rows (`fedsim.protocol.summary`)."""
        from fedsim.protocol.summary import seal_summary

        return seal_summary(self, plan, self.cfg.data.statistics_min_rows)

    def unravel(self, flat: np.ndarray) -> Any:
        """The model's parameter tree of a flat vector."""
        return self._unravel(flat)

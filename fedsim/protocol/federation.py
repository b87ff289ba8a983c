"""The coordinator: one run's server side, and one round as numbered steps.

`Federation` owns the global model, the server optimizer, the run's ordered steps
(privacy, weighting: `fedsim.aggregate.steps`), its scheme (plaintext or threshold
CKKS: `fedsim.protocol.schemes`) and its population of training parties (hospitals or
cohorts: `fedsim.protocol.population`). The same `run_round` drives every kind of
party over any `fedsim.protocol.backend.Backend`; `fedsim.protocol.loop.run_rounds`
runs rounds with callbacks (evaluation, writer, telemetry, progress).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.flatten_util import ravel_pytree

from fedsim.aggregate.optimizers import make_server_optimizer
from fedsim.aggregate.server import ServerState, server_init, server_update
from fedsim.aggregate.statistics import TrainingStatistics
from fedsim.aggregate.steps import (
    Aggregate,
    Pipeline,
    RoundContext,
    ServerContext,
    Step,
    split_payload,
)
from fedsim.aggregate.weighting import SampleWeighting
from fedsim.config import RunConfig
from fedsim.data import FederatedDataset
from fedsim.errors import FedSimError, PartyLost, ProtocolError, RoundFailed
from fedsim.learning.model import build_model, count_params, init_params
from fedsim.privacy.plan import plan_privacy
from fedsim.privacy.randomness import NoiseSource
from fedsim.protocol.aggregator import Aggregator
from fedsim.protocol.backend import Backend, PartySpec
from fedsim.protocol.client import Dropped, ModelShape, UpdateMeta
from fedsim.protocol.evaluation import EvaluationPlan
from fedsim.protocol.manifest import Manifest
from fedsim.protocol.population import BUILDERS
from fedsim.protocol.records import CLIENT_PHASES, PhaseTimer, RoundRecord
from fedsim.protocol.sampling import max_contributors, sample_clients
from fedsim.protocol.schemes import AGGREGATOR, scheme_for
from fedsim.seeding import client_key


class Federation:
    """One run's server side: parties, global state and the round."""

    def __init__(
        self, cfg: RunConfig, dataset: FederatedDataset, backend: Backend, *, run_id: str,
        extra_steps: Sequence[Step] = (), hospital_data: FederatedDataset | None = None,
        evaluation: Any = None,
    ) -> None:
        """``extra_steps`` run first on every client (last on the server), before the
        privacy and weighting steps. ``hospital_data``: the hospitals' parties' rows when
        ``dataset`` (the coordinator's) holds none (`FederatedDataset.withheld`).
        ``evaluation``: the plan of the other sums opened (default: the config's)."""
        fed = cfg.federation
        self.cfg = cfg
        self.dataset = dataset
        self.backend = backend
        self.run_id = run_id
        self.names = [c.name for c in dataset.clients]
        if fed.clients_per_round > len(self.names):
            raise ProtocolError(f"federation.clients_per_round is {fed.clients_per_round} "
                                f"but the data has only {len(self.names)} hospitals")
        self.shape = ModelShape(dataset.vocab_size, dataset.num_numeric, dataset.max_codes)
        self.model = build_model(cfg.model, vocab_size=self.shape.vocab_size,
                                 num_numeric=self.shape.num_numeric)
        params0 = init_params(self.model, key=client_key(cfg.seed, 0),
                              max_codes=self.shape.max_codes)
        flat0, self.unravel = ravel_pytree(params0)
        self.num_params = count_params(params0)
        opt = fed.server_optimizer
        self.server_opt = make_server_optimizer(opt.name, dict(opt.options))
        self.state: ServerState = server_init(self.server_opt, np.asarray(flat0))
        sizes = [len(c.train) for c in dataset.clients]
        # Public normaliser: keeps every weight <= 1/m, so weighted sums stay bounded.
        self.weight_norm = float(fed.clients_per_round * max(sizes))
        self.privacy = plan_privacy(cfg, len(self.names), sizes, list(self.names))
        # Without DP, mean loss and update norm travel in reserved slots (never in clear).
        self.pipeline = Pipeline((*extra_steps, *(
            self.privacy.steps(self.weight_norm) if self.privacy
            else (SampleWeighting(self.weight_norm), TrainingStatistics()))))
        self.step_states = self.pipeline.init()
        self.population = BUILDERS[fed.clients](cfg, hospital_data or dataset, self.shape,
                                                self.pipeline, self.privacy, run_id)
        # Poisson sampling may draw more than m: the sum is sized for the tail's cap.
        self.max_contributors = max_contributors(cfg, len(self.names))
        self.evaluation = evaluation or EvaluationPlan.from_config(cfg, len(self.names))
        self.scheme = scheme_for(cfg, num_params=self.num_params, slots=self.pipeline.slots,
                                 max_contributors=self.max_contributors, evaluation=self.evaluation)
        self.warnings: list[str] = []
        # (round, contributors) as a round releases them: charged on resume if lost.
        self.on_open: Callable[[int, tuple[str, ...]], None] | None = None
        self.handed: list[str] = []  # this round's clients whose updates were released
        self.late: list[str] = []  # this round's clients dropped at the round deadline
        self.lost: list[str] = []  # this round's training parties whose process is gone
        self.restarted = ""  # set by the runner on the first round after a restart
        self._holders_lost: tuple[str, ...] = ()

    # ------------------------------------------------------------------ set-up
    def parties(self) -> list[PartySpec]:
        """The parties of this run, in start order."""
        aggregator = PartySpec(AGGREGATOR, Aggregator,
                               (self.run_id, self.pipeline, self.num_params,
                                NoiseSource.for_run(self.cfg)),
                               resources=self.cfg.resources.aggregator, kind="aggregator")
        noise_batches = 1 if self.pipeline.adds_noise else 0
        return [*self.population.parties, aggregator,
                *self.scheme.parties(self.cfg, self.run_id, noise_batches=noise_batches)]

    def setup(self) -> None:
        """Start every party, run the scheme's set-up (key ceremony) and hand out its
        encoding to the training parties and the aggregator."""
        self.backend.start(self.parties())
        bound = self.cfg.crypto.update_bound
        if self.privacy is not None and self.privacy.update_bound is not None:
            bound = self.privacy.update_bound
        # Weights are at most 1/m each; up to max_contributors of them may be summed.
        headroom = self.max_contributors / self.cfg.federation.clients_per_round
        encoding = self.scheme.setup(self.backend, self.population.party_roles,
                                     update_bound=bound,
                                     noise_parts=(2 if self.pipeline.adds_noise else 1)
                                     * max(headroom, 1.0))
        handles = [self.backend.call(role, "use_encoding", encoding)
                   for role in (*self.population.party_roles, AGGREGATOR)]
        for h in handles:
            self.backend.get(h)

    # ------------------------------------------------------------------ one round
    def run_round(self, round_idx: int) -> RoundRecord:
        """Run one round end to end and return its record (scores come from callbacks)."""
        timer = PhaseTimer()
        b = self.backend

        # Step 1: sample clients; the round's public parameters; put the global model once.
        # A Poisson round sampled below min_clients (or above the sum's cap) releases
        # nothing: it is skipped and accounted, never aborting the run.
        sampled = sample_clients(self.cfg, self.names, round_idx)
        if not self.cfg.federation.min_clients <= len(sampled) <= self.max_contributors:
            return self._skipped(round_idx, timer, len(sampled))
        self._need_quorum(round_idx, len(sampled), "sampled")
        context = RoundContext(round_idx, self.pipeline.round_params(self.step_states))
        global_ref = b.put(self.state.params)

        # Step 2: the aggregator opens the round's sum, not awaited: when it places DP
        # noise it draws and encodes it now, while the clients train, and commits to it.
        opened, noise_h = b.call(AGGREGATOR, "begin", context, num_returns=2)

        # Step 3: sampled clients train, apply the client steps and encode (and in he
        # sign each batch with the noise commitment, which they wait for only then);
        # each party's bundle goes straight to the aggregator, which adds as they arrive.
        groups = self.population.groups(sampled)
        metas, adds, bundles, dropped = self._train(round_idx, groups, global_ref, context,
                                                    b.defer(opened))

        # Step 4: the aggregator closes the sum (adding its noise) and writes the manifest.
        # Asked for at once (an actor runs its calls in order); read once the adds have
        # been checked for a quorum. A round whose begin failed refuses every add.
        manifest_h, aggregate_h, seconds_h = b.call(AGGREGATOR, "finish", num_returns=3)
        arrivals = self._accepted(round_idx, b.get(adds), metas, dropped)
        if len(metas) < self.cfg.federation.min_clients:
            b.get(opened)  # raises begin's own error, if that is why
            return self._short(round_idx, timer, len(metas), dropped)
        manifest, seconds = b.get([manifest_h, seconds_h])
        timer.add("aggregate", seconds["aggregate"])
        timer.add("dp_noise", seconds["dp_noise"])

        # Step 5: open the aggregate: read it (plaintext), or (he) have the contributors
        # endorse the round's sum (its batches), once each, and the key holders check the
        # signed batches and endorsements, re-add the batches and partially decrypt their
        # own sum.
        endorsements = {}
        if self.scheme.endorsed:
            with timer.phase("verify"):
                endorsements = self._endorsements(round_idx, groups, manifest)
        contributors = tuple(manifest.contributors)
        flat = self.scheme.open(b, manifest, aggregate_h, timer, noise=noise_h,
                                bundles=bundles, endorsements=endorsements,
                                released=lambda: self._released(round_idx, contributors))
        aggregate = split_payload(flat, self.num_params, self.pipeline.slots,
                                  manifest.contributors)

        # Step 6: server steps in reverse order (average, account, adapt the clip bound),
        # then the server optimizer.
        with timer.phase("server_update"):
            server_ctx = ServerContext(round_idx, manifest.contributors, None,
                                       context.params)
            aggregate, self.step_states = self.pipeline.server(aggregate, self.step_states,
                                                               server_ctx)
            self.state = server_update(self.server_opt, self.state, aggregate.vector)
        return self._record(round_idx, timer, sampled, metas, arrivals, dropped, manifest,
                            aggregate)

    def _skipped(self, round_idx: int, timer: PhaseTimer, count: int) -> RoundRecord:
        m, cap = self.cfg.federation.min_clients, self.max_contributors
        why = f"below min_clients {m}" if count < m else f"above the sum's cap {cap}"
        self.warnings.append(f"round {round_idx}: skipped: {count} client(s) sampled, {why}")
        return self._unapplied(round_idx, timer, ())

    def _unapplied(self, round_idx: int, timer: PhaseTimer | None, charged: Sequence[str],
                   dropped: Sequence[str] = (), **extra: Any) -> RoundRecord:
        """The record of a round whose sum never reaches the model (the round counts as
        skipped); the privacy ledger charges ``charged``, whose data was released."""
        ctx = ServerContext(round_idx, tuple(charged))
        self.step_states = self.pipeline.charged(self.step_states, ctx)
        metrics, self.step_states = self.pipeline.skipped(self.step_states, ctx)
        return RoundRecord(round=round_idx, wall_s=timer.elapsed() if timer else 0.0,
                           phases=dict(timer.phases) if timer else {}, clients=(),
                           dropped=tuple(sorted(dropped)), bytes_up=0, bytes_down=0,
                           loss=float("nan"),
                           extra={"skipped": 1.0, **extra, **self._insecure, **metrics})

    def lost_release(self, round_idx: int, contributors: Sequence[str]) -> RoundRecord:
        """A round decrypted before a fault whose result was never applied: its privacy
        cost is charged to the ledger (the coordinator may have seen it), the model is
        unchanged, and the round counts as skipped."""
        self.warnings.append(f"round {round_idx}: released (decrypted, or read by the "
                             "aggregator in plaintext) before the run stopped and not "
                             "applied; charged to the privacy ledger, not repeated")
        return self._unapplied(round_idx, None, contributors, lost_release=1.0)

    @property
    def insecure(self) -> bool:
        """True for a DP run made with the insecure seeded-noise switch."""
        return self.privacy is not None and not self.privacy.secret

    @property
    def _insecure(self) -> dict[str, float]:
        """A column on every row of a run made with the insecure seeded-noise switch."""
        return {"insecure_seeded_noise": 1.0} if self.insecure else {}

    def _released(self, round_idx: int, clients: tuple[str, ...]) -> None:
        self.handed = list(clients)
        if self.on_open is not None:
            self.on_open(round_idx, clients)

    def _need_quorum(self, round_idx: int, count: int, what: str) -> None:
        m = self.cfg.federation.min_clients
        if count < m:
            raise ProtocolError(f"round {round_idx}: {count} client(s) {what}, "
                                f"min_clients is {m}")

    def _short(self, round_idx: int, timer: PhaseTimer, count: int,
               dropped: list[str]) -> RoundRecord:
        """A round with fewer than min_clients valid updates, by
        ``federation.on_short_round``: ``fail`` (`ProtocolError`), ``retry`` (`RoundFailed`:
        the runner restarts the parties and runs it again; only when late or lost
        parties caused it, else it fails) or ``skip`` (nothing is opened; in plaintext the
        updates the aggregator read are charged)."""
        m, policy = self.cfg.federation.min_clients, self.cfg.federation.on_short_round
        last = f"; last problem: {self.warnings[-1]}" if self.warnings else ""
        message = (f"round {round_idx}: only {count} valid update(s) "
                   f"({', '.join(dropped)} dropped); min_clients is {m}{last}")
        if policy == "retry" and (self.late or self.lost):
            raise RoundFailed("quorum", message)
        if policy != "skip":  # fail, or a shortfall a retry would only repeat
            raise ProtocolError(message)
        self.warnings.append(f"round {round_idx}: skipped (federation.on_short_round: skip): "
                             f"only {count} valid update(s), min_clients is {m}")
        # In plaintext the aggregator has read the updates handed over: they are charged.
        return self._unapplied(round_idx, timer, self.handed, dropped,
                               late=",".join(sorted(self.late)))

    def _train(self, round_idx: int, groups: dict[str, list[str]], global_ref: Any,
               context: RoundContext, commitment: Any
               ) -> tuple[dict[str, UpdateMeta], list[Any], list[Any], list[str]]:
        """Step 3: every training party trains its sampled clients; payloads stream on.

        A party's bundle of payloads goes to the aggregator as soon as the party reports,
        as a handle: it never passes through the coordinator. A client that fails, or whose party is
        lost, is dropped with a warning naming it. Returns the reports, the aggregator's
        pending ``add_many`` calls, the bundles' handles and the dropped clients.
        """
        b = self.backend
        self.late, self.lost, self.handed = [], [], []
        pending = {}
        for role, clients in groups.items():
            reports_h, payloads_h = b.call(role, "train", round_idx, global_ref, clients,
                                           context, commitment, num_returns=2)
            pending[reports_h] = (role, clients, payloads_h)
        metas: dict[str, UpdateMeta] = {}
        dropped: list[str] = []
        adds, bundles = [], []
        waiting = list(pending)
        limit = self.cfg.federation.round_timeout_s
        deadline = None if limit is None else time.monotonic() + limit
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, waiting = b.wait(waiting, timeout=left)
            if not ready:  # the deadline passed: whoever has not reported is late
                for h in waiting:
                    for name in pending[h][1]:
                        self.late.append(name)
                        self._drop(round_idx, name, f"no update within the round deadline "
                                   f"(federation.round_timeout_s {limit:g})", dropped)
                break
            for h in ready:
                role, clients, payloads = pending[h]
                try:
                    reports = b.get(h)
                except Exception as err:  # a lost actor or a failed party: drop its clients
                    if isinstance(err, PartyLost):
                        self.lost.append(role)
                    what = str(err) if isinstance(err, FedSimError) else type(err).__name__
                    for name in clients:
                        self._drop(round_idx, name, what, dropped)
                    continue
                for report in reports:
                    if isinstance(report, Dropped):
                        self._drop(round_idx, report.client, report.reason, dropped)
                    else:
                        metas[report.client] = report
                if any(isinstance(r, UpdateMeta) for r in reports):
                    if not self.cfg.federation.encrypted:  # the aggregator reads them
                        self._released(round_idx, (*self.handed, *(
                            r.client for r in reports if isinstance(r, UpdateMeta))))
                    adds.append(b.call(AGGREGATOR, "add_many", payloads))
                    bundles.append(payloads)
        return metas, adds, bundles, dropped

    def _endorsements(self, round_idx: int, groups: dict[str, list[str]],
                      manifest: Manifest) -> dict[str, bytes]:
        """Every contributor's signature of the round's sum: the manifest's batches (he).

        A party lost since it trained takes its clients' endorsements with it: their
        batches are in the sum, so the round cannot be decrypted and ends here.
        """
        b = self.backend
        batches = dict(zip(manifest.contributors, manifest.digests, strict=True))
        calls = {role: b.call(role, "endorse", round_idx, batches)
                 for role, clients in groups.items() if batches.keys() & set(clients)}
        endorsed: dict[str, bytes] = {}
        for role, h in calls.items():
            try:
                endorsed.update(b.get(h))
            except PartyLost as err:
                raise PartyLost(role, f"round {round_idx}: {err} before its clients endorsed "
                                "the round's sum, which holds their batches: it cannot be "
                                "decrypted") from None
        return endorsed

    def _accepted(self, round_idx: int, results: list[Any], metas: dict[str, UpdateMeta],
                  dropped: list[str]) -> dict[str, float]:
        """Arrival times of the payloads the aggregator took; refused ones are dropped."""
        arrivals: dict[str, float] = {}
        for result in results:
            arrivals.update(result.arrived)
            for name, reason in result.rejected.items():
                metas.pop(name, None)
                self._drop(round_idx, name, reason, dropped)
        return arrivals

    def _drop(self, round_idx: int, name: str, reason: str, dropped: list[str]) -> None:
        dropped.append(name)
        self.warnings.append(f"round {round_idx}: dropped {name}: {reason}")

    def _record(self, round_idx: int, timer: PhaseTimer, sampled: list[str],
                metas: dict[str, UpdateMeta], arrivals: dict[str, float], dropped: list[str],
                manifest: Manifest, aggregate: Aggregate) -> RoundRecord:
        reports = list(metas.values())
        for p in CLIENT_PHASES:
            timer.add(p, float(np.mean([m.timings.get(p, 0.0) for m in reports])))
        timer.add("transfer", float(np.mean(
            [max(0.0, arrivals[n] - metas[n].finished_at) for n in metas])))
        metrics = dict(aggregate.metrics)
        loss = metrics.pop("loss", float("nan"))  # summed in slots: the weighted mean only
        extra = {"skipped": 0.0, **self._insecure, "bytes_aggregate": manifest.aggregate_bytes,
                 "bytes_up_per_client": int(np.mean([m.bytes_up for m in reports])),
                 "update_norm": float("nan"), "late": ",".join(sorted(self.late)),
                 "holders_lost": ",".join(self.scheme.lost), "restarted": self.restarted,
                 **metrics}
        if self.scheme.lost != self._holders_lost:
            new = sorted(set(self.scheme.lost) - set(self._holders_lost))
            self.warnings.append(f"round {round_idx}: {', '.join(new)} lost; the remaining "
                                 f"key holders decrypt as a new threshold set (no key "
                                 f"rebuilt)")
            self._holders_lost = self.scheme.lost
        self.restarted = ""
        return RoundRecord(
            round=round_idx,
            wall_s=timer.elapsed(),
            phases=dict(timer.phases),
            clients=tuple(sorted(metas)),
            dropped=tuple(sorted(dropped)),
            bytes_up=int(sum(m.bytes_up for m in reports)),
            bytes_down=int(self.state.params.nbytes * len(sampled)),
            loss=float(loss),
            extra=extra,
        )

    @property
    def params(self) -> dict:
        """Current global parameters as a tree."""
        return self.unravel(self.state.params)

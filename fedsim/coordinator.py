"""The coordinator: runs federated rounds over any `Backend` (DESIGN.md, "One round").

1. Sample m of n clients with a seeded generator; put the global parameters once.
2. Sampled clients train and return (metadata, payload); payloads go straight to the
   aggregator, which adds each as soon as it arrives.
3. The aggregator returns the sum and its manifest.
4. plaintext: the sum is read directly. he: every key holder checks the manifest and
   returns a partial decryption; the coordinator fuses them.
5. Divide by the summed weight, apply the server optimizer, evaluate, record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from jax.flatten_util import ravel_pytree

from fedsim.aggregator import Aggregator
from fedsim.backend import Backend, PartySpec
from fedsim.client import Client, ModelShape, UpdateMeta
from fedsim.config import RunConfig
from fedsim.data import FederatedDataset
from fedsim.dp import EpsilonLedger, plan_privacy
from fedsim.errors import CryptoError, FedSimError, ProtocolError
from fedsim.metrics import BinaryMetrics, evaluate, roc_points, youden_threshold
from fedsim.model import build_model, count_params, init_params
from fedsim.seeding import client_key, stream
from fedsim.server import average, make_server_optimizer, server_init, server_update
from fedsim.train import predict

CLIENT_PHASES = ("train", "encode", "encrypt", "serialize")
PHASES = CLIENT_PHASES + (
    "transfer", "aggregate", "dp_noise", "partial_decrypt", "fuse", "server_update", "evaluate",
)


@dataclass(frozen=True)
class RoundRecord:
    """Everything recorded about one round (one row of rounds.parquet)."""

    round: int
    wall_s: float
    phases: dict[str, float]
    clients: tuple[str, ...]
    dropped: tuple[str, ...]
    bytes_up: int
    bytes_down: int
    loss: float
    metrics: BinaryMetrics
    extra: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict:
        out = {
            "round": self.round,
            "wall_s": self.wall_s,
            **{f"t_{p}_s": self.phases.get(p, 0.0) for p in PHASES},
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "loss": self.loss,
            "test_loss": self.metrics.loss,
            "auc": self.metrics.auc,
            "pr_auc": self.metrics.pr_auc,
            "balanced_accuracy": self.metrics.balanced_accuracy,
            "precision": self.metrics.precision,
            "recall": self.metrics.recall,
            "threshold": self.metrics.threshold,
            "num_clients": len(self.clients),
            "clients": ",".join(self.clients),
            "dropped": ",".join(self.dropped),
        }
        out.update(self.extra)
        return out


def sample_clients(cfg: RunConfig, names: list[str], round_idx: int) -> list[str]:
    """Seeded client sampling: fixed-size without replacement, or Poisson with rate m/n."""
    rng = stream(cfg.seed, "sampling", round_idx)
    m, n = cfg.federation.clients_per_round, len(names)
    if cfg.federation.sampling == "poisson":
        chosen = np.flatnonzero(rng.random(n) < m / n)
    else:
        chosen = np.sort(rng.choice(n, size=m, replace=False))
    return [names[i] for i in chosen]


class Federation:
    """One run's server side: parties, global state and the round loop."""

    def __init__(
        self, cfg: RunConfig, dataset: FederatedDataset, backend: Backend, *, run_id: str
    ) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.backend = backend
        self.run_id = run_id
        self.names = [c.name for c in dataset.clients]
        if cfg.federation.clients_per_round > len(self.names):
            raise ProtocolError(
                f"federation.clients_per_round is {cfg.federation.clients_per_round} but the "
                f"data has only {len(self.names)} hospitals"
            )
        self.shape = ModelShape(dataset.vocab_size, dataset.num_numeric, dataset.max_codes)
        self.model = build_model(cfg.model, vocab_size=self.shape.vocab_size,
                                 num_numeric=self.shape.num_numeric)
        params0 = init_params(self.model, key=client_key(cfg.seed, 0),
                              max_codes=self.shape.max_codes)
        flat0, self.unravel = ravel_pytree(params0)
        self.num_params = count_params(params0)
        self.server_opt = make_server_optimizer(cfg.federation)
        self.state = server_init(self.server_opt, np.asarray(flat0))
        sizes = [len(c.train) for c in dataset.clients]
        # Public normaliser: keeps every weight <= 1/m, so weighted sums stay bounded.
        self.weight_norm = float(cfg.federation.clients_per_round * max(sizes))
        self.privacy = plan_privacy(cfg, len(self.names), sizes)
        self.ledger = EpsilonLedger(self.privacy) if self.privacy is not None else None
        self.crypto = None  # fedsim.sealing.AggregateOpener in he mode
        self.pooled_val = dataset.pooled("val")
        self.pooled_test = dataset.pooled("test")
        self.warnings: list[str] = []

    @property
    def encrypted(self) -> bool:
        return self.cfg.federation.mode == "he"

    # ------------------------------------------------------------------ set-up
    def parties(self, context_bytes: bytes | None) -> list[PartySpec]:
        """The parties of this run, in start order."""
        res = self.cfg.resources
        specs = [
            PartySpec(
                role=f"client:{c.name}",
                cls=Client,
                args=(self.cfg, c),
                kwargs={"index": i, "shape": self.shape, "weight_norm": self.weight_norm,
                        "privacy": self.privacy},
                resources=res.client,
                kind="client",
            )
            for i, c in enumerate(self.dataset.clients)
        ]
        specs.append(PartySpec("aggregator", Aggregator, (self.run_id, context_bytes),
                               resources=res.aggregator, kind="aggregator"))
        if context_bytes is not None:
            from fedsim.keyholder import KeyHolder

            crypto = self.cfg.crypto
            for i in range(crypto.key_holders):
                specs.append(PartySpec(
                    f"keyholder:{i}", KeyHolder, (self.run_id, context_bytes),
                    {"index": i, "num_holders": crypto.key_holders,
                     "threshold": crypto.threshold,
                     "min_clients": self.cfg.federation.min_clients},
                    resources=res.keyholder, kind="keyholder",
                ))
        return specs

    def setup(self) -> None:
        """Start every party; in he mode run the key ceremony and hand out the public key."""
        context_bytes = None
        if self.encrypted:
            from fedsim.sealing import AggregateOpener

            fed = self.cfg.federation
            self.crypto = AggregateOpener.create(self.cfg.crypto, fed.clients_per_round,
                                                 self.num_params, rounds=fed.rounds)
            context_bytes = self.crypto.context_bytes
        self.backend.start(self.parties(context_bytes))
        public_key, bound, scale = None, self.cfg.crypto.update_bound, 1.0
        if self.encrypted:
            from fedsim.sealing import slot_scale

            public_key = self._key_ceremony()
            if self.client_dp:
                bound = self.privacy.update_bound
            parts = 2 if self.aggregator_noise else 1
            scale = slot_scale(self.crypto.context, bound, parts=parts)
            self.crypto.scale = scale
            handles = [self.backend.call(f"client:{n}", "enable_encryption", context_bytes,
                                         public_key, update_bound=bound, scale=scale)
                       for n in self.names]
            handles.append(self.backend.call("aggregator", "use_public_key", public_key))
            for h in handles:
                self.backend.get(h)
        if self.aggregator_noise:
            self.backend.get(self.backend.call(
                "aggregator", "enable_noise", self.privacy, self.num_params, self.cfg.seed,
                public_key=public_key, update_bound=bound, scale=scale))

    @property
    def client_dp(self) -> bool:
        return self.privacy is not None and self.privacy.level == "client"

    @property
    def aggregator_noise(self) -> bool:
        return self.client_dp and self.privacy.placement == "aggregator"

    def _key_ceremony(self) -> bytes:
        key = None
        holders = self.cfg.crypto.key_holders
        for i in range(holders):
            key = self.backend.get(self.backend.call(f"keyholder:{i}", "keygen", key))
        if self.cfg.crypto.threshold is not None:
            for i in range(holders):
                shares = self.backend.get(self.backend.call(f"keyholder:{i}", "shamir_shares"))
                for j, share in shares.items():
                    self.backend.get(self.backend.call(f"keyholder:{j}", "receive_share", i, share))
        return key

    # ------------------------------------------------------------------ one round
    def run_round(self, round_idx: int) -> RoundRecord:
        """Run one round end to end and return its record."""
        t_start = time.perf_counter()
        sampled = sample_clients(self.cfg, self.names, round_idx)
        fed = self.cfg.federation
        if len(sampled) < fed.min_clients:
            raise ProtocolError(
                f"round {round_idx}: {len(sampled)} client(s) sampled, "
                f"min_clients is {fed.min_clients}"
            )
        metas, arrivals, dropped = self._train_and_collect(round_idx, sampled)
        if len(metas) < fed.min_clients:
            last = f"; last problem: {self.warnings[-1]}" if self.warnings else ""
            raise ProtocolError(
                f"round {round_idx}: only {len(metas)} valid update(s) "
                f"({', '.join(dropped)} dropped); min_clients is {fed.min_clients}{last}"
            )
        t0 = time.perf_counter()
        if self.aggregator_noise:  # drawn and encrypted by the aggregator while clients train
            self.backend.get(self._noise_ready)
            self.backend.get(self.backend.call("aggregator", "add_dp_noise"))
        noise_s = time.perf_counter() - t0
        manifest, aggregate_h, add_s = self._finish_aggregate()

        phases = {p: float(np.mean([m.timings.get(p, 0.0) for m in metas.values()]))
                  for p in CLIENT_PHASES}
        phases["transfer"] = float(np.mean(
            [max(0.0, arrivals[n] - metas[n].finished_at) for n in metas]))
        phases["aggregate"] = add_s
        phases["dp_noise"] = noise_s
        if self.encrypted:
            summed, total_weight, crypto_times = self.crypto.open(self.backend, manifest,
                                                                  aggregate_h)
            phases.update(crypto_times)
        else:
            aggregate = self.backend.get(aggregate_h)
            summed, total_weight = aggregate[:-1], float(aggregate[-1])
        t0 = time.perf_counter()
        # Client-level DP: contributions were divided by the fixed public denominator,
        # so the noised sum is the average (dividing by the realised weight would leak).
        avg = summed if self.client_dp else average(summed, total_weight)
        self.state = server_update(self.server_opt, self.state, avg)
        phases["server_update"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        test_metrics = self.evaluate()
        phases["evaluate"] = time.perf_counter() - t0
        extra = {"bytes_aggregate": manifest.aggregate_bytes,
                 "bytes_up_per_client": int(np.mean([m.bytes_up for m in metas.values()])),
                 "update_norm": float(np.mean([m.update_norm for m in metas.values()]))}
        if self.ledger is not None:
            extra["epsilon"] = self.ledger.after_round(round_idx, tuple(metas))
        weights = np.array([metas[n].num_examples for n in metas], np.float64)
        losses = np.array([metas[n].loss for n in metas])
        return RoundRecord(
            round=round_idx,
            wall_s=time.perf_counter() - t_start,
            phases=phases,
            clients=tuple(sorted(metas)),
            dropped=tuple(sorted(dropped)),
            bytes_up=int(sum(m.bytes_up for m in metas.values())),
            bytes_down=int(self.state.params.nbytes * len(sampled)),
            loss=float(np.sum(weights * losses) / np.sum(weights)),
            metrics=test_metrics,
            extra=extra,
        )

    def _train_and_collect(self, round_idx: int, sampled: list[str]
                           ) -> tuple[dict[str, UpdateMeta], dict[str, float], list[str]]:
        """Steps 1-3: put the global parameters once, train, stream payloads to the aggregator.

        A payload goes to the aggregator as soon as its client reports, as a handle: it
        never passes through the coordinator. A client that fails, or whose payload the
        aggregator rejects, is dropped with a warning naming it.
        """
        global_ref = self.backend.put(self.state.params)
        self.backend.get(self.backend.call("aggregator", "begin", round_idx))
        if self.aggregator_noise:  # not awaited here: it overlaps local training
            self._noise_ready = self.backend.call("aggregator", "prepare_dp_noise")
        pending = {}
        for name in sampled:
            meta_h, payload_h = self.backend.call(f"client:{name}", "train", round_idx,
                                                  global_ref, num_returns=2)
            pending[meta_h] = (name, payload_h)
        metas: dict[str, UpdateMeta] = {}
        adds = {}
        dropped: list[str] = []
        waiting = list(pending)
        while waiting:
            ready, waiting = self.backend.wait(waiting)
            for h in ready:
                name, payload_h = pending[h]
                try:
                    metas[name] = self.backend.get(h)
                except Exception as err:  # a refused update or a lost actor: drop it
                    dropped.append(name)
                    what = str(err) if isinstance(err, FedSimError) else type(err).__name__
                    self._warn(f"round {round_idx}: dropped {name}: {what}")
                    continue
                adds[name] = self.backend.call("aggregator", "add", name, payload_h)
        arrivals = {}
        for name, h in adds.items():
            try:
                arrivals[name] = self.backend.get(h)
            except (CryptoError, ProtocolError) as err:
                dropped.append(name)
                metas.pop(name, None)
                self._warn(f"round {round_idx}: dropped {name}: {err}")
        return metas, arrivals, dropped

    def _finish_aggregate(self):
        manifest_h, aggregate_h, seconds_h = self.backend.call("aggregator", "finish",
                                                               num_returns=3)
        return self.backend.get(manifest_h), aggregate_h, self.backend.get(seconds_h)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    # ------------------------------------------------------------------ evaluation
    @property
    def params(self) -> dict:
        """Current global parameters as a tree."""
        return self.unravel(self.state.params)

    def _threshold(self, params: dict) -> float:
        """The pooled-validation Youden point (0.5 without a validation split)."""
        if not len(self.pooled_val):
            return 0.5
        val_probs = predict(self.model, params, self.pooled_val)
        return youden_threshold(self.pooled_val.labels, val_probs)

    def evaluate(self) -> BinaryMetrics:
        """Pooled test metrics, thresholded at the pooled-validation Youden point."""
        params = self.params
        probs = predict(self.model, params, self.pooled_test)
        return evaluate(self.pooled_test.labels, probs, threshold=self._threshold(params))

    def final_report(self) -> dict:
        """Per-hospital and pooled test metrics with ROC points, for the final model."""
        params = self.params
        threshold = self._threshold(params)
        report = {"threshold": threshold, "hospitals": {}}
        for c in self.dataset.clients:
            probs = predict(self.model, params, c.test)
            report["hospitals"][c.name] = {
                **evaluate(c.test.labels, probs, threshold=threshold).as_dict(),
                "roc": roc_points(c.test.labels, probs),
            }
        probs = predict(self.model, params, self.pooled_test)
        report["pooled"] = {
            **evaluate(self.pooled_test.labels, probs, threshold=threshold).as_dict(),
            "roc": roc_points(self.pooled_test.labels, probs),
        }
        return report


def run_rounds(
    federation: Federation,
    rounds: int,
    on_round: Callable[[RoundRecord], None] = lambda r: None,
) -> list[RoundRecord]:
    """Run ``rounds`` rounds, calling ``on_round`` after each; returns the records."""
    records = []
    for r in range(rounds):
        record = federation.run_round(r)
        records.append(record)
        on_round(record)
    return records

"""A hospital: local training and the preparation of its update for aggregation.

`Client` is a plain class; `actors.ClientActor` places it on Ray unchanged. One round
(DESIGN.md, step 2): unflatten the global parameters, train locally, form the delta,
apply the privacy steps, weight it, and either return it as a float64 payload
(plaintext) or pack and encrypt it under the joint public key (he).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from jax.flatten_util import ravel_pytree

from fedsim.config import RunConfig
from fedsim.data import ClientData
from fedsim.dp import PrivacyPlan, privatize_update
from fedsim.errors import ProtocolError
from fedsim.model import build_model, init_params
from fedsim.seeding import client_key, stream
from fedsim.server import weighted_payload
from fedsim.train import LocalTrainer, batch_plan, gather, local_steps


@dataclass(frozen=True)
class ModelShape:
    """What every party needs to build the same model: data dimensions."""

    vocab_size: int
    num_numeric: int
    max_codes: int


@dataclass(frozen=True)
class UpdateMeta:
    """What a client reports about its update besides the payload itself."""

    client: str
    round: int
    num_examples: int
    weight: float
    loss: float
    bytes_up: int
    timings: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0
    update_norm: float = 0.0


class Client:
    """One hospital's local work. Holds its data shard for the whole run."""

    def __init__(
        self,
        cfg: RunConfig,
        data: ClientData,
        *,
        index: int,
        shape: ModelShape,
        weight_norm: float,
        privacy: PrivacyPlan | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.index = index
        self.weight_norm = float(weight_norm)
        self.model = build_model(cfg.model, vocab_size=shape.vocab_size,
                                 num_numeric=shape.num_numeric)
        template = init_params(self.model, key=client_key(cfg.seed, 0), max_codes=shape.max_codes)
        _, self._unravel = ravel_pytree(template)
        self.privacy = privacy
        self.steps = local_steps(cfg.train, len(data.train))
        if privacy is not None and privacy.level == "record":
            from fedsim.train import DPSGDTrainer

            self.trainer = DPSGDTrainer(self.model, cfg.train, privacy, len(data.train))
        else:
            self.trainer = LocalTrainer(self.model, cfg.train)
        self._sealer = None  # set by `enable_encryption`

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def num_examples(self) -> int:
        return len(self.data.train)

    def enable_encryption(self, context_bytes: bytes, public_key: bytes, *,
                          update_bound: float, scale: float) -> None:
        """Encrypt every later update under the joint public key."""
        from fedsim.sealing import UpdateSealer

        self._sealer = UpdateSealer(context_bytes, public_key, update_bound=update_bound,
                                    scale=scale)

    def train(self, round_idx: int, global_flat: np.ndarray) -> tuple[UpdateMeta, object]:
        """Train on the global parameters; return metadata and the (maybe encrypted) payload."""
        t0 = time.perf_counter()
        params = self._unravel(np.asarray(global_flat, np.float32))
        rng = stream(self.cfg.seed, "batches", round_idx, self.index)
        if self.privacy is not None and self.privacy.level == "record":
            key = client_key(self.cfg.seed, 1, round_idx, self.index)
            batches = self.trainer.batches(rng, self.data.train, self.steps)
            new_params, loss = self.trainer.train(params, batches, key)
        else:
            plan = batch_plan(rng, self.num_examples, self.steps, self.cfg.train.batch_size)
            new_params, loss = self.trainer.train(params, gather(self.data.train, plan))
        new_flat, _ = ravel_pytree(new_params)
        delta = np.asarray(new_flat, np.float64) - np.asarray(global_flat, np.float64)
        if not np.all(np.isfinite(delta)):
            raise ProtocolError(f"client {self.name}: local training diverged (non-finite "
                                f"update in round {round_idx}); lower train.lr")
        norm = float(np.linalg.norm(delta))
        timings = {"train": time.perf_counter() - t0}

        weight = self.num_examples / self.weight_norm
        if self.privacy is not None and self.privacy.level == "client":
            # Fixed public denominator, no sample-count weighting: see fedsim.dp.
            delta, norm = privatize_update(self.privacy, delta, seed=self.cfg.seed,
                                           round_idx=round_idx, client_index=self.index)
            weight = 1.0 / self.privacy.denominator
        payload: object
        if self._sealer is None:
            payload = weighted_payload(delta, weight)
            bytes_up = int(payload.nbytes)
        else:
            payload, seal_times = self._sealer.seal(delta, weight, client=self.name)
            timings.update(seal_times)
            bytes_up = len(payload)
        meta = UpdateMeta(
            client=self.name,
            round=round_idx,
            num_examples=self.num_examples,
            weight=weight,
            loss=loss,
            bytes_up=bytes_up,
            timings=timings,
            finished_at=time.time(),
            update_norm=norm,
        )
        return meta, payload

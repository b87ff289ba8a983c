"""Small configs and federations for tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedsim.config import RunConfig, from_dict
from fedsim.protocol.backend import InProcessBackend
from fedsim.protocol.federation import Federation
from fedsim.run.runner import load_dataset


def tiny_config(**sections) -> RunConfig:
    """A config small enough for a test: 3 hospitals x ~300 patients, a width-8 MLP."""
    base = {
        "name": "tiny",
        "seed": 0,
        "data": {"synth": {"num_hospitals": 3, "patients_per_hospital": 300,
                           "vocab_size": 500, "mean_codes": 6.0}},
        "model": {"depth": 2, "width": 8},
        "train": {"lr": 0.01, "batch_size": 32, "local_steps": 5},
        "federation": {"rounds": 3, "clients_per_round": 3, "min_clients": 2},
        "evaluation": {"baselines": "none"},  # tests/run/test_run_baselines.py runs them
        "crypto": {"profile": "test", "allow_insecure": True, "key_holders": 3},
        "resources": {"client": {"num_cpus": 0.25}, "aggregator": {"num_cpus": 0.25},
                      "keyholder": {"num_cpus": 0.1}},
    }
    for name, values in sections.items():
        merged = dict(base.get(name, {}))
        merged.update(values)
        base[name] = merged
    return from_dict(base)


def federation(cfg: RunConfig, backend=None, run_id: str = "t") -> Federation:
    """A set-up `Federation` of ``cfg`` (in process unless ``backend`` is given)."""
    fed = Federation(cfg, load_dataset(cfg), backend or InProcessBackend(), run_id=run_id)
    fed.setup()
    return fed


def train_one(fed: Federation, name: str, round_idx: int, params=None):
    """What client ``name`` would contribute this round: ``(report, payload)``.

    Called on the party object directly (in-process backend), outside the round.
    """
    from fedsim.aggregate.steps import RoundContext

    role = fed.population.roles[name]
    context = RoundContext(round_idx, fed.pipeline.round_params(fed.step_states))
    party = fed.backend.parties[role]
    commitment = fed.backend.defer(fed.backend.put(b""))
    reports, bundle = party.train(round_idx, fed.state.params if params is None else params,
                                  [name], context, commitment)
    return reports[0], bundle.payloads[0]


def scored_rounds(fed: Federation, rounds: int, *, start: int = 0) -> list:
    """``run_rounds`` with the model scored after every round, as ``fedsim run`` does."""
    from fedsim.learning.evaluation import CentralEvaluator
    from fedsim.protocol.loop import run_rounds
    from fedsim.run.callbacks import Evaluate

    evaluate = Evaluate(CentralEvaluator(fed.model, fed.dataset), every=1, rounds=rounds)
    return run_rounds(fed, rounds, [evaluate], start=start)


def leaves(tree):
    """A parameter tree's arrays in sorted-key order."""
    import numpy as np

    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from leaves(tree[k])
    else:
        yield np.asarray(tree)


def scores(n: int, prevalence: float, seed: int):
    """Labels and a model's probabilities for the histogram tests: positives' logits
    shifted by 1.5 (AUC ~0.85)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(np.int64)
    logits = rng.normal(-2.0 if prevalence < 0.2 else 0.0, 1.2, n) + 1.5 * labels
    return labels, 1.0 / (1.0 + np.exp(-logits))


def hospitals_of(labels, probs, parts: int = 4):
    """Labels and scores split across hospitals of unequal size."""
    import numpy as np

    cuts = np.sort(np.random.default_rng(7).choice(np.arange(1, labels.size), parts - 1,
                                                   replace=False))
    return list(zip(np.split(labels, cuts), np.split(probs, cuts), strict=True))


class RecordingBackend(InProcessBackend):
    """The coordinator's view: everything `get` hands the driver."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def get(self, handle):
        value = super().get(handle)
        self.seen.append(value)
        return value


def numbers_in(value, out: list[float], depth: int = 0) -> None:
    """Append every float or integer inside ``value`` (arrays, containers, dataclasses)."""
    if depth > 8:
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float, np.floating, np.integer)):
        out.append(float(value))
    elif isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            out.extend(value.ravel().tolist())
    elif isinstance(value, dict):
        for v in value.values():
            numbers_in(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            numbers_in(v, out, depth + 1)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            numbers_in(getattr(value, f.name), out, depth + 1)

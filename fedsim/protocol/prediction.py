"""Secure prediction aggregation (the seed paper's steps 11 and 12): ``fedsim predict``.

A querier has patients to score. Every hospital of a finished run scores them with the
run's final global model (with ``fine_tune``, with its own copy trained one more local
round on its own training rows), each putting the query's numeric features on its own
training scale. The scores are encrypted under a joint key made for this query by a
fresh set of key holders, summed by the aggregator, endorsed by every hospital, and
checked and opened by the key holders like every sum: it must hold every hospital
(never a subset, so no difference of two openings is one hospital's scores), once. The
querier (the coordinator) learns each row's ensemble score, the mean over hospitals,
never one hospital's; a hospital learns the query rows (it scores them) and nothing of
another hospital; a key holder learns ciphertexts.

Each hospital sends ``score * scale`` per row and ``scale`` in the last slot, with
``scale = 0.9 value_bound / hospitals`` so that the sum decrypts correctly; the opened
last slot must count the hospitals. Its precision is the context's ``error_bound``
over ``scale`` per summed score (`PredictionPlan.error_bound`), divided by the number
of hospitals for the mean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedsim.errors import ConfigError, CryptoError, DataError, ProtocolError


@dataclass(frozen=True)
class QueryRows:
    """The querier's patients: codes int32 [n, L] padded with -1, raw (unstandardised)
    numeric features float64 [n, F]."""

    codes: np.ndarray
    numeric: np.ndarray

    def __post_init__(self) -> None:
        codes = np.ascontiguousarray(self.codes, dtype=np.int32)
        numeric = np.ascontiguousarray(self.numeric, dtype=np.float64)
        if codes.ndim != 2 or numeric.ndim != 2 or len(codes) != len(numeric):
            raise DataError(f"query rows need codes [n, L] and numeric [n, F], got "
                            f"{codes.shape} and {numeric.shape}")
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "numeric", numeric)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def digest(self) -> bytes:
        """Both arrays with their dtypes and shapes (`model_digest` frames them)."""
        from fedsim.crypto.identity import model_digest

        return model_digest(self.codes, {}) + model_digest(self.numeric, {})


@dataclass(frozen=True)
class PredictionPlan:
    """Public facts of one query: its rows and the hospitals that score it."""

    kind: ClassVar[str] = "predict"
    with_training: ClassVar[bool] = False  # its key opens no training sum
    purpose: ClassVar[str] = "a query's scores"
    rows: int
    contributors: int
    evaluations: int = 1  # sums opened under this key: one

    def bind(self, model: bytes, query: QueryRows, fine_tune: bool) -> bytes:
        """Digest of the model, this plan, the query and whether hospitals fine-tune,
        which every batch signs (as `EvaluationPlan.bind`): all scored alike."""
        from fedsim.protocol.evaluation import _bound

        return _bound(model, self, query.digest(), bool(fine_tune))

    def scale(self, context: Any) -> float:
        return 0.9 * context.value_bound / self.contributors

    def num_values(self, context: Any) -> int:
        return self.rows + 1  # every row's score, and the count of hospitals

    def ciphertexts(self, context: Any) -> int:
        return -(-self.num_values(context) // context.values_per_ciphertext)

    def error_bound(self, context: Any) -> float:
        """Largest error of one row's ensemble (mean) score."""
        return context.error_bound / self.scale(context) / self.contributors

    def encode(self, context: Any, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, np.float64).ravel()
        if scores.size != self.rows or not np.all((scores >= 0) & (scores <= 1)):
            raise CryptoError(f"a prediction of {self.rows} scores in [0, 1] expected")
        return np.concatenate([scores, [1.0]]) * self.scale(context)

    def decode(self, context: Any, values: np.ndarray) -> np.ndarray:
        """Each row's mean score over the hospitals, from the opened sum's values."""
        sums = np.asarray(values, np.float64)[: self.rows + 1] / self.scale(context)
        if abs(sums[-1] - self.contributors) > 0.25:
            raise CryptoError(f"the opened prediction sum counts {sums[-1]:.3f} hospitals, "
                              f"not {self.contributors}")
        return sums[:-1] / self.contributors


@dataclass(frozen=True)
class Prediction:
    """The ensemble scores of a query, their precision and the seconds per phase."""

    scores: np.ndarray
    error_bound: float
    hospitals: tuple[str, ...]
    seconds: dict[str, float]


def prediction_config(cfg: Any) -> Any:
    """The run's config as one query needs it: he mode (a plaintext run's hospitals are
    queried under encryption too), one planned round, no evaluation sums."""
    from fedsim.config import replace

    fed = cfg.federation
    if not fed.hospital_parties:
        raise ConfigError("fedsim predict: the run's clients are cohorts; a query is scored "
                          "by hospitals (federation.clients: hospital)")
    return replace(cfg, ["federation.mode=he", "federation.rounds=1",
                         "evaluation.federated=false",
                         f"federation.min_clients={max(2, fed.min_clients)}"])


def predict_ensemble(cfg: Any, dataset: Any, params: np.ndarray, query: QueryRows, *,
                     backend: Any, run_id: str, fine_tune: bool = False) -> Prediction:
    """Score ``query`` with every hospital of ``dataset`` (each party started with its
    own rows; the coordinator's view holds none) and open only the ensemble."""
    from fedsim.protocol.evaluator import open_hospital_sum
    from fedsim.protocol.federation import Federation
    from fedsim.protocol.records import PhaseTimer

    pcfg = prediction_config(cfg)
    plan = PredictionPlan(len(query), len(dataset.clients))
    timer = PhaseTimer()
    t0 = time.perf_counter()
    fed = Federation(pcfg, dataset.withheld(), backend, run_id=run_id,
                     hospital_data=dataset, evaluation=plan)
    fed.setup()
    timer.add("setup", time.perf_counter() - t0)
    ref, asked = fed.backend.put(np.asarray(params)), fed.backend.put(query)
    values, said, manifest = open_hospital_sum(fed, 0, "predict",
                                               (ref, asked, plan, fine_tune), timer,
                                               kind="predict")
    for part in ("train", "score", "encrypt"):
        timer.add(part, max(s.get(part, 0.0) for s in said.values()))
    context = fed.scheme.context
    return Prediction(plan.decode(context, values), plan.error_bound(context),
                      tuple(manifest.contributors), dict(timer.phases))


def score_query(hospital: Any, global_flat: np.ndarray, query: Any, plan: Any,
                fine_tune: bool) -> tuple[Any, dict[str, float]]:
    """A hospital's side: score the query with the global model, or with its copy
    trained one more local round on its own rows; the sealed batch signed for (run,
    predict, 0, hospital), and the seconds it took."""
    from fedsim.crypto.identity import model_digest
    from fedsim.data import Split
    from fedsim.learning.train import predict
    from fedsim.seeding import stream

    name = hospital.name
    query = QueryRows(query.codes, query.numeric)  # canonical: what is scored is hashed
    if type(plan) is not PredictionPlan or plan.rows != len(query):
        raise ProtocolError(f"hospital {name} refuses a prediction plan that is not "
                            f"one of {len(query)} query rows")
    encoder = hospital.contributions.encoder
    if encoder is None or not hasattr(encoder, "seal_values"):
        raise ProtocolError(f"hospital {name} refuses to score a query outside the run's "
                            "he encoding")
    t0 = time.perf_counter()
    start = np.asarray(global_flat, np.float32)
    params = hospital.unravel(start)
    if fine_tune:
        # A stream of its own, apart from every training round's.
        inputs = hospital.trainer.inputs(
            stream(hospital.cfg.seed, "fine-tune", hospital.index), hospital.data.train,
            hospital.steps, seed=hospital.cfg.seed, round_idx=0, index=hospital.index,
            secret=hospital.randomness.draw("dp-sgd-fine-tune", 0, hospital.index))
        params, _ = hospital.trainer.train(params, inputs)
    t1 = time.perf_counter()
    rows = Split(query.codes, hospital.data.standardise(query.numeric),
                 np.zeros(len(query), np.float32))
    scores = np.asarray(predict(hospital.model, params, rows), np.float64)
    t2 = time.perf_counter()
    payload = encoder.seal_values(plan.encode(encoder.context, scores),
                                  contributors=plan.contributors)
    model = plan.bind(model_digest(start, {}), query, fine_tune)
    bundle = hospital.contributions.evaluations.bundle(name, 0, payload, model,
                                                       kind="predict", plan=plan)
    return bundle, {"train": t1 - t0 if fine_tune else 0.0, "score": t2 - t1,
                    "encrypt": time.perf_counter() - t2}

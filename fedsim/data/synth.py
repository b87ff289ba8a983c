"""Synthetic EHR data: hospitals, patients with medical-code lists and a binary outcome.

Everything is drawn from explicit generators seeded by ``SeedSequence([seed, stream,
hospital])``, so the same `SynthSpec` always gives a byte-identical table, and the
parameters of hospital ``h`` do not depend on how many hospitals there are.

How the data arise
------------------
* Codes: each patient has ``1 + NegBinomial`` distinct codes (mean ``mean_codes``) drawn
  with Zipf-like frequencies ``p_k ~ (k + 1) ** -zipf_exponent``: code index = global
  frequency rank. Each hospital perturbs the frequencies of the 2,000 most common codes
  and boosts a "specialty" block of 40 codes (case mix), and has its own size
  (lognormal around ``patients_per_hospital``) and age mix.
* Numerics: age, and four labs that are latent standard normals seen through a
  hospital-specific offset and scale (like differing assays), so standardising per
  client matters.
* Site shift (``site_shift``, default 0): a hospital's case mix is sicker or healthier
  by ``severity ~ N(0, site_shift)``: its latent labs move by ``0.5 * severity`` standard
  deviations in their harmful direction and its ages by ``5 * severity`` years, after
  the intercept is calibrated, so the outcome moves with them (site prevalence then
  leaves the target range). This is the between-site signal per-hospital
  standardization removes and federated standardization keeps
  (`fedsim.run.datasets`); the assay offsets above are the noise it must cost. With 0
  the table is byte-identical to one made before the knob existed.
* Outcome: ``label ~ Bernoulli(sigmoid(b_h + f(x)))`` where ``f`` is a hidden sparse
  model shared by all hospitals: 300 codes (frequency ranks 20 to 1500) with nonzero
  weights, 20 code-pair interactions, age, the latent labs (one with a U-shaped
  effect). The hospital intercept ``b_h`` is set by bisection so that the expected
  prevalence equals a hospital target drawn from [0.12, 0.27]; realised prevalence is
  therefore within 10-30% unless a hospital is tiny. With the default spec the true
  logit has a test ROC AUC of about 0.91 and a pooled logistic regression on bag of
  codes plus numerics about 0.86 (seeds 0-4: 0.86-0.87); the gap is rare codes,
  interactions and the U-shape, which a linear model cannot use.

Schema of `generate_ehr` (one row per patient, rows ordered by hospital)
-----------------------------------------------------------------------
=============  ===============  ==================================================
column         type             meaning
=============  ===============  ==================================================
hospital       string           ``hospital-0`` ... (zero-padded past 10 hospitals)
patient_id     int64            unique over the table, 0 .. n-1
codes          list<int32>      distinct, sorted, 0-based codes in [0, vocab_size);
                                never empty
age            float32          years, 18 to 95 (only if ``numeric_features``)
lab_0..lab_3   float32          lab values in hospital-specific units (idem)
label          int8             binary outcome, 0 or 1
split          string           ``train``/``val``/``test``; only with ``with_split``
=============  ===============  ==================================================

`write_table` stores a table as Parquet or CSV (by suffix). In CSV the ``codes`` list is
written as one string of space-separated integers, e.g. ``"0 17 4031"``, which
`fedsim.data.load_table` and `fedsim.data.partition` read back.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedsim.errors import DataError

__all__ = ["SynthSpec", "generate_ehr", "write_table", "NUM_LABS"]

NUM_LABS = 4

# Stream tags for SeedSequence([seed, tag, ...]): one independent stream per purpose.
_MODEL, _HOSPITAL, _PATIENTS, _SPLIT, _SITE = 1, 2, 3, 4, 5

_NUM_RISK_CODES = 300
_RISK_FIRST, _RISK_RANKS = 20, 1500  # risk codes are drawn from these frequency ranks
_CODE_SCALE = 1.6  # risk-code weights are +-|N(0, 1.6)|, 3 in 4 harmful
_LAB_EFFECTS = np.array([1.0, 0.8, 0.6, 0.4])  # per standard deviation, signs random
_NUM_INTERACTIONS = 20
_CASE_MIX_RANKS = 2000
_SPECIALTY_CODES = 40
_PREVALENCE_RANGE = (0.12, 0.27)
# Per unit of a site's severity: standard deviations each lab moves (harmful way), and
# years of age; together about 1.7 on the outcome's logit.
_SEVERITY_SD, _SEVERITY_YEARS = 0.5, 5.0
# (mean, sd) of the labs' typical reference units; hospitals shift and rescale them.
_LAB_UNITS = ((4.2, 0.5), (140.0, 4.0), (1.0, 0.3), (12.0, 3.0))


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. Sizes vary by hospital around ``patients_per_hospital``."""

    num_hospitals: int = 5
    patients_per_hospital: int = 2000
    vocab_size: int = 24428
    mean_codes: float = 12.0
    zipf_exponent: float = 1.1
    numeric_features: bool = True
    site_shift: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_float(self, "site_shift", 0.0)
        _check_int(self, "num_hospitals", 1)
        _check_int(self, "patients_per_hospital", 1)
        _check_int(self, "vocab_size", 10)
        _check_int(self, "seed", 0)
        _check_float(self, "mean_codes", 1.0)
        _check_float(self, "zipf_exponent", 0.0)
        if not isinstance(self.numeric_features, bool):
            raise DataError(
                f"SynthSpec.numeric_features must be true or false, got {self.numeric_features!r}"
            )


def _check_int(spec: SynthSpec, name: str, low: int) -> None:
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"SynthSpec.{name} must be an integer >= {low}, got {value!r}")


def _check_float(spec: SynthSpec, name: str, low: float) -> None:
    value = getattr(spec, name)
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < low:
        raise DataError(f"SynthSpec.{name} must be a number >= {low:g}, got {value!r}")


def _rng(spec: SynthSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *key]))


@dataclass(frozen=True)
class _HiddenModel:
    code_weight: np.ndarray  # float64 [V], sparse
    pairs: np.ndarray  # int64 [P, 2] code pairs
    pair_weight: np.ndarray  # float64 [P]
    age_weight: float
    lab_weight: np.ndarray  # float64 [NUM_LABS]
    lab_1_square: float  # U-shaped effect of lab 1


def _hidden_model(spec: SynthSpec) -> _HiddenModel:
    rng = _rng(spec, _MODEL)
    v = spec.vocab_size
    # Risk codes avoid the handful of ubiquitous codes, whose weights would otherwise
    # decide alone how hard the task is for a given seed.
    first, stop = min(_RISK_FIRST, v // 10), min(v, _RISK_RANKS)
    count = min(_NUM_RISK_CODES, max(1, (stop - first) // 4))
    risk = first + rng.choice(stop - first, size=count, replace=False)
    # Mostly harmful codes (diagnoses), some protective.
    sign = np.where(rng.random(risk.size) < 0.75, 1.0, -1.0)
    code_weight = np.zeros(v)
    code_weight[risk] = sign * np.abs(rng.normal(0.0, _CODE_SCALE, risk.size))
    top = min(v, 300)
    pairs = np.stack([rng.choice(top, 2, replace=False) for _ in range(_NUM_INTERACTIONS)])
    pair_weight = rng.normal(0.0, 0.6, _NUM_INTERACTIONS)
    return _HiddenModel(
        code_weight=code_weight,
        pairs=pairs,
        pair_weight=pair_weight,
        age_weight=float(rng.uniform(0.8, 1.2)),  # per 15 years
        lab_weight=rng.permutation(_LAB_EFFECTS) * rng.choice((-1.0, 1.0), NUM_LABS),
        lab_1_square=0.25,
    )


def generate_ehr(spec: SynthSpec, *, with_split: bool = False) -> pa.Table:
    """Generate the synthetic EHR table described in the module docstring.

    ``with_split`` adds a ``split`` column (a seeded 70/10/20 random split per hospital,
    not stratified) for exercising the loader's split-column path; the other columns
    are identical with or without it, and with or without ``numeric_features``.
    """
    model = _hidden_model(spec)
    width = len(str(spec.num_hospitals - 1))
    parts = [_hospital(spec, model, h) for h in range(spec.num_hospitals)]
    sizes = [len(p["label"]) for p in parts]
    names = np.repeat([f"hospital-{h:0{width}d}" for h in range(spec.num_hospitals)], sizes)
    lengths = np.concatenate([p["lengths"] for p in parts])
    if lengths.sum() >= 2**31:
        raise DataError(f"SynthSpec asks for {lengths.sum()} codes; list<int32> holds < 2**31")
    offsets = np.zeros(lengths.size + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([p["codes"] for p in parts]).astype(np.int32)
    columns: dict[str, pa.Array] = {
        "hospital": pa.array(names, pa.string()),
        "patient_id": pa.array(np.arange(lengths.size, dtype=np.int64)),
        "codes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
    }
    if spec.numeric_features:
        columns["age"] = pa.array(np.concatenate([p["age"] for p in parts]))
        for j in range(NUM_LABS):
            columns[f"lab_{j}"] = pa.array(np.concatenate([p["labs"][:, j] for p in parts]))
    columns["label"] = pa.array(np.concatenate([p["label"] for p in parts]))
    if with_split:
        columns["split"] = pa.array(
            np.concatenate([_random_split(spec, h, n) for h, n in enumerate(sizes)]), pa.string()
        )
    return pa.table(columns)


def _hospital(spec: SynthSpec, model: _HiddenModel, h: int) -> dict[str, np.ndarray]:
    """One hospital's patients: its parameters, codes, numerics and labels."""
    rng = _rng(spec, _HOSPITAL, h)
    v = spec.vocab_size
    factor = float(np.clip(np.exp(rng.normal(-0.08, 0.4)), 0.4, 2.5))
    n = max(1, int(round(spec.patients_per_hospital * factor)))
    # Case mix: perturbed frequencies of common codes plus a boosted specialty block.
    p = np.arange(1, v + 1, dtype=np.float64) ** -spec.zipf_exponent
    common = min(v, _CASE_MIX_RANKS)
    p[:common] *= np.exp(rng.normal(0.0, 0.5, common))
    p[rng.choice(min(v, 5000), min(_SPECIALTY_CODES, v // 10), replace=False)] *= 4.0
    cdf = np.cumsum(p / p.sum())
    mean_codes = 1.0 + (spec.mean_codes - 1.0) * float(np.exp(rng.normal(0.0, 0.1)))
    age_mean = rng.uniform(48.0, 68.0)
    lab_loc = np.array([m + rng.normal(0.0, 0.3 * s) for m, s in _LAB_UNITS])
    lab_scale = np.array([s * np.exp(rng.normal(0.0, 0.1)) for _, s in _LAB_UNITS])
    target = rng.uniform(*_PREVALENCE_RANGE)

    rng = _rng(spec, _PATIENTS, h)
    dispersion = 3.0
    extra = mean_codes - 1.0
    lengths = 1 + rng.negative_binomial(dispersion, dispersion / (dispersion + extra), n)
    lengths = np.minimum(lengths, max(1, v // 4)).astype(np.int64)
    codes = _distinct_codes(rng, cdf, lengths)
    age = np.clip(rng.normal(age_mean, 17.0, n), 18.0, 95.0)
    latent = rng.standard_normal((n, NUM_LABS))
    # The intercept is calibrated before the site's severity shift: a sicker case mix
    # moves the labs, the age and the prevalence together (from a stream of its own,
    # so site_shift 0 leaves every other column as it was).
    intercept = _calibrate(_risk(model, codes, lengths, age, latent), target)
    severity = _rng(spec, _SITE, h).normal(0.0, 1.0) * spec.site_shift
    latent = latent + severity * _SEVERITY_SD * np.sign(model.lab_weight)
    age = np.clip(age + severity * _SEVERITY_YEARS * np.sign(model.age_weight), 18.0, 95.0)
    logit = _risk(model, codes, lengths, age, latent)
    label = (rng.random(n) < _sigmoid(logit + intercept)).astype(np.int8)
    labs = np.round(lab_loc + lab_scale * latent, 2).astype(np.float32)
    return {
        "lengths": lengths,
        "codes": codes,
        "age": np.round(age, 1).astype(np.float32),
        "labs": labs,
        "label": label,
    }


def _distinct_codes(rng: np.random.Generator, cdf: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat codes, sorted and distinct within each patient, sampled from ``cdf``.

    Duplicates are redrawn until none remain (a few passes); the rare patient still
    holding duplicates after that falls back to an exact draw without replacement.
    """
    v = cdf.size
    owner = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    codes = np.minimum(np.searchsorted(cdf, rng.random(owner.size), side="right"), v - 1)
    for _ in range(30):
        order = np.lexsort((codes, owner))
        owner, codes = owner[order], codes[order]
        dup = np.flatnonzero((owner[1:] == owner[:-1]) & (codes[1:] == codes[:-1])) + 1
        if dup.size == 0:
            return codes
        codes[dup] = np.minimum(np.searchsorted(cdf, rng.random(dup.size), side="right"), v - 1)
    p = np.diff(cdf, prepend=0.0)
    for patient in np.unique(owner[dup]):
        rows = owner == patient
        codes[rows] = np.sort(rng.choice(v, int(rows.sum()), replace=False, p=p / p.sum()))
    order = np.lexsort((codes, owner))
    return codes[order]


def _risk(
    model: _HiddenModel, codes: np.ndarray, lengths: np.ndarray, age: np.ndarray, latent: np.ndarray
) -> np.ndarray:
    """The hidden model's logit without the hospital intercept."""
    n = lengths.size
    owner = np.repeat(np.arange(n), lengths)
    logit = np.bincount(owner, weights=model.code_weight[codes], minlength=n)
    for (a, b), w in zip(model.pairs, model.pair_weight, strict=True):
        has_a = np.zeros(n, bool)
        has_a[owner[codes == a]] = True
        has_b = np.zeros(n, bool)
        has_b[owner[codes == b]] = True
        logit += w * (has_a & has_b)
    logit += model.age_weight * (age - 60.0) / 15.0
    logit += latent @ model.lab_weight + model.lab_1_square * (latent[:, 1] ** 2 - 1.0)
    return logit


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _calibrate(logit: np.ndarray, target: float) -> float:
    """Intercept b with mean(sigmoid(logit + b)) == target, by bisection."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        if _sigmoid(logit + mid).mean() < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _random_split(spec: SynthSpec, h: int, n: int) -> np.ndarray:
    rng = _rng(spec, _SPLIT, h)
    cuts = np.round(np.array([0.7, 0.8]) * n).astype(int)
    labels = np.array(
        ["train"] * cuts[0] + ["val"] * (cuts[1] - cuts[0]) + ["test"] * (n - cuts[1])
    )
    return labels[rng.permutation(n)]


def write_table(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as Parquet (``.parquet``) or CSV (``.csv``), atomically.

    The table goes to a temporary file in the target directory (made if missing) that
    then replaces ``path`` in one step, so readers see the old file or the new one,
    never half of one. In CSV, list columns become strings of space-separated integers.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise DataError(
            f"cannot write {path}: unknown suffix {path.suffix!r} (use .parquet or .csv)"
        )
    if suffix == ".csv":
        table = _lists_as_strings(table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        if suffix == ".parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _lists_as_strings(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            column = table.column(i)
            as_text = pc.binary_join(pc.cast(column, pa.list_(pa.string())), " ")
            table = table.set_column(i, field.name, as_text)
    return table

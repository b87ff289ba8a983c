"""Encrypt packed updates, sum ciphertext batches as they arrive.

Everything that leaves a function is bytes (a batch, see ``fedsim.crypto.batch``);
OpenFHE objects stay inside the process that made them.

* ``Encryptor(context, public_key).encrypt(packed)``: one batch, one ciphertext per row.
* ``CiphertextSum``: the aggregator's running sum. ``add`` checks a batch completely
  before touching the sum, so a bad batch leaves it unchanged. `ByteSum` adds residues
  in the serialized bytes (no OpenFHE objects; about 10x faster), `ObjectSum`
  deserializes and uses ``EvalAddInPlace``; ``summation_for(context, public_key)``
  picks one for a key.
* Fusion of partial decryptions: `fedsim.crypto.fusion`.
"""

from __future__ import annotations

import abc
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, final

import numpy as np
import openfhe as fhe

from fedsim.crypto import raw
from fedsim.crypto.batch import HEAD, ITEM, batch_count, encode_batch, iter_batch
from fedsim.crypto.context import CKKSContext
from fedsim.crypto.identity import digest as digest_bytes
from fedsim.crypto.identity import hasher
from fedsim.crypto.residues import LazySum
from fedsim.errors import CryptoError


def load_ciphertexts(context: CKKSContext, batch: bytes, *, kind: str) -> list[Any]:
    """Deserialize and sanity-check every ciphertext of a batch of ``kind``."""
    return list(iter_ciphertexts(context, batch, kind=kind))


def iter_ciphertexts(context: CKKSContext, batch: bytes, *, kind: str) -> Iterator[Any]:
    """Deserialize and check a batch's ciphertexts one at a time (bounded memory)."""
    return deserialize_items(context, iter_batch(batch, kind=kind), kind=kind)


def deserialize_items(context: CKKSContext, payloads: Iterable[bytes | memoryview], *,
                      kind: str) -> Iterator[Any]:
    """Deserialize and check serialized ciphertexts of ``kind`` one at a time."""
    elements = 2 if kind == "ciphertext" else 1
    for i, payload in enumerate(payloads):
        try:
            ct = fhe.DeserializeCiphertextString(bytes(payload), fhe.BINARY)
        except RuntimeError as exc:  # OpenFHE reports malformed input as RuntimeError
            raise CryptoError(f"item {i} does not deserialize: {exc}") from exc
        if not context.owns(ct):
            raise CryptoError(f"item {i} belongs to another CKKS context")
        if (
            ct.NumberCiphertextElements() != elements
            or ct.GetLevel() != 0
            or ct.GetNoiseScaleDeg() != 1
            or ct.GetSlots() != context.slots
            or ct.GetEncodingType() != fhe.CKKS_PACKED_ENCODING
        ):
            raise CryptoError(f"item {i} is not a fresh-level {kind} of this context")
        yield ct


class Encryptor:
    """Encrypts packed updates under a (joint) public key."""

    def __init__(self, context: CKKSContext, public_key: bytes) -> None:
        self._context = context
        self._key = _public_key(public_key)

    def encrypt(self, packed: np.ndarray) -> bytes:
        """Encrypt each row of ``packed`` ([n, values_per_ciphertext]) into one batch."""
        return self.encrypt_timed(packed)[0]

    def encrypt_timed(self, packed: np.ndarray) -> tuple[bytes, dict[str, float]]:
        """``encrypt`` plus seconds spent in "encode", "encrypt" and "serialize"."""
        ctx = self._context
        packed = np.ascontiguousarray(packed, dtype=np.float64)
        if packed.ndim != 2 or packed.shape[1] != ctx.values_per_ciphertext:
            raise CryptoError(
                f"packed shape {packed.shape} is not [n, {ctx.values_per_ciphertext}]"
            )
        peak = float(np.max(np.abs(packed))) if packed.size else 0.0
        if not peak <= ctx.value_bound:  # also catches NaN
            raise CryptoError(
                f"a packed value of magnitude {peak:.4g} exceeds the context's value bound "
                f"{ctx.value_bound:g}; scale updates down"
            )
        rows = packed.view(np.complex128) if ctx.complex_packing else packed
        cc, key = ctx.openfhe, self._key
        encode = encrypt = serialize = 0.0
        payloads = []
        for row in rows:
            t0 = time.perf_counter()
            plain = cc.MakeCKKSPackedPlaintext(row)
            t1 = time.perf_counter()
            ct = cc.Encrypt(key, plain)
            t2 = time.perf_counter()
            payloads.append(fhe.Serialize(ct, fhe.BINARY))
            t3 = time.perf_counter()
            encode, encrypt, serialize = encode + t1 - t0, encrypt + t2 - t1, serialize + t3 - t2
        t0 = time.perf_counter()
        blob = encode_batch(payloads)
        serialize += time.perf_counter() - t0
        return blob, {"encode": encode, "encrypt": encrypt, "serialize": serialize}


_COPY_BLOCK = 1 << 22  # bytes copied and hashed at a time (stays in cache between the two)
_scratch = threading.local()


def private_copy(batch: bytes | np.ndarray) -> tuple[bytes | memoryview, str]:
    """``batch`` as bytes this process alone can write, and its hex digest
    (`fedsim.crypto.identity.digest`).

    A view of Ray's object store is mapped writable in every worker of the node, so the
    bytes a sum hashes, checks and adds must be its own, or another party could change
    them between those reads. ``bytes`` are immutable and pass as they are; a view is
    copied block by block into one buffer per thread, reused by every later batch (a
    fresh 569 MB ``bytes`` copy costs about 1.4 s in page faults, the reused buffer
    0.05 s), and each block is hashed while it is in cache. The returned view is valid
    until this thread's next call.
    """
    if isinstance(batch, bytes):
        return batch, digest_bytes(batch).hex()
    source = memoryview(batch).cast("B")
    size = source.nbytes
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = bytearray(size)
    copy = memoryview(buffer)[:size]
    digest = hasher()
    for lo in range(0, size, _COPY_BLOCK):
        hi = min(size, lo + _COPY_BLOCK)
        copy[lo:hi] = source[lo:hi]
        digest.update(copy[lo:hi])
    return copy, digest.hexdigest()


class CiphertextSum(abc.ABC):
    """Streaming sum of ciphertext batches (the aggregator's state); abstract.

    The first batch fixes the ciphertext count (unless ``num_ciphertexts`` is given);
    every later batch must match it. At most ``context.max_contributors + 1`` batches
    are accepted: the flooding noise is sized for that many. Two final kinds:
    `ByteSum` adds residues in the serialized bytes, `ObjectSum` adds OpenFHE objects;
    `summation_for` picks the first when the key's layout can be learned and checked.
    """

    def __init__(self, context: CKKSContext, *, num_ciphertexts: int | None = None) -> None:
        self._context = context
        self._expected_count = num_ciphertexts
        self._digests: dict[str, str] = {}

    @property
    def count(self) -> int:
        """Batches summed so far."""
        return len(self._digests)

    @property
    def digests(self) -> dict[str, str]:
        """Contributor id to the hex digest of the batch it sent, in arrival order."""
        return dict(self._digests)

    def add(self, batch: bytes, *, contributor: str,
            authenticate: Callable[[str], None] | None = None) -> str:
        """Add ``batch`` (bytes, or a read-only uint8 array of them) to the sum; return
        its hex digest (`fedsim.crypto.identity.digest`).

        Raises ``CryptoError`` naming ``contributor`` for a duplicate contributor, a
        truncated or corrupted batch, a wrong ciphertext count, or ciphertexts under
        another key or context. The sum is unchanged then.

        ``authenticate(digest)``, if given, runs on the digest before the batch is read
        and raises if it is not the digest a signature covers; the CRC pass is skipped
        then (the signed digest covers every byte the CRCs do).
        """
        if contributor in self._digests:
            raise CryptoError(f"batch from {contributor}: contributor already added")
        if self.count >= self._context.max_contributors + 1:
            raise CryptoError(
                f"batch from {contributor}: the sum already holds {self.count} batches, the "
                f"most this context's flooding is sized for (max_contributors + 1)"
            )
        try:
            self._precheck(batch)
        except CryptoError as exc:
            raise CryptoError(f"batch from {contributor} rejected: {exc}") from exc
        batch, digest = private_copy(batch)
        if authenticate is not None:
            authenticate(digest)
        try:
            self._add(batch, crc=authenticate is None)
        except CryptoError as exc:
            raise CryptoError(f"batch from {contributor} rejected: {exc}") from exc
        self._digests[contributor] = digest
        return digest

    def _check_count(self, found: int, summed: int | None) -> None:
        """The first batch (or ``num_ciphertexts``) fixes how many ciphertexts a batch has."""
        expected = summed if summed is not None else self._expected_count
        if expected is not None and found != expected:
            raise CryptoError(f"{found} ciphertexts, expected {expected}")

    def _precheck(self, batch: bytes | np.ndarray) -> None:
        """Refuse a batch of the wrong size before it is copied (nothing is trusted
        from this look: every check runs again on the copy). By default: no look."""
        return None

    @abc.abstractmethod
    def _add(self, batch: bytes | memoryview, *, crc: bool) -> None:
        """Check ``batch`` completely (its CRCs unless ``crc`` is False), then add it;
        raise CryptoError leaving the sum as is."""

    @abc.abstractmethod
    def result(self) -> bytes:
        """The sum as a ciphertext batch."""

    @property
    @abc.abstractmethod
    def num_ciphertexts(self) -> int:
        """Ciphertexts in the sum (0 before the first batch)."""

    @property
    def nbytes(self) -> int:
        """Bytes `result` takes."""
        return len(self.result()) if self.count else 0

    def digest(self) -> str:
        """Hex digest of `result`'s bytes."""
        return digest_bytes(self.result()).hex()

    def items(self) -> Iterator[bytes | memoryview]:
        """`result`'s ciphertexts one at a time (each valid until the next is taken)."""
        return iter_batch(self.result(), kind="ciphertext")


@final
class ByteSum(CiphertextSum):
    """Adds the residue arrays inside the serialized bytes (see `fedsim.crypto.raw`)."""

    def __init__(self, context: CKKSContext, layout: raw.Layout, *,
                 num_ciphertexts: int | None = None) -> None:
        super().__init__(context, num_ciphertexts=num_ciphertexts)
        self._layout = layout
        self._sum = LazySum(layout)

    def _precheck(self, batch: bytes | np.ndarray) -> None:
        # A view's size bounds the private copy: only a batch of the size its header
        # and this sum's count give is copied (so no party can make a holder pin an
        # oversized copy buffer).
        count = raw.framed_count(batch, self._layout, kind="ciphertext")
        self._check_count(count, self._sum.count or None)

    def _add(self, batch: bytes | memoryview, *, crc: bool) -> None:
        self._check_count(batch_count(batch, kind="ciphertext"), self._sum.count or None)
        self._sum.add(batch, kind="ciphertext", crc=crc)

    def result(self) -> bytes:
        return raw.write_batch(self._layout, self._reduced())

    @property
    def num_ciphertexts(self) -> int:
        return self._sum.count

    @property
    def nbytes(self) -> int:
        return HEAD.size + self.num_ciphertexts * (ITEM.size + self._layout.size)

    def digest(self) -> str:
        """As `result`'s digest, a block of items at a time (no batch-sized copy)."""
        digest = hasher()
        for piece, _ in raw.stream_batch(self._layout, self._reduced()):
            digest.update(piece)
        return digest.hexdigest()

    def items(self) -> Iterator[memoryview]:
        """`result`'s items a block at a time, straight from the residues."""
        for _, items in raw.stream_batch(self._layout, self._reduced()):
            yield from items

    def _reduced(self) -> np.ndarray:
        return self._sum.reduced()


@final
class ObjectSum(CiphertextSum):
    """Deserializes each batch and adds OpenFHE ciphertexts in place.

    The first batch fixes the key tag unless ``public_key`` is given.
    """

    def __init__(self, context: CKKSContext, *, public_key: bytes | None = None,
                 num_ciphertexts: int | None = None) -> None:
        super().__init__(context, num_ciphertexts=num_ciphertexts)
        self._key_tag: str | None = None
        if public_key is not None:
            self._key_tag = _public_key(public_key).GetKeyTag()
        self._sum: list[Any] | None = None

    def _add(self, batch: bytes | memoryview, *, crc: bool) -> None:
        # The CRCs are checked here either way (cheap next to deserializing).
        cts = load_ciphertexts(self._context, batch, kind="ciphertext")
        self._check_count(len(cts), None if self._sum is None else len(self._sum))
        if not all(raw.reduced(ct) for ct in cts):
            raise CryptoError("a residue is not reduced modulo its modulus (corrupted item)")
        tags = {ct.GetKeyTag() for ct in cts}
        tag = self._key_tag or next(iter(tags), None)
        if tags - {tag}:
            raise CryptoError("ciphertexts encrypted under another public key")
        if self._sum is None:
            self._sum = cts
        else:
            self._add_in_place(cts)
        self._key_tag = tag

    def _add_in_place(self, cts: list[Any]) -> None:
        # In place is 10x faster than EvalAdd into new ciphertexts. Should OpenFHE refuse
        # one midway (another context), subtracting what was added restores the sum
        # exactly: ciphertext addition is exact arithmetic modulo q.
        cc = self._context.openfhe
        done = 0
        try:
            for total, ct in zip(self._sum, cts, strict=True):
                cc.EvalAddInPlace(total, ct)
                done += 1
        except RuntimeError as exc:
            for total, ct in zip(self._sum[:done], cts[:done], strict=True):
                cc.EvalSubInPlace(total, ct)
            raise CryptoError(f"ciphertexts from another context: {exc}") from exc

    @property
    def num_ciphertexts(self) -> int:
        return 0 if self._sum is None else len(self._sum)

    def result(self) -> bytes:
        if self._sum is None:
            raise CryptoError("no batch has been added; nothing to return")
        return encode_batch([fhe.Serialize(ct, fhe.BINARY) for ct in self._sum])


def summation_for(context: CKKSContext, public_key: bytes) -> Callable[[], CiphertextSum]:
    """A maker of empty sums for ciphertexts under ``public_key``.

    `ByteSum` when the residue layout of a fresh ciphertext under the key is learned
    and checked against OpenFHE's ``EvalAdd`` (``raw.learn_ciphertext``); `ObjectSum`
    otherwise (another OpenFHE build).
    """
    layout = raw.learn_ciphertext(context.openfhe, _public_key(public_key), context.slots)
    if layout is None:
        return functools.partial(ObjectSum, context, public_key=public_key)
    return functools.partial(ByteSum, context, layout)


def _public_key(blob: bytes) -> Any:
    try:
        return fhe.DeserializePublicKeyString(blob, fhe.BINARY)
    except RuntimeError as exc:
        raise CryptoError(f"public key does not deserialize: {exc}") from exc

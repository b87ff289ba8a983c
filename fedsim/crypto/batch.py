"""The wire format of a list of serialized ciphertexts: one bytes blob.

Layout (little endian)::

    header  b"FSCB" | version u16 | kind u16 | count u32
    count x (length u32 | crc32 u32 | payload)

A payload is ``Serialize(ciphertext, BINARY)``. The kind tells ciphertexts from partial
decryptions, so a share can never be summed and a ciphertext never fused. CRC32 catches
truncation and corruption in transit; it is no defence against a party that forges a
batch on purpose (out of the threat model: channels are assumed authenticated).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fedsim.errors import CryptoError

KINDS = ("ciphertext", "lead-share", "share")
_MAGIC = b"FSCB"
_VERSION = 1
HEAD = struct.Struct("<4sHHI")  # magic, version, kind, count
ITEM = struct.Struct("<II")  # length, crc32 of one payload


def is_blob(payload: Any) -> bool:
    """Whether ``payload`` is a batch's bytes: ``bytes``, or the read-only uint8 array a
    batch arrives as from another Ray worker (`fedsim.protocol.schemes.Bundle` sends
    its bytes out of band: a view of the object store, which other workers of the node
    can write, so `fedsim.crypto.CiphertextSum.add` copies it before reading it)."""
    return isinstance(payload, bytes) or (
        type(payload) is np.ndarray and payload.dtype == np.uint8
        and payload.ndim == 1 and payload.flags.c_contiguous
        and not payload.flags.writeable)


def encode_batch(payloads: Sequence[bytes], *, kind: str = "ciphertext") -> bytes:
    """Frame ``payloads`` as one batch of ``kind``."""
    parts = [header(kind, len(payloads))]
    for payload in payloads:
        parts.append(ITEM.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


def header(kind: str, count: int) -> bytes:
    """The header of a batch of ``count`` items of ``kind``."""
    if kind not in KINDS:
        raise CryptoError(f"unknown batch kind {kind!r}; allowed: {', '.join(KINDS)}")
    return HEAD.pack(_MAGIC, _VERSION, KINDS.index(kind), count)


def batch_kind(blob: bytes) -> str:
    """The kind in ``blob``'s header."""
    return KINDS[_read_header(blob)[0]]


def _read_header(blob: bytes) -> tuple[int, int]:
    if len(blob) < HEAD.size:
        raise CryptoError(f"batch truncated: {len(blob)} bytes, no complete header")
    magic, version, kind, count = HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise CryptoError("not a fedsim ciphertext batch (bad magic)")
    if version != _VERSION:
        raise CryptoError(f"batch format version {version}, this build reads {_VERSION}")
    if kind >= len(KINDS):
        raise CryptoError(f"batch has unknown kind {kind}")
    return kind, count


def decode_batch(blob: bytes, *, kind: str | None = "ciphertext") -> list[bytes]:
    """Split a batch into payloads, checking framing, CRCs and (unless None) the kind."""
    return list(iter_batch(blob, kind=kind))


def batch_count(blob: bytes, *, kind: str | None = "ciphertext") -> int:
    """Number of items a batch's header announces (checks the header and the kind)."""
    found, count = _read_header(blob)
    if kind is not None and KINDS[found] != kind:
        raise CryptoError(f"expected a {kind} batch, got a {KINDS[found]} batch")
    return count


def iter_batch(blob: bytes, *, kind: str | None = "ciphertext") -> Iterator[bytes]:
    """Yield a batch's payloads one at a time, with the checks of ``decode_batch``.

    Lets a caller deserialize, use and drop one ciphertext at a time, so peak memory
    stays near the size of the batch instead of a multiple of it.
    """
    count = batch_count(blob, kind=kind)
    view = memoryview(blob)
    offset = HEAD.size
    for i in range(count):
        if offset + ITEM.size > len(blob):
            raise CryptoError(f"batch truncated at item {i} of {count}")
        size, crc = ITEM.unpack_from(blob, offset)
        offset += ITEM.size
        if offset + size > len(blob):
            raise CryptoError(f"batch truncated inside item {i} of {count}")
        payload = bytes(view[offset : offset + size])
        if zlib.crc32(payload) != crc:
            raise CryptoError(f"batch item {i} of {count} is corrupted (CRC mismatch)")
        offset += size
        yield payload
    if offset != len(blob):
        raise CryptoError(f"batch has {len(blob) - offset} trailing bytes after {count} items")

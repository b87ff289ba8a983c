"""Sums of ciphertexts (or decryption shares) computed on their serialized bytes.

Adding two CKKS ciphertexts of the same context, key, level and scale is residue-wise
addition modulo each RNS modulus; OpenFHE's ``EvalAdd`` does exactly that and copies
the metadata. The aggregator and the fusion step spent most of their time turning
bytes into OpenFHE objects and back (deserialize 0.16 ms, add 0.02 ms, serialize
0.15 ms per ciphertext of ring 4096), so fedsim adds the residue arrays in place in the
serialized bytes with numpy instead: a whole batch at once, no OpenFHE object at all.

Where the residues sit is learned per process, never assumed: ``learn`` takes one
serialized item, reads its residues from OpenFHE's JSON serialization of the same
object, finds each array in the BINARY bytes, and every other byte becomes the
template that items must match exactly (context parameters, key tag, level, scale,
slots, format). ``learn_ciphertext`` then checks the result against OpenFHE: the raw
sum of two fresh ciphertexts must equal ``Serialize(EvalAdd(a, b))`` byte for byte.
Callers fall back to OpenFHE objects when learning fails (another OpenFHE build).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import openfhe as fhe

from fedsim.crypto.batch import HEAD, ITEM, batch_count, header
from fedsim.errors import CryptoError

_ROWS = 512  # items per numpy block: bounds temporaries to ~64 MB at ring 4096


@dataclass(frozen=True)
class Layout:
    """Where the residues of one serialized item sit, and the bytes around them."""

    template: bytes
    offsets: tuple[int, ...]  # byte offset of each residue array, element-major
    moduli: tuple[int, ...]  # the modulus of each array
    ring: int

    @property
    def size(self) -> int:
        return len(self.template)

    @property
    def arrays(self) -> int:
        return len(self.offsets)

    def fixed(self) -> list[tuple[int, int]]:
        """Byte ranges outside the residue arrays (they must equal the template's)."""
        out, start = [], 0
        for off in self.offsets:
            out.append((start, off))
            start = off + 8 * self.ring
        out.append((start, self.size))
        return [(a, b) for a, b in out if b > a]

    def _moduli_column(self) -> np.ndarray:
        return np.array(self.moduli, dtype=np.uint64)[:, None]


def learn(item: bytes) -> Layout | None:
    """The layout of a serialized ciphertext or share, or None if it cannot be found."""
    try:
        ct = fhe.DeserializeCiphertextString(item, fhe.BINARY)
        frame = json.loads(fhe.Serialize(ct, fhe.JSON))
        elements = frame["value0"]["ptr_wrapper"]["data"]["v"]
        offsets, moduli, ring = [], [], None
        start = 0
        for element in elements:
            for tower in element["v"]:
                data = tower["v"]["ptr_wrapper"]["data"]
                values = np.array(data["v"], dtype=np.uint64)
                raw = values.astype("<u8").tobytes()
                off = item.find(raw, start)
                if off < 0 or item.find(raw, off + 1) >= 0:
                    return None
                ring = values.size if ring is None else ring
                if values.size != ring:
                    return None
                offsets.append(off)
                moduli.append(int(data["m"]["v"]))
                start = off + len(raw)
    except (RuntimeError, KeyError, TypeError, ValueError):
        return None
    if not offsets or ring is None:
        return None
    template = bytearray(item)
    for off in offsets:
        template[off : off + 8 * ring] = bytes(8 * ring)
    return Layout(bytes(template), tuple(offsets), tuple(moduli), ring)


def reduced(ct: Any) -> bool:
    """True if every residue of OpenFHE ciphertext ``ct`` is below its modulus.

    Reads them from OpenFHE's JSON serialization: slow, for the object path only (the
    byte path checks every residue as it reads it).
    """
    frame = json.loads(fhe.Serialize(ct, fhe.JSON))
    for element in frame["value0"]["ptr_wrapper"]["data"]["v"]:
        for tower in element["v"]:
            data = tower["v"]["ptr_wrapper"]["data"]
            q = int(data["m"]["v"])
            if any(int(v) >= q for v in data["v"]):
                return False
    return True


def learn_ciphertext(cc: Any, public_key: Any, slots: int) -> Layout | None:
    """Learn the layout of fresh ciphertexts under ``public_key`` and check it.

    The check: the raw sum of two fresh ciphertexts equals OpenFHE's ``EvalAdd`` of them,
    serialized, byte for byte.
    """
    rng = np.random.default_rng()
    a, b = (cc.Encrypt(public_key, cc.MakeCKKSPackedPlaintext(rng.uniform(-0.1, 0.1, slots)))
            for _ in range(2))
    item_a, item_b = fhe.Serialize(a, fhe.BINARY), fhe.Serialize(b, fhe.BINARY)
    layout = learn(item_a)
    if layout is None:
        return None
    expected = fhe.Serialize(cc.EvalAdd(a, b), fhe.BINARY)
    try:
        res = read_items(layout, [item_a, item_b])
    except CryptoError:
        return None
    total = add_residues(res[:1].copy(), res[1:], layout)
    if write_items(layout, total)[0] != expected:
        return None
    return layout


def _rows(blob: bytes | memoryview, count: int, layout: Layout, offset: int) -> np.ndarray:
    stride = ITEM.size + layout.size
    return np.frombuffer(blob, dtype=np.uint8, count=count * stride, offset=offset).reshape(
        count, stride
    )


def read_batch(blob: bytes, layout: Layout, *, kind: str, crc: bool = True) -> np.ndarray:
    """Residues of every item of a batch: uint64 ``[count, arrays, ring]`` (a new array).

    Checks what ``iter_batch`` and ``iter_ciphertexts`` check: header, kind, framing,
    CRCs, and beyond: every byte outside the residues equals the layout's template (so
    the same context, key, level, scale and format), and every residue is below
    its modulus. Raises ``CryptoError`` naming the first problem.
    """
    rows, count = _framed_rows(blob, layout, kind=kind, crc=crc)
    return _residues(rows, layout, count)


def add_batch(total: np.ndarray, blob: bytes, layout: Layout, *, kind: str,
              crc: bool = True, lazy: bool = False) -> None:
    """``total += read_batch(blob)`` in place, without the batch's residues ever held
    whole (one block of items at a time), with read_batch's checks. A refused batch
    leaves ``total`` unchanged: the blocks already added are taken out again.

    ``crc=False`` skips the CRC pass: only for a batch whose digest the caller has
    checked against a signature (the digest covers every byte the CRCs do).
    ``lazy=True`` adds without reducing modulo q (``total`` then holds plain sums of
    reduced residues; the caller keeps their count within `lazy_capacity` and calls
    `reduce_residues` before using them): one pass less over memory per batch, and the
    residues are added straight from the batch's bytes, never copied out first.
    """
    rows, count = _framed_rows(blob, layout, kind=kind, crc=crc)
    if count != total.shape[0]:
        raise CryptoError(f"{count} ciphertexts, expected {total.shape[0]}")
    if lazy:
        _add_lazy(total, rows, layout, count)
        return
    block = np.empty((min(count, _ROWS), layout.arrays, layout.ring), dtype=np.uint64)
    added = 0
    try:
        for lo in range(0, count, _ROWS):
            n = min(_ROWS, count - lo)
            _residues(rows[lo : lo + n], layout, n, out=block[:n], first=lo)
            add_residues(total[lo : lo + n], block[:n], layout)
            added = lo + n
    except CryptoError:
        moduli = layout._moduli_column()
        for lo in range(0, added, _ROWS):
            n = min(_ROWS, added - lo)
            _residues(rows[lo : lo + n], layout, n, out=block[:n], first=lo)
            np.subtract(moduli, block[:n], out=block[:n])
            add_residues(total[lo : lo + n], block[:n], layout)
        raise


def lazy_capacity(layout: Layout) -> int:
    """How many reduced residue arrays can be summed in uint64 before reducing."""
    return (2**64 - 1) // (max(layout.moduli) - 1)


def _add_lazy(total: np.ndarray, rows: np.ndarray, layout: Layout, count: int) -> None:
    added = 0
    try:
        for lo in range(0, count, _ROWS):
            block = rows[lo : lo + _ROWS]
            _check_rows(block, layout, first=lo)
            for j, view in enumerate(_arrays(block, layout)):
                total[lo : lo + _ROWS, j] += view
            added = lo + block.shape[0]
    except CryptoError:
        for lo in range(0, added, _ROWS):
            hi = min(added, lo + _ROWS)
            for j, view in enumerate(_arrays(rows[lo:hi], layout)):
                total[lo:hi, j] -= view  # exact: uint64 wraps back
        raise


def reduce_residues(total: np.ndarray, layout: Layout) -> np.ndarray:
    """``total`` modulo each array's modulus, in place (after lazy adds)."""
    for j, q in enumerate(layout.moduli):
        for lo in range(0, total.shape[0], _ROWS):
            np.remainder(total[lo : lo + _ROWS, j], np.uint64(q),
                         out=total[lo : lo + _ROWS, j])
    return total


def framed_count(blob: bytes | np.ndarray, layout: Layout, *, kind: str) -> int:
    """The item count a batch's header announces, once its length is the one that
    count of this layout's items takes."""
    count = batch_count(blob, kind=kind)
    expected = HEAD.size + count * (ITEM.size + layout.size)
    if len(blob) != expected:
        raise CryptoError(f"batch of {count} items has {len(blob)} bytes, expected "
                          f"{expected} for items of this context and key")
    return count


def _framed_rows(blob: bytes, layout: Layout, *, kind: str,
                 crc: bool = True) -> tuple[np.ndarray, int]:
    """A batch's item bytes (``[count, layout.size]``) once its framing (and, unless
    ``crc`` is False, every item's CRC) is checked."""
    count = framed_count(blob, layout, kind=kind)
    stride = ITEM.size + layout.size
    rows = _rows(blob, count, layout, HEAD.size)
    sizes = rows[:, :4].copy().view("<u4")[:, 0]
    if count and np.any(sizes != layout.size):
        i = int(np.flatnonzero(sizes != layout.size)[0])
        raise CryptoError(f"batch item {i} of {count} has {sizes[i]} bytes, expected {layout.size}")
    if crc:
        view = memoryview(blob)
        for i in range(count):
            start = HEAD.size + i * stride
            _, expected = ITEM.unpack_from(blob, start)
            if zlib.crc32(view[start + ITEM.size : start + stride]) != expected:
                raise CryptoError(f"batch item {i} of {count} is corrupted (CRC mismatch)")
    return rows[:, ITEM.size :], count


def read_items(layout: Layout, items: list[bytes]) -> np.ndarray:
    """Residues of loose serialized items (same checks as ``read_batch`` minus framing)."""
    for i, item in enumerate(items):
        if len(item) != layout.size:
            raise CryptoError(f"item {i} has {len(item)} bytes, expected {layout.size}")
    rows = np.frombuffer(b"".join(items), dtype=np.uint8).reshape(len(items), layout.size)
    return _residues(rows, layout, len(items))


def _residues(rows: np.ndarray, layout: Layout, count: int, *,
              out: np.ndarray | None = None, first: int = 0) -> np.ndarray:
    """The checked residues of ``count`` items (into ``out`` if given); ``first``: the
    index of ``rows[0]`` in its batch, for error messages."""
    if out is None:
        out = np.empty((count, layout.arrays, layout.ring), dtype=np.uint64)
    for lo in range(0, count, _ROWS):
        block = rows[lo : lo + _ROWS]
        _check_rows(block, layout, first=first + lo)
        for j, view in enumerate(_arrays(block, layout)):
            out[lo : lo + _ROWS, j] = view
    return out


def _arrays(rows: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """Views of each residue array of ``rows`` (item bytes) as uint64 ``[n, ring]``."""
    return [rows[:, off : off + 8 * layout.ring].view("<u8") for off in layout.offsets]


def _check_rows(block: np.ndarray, layout: Layout, *, first: int) -> None:
    """Every byte outside the residues equals the template; every residue is reduced."""
    template = np.frombuffer(layout.template, dtype=np.uint8)
    for a, b in layout.fixed():
        bad = np.any(block[:, a:b] != template[a:b], axis=1)
        if bad.any():
            i = first + int(np.flatnonzero(bad)[0])
            raise CryptoError(
                f"item {i} is not a ciphertext of this context and key (its metadata "
                "differs: another context, key, level, scale or format)"
            )
    for view, q in zip(_arrays(block, layout), layout.moduli, strict=True):
        if view.size and view.max() >= q:
            raise CryptoError("a residue is not reduced modulo its modulus (corrupted item)")


def add_residues(total: np.ndarray, more: np.ndarray, layout: Layout) -> np.ndarray:
    """``total += more`` modulo each array's modulus, in place (moduli < 2**63)."""
    moduli = layout._moduli_column()
    spare = np.empty(total[:_ROWS].shape, dtype=np.uint64)
    for lo in range(0, total.shape[0], _ROWS):
        t = total[lo : lo + _ROWS]
        t += more[lo : lo + _ROWS]
        # t < 2q: t - q wraps to above t exactly when t < q, so the minimum is t mod q.
        d = np.subtract(t, moduli, out=spare[: t.shape[0]])
        np.minimum(t, d, out=t)
    return total


def sum_in_place(parts: Iterable[np.ndarray], layout: Layout) -> np.ndarray:
    """The modular sum of ``parts`` (residue arrays of one shape), accumulated in the first.

    Addition modulo q is commutative, so the order (which share is the lead) is free.
    """
    parts = iter(parts)
    total = next(parts)
    for more in parts:
        add_residues(total, more, layout)
    return total


def write_items(layout: Layout, residues: np.ndarray) -> list[bytes]:
    """Serialized items: the template with ``residues`` ([count, arrays, ring]) filled in."""
    return [row.tobytes() for row in _fill(layout, residues)]


def write_batch(layout: Layout, residues: np.ndarray, *, kind: str = "ciphertext") -> bytes:
    """One batch (the ``fedsim.crypto.batch`` format) of items holding ``residues``."""
    head = header(kind, residues.shape[0])
    out = bytearray(len(head) + residues.shape[0] * (ITEM.size + layout.size))
    out[: len(head)] = head
    _write_items(out, len(head), layout, residues)
    return bytes(out)


def stream_batch(layout: Layout, residues: np.ndarray, *, kind: str = "ciphertext"
                 ) -> Iterator[tuple[memoryview, list[memoryview]]]:
    """`write_batch`'s bytes a block of items at a time, never held whole: yields each
    piece of the batch in order with the items it holds (views of one reused buffer,
    valid until the next piece). The header comes first, with no items."""
    count = residues.shape[0]
    yield memoryview(header(kind, count)), []
    stride = ITEM.size + layout.size
    buffer = bytearray(min(count, _ROWS) * stride)
    for lo in range(0, count, _ROWS):
        piece = _write_items(buffer, 0, layout, residues[lo : lo + _ROWS])
        yield piece, [piece[i * stride + ITEM.size : (i + 1) * stride]
                      for i in range(len(piece) // stride)]
        del piece


def _write_items(out: bytearray, offset: int, layout: Layout,
                 residues: np.ndarray) -> memoryview:
    """Frame ``residues`` as items (size, CRC, template filled in) into ``out`` from
    ``offset``; returns the view of the bytes written."""
    n, stride = residues.shape[0], ITEM.size + layout.size
    rows = np.frombuffer(out, dtype=np.uint8, count=n * stride, offset=offset)
    _fill(layout, residues, rows.reshape(n, stride)[:, ITEM.size :])
    del rows
    view = memoryview(out)[offset : offset + n * stride]
    for i in range(n):
        crc = zlib.crc32(view[i * stride + ITEM.size : (i + 1) * stride])
        ITEM.pack_into(out, offset + i * stride, layout.size, crc)
    return view


def _fill(layout: Layout, residues: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    if rows is None:
        rows = np.empty((residues.shape[0], layout.size), dtype=np.uint8)
    template = np.frombuffer(layout.template, dtype=np.uint8)
    for a, b in layout.fixed():
        rows[:, a:b] = template[a:b]
    for j, off in enumerate(layout.offsets):
        rows[:, off : off + 8 * layout.ring].view("<u8")[...] = residues[:, j]
    return rows

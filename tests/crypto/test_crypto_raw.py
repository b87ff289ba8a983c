"""Sums in serialized bytes (fedsim.crypto.raw) against OpenFHE's own arithmetic."""

import struct
import zlib

import numpy as np
import openfhe as fhe
import pytest
from blake3 import blake3

from fedsim.crypto import (
    ByteSum,
    CKKSContext,
    Encryptor,
    ObjectSum,
    Packer,
    encode_batch,
    fuse,
    fuse_bytes,
    raw,
)
from fedsim.crypto.batch import HEAD, ITEM, decode_batch
from fedsim.crypto.cipher import private_copy
from fedsim.crypto.fusion import learn_share_layout
from fedsim.errors import CryptoError


def ciphertext_layout(ctx: CKKSContext, key: bytes) -> raw.Layout:
    layout = raw.learn_ciphertext(
        ctx.openfhe, fhe.DeserializePublicKeyString(key, fhe.BINARY), ctx.slots
    )
    assert layout is not None
    return layout


@pytest.mark.parametrize("name", ["test_ctx", "fast_ctx", "secure_ctx"])
def test_byte_sums_equal_openfhe_sums_and_fuse_to_the_same_values(name, request, make_holders):
    ctx: CKKSContext = request.getfixturevalue(name)
    holders, key = make_holders(ctx)
    layout = ciphertext_layout(ctx, key)
    # two ciphertext arrays (c0, c1) of one ring each, one 60-bit tower
    assert layout.arrays == 2 and layout.ring == ctx.ring_dimension
    assert all(q < 2**63 for q in layout.moduli)
    n = 2 * ctx.values_per_ciphertext + 5
    packer = Packer(n, ctx.values_per_ciphertext)
    encryptor = Encryptor(ctx, key)
    rng = np.random.default_rng(11)
    bound = min(ctx.value_bound, 1.0) / 3
    vectors = [rng.uniform(-bound, bound, n) for _ in range(3)]
    batches = [encryptor.encrypt(packer.pack(v, 0.1)) for v in vectors]
    by_objects, by_bytes = ObjectSum(ctx), ByteSum(ctx, layout)
    for i, batch in enumerate(batches):
        assert by_objects.add(batch, contributor=str(i)) == by_bytes.add(batch, contributor=str(i))
    aggregate = by_bytes.result()
    assert aggregate == by_objects.result()  # byte for byte

    shares = [h.partial_decrypt(aggregate, lead=i == 0) for i, h in enumerate(holders)]
    share_layout = learn_share_layout(ctx, shares)
    assert share_layout is not None and share_layout.arrays == 1
    fused_objects = fuse(ctx, shares)
    fused_bytes = fuse_bytes(ctx, shares, share_layout)
    vector, weight = packer.unpack(fused_bytes)
    assert np.abs(vector - sum(vectors)).max() < ctx.error_bound
    assert abs(weight - 0.3) < ctx.error_bound
    if ctx.flooding:  # decoding adds fresh noise: equal within the error bound
        assert np.abs(fused_bytes - fused_objects).max() < 2 * ctx.error_bound
    else:
        np.testing.assert_array_equal(fused_bytes, fused_objects)


@pytest.fixture
def raw_summing(test_ctx, holders):
    holders, key = holders
    layout = ciphertext_layout(test_ctx, key)
    packer = Packer(700, test_ctx.values_per_ciphertext)  # 2 ciphertexts
    encryptor = Encryptor(test_ctx, key)
    total = ByteSum(test_ctx, layout)
    good = encryptor.encrypt(packer.pack(np.full(700, 0.01), 0.1))
    total.add(good, contributor="first")
    return total, encryptor, packer, good, layout


def with_crc(blob: bytearray, item: int, size: int) -> bytes:
    start = HEAD.size + item * (ITEM.size + size)
    payload = bytes(blob[start + ITEM.size : start + ITEM.size + size])
    ITEM.pack_into(blob, start, size, zlib.crc32(payload))
    return bytes(blob)


def test_bad_batches_are_rejected_in_bytes_too(test_ctx, raw_summing, make_holders, rejected):
    total, encryptor, packer, good, layout = raw_summing
    rejected(total, good[:-10], "truncated-client", "expected")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x04
    rejected(total, bytes(flipped), "flipped-client", "corrupted")
    _, other_key = make_holders(test_ctx)
    foreign = Encryptor(test_ctx, other_key).encrypt(packer.pack(np.zeros(700), 0.1))
    rejected(total, foreign, "foreign-client", "metadata differs")
    short = encryptor.encrypt(Packer(10, test_ctx.values_per_ciphertext).pack(np.zeros(10), 0.1))
    rejected(total, short, "short-client", "1 ciphertexts, expected 2")
    rejected(total, good, "first", "already added")
    twin = CKKSContext.create("test", allow_insecure=True)  # same ring, another estimate
    _, twin_key = make_holders(twin)
    other = Encryptor(twin, twin_key).encrypt(packer.pack(np.zeros(700), 0.1))
    rejected(total, other, "twin-context-client", "metadata differs")
    rejected(
        total, encode_batch(decode_batch(good), kind="share"), "share-client", "got a share batch"
    )
    # a residue equal to its modulus: well framed, right metadata, not a valid ciphertext
    unreduced = bytearray(good)
    at = HEAD.size + ITEM.size + layout.offsets[1] + 8 * 5
    struct.pack_into("<Q", unreduced, at, layout.moduli[1])
    rejected(total, with_crc(unreduced, 0, layout.size), "unreduced-client", "not reduced")


def test_residues_wrap_modulo_q(test_ctx, holders):
    _, key = holders
    layout = ciphertext_layout(test_ctx, key)
    q = np.uint64(layout.moduli[0])
    total = np.full((1, layout.arrays, layout.ring), q - np.uint64(1), dtype=np.uint64)
    more = np.full_like(total, q - np.uint64(2))
    raw.add_residues(total, more, layout)
    assert np.all(total == q - np.uint64(3))
    back = raw.read_items(layout, raw.write_items(layout, total))
    np.testing.assert_array_equal(back, total)


def test_learn_gives_up_on_bytes_it_cannot_read():
    assert raw.learn(b"not a ciphertext") is None


@pytest.mark.parametrize("lazy", [False, True])
def test_add_batch_adds_block_by_block_and_refuses_all_or_nothing(test_ctx, holders, monkeypatch,
                                                                  lazy):
    """A batch added in blocks (the sum never holds a second batch's residues whole)
    gives read_batch + add_residues exactly (lazy: once reduced); a bad item in the last
    block leaves the sum as it was."""
    _, key = holders
    layout = ciphertext_layout(test_ctx, key)
    monkeypatch.setattr(raw, "_ROWS", 2)  # blocks of 2 items, the last one shorter
    encryptor = Encryptor(test_ctx, key)
    packer = Packer(4 * test_ctx.values_per_ciphertext, test_ctx.values_per_ciphertext)
    rng = np.random.default_rng(0)
    a, b = (encryptor.encrypt(packer.pack(rng.uniform(-0.1, 0.1, packer.num_values), 0.1))
            for _ in range(2))
    expected = raw.add_residues(raw.read_batch(a, layout, kind="ciphertext"),
                                raw.read_batch(b, layout, kind="ciphertext"), layout)
    total = raw.read_batch(a, layout, kind="ciphertext")
    raw.add_batch(total, b, layout, kind="ciphertext", lazy=lazy)
    np.testing.assert_array_equal(raw.reduce_residues(total.copy(), layout) if lazy else total,
                                  expected)
    count = total.shape[0]
    assert count % 2 == 1 and count >= 5
    before = total.copy()
    unreduced = bytearray(b)
    last = count - 1  # in the last block
    at = HEAD.size + last * (ITEM.size + layout.size) + ITEM.size + layout.offsets[0] + 8 * 3
    struct.pack_into("<Q", unreduced, at, layout.moduli[0])
    with pytest.raises(CryptoError, match="not reduced"):
        raw.add_batch(total, with_crc(unreduced, last, layout.size), layout, kind="ciphertext",
                      lazy=lazy)
    np.testing.assert_array_equal(total, before)


def test_unreduced_sums_are_reduced_before_they_could_overflow(test_ctx, holders, monkeypatch):
    """With room for only two unreduced batches, four batches still sum byte for byte
    as OpenFHE sums them (the residues are reduced whenever the next add could wrap)."""
    _, key = holders
    layout = ciphertext_layout(test_ctx, key)
    monkeypatch.setattr(raw, "lazy_capacity", lambda layout: 2)
    encryptor = Encryptor(test_ctx, key)
    packer = Packer(700, test_ctx.values_per_ciphertext)
    rng = np.random.default_rng(3)
    by_objects, by_bytes = ObjectSum(test_ctx), ByteSum(test_ctx, layout)
    for i in range(4):
        batch = encryptor.encrypt(packer.pack(rng.uniform(-0.1, 0.1, 700), 0.1))
        by_objects.add(batch, contributor=str(i))
        by_bytes.add(batch, contributor=str(i))
    assert by_bytes.result() == by_objects.result()


def test_an_authenticated_add_checks_the_digest_before_reading_the_batch(raw_summing):
    """``authenticate`` sees the digest of the exact bytes; when it refuses, nothing is
    added; when it accepts, the batch is added as an unauthenticated add would."""
    total, encryptor, packer, good, layout = raw_summing
    other = encryptor.encrypt(packer.pack(np.full(700, 0.02), 0.1))
    seen = []

    def refuse(digest: str) -> None:
        seen.append(digest)
        raise CryptoError("not the signed digest")

    before = total.result()
    with pytest.raises(CryptoError, match="not the signed digest"):
        total.add(other, contributor="second", authenticate=refuse)
    assert seen == [blake3(other).hexdigest()]
    assert total.count == 1 and total.result() == before
    plain = ByteSum(total._context, layout)
    plain.add(good, contributor="first")
    plain.add(other, contributor="second")
    assert total.add(other, contributor="second", authenticate=seen.append) == seen[-1]
    assert total.result() == plain.result()


def test_the_bytes_added_are_the_bytes_hashed_even_if_shared_memory_changes(raw_summing):
    """A view of Ray's object store is writable by every worker of the node: a party that
    rewrites a batch after the holder hashed it (here: while the signature is checked)
    must not get the rewritten bytes added."""
    total, encryptor, packer, good, layout = raw_summing
    other = encryptor.encrypt(packer.pack(np.full(700, 0.02), 0.1))
    shared = bytearray(other)
    view = np.frombuffer(shared, dtype=np.uint8)
    view.flags.writeable = False  # what a receiver sees: read-only, yet another can write

    def rewrite_after_hashing(digest: str) -> None:
        assert digest == blake3(other).hexdigest()
        at = HEAD.size + ITEM.size + layout.offsets[1]
        shared[at : at + 8] = struct.pack("<Q", 2**52)  # a crafted c1 residue

    total.add(view, contributor="second", authenticate=rewrite_after_hashing)
    plain = ByteSum(total._context, layout)
    plain.add(good, contributor="first")
    plain.add(other, contributor="second")
    assert total.result() == plain.result()


def test_a_view_is_copied_into_one_reused_private_buffer():
    """`private_copy` hashes what it copied, its copy does not follow later writes to the
    shared bytes, and a later batch reuses the same buffer (no fresh 569 MB per batch)."""
    shared = bytearray(np.random.default_rng(1).integers(0, 256, 3 * 2**22 + 5,
                                                        dtype=np.uint8).tobytes())
    original = bytes(shared)
    view = np.frombuffer(shared, dtype=np.uint8)
    view.flags.writeable = False
    copy, digest = private_copy(view)
    assert digest == blake3(original).hexdigest()
    shared[:4] = b"\xff\xff\xff\xff"
    assert bytes(copy) == original
    smaller = np.frombuffer(original[:1000], dtype=np.uint8)
    again, digest = private_copy(smaller)
    assert again.obj is copy.obj and bytes(again) == original[:1000]
    assert digest == blake3(original[:1000]).hexdigest()
    assert private_copy(original) == (original, blake3(original).hexdigest())


def test_an_oversized_view_is_refused_before_it_is_copied(raw_summing, rejected):
    """No party can make a sum copy (and its thread keep) more than a batch's size: the
    size the header and the sum's count give is checked on the view first."""
    from fedsim.crypto import cipher

    total, _, _, good, _ = raw_summing
    before = len(getattr(cipher._scratch, "buffer", b""))
    view = np.frombuffer(good + bytes(50 << 20), dtype=np.uint8)
    view.flags.writeable = False
    rejected(total, view, "padded", "bytes, expected")
    assert len(getattr(cipher._scratch, "buffer", b"")) == before

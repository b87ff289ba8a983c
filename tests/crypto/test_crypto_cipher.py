
import numpy as np
import openfhe as fhe
import pytest
from blake3 import blake3

from fedsim.crypto import (
    CKKSContext,
    Encryptor,
    ObjectSum,
    Packer,
    batch_kind,
    decode_batch,
    encode_batch,
    fuse,
    fuse_timed,
)
from fedsim.errors import CryptoError


def test_batch_round_trip_and_framing_errors():
    payloads = [b"", b"a", bytes(range(256)) * 3]
    blob = encode_batch(payloads)
    assert decode_batch(blob) == payloads and batch_kind(blob) == "ciphertext"
    assert decode_batch(encode_batch([])) == []
    for cut in (3, 11, 12, 20, len(blob) - 1):
        with pytest.raises(CryptoError, match="truncated"):
            decode_batch(blob[:cut])
    flipped = bytearray(blob)
    flipped[-100] ^= 0x01
    with pytest.raises(CryptoError, match="item 2 of 3 is corrupted"):
        decode_batch(bytes(flipped))
    with pytest.raises(CryptoError, match="3 trailing bytes"):
        decode_batch(blob + b"xyz")
    with pytest.raises(CryptoError, match="expected a ciphertext batch, got a share batch"):
        decode_batch(encode_batch(payloads, kind="share"))


def run_round(ctx, vectors, weights, holders, key):
    packer = Packer(len(vectors[0]), ctx.values_per_ciphertext)
    encryptor = Encryptor(ctx, key)
    total = ObjectSum(ctx, public_key=key)
    for i, (vector, weight) in enumerate(zip(vectors, weights, strict=True)):
        packed = packer.pack(vector, weight)
        packer.check_range(packed, len(vectors), ctx.value_bound)
        batch, timings = encryptor.encrypt_timed(packed)
        assert set(timings) == {"encode", "encrypt", "serialize"}
        assert total.add(batch, contributor=f"client-{i}") == blake3(batch).hexdigest()
    parts = [h.partial_decrypt(total.result(), lead=i == 0) for i, h in enumerate(holders)]
    return packer.unpack(fuse(ctx, parts)), total


def test_three_clients_three_holders_decrypt_the_weighted_sum(test_ctx, holders):
    holders, key = holders
    n = 3 * test_ctx.values_per_ciphertext + 7
    rng = np.random.default_rng(7)
    vectors = [rng.uniform(-0.15, 0.15, n) for _ in range(3)]
    (vector, weight), total = run_round(test_ctx, vectors, [0.1, 0.15, 0.05], holders, key)
    assert total.count == 3 and list(total.digests) == ["client-0", "client-1", "client-2"]
    error = np.abs(vector - sum(vectors)).max()
    assert error < test_ctx.error_bound
    assert error > test_ctx.error_bound / 100  # flooded: the noise is really there
    assert abs(weight - 0.3) < test_ctx.error_bound


@pytest.mark.parametrize("name", ["secure_ctx", "fast_ctx"])
def test_one_small_round_in_the_real_profiles(name, request, make_holders):
    ctx: CKKSContext = request.getfixturevalue(name)
    holders, key = make_holders(ctx)
    rng = np.random.default_rng(3)
    bound = min(ctx.value_bound, 1.0) / 3
    vectors = [rng.uniform(-bound, bound, 5000) for _ in range(3)]
    (vector, weight), _ = run_round(ctx, vectors, [0.1, 0.1, 0.1], holders, key)
    assert np.abs(vector - sum(vectors)).max() < ctx.error_bound
    assert abs(weight - 0.3) < ctx.error_bound


@pytest.fixture
def summing(test_ctx, holders):
    holders, key = holders
    packer = Packer(700, test_ctx.values_per_ciphertext)  # 2 ciphertexts
    encryptor = Encryptor(test_ctx, key)
    total = ObjectSum(test_ctx)
    good = encryptor.encrypt(packer.pack(np.full(700, 0.01), 0.1))
    total.add(good, contributor="first")
    return total, encryptor, packer, good


def test_bad_batches_are_rejected_by_name_and_leave_the_sum_unchanged(
    test_ctx, summing, make_holders, rejected
):
    total, encryptor, packer, good = summing
    rejected(total, good[:-10], "truncated-client", "truncated")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x04
    rejected(total, bytes(flipped), "flipped-client", "corrupted")
    _, other_key = make_holders(test_ctx)
    foreign = Encryptor(test_ctx, other_key).encrypt(packer.pack(np.zeros(700), 0.1))
    rejected(total, foreign, "foreign-client", "another public key")
    short = encryptor.encrypt(Packer(10, test_ctx.values_per_ciphertext).pack(np.zeros(10), 0.1))
    rejected(total, short, "short-client", "1 ciphertexts, expected 2")
    rejected(total, good, "first", "already added")
    fast = CKKSContext.create("fast")
    _, fast_key = make_holders(fast)
    other = Encryptor(fast, fast_key).encrypt(
        Packer(700, fast.values_per_ciphertext).pack(np.zeros(700), 0.1)
    )
    rejected(total, other, "other-context-client", "belongs to another CKKS context")
    twin = CKKSContext.create("test", allow_insecure=True)  # same ring, another estimate
    _, twin_key = make_holders(twin)
    other = Encryptor(twin, twin_key).encrypt(packer.pack(np.zeros(700), 0.1))
    rejected(total, other, "twin-context-client", "belongs to another CKKS context")
    rejected(
        total, encode_batch(decode_batch(good), kind="share"), "share-client", "got a share batch"
    )


def test_sum_refuses_more_batches_than_the_flooding_is_sized_for(make_holders):
    ctx = CKKSContext.create("test", allow_insecure=True, max_contributors=1)
    _, key = make_holders(ctx)
    encryptor = Encryptor(ctx, key)
    batch = encryptor.encrypt(Packer(3, ctx.values_per_ciphertext).pack(np.zeros(3), 0.1))
    total = ObjectSum(ctx)
    total.add(batch, contributor="client")
    total.add(batch, contributor="dp-noise")
    with pytest.raises(CryptoError, match="extra: the sum already holds 2 batches"):
        total.add(batch, contributor="extra")


def test_fuse_needs_exactly_one_lead(test_ctx, summing, holders):
    total, *_ = summing
    aggregate = total.result()
    holders, _ = holders
    with pytest.raises(CryptoError, match="exactly one lead share, got 0 among 2"):
        fuse(test_ctx, [h.partial_decrypt(aggregate, lead=False) for h in holders[:2]])
    with pytest.raises(CryptoError, match="got 2 among 2"):
        fuse(test_ctx, [h.partial_decrypt(aggregate, lead=True) for h in holders[:2]])
    parts = [h.partial_decrypt(aggregate, lead=i == 0) for i, h in enumerate(holders)]
    values, timings = fuse_timed(test_ctx, parts)
    assert values.shape == (2, test_ctx.values_per_ciphertext)
    assert set(timings) == {"deserialize", "fusion", "decode"}


def test_encryptor_refuses_bad_input(test_ctx, holders):
    _, key = holders
    encryptor = Encryptor(test_ctx, key)
    with pytest.raises(CryptoError, match=r"is not \[n, 512\]"):
        encryptor.encrypt(np.zeros((2, 100)))
    with pytest.raises(CryptoError, match="value bound"):
        encryptor.encrypt(np.full((1, 512), np.nan))
    with pytest.raises(CryptoError, match="public key does not deserialize"):
        Encryptor(test_ctx, b"not a key")


def test_a_refused_add_midway_is_rolled_back(
    test_ctx, summing, monkeypatch, make_holders, rejected
):
    total, encryptor, packer, good = summing
    twin = CKKSContext.create("test", allow_insecure=True)
    _, twin_key = make_holders(twin)
    foreign = decode_batch(Encryptor(twin, twin_key).encrypt(packer.pack(np.zeros(700), 0.1)))
    ct = fhe.DeserializeCiphertextString(foreign[1], fhe.BINARY)
    ct.SetKeyTag(fhe.DeserializeCiphertextString(decode_batch(good)[0], fhe.BINARY).GetKeyTag())
    mixed = encode_batch([decode_batch(good)[0], fhe.Serialize(ct, fhe.BINARY)])
    monkeypatch.setattr(CKKSContext, "owns", lambda self, obj: True)  # let OpenFHE refuse
    rejected(total, mixed, "mixed-client", "another context")

import json
import math
import pickle
import struct

import numpy as np
import openfhe as fhe
import pytest

from fedsim.crypto import CKKSContext, Encryptor, ObjectSum, Packer, encode_batch, fuse
from fedsim.crypto.flooding import tail_bits
from fedsim.errors import CryptoError


def test_test_profile_refused_without_flag():
    with pytest.raises(CryptoError) as info:
        CKKSContext.create("test")
    assert str(info.value) == (
        "crypto profile 'test' is insecure (small ring, no security level); "
        "pass allow_insecure=True to use it in tests"
    )


def test_unknown_profile_names_the_allowed_ones():
    with pytest.raises(
        CryptoError, match="unknown crypto profile 'turbo'; allowed: secure, fast, test"
    ):
        CKKSContext.create("turbo")
    with pytest.raises(CryptoError, match="max_contributors must be a positive integer"):
        CKKSContext.create("fast", max_contributors=0)


def test_profile_properties(test_ctx, fast_ctx, secure_ctx):
    assert (test_ctx.ring_dimension, test_ctx.values_per_ciphertext) == (1024, 512)
    assert (secure_ctx.ring_dimension, secure_ctx.values_per_ciphertext) == (4096, 2048)
    assert (fast_ctx.ring_dimension, fast_ctx.slots, fast_ctx.values_per_ciphertext) == (
        4096,
        2048,
        4096,
    )
    assert secure_ctx.flooding and test_ctx.flooding and not fast_ctx.flooding
    # Flooding fixes the scale at 2**59 under a 60-bit modulus: slots wrap at |value| = 1.
    assert secure_ctx.value_bound == test_ctx.value_bound == 0.5
    assert fast_ctx.value_bound == 181.0  # 2**(60-50) / 2 / sqrt(2) / 2
    assert secure_ctx.max_contributors == 64 and secure_ctx.max_key_holders == 8
    # OpenFHE's flooding sigma: sqrt(12 tau) * 2**(30/2) * 2**estimate.
    expected = math.sqrt(12 * secure_ctx.max_decryptions) * 2**15 * 2**secure_ctx.noise_estimate
    assert secure_ctx.share_noise_sigma == pytest.approx(expected, rel=1e-9)
    assert fast_ctx.share_noise_sigma == 2.0**20 and fast_ctx.noise_estimate is None
    # Flooding is sized from a bound of every coefficient of every decryption, not the
    # noise's standard deviation: the tail factor for 2^20 decryptions of ring 4096 at
    # s = 30 is 2^3.22 (sqrt(2 ln(2 N tau) + 2 s ln 2) standard deviations).
    assert secure_ctx.noise_estimate == pytest.approx(
        secure_ctx.measured_noise + 0.5 + tail_bits(4096, 2**20, 30), abs=1e-12)
    assert tail_bits(4096, 2**20, 30) == pytest.approx(3.224, abs=0.001)
    assert 1e-3 < secure_ctx.error_bound < 5e-2 and 1e-7 < fast_ctx.error_bound < 1e-5


def test_bytes_round_trip_rebuilds_the_same_context(test_ctx, make_holders):
    blob = test_ctx.to_bytes()
    again = CKKSContext.from_bytes(blob)
    assert again.to_bytes() == blob and again.fingerprint == test_ctx.fingerprint
    assert (again.noise_estimate, again.error_bound) == (
        test_ctx.noise_estimate,
        test_ctx.error_bound,
    )
    assert pickle.loads(pickle.dumps(test_ctx)).fingerprint == test_ctx.fingerprint
    # Keys made under the rebuilt context decrypt what the original one encrypts.
    holders, key = make_holders(again)
    packer = Packer(10, test_ctx.values_per_ciphertext)
    total = ObjectSum(test_ctx)
    total.add(
        Encryptor(test_ctx, key).encrypt(packer.pack(np.full(10, 0.125), 0.5)), contributor="a"
    )
    parts = [h.partial_decrypt(total.result(), lead=i == 0) for i, h in enumerate(holders)]
    vector, weight = packer.unpack(fuse(test_ctx, parts))
    assert (
        np.abs(vector - 0.125).max() < test_ctx.error_bound
        and abs(weight - 0.5) < test_ctx.error_bound
    )


def test_from_bytes_refuses_tampered_or_truncated_bytes(test_ctx):
    blob = test_ctx.to_bytes()
    with pytest.raises(CryptoError, match="truncated"):
        CKKSContext.from_bytes(blob[:5])
    with pytest.raises(CryptoError, match="bad magic"):
        CKKSContext.from_bytes(b"XXXX" + blob[4:])
    tampered = bytearray(blob)
    tampered[-40] ^= 0xFF
    with pytest.raises(CryptoError, match="do not rebuild identically"):
        CKKSContext.from_bytes(bytes(tampered))
    # Metadata that disagrees with the OpenFHE bytes (another noise estimate) is refused.
    head = struct.Struct("<4sHI")
    magic, version, size = head.unpack_from(blob)
    meta = json.loads(blob[head.size : head.size + size])
    meta["measured_noise"] += 0.25
    text = json.dumps(meta).encode()
    forged = head.pack(magic, version, len(text)) + text + blob[head.size + size :]
    with pytest.raises(CryptoError, match="do not rebuild identically"):
        CKKSContext.from_bytes(forged)


def test_value_bound_holds_for_the_worst_case_vector_and_wrap_is_real(test_ctx, make_holders):
    # A constant vector puts its whole magnitude into one coefficient: the worst case.
    holders, key = make_holders(test_ctx)
    vpc = test_ctx.values_per_ciphertext
    packed = np.stack(
        [
            np.full(vpc, test_ctx.value_bound),
            np.full(vpc, -test_ctx.value_bound),
            np.full(vpc, 1.01),
        ]
    )
    total = ObjectSum(test_ctx)
    encryptor = Encryptor(test_ctx, key)
    total.add(encryptor.encrypt(packed[:2]), contributor="bounded")
    parts = [h.partial_decrypt(total.result(), lead=i == 0) for i, h in enumerate(holders)]
    np.testing.assert_allclose(fuse(test_ctx, parts), packed[:2], atol=test_ctx.error_bound)
    with pytest.raises(CryptoError, match="exceeds the context's value bound 0.5"):
        encryptor.encrypt(packed)
    # Past |value| = 1 the slot really wraps (bypassing the Encryptor's check).
    cc = test_ctx.openfhe
    ct = cc.Encrypt(
        fhe.DeserializePublicKeyString(key, fhe.BINARY), cc.MakeCKKSPackedPlaintext(packed[2])
    )
    wrapped = encode_batch([fhe.Serialize(ct, fhe.BINARY)])
    parts = [h.partial_decrypt(wrapped, lead=i == 0) for i, h in enumerate(holders)]
    assert np.abs(fuse(test_ctx, parts) - 1.01).min() > 1.9

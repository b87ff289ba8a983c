import copy
import math
import pickle

import numpy as np
import openfhe as fhe
import pytest

from fedsim.crypto import Encryptor, KeyShareHolder, ObjectSum, Packer, _secret_key, fuse
from fedsim.errors import CryptoError


def encrypted(ctx, key, vector, weight=0.1):
    packer = Packer(len(vector), ctx.values_per_ciphertext)
    total = ObjectSum(ctx)
    total.add(Encryptor(ctx, key).encrypt(packer.pack(vector, weight)), contributor="c")
    return packer, total.result()


def test_holder_refuses_pickling_and_copying(test_ctx, holders):
    holder = holders[0][0]
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(CryptoError, match="cannot be pickled"):
            attempt(holder)
    assert "index=0" in repr(holder) and "has_key=True" in repr(holder)


@pytest.mark.parametrize("n,threshold", [(3, 1), (4, 2), (3, 4), (2, 1)])
def test_threshold_must_be_a_strict_majority(test_ctx, n, threshold):
    with pytest.raises(CryptoError) as info:
        KeyShareHolder(test_ctx.to_bytes(), 0, n, threshold)
    assert str(info.value) == (
        f"threshold {threshold} for {n} key holders must satisfy {n}/2 < threshold <= {n}"
    )


def test_holder_argument_and_order_checks(test_ctx):
    blob = test_ctx.to_bytes()
    with pytest.raises(CryptoError, match="index 3 outside 0..2"):
        KeyShareHolder(blob, 3, 3)
    with pytest.raises(CryptoError, match="sized for at most 8"):
        KeyShareHolder(blob, 0, 9)
    first, second = KeyShareHolder(blob, 0, 2), KeyShareHolder(blob, 1, 2)
    with pytest.raises(CryptoError, match="holder 1 needs the previous"):
        second.keygen(None)
    with pytest.raises(CryptoError, match="no key yet"):
        first.partial_decrypt(b"", lead=True)
    key = first.keygen(None)
    with pytest.raises(CryptoError, match="already generated"):
        first.keygen(None)
    assert second.keygen(key) != key


def distribute(holders):
    for owner in holders:
        for target, share in owner.shamir_shares().items():
            holders[target].receive_share(owner.index, share)


def test_two_of_three_survivors_recover_the_missing_holder(test_ctx, make_holders):
    holders, key = make_holders(test_ctx, 3, threshold=2)
    distribute(holders)
    vector = np.linspace(-0.3, 0.3, 600)
    packer, aggregate = encrypted(test_ctx, key, vector)
    survivor, helper, missing = holders
    with pytest.raises(CryptoError, match="needs 2 shares, got 1"):
        survivor.recover(missing.index, {})
    survivor.recover(missing.index, {helper.index: helper.share_of(missing.index)})
    parts = [
        survivor.partial_decrypt(aggregate, lead=True),
        helper.partial_decrypt(aggregate, lead=False),
        survivor.partial_decrypt(aggregate, lead=False, on_behalf_of=missing.index),
    ]
    values, weight = packer.unpack(fuse(test_ctx, parts))
    assert np.abs(values - vector).max() < test_ctx.error_bound
    assert abs(weight - 0.1) < test_ctx.error_bound
    with pytest.raises(CryptoError, match="has not recovered holder 0"):
        helper.partial_decrypt(aggregate, lead=False, on_behalf_of=0)


def test_recovery_checks_shares(test_ctx, make_holders):
    holders, _ = make_holders(test_ctx, 5, threshold=3)
    distribute(holders)
    shares = {h.index: h.share_of(4) for h in holders[1:4]}
    holders[0].recover(4, dict(shares))  # 4 shares, one extra: consistent
    bad = bytearray(shares[3])
    bad[-8:] = (1).to_bytes(8, "little")
    with pytest.raises(CryptoError, match="from 3 is inconsistent"):
        holders[0].recover(4, {**shares, 3: bytes(bad)})
    with pytest.raises(CryptoError, match="expected holder 2's share of holder 4's key"):
        holders[0].recover(4, {2: holders[1].share_of(4)})
    other = make_holders(test_ctx, 5, threshold=4)[0]
    distribute(other)
    with pytest.raises(CryptoError, match="made for 4-of-5"):
        holders[0].receive_share(1, other[1].shamir_shares()[0])
    with pytest.raises(CryptoError, match="no Shamir shares"):
        make_holders(test_ctx, 2)[0][0].shamir_shares()


def test_shamir_route_matches_openfhe_share_keys(test_ctx, make_holders):
    holders, _ = make_holders(test_ctx, 3, threshold=2)
    distribute(holders)
    target = holders[1]
    original = _secret_key.read(target._secret).towers
    # OpenFHE's own in-process Shamir sharing and recovery (1-based party indices).
    cc = test_ctx.openfhe
    shares = cc.ShareKeys(target._secret, 3, 2, target.index + 1, "shamir")
    theirs = fhe.PrivateKey(cc)
    cc.RecoverSharedKey(theirs, {1: shares[1], 3: shares[3]}, 3, 2, "shamir")
    # fedsim's route across "processes": only bytes move.
    holders[2].recover(1, {0: holders[0].share_of(1)})
    ours = holders[2]._recovered[1]
    for a, b, c in zip(
        original, _secret_key.read(theirs).towers, _secret_key.read(ours).towers, strict=True
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_secret_probe_finds_the_serialized_share_only(test_ctx, holders):
    holders, key = holders
    holder = holders[0]
    probe = holder._secret_probe()
    assert len(probe) == 64
    assert probe in fhe.Serialize(holder._secret, fhe.BINARY)
    assert holder._secret_probe(text=True).decode() in fhe.Serialize(holder._secret, fhe.JSON)
    _, aggregate = encrypted(test_ctx, key, np.full(100, 0.2))
    outputs = [
        holder.public_key,
        key,
        holder.partial_decrypt(aggregate, lead=True),
        test_ctx.to_bytes(),
    ]
    assert not any(probe in out for out in outputs)


def test_shares_are_flooded(test_ctx, fast_ctx, make_holders):
    """Each share carries OpenFHE's flooding noise, sized by the context (FLOODING.md)."""
    for ctx in (test_ctx, fast_ctx):
        holders, key = make_holders(ctx)
        vector = np.random.default_rng(5).uniform(-0.1, 0.1, 8 * ctx.values_per_ciphertext - 1)
        packer, aggregate = encrypted(ctx, key, vector, 0.0)
        lead = holders[0].partial_decrypt(aggregate, lead=True)
        last = holders[2].partial_decrypt(aggregate, lead=False)
        first = fuse(ctx, [lead, holders[1].partial_decrypt(aggregate, lead=False), last])
        second = fuse(ctx, [lead, holders[1].partial_decrypt(aggregate, lead=False), last])
        unit = (
            ctx.share_noise_sigma
            * math.sqrt(ctx.ring_dimension)
            / ctx.openfhe.GetScalingFactorReal(0)
        )
        if ctx.complex_packing:  # one share's noise per value: sigma sqrt(N/2) / scale
            assert np.std(first - second) / unit == pytest.approx(1.0, rel=0.1)
            assert np.std(packer.unpack(first)[0] - vector) / unit == pytest.approx(
                math.sqrt(1.5), rel=0.1
            )
        else:  # REAL decoding adds noise matched to the imaginary part: K shares' worth
            assert np.std(first - second) / unit == pytest.approx(2.0, rel=0.1)
            assert np.std(packer.unpack(first)[0] - vector) / unit == pytest.approx(
                math.sqrt(3), rel=0.1
            )
    # The flooding sigma is 2**(30/2) * sqrt(12 * max_decryptions) times the noise estimate.
    assert test_ctx.share_noise_sigma > 2 ** (15 + test_ctx.noise_estimate)

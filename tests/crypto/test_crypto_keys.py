import copy
import math
import pickle

import numpy as np
import openfhe as fhe
import pytest

from fedsim.crypto import Encryptor, KeyShareHolder, ObjectSum, Packer, _secret_key, fuse, shamir
from fedsim.crypto.cipher import load_ciphertexts
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
    """Every holder's Shamir shares to their receivers (in one process, for the tests)."""
    for owner in holders:
        for target, share in owner.outgoing_shares().items():
            holders[target].receive_share(owner.index, share)


@pytest.mark.parametrize("participants", [(0, 1), (0, 2), (1, 2), (0, 1, 2)])
def test_any_threshold_set_decrypts_with_lagrange_weighted_shares(test_ctx, make_holders,
                                                                  participants):
    holders, key = make_holders(test_ctx, 3, threshold=2)
    distribute(holders)
    vector = np.linspace(-0.3, 0.3, 600)
    packer, aggregate = encrypted(test_ctx, key, vector)
    parts = [holders[i].partial_decrypt(aggregate, lead=(i == participants[0]),
                                        participants=participants) for i in participants]
    values, weight = packer.unpack(fuse(test_ctx, parts))
    assert np.abs(values - vector).max() < test_ctx.error_bound
    assert abs(weight - 0.1) < test_ctx.error_bound


def test_fewer_than_threshold_holders_decrypt_nothing(test_ctx, make_holders):
    holders, key = make_holders(test_ctx, 3, threshold=2)
    distribute(holders)
    vector = np.linspace(-0.3, 0.3, 600)
    packer, aggregate = encrypted(test_ctx, key, vector)
    with pytest.raises(CryptoError, match="only as one of at least 2 participants"):
        holders[0].partial_decrypt(aggregate, lead=True, participants=(0,))
    with pytest.raises(CryptoError, match="needs the set of participating holders"):
        holders[0].partial_decrypt(aggregate, lead=True)
    # One holder (t - 1) with everything it holds: its own secret, the Shamir shares it
    # received, their sum. None of them, used as the whole key, decrypts anything.
    cc = test_ctx.openfhe
    insider = holders[0]
    template = _secret_key.read(insider._secret)
    keys = [insider._secret, _secret_key.write(template, insider._combined()),
            *(_secret_key.write(template, list(share.towers))
              for share in insider._held.values())]
    ct = load_ciphertexts(test_ctx, aggregate, kind="ciphertext")[0]
    for guess in keys:
        try:
            plain = cc.MultipartyDecryptFusion([cc.MultipartyDecryptLead([ct], guess)[0]])
        except RuntimeError as exc:  # OpenFHE's decoder refuses the garbage outright
            assert "approximation error is too high" in str(exc)
            continue
        plain.SetLength(test_ctx.slots)
        assert np.abs(np.asarray(plain.GetRealPackedValueArray()) - vector[:512]).mean() > 0.1


def test_share_exchange_checks(test_ctx, make_holders):
    holders, _ = make_holders(test_ctx, 5, threshold=3)
    other = make_holders(test_ctx, 5, threshold=4)[0]
    with pytest.raises(CryptoError, match="made for 4-of-5"):
        holders[0].receive_share(1, other[1].outgoing_shares()[0])
    share = holders[1].outgoing_shares()[0]
    with pytest.raises(CryptoError, match="expected holder 0's share of holder 2's key"):
        holders[0].receive_share(2, share)
    holders[0].receive_share(1, share)
    with pytest.raises(CryptoError, match="already holds a share of holder 1"):
        holders[0].receive_share(1, share)
    _, aggregate = encrypted(test_ctx, holders[-1].public_key, np.zeros(8))
    with pytest.raises(CryptoError, match=r"no Shamir share from holder\(s\) \[2, 3, 4\]"):
        holders[0].partial_decrypt(aggregate, lead=True, participants=(0, 1, 2))
    with pytest.raises(CryptoError, match="no Shamir shares"):
        make_holders(test_ctx, 2)[0][0].outgoing_shares()


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
    # fedsim's shares, moved as bytes, interpolated at 0 (what no holder ever does).
    ours = shamir.interpolate({0: holders[0]._held[1].towers, 2: holders[2]._held[1].towers},
                              target._moduli)
    for a, b, c in zip(original, _secret_key.read(theirs).towers, ours, strict=True):
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

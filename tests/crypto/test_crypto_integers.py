"""Exact integer sums under CKKS (`fedsim.crypto.integers`), on encrypted score
histograms (`fedsim.learning.histograms`) decrypted by key holders."""

from __future__ import annotations

import numpy as np
import pytest
from builders import hospitals_of, scores

from fedsim.crypto import CKKSContext, Encryptor, Packer, fuse, summation_for
from fedsim.crypto.integers import CountCodec
from fedsim.learning.histograms import ScoreBins, histogram, pooled_metrics, youden_threshold

BINS = ScoreBins()


@pytest.mark.parametrize("profile", ["test", "secure"])
def test_metrics_come_out_of_a_threshold_decrypted_sum_of_encrypted_histograms(profile,
                                                                                make_holders):
    """Each hospital encrypts its counts as digits (`CountCodec`: one count per slot
    would come back off by units, the flooded decryption being right only to
    ``error_bound``) and its log-loss sum in fixed point; 2 of 3 key holders decrypt the
    sum, which gives exactly the plaintext pooled metrics."""
    ctx = CKKSContext.create(profile, allow_insecure=True, max_contributors=4,
                             max_key_holders=3)
    holders, key = make_holders(ctx, 3, threshold=2)
    for owner in holders:  # Shamir shares straight to each other (no coordinator here)
        for target, share in owner.outgoing_shares().items():
            holders[target].receive_share(owner.index, share)
    labels, probs = scores(5_000, 0.05, seed=3)
    hospitals = hospitals_of(labels, probs)
    rows = labels.size  # a public bound on any count one hospital sends
    counts = CountCodec.for_context(ctx, contributors=4, max_value=rows)
    losses = CountCodec.for_context(ctx, contributors=4, max_value=int(17 * rows * 1e6))
    packer = Packer(counts.size(BINS.size - 1) + losses.size(1), ctx.values_per_ciphertext)
    total = summation_for(ctx, key)()
    for i, (y, p) in enumerate(hospitals):
        vector = histogram(y, p, BINS)
        ints = np.rint(np.delete(vector, -2)).astype(np.int64)
        slots = np.concatenate([counts.encode(ints),
                                losses.encode(np.array([round(vector[-2] * 1e6)]))])
        total.add(Encryptor(ctx, key).encrypt(packer.pack(slots, 0.0)),
                  contributor=f"hospital-{i}")
    aggregate = total.result()
    parts = [holders[i].partial_decrypt(aggregate, lead=(i == 0), participants=(0, 2))
             for i in (0, 2)]
    slots, _ = packer.unpack(fuse(ctx, parts))
    ints = counts.decode(slots[: counts.size(BINS.size - 1)])
    loss = losses.decode(slots[counts.size(BINS.size - 1) :])[0] / 1e6
    values = np.insert(ints.astype(np.float64), BINS.size - 2, loss)

    plain = sum(histogram(y, p, BINS) for y, p in hospitals)
    np.testing.assert_array_equal(values[:-2], plain[:-2])
    assert values[-1] == plain[-1] and abs(values[-2] - plain[-2]) <= 4 * 1e-6 * 0.5 + 1e-9
    threshold = youden_threshold(plain, BINS)
    assert youden_threshold(values, BINS) == threshold
    got = pooled_metrics(values, BINS, threshold=threshold).metrics
    want = pooled_metrics(plain, BINS, threshold=threshold).metrics
    for name in ("n", "positives", "auc", "pr_auc", "balanced_accuracy", "precision"):
        assert getattr(got, name) == getattr(want, name), name

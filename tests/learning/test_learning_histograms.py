"""Pooled metrics from summed score histograms against scikit-learn on the same scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from fedsim.crypto import CKKSContext, Encryptor, KeyShareHolder, Packer, fuse, summation_for
from fedsim.crypto.integers import CountCodec
from fedsim.learning.histograms import ScoreBins, histogram, pooled_metrics, youden_threshold
from fedsim.learning.metrics import evaluate

BINS = ScoreBins()


def _scores(n: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a model's probabilities: positives' logits shifted by 1.5 (AUC ~0.85)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(np.int64)
    logits = rng.normal(-2.0 if prevalence < 0.2 else 0.0, 1.2, n) + 1.5 * labels
    return labels, 1.0 / (1.0 + np.exp(-logits))


def _hospitals(labels, probs, parts: int = 4):
    """The rows split across hospitals of unequal size."""
    cuts = np.sort(np.random.default_rng(7).choice(np.arange(1, labels.size), parts - 1,
                                                   replace=False))
    return list(zip(np.split(labels, cuts), np.split(probs, cuts), strict=True))


@pytest.mark.parametrize("prevalence", [0.5, 0.05])
def test_summed_histograms_give_the_pooled_metrics_within_the_stated_bound(prevalence):
    val_labels, val_probs = _scores(20_000, prevalence, seed=1)
    labels, probs = _scores(20_000, prevalence, seed=2)
    val = sum(histogram(y, p, BINS) for y, p in _hospitals(val_labels, val_probs))
    test = sum(histogram(y, p, BINS) for y, p in _hospitals(labels, probs))
    pooled = histogram(labels, probs, BINS)  # vectors add: counts exactly, the loss
    np.testing.assert_array_equal(test[:-2], pooled[:-2])  # sum up to float rounding
    np.testing.assert_allclose(test[-2:], pooled[-2:], rtol=1e-12)

    threshold = youden_threshold(val, BINS)
    found = pooled_metrics(test, BINS, threshold=threshold)
    exact = evaluate(labels, probs, threshold=threshold)
    got = found.metrics
    assert 0 < found.auc_bound < 1e-3
    assert abs(got.auc - exact.auc) <= found.auc_bound
    assert abs(got.pr_auc - exact.pr_auc) < 1e-3
    assert got.loss == pytest.approx(exact.loss, rel=1e-12)
    assert (got.n, got.positives) == (exact.n, exact.positives)
    for name in ("balanced_accuracy", "precision", "recall", "accuracy"):
        assert getattr(got, name) == pytest.approx(getattr(exact, name), abs=1e-12), name

    # The threshold is a bin edge; its Youden J is within 1e-3 of the best any score gives.
    fpr, tpr, _ = skm.roc_curve(val_labels, val_probs)
    at = evaluate(val_labels, val_probs, threshold=threshold)
    j_at = 2 * at.balanced_accuracy - 1
    assert np.max(tpr - fpr) - 1e-3 <= j_at <= np.max(tpr - fpr) + 1e-12


@pytest.mark.parametrize("profile", ["test", "secure"])
def test_metrics_come_out_of_a_threshold_decrypted_sum_of_encrypted_histograms(profile):
    """Each hospital encrypts its counts as digits (`CountCodec`: one count per slot
    would come back off by units, the flooded decryption being right only to
    ``error_bound``) and its log-loss sum in fixed point; 2 of 3 key holders decrypt the
    sum, which gives exactly the plaintext pooled metrics."""
    ctx = CKKSContext.create(profile, allow_insecure=True, max_contributors=4,
                             max_key_holders=3)
    holders = [KeyShareHolder(ctx.to_bytes(), i, 3, 2) for i in range(3)]
    key = None
    for holder in holders:
        key = holder.keygen(key)
    for owner in holders:  # Shamir shares straight to each other (no coordinator here)
        for target, share in owner.outgoing_shares().items():
            holders[target].receive_share(owner.index, share)
    labels, probs = _scores(5_000, 0.05, seed=3)
    hospitals = _hospitals(labels, probs)
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


def test_a_sum_that_is_not_of_histograms_is_refused():
    vector = histogram(np.array([0, 1]), np.array([0.2, 0.7]), BINS)
    vector[3] = 0.5
    with pytest.raises(ValueError, match="not non-negative integers"):
        pooled_metrics(vector, BINS)
    with pytest.raises(ValueError, match="4096 bins has 8194 values"):
        pooled_metrics(vector[:-1], BINS)

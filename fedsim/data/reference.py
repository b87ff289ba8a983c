"""A centralised logistic-regression reference for a `FederatedDataset`.

Pooling every hospital's data is exactly what federated learning avoids, so this number
is an upper-reference point, not a competitor: printed beside a federated result it
says how much of the learnable signal the federation recovered.
"""

from __future__ import annotations

import numpy as np

from fedsim.data.dataset import FederatedDataset, Split
from fedsim.errors import DataError

__all__ = ["reference_logistic_auc"]

_C_GRID = (0.03, 0.1, 0.3, 1.0)
_DEFAULT_C = 0.1


def _design(split: Split, vocab_size: int):  # -> scipy.sparse.csr_matrix
    """Sparse [n, vocab_size + F]: bag of codes (counts) then the numeric features."""
    from scipy import sparse

    n = len(split)
    mask = split.codes >= 0
    rows = np.repeat(np.arange(n), mask.sum(axis=1))
    bag = sparse.csr_matrix((np.ones(rows.size), (rows, split.codes[mask])), shape=(n, vocab_size))
    return sparse.hstack([bag, sparse.csr_matrix(split.numeric.astype(np.float64))], "csr")


def reference_logistic_auc(dataset: FederatedDataset, *, seed: int = 0) -> float:
    """Test ROC AUC of an L2 logistic regression trained on the pooled training data.

    Features are the bag of codes and the (per-client standardised) numeric columns.
    The inverse regularisation C is chosen from a small grid by pooled validation AUC
    (C = 0.1 when the validation split has a single class).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    train, val, test = dataset.pooled("train"), dataset.pooled("val"), dataset.test_set()
    for name, split in (("train", train), ("test", test)):
        if np.unique(split.labels).size < 2:
            raise DataError(f"the pooled {name} split has a single class; AUC is undefined")
    x_train, x_val, x_test = (_design(s, dataset.vocab_size) for s in (train, val, test))

    def fit(c: float) -> LogisticRegression:
        model = LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=seed)
        return model.fit(x_train, train.labels)

    if np.unique(val.labels).size == 2:
        fits = [fit(c) for c in _C_GRID]
        model = max(fits, key=lambda m: roc_auc_score(val.labels, m.decision_function(x_val)))
    else:
        model = fit(_DEFAULT_C)
    return float(roc_auc_score(test.labels, model.decision_function(x_test)))

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.metrics import binary_auc, medmnist_acc, medmnist_auc


def brute_auc(y, s):
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_equals_pairwise_definition(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=float)
    got = binary_auc(y, s)
    if y.all() or not y.any():
        assert np.isnan(got)
    else:
        assert abs(got - brute_auc(y, s)) < 1e-12


def test_multiclass_auc_is_mean_one_vs_rest_and_acc_is_argmax():
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    expected = np.mean([binary_auc(y == c, prob[:, c]) for c in range(3)])
    assert medmnist_auc(y, prob) == expected
    assert medmnist_acc(y, prob) == 0.75
    assert medmnist_auc(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])) == 1.0

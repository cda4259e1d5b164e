"""MedMNIST metrics: ACC and AUC (binary: score of the positive class; multi-class: mean OvR)."""

from __future__ import annotations

import numpy as np


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties counted half; NaN if one class is absent."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def medmnist_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """AUC as MedMNIST's ``getAUC`` for single-label tasks."""
    y = np.asarray(y).reshape(-1)
    if prob.shape[1] == 2:
        return binary_auc(y == 1, prob[:, 1])
    aucs = [binary_auc(y == c, prob[:, c]) for c in range(prob.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def medmnist_acc(y: np.ndarray, prob: np.ndarray) -> float:
    y = np.asarray(y).reshape(-1)
    return float((prob.argmax(1) == y).mean())

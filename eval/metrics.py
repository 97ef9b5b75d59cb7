"""Scores of the benchmarks: mean average precision (multi-label) and accuracy (single-label).

The one implementation of each: fine-tuning (:mod:`eval.finetune`) and linear probes (:mod:`eval.linear`) report
their headline numbers from here. mAP follows the AudioSet convention: a class without a positive in the evaluated
rows has no average precision, so it is left out of the mean (one logged warning says how many were left out);
rows without any positive at all have no mAP, which is an error.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["mean_average_precision", "accuracy", "score"]


def _as_matrix(targets, n_classes: int) -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim == 1:                               # class indices -> one-hot
        out = np.zeros((len(t), n_classes), np.float32)
        out[np.arange(len(t)), t.astype(int)] = 1
        return out
    return t


def mean_average_precision(targets, scores) -> float:
    """Mean over the classes WITH at least one positive of sklearn's ``average_precision_score`` (targets
    ``[n, C]`` 0/1, or soft targets thresholded at 0.5; scores ``[n, C]``, any monotonic scale).

    Classes without a positive in ``targets`` are left out of the mean with a logged warning saying how many
    (the AudioSet convention); ``ValueError`` when no class has a positive (mAP is undefined)."""
    from sklearn.metrics import average_precision_score
    scores = np.asarray(scores, dtype=np.float64)
    y = _as_matrix(targets, scores.shape[1]) > 0.5
    present = np.flatnonzero(y.any(axis=0))
    if present.size == 0:
        raise ValueError(f"mAP is undefined: none of the {y.shape[1]} classes has a positive among the "
                         f"{y.shape[0]} evaluated rows")
    if present.size < y.shape[1]:
        log.warning("mAP: %d of %d classes have no positive among the %d evaluated rows and are left out of "
                    "the mean", y.shape[1] - present.size, y.shape[1], y.shape[0])
    return float(np.mean([average_precision_score(y[:, c], scores[:, c]) for c in present]))


def accuracy(targets, scores) -> float:
    """Top-1 accuracy: argmax of ``scores`` ``[n, C]`` against class indices ``[n]`` or the argmax of
    (one-hot / soft) targets ``[n, C]``."""
    scores = np.asarray(scores)
    t = np.asarray(targets)
    truth = t.argmax(axis=1) if t.ndim == 2 else t.astype(int)
    return float(np.mean(scores.argmax(axis=1) == truth)) if len(truth) else float("nan")


def score(metric: str, targets, scores) -> float:
    """``metric`` (``"mAP"`` or ``"accuracy"``) of ``scores`` against ``targets``."""
    if metric == "mAP":
        return mean_average_precision(targets, scores)
    if metric == "accuracy":
        return accuracy(targets, scores)
    raise ValueError(f"unknown metric {metric!r}; choose 'mAP' or 'accuracy'")

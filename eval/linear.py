"""Linear classifiers on frozen embeddings: logistic regression, its regularisation search, and its scoring
(with the metrics of :mod:`eval.metrics`, the ones fine-tuning reports).

Single-label: ``StandardScaler -> LogisticRegression(C)`` (multinomial, lbfgs). Multi-label: ``StandardScaler ->
OneVsRestClassifier(LogisticRegression(C))``, or :class:`TorchLinearProbe` (one linear layer, BCE, the same
L2 penalty as scikit-learn's ``C``). ``C`` comes from :func:`select_regularisation`, which sees only the rows
it is given: the callers pass training (and validation) rows, never test rows.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from eval.metrics import mean_average_precision

C_GRID = tuple(10.0 ** np.arange(-4, 3))   # 1e-4 ... 1e2
CLASSIFIERS = ("sklearn", "torch")


def single_threaded_blas(fn):
    """Run ``fn`` with one BLAS / OpenMP thread: these matrices are small, and on a busy machine threaded BLAS
    made each logistic-regression fit 10-30x slower (measured)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)
    return wrapper


class TorchLinearProbe(ClassifierMixin, BaseEstimator):
    """Multi-label linear probe in torch: one ``Linear`` layer, ``BCEWithLogits``, full-batch L-BFGS.

    The objective is scikit-learn's: ``sum(BCE) + ||W||^2 / (2 C)`` (bias unpenalised), so ``C`` means the same
    as for :class:`~sklearn.linear_model.LogisticRegression`. Expects standardised inputs and ``Y`` ``[n, K]`` 0/1.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 200, seed: int = 0):
        self.C, self.max_iter, self.seed = C, max_iter, seed

    def fit(self, X, Y):
        """Fit on features ``X`` ``[n, D]`` and binary targets ``Y`` ``[n, K]``."""
        X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        Y = torch.as_tensor(np.asarray(Y), dtype=torch.float64)
        gen = torch.Generator().manual_seed(self.seed)
        layer = torch.nn.Linear(X.shape[1], Y.shape[1], dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) * 1e-3)
            layer.bias.zero_()
        opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe")
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")

        def closure():
            opt.zero_grad()
            loss = (loss_fn(layer(X), Y) + layer.weight.pow(2).sum() / (2 * self.C)) / len(X)
            loss.backward()
            return loss

        opt.step(closure)
        self.coef_ = layer.weight.detach().numpy()
        self.intercept_ = layer.bias.detach().numpy()
        self.classes_ = np.arange(Y.shape[1])
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits ``[n, K]``."""
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """Independent per-class probabilities ``[n, K]``."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def predict(self, X) -> np.ndarray:
        """0/1 decisions at probability 0.5."""
        return (self.decision_function(X) > 0).astype(int)


def make_probe(C: float, multilabel: bool, classifier: str = "sklearn", max_iter: int = 1000):
    """An unfitted ``StandardScaler`` + linear classifier pipeline with inverse regularisation ``C``."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
    if classifier == "torch":
        if not multilabel:
            raise ValueError("the torch (BCE) probe is for multi-label benchmarks; use 'sklearn' for single-label")
        return make_pipeline(StandardScaler(), TorchLinearProbe(C=C))
    lr = LogisticRegression(C=C, max_iter=max_iter)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(lr) if multilabel else lr)


def scores_of(probe, X) -> np.ndarray:
    """Class scores ``[n, K]`` of a fitted probe (probabilities)."""
    return probe.predict_proba(X)


@single_threaded_blas
def evaluate(probe, X, Y, multilabel: bool) -> float:
    """Accuracy (single-label, ``Y`` class indices) or mAP (multi-label, :func:`eval.metrics.mean_average_precision`:
    the fine-tuning metric, classes without a positive in ``Y`` left out)."""
    if multilabel:
        return mean_average_precision(np.asarray(Y), scores_of(probe, X))
    return float(np.mean(probe.predict(X) == np.asarray(Y)))


@single_threaded_blas
def fit_probe(X, Y, C: float, multilabel: bool, classifier: str = "sklearn"):
    """Fit a fresh probe (:func:`make_probe`) on ``X``, ``Y``; convergence warnings are silenced."""
    probe = make_probe(C, multilabel, classifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        probe.fit(X, Y)
    return probe


def inner_splits(groups=None, y=None, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds for the regularisation search over the rows of the training data only.

    With ``groups`` of 2+ distinct values (the training folds of a cross-validated benchmark): leave one group
    out. Otherwise ``n_splits`` shuffled folds of the rows (stratified on ``y`` when it is a 1-D label vector
    and every class has ``n_splits`` rows).
    """
    from sklearn.model_selection import KFold, LeaveOneGroupOut, StratifiedKFold
    if groups is not None and len(np.unique(groups)) >= 2:
        return list(LeaveOneGroupOut().split(np.zeros(len(groups)), groups=groups))
    n = len(y)
    y = np.asarray(y)
    if y.ndim == 1 and np.bincount(np.unique(y, return_inverse=True)[1]).min() >= n_splits:
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(min(n_splits, n), shuffle=True, random_state=seed).split(np.zeros(n)))


def _warm_path(X, y, fit_rows, score_rows, grid) -> dict[float, float]:
    """Single-label accuracy for every ``C`` of one inner split: scaled once, fitted with ascending ``C``, each
    fit warm-started from the previous solution (the same optimum as cold fits, several times faster)."""
    scaler = StandardScaler().fit(X[fit_rows])
    a, b = scaler.transform(X[fit_rows]), scaler.transform(X[score_rows])
    lr = LogisticRegression(max_iter=1000, warm_start=True)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in sorted(grid):
            lr.set_params(C=C).fit(a, y[fit_rows])
            out[float(C)] = float(np.mean(lr.predict(b) == y[score_rows]))
    return out


@single_threaded_blas
def select_regularisation(X, Y, splits, grid=C_GRID, multilabel: bool = False,
                          classifier: str = "sklearn") -> tuple[float, dict]:
    """Pick ``C`` from ``grid`` by the mean validation score over ``splits`` (``(fit rows, score rows)`` of X).

    Only ``X``/``Y`` are seen: pass training (+ validation) rows, never test rows. Ties go to the smaller ``C``
    (stronger regularisation). Returns ``(best C, {C: mean score})``.
    """
    X, Y = np.asarray(X), np.asarray(Y)
    per_c: dict[float, list[float]] = {float(C): [] for C in grid}
    for fit_rows, score_rows in splits:
        if multilabel and not Y[score_rows].any():
            continue
        if not multilabel and classifier == "sklearn":
            for C, v in _warm_path(X, Y, fit_rows, score_rows, grid).items():
                per_c[C].append(v)
            continue
        for C in per_c:
            probe = fit_probe(X[fit_rows], Y[fit_rows], C, multilabel, classifier)
            per_c[C].append(evaluate(probe, X[score_rows], Y[score_rows], multilabel))
    means = {C: float(np.mean(v)) if v else float("nan") for C, v in per_c.items()}
    best = max(means, key=lambda c: (np.nan_to_num(means[c], nan=-np.inf), -c))
    return best, means

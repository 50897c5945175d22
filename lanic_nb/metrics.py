"""Ranking metrics, in one place: AUROC (one score or a matrix of units x concepts), AUPRC, bootstrap CIs,
and the linear-probe AUROC of a representation.

Every stage that scores a classifier, a unit or a probe calls these, so an AUROC printed by notebook 02
and one printed by notebook 04 are the same computation. AUROC is the Mann-Whitney statistic with ties
given the average rank (what scikit-learn's ``roc_auc_score`` returns); a test checks both against it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression


def auroc_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every score column for every binary label column, in one rank pass.

    scores: (n, n_units); labels: (n, n_labels), bool or 0/1. Returns (n_units, n_labels); NaN where a
    label column is all positive or all negative.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or y.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores (n, units) and labels (n, labels) must share n; got {s.shape} and {y.shape}")
    ranks = rankdata(s, axis=0)  # (n, U), ties share the average rank
    n_pos = y.sum(axis=0)  # (K,)
    n_neg = y.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (ranks.T @ y - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)  # (U, K)
    auc[:, (n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC of scores ``s`` (n,) for binary labels ``y`` (n,); NaN if one class is absent."""
    y = np.asarray(y, dtype=bool).reshape(-1, 1)
    s = np.asarray(s, dtype=np.float64).reshape(-1, 1)
    return float(auroc_matrix(s, y)[0, 0])


def unit_aurocs(scores: np.ndarray, present: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` (n, n_units) for one binary label (n,); raises if one class."""
    y = np.asarray(present, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("present must contain both positives and negatives to compute AUROC")
    return auroc_matrix(scores, y[:, None])[:, 0]


def roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of scores ``s`` for labels ``y``: (false positive rates, true positive rates), from (0, 0)
    to (1, 1), one point per distinct score (tied scores move both rates at once, as in the AUROC above)."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    if y.all() or not y.any():
        raise ValueError("y must contain both positives and negatives to draw a ROC curve")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each run of tied scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (step-wise area under precision-recall, as scikit-learn); NaN without positives."""
    y = np.asarray(y, dtype=bool)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-np.asarray(s, dtype=np.float64), kind="mergesort")
    ys, ss = y[order], np.asarray(s)[order]
    tp = np.cumsum(ys)
    last = np.r_[ss[1:] != ss[:-1], True]  # ties share one threshold: keep the last index of each run
    tp, n_pred = tp[last], np.flatnonzero(last) + 1
    precision, recall = tp / n_pred, tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_auroc(Y: np.ndarray, S: np.ndarray) -> float:
    """Mean over label columns of the AUROC on certain labels (1 / 0; -1 and NaN rows are left out).

    Columns with one class only are skipped; NaN when none is left.
    """
    Y = np.asarray(Y, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    vals = []
    for j in range(Y.shape[1]):
        keep = np.isin(Y[:, j], (0.0, 1.0))
        if keep.any():
            v = auroc(Y[keep, j] == 1.0, S[keep, j])
            if np.isfinite(v):
                vals.append(v)
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_metric(
    fn: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, s: np.ndarray, n_boot: int,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """Point estimate and percentile 95% interval of ``fn(y, s)`` over bootstrap resamples of rows."""
    point = fn(y, s)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    vals = np.array([fn(y[i], s[i]) for i in idx])
    vals = vals[np.isfinite(vals)]
    lo, hi = (np.percentile(vals, [2.5, 97.5]) if len(vals) else (np.nan, np.nan))
    return point, float(lo), float(hi)


def probe_aurocs(features: np.ndarray, presence: np.ndarray, train: np.ndarray, test: np.ndarray,
                 C: float = 1.0) -> np.ndarray:
    """(n_concepts,) test-split AUROC of one logistic probe per concept on ``features`` (n, d).

    Each probe is fitted on the ``train`` rows (features standardized by the train rows' mean and std) and
    scored on the ``test`` rows: how well *any* linear read-out of this representation finds the concept,
    an upper reference for a single unit. NaN where a concept has one class only in train or in test.
    """
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(presence, dtype=bool)
    train, test = np.asarray(train, dtype=bool), np.asarray(test, dtype=bool)
    if len(X) != len(y) or len(train) != len(X) or len(test) != len(X):
        raise ValueError(f"features ({len(X)}), presence ({len(y)}), train ({len(train)}) and test ({len(test)}) "
                         "must have one row per image")
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-8
    Xs = (X - mu) / sd
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        ytr, yte = y[train, j], y[test, j]
        if ytr.all() or not ytr.any() or yte.all() or not yte.any():
            continue
        # Newton steps on the (d x d) Hessian: the same L2-penalized optimum as lbfgs in a few iterations, where
        # lbfgs can stop short of it (docs/decisions.md#stages-probes-with-newton-cholesky).
        clf = LogisticRegression(C=C, max_iter=5000, solver="newton-cholesky").fit(Xs[train], ytr)
        out[j] = auroc(yte, clf.decision_function(Xs[test]))
    return out

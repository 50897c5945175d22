"""Calibrated probabilities: a per-finding map from the classifier's logit to a probability, fitted on the
validation split, and the expected calibration error that checks it.

A head trained to rank films (AUROC) can be over- or under-confident: among films it calls 0.9, far more or
fewer than 90% may carry the finding. Platt scaling (Platt 1999) fits ``p = sigmoid(a * logit + b)`` per finding
by maximum likelihood on the validation split's certain labels, with Platt's smoothed targets ((N+ + 1)/(N+ + 2)
and 1/(N- + 2)) so that a split the head separates perfectly still gives finite a, b; temperature scaling (Guo et
al., ICML 2017) fits ``a = 1/T`` alone (b = 0). "auto" picks, per finding, whichever of the raw sigmoid,
temperature and Platt scaling predicts held-out validation films best (5-fold cross-validated log-loss; a
scaling must beat the raw sigmoid by two standard errors of the paired per-film difference), since a head trained
with a cross-entropy is often calibrated already and a scaling fitted on a few hundred films then only adds
noise. All are monotone, so rankings and AUROC do not
change, and the exact decomposition of the logit (notebook 06) is untouched: calibration only reads the
probability off it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from lanic_nb.io import read_json, write_json
from lanic_nb.manifest import FINDINGS

METHODS = ("auto", "platt", "temperature", "none")
SCALINGS = ("none", "temperature", "platt")
AUTO_Z = 2.0
"""With "auto": a scaling replaces the raw sigmoid when its cross-validated log-loss is lower by this many standard
errors of the paired per-film differences."""
CALIBRATION_FILE = "calibration.json"
"""Written by the classifier stage under ``classifier/``."""


@dataclass
class Calibration:
    """``p = sigmoid(a * logit + b)`` per finding (``a = 1, b = 0``: the raw sigmoid)."""

    method: str
    """What was asked for: "auto", "platt", "temperature" or "none"."""
    a: list[float]
    b: list[float]
    chosen: list[str] | None = None
    """Per finding, the scaling in use (with "auto", the one cross-validation chose)."""

    def probabilities(self, logits) -> np.ndarray:
        """(n, n_findings) calibrated probabilities of (n, n_findings) logits."""
        z = np.asarray(logits, dtype=np.float64) * np.asarray(self.a) + np.asarray(self.b)
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / CALIBRATION_FILE, asdict(self))

    @classmethod
    def identity(cls, n: int = len(FINDINGS)) -> Calibration:
        return cls("none", [1.0] * n, [0.0] * n, ["none"] * n)


def load_calibration(folder: str | Path) -> Calibration:
    """The classifier's calibration, or the identity for a classifier saved without one."""
    path = Path(folder) / CALIBRATION_FILE
    return Calibration(**read_json(path)) if path.exists() else Calibration.identity()


def _fit_one(logit: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if method == "none" or n_pos == 0 or n_neg == 0:
        return 1.0, 0.0
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))  # Platt's smoothed targets

    def nll(theta):
        a, b = (theta[0], theta[1]) if method == "platt" else (np.exp(theta[0]), 0.0)
        z = a * logit + b
        # log(1 + e^z) - t z, computed stably; its gradient is (sigmoid(z) - t) times dz
        loss = np.logaddexp(0.0, z) - t * z
        g = 1.0 / (1.0 + np.exp(-z)) - t
        grad = [np.mean(g * logit), np.mean(g)] if method == "platt" else [np.mean(g * logit) * a]
        return float(np.mean(loss)), np.asarray(grad)

    x0 = [1.0, 0.0] if method == "platt" else [0.0]
    res = minimize(nll, x0, jac=True, method="L-BFGS-B")
    return (float(res.x[0]), float(res.x[1])) if method == "platt" else (float(np.exp(res.x[0])), 0.0)


def _log_losses(logit: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    z = a * logit + b
    return np.logaddexp(0.0, z) - y * z


def _cross_validated(logit: np.ndarray, y: np.ndarray, scaling: str, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(n,) each film's held-out log-loss under ``scaling`` fitted on the other folds."""
    order = np.random.default_rng(seed).permutation(len(y))
    out = np.empty(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        out[test] = _log_losses(logit[test], y[test], *_fit_one(logit[train], y[train], scaling))
    return out


def _auto(logit: np.ndarray, y: np.ndarray) -> str:
    if y.sum() < 5 or (~y).sum() < 5:  # too few of one class to cross-validate a scaling
        return "none"
    raw = _log_losses(logit, y, 1.0, 0.0)
    gain = {s: raw - _cross_validated(logit, y, s) for s in ("temperature", "platt")}  # per film, > 0: better
    best = max(gain, key=lambda s: gain[s].mean())
    d = gain[best]
    return best if d.mean() > AUTO_Z * d.std(ddof=1) / np.sqrt(len(d)) else "none"


def fit_calibration(logits: np.ndarray, labels: np.ndarray, method: str = "auto") -> Calibration:
    """Fit a calibration per finding on (n, n_findings) logits and labels (1 / 0 / -1 / NaN; certain ones used).
    A finding with one class only keeps the raw sigmoid."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    a, b, chosen = [], [], []
    for j in range(logits.shape[1]):
        keep = np.isin(labels[:, j], (0.0, 1.0))
        lj, yj = logits[keep, j], labels[keep, j] == 1.0
        scaling = _auto(lj, yj) if method == "auto" else method
        aj, bj = _fit_one(lj, yj, scaling)
        a.append(aj)
        b.append(bj)
        chosen.append(scaling if (aj, bj) != (1.0, 0.0) or scaling == "none" else "none")
    return Calibration(method, a, b, chosen)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """(n_findings,) ECE: the film-weighted mean over equal-width probability bins of |share positive - mean
    probability| (Naeini et al. 2015; Guo et al. 2017), over each finding's certain labels (NaN: none)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    out = np.full(probs.shape[1], np.nan)
    for j in range(probs.shape[1]):
        keep = np.isin(labels[:, j], (0.0, 1.0))
        p, y = probs[keep, j], labels[keep, j]
        if len(p) == 0:
            continue
        bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
        gap = 0.0
        for k in np.unique(bins):
            at = bins == k
            gap += at.sum() * abs(y[at].mean() - p[at].mean())
        out[j] = gap / len(p)
    return out


def reliability_table(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Per finding and probability bin: films, mean probability, share positive (a reliability diagram's points)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    rows = []
    for j, finding in enumerate(FINDINGS[: probs.shape[1]]):
        keep = np.isin(labels[:, j], (0.0, 1.0))
        p, y = probs[keep, j], labels[keep, j]
        bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
        for k in np.unique(bins):
            at = bins == k
            rows.append({"finding": finding, "bin": int(k), "n": int(at.sum()), "mean_prob": float(p[at].mean()),
                         "frac_pos": float(y[at].mean())})
    return pd.DataFrame(rows, columns=["finding", "bin", "n", "mean_prob", "frac_pos"])

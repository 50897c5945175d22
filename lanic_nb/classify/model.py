"""The diagnostic classifier: an MLP head on frozen CLIP image embeddings for the five findings.

    x (d_in) -> fc1 -> ReLU -> h (hidden) -> fc2 -> 5 logits (sigmoid per finding)

This is the template of CXR-LanIC's sister work (Matryoshka Transcoders, arXiv 2511.10094): a frozen
CLIP embedding, one hidden ReLU layer of 256 units, a sigmoid per finding. The hidden layer ``h`` is what
the transcoders of ``lanic_nb.transcoder.model`` predict from ``x``, so the model exposes ``hidden`` and ``head``
separately and ``forward(x) == head(hidden(x))``.

Labels follow the CheXpert convention (1 / 0 / -1 uncertain / NaN not mentioned). NaN never enters the
loss; -1 is ignored, or counted as positive or negative (``uncertain_policy``, the U-Ignore / U-Ones /
U-Zeros baselines of the CheXpert paper). Evaluation only ever uses the certain labels 1 and 0.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from lanic_nb.checks import require_at_least_one
from lanic_nb.io import read_json, read_tensors, write_json, write_tensors
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import auprc, auroc, bootstrap_metric, mean_auroc

log = logging.getLogger(__name__)

UNCERTAIN_POLICIES = ("ignore", "positive", "negative")


@dataclass
class ClassifierConfig:
    """The diagnostic head's architecture and training (validated on construction)."""

    d_in: int | None = None
    """Width of the input embedding; None until the data is known (the classifier stage takes it from the
    embeddings). Default: from the data."""
    hidden: int = 256
    """Width of the hidden ReLU layer ``h``, the layer the transcoders predict. Default: Matryoshka Transcoders
    (arXiv 2511.10094), CXR-LanIC's sister work: 256."""
    dropout: float = 0.1
    """Dropout on the input embedding while training, in [0, 1). Default: a common light regularizer for linear
    heads on frozen embeddings; chosen on the phantom."""
    lr: float = 1e-3
    """AdamW learning rate. Default: AdamW's usual 1e-3."""
    weight_decay: float = 1e-4
    """AdamW weight decay. Default: chosen on the phantom."""
    max_epochs: int = 200
    """Upper bound on training epochs (early stopping usually ends training first). Default: engineering."""
    patience: int = 15
    """Stop after this many epochs without a better validation mean AUROC. Default: chosen on the phantom."""
    uncertain_policy: str = "ignore"
    """What an uncertain label (-1) means in the loss: "ignore", "positive" or "negative" (CheXpert's U-Ignore,
    U-Ones, U-Zeros). Default: U-Ignore, the CheXpert paper's (arXiv 1901.07031) baseline."""
    seed: int = 0
    """Seeds the initialization and the batch order. Default: 0."""
    batch_size: int = 128
    """Training minibatch size. Default: engineering."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("hidden", "max_epochs", "patience", "batch_size"))
        if self.d_in is not None:
            require_at_least_one(self, ("d_in",))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.uncertain_policy not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain_policy must be one of {UNCERTAIN_POLICIES}, got {self.uncertain_policy!r}")

    def with_input(self, d_in: int) -> ClassifierConfig:
        """This config for inputs of width ``d_in`` (ValueError if it already names another width)."""
        if self.d_in is not None and self.d_in != d_in:
            raise ValueError(f"d_in is {self.d_in}, but the embeddings have {d_in} dimensions (leave d_in unset)")
        return replace(self, d_in=int(d_in))


class DiagnosticClassifier(nn.Module):
    """Embedding -> ReLU hidden layer -> one logit per finding."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        if cfg.d_in is None:
            raise ValueError("ClassifierConfig.d_in must be set to build a classifier (cfg.with_input(d_in))")
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.fc1 = nn.Linear(cfg.d_in, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, len(FINDINGS))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The transcoders' target: h = relu(fc1(x))  # (batch, hidden)."""
        return F.relu(self.fc1(self.drop(x)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the hidden layer  # (batch, 5)."""
        return self.fc2(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


def policy_targets(Y: np.ndarray | torch.Tensor, policy: str) -> torch.Tensor:
    """Labels (n, 5) in {1, 0, -1, NaN} -> loss targets in {1, 0, NaN} (NaN = not in the loss)."""
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_policy must be one of {UNCERTAIN_POLICIES}, got {policy!r}")
    t = torch.as_tensor(np.asarray(Y, dtype=np.float32)).clone()
    t[t == -1] = {"ignore": float("nan"), "positive": 1.0, "negative": 0.0}[policy]
    return t


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the entries whose target is not NaN  # logits, targets (batch, 5)."""
    mask = ~torch.isnan(targets)
    if not mask.any():
        return logits.sum() * 0.0  # keeps the graph; a batch without labels contributes nothing
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets, nan=0.0), reduction="none")
    return (loss * mask).sum() / mask.sum()


# ---------------------------------------------------------------- metrics


def evaluate(
    scores: dict[str, np.ndarray], Y: np.ndarray, n_boot: int = 500, seed: int = 0
) -> pd.DataFrame:
    """One row per (model, finding): AUROC and AUPRC with bootstrap 95% intervals, plus a "mean" row.

    ``scores`` maps a model name (e.g. "mlp", "linear probe", "zero-shot") to scores (n, 5) for the same
    rows as ``Y`` (n, 5). Only certain labels (1, 0) are scored; -1 and NaN rows are left out per finding.
    Every model is resampled with the same bootstrap indices (same seed), so intervals are comparable.
    """
    Y = np.asarray(Y, dtype=np.float32)
    rows = []
    for name, S in scores.items():
        S = np.asarray(S, dtype=np.float64)
        if S.shape != Y.shape:
            raise ValueError(f"scores[{name!r}] has shape {S.shape}, labels have {Y.shape}")
        for j, finding in enumerate(FINDINGS):
            keep = np.isin(Y[:, j], (0.0, 1.0))
            y, s = Y[keep, j] == 1.0, S[keep, j]
            a = bootstrap_metric(auroc, y, s, n_boot, np.random.default_rng(seed + j))
            p = bootstrap_metric(auprc, y, s, n_boot, np.random.default_rng(seed + j))
            rows.append(dict(model=name, finding=finding, n=int(keep.sum()), n_pos=int(y.sum()),
                             auroc=a[0], auroc_lo=a[1], auroc_hi=a[2], auprc=p[0], auprc_lo=p[1], auprc_hi=p[2]))
    df = pd.DataFrame(rows)
    means = df.groupby("model", sort=False)[["auroc", "auprc"]].mean().reset_index().assign(finding="mean")
    return pd.concat([df, means], ignore_index=True)


# ---------------------------------------------------------------- training


@torch.no_grad()
def predict_logits(model: DiagnosticClassifier, X: np.ndarray | torch.Tensor, device="cpu",
                   batch_size: int = 4096) -> np.ndarray:
    """Logits (n, 5) in eval mode (no dropout)."""
    model.eval()
    X = torch.as_tensor(np.asarray(X, dtype=np.float32))
    out = [model(X[i : i + batch_size].to(device)).cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(FINDINGS)), np.float32)


def train_classifier(
    cfg: ClassifierConfig, X: np.ndarray, Y: np.ndarray, split: np.ndarray, device="cpu"
) -> tuple[DiagnosticClassifier, pd.DataFrame]:
    """Train on split == "train", early-stop on the mean AUROC of split == "val"; returns the best model.

    X (n, d_in) embeddings, Y (n, 5) labels in {1, 0, -1, NaN}, split (n,) strings. The history has one
    row per epoch: epoch, train_loss, val_loss, val_auroc.
    """
    device = torch.device(device)
    split = np.asarray(split).astype(str)
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    if X.shape != (len(Y), cfg.d_in):
        raise ValueError(f"X must have shape (n, d_in={cfg.d_in}) matching Y's {len(Y)} rows, got {X.shape}")
    tr, va = split == "train", split == "val"
    if not tr.any() or not va.any():
        raise ValueError("split must contain both 'train' and 'val' rows")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout masks
    model = DiagnosticClassifier(cfg)
    with torch.no_grad():  # initialization from our own generator: independent of global RNG use elsewhere
        for lin in (model.fc1, model.fc2):
            bound = 1.0 / lin.in_features**0.5
            lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
            lin.bias.copy_(torch.rand(lin.bias.shape, generator=gen) * 2 * bound - bound)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    Xtr = torch.from_numpy(X[tr]).to(device)
    Ttr = policy_targets(Y[tr], cfg.uncertain_policy).to(device)
    Tva = policy_targets(Y[va], cfg.uncertain_policy)
    best, best_state, bad, history = -np.inf, copy.deepcopy(model.state_dict()), 0, []
    for epoch in range(cfg.max_epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=gen).to(device)
        total, count = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            loss = masked_bce(model(Xtr[b]), Ttr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(b), count + len(b)
        logits = predict_logits(model, X[va], device)
        val_loss = masked_bce(torch.from_numpy(logits), Tva).item()
        val_auc = mean_auroc(Y[va], logits)
        history.append(dict(epoch=epoch, train_loss=total / count, val_loss=val_loss, val_auroc=val_auc))
        if val_auc > best + 1e-5:
            best, best_state, bad = val_auc, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    log.info("classifier: best val mean AUROC %.4f after %d epochs", best, len(history))
    model.load_state_dict(best_state)
    model.eval()
    return model, pd.DataFrame(history)


def train_linear_probe(
    X: np.ndarray, Y: np.ndarray, split: np.ndarray, uncertain_policy: str = "ignore", C: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """The baseline: one L2-regularized logistic regression per finding on the train rows.

    Returns a weight matrix (d_in + 1, 5): rows 0..d_in-1 the weights, the last row the biases, so that
    scores are ``X @ W[:-1] + W[-1]``.
    """
    X = np.asarray(X, dtype=np.float64)
    T = policy_targets(np.asarray(Y)[np.asarray(split).astype(str) == "train"], uncertain_policy).numpy()
    Xtr = X[np.asarray(split).astype(str) == "train"]
    W = np.zeros((X.shape[1] + 1, T.shape[1]))
    for j in range(T.shape[1]):
        keep = ~np.isnan(T[:, j])
        if len(np.unique(T[keep, j])) < 2:
            continue  # a finding with one class only: constant zero score
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(Xtr[keep], T[keep, j])
        W[:-1, j], W[-1, j] = clf.coef_[0], clf.intercept_[0]
    return W


# ---------------------------------------------------------------- save / load


def save_classifier(model: DiagnosticClassifier, cfg: ClassifierConfig, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (the config's fields)."""
    folder = Path(folder)
    write_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "config.json", asdict(cfg))
    return folder


def load_classifier(folder: str | Path, device="cpu") -> DiagnosticClassifier:
    """Mirror of ``save_classifier``: the model in eval mode on ``device``."""
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    names = {f.name for f in fields(ClassifierConfig)}
    cfg = ClassifierConfig(**{k: v for k, v in raw.items() if k in names})
    model = DiagnosticClassifier(cfg)
    model.load_state_dict(read_tensors(folder / "model.safetensors"))
    return model.to(device).eval()


@torch.no_grad()
def hidden_targets(classifier: DiagnosticClassifier, X: np.ndarray, device, batch_size: int = 4096) -> torch.Tensor:
    """The classifier's hidden layer h for every row  # (n, hidden)."""
    classifier.eval()
    X = torch.as_tensor(np.asarray(X, dtype=np.float32))
    return torch.cat([classifier.hidden(X[i : i + batch_size].to(device)) for i in range(0, len(X), batch_size)])

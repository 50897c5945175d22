"""The diagnostic head: masked loss, uncertain-label policy, metrics, training, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from lanic_nb.classify.model import (
    ClassifierConfig,
    DiagnosticClassifier,
    auprc,
    auroc,
    evaluate,
    load_classifier,
    masked_bce,
    policy_targets,
    predict_logits,
    save_classifier,
    train_classifier,
    train_linear_probe,
)
from lanic_nb.manifest import FINDINGS


def planted_labels(n: int = 600, d: int = 16, seed: int = 0):
    """Unit-norm embeddings whose five labels are noisy thresholds of planted directions, with -1 and NaN."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    W = rng.normal(size=(d, 5))
    Y = ((X @ W + 0.1 * rng.normal(size=(n, 5))) > 0.2).astype(np.float32)
    Y[rng.random((n, 5)) < 0.1] = -1.0
    Y[rng.random((n, 5)) < 0.1] = np.nan
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    return X, Y, split


def test_config_validation_names_parameter():
    with pytest.raises(ValueError, match="uncertain_policy"):
        ClassifierConfig(d_in=4, uncertain_policy="maybe")
    with pytest.raises(ValueError, match="hidden"):
        ClassifierConfig(d_in=4, hidden=0)
    with pytest.raises(ValueError, match="dropout"):
        ClassifierConfig(d_in=4, dropout=1.0)


def test_policy_targets_maps_uncertain():
    Y = np.array([[1, 0, -1, np.nan, -1]], dtype=np.float32)
    assert np.isnan(policy_targets(Y, "ignore")[0, [2, 3, 4]]).all()
    assert policy_targets(Y, "positive")[0, 2] == 1 and np.isnan(policy_targets(Y, "positive")[0, 3])
    assert policy_targets(Y, "negative")[0, 4] == 0
    assert policy_targets(Y, "negative")[0, 0] == 1


def test_masked_bce_ignores_nan_entries():
    logits = torch.randn(6, 5, requires_grad=True)
    targets = torch.tensor(np.random.default_rng(1).integers(0, 2, (6, 5)), dtype=torch.float32)
    targets[0, 1] = targets[3, 4] = targets[5, 0] = float("nan")
    loss = masked_bce(logits, targets)
    keep = ~torch.isnan(targets)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], targets[keep])
    assert torch.allclose(loss, ref)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[3, 4] == 0 and logits.grad[5, 0] == 0
    assert (logits.grad[keep] != 0).all()
    # Changing the logit of an ignored entry changes nothing.
    logits2 = logits.detach().clone()
    logits2[0, 1] += 100
    assert torch.allclose(masked_bce(logits2, targets), loss)


def test_auroc_auprc_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.zeros(5, bool), np.arange(5)))


def test_train_save_load_and_evaluate(tmp_path):
    X, Y, split = planted_labels()
    cfg = ClassifierConfig(d_in=X.shape[1], hidden=32, max_epochs=60, patience=10, batch_size=64, seed=3)
    model, hist = train_classifier(cfg, X, Y, split)
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "val_auroc"]
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    x = torch.from_numpy(X[:7])
    assert model.hidden(x).shape == (7, 32) and (model.hidden(x) >= 0).all()
    assert torch.allclose(model(x), model.head(model.hidden(x)))

    save_classifier(model, cfg, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    assert isinstance(loaded, DiagnosticClassifier) and loaded.cfg == cfg
    assert np.array_equal(predict_logits(loaded, X), predict_logits(model, X))

    te = split == "test"
    W = train_linear_probe(X, Y, split)
    scores = {"mlp": predict_logits(model, X[te]), "linear probe": X[te] @ W[:-1] + W[-1],
              "random": np.random.default_rng(0).normal(size=(te.sum(), 5))}
    table = evaluate(scores, Y[te], n_boot=100)
    per = table[table.finding != "mean"]
    assert len(per) == 3 * len(FINDINGS)
    assert (per.auroc_lo <= per.auroc).all() and (per.auroc <= per.auroc_hi).all()
    assert (per.auprc_lo <= per.auprc_hi).all()
    means = table[table.finding == "mean"].set_index("model").auroc
    assert means["mlp"] > 0.9 and means["linear probe"] > 0.9 and abs(means["random"] - 0.5) < 0.1
    # Only certain labels are scored.
    n_certain = np.isin(Y[te, 0], (0, 1)).sum()
    assert per[(per.model == "mlp") & (per.finding == FINDINGS[0])].n.item() == n_certain


def test_training_is_seeded():
    X, Y, split = planted_labels(n=200)
    cfg = ClassifierConfig(d_in=X.shape[1], hidden=8, max_epochs=3, patience=3, seed=1)
    torch.manual_seed(123)
    a, _ = train_classifier(cfg, X, Y, split)
    torch.manual_seed(456)
    b, _ = train_classifier(cfg, X, Y, split)
    assert torch.equal(a.fc1.weight, b.fc1.weight)

"""The classifier stage of a run (notebook 02): train the MLP head and a linear probe on the embeddings,
evaluate them beside CLIP zero-shot on the test split with bootstrap intervals, and write ``classifier/``.

Writes ``classifier/model.safetensors`` + ``config.json`` (the model), ``metrics.csv`` (AUROC/AUPRC per
model and finding with 95% intervals), ``history.csv`` (per epoch) and ``metrics/02_classifier.json``.
The model and its training are in ``lanic_nb.classify.model``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.artifacts import load_stage_data, stage_function
from lanic_nb.checks import require_at_least_one
from lanic_nb.classify.calibrate import (
    METHODS,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    reliability_table,
)
from lanic_nb.classify.model import (
    ClassifierConfig,
    DiagnosticClassifier,
    evaluate,
    predict_logits,
    save_classifier,
    train_classifier,
    train_linear_probe,
)
from lanic_nb.device import pick_device, seed_everything
from lanic_nb.io import read_table, write_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.rundir import RunDir, record_metrics

log = logging.getLogger(__name__)


@dataclass
class ClassifyConfig:
    """Settings of the classifier stage (notebook 02)."""

    device: str = "auto"
    """Where the head trains: "auto" (CUDA when present, else CPU), "cpu", "cuda", ... Default: auto."""
    calibration: str = "auto"
    """How the head's logits become probabilities, fitted on the validation split per finding: "auto" (whichever
    of the raw sigmoid, temperature and Platt scaling cross-validates best), "platt", "temperature" or "none"
    (``classify.calibrate``). Default: auto, since a head trained with a cross-entropy is often calibrated
    already."""
    n_boot: int = 500
    """Bootstrap resamples of the test split for the 95% intervals of AUROC and AUPRC. Default: a common choice
    for percentile intervals (Efron & Tibshirani use 1,000 and more; 500 keeps the stage fast)."""
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    """The head's architecture and training (its input width comes from the embeddings)."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("n_boot",))
        if self.calibration not in METHODS:
            raise ValueError(f"calibration must be one of {METHODS}, got {self.calibration!r}")


@dataclass
class ClassifyResult:
    model: DiagnosticClassifier
    history: pd.DataFrame
    """Per epoch: train_loss, val_loss, val_auroc."""
    table: pd.DataFrame
    """``classifier/metrics.csv``: one row per (model, finding) plus "mean" rows."""
    metrics: dict
    """What ``metrics/02_classifier.json`` records."""
    n_images: int
    d_in: int
    calibration: Calibration
    """The logit -> probability map per finding, fitted on the validation split (``classifier/calibration.json``)."""
    reliability: pd.DataFrame
    """Test split, per finding and probability bin, before and after calibration (``classifier/reliability.csv``)."""


@stage_function("02_classifier")
def run_classify(run_dir: str | Path, config: ClassifyConfig | None = None) -> ClassifyResult:
    """The classifier stage: train, evaluate, write ``classifier/`` and the stage's metrics."""
    cfg = config or ClassifyConfig()
    seed_everything(cfg.classifier.seed)
    device = pick_device(cfg.device)
    data = load_stage_data(run_dir)
    model_cfg = cfg.classifier.with_input(data.X.shape[1])
    model, history, table = fit_classifier_stage(run_dir, model_cfg, device, n_boot=cfg.n_boot)
    calibration, reliability, ece = calibrate_stage(run_dir, model, data, cfg.calibration, device)
    metrics = stage_metrics(table, history, len(data.X)) | ece
    record_metrics(run_dir, "02_classifier", metrics)
    log.info("%d images of dimension %d; trained %d epochs; test mean AUROC %.3f; ECE %.3f -> %.3f (%s)",
             len(data.X), data.X.shape[1], len(history), metrics["mlp_auroc_mean"], ece["ece_before_mean"],
             ece["ece_after_mean"], ", ".join(calibration.chosen))
    return ClassifyResult(model, history, table, metrics, len(data.X), int(data.X.shape[1]), calibration, reliability)


def calibrate_stage(run_dir: str | Path, model: DiagnosticClassifier, data, method: str, device="cpu"
                    ) -> tuple[Calibration, pd.DataFrame, dict]:
    """Fit the calibration on the validation split, measure it on the test split; write ``calibration.json`` and
    ``reliability.csv`` under ``classifier/``. Returns (calibration, reliability table, the ECE figures)."""
    logits = predict_logits(model, data.X, device)
    va, te = data.split == "val", data.split == "test"
    calibration = fit_calibration(logits[va], data.Y[va], method)
    raw, cal = Calibration.identity().probabilities(logits[te]), calibration.probabilities(logits[te])
    before, after = expected_calibration_error(raw, data.Y[te]), expected_calibration_error(cal, data.Y[te])
    reliability = pd.concat([reliability_table(raw, data.Y[te]).assign(probabilities="raw sigmoid"),
                             reliability_table(cal, data.Y[te]).assign(probabilities="calibrated")], ignore_index=True)
    folder = RunDir(Path(run_dir)).classifier
    calibration.save(folder)
    write_table(folder / "reliability.csv", reliability)
    ece = {"calibration": dict(zip(FINDINGS, calibration.chosen, strict=True)),
           "ece_before": {f: float(v) for f, v in zip(FINDINGS, before, strict=True)},
           "ece_after": {f: float(v) for f, v in zip(FINDINGS, after, strict=True)},
           "ece_before_mean": float(np.nanmean(before)), "ece_after_mean": float(np.nanmean(after))}
    return calibration, reliability, ece


def stage_metrics(table: pd.DataFrame, history: pd.DataFrame, n_images: int) -> dict:
    """The figures the stage records: mean AUROC of each model, the MLP's per finding, training length."""
    means = table[table.finding == "mean"].set_index("model").auroc
    mlp = table[(table.model == "mlp") & (table.finding != "mean")].set_index("finding").auroc
    return {
        "n_images": int(n_images), "epochs": int(len(history)),
        "best_val_auroc": float(history.val_auroc.max()),
        "mlp_auroc_mean": float(means["mlp"]), "linear_auroc_mean": float(means["linear probe"]),
        "zeroshot_auroc_mean": float(means["zero-shot"]) if "zero-shot" in means else None,
        "mlp_auroc": {f: float(v) for f, v in mlp.items()},
    }


def zero_shot_matrix(run_dir: str | Path, image_id: np.ndarray) -> np.ndarray | None:
    """The CLIP zero-shot scores (n, 5) for these images, or None if the run has none."""
    path = RunDir(Path(run_dir)).clip / "zeroshot_scores.parquet"
    if not path.exists():
        return None
    table = read_table(path).astype({"image_id": str}).set_index("image_id")
    return table.reindex(pd.Index(image_id, dtype=str))[list(FINDINGS)].to_numpy(dtype=np.float64)


def fit_classifier_stage(
    run_dir: str | Path, cfg: ClassifierConfig, device="cpu", n_boot: int = 500, probe_C: float = 1.0,
) -> tuple[DiagnosticClassifier, pd.DataFrame, pd.DataFrame]:
    """Train the head, the linear probe; evaluate them beside zero-shot on the test split; write classifier/.

    Writes ``classifier/model.safetensors``, ``config.json``, ``metrics.csv`` (the table) and
    ``history.csv``. Returns (model, history, table).
    """
    data = load_stage_data(run_dir)
    model, history = train_classifier(cfg, data.X, data.Y, data.split, device)
    W = train_linear_probe(data.X, data.Y, data.split, cfg.uncertain_policy, probe_C, cfg.seed)
    te = data.split == "test"
    scores = {"mlp": predict_logits(model, data.X[te], device), "linear probe": data.X[te] @ W[:-1] + W[-1]}
    zs = zero_shot_matrix(run_dir, data.image_id[te])
    if zs is not None and np.isfinite(zs).all():
        scores["zero-shot"] = zs
    table = evaluate(scores, data.Y[te], n_boot=n_boot, seed=cfg.seed)
    folder = RunDir(Path(run_dir)).classifier
    save_classifier(model, cfg, folder)
    write_table(folder / "metrics.csv", table)
    write_table(folder / "history.csv", history)
    return model, history, table

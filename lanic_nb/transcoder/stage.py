"""The transcoder stage of a run: train the ensemble on the classifier, write it and its metrics, plot.

Reads ``classifier/`` and the embedding store; writes ``transcoders/ensemble.safetensors``, ``config.json``,
``metrics.parquet`` (one row per member, on the test split), ``train_log.csv`` and ``checkpoints/``.
The model code is in ``lanic_nb.transcoder.model``; this module only connects it to the run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.classify import DiagnosticClassifier, load_classifier, load_stage_data
from lanic_nb.io import write_table
from lanic_nb.rundir import RunDir
from lanic_nb.transcoder.model import TranscoderConfig, TranscoderEnsemble, ensemble_metrics, train_ensemble


@torch.no_grad()
def hidden_targets(classifier: DiagnosticClassifier, X: np.ndarray, device, batch_size: int = 4096) -> torch.Tensor:
    """The classifier's hidden layer h for every row  # (n, hidden)."""
    classifier.eval()
    X = torch.as_tensor(np.asarray(X, dtype=np.float32))
    return torch.cat([classifier.hidden(X[i : i + batch_size].to(device)) for i in range(0, len(X), batch_size)])


def fit_transcoder_stage(
    run_dir: str | Path, device="cpu", resume: bool = True, **config
) -> tuple[TranscoderEnsemble, pd.DataFrame, pd.DataFrame]:
    """Train the ensemble on the train split's (x, h) pairs; evaluate every member on the test split.

    ``config`` holds TranscoderConfig fields other than d_in / d_out (taken from the classifier).
    Returns (ensemble, training log, per-member metrics).
    """
    rd = RunDir(Path(run_dir))
    device = torch.device(device)
    classifier = load_classifier(rd.classifier, device)
    data = load_stage_data(run_dir)
    cfg = TranscoderConfig(d_in=classifier.cfg.d_in, d_out=classifier.cfg.hidden, **config)
    tr, te = data.split == "train", data.split == "test"
    H = hidden_targets(classifier, data.X[tr], device)
    model, log = train_ensemble(cfg, data.X[tr], H, device, checkpoint_dir=rd.transcoders / "checkpoints",
                                resume=resume)
    metrics = ensemble_metrics(model, classifier, data.X[te], None, data.Y[te])
    model.save(rd.transcoders)
    write_table(rd.transcoders / "metrics.parquet", metrics)
    write_table(rd.transcoders / "train_log.csv", log)
    return model, log, metrics


def summarize(metrics: pd.DataFrame) -> dict:
    """The figures a run records: mean and worst member, and how far the splice moves the AUROC."""
    return {
        "n_members": int(len(metrics)),
        "fvu_mean": float(metrics.fvu.mean()),
        "fvu_max": float(metrics.fvu.max()),
        "l0_mean": float(metrics.l0.mean()),
        "dead_frac_mean": float(metrics.dead_frac.mean()),
        "auroc_original": float(metrics.auroc_original.iloc[0]),
        "auroc_spliced_mean": float(metrics.auroc_spliced.mean()),
        "auroc_delta_mean": float(metrics.auroc_delta.mean()),
        "auroc_delta_max_abs": float(metrics.auroc_delta.abs().max()),
    }


def plot_training(log: pd.DataFrame):
    """FVU and dead fraction (mean over members) along training."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for ax, col, label in zip(axes, ("fvu", "l0", "dead"), ("FVU of h (train batch)", "L0 (active latents)",
                                                            "dead fraction"), strict=True):
        ax.plot(log.step, log[col])
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig


def plot_members(metrics: pd.DataFrame):
    """Per member: FVU against the spliced AUROC, with the original classifier's AUROC as a line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].scatter(metrics.fvu, metrics.auroc_spliced, s=10)
    axes[0].axhline(metrics.auroc_original.iloc[0], color="gray", ls="--", lw=0.8, label="original")
    axes[0].set_xlabel("FVU of h (test)")
    axes[0].set_ylabel("spliced mean AUROC")
    axes[0].legend(fontsize=8)
    axes[1].hist(metrics.dead_frac, bins=20)
    axes[1].set_xlabel("dead fraction (test)")
    axes[1].set_ylabel("members")
    fig.tight_layout()
    return fig

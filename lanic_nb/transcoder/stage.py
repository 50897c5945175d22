"""The transcoder stage of a run: train the ensemble on the classifier, write it and its metrics, plot.

Reads ``classifier/`` and the embedding store; writes ``transcoders/ensemble.safetensors``, ``config.json``,
``input_decoder.safetensors`` (with ``input_weight``: the decoder's input part, which the merge compares),
``metrics.parquet`` (one row per member, on the test split), ``train_log.csv`` and ``checkpoints/``.
The model code is in ``lanic_nb.transcoder.model``; this module only connects it to the run directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from lanic_nb.artifacts import load_stage_data, save_input_decoder, stage_function
from lanic_nb.classify.model import hidden_targets, load_classifier
from lanic_nb.device import pick_device, seed_everything
from lanic_nb.io import write_table
from lanic_nb.rundir import RunDir, record_metrics
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.metrics import ensemble_metrics
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import train_ensemble

log = logging.getLogger(__name__)


@dataclass
class TranscodersConfig:
    """Settings of the transcoder stage (notebook 03)."""

    device: str = "auto"
    """Where the ensemble trains: "auto" (CUDA when present, else CPU), "cpu", "cuda", ... Default: auto."""
    transcoder: TranscoderConfig = field(default_factory=TranscoderConfig)
    """The ensemble's size, activation and training (its widths come from the classifier)."""


@dataclass
class TranscodersResult:
    model: TranscoderEnsemble
    log: pd.DataFrame
    """The training log (one row per logged step, means over members)."""
    members: pd.DataFrame
    """One row per member on the test split (``transcoders/metrics.parquet``)."""
    summary: dict
    """What ``metrics/03_transcoders.json`` records."""


@stage_function("03_transcoders")
def run_transcoders(run_dir: str | Path, config: TranscodersConfig | None = None) -> TranscodersResult:
    """The transcoder stage: train, evaluate and write the ensemble, then record its summary figures."""
    cfg = config or TranscodersConfig()
    seed_everything(cfg.transcoder.seed)
    device = pick_device(cfg.device)
    t0 = time.perf_counter()
    model, train_log, members = fit_transcoder_stage(run_dir, cfg.transcoder, device)
    summary = summarize(members)
    summary["train_seconds"] = time.perf_counter() - t0
    summary["seed"] = cfg.transcoder.seed  # member i trained with seed + i
    record_metrics(run_dir, "03_transcoders", summary)
    log.info("%d members x %d latents, %d steps in %.0f s on %s", model.cfg.n_members, model.cfg.d_dict,
             model.cfg.steps, summary["train_seconds"], device)
    return TranscodersResult(model, train_log, members, summary)


def fit_transcoder_stage(
    run_dir: str | Path, config: TranscoderConfig, device="cpu", resume: bool = True
) -> tuple[TranscoderEnsemble, pd.DataFrame, pd.DataFrame]:
    """Train the ensemble on the train split's (x, h) pairs; evaluate every member on the test split.

    ``config``'s widths (d_in, d_out) come from the classifier. Returns (ensemble, training log, per-member
    metrics).
    """
    rd = RunDir(Path(run_dir))
    device = torch.device(device)
    classifier = load_classifier(rd.classifier, device)
    data = load_stage_data(run_dir)
    cfg = config.with_dims(classifier.cfg.d_in, classifier.cfg.hidden)
    tr, te = data.split == "train", data.split == "test"
    H = hidden_targets(classifier, data.X[tr], device)
    model, log = train_ensemble(cfg, data.X[tr], H, device, checkpoint_dir=rd.transcoders / "checkpoints",
                                resume=resume)
    metrics = ensemble_metrics(model, classifier, data.X[te], None, data.Y[te])
    model.save(rd.transcoders)
    save_input_decoder(rd.transcoders, getattr(model, "input_decoder", None))
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

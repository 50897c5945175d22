"""The transcoder stage of a run: train the ensemble on the classifier, write it and its metrics, plot.

Reads ``classifier/`` and the embedding store; writes ``transcoders/ensemble.safetensors``, ``config.json``,
``input_decoder.safetensors`` (with ``input_weight``: the decoder's input part, which the merge compares),
``metrics.parquet`` (one row per member, on the test split), ``train_log.csv`` and ``checkpoints/``.
The model code is in ``lanic_nb.transcoder.model``; this module only connects it to the run directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.classify import DiagnosticClassifier, load_classifier, load_stage_data
from lanic_nb.device import pick_device, seed_everything
from lanic_nb.io import read_tensors, write_table, write_tensors
from lanic_nb.rundir import RunDir, record_metrics
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.metrics import ensemble_metrics
from lanic_nb.transcoder.model import TranscoderEnsemble
from lanic_nb.transcoder.train import train_ensemble

log = logging.getLogger(__name__)


@dataclass
class TranscodersConfig:
    """Parameters of notebook 03 (its demo defaults)."""

    device: str = "auto"
    n_members: int = 50
    """Ensemble size (CXR-LanIC: 100). The demo trains 50 for 2,000 steps: the work of 100 x 600, and the faint
    planted concepts (tubes, electrodes) need the longer training to get latents of their own."""
    d_dict: int = 256
    """Latents per member."""
    k: int = 16
    """Active latents per image (topk / batchtopk)."""
    activation: str = "batchtopk"
    """"batchtopk" | "topk" | "relu" | "jumprelu". BatchTopK (k x batch over the batch, a threshold after
    training) gave the demo's faint concepts latents that a fixed k per image spends on loud ones."""
    l1_coeff: float = 0.0
    """Sparsity penalty for relu / jumprelu."""
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    bootstrap: bool = False
    """Each member on its own bootstrap resample of the training images."""
    input_weight: float = 1.0
    """Train each member to reconstruct the embedding too, at this weight beside h (``TranscoderConfig.input_weight``);
    the saved ensemble is the x -> h transcoder. On the demo it gives planted concepts that h carries in
    low-variance directions (devices, artifacts) latents of their own. 0 = a plain transcoder."""
    encoder_precision: str = "float32"
    """"bfloat16": the encoder's forward product in bfloat16 while training (``TranscoderConfig.encoder_precision``);
    about 1.5x faster steps at MIMIC widths on hardware that multiplies bfloat16 natively (GPUs, AVX512-BF16 / AMX
    CPUs), slower elsewhere. The demo keeps float32."""
    seed: int = 0
    checkpoint_every: int = 500


@dataclass
class TranscodersResult:
    model: TranscoderEnsemble
    log: pd.DataFrame
    """The training log (one row per logged step, means over members)."""
    members: pd.DataFrame
    """One row per member on the test split (``transcoders/metrics.parquet``)."""
    summary: dict
    """What ``metrics/03_transcoders.json`` records."""


def run_transcoders(run_dir: str | Path, cfg: TranscodersConfig | None = None) -> TranscodersResult:
    """The transcoder stage: train, evaluate and write the ensemble, then record its summary figures."""
    cfg = cfg or TranscodersConfig()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    params = {k: v for k, v in asdict(cfg).items() if k != "device"}
    t0 = time.perf_counter()
    model, train_log, members = fit_transcoder_stage(run_dir, device, **params)
    summary = summarize(members)
    summary["train_seconds"] = time.perf_counter() - t0
    summary["seed"] = cfg.seed  # member i trained with seed + i
    record_metrics(run_dir, "03_transcoders", summary)
    log.info("%d members x %d latents, %d steps in %.0f s on %s", cfg.n_members, cfg.d_dict, cfg.steps,
             summary["train_seconds"], device)
    return TranscodersResult(model, train_log, members, summary)


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
    save_input_decoder(rd.transcoders, getattr(model, "input_decoder", None))
    write_table(rd.transcoders / "metrics.parquet", metrics)
    write_table(rd.transcoders / "train_log.csv", log)
    return model, log, metrics


INPUT_DECODER = "input_decoder.safetensors"
"""The decoder's input part of an ensemble trained with ``input_weight`` (W_dec_input, (n_members, d_dict, d_in)):
beside the saved x -> h transcoder, read by the pattern merge."""


def save_input_decoder(folder: str | Path, w: torch.Tensor | None) -> None:
    """Write (or, for an ensemble trained without ``input_weight``, remove a stale) ``INPUT_DECODER``."""
    path = Path(folder) / INPUT_DECODER
    if w is None:
        path.unlink(missing_ok=True)
    else:
        write_tensors(path, {"W_dec_input": w.detach().cpu().contiguous()})


def merge_features(folder: str | Path, ensemble: TranscoderEnsemble) -> torch.Tensor:
    """What the pattern merge compares latents by: each latent's whole trained decoder row [h part, input part]
    when the ensemble was trained with ``input_weight`` (``INPUT_DECODER``), else its decoder row in h
    (n_members, d_dict, d_out [+ d_in])."""
    path = Path(folder) / INPUT_DECODER
    w = ensemble.W_dec.detach().cpu()
    if not path.exists():
        return w
    w_in = read_tensors(path)["W_dec_input"]
    if w_in.shape[:2] != w.shape[:2]:
        raise ValueError(f"{path} holds {tuple(w_in.shape[:2])} latents, the ensemble {tuple(w.shape[:2])}: "
                         "rerun 03")
    return torch.cat([w, w_in], dim=-1)


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

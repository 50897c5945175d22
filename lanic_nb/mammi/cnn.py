"""The neurons MAMMI names: a small CNN trained on the phantom for the five findings, and forward hooks.

``capture_activations`` reads any submodule of any torch model over a probing set: a (batch, C, H, W) conv
output is averaged over space (one value per channel, as MAMMI does for DenseNet), a (batch, U) output kept.
The CNN is deliberately small: its last conv layer ("conv<n>") is the layer whose channels are named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lanic_nb.checks import require_at_least_one
from lanic_nb.classify.model import masked_bce, policy_targets
from lanic_nb.embed.clip_small import load_gray_stack, manifest_images
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import mean_auroc
from lanic_nb.progress import progress as progress_bar

# ------------------------------------------------------------------------------------------ activations


def _batch_input(batch) -> torch.Tensor:
    # Loaders yield a tensor, or a tuple/list/dict whose first (or "image") entry is the input.
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


@torch.no_grad()
def capture_activations(
    model: nn.Module, layer_name: str, loader: Iterable, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(n_images, n_units) activations of ``model``'s submodule ``layer_name`` over ``loader``.

    A forward hook reads the layer's output: (batch, C, H, W) conv maps are averaged over space (one value
    per channel, as MAMMI does), (batch, U) outputs are kept, anything else is flattened after dim 1.
    """
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise ValueError(f"layer_name {layer_name!r} is not a submodule; some are {list(modules)[1:8]}")
    chunks: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.mean(dim=(2, 3)) if out.dim() == 4 else out.flatten(1)  # (batch, n_units)
        chunks.append(out.detach().float().cpu())

    handle = modules[layer_name].register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            model(_batch_input(batch).to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------------ the small CNN


@dataclass
class CNNConfig:
    """A tiny CNN for the five findings, trained on the phantom's grayscale images."""

    image_size: int = 64
    """Input side in pixels (images are resized to it). Default: chosen on the phantom (small enough to train in a
    minute)."""
    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    """Output channels of the conv blocks; the last block ("conv<n>") is the layer annotated. Each block but the
    last halves the side, so five blocks see most of a 64 px film (cardiomegaly needs that view). Default: chosen
    on the phantom (docs/decisions.md)."""
    hidden: int = 64
    """Width of the fully connected hidden layer ("fc1"). Default: chosen on the phantom."""
    epochs: int = 12
    """Training epochs. Default: chosen on the phantom."""
    lr: float = 3e-3
    """AdamW learning rate. Default: chosen on the phantom."""
    batch_size: int = 64
    """Minibatch size. Default: engineering."""
    seed: int = 0
    """Seeds the initialization and the batch order. Default: 0."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("image_size", "hidden", "epochs", "batch_size"))
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class FindingCNN(nn.Module):
    """(batch, 1, S, S) -> conv blocks (conv, ReLU, 2x2 max-pool) -> global mean -> fc1 -> ReLU -> 5 logits."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        c_in = 1
        for i, c in enumerate(cfg.channels, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c, 3, padding=1))
            c_in = c
        self.fc1 = nn.Linear(c_in, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, len(FINDINGS))

    @property
    def last_conv(self) -> str:
        return f"conv{len(self.cfg.channels)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(self.cfg.channels) + 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
            if i < len(self.cfg.channels):
                x = F.max_pool2d(x, 2)
        return self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    x = images.float().unsqueeze(1)  # (n, 1, H, W)
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def train_cnn(
    images: torch.Tensor, labels: np.ndarray, cfg: CNNConfig, device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FindingCNN, pd.DataFrame]:
    """Train on (n, H, W) [0, 1] images and (n, 5) labels (1 / 0 / -1 / NaN; uncertain and missing ignored)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = FindingCNN(cfg).to(device)
    x = _resize(images, cfg.image_size)
    t = policy_targets(labels, "ignore")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rows = []
    model.train()
    for epoch in progress_bar(range(cfg.epochs), desc="cnn", disable=not progress):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = masked_bce(model(x[idx].to(device)), t[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        rows.append({"epoch": epoch + 1, "loss": total / max(1, len(x))})
    model.eval()
    return model, pd.DataFrame(rows)


@torch.no_grad()
def cnn_auroc(model: FindingCNN, images: torch.Tensor, labels: np.ndarray, device="cpu") -> float:
    """Mean AUROC over the five findings (uncertain labels left out)."""
    x = _resize(images, model.cfg.image_size)
    logits = torch.cat([model(x[s : s + 256].to(device)).cpu() for s in range(0, len(x), 256)])
    return mean_auroc(np.asarray(labels, np.float32), logits.numpy())


def image_batches(images: torch.Tensor, size: int, batch_size: int = 256) -> list[torch.Tensor]:
    """(n, H, W) images as a list of (b, 1, size, size) batches: a loader for ``capture_activations``."""
    x = _resize(images, size)
    return [x[s : s + batch_size] for s in range(0, len(x), batch_size)]


def load_images(manifest: pd.DataFrame, data_dir, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The manifest's images as one (n, size, size) [0, 1] tensor, and an ok mask (unreadable -> False)."""
    return load_gray_stack(manifest_images(manifest, Path(data_dir)), size)

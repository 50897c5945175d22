"""Sparse dictionary features of a pathology tile encoder, and how they relate to genes and morphology.

After the PathAI study of PLUTO (arXiv 2407.10785): embed every tile with a ViT-Small (384-d CLS), train a
ReLU sparse autoencoder (L2 + L1) on the embeddings, and ask what each dictionary feature tracks: which
genes its activation follows across tiles (Spearman with Benjamini-Hochberg FDR, on tiles paired with
spatial expression) and which tissue types it separates (AUROC, on the phantom's planted truth).
Independently trained SAEs agreeing on a feature is the paper's robustness check; here the SAE is an
ensemble of members (``lanic_nb.transcoder.model`` with target = input) merged into patterns with a consistency.

Encoders: ``load_vit_small`` reads a timm ViT-Small from a local weights file or the Hugging Face cache
(never the network unless allowed); ``train_tile_encoder`` trains the embedded default, a small
convolutional *autoencoder* on the tiles themselves (self-supervised: no label or expression is used).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from scipy.stats import rankdata
from scipy.stats import t as student_t
from torch import nn

from lanic_nb.checks import require_at_least_one
from lanic_nb.embed.encoders import EncoderUnavailable, hub_offline
from lanic_nb.metrics import auroc_matrix
from lanic_nb.pathology.extras import import_extra
from lanic_nb.patterns.merge import MergeConfig, merge_latents
from lanic_nb.patterns.units import latent_alive, pattern_activations
from lanic_nb.progress import progress as progress_bar
from lanic_nb.transcoder.config import TranscoderConfig
from lanic_nb.transcoder.train import train_ensemble

log = logging.getLogger(__name__)

VIT_SMALL = "vit_small_patch16_224"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# ------------------------------------------------------------------------------------------ encoders


class TileEncoder(nn.Module):
    """Wraps a backbone: (n, S, S, 3) uint8 tiles -> (n, d) embeddings, resizing and normalizing on the way."""

    def __init__(self, backbone: nn.Module, image_size: int, mean=_IMAGENET_MEAN, std=_IMAGENET_STD, name: str = ""):
        super().__init__()
        self.backbone, self.image_size, self.name = backbone, image_size, name
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, S, S) in [0, 1] -> (b, d)."""
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return self.backbone((x - self.mean) / self.std)

    @torch.no_grad()
    def embed(self, tiles: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """(n, S, S, 3) uint8 -> (n, d) float32."""
        self.eval()
        device = self.mean.device
        out = []
        for s in progress_bar(range(0, len(tiles), batch_size), desc="embed tiles", disable=not progress):
            x = torch.from_numpy(tiles[s : s + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
            out.append(self(x).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def load_vit_small(
    path_or_name: str | Path, device: str | torch.device = "cpu", model_name: str = VIT_SMALL,
    allow_download: bool = False,
) -> TileEncoder:
    """A timm ViT (ViT-Small by default) as a tile encoder: CLS embedding, no classifier head.

    ``path_or_name``: a local weights file (``.safetensors``; ``.pth``/``.bin`` read with weights_only=True)
    for ``model_name``, or ``"hf-hub:org/repo"`` read from the Hugging Face cache. Offline (the default) a
    missing cache fails at once with EncoderUnavailable naming the model.
    """
    timm = import_extra("timm")  # the pathology extra; only this encoder path needs it
    src = str(path_or_name)
    if src.startswith("hf-hub:"):
        try:
            with hub_offline(not allow_download):
                backbone = timm.create_model(src, pretrained=True, num_classes=0)
        except (OSError, RuntimeError, ValueError) as e:
            raise EncoderUnavailable(
                f"Tile encoder {src!r} is not in the Hugging Face cache here (cause: {type(e).__name__}). On a "
                f"machine with network access run `python -c \"import timm; timm.create_model('{src}', "
                "pretrained=True)\"` and copy the cache (HF_HOME), or save the weights as a .safetensors file "
                "and pass its path. The embedded default needs none of this: train_tile_encoder()."
            ) from e
    else:
        path = Path(src).expanduser()
        if not path.is_file():
            raise EncoderUnavailable(f"Tile encoder weights {str(path)!r} ({model_name}) not found: pass a "
                                     "local .safetensors file or an 'hf-hub:org/repo' name.")
        backbone = timm.create_model(model_name, pretrained=False, num_classes=0)
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # a classifier head is unused
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights {path} do not fit {model_name}: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
    cfg = backbone.pretrained_cfg or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    enc = TileEncoder(backbone, size, tuple(cfg.get("mean", _IMAGENET_MEAN)), tuple(cfg.get("std", _IMAGENET_STD)),
                      name=src)
    return enc.to(device).eval()


@dataclass
class TileAEConfig:
    """The embedded default tile encoder: a small convolutional autoencoder (self-supervised)."""

    d_embed: int = 64
    """Embedding width (the bottleneck). Default: chosen on the tile phantom."""
    channels: int = 16
    """Channels of the first conv layer (doubled at each of the two downsamplings). Default: chosen on the tile
    phantom."""
    epochs: int = 12
    """Training epochs. Default: chosen on the tile phantom."""
    lr: float = 2e-3
    """AdamW learning rate. Default: chosen on the tile phantom."""
    batch_size: int = 128
    """Minibatch size. Default: engineering."""
    seed: int = 0
    """Seeds the initialization and the batch order. Default: 0."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("d_embed", "channels", "epochs", "batch_size"))
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class TileAE(nn.Module):
    """32x32 RGB -> conv encoder -> d_embed -> conv decoder -> 32x32 RGB; ``encode`` is the tile embedding."""

    def __init__(self, cfg: TileAEConfig):
        super().__init__()
        c = cfg.channels
        self.cfg = cfg
        self.enc = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(16 * 4 * c, cfg.d_embed),
        )
        self.dec = nn.Sequential(
            nn.Linear(cfg.d_embed, 16 * 4 * c), nn.Unflatten(1, (4 * c, 4, 4)), nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c, 3, 4, 2, 1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)  # (b, d_embed)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)  # (b, 3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def train_tile_encoder(
    tiles: np.ndarray, cfg: TileAEConfig, device: str | torch.device = "cpu", progress: bool = True
) -> tuple[TileEncoder, pd.DataFrame]:
    """Train the autoencoder on (n, S, S, 3) uint8 tiles (resized to 32); return the encoder half and a log."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ae = TileAE(cfg).to(device)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(32, 32), mode="area") if x.shape[-1] != 32 else x
    norm = TileEncoder(nn.Identity(), 32, (0.5,) * 3, (0.25,) * 3).to(device)  # same input scaling as at use
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr)
    rows = []
    for epoch in progress_bar(range(cfg.epochs), desc="tile encoder", disable=not progress):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), cfg.batch_size):
            xb = norm(x[order[s : s + cfg.batch_size]].to(device))
            flip = torch.rand(1, generator=gen).item() < 0.5  # flips: tissue has no orientation
            xb = xb.flip(-1) if flip else xb
            loss = F.mse_loss(ae(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        rows.append({"epoch": epoch + 1, "mse": total / len(x)})
    enc = TileEncoder(ae.enc, 32, (0.5,) * 3, (0.25,) * 3, name="tile-autoencoder").to(device).eval()
    return enc, pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ SAE features


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and scale the embedding so one L1 coefficient fits any encoder: (z, mean, scale)."""
    mean = x.mean(0, keepdims=True)
    scale = np.sqrt(((x - mean) ** 2).sum(1).mean()) / np.sqrt(x.shape[1]) + 1e-8
    return ((x - mean) / scale).astype(np.float32), mean, np.float32(scale)


def train_sae(x: np.ndarray, config: TranscoderConfig | None = None, device: str | torch.device = "cpu",
              progress: bool = True):
    """An SAE ensemble on embeddings x (n, d): a transcoder whose target is its input (widths from x).

    Returns (ensemble, training log).
    """
    cfg = (config or TranscoderConfig()).with_dims(x.shape[1], x.shape[1])
    return train_ensemble(cfg, x, x, device, progress=progress)


def sae_features(ensemble, x: np.ndarray, merge: MergeConfig | None = None):
    """Merge the members' latents into features by decoder direction; return (PatternSet, activations
    (n, n_features))."""
    xt = torch.from_numpy(np.asarray(x, np.float32))
    alive = latent_alive(ensemble, xt)
    ps = merge_latents(ensemble.W_dec, merge or MergeConfig(), alive=alive)
    return ps, pattern_activations(ensemble, ps, xt).numpy()


# ------------------------------------------------------------------------------------------ associations


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values (same shape as p; NaN stays NaN)."""
    p = np.asarray(p, np.float64)
    flat = p.ravel()
    ok = np.isfinite(flat)
    q = np.full_like(flat, np.nan)
    pv = flat[ok]
    m = len(pv)
    if m:
        order = np.argsort(pv)
        ranked = pv[order] * m / np.arange(1, m + 1)
        ranked = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
        out = np.empty(m)
        out[order] = ranked
        q[ok] = out
    return q.reshape(p.shape)


def spearman_matrix(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rho and two-sided p (t approximation, as scipy) of every column of a (n, F) with b (n, G)."""
    n = a.shape[0]
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra = (ra - ra.mean(0)) / (ra.std(0) + 1e-300)
    rb = (rb - rb.mean(0)) / (rb.std(0) + 1e-300)
    rho = (ra.T @ rb) / n  # (F, G)
    const = (a.std(0) == 0)[:, None] | (b.std(0) == 0)[None, :]
    rho = np.where(const, np.nan, rho.clip(-1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = rho * np.sqrt((n - 2) / (1 - rho**2))
    p = 2 * student_t.sf(np.abs(tstat), n - 2)
    return rho, p


def feature_gene_table(activations: np.ndarray, expression: pd.DataFrame, consistency: np.ndarray | None = None
                       ) -> pd.DataFrame:
    """Long table feature x gene: rho, p, q (BH over all pairs), sorted by q then |rho|."""
    rho, p = spearman_matrix(activations, expression.to_numpy(np.float64))
    q = benjamini_hochberg(p)
    n_f, n_g = rho.shape
    out = pd.DataFrame({
        "feature": np.repeat(np.arange(n_f), n_g), "gene": np.tile(expression.columns.to_numpy(), n_f),
        "rho": rho.ravel(), "p": p.ravel(), "q": q.ravel(),
        "firing_freq": np.repeat((activations > 0).mean(0), n_g),
    })
    if consistency is not None:
        out["consistency"] = np.repeat(np.asarray(consistency), n_g)
    key = out.rho.abs().fillna(0)
    return out.assign(_k=-key).sort_values(["q", "_k"], na_position="last").drop(columns="_k").reset_index(drop=True)


def top_gene_per_feature(table: pd.DataFrame, q_max: float = 0.05) -> pd.DataFrame:
    """Per feature, its most correlated significant gene (positive rho), or none."""
    sig = table[(table.q <= q_max) & (table.rho > 0)]
    return sig.loc[sig.groupby("feature").rho.idxmax()].sort_values("rho", ascending=False).reset_index(drop=True)


def morphology_aurocs(activations: np.ndarray, truth: pd.DataFrame, tissues, present_at: float = 0.3) -> pd.DataFrame:
    """(n_features, n_tissues) AUROC of each feature for "tissue covers >= present_at of the tile" (evaluation)."""
    presence = np.stack([truth[t].to_numpy() >= present_at for t in tissues], axis=1)
    return pd.DataFrame(auroc_matrix(activations, presence), columns=list(tissues))


def seed_agreement(ensemble, patterns, x: np.ndarray) -> np.ndarray:
    """Per feature: mean pairwise Spearman, over tiles, between the member latents that form it (NaN if < 2).

    The pathology paper's check that independently trained SAEs learn the same feature (rho ~ 0.96).
    """
    with torch.no_grad():
        z = ensemble.encode(torch.from_numpy(np.asarray(x, np.float32)).to(next(ensemble.parameters()).device))
    z = z.cpu().numpy()  # (n_members, n, d_dict)
    out = np.full(patterns.n_patterns, np.nan)
    for f in range(patterns.n_patterns):
        cols = np.stack([z[m, :, d] for m, d in patterns.members_of(f)], axis=1)  # (n, k)
        if cols.shape[1] < 2:
            continue
        rho, _ = spearman_matrix(cols, cols)
        out[f] = np.nanmean(rho[np.triu_indices(cols.shape[1], 1)])
    return out

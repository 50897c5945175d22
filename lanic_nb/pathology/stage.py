"""The pathology stage (notebook 09): phantom slides -> tile encoder -> SAE features -> genes and morphology.

``run_pathology`` writes, under ``<run>/pathology/``: the tile dataset (``tiles/``: tiles, obs, counts,
config; the planted truth apart in ``tiles/truth.parquet``), ``feature_gene.parquet`` (Spearman of every
feature with every gene, BH q-values), ``feature_morphology.parquet`` (AUROC of every feature for every
tissue type; evaluation on the planted truth, read only through ``lanic_nb.evaluation``), and
``visium_slide0/`` (slide 0 as a Space Ranger folder, read back through scanpy); then
``metrics/09_pathology.json``. The plot functions below draw what the notebook shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lanic_nb.checks import require_at_least_one
from lanic_nb.device import pick_device, seed_everything
from lanic_nb.evaluation import load_tile_truth
from lanic_nb.io import write_table
from lanic_nb.layout import umap_coords
from lanic_nb.pathology import study as PA
from lanic_nb.pathology import visium as V
from lanic_nb.pathology.extras import require_extra
from lanic_nb.pathology.phantom import (
    TISSUES,
    TileConfig,
    load_tile_dataset,
    log_normalize,
    make_tile_dataset,
    save_tile_dataset,
)
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.rundir import RunDir, record_metrics

log = logging.getLogger(__name__)

REPORTED_GENES = ("PTPRC", "EPCAM", "MKI67", "COL1A1", "CA9", "ADIPOQ", "NOISE1")  # best_rho_<gene> metrics


@dataclass
class PathologyConfig:
    """Parameters of the pathology stage (notebook 09)."""

    device: str = "auto"
    """Where the encoder and the SAE train: "auto" (CUDA when present), "cpu", "cuda", ..."""
    n_slides: int = 4
    """Phantom slides (stain colour varies per slide)."""
    grid: int = 24
    """Tiles per slide side (grid x grid tiles per slide)."""
    seed: int = 0
    """Seeds the phantom, the encoder, the SAE ensemble and the map."""
    encoder: str = ""
    """"": train the small tile autoencoder here; else a ViT-Small .safetensors path or "hf-hub:org/repo"."""
    ae_epochs: int = 12
    """Training epochs of the tile autoencoder."""
    ae_channels: int = 16
    """Channels of the autoencoder's first conv layer."""
    d_embed: int = 64
    """Autoencoder embedding width."""
    n_members: int = 8
    """SAE ensemble members (consistency needs more than one)."""
    d_dict: int = 128
    """Dictionary size of each SAE member."""
    l1_coeff: float = 0.02
    """L1 sparsity coefficient of the SAE."""
    sae_steps: int = 1000
    """SAE training steps."""
    sim_threshold: float = 0.7
    """Decoder cosine above which two members' latents are one feature."""
    min_consistency: float = 0.5
    """Fraction of members a feature needs to be kept."""
    q_max: float = 0.05
    """FDR level for a feature-gene association."""
    n_neighbors: int = 15
    """UMAP neighbourhood size of the tile map."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("n_slides", "grid", "ae_epochs", "ae_channels", "d_embed", "n_members",
                                    "d_dict", "sae_steps"))
        if self.l1_coeff < 0:
            raise ValueError(f"l1_coeff must be >= 0, got {self.l1_coeff}")
        for name in ("sim_threshold", "min_consistency", "q_max"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be >= 2, got {self.n_neighbors}")


@dataclass
class PathologyResult:
    """What notebook 09 shows."""

    encoder_kind: str  # "tile-autoencoder" or "vit-small"
    tiles: np.ndarray  # (n, S, S, 3) uint8
    obs: pd.DataFrame  # tile_id, slide, row, col
    embedding: np.ndarray  # (n, d) standardized tile embeddings
    features: PatternSet  # the merged SAE features
    sae_log: pd.DataFrame  # SAE training log (fvu, l0, ...)
    feature_gene: pd.DataFrame  # feature x gene: rho, p, q, firing_freq, consistency, seed_agreement
    top_genes: pd.DataFrame  # per feature its most correlated significant gene
    morphology: pd.DataFrame  # (n_features, tissues) AUROC on the planted truth (evaluation)
    tile_xy: np.ndarray  # (n, 2) UMAP of the embeddings
    dominant: np.ndarray  # (n,) dominant planted tissue per tile (evaluation; colours the map only)
    visium: object  # AnnData of slide 0 read back from its Visium folder
    metrics: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def _encode(tiles: np.ndarray, cfg: PathologyConfig, dev) -> tuple[np.ndarray, str]:
    if cfg.encoder:
        enc, kind = PA.load_vit_small(cfg.encoder, dev), "vit-small"
    else:
        ae = PA.TileAEConfig(epochs=cfg.ae_epochs, channels=cfg.ae_channels, d_embed=cfg.d_embed, seed=cfg.seed)
        enc, enc_log = PA.train_tile_encoder(tiles, ae, dev)
        kind = "tile-autoencoder"
        log.info("tile autoencoder: reconstruction MSE %.4f -> %.4f", enc_log.mse.iloc[0], enc_log.mse.iloc[-1])
    x, _, _ = PA.standardize(enc.embed(tiles))
    log.info("%s embedding: %d tiles x %d", kind, *x.shape)
    return x, kind


def visium_round_trip(folder: Path, tiles: np.ndarray, obs: pd.DataFrame, counts: pd.DataFrame, slide: int = 0):
    """Write one slide as a Space Ranger folder, read it back through scanpy, cut its spot tiles.

    Returns (AnnData, mean absolute pixel difference between the spot tiles and the original tiles).
    """
    s = obs.slide.to_numpy() == slide
    V.tiles_to_visium(folder, tiles[s], obs.row.to_numpy()[s], obs.col.to_numpy()[s], counts.to_numpy()[s],
                      list(counts.columns), hires_scale=1.0)
    adata = V.read_visium(folder)
    spots = V.spot_tiles(adata, size=tiles.shape[1])
    return adata, float(np.abs(spots.astype(int) - tiles[s].astype(int)).mean())


def run_pathology(run_dir: str | Path, config: PathologyConfig) -> PathologyResult:
    """The whole pathology study on the phantom; see the module docstring for what it writes."""
    cfg = config
    require_extra(("scanpy", "anndata", "h5py", *(("timm",) if cfg.encoder else ())))
    seed_everything(cfg.seed)
    rd = RunDir(Path(run_dir))
    dev = pick_device(cfg.device)
    folder = rd.stage("pathology")
    tile_cfg = TileConfig(n_slides=cfg.n_slides, grid=cfg.grid, seed=cfg.seed)
    save_tile_dataset(make_tile_dataset(tile_cfg), folder / "tiles", tile_cfg)
    tiles, obs, counts = load_tile_dataset(folder / "tiles")  # what the analysis sees: never the truth
    expression = pd.DataFrame(log_normalize(counts.to_numpy()), columns=counts.columns)
    log.info("%d tiles of %d px, %d genes", len(tiles), tiles.shape[1], counts.shape[1])

    x, encoder_kind = _encode(tiles, cfg, dev)
    ens, sae_log = PA.train_sae(x, dev, n_members=cfg.n_members, d_dict=cfg.d_dict, l1_coeff=cfg.l1_coeff,
                                steps=cfg.sae_steps, batch_size=256, seed=cfg.seed)
    ps, act = PA.sae_features(ens, x, sim_threshold=cfg.sim_threshold, min_consistency=cfg.min_consistency)
    agreement = PA.seed_agreement(ens, ps, x)
    log.info("SAE: final FVU %.3f, L0 %.1f; %d features, mean consistency %.2f, mean seed agreement %.2f",
             sae_log.fvu.iloc[-1], sae_log.l0.iloc[-1], ps.n_patterns,
             float(ps.consistency.mean()) if ps.n_patterns else 0.0,
             float(np.nanmean(agreement)) if ps.n_patterns else float("nan"))

    fg = PA.feature_gene_table(act, expression, ps.consistency.numpy())
    fg["seed_agreement"] = agreement[fg.feature.to_numpy()]
    files = {"feature_gene": write_table(folder / "feature_gene.parquet", fg)}
    top = PA.top_gene_per_feature(fg, cfg.q_max)

    # Evaluation: the planted truth, read only here and only through lanic_nb.evaluation.
    truth = load_tile_truth(folder / "tiles")
    morph = PA.morphology_aurocs(act, truth, TISSUES)
    files["feature_morphology"] = write_table(folder / "feature_morphology.parquet",
                                              morph.assign(feature=np.arange(len(morph))))

    xy = umap_coords(x, n_neighbors=cfg.n_neighbors, metric="euclidean", seed=cfg.seed)
    adata, visium_tile_error = visium_round_trip(folder / "visium_slide0", tiles, obs, counts)
    files["visium"] = folder / "visium_slide0"

    best = morph.max()
    metrics = {
        "encoder": encoder_kind,
        "n_tiles": int(len(tiles)),
        "n_features": int(ps.n_patterns),
        "mean_consistency": float(ps.consistency.mean()) if ps.n_patterns else 0.0,
        "mean_seed_agreement": float(np.nanmean(agreement)) if ps.n_patterns else float("nan"),
        "sae_fvu": float(sae_log.fvu.iloc[-1]),
        "n_significant_pairs": int((fg.q <= cfg.q_max).sum()),
        "n_features_with_gene": int(len(top)),
        **{f"best_rho_{g}": float(fg[fg.gene == g].rho.max()) for g in REPORTED_GENES},
        **{f"best_auroc_{t}": float(best[t]) for t in TISSUES},
        "visium_spots": int(adata.n_obs),
        "visium_tile_error": visium_tile_error,
    }
    record_metrics(rd.root, "09_pathology", metrics)
    return PathologyResult(encoder_kind, tiles, obs, x, ps, sae_log, fg, top, morph, xy,
                           truth.dominant.to_numpy(), adata, metrics, files)


# ------------------------------------------------------------------------------------------ figures


def plot_tile_grid(tiles: np.ndarray, slides: np.ndarray, per_slide: int = 4) -> Figure:
    """``per_slide`` tiles of every slide (one column per slide), spread over the slide."""
    ids = sorted(set(np.asarray(slides).tolist()))
    fig, axes = plt.subplots(per_slide, len(ids), figsize=(1.4 * len(ids), 1.4 * per_slide), squeeze=False)
    for col, s in enumerate(ids):
        idx = np.flatnonzero(np.asarray(slides) == s)
        for r, i in enumerate(idx[:: max(1, len(idx) // per_slide)][:per_slide]):
            axes[r, col].imshow(tiles[i])
        axes[0, col].set_title(f"slide {s}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    return fig


def plot_morphology_heatmap(morph: pd.DataFrame) -> Figure:
    """Features (rows) by tissue type (columns): each feature's AUROC for the tissue's presence."""
    fig, ax = plt.subplots(figsize=(4, 0.25 * len(morph) + 1))
    im = ax.imshow(morph.to_numpy(), vmin=0, vmax=1, cmap="RdBu_r", aspect="auto")
    ax.set_xticks(range(morph.shape[1]), list(morph.columns), rotation=45)
    ax.set_ylabel("feature")
    fig.colorbar(im, ax=ax, label="AUROC")
    return fig


def plot_tile_map(xy: np.ndarray, dominant: np.ndarray, tissues=TISSUES) -> Figure:
    """The UMAP of the tiles, each coloured by its dominant planted tissue."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for t in tissues:
        m = np.asarray(dominant) == t
        ax.scatter(xy[m, 0], xy[m, 1], s=4, label=t)
    ax.legend(fontsize=8, markerscale=3)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig

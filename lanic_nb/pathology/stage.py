"""The pathology stage (notebook 09): phantom slides -> tile encoder -> SAE features -> genes and morphology.

``run_pathology`` writes, under ``<run>/pathology/``: the tile dataset (``tiles/``: tiles, obs, counts,
config; the planted truth apart in ``tiles/truth.parquet``), ``feature_gene.parquet`` (Spearman of every
feature with every gene, BH q-values), ``feature_morphology.parquet`` (AUROC of every feature for every
tissue type; evaluation on the planted truth, read only through ``lanic_nb.evaluation``), and
``visium_slide0/`` (slide 0 as a Space Ranger folder, read back through scanpy); then
``metrics/09_pathology.json``. Its figures are in ``lanic_nb.pathology.views``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.artifacts import stage_function
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
from lanic_nb.pathology.study import TileAEConfig
from lanic_nb.patterns.merge import MergeConfig, PatternSet
from lanic_nb.rundir import RunDir, record_metrics
from lanic_nb.transcoder.config import TranscoderConfig

log = logging.getLogger(__name__)

REPORTED_GENES = ("PTPRC", "EPCAM", "MKI67", "COL1A1", "CA9", "ADIPOQ", "NOISE1")  # best_rho_<gene> metrics


@dataclass
class PathologyConfig:
    """Settings of the pathology stage (notebook 09)."""

    device: str = "auto"
    """Where the encoder and the SAE train: "auto" (CUDA when present, else CPU), "cpu", "cuda", ... Default:
    auto."""
    seed: int = 0
    """Seeds torch, numpy and random before the stage, and the tile map. Default: 0."""
    encoder: str = ""
    """The tile encoder: "" trains the small tile autoencoder here (``autoencoder``); else a ViT-Small weights file
    (.safetensors) or "hf-hub:org/repo" (the pathology paper's encoder is a ViT-S, PLUTO). Default: the
    autoencoder, the one that runs offline."""
    tiles: TileConfig = field(default_factory=TileConfig)
    """The tile phantom: slides, grid, tile size, expression."""
    autoencoder: TileAEConfig = field(default_factory=TileAEConfig)
    """The embedded default tile encoder (with ``encoder=""``)."""
    sae: TranscoderConfig = field(default_factory=TranscoderConfig)
    """The SAE ensemble on the tile embeddings (a transcoder whose target is its input; its widths come from the
    embeddings). The pathology paper (arXiv 2407.10785) trains a ReLU SAE with an L1 penalty: the demo's choice
    (notebooks/params/demo.yaml)."""
    merge: MergeConfig = field(default_factory=MergeConfig)
    """How the SAE members' latents become features (by decoder direction: no codes are compared here)."""
    q_max: float = 0.05
    """False discovery rate (Benjamini-Hochberg) at which a feature-gene association counts, in (0, 1].
    Default: the usual 5%."""
    map_neighbors: int = 15
    """UMAP's neighbourhood size for the tile map, >= 2. Default: umap-learn's."""

    def __post_init__(self) -> None:
        if not 0 < self.q_max <= 1:
            raise ValueError(f"q_max must be in (0, 1], got {self.q_max}")
        if self.map_neighbors < 2:
            raise ValueError(f"map_neighbors must be >= 2, got {self.map_neighbors}")


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
        enc, enc_log = PA.train_tile_encoder(tiles, cfg.autoencoder, dev)
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


@stage_function("09_pathology")
def run_pathology(run_dir: str | Path, config: PathologyConfig | None = None) -> PathologyResult:
    """The whole pathology study on the phantom; see the module docstring for what it writes."""
    cfg = config or PathologyConfig()
    require_extra(("scanpy", "anndata", "h5py", *(("timm",) if cfg.encoder else ())))
    seed_everything(cfg.seed)
    rd = RunDir(Path(run_dir))
    dev = pick_device(cfg.device)
    folder = rd.stage("pathology")
    save_tile_dataset(make_tile_dataset(cfg.tiles), folder / "tiles", cfg.tiles)
    tiles, obs, counts = load_tile_dataset(folder / "tiles")  # what the analysis sees: never the truth
    expression = pd.DataFrame(log_normalize(counts.to_numpy()), columns=counts.columns)
    log.info("%d tiles of %d px, %d genes", len(tiles), tiles.shape[1], counts.shape[1])

    x, encoder_kind = _encode(tiles, cfg, dev)
    ens, sae_log = PA.train_sae(x, cfg.sae, dev)
    ps, act = PA.sae_features(ens, x, cfg.merge)
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

    xy = umap_coords(x, n_neighbors=cfg.map_neighbors, metric="euclidean", seed=cfg.seed)
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

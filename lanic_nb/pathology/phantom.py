"""A pathology phantom: H&E-like tissue tiles on slides, each paired with a gene-panel expression vector.

Each slide is a grid of tiles (like Visium spots on a section). Five tissue types are planted: tumour
(large, irregular, purple nuclei), lymphocytes (small, round, dark nuclei, densely packed), stroma (pink
eosin fibres with sparse elongated nuclei), necrosis (pale, washed-out pink with nuclear debris) and fat
(empty white vacuoles with thin pink walls). Their proportions vary smoothly over a slide (a few random
blobs per type), so neighbouring tiles resemble each other. Each tile's pixels are split between the types
in proportion to its composition; stain colours vary per slide (the scanner/stain shift the pathology paper's
features were robust to).

Expression: every gene has a small baseline plus a marker loading on one or more types (PTPRC, CD3E on
lymphocytes; EPCAM, KRT8 on tumour; MKI67 on tumour *nuclei count*, ...); counts are Poisson around
library_size * (baseline + composition @ loadings); analyses use log1p(CP10k) (``log_normalize``). Planted
truth (composition, nuclei counts per type, dominant type) is written apart (``truth.parquet``) and read only
by evaluation code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.checks import require_at_least_one
from lanic_nb.io import read_json, read_table, read_tensors, write_json, write_table, write_tensors

TISSUES: tuple[str, ...] = ("tumour", "lymphocytes", "stroma", "necrosis", "fat")

# Gene -> loading per tissue type (tumour, lymphocytes, stroma, necrosis, fat). Markers follow common
# use: PTPRC (CD45) all immune cells, CD3E T cells, MS4A1 B cells, EPCAM/KRT8 epithelium, COL1A1/DCN
# fibroblasts, CA9 hypoxia next to necrosis, ADIPOQ/PLIN1 adipocytes. ACTB is a housekeeping control.
GENE_LOADINGS: dict[str, tuple[float, ...]] = {
    "EPCAM": (6, 0, 0, 0.5, 0), "KRT8": (5, 0, 0.2, 0.5, 0), "MKI67": (2, 0.5, 0, 0, 0),
    "PTPRC": (0, 6, 0.2, 0, 0), "CD3E": (0, 5, 0, 0, 0), "MS4A1": (0, 3, 0, 0, 0),
    "COL1A1": (0, 0, 6, 0, 0.5), "DCN": (0, 0, 4, 0, 0.5), "ACTA2": (0.3, 0, 3, 0, 0),
    "CA9": (0.5, 0, 0, 5, 0), "HIF1A": (0.5, 0, 0, 2, 0),
    "ADIPOQ": (0, 0, 0, 0, 6), "PLIN1": (0, 0, 0, 0, 4),
    "ACTB": (2, 2, 2, 1, 2), "NOISE1": (0, 0, 0, 0, 0), "NOISE2": (0, 0, 0, 0, 0),
}
GENES: tuple[str, ...] = tuple(GENE_LOADINGS)

# H&E colours (RGB in [0, 1]): hematoxylin (nuclei) purple-blue, eosin (cytoplasm, fibres) pink.
_HEMA = np.array([0.30, 0.18, 0.50])
_EOSIN = np.array([0.93, 0.55, 0.72])
_BACKGROUND = {"tumour": (0.78, 0.52, 0.72), "lymphocytes": (0.85, 0.62, 0.78), "stroma": (0.94, 0.62, 0.75),
               "necrosis": (0.96, 0.80, 0.86), "fat": (0.98, 0.96, 0.97)}
# Nuclei per tile at full occupancy of the type, radius range (pixels at 32 px tiles), colour darkness.
_NUCLEI = {"tumour": (28, (1.8, 2.8), 0.85), "lymphocytes": (70, (0.9, 1.3), 1.0), "stroma": (8, (0.8, 1.1), 0.7),
           "necrosis": (14, (0.4, 0.7), 0.9), "fat": (0, (1.0, 1.0), 0.0)}


@dataclass
class TileConfig:
    """Size and randomness of the tile phantom."""

    n_slides: int = 4
    """Slides (sections); stain colour varies per slide. Default: chosen on the tile phantom (enough slides for stain
    variation)."""
    grid: int = 24
    """Tiles per slide side (grid x grid tiles). Default: chosen on the tile phantom."""
    tile_size: int = 32
    """Tile side in pixels. Default: chosen on the tile phantom."""
    n_blobs: int = 3
    """Random Gaussian blobs per tissue type and slide (more = patchier slides). Default: chosen on the tile
    phantom."""
    library_size: float = 2000.0
    """Mean total counts per tile (Poisson). Default: chosen on the tile phantom (a few thousand counts per spot, as
    in Visium)."""
    stain_jitter: float = 0.06
    """Per-slide standard deviation of the stain colours. Default: chosen on the tile phantom."""
    seed: int = 0
    """Seeds everything. Default: 0."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("n_slides", "grid", "tile_size", "n_blobs"))
        if self.library_size <= 0:
            raise ValueError(f"library_size must be > 0, got {self.library_size}")
        if self.stain_jitter < 0:
            raise ValueError(f"stain_jitter must be >= 0, got {self.stain_jitter}")


@dataclass
class TileData:
    """Tiles, their observed table (slide, grid position) and expression; truth kept in its own table."""

    tiles: np.ndarray  # (n, S, S, 3) uint8 RGB
    obs: pd.DataFrame  # tile_id, slide, row, col
    counts: pd.DataFrame  # (n, n_genes) UMI counts, columns = GENES; log_normalize() gives expression
    truth: pd.DataFrame  # tile_id, <tissue> fractions, n_<tissue> nuclei counts, dominant (EVALUATION ONLY)


def slide_composition(rng: np.random.Generator, grid: int, n_blobs: int) -> np.ndarray:
    """(grid, grid, 5) tissue fractions that vary smoothly: softmax of per-type sums of random blobs."""
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    logits = np.zeros((grid, grid, len(TISSUES)))
    for t in range(len(TISSUES)):
        for _ in range(n_blobs):
            cy, cx = rng.random(2)
            width = rng.uniform(0.08, 0.25)
            logits[..., t] += rng.uniform(2, 5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    logits += rng.normal(0, 0.3, logits.shape)
    e = np.exp(2.0 * logits)  # sharp: most tiles are dominated by one or two types
    return e / e.sum(-1, keepdims=True)


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    coarse = rng.random((cells, cells))
    idx = np.linspace(0, cells - 1, size)
    i0 = np.floor(idx).astype(int).clip(0, cells - 2)
    f = idx - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]  # (size, cells)
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]  # (size, size)


def render_tile(
    rng: np.random.Generator, composition: np.ndarray, size: int, stain: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile: (S, S, 3) float RGB, the pixel fraction of each type (5,), nuclei drawn per type (5,).

    Pixels go to types by ranking one smooth random field: the first composition[0] share of pixels become
    tumour, the next share lymphocytes, ..., so regions are contiguous and area fractions are exact.
    stain: (2, 3) hematoxylin and eosin colours of the slide.
    """
    field = _smooth_field(rng, size) + rng.normal(0, 0.02, (size, size))
    order = np.argsort(field, axis=None, kind="stable")
    bounds = np.round(np.cumsum(composition) * size * size).astype(int)
    label = np.empty(size * size, np.int64)
    start = 0
    for t, end in enumerate(bounds):
        label[order[start:end]] = t
        start = end
    label[order[start:]] = len(TISSUES) - 1
    label = label.reshape(size, size)
    fractions = np.bincount(label.ravel(), minlength=len(TISSUES)) / label.size

    hema, eosin = stain
    shift = eosin - _EOSIN  # slide-level stain shift applied to the backgrounds
    img = np.zeros((size, size, 3))
    for t, name in enumerate(TISSUES):
        img[label == t] = np.clip(np.array(_BACKGROUND[name]) + shift * (name != "fat"), 0, 1)
    yy, xx = np.mgrid[0:size, 0:size]
    # Stroma fibres: thin pink streaks along a random direction.
    angle = rng.uniform(0, np.pi)
    streak = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 1.6 + rng.uniform(0, 6))
    img[label == 2] -= 0.12 * streak[label == 2, None] * (1 - eosin)[None, :]
    # Fat: vacuole walls where a cellular noise field crosses a level.
    walls = np.abs(_smooth_field(rng, size, 6) - 0.5) < 0.04
    img[(label == 4) & walls] = eosin

    scale = size / 32
    counts = np.zeros(len(TISSUES), np.int64)
    for t, name in enumerate(TISSUES):
        per_tile, (r_lo, r_hi), dark = _NUCLEI[name]
        ys, xs = np.nonzero(label == t)
        n = rng.poisson(per_tile * fractions[t] * scale**2) if len(ys) else 0
        for _ in range(n):
            j = rng.integers(len(ys))
            r = rng.uniform(r_lo, r_hi) * scale
            ecc = rng.uniform(1.0, 1.8 if name in ("tumour", "stroma") else 1.1)
            mask = ((yy - ys[j]) / r) ** 2 + ((xx - xs[j]) / (r * ecc)) ** 2 <= 1
            img[mask] = img[mask] * (1 - dark) + hema * dark
        counts[t] = n
    img += rng.normal(0, 0.015, img.shape)
    return np.clip(img, 0, 1), fractions, counts


def counts_from(
    rng: np.random.Generator, fractions: np.ndarray, counts: np.ndarray, library_size: float
) -> np.ndarray:
    """(n, n_genes) UMI counts of tiles with pixel fractions and nuclei counts (n, 5) each.

    MKI67 (proliferation) follows the number of tumour nuclei rather than the tumour area, so one gene is
    driven by a cell count and not only by a tissue's share.
    """
    load = np.array(list(GENE_LOADINGS.values()), np.float64).T  # (5, n_genes)
    rate = 0.3 + fractions @ load
    mki = GENES.index("MKI67")
    rate[:, mki] = 0.3 + 0.15 * counts[:, 0] + 0.5 * fractions[:, 1]
    rate *= rng.gamma(20.0, 1 / 20.0, rate.shape)  # biological overdispersion
    lib = rng.poisson(library_size, (len(rate), 1)).clip(1)
    return rng.poisson(lib * rate / rate.sum(1, keepdims=True))


def log_normalize(counts: np.ndarray) -> np.ndarray:
    """log1p of counts per 10,000 (scanpy's normalize_total(1e4) + log1p)."""
    counts = np.asarray(counts, np.float64)
    return np.log1p(1e4 * counts / counts.sum(1, keepdims=True).clip(1)).astype(np.float32)


def make_tile_dataset(cfg: TileConfig) -> TileData:
    """Generate every slide's tiles, expression and truth (seeded, pure numpy)."""
    rng = np.random.default_rng(cfg.seed)
    tiles, obs, fracs, counts = [], [], [], []
    for s in range(cfg.n_slides):
        comp = slide_composition(rng, cfg.grid, cfg.n_blobs)
        stain = np.stack([_HEMA, _EOSIN]) + rng.normal(0, cfg.stain_jitter, (2, 3))
        for r in range(cfg.grid):
            for c in range(cfg.grid):
                img, f, n = render_tile(rng, comp[r, c], cfg.tile_size, np.clip(stain, 0, 1))
                tiles.append((img * 255).round().astype(np.uint8))
                obs.append({"tile_id": f"s{s}_r{r:02d}_c{c:02d}", "slide": s, "row": r, "col": c})
                fracs.append(f)
                counts.append(n)
    fr, ct = np.array(fracs), np.array(counts)
    umis = counts_from(rng, fr, ct, cfg.library_size)
    obs_df = pd.DataFrame(obs)
    truth = pd.DataFrame({"tile_id": obs_df.tile_id})
    for t, name in enumerate(TISSUES):
        truth[name] = fr[:, t]
        truth[f"n_{name}"] = ct[:, t]
    truth["dominant"] = np.array(TISSUES)[fr.argmax(1)]
    return TileData(np.stack(tiles), obs_df, pd.DataFrame(umis, columns=list(GENES)), truth)


def save_tile_dataset(data: TileData, folder: str | Path, cfg: TileConfig) -> Path:
    """tiles.safetensors, obs.parquet, counts.parquet, config.json; truth.parquet apart (evaluation only)."""
    folder = Path(folder)
    write_tensors(folder / "tiles.safetensors", {"tiles": torch.from_numpy(data.tiles)})
    write_table(folder / "obs.parquet", data.obs)
    write_table(folder / "counts.parquet", data.counts.assign(tile_id=data.obs.tile_id.to_numpy()))
    write_table(folder / "truth.parquet", data.truth)
    write_json(folder / "config.json", asdict(cfg))
    return folder


def load_tile_dataset(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Tiles (n, S, S, 3) uint8, obs and UMI counts (genes only), row-aligned. Never the truth."""
    folder = Path(folder)
    tiles = read_tensors(folder / "tiles.safetensors")["tiles"].numpy()
    obs = read_table(folder / "obs.parquet")
    counts = read_table(folder / "counts.parquet")
    if not (counts.pop("tile_id").to_numpy() == obs.tile_id.to_numpy()).all():
        raise ValueError(f"{folder}: count rows are not aligned with obs")
    read_json(folder / "config.json")  # fails early on a half-written dataset
    return tiles, obs, counts

"""UMAP maps: patterns by decoder direction, images by embedding.

UMAP places points so that near neighbours in the original space (here: cosine between decoder directions,
or between image embeddings) stay near on the page. Distances between far-apart clusters mean little;
what the map shows is which patterns (or images) form neighbourhoods, and whether a colour, such as a
pattern's category or an image's finding, follows those neighbourhoods.

Each map is written twice beside its coordinates table: a PNG for reports, and a self-contained HTML page
(inline SVG, no network) whose points show what they are on hover. ``run_maps`` (the stage of notebook 05)
makes both maps of a run and writes all of it under ``patterns/maps/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.manifold import trustworthiness as sk_trustworthiness

from lanic_nb.artifacts import load_pattern_table, stage_function
from lanic_nb.checks import require_at_least_one
from lanic_nb.embed.store import load_embedded
from lanic_nb.io import write_figure, write_table
from lanic_nb.layout import umap_coords
from lanic_nb.manifest import FINDINGS
from lanic_nb.maps.pages import coords_table, image_map_html, pattern_map_html, subsample
from lanic_nb.maps.views import plot_image_map, plot_pattern_map
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.rundir import RunDir, record_metrics

log = logging.getLogger(__name__)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a map figure as PNG (atomically) and close it."""
    write_figure(path, fig)
    plt.close(fig)
    return Path(path)


def trustworthiness(x: np.ndarray, coords: np.ndarray, n_neighbors: int = 5) -> float:
    """How far map neighbours are true (cosine) neighbours, in [0, 1] (scikit-learn's trustworthiness)."""
    k = min(n_neighbors, len(x) // 2 - 1)  # scikit-learn requires n_neighbors < n / 2
    if k < 1:
        return float("nan")
    return float(sk_trustworthiness(np.asarray(x), coords, n_neighbors=k, metric="cosine"))


@dataclass
class MapsConfig:
    """Settings of the maps stage (notebook 05). UMAP runs on the CPU."""

    n_neighbors: int = 15
    """UMAP's neighbourhood size (small: local structure; large: global structure), >= 2. Default: umap-learn's."""
    min_dist: float = 0.1
    """How tightly UMAP packs neighbours on the page, >= 0. Default: umap-learn's."""
    max_images: int = 3000
    """Images mapped (a seeded random subset above this). Default: engineering (UMAP's time grows with it)."""
    max_html_points: int = 5000
    """Points per interactive HTML map (a seeded random subset above this keeps the file small). Default:
    engineering (a page a browser opens quickly)."""
    seed: int = 0
    """Seeds UMAP and the subsets. Default: 0."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("max_images", "max_html_points"))
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be >= 2, got {self.n_neighbors}")
        if not self.min_dist >= 0:
            raise ValueError(f"min_dist must be >= 0, got {self.min_dist}")


@dataclass
class MapsResult:
    """What notebook 05 shows: both maps' coordinates and colourings, the files written, the metrics."""

    pattern_coords: pd.DataFrame  # pattern_id, x, y (as written to pattern_coords.parquet)
    categories: list[str]  # annotated category per pattern ("" when none)
    consistency: np.ndarray  # (n_patterns,) fraction of members holding the pattern
    image_coords: pd.DataFrame  # image_id, x, y (as written to image_coords.parquet)
    image_labels: pd.DataFrame  # (n_images_mapped, findings) report labels, rows as image_coords
    files: dict[str, Path] = field(default_factory=dict)  # pattern_png, image_png, pattern_html, image_html, ...
    metrics: dict = field(default_factory=dict)

    @property
    def pattern_xy(self) -> np.ndarray:
        return self.pattern_coords[["x", "y"]].to_numpy()

    @property
    def image_xy(self) -> np.ndarray:
        return self.image_coords[["x", "y"]].to_numpy()


@stage_function("05_maps")
def run_maps(run_dir: str | Path, config: MapsConfig | None = None) -> MapsResult:
    """Map the run's patterns (decoder directions) and images (embeddings) with UMAP.

    Reads patterns/ (directions, patterns.parquet) and the embedding store; writes into patterns/maps/ the
    PNG, coordinates table and HTML page of each map, and metrics/05_maps.json.
    """
    cfg = config or MapsConfig()
    rd = RunDir(Path(run_dir))
    out = rd.patterns / "maps"
    ps = PatternSet.load(rd.patterns)
    table = load_pattern_table(rd.patterns, ps)
    emb = load_embedded(rd.root)

    directions = ps.directions.numpy()
    pat_xy = umap_coords(directions, n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, seed=cfg.seed)
    categories = table["category"].fillna("").astype(str).tolist() if "category" in table else [""] * len(table)
    consistency = ps.consistency.numpy()
    pat_coords = coords_table(table["pattern_id"], pat_xy, "pattern_id")
    files = {
        "pattern_png": save_figure(plot_pattern_map(pat_xy, categories, consistency), out / "patterns.png"),
        "pattern_coords": write_table(out / "pattern_coords.parquet", pat_coords),
        "pattern_html": pattern_map_html(pat_xy, table, out / "patterns.html", max_points=cfg.max_html_points,
                                         seed=cfg.seed),
    }

    rows = subsample(len(emb.x), cfg.max_images, cfg.seed)
    x = emb.x[rows]
    img_xy = umap_coords(x, n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, seed=cfg.seed)
    ids = emb.image_ids[rows]
    labels = emb.manifest.loc[rows, list(FINDINGS)].reset_index(drop=True)
    img_coords = coords_table(ids, img_xy, "image_id")
    files |= {
        "image_png": save_figure(plot_image_map(img_xy, labels), out / "images.png"),
        "image_coords": write_table(out / "image_coords.parquet", img_coords),
        "image_html": image_map_html(img_xy, ids, labels, out / "images.html", max_points=cfg.max_html_points,
                                     seed=cfg.seed),
    }

    metrics = {
        "n_patterns_mapped": len(pat_xy),
        "n_images_mapped": len(img_xy),
        "pattern_map_trustworthiness": trustworthiness(directions, pat_xy),
        "image_map_trustworthiness": trustworthiness(x, img_xy),
    }
    record_metrics(rd.root, "05_maps", metrics)
    log.info("mapped %d patterns (trustworthiness %.2f) and %d images (%.2f)", metrics["n_patterns_mapped"],
             metrics["pattern_map_trustworthiness"], metrics["n_images_mapped"], metrics["image_map_trustworthiness"])
    return MapsResult(pat_coords, categories, consistency, img_coords, labels, files, metrics)

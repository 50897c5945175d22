"""UMAP maps: patterns by decoder direction, images by embedding.

UMAP places points so that near neighbours in the original space (here: cosine between decoder directions,
or between image embeddings) stay near on the page. Distances between far-apart clusters mean little;
what the map shows is which patterns (or images) form neighbourhoods, and whether a colour, such as a
pattern's category or an image's finding, follows those neighbourhoods.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lanic_nb.concepts import CATEGORIES
from lanic_nb.io import atomic_path

log = logging.getLogger(__name__)

CATEGORY_COLORS = dict(zip((*CATEGORIES, ""), ("#d62728", "#1f77b4", "#17becf", "#8c564b", "#2ca02c", "#9467bd", "#bbbbbb"), strict=True))


def umap_coords(
    x: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine", seed: int = 0
) -> np.ndarray:
    """(n, 2) UMAP layout of the rows of ``x`` (n_neighbors is clipped for tiny inputs).

    Fewer than 8 rows are laid out by their first two principal components instead (UMAP's neighbour graph
    needs more points than that to mean anything).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < 3:
        return np.zeros((x.shape[0], 2), np.float32)  # nothing to lay out
    if x.shape[0] < 8:
        log.warning("only %d rows: using PCA instead of UMAP", x.shape[0])
        centered = x - x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        xy = centered @ vt[:2].T if len(vt) else np.zeros((len(x), 0), np.float32)
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    import umap  # imported here: its first use in a process compiles (numba) for about a minute

    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, x.shape[0] - 1), min_dist=min_dist, metric=metric, random_state=seed,
        n_components=2, init="random" if x.shape[0] < 50 else "spectral",
    )
    return reducer.fit_transform(x)


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_pattern_map(coords: np.ndarray, categories: Sequence[str], consistency: np.ndarray, path: str | Path) -> Path:
    """Two panels: patterns coloured by annotated category, and by consistency across members."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    cats = np.asarray([c if c in CATEGORY_COLORS else "" for c in categories])
    for cat, color in CATEGORY_COLORS.items():
        m = cats == cat
        if m.any():
            axes[0].scatter(coords[m, 0], coords[m, 1], s=8, c=color, label=cat or "(none)", alpha=0.8)
    axes[0].legend(markerscale=2, fontsize=8, loc="best")
    axes[0].set_title("patterns by category")
    sc = axes[1].scatter(coords[:, 0], coords[:, 1], s=8, c=consistency, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(sc, ax=axes[1], label="consistency (fraction of members)")
    axes[1].set_title("patterns by consistency")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, Path(path))


def plot_image_map(coords: np.ndarray, labels: pd.DataFrame, path: str | Path) -> Path:
    """One panel per finding: images coloured positive / negative / uncertain-or-missing."""
    n = labels.shape[1]
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    for ax, col in zip(axes[0], labels.columns, strict=True):
        y = labels[col].to_numpy(dtype=float)
        other = ~np.isin(y, (0.0, 1.0))
        ax.scatter(coords[other, 0], coords[other, 1], s=4, c="#dddddd")
        ax.scatter(coords[y == 0, 0], coords[y == 0, 1], s=4, c="#9ecae1")
        ax.scatter(coords[y == 1, 0], coords[y == 1, 1], s=6, c="#d62728")
        ax.set_title(col, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, Path(path))


def subsample(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded random ``max_rows`` of them."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def trustworthiness(x: np.ndarray, coords: np.ndarray, n_neighbors: int = 5) -> float:
    """How far map neighbours are true (cosine) neighbours, in [0, 1] (scikit-learn's trustworthiness)."""
    from sklearn.manifold import trustworthiness as tw

    k = min(n_neighbors, len(x) // 2 - 1)  # scikit-learn requires n_neighbors < n / 2
    return float(tw(np.asarray(x), coords, n_neighbors=k, metric="cosine")) if k >= 1 else float("nan")

"""Figures of the pathology stage (notebook 09): tiles per slide, features against tissue types, the tile map."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lanic_nb.pathology.phantom import TISSUES


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

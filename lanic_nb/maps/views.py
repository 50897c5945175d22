"""Figures of the maps stage (notebook 05): the pattern map coloured by category, the image map by finding."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lanic_nb.concepts.vocabulary import CATEGORIES

CATEGORY_COLORS = dict(zip((*CATEGORIES, ""),
                           ("#d62728", "#1f77b4", "#17becf", "#8c564b", "#2ca02c", "#9467bd", "#bbbbbb"), strict=True))


def plot_pattern_map(coords: np.ndarray, categories: Sequence[str], consistency: np.ndarray) -> Figure:
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
    return fig


def plot_image_map(coords: np.ndarray, labels: pd.DataFrame) -> Figure:
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
    return fig

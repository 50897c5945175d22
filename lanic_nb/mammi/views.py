"""Figures of notebook 08 (MAMMI)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lanic_nb.mammi.annotate import METHODS


def plot_methods(summary: pd.DataFrame):
    """Grouped bars: per unit set, each method's mean AUROC for the concept it named, and top-1 accuracy."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    xs = np.arange(len(summary))
    for ax, metric in zip(axes, ("assigned_auroc", "top1_accuracy"), strict=True):
        for i, m in enumerate(METHODS):
            ax.bar(xs + (i - 1) * 0.27, summary[f"{m}_{metric}"].fillna(0), width=0.27, label=m)
        ax.set_xticks(xs, summary["unit_set"], fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    axes[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ceiling_table(ceiling: pd.DataFrame | None) -> pd.DataFrame | None:
    """The VLM's zero-shot AUROC per planted concept, best first (None without planted truth)."""
    return ceiling.sort_values("zero_shot_auroc", ascending=False) if ceiling is not None else None

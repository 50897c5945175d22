"""Figures of the transcoder stage (notebook 03): training curves and each member's fidelity."""

from __future__ import annotations

import pandas as pd


def plot_training(log: pd.DataFrame):
    """FVU and dead fraction (mean over members) along training."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for ax, col, label in zip(axes, ("fvu", "l0", "dead"), ("FVU of h (train batch)", "L0 (active latents)",
                                                            "dead fraction"), strict=True):
        ax.plot(log.step, log[col])
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig


def plot_members(metrics: pd.DataFrame):
    """Per member: FVU against the spliced AUROC, with the original classifier's AUROC as a line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].scatter(metrics.fvu, metrics.auroc_spliced, s=10)
    axes[0].axhline(metrics.auroc_original.iloc[0], color="gray", ls="--", lw=0.8, label="original")
    axes[0].set_xlabel("FVU of h (test)")
    axes[0].set_ylabel("spliced mean AUROC")
    axes[0].legend(fontsize=8)
    axes[1].hist(metrics.dead_frac, bins=20)
    axes[1].set_xlabel("dead fraction (test)")
    axes[1].set_ylabel("members")
    fig.tight_layout()
    return fig

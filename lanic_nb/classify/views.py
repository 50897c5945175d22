"""Figures of the classifier stage (notebook 02): AUROC per finding with intervals, and the training curves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lanic_nb.manifest import FINDINGS


def plot_auroc_table(table: pd.DataFrame):
    """AUROC per finding and model with the bootstrap 95% intervals as error bars."""
    import matplotlib.pyplot as plt

    per = table[table.finding != "mean"]
    models = list(dict.fromkeys(per.model))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        t = per[per.model == m]
        x = np.arange(len(t)) + i * width
        ax.bar(x, t.auroc, width, label=m,
               yerr=[t.auroc - t.auroc_lo, t.auroc_hi - t.auroc], capsize=2)
    ax.set_xticks(np.arange(len(FINDINGS)) + 0.4 - width / 2, FINDINGS, fontsize=8)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("test AUROC")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame):
    """Training and validation loss per epoch (left axis) and the validation mean AUROC (right axis)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.plot(history.epoch, history.train_loss, label="train loss")
    ax.plot(history.epoch, history.val_loss, label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked BCE")
    right = ax.twinx()
    right.plot(history.epoch, history.val_auroc, color="C2", label="val mean AUROC")
    right.set_ylabel("val mean AUROC")
    best = int(history.val_auroc.to_numpy().argmax())
    right.axvline(history.epoch.iloc[best], color="gray", ls=":", lw=0.8)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    fig.tight_layout()
    return fig


def plot_reliability(reliability: pd.DataFrame):
    """One panel per finding: the share of positive films against the mean probability in each probability bin,
    before (raw sigmoid) and after calibration; the diagonal is perfect calibration, dot size the films in a bin."""
    import matplotlib.pyplot as plt

    findings = list(dict.fromkeys(reliability.finding))
    fig, axes = plt.subplots(1, len(findings), figsize=(2.4 * len(findings), 2.6), squeeze=False, sharey=True)
    for ax, finding in zip(axes[0], findings, strict=True):
        for (kind, t), color in zip(reliability[reliability.finding == finding].groupby("probabilities", sort=False),
                                    ("C0", "C1"), strict=False):
            ax.plot(t.mean_prob, t.frac_pos, "-o", color=color, ms=3, lw=1, label=kind)
            ax.scatter(t.mean_prob, t.frac_pos, s=4 + 60 * t.n / t.n.max(), color=color, alpha=0.4)
        ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8)
        ax.set_title(finding, fontsize=8)
        ax.set_xlabel("mean probability", fontsize=8)
    axes[0, 0].set_ylabel("share positive")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig

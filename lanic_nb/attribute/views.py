"""Figures of the attribution stage: patterns needed per prediction, and insertion curves."""

from __future__ import annotations

import pandas as pd
import torch

from lanic_nb.manifest import FINDINGS


def plot_mass_distribution(counts: torch.Tensor, mass: float = 0.9):
    """Box plot per finding of how many patterns carry ``mass`` of a logit's |contribution|."""
    import matplotlib.pyplot as plt

    c = counts.numpy()
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    ax.boxplot([c[:, j] for j in range(c.shape[1])], showfliers=False)
    ax.set_xticks(range(1, c.shape[1] + 1), list(FINDINGS)[: c.shape[1]], fontsize=8, rotation=15)
    ax.set_ylabel(f"patterns for {mass:.0%} of |contribution|")
    fig.tight_layout()
    return fig


def plot_insertion(curves: pd.DataFrame):
    """One panel per finding: mean logit vs number of inserted patterns, top-first vs random order."""
    import matplotlib.pyplot as plt

    findings = list(dict.fromkeys(curves["finding"]))
    fig, axes = plt.subplots(1, len(findings), figsize=(3.2 * len(findings), 3.0), squeeze=False)
    for ax, f in zip(axes[0], findings, strict=True):
        d = curves[curves["finding"] == f]
        for label, style in (("top", "-o"), ("random", "--s")):
            e = d[d["order"] == label].sort_values("k")
            ax.plot(e["k"], e["mean_logit"], style, ms=3, label=f"{label} first" if label == "top" else label)
        ax.set_title(f, fontsize=9)
        ax.set_xlabel("patterns inserted")
    axes[0, 0].set_ylabel("mean logit")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_evidence_shares(evidence: pd.DataFrame):
    """Stacked bars per finding: the share of its positive pattern evidence from device/artifact patterns, from
    patterns named by the finding itself, and from the rest (images the classifier calls positive)."""
    import matplotlib.pyplot as plt

    parts = (("own_share", "the finding's own concept", "#4c9f70"),
             ("other_share", "other patterns", "#c9c9c9"),
             ("confounder_share", "device / artifact patterns", "#d1495b"))
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    left = pd.Series(0.0, index=evidence.index)
    y = range(len(evidence))
    for col, label, color in parts:
        values = evidence[col].fillna(0.0)
        ax.barh(y, values, left=left, color=color, label=label)
        left = left + values
    ax.set_yticks(list(y), [f"{f} (n={n})" for f, n in zip(evidence["finding"], evidence["n_images"], strict=True)],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of positive pattern evidence (images called positive)")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_ood_scores(ood, threshold: float):
    """Histogram of the out-of-distribution score (-log10 p) of the validation films and of the explained split's,
    with the threshold above which a film is flagged; films that fail the image checks are counted apart."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 2.8))
    finite = ood[np.isfinite(ood.score)]
    top = max(threshold * 1.3, float(finite.score.max()) if len(finite) else 1.0)
    bins = np.linspace(0, top, 30)
    for split, t in finite.groupby("split", sort=False):
        ax.hist(t.score, bins=bins, alpha=0.55, label=f"{split} ({len(t)} films)")
    ax.axvline(threshold, color="C3", ls="--", lw=1, label=f"flagged above {threshold:.1f}")
    failed = int((~np.isfinite(ood.score)).sum())
    ax.set_xlabel("out-of-distribution score, -log10 p" + (f" ({failed} fail the image checks)" if failed else ""))
    ax.set_ylabel("films")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliance(reliance: pd.DataFrame, n: int = 3):
    """One group of bars per finding: its ``n`` device or artifact patterns of largest reliance (the lift of the
    finding's logit on films without it, with its band), the flagged one in red, the others grey."""
    import matplotlib.pyplot as plt

    conf = reliance[(reliance["confounder_rank"] >= 1) & (reliance["confounder_rank"] <= n)]
    fig, ax = plt.subplots(figsize=(7.0, 0.3 * max(1, len(conf)) + 1.2))
    ticks, labels, y = [], [], 0.0
    for f in dict.fromkeys(conf["finding"]):
        for r in conf[conf["finding"] == f].sort_values("confounder_rank").itertuples():
            ax.barh(y, r.reliance, color="#d1495b" if r.flagged else "#9a9a9a",
                    xerr=[[r.reliance - r.lo], [r.hi - r.reliance]], capsize=2)
            ticks.append(y)
            labels.append(f"{f}: pattern {r.pattern_id} ({r.name or 'unnamed'})")
            y += 1
        y += 0.6  # a gap between findings
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("reliance: lift of the finding's logit on films without it (logit units, 95% band)", fontsize=8)
    ax.set_title("What each finding leans on (device and artifact patterns; red: stands out)", fontsize=9)
    fig.tight_layout()
    return fig

"""Figures of notebook 01 (embedding): training curve, retrieval examples, zero-shot ROC curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lanic_nb.images import ImageReadError, load_image
from lanic_nb.manifest import FINDINGS, resolve_image_path
from lanic_nb.metrics import roc_points


def plot_losses(losses: Sequence[float], batch_size: int):
    """The contrastive loss per step, with the chance level log(batch size)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1)
    ax.axhline(np.log(batch_size), color="gray", ls="--", label=f"chance = log({batch_size})")
    ax.set(xlabel="step", ylabel="CLIP loss", title="Small CLIP training")
    ax.legend()
    fig.tight_layout()
    return fig


def retrieval_examples(
    manifest: pd.DataFrame, image_emb: np.ndarray, report_emb: np.ndarray, data_dir: Path,
    split: str = "test", n: int = 3, k: int = 3, seed: int = 0,
):
    """``n`` test images beside their own report and the top-``k`` retrieved reports (hits marked)."""
    ok = ~np.isnan(image_emb).any(1) & ~np.isnan(report_emb).any(1) & (manifest["split"] == split).to_numpy()
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        raise ValueError(f"no usable rows in split {split!r}")
    pick = np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False)
    reports = manifest["report"].astype(str).to_numpy()
    fig, axes = plt.subplots(len(pick), 2, figsize=(12, 3.2 * len(pick)), gridspec_kw={"width_ratios": [1, 3]},
                             squeeze=False)
    for ax_img, ax_txt, r in zip(axes[:, 0], axes[:, 1], pick, strict=True):
        try:
            img = load_image(resolve_image_path(Path(data_dir) / "manifest.parquet", manifest["image_path"].iloc[r]))
            ax_img.imshow(img, cmap="gray", vmin=0, vmax=1)
        except ImageReadError as e:
            ax_img.text(0.5, 0.5, e.reason, ha="center")
        ax_img.set_axis_off()
        ax_img.set_title(str(manifest["image_id"].iloc[r]))
        sims = report_emb[rows] @ image_emb[r]
        top = rows[np.argsort(-sims, kind="stable")[:k]]
        lines = [f"OWN REPORT: {_short(reports[r])}", ""]
        for rank, t in enumerate(top, 1):
            mark = "HIT " if reports[t] == reports[r] else ""
            lines.append(f"{rank}. {mark}(cos {float(report_emb[t] @ image_emb[r]):.2f}) {_short(reports[t])}")
        ax_txt.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, wrap=True, family="monospace")
        ax_txt.set_axis_off()
    fig.tight_layout()
    return fig


def _short(text: str, width: int = 110) -> str:
    import textwrap

    return "\n   ".join(textwrap.wrap(" ".join(text.split()), width))[:600]


def plot_zeroshot_roc(manifest: pd.DataFrame, scores: pd.DataFrame, split: str = "test", metrics: dict | None = None):
    """One ROC curve per finding for the zero-shot scores (label 1 vs 0/not mentioned; -1 dropped)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    sel = (manifest["split"] == split).to_numpy() & scores[list(FINDINGS)].notna().all(1).to_numpy()
    for f in FINDINGS:
        y = manifest[f].to_numpy(dtype=float)[sel]
        keep = y != -1
        yb = (y[keep] == 1).astype(int)
        if 0 < yb.sum() < len(yb):
            fpr, tpr = roc_points(yb, scores[f].to_numpy()[sel][keep])
            auc = (metrics or {}).get("zeroshot_auroc", {}).get(f)
            ax.plot(fpr, tpr, label=f"{f}" + (f" ({auc:.2f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"Zero-shot ROC ({split} split)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_card(card: dict):
    """The shipped encoder's card in two panels: pretraining (probe checks over steps) and its figures on
    unseen phantom films (linear-probe AUROC per planted concept, with the 0.95 target)."""
    ev, checks = card["evaluation"], card["training"].get("checks", [])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    if checks:
        a.plot([c["step"] for c in checks], [c["probe_at_target"] for c in checks], "-o", ms=3)
    n = len(ev["probe_auroc"])
    a.axhline(n, color="gray", ls=":", lw=1)
    a.set(xlabel="pretraining step", ylabel=f"concepts probed at AUROC >= {ev['probe_target']}", ylim=(0, n + 1),
          title="during pretraining (held-out films)")
    names = sorted(ev["probe_auroc"], key=lambda c: ev["probe_auroc"][c])
    values = [ev["probe_auroc"][c] for c in names]
    b.barh(range(n), values, color=["#d1495b" if v < ev["probe_target"] else "#4c9f70" for v in values])
    b.axvline(ev["probe_target"], color="k", ls="--", lw=1)
    b.set_yticks(range(n), [c.replace("_", " ") for c in names], fontsize=7)
    b.set_xlim(min(0.5, min(values) - 0.02), 1.0)
    b.set(xlabel="linear-probe AUROC on the image embedding",
          title=f"unseen phantom (seed {ev['phantom']['seed']}, {ev['phantom']['n_images']} films)")
    fig.tight_layout()
    return fig

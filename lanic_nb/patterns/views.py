"""Figures and display tables of notebook 04 (patterns), read from a ``PatternsResult``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from lanic_nb.io import read_table
from lanic_nb.manifest import resolve_image_path
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.rundir import RunDir

SUMMARY_COLUMNS = ["pattern_id", "consistency", "firing_freq", "concept_1", "score_1", "concept_2", "category",
                   "category_confidence"]


def plot_films(run_dir, image_ids, titles=None, cols: int = 6, size: float = 1.7):
    """Thumbnails of a run's films by image id (a pattern's top films, a latent's, look-alikes), titled."""
    from PIL import Image

    rd = RunDir(run_dir)
    manifest = read_table(rd.manifest).set_index("image_id")
    ids = [str(i) for i in image_ids]
    titles = list(titles) if titles is not None else ids
    rows = max(1, -(-len(ids) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.35) * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, iid, title in zip(axes.ravel(), ids, titles, strict=False):
        img = Image.open(resolve_image_path(rd.manifest, manifest.loc[iid, "image_path"])).convert("L")
        ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
        ax.set_title(str(title), fontsize=7)
    fig.tight_layout()
    return fig


def pick_pattern(table: pd.DataFrame, other_names=None, prefer: str = "portable") -> int:
    """A pattern to walk through. With ``other_names`` (one name per pattern, e.g. plain MAMMI's): only patterns
    that the table names differently, if any. Among those, the most consistent one whose name contains ``prefer``
    (the demo's shortcut), else the most consistent one named after a device or artifact, else the most consistent."""
    t = table.sort_values(["consistency", "pattern_id"], ascending=[False, True])
    named = t.get("concept_1", pd.Series("", index=t.index)).fillna("").astype(str)
    if other_names is not None:
        differ = named.to_numpy() != np.asarray(other_names, dtype=object)[t.pattern_id.to_numpy()]
        if differ.any():
            t, named = t[differ], named[differ]
    category = t.get("category", pd.Series("", index=t.index))
    for keep in (named.str.contains(prefer), category.isin(("device", "artifact"))):
        if keep.any():
            return int(t[keep].pattern_id.iloc[0])
    return int(t.pattern_id.iloc[0])


def plot_consistency(patterns: PatternSet):
    """Histogram of the kept patterns' consistency (fraction of members holding each): one bin per member
    count for small ensembles, 40 bins for large ones."""
    n = patterns.n_members
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(patterns.consistency.numpy(), bins=np.linspace(0, 1, n + 2 if n < 40 else 41))
    ax.set_xlabel("consistency (fraction of members)")
    ax.set_ylabel("patterns")
    fig.tight_layout()
    return fig


def activation_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """count / mean / quartiles of the patterns' firing frequency, mean and max activation."""
    return stats[["firing_freq", "mean_act", "max_act"]].astype(float).describe()


def category_table(table: pd.DataFrame) -> pd.DataFrame:
    """Patterns per annotated category, with the mean confidence of the category vote."""
    return table.groupby("category").agg(patterns=("pattern_id", "size"), confidence=("category_confidence", "mean"))


def best_detectors(per_unit: dict[str, pd.DataFrame], table: pd.DataFrame, n: int = 15,
                   unit_set: str = "ensemble patterns") -> pd.DataFrame:
    """The ``n`` patterns that detect a planted concept best: AUROC, margin to the runner-up concept, and
    the text side's name (empty without planted truth)."""
    truth = per_unit.get(unit_set, pd.DataFrame(columns=["unit", "best_concept", "best_auroc", "margin"]))
    named = table[["pattern_id", "consistency", "concept_1", "category"]]
    return truth.merge(named, left_on="unit", right_on="pattern_id").sort_values("best_auroc", ascending=False).head(n)


def recovery_table(by_concept: pd.DataFrame) -> pd.DataFrame:
    """recovery_by_concept, concepts the embedding carries best first."""
    return by_concept.sort_values("probe_embedding", ascending=False) if len(by_concept) else by_concept


def plot_names(per_unit: dict[str, pd.DataFrame], monosemantic_at: float = 0.9, unit_set: str = "ensemble patterns"):
    """Per planted concept, its monosemantic patterns (AUROC >= ``monosemantic_at`` for it): how many the text side
    named right, how many got only the category right, how many neither (phantom only; a note without truth)."""
    units = per_unit.get(unit_set)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if units is None or "name_right" not in units or not (units["best_auroc"] >= monosemantic_at).any():
        ax.text(0.5, 0.5, "no planted truth on this run (or no monosemantic pattern)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    mono = units[units["best_auroc"] >= monosemantic_at]
    verdict = np.where(mono["name_right"], "name right", np.where(mono["category_right"], "category only", "wrong"))
    counts = (pd.crosstab(mono["best_concept"], verdict)
              .reindex(columns=["name right", "category only", "wrong"], fill_value=0))
    counts = counts.loc[counts.sum(axis=1).sort_values().index]
    left = np.zeros(len(counts))
    for col, color in zip(counts.columns, ["#2a9d8f", "#e9c46a", "#e76f51"], strict=True):
        ax.barh(counts.index, counts[col], left=left, color=color, label=col)
        left += counts[col].to_numpy()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"patterns with AUROC >= {monosemantic_at:g} for the concept")
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(f"{len(mono)} monosemantic patterns: {int(mono['name_right'].sum())} named right", fontsize=10)
    fig.tight_layout()
    return fig

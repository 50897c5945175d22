"""EVALUATION on the phantom: does attribution expose the planted shortcut?

The phantom plants a shortcut: a concept (by default the burned-in word PORTABLE) that co-occurs with one
finding. Which concept and finding, and where each is truly present, come from the run's own data through
``lanic_nb.evaluation`` (the only reader of the planted truth); nothing here knows the phantom's code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.attribute.core import Attribution
from lanic_nb.concepts.vocabulary import load_vocabulary, match_concept
from lanic_nb.evaluation import (
    concept_categories,
    finding_concept,
    ground_truth_matrix,
    load_ground_truth,
    planted_shortcut,
)
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import unit_aurocs

log = logging.getLogger(__name__)


def top_pattern_hits(attr: Attribution, finding: int, pattern: int, rows: np.ndarray, top: int = 5) -> np.ndarray:
    """For the images ``rows`` (bool or index), whether ``pattern`` is among the ``top`` largest
    contributions toward ``finding`` (signed: patterns pushing the logit up)."""
    contrib = attr.contributions[torch.from_numpy(np.array(rows)), :, finding]  # (n_rows, P)
    idx = contrib.topk(min(top, contrib.shape[1]), dim=1).indices
    return (idx == pattern).any(1).numpy()


def is_named(name: str, planted: str, vocab: pd.DataFrame) -> bool:
    """Whether an annotated concept name denotes the planted concept (its vocabulary entry or a synonym)."""
    return bool(name) and match_concept(name, vocab) == match_concept(planted, vocab)


def stratified_aurocs(activations: torch.Tensor, concept: np.ndarray, finding: np.ndarray) -> np.ndarray:
    """Per pattern, how well it detects ``concept`` apart from ``finding``: the mean of its AUROC within the
    finding-positive images and within the finding-negative ones  # (n_patterns,). A pattern of the finding
    alone scores about 0.5 however often the two co-occur; one of the concept scores high in both strata."""
    aucs = [unit_aurocs(activations[torch.from_numpy(rows)], concept[rows])
            for rows in (finding, ~finding) if 0 < concept[rows].sum() < rows.sum()]
    return np.mean(aucs, axis=0) if aucs else np.full(activations.shape[1], np.nan)


def concept_push(contributions: torch.Tensor, concept: np.ndarray, finding: np.ndarray) -> np.ndarray:
    """Per pattern, how much its contribution to the finding's logit rises with the concept on images without
    the finding: mean over concept-positive minus mean over concept-negative finding-negative images
    # (n_patterns,). The patterns with the largest rises carry the shortcut's push, whatever they are named."""
    neg = ~finding
    on, off = neg & concept, neg & ~concept
    if not on.any() or not off.any():
        return np.full(contributions.shape[1], np.nan)
    return (contributions[torch.from_numpy(on)].mean(0) - contributions[torch.from_numpy(off)].mean(0)).numpy()


def _named(patterns: pd.DataFrame | None, pattern: int, concept: str, true_category: str) -> dict:
    if patterns is None:
        return {}
    row = patterns.iloc[pattern]
    name, category = str(row.get("concept_1", "") or ""), str(row.get("category", "") or "")
    return {"pattern_name": name, "pattern_category": category, "true_category": true_category,
            "shortcut_named": is_named(name, concept, load_vocabulary()), "category_correct": category == true_category}


def shortcut_check(run_dir: str | Path, attr: Attribution, image_ids: np.ndarray, top: int = 5,
                   patterns: pd.DataFrame | None = None, planted: tuple[str, str] | None = None) -> dict | None:
    """Is the pattern that best detects the shortcut concept among the top contributions to its finding,
    and is it named for what it is?

    The pattern with the highest AUROC of its activation against the concept's ground truth is looked up
    among the ``top`` largest contributions toward the shortcut finding on every image where the finding
    is truly present. With the pattern table (``patterns``: rows in pattern order), its annotation is checked
    too: ``shortcut_named`` when its first concept is the planted concept or a synonym, ``category_correct``
    when its category is the planted concept's. Two more patterns are reported, with the same naming checks:
    ``within_finding``, the best detector of the concept within the finding-positive and finding-negative
    images (``stratified_aurocs``), and ``carrier``, the pattern whose contribution to the finding rises most
    with the concept on images without the finding (``concept_push``; ``total_push`` sums every pattern's).
    ``planted``: the (concept, finding) to check (default: the run's main shortcut). Returns None when the run
    plants no shortcut.
    """
    planted = planted or planted_shortcut(run_dir)
    if planted is None or planted[1] not in FINDINGS:
        return None
    concept, finding = planted
    gt = load_ground_truth(run_dir)
    truth = ground_truth_matrix(gt, [str(i) for i in image_ids])
    has_concept = truth[concept].to_numpy(bool)
    has_finding = truth[finding_concept(finding)].to_numpy(bool)
    if attr.activations.shape[1] == 0:
        log.warning("shortcut check: the run has no patterns")
        return {"concept": concept, "finding": finding, "pattern": None, "share": float("nan")}
    au = unit_aurocs(attr.activations, has_concept)
    best = int(np.argmax(au))
    c = FINDINGS.index(finding)
    hits = top_pattern_hits(attr, c, best, np.flatnonzero(has_finding), top)
    both = has_finding & has_concept
    hits_both = top_pattern_hits(attr, c, best, np.flatnonzero(both), top)
    table = patterns if patterns is not None and len(patterns) == attr.activations.shape[1] else None
    true_category = concept_categories(gt).get(concept, "")
    naming = _named(table, best, concept, true_category)
    # Beside the best detector, which can be a pattern of the finding itself when the two co-occur often:
    # the best detector within the finding's strata, and the pattern that carries the concept's push.
    strat = stratified_aurocs(attr.activations, has_concept, has_finding)
    push = concept_push(attr.contributions[:, :, c], has_concept, has_finding)
    within = int(np.nanargmax(strat)) if np.isfinite(strat).any() else None
    carrier = int(np.nanargmax(push)) if np.isfinite(push).any() else None
    extra = {}
    if within is not None:
        within_hits = top_pattern_hits(attr, c, within, np.flatnonzero(has_finding), top)
        extra["within_finding"] = {"pattern": within, "auroc": float(strat[within]),
                                   "share": float(within_hits.mean()) if len(within_hits) else float("nan"),
                                   "push": float(push[within]), **_named(table, within, concept, true_category)}
    if carrier is not None:
        total = float(np.clip(push, 0, None).sum())
        extra["carrier"] = {"pattern": carrier, "push": float(push[carrier]),
                            "push_share": float(push[carrier]) / total if total > 0 else float("nan"),
                            "total_push": float(push.sum()), "auroc_within_finding": float(strat[carrier]),
                            **_named(table, carrier, concept, true_category)}
    return {
        "concept": concept, "finding": finding, "pattern": best, "pattern_auroc": float(au[best]),
        "top": top, "n_positive": int(has_finding.sum()),
        "share": float(hits.mean()) if len(hits) else float("nan"),
        "n_positive_with_concept": int(both.sum()),
        "share_with_concept": float(hits_both.mean()) if len(hits_both) else float("nan"),
        "mean_contribution": float(attr.contributions[torch.from_numpy(has_finding.copy()), best, c].mean())
        if has_finding.any() else float("nan"),
        **naming,
        **extra,
    }

"""How well each method names neurons, against the phantom's planted truth (EVALUATION ONLY).

Per unit: its best planted concept and AUROC (how monosemantic it is), and per method the AUROC of the unit
for the planted concept its name refers to. ``vlm_ceiling``: how well the VLM's similarity alone separates
each planted concept, the ceiling of every annotator that reads only that similarity. Like
``lanic_nb.patterns.evaluate``, this module may open the ground truth; no training stage imports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lanic_nb.concepts.vocabulary import match_concept
from lanic_nb.evaluation import ground_truth_matrix, has_ground_truth, load_ground_truth
from lanic_nb.mammi.annotate import METHODS
from lanic_nb.metrics import auroc_matrix
from lanic_nb.patterns.evaluate import best_concepts


def evaluate_annotations(
    activations: np.ndarray, annotations: pd.DataFrame, presence: pd.DataFrame, vocab: pd.DataFrame,
    monosemantic_at: float = 0.9,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score each method's names against planted truth (phantom only; ``presence`` from lanic_nb.evaluation).

    presence: (n_images, n_planted) bool, row-aligned with ``activations``. Per unit: its best planted concept
    and AUROC (monosemanticity), and per method the AUROC of the unit for the planted concept its name refers
    to (0.5 when the name is no planted concept). Summary per method: mean assigned AUROC, and top-1 accuracy
    over monosemantic units (best AUROC >= monosemantic_at): the name equals that concept's vocabulary entry.
    """
    planted = list(presence.columns)
    auc = auroc_matrix(activations, presence.to_numpy())  # (n_units, n_planted)
    per_unit = best_concepts(auc, planted)
    vocab_of = {p: match_concept(p, vocab) for p in planted}
    planted_of: dict[str, int] = {}
    for i, p in enumerate(planted):
        if vocab_of[p] is not None:
            planted_of.setdefault(vocab_of[p], i)
    mono = per_unit["best_auroc"].to_numpy() >= monosemantic_at
    truth = np.array([vocab_of[c] for c in per_unit["best_concept"]], dtype=object)
    summary = {"n_units": len(per_unit), "n_monosemantic": int(mono.sum()),
               "mean_best_auroc": float(per_unit["best_auroc"].mean()) if len(per_unit) else np.nan}
    for m in METHODS:
        names = annotations[f"{m}_concept"].fillna("").to_numpy()
        idx = [planted_of.get(n, -1) for n in names]
        assigned = np.array([auc[u, j] if j >= 0 and np.isfinite(auc[u, j]) else 0.5 for u, j in enumerate(idx)])
        per_unit[f"{m}_auroc"] = assigned
        summary[f"{m}_assigned_auroc"] = float(assigned.mean()) if len(assigned) else np.nan
        summary[f"{m}_top1_accuracy"] = float((names[mono] == truth[mono]).mean()) if mono.any() else np.nan
    return per_unit, pd.DataFrame([summary])


def vlm_ceiling(similarity: np.ndarray, presence: pd.DataFrame, vocab: pd.DataFrame) -> pd.DataFrame:
    """Per planted concept, the AUROC of the VLM's similarity to that concept's vocabulary entry over all images.

    Any annotator that reads only image-text similarity can name a unit for a concept only as well as the VLM
    tells that concept's images apart: this is the ceiling of every method here (phantom only, evaluation).
    """

    auc = auroc_matrix(similarity, presence.to_numpy())  # (n_concepts in vocab, n_planted)
    index = {c: i for i, c in enumerate(vocab["concept"])}
    rows = []
    for j, planted in enumerate(presence.columns):
        name = match_concept(planted, vocab)
        i = index.get(name, -1)
        rows.append({"planted": planted, "concept": name or "",
                     "zero_shot_auroc": float(auc[i, j]) if i >= 0 else np.nan})
    return pd.DataFrame(rows, columns=["planted", "concept", "zero_shot_auroc"])


def ceiling_metrics(ceiling: pd.DataFrame | None) -> dict:
    """``vlm_ceiling_mean`` and the per-concept ``vlm_ceiling`` for record_metrics ({} without planted truth)."""
    if ceiling is None or not len(ceiling):
        return {}
    auc = ceiling["zero_shot_auroc"].astype(float)
    return {"vlm_ceiling_mean": float(auc.mean()),
            "vlm_ceiling": {p: round(float(a), 3) for p, a in zip(ceiling["planted"], auc, strict=True)}}


def evaluate_stage(
    run_dir, image_ids, sets: dict[str, tuple[np.ndarray, pd.DataFrame]], vocab: pd.DataFrame,
    monosemantic_at: float = 0.9, similarity: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Summary (one row per unit set) and per-unit truth tables; empty on a run without planted truth.
    With ``similarity`` (n_images, n_concepts), the tables also hold "vlm ceiling" (:func:`vlm_ceiling`)."""
    if not has_ground_truth(run_dir):
        return pd.DataFrame(), {}
    presence = ground_truth_matrix(load_ground_truth(run_dir), list(image_ids))
    rows, per_unit = [], {}
    if similarity is not None:
        per_unit["vlm ceiling"] = vlm_ceiling(similarity, presence, vocab)
    for name, (act, ann) in sets.items():
        per_unit[name], summary = evaluate_annotations(act, ann, presence, vocab, monosemantic_at)
        rows.append(summary.assign(unit_set=name))
    table = pd.concat(rows, ignore_index=True)
    return table[["unit_set", *[c for c in table.columns if c != "unit_set"]]], per_unit


def flat_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """``<metric>_<unit set>`` figures for record_metrics."""
    out: dict[str, float] = {}
    for _, row in summary.iterrows():
        suffix = "_" + str(row["unit_set"]).replace(" ", "_")
        for key, val in row.items():
            if key != "unit_set":
                out[f"{key}{suffix}"] = float(val)
    return out

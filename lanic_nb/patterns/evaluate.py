"""How monosemantic are the units, measured against the phantom's planted truth (EVALUATION ONLY).

A unit (a pattern, one member's latent, or a raw embedding dimension) is monosemantic for a planted
concept when its activation alone separates images with the concept from those without: AUROC near 1.
For every unit we report its best concept, that AUROC and the margin to the second-best concept; for a
set of units, *recovery* (share of planted concepts that some unit detects with AUROC >= 0.95) and how
often the text-side annotation names the right concept and category.

This module is evaluation code: it is allowed to open the ground-truth table (through
``lanic_nb.evaluation``); no training stage may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.concepts.vocabulary import match_concept
from lanic_nb.evaluation import concept_categories, ground_truth_matrix, load_ground_truth
from lanic_nb.io import write_table
from lanic_nb.metrics import auroc_matrix, probe_aurocs
from lanic_nb.rundir import RunDir

EVALUATION_CSV = "evaluation.csv"
RECOVERY_CSV = "recovery_by_concept.csv"
SUMMARY_KEYS = ("n_units", "n_concepts", "recovery", "n_monosemantic", "category_accuracy", "concept_accuracy",
                "category_accuracy_best", "concept_accuracy_best", "category_agreement", "mean_best_auroc",
                "n_gallery_pure", "category_accuracy_gallery", "concept_accuracy_gallery")
GALLERY_SIZE = 20
"""Images in a unit's gallery for the gallery-purity figures (the pattern table's ``k_top``)."""


def best_concepts(auc: np.ndarray, concepts: Sequence[str]) -> pd.DataFrame:
    """Per unit: best concept, its AUROC, the second's AUROC and the margin between them."""
    filled = np.nan_to_num(auc, nan=0.0)
    order = np.argsort(-filled, axis=1, kind="stable")
    idx = np.arange(len(auc))
    best = filled[idx, order[:, 0]]
    second = filled[idx, order[:, 1]] if auc.shape[1] > 1 else np.full(len(auc), 0.5)
    return pd.DataFrame(
        {
            "unit": idx,
            "best_concept": np.asarray(concepts, dtype=object)[order[:, 0]],
            "best_auroc": best,
            "second_auroc": second,
            "margin": best - second,
        }
    )


def summarize_units(
    auc: np.ndarray,
    concepts: Sequence[str],
    categories: dict[str, str],
    annotations: pd.DataFrame,
    vocab: pd.DataFrame,
    recover_at: float = 0.95,
    monosemantic_at: float = 0.9,
) -> dict[str, float]:
    """Recovery, and annotation accuracy on the units that detect a planted concept.

    category/concept accuracy: over units whose best AUROC >= ``monosemantic_at``, the share whose
    annotated category (top-1 concept) equals that planted concept's category (vocabulary entry).
    ``*_best`` variants look only at the single best unit of each recovered concept; ``category_agreement``
    compares every unit's annotated category with that of its best planted concept, whatever the AUROC.
    """
    best = best_concepts(auc, concepts)
    ann = annotations.set_index("unit")
    filled = np.nan_to_num(auc, nan=0.0)
    valid = ~np.isnan(auc).all(axis=0) if len(auc) else np.ones(auc.shape[1], bool)
    best_per_concept = filled.max(axis=0) if len(filled) else np.zeros(auc.shape[1])
    recovered = (best_per_concept >= recover_at) & valid

    mono = best["best_auroc"].to_numpy() >= monosemantic_at
    cat_acc, con_acc = name_accuracy(ann, best["unit"].to_numpy()[mono], best["best_concept"].to_numpy()[mono],
                                     categories, vocab)
    rec_idx = np.nonzero(recovered)[0]
    top_unit = filled.argmax(axis=0)[rec_idx] if len(filled) else np.zeros(0, np.int64)
    cat_best, con_best = name_accuracy(ann, top_unit, np.asarray(concepts, dtype=object)[rec_idx], categories, vocab)
    cat_all, _ = name_accuracy(ann, best["unit"].to_numpy(), best["best_concept"].to_numpy(), categories, vocab)
    return {
        "n_units": int(len(auc)),
        "n_concepts": int(valid.sum()),
        "recovery": float(recovered.sum() / max(valid.sum(), 1)),
        "n_monosemantic": int(mono.sum()),
        "category_accuracy": cat_acc,
        "concept_accuracy": con_acc,
        "category_accuracy_best": cat_best,
        "concept_accuracy_best": con_best,
        "category_agreement": cat_all,
        "mean_best_auroc": float(best["best_auroc"].mean()) if len(best) else np.nan,
    }


def name_accuracy(ann: pd.DataFrame, units: np.ndarray, truth: np.ndarray, categories: dict[str, str],
                  vocab: pd.DataFrame) -> tuple[float, float]:
    """(category accuracy, top-1 concept accuracy) of the annotations (indexed by unit) of ``units`` against their
    planted concepts ``truth``: the category equals the concept's, concept_1 its vocabulary entry."""
    if len(units) == 0:
        return np.nan, np.nan
    cat_ok, con_ok = _name_checks(ann, units, truth, categories, vocab)
    return float(cat_ok.mean()), float(con_ok.mean())


def named_right(per_unit: pd.DataFrame, annotations: pd.DataFrame, categories: dict[str, str],
                vocab: pd.DataFrame) -> pd.DataFrame:
    """per_unit (one row per unit, with ``best_concept``) with whether each unit's name is that planted concept's
    vocabulary entry (``name_right``) and its category the concept's (``category_right``)."""
    cat_ok, con_ok = _name_checks(annotations.set_index("unit"), per_unit["unit"].to_numpy(),
                                  per_unit["best_concept"].to_numpy(), categories, vocab)
    return per_unit.assign(name_right=con_ok, category_right=cat_ok)


def _name_checks(ann: pd.DataFrame, units: np.ndarray, truth: np.ndarray, categories: dict[str, str],
                 vocab: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, (bool) whether its annotated category is its planted concept's, and its concept_1 the concept's
    vocabulary entry; ``ann`` indexed by unit."""
    got_cat, got_con = _given_names(ann, units)
    names = {t: match_concept(t, vocab) for t in set(truth)}
    cat_ok = np.array([g == categories.get(t, "") for g, t in zip(got_cat, truth, strict=True)], dtype=bool)
    con_ok = np.array([g == names[t] for g, t in zip(got_con, truth, strict=True)], dtype=bool)
    return cat_ok, con_ok


def _given_names(ann: pd.DataFrame, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The category and concept_1 the annotations (indexed by unit) give ``units`` ("" where none)."""
    got = ann.reindex(units)
    con = got["concept_1"].fillna("").to_numpy() if "concept_1" in got else np.full(len(units), "")
    return got["category"].fillna("").to_numpy(), con


def gallery_purity(act: np.ndarray, presence: np.ndarray, concepts: Sequence[str], k: int = GALLERY_SIZE,
                   pure_at: float = 0.9, min_lift: float = 0.5) -> pd.DataFrame:
    """Per unit, what a reader of its gallery sees: its k most active images (those that fire; ``n_gallery``), the
    planted concept most over-represented there (``gallery_concept``, its share ``purity``, its share of all images
    ``prevalence``), and every concept ``pure_at`` or more of the gallery carries, at least ``min_lift`` above its
    prevalence (``pure_concepts``; a marker on 60% of all films is on most galleries by chance). A unit can be pure
    without detecting its concept everywhere (AUROC): a pattern of the large effusions only has a pure gallery and
    an AUROC near 0.5 + half its recall. Confounded concepts (a shortcut marker and its finding) can both be pure."""
    act = np.asarray(act, dtype=np.float64)
    y = np.asarray(presence, dtype=bool)
    prevalence = y.mean(axis=0)
    names = np.asarray(concepts, dtype=object)
    rows = []
    for u in range(act.shape[1]):
        top = np.argsort(-act[:, u], kind="stable")[:k]
        top = top[act[top, u] > 0]
        share = y[top].mean(axis=0) if len(top) else np.zeros(y.shape[1])
        c = int(np.argmax(share - prevalence))
        pure = ((share >= pure_at) & (share - prevalence >= min_lift) if len(top) >= k / 2
                else np.zeros(len(share), bool))
        rows.append({"unit": u, "gallery_concept": names[c], "purity": float(share[c]),
                     "prevalence": float(prevalence[c]), "n_gallery": len(top), "pure_concepts": list(names[pure])})
    return pd.DataFrame(rows, columns=["unit", "gallery_concept", "purity", "prevalence", "n_gallery", "pure_concepts"])


def summarize_galleries(gal: pd.DataFrame, categories: dict[str, str], annotations: pd.DataFrame,
                        vocab: pd.DataFrame) -> dict[str, float]:
    """How many units have a pure gallery (some concept in ``pure_concepts``), and on those how often the name is
    true of the gallery: concept_1 names one of its pure concepts (top-1), the category is one of theirs."""
    ann = annotations.set_index("unit")
    pure = gal[gal["pure_concepts"].map(len) > 0]
    if pure.empty:
        return {"n_gallery_pure": 0, "category_accuracy_gallery": np.nan, "concept_accuracy_gallery": np.nan}
    cat, con = _given_names(ann, pure["unit"].to_numpy())
    names = {t: match_concept(t, vocab) for ts in pure["pure_concepts"] for t in ts}
    con_ok = [c in {names[t] for t in ts} for c, ts in zip(con, pure["pure_concepts"], strict=True)]
    cat_ok = [c in {categories.get(t, "") for t in ts} for c, ts in zip(cat, pure["pure_concepts"], strict=True)]
    return {"n_gallery_pure": len(pure), "category_accuracy_gallery": float(np.mean(cat_ok)),
            "concept_accuracy_gallery": float(np.mean(con_ok))}


def evaluate_unit_sets(
    run_dir: str | Path,
    image_ids: Sequence[str],
    unit_sets: dict[str, tuple[np.ndarray, pd.DataFrame]],
    vocab: pd.DataFrame,
    recover_at: float = 0.95,
    monosemantic_at: float = 0.9,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Evaluate named unit sets against the run's planted truth; write ``patterns/evaluation.csv``.

    unit_sets: name -> (activations (n_images, n_units) row-aligned with ``image_ids``, annotations).
    Returns the summary table (one row per set) and, per set, the per-unit table (best concept etc.).
    A run without planted truth (real data) gets an empty table and no file.
    """
    if not RunDir(Path(run_dir)).ground_truth.exists():
        return pd.DataFrame(columns=["units", *SUMMARY_KEYS]), {}
    gt = load_ground_truth(run_dir)
    presence = ground_truth_matrix(gt, image_ids)
    concepts = list(presence.columns)
    cats = concept_categories(gt)
    rows, per_unit = [], {}
    for name, (act, ann) in unit_sets.items():
        auc = auroc_matrix(act, presence.to_numpy())
        gal = gallery_purity(act, presence.to_numpy(), concepts)
        per_unit[name] = named_right(best_concepts(auc, concepts).merge(gal, on="unit"), ann, cats, vocab)
        rows.append({"units": name} | summarize_units(auc, concepts, cats, ann, vocab, recover_at, monosemantic_at)
                    | summarize_galleries(gal, cats, ann, vocab))
    table = pd.DataFrame(rows)
    write_table(RunDir(Path(run_dir)).patterns / EVALUATION_CSV, table)
    return table, per_unit


def recovery_by_concept(
    run_dir: str | Path,
    image_ids: Sequence[str],
    split: Sequence[str],
    unit_sets: dict[str, np.ndarray],
    probe_spaces: dict[str, np.ndarray],
    recover_at: float = 0.95,
    C: float = 1.0,
) -> pd.DataFrame:
    """Where each planted concept is lost: per concept, the best unit AUROC of every unit set and the
    test AUROC of a linear probe on every representation; writes ``patterns/recovery_by_concept.csv``.

    unit_sets: name -> activations (n_images, n_units), the first being the main set (``recovered``);
    probe_spaces: name -> features (n_images, d), probed train -> test by :func:`probe_aurocs`. Unit AUROCs
    use every image (units are never fitted to the truth). ``in_reach``: some probe reaches ``recover_at``;
    a concept no probe separates is not linearly in that representation, so no unit of it can recover it.
    A run without planted truth (real data) gets an empty table and no file.
    """
    if not RunDir(Path(run_dir)).ground_truth.exists():
        return pd.DataFrame(columns=["concept", "category", "prevalence"])
    gt = load_ground_truth(run_dir)
    presence = ground_truth_matrix(gt, image_ids)
    concepts = list(presence.columns)
    y = presence.to_numpy()
    split = np.asarray(split).astype(str)
    cats = concept_categories(gt)
    table = pd.DataFrame({"concept": concepts, "category": [cats.get(c, "") for c in concepts],
                          "prevalence": y.mean(0)})
    for name, act in unit_sets.items():
        auc = auroc_matrix(act, y)
        table[f"best_{name.replace(' ', '_')}"] = np.nanmax(auc, axis=0) if len(auc) else np.nan
    probes = []
    for name, feats in probe_spaces.items():
        col = f"probe_{name.replace(' ', '_')}"
        table[col] = probe_aurocs(feats, y, split == "train", split == "test", C)
        probes.append(col)
    if unit_sets:
        main = f"best_{next(iter(unit_sets)).replace(' ', '_')}"
        table["recovered"] = table[main].fillna(0.0) >= recover_at
    if probes:
        table["in_reach"] = (table[probes].fillna(0.0) >= recover_at).any(axis=1)
    write_table(RunDir(Path(run_dir)).patterns / RECOVERY_CSV, table)
    return table


def headline_metrics(evaluation: pd.DataFrame, main: str = "ensemble patterns") -> dict[str, float]:
    """Flat figures for record_metrics: the main set's recovery and accuracies, the other sets' as suffixes."""
    out: dict[str, float] = {}
    for _, row in evaluation.iterrows():
        suffix = "" if row["units"] == main else "_" + str(row["units"]).replace(" ", "_")
        for key in ("recovery", "category_accuracy", "concept_accuracy", "category_accuracy_best", "category_agreement",
                    "mean_best_auroc", "n_monosemantic", "n_gallery_pure", "category_accuracy_gallery",
                    "concept_accuracy_gallery"):
            out[key + suffix] = float(row[key])
    return out

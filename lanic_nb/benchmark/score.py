"""Score a finished run (stages 00-04 and 06) against its planted truth: one row of the suite's table.

Per planted shortcut: **found** when a pattern detects its concept (the best detector's AUROC at least
``FOUND_AUROC``), **named** when that pattern's first name is the concept or a synonym, **rank** of the concept by
reliance as a user reads the table (``attribute.reliance.concept_rank``: the finding's device, artifact and structural
patterns grouped by name, in the shortcut's direction; 1 is first; "other category" when no pattern of those
categories is named for it).

**False alarms**: patterns the reliance figure flags (``attribute.reliance``) that are no planted shortcut's pattern
and whose concept the films do not tie to the finding. The population's own confounding is judged on the planted
truth of the films the classifier learned from (the training split): a flagged pattern named for a concept that is
more frequent on films with the finding than on films without it, by at least ``POPULATION_Z`` standard errors
(acuity ties tubes to effusion in a hospital too, and a classifier trained on those films may lean on them), is
counted as population confounding, not a false alarm; a flag on a pattern named for no planted concept, or for a
concept the films leave independent of the finding, is a false alarm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lanic_nb.benchmark.counterfactual import counterfactual_effects, planted_effect_rank
from lanic_nb.concepts.vocabulary import load_vocabulary, match_concept
from lanic_nb.evaluation import finding_concept, ground_truth_matrix, load_ground_truth, planted_shortcuts
from lanic_nb.io import write_table
from lanic_nb.rundir import RunDir, load_metrics

FOUND_AUROC = 0.9
"""A planted concept counts as found when its best detecting pattern reaches this AUROC."""
POPULATION_Z = 2.0
"""A concept more frequent with a finding than without it by this many standard errors (two-proportion z) is tied to
the finding by the population (about 2.5% by chance where the two are independent)."""

COLUMNS = ("config", "shortcuts", "recovery", "recovery_of_ceiling", "names_top1", "names_category", "n_shortcuts",
           "found", "named", "ranked_first", "ranks", "true_ranks", "false_alarms", "population_flags")


def population_gap(truth: pd.DataFrame, concept: str, finding: str) -> tuple[float, float]:
    """(P(concept | finding) - P(concept | no finding), its two-proportion z) on a wide truth table (a column per
    concept)."""
    has = truth[finding_concept(finding)].to_numpy(bool)
    c = truth[concept].to_numpy(bool)
    if has.all() or not has.any():
        return float("nan"), float("nan")
    gap = float(c[has].mean() - c[~has].mean())
    p = c.mean()
    se = np.sqrt(p * (1 - p) * (1 / has.sum() + 1 / (~has).sum()))
    return gap, float(gap / se) if se > 0 else 0.0


def _truth_concept(name: str, concepts: list[str], vocab: pd.DataFrame) -> str | None:
    """The phantom concept a pattern's name denotes (None: none of them)."""
    if not name:
        return None
    key = match_concept(name, vocab)
    return next((c for c in concepts if match_concept(c, vocab) == key), None)


def classify_flags(reliance: pd.DataFrame, truth: pd.DataFrame, shortcuts: set[tuple[str, str]],
                   vocab: pd.DataFrame | None = None) -> pd.DataFrame:
    """The flagged rows of a reliance table, each with ``kind``: "shortcut" (named for a planted shortcut's concept,
    on its finding: ``shortcuts`` holds (finding, concept) pairs), "population" (named for a concept the population
    ties to the finding) or "false alarm"."""
    vocab = load_vocabulary() if vocab is None else vocab
    flagged = reliance[reliance["flagged"].astype(bool)].copy()
    kinds, concepts = [], list(truth.columns)
    for r in flagged.itertuples():
        concept = _truth_concept(str(r.name), concepts, vocab)
        if (r.finding, concept) in shortcuts:
            kinds.append("shortcut")
        elif concept is not None and population_gap(truth, concept, r.finding)[1] >= POPULATION_Z:
            kinds.append("population")
        else:
            kinds.append("false alarm")
    return flagged.assign(kind=kinds)


def score_run(run_dir: str | Path, name: str = "", counterfactual: bool = False) -> dict:
    """The suite's row for a finished run (its 04 and 06 metrics, its reliance table and its planted truth).

    ``counterfactual``: also each planted concept's true rank (``benchmark.counterfactual``: by the change of its
    finding's logit when the concept is drawn onto the test films, among the device, artifact and structural
    concepts, in the shortcut's direction), kept in ``<run>/benchmark/counterfactual.parquet``."""
    rd = RunDir(Path(run_dir))
    m4, m6 = load_metrics(rd.root, "04_patterns"), load_metrics(rd.root, "06_attribution")
    checks = m6.get("shortcuts") or ([m6["shortcut"]] if m6.get("shortcut") else [])
    planted = planted_shortcuts(rd.root)
    reliance = pd.read_parquet(rd.attribution / "reliance.parquet")
    gt = load_ground_truth(rd.root)
    manifest = pd.read_parquet(rd.manifest)
    truth = ground_truth_matrix(gt, manifest.loc[manifest["split"] == "train", "image_id"].astype(str).tolist())
    ranks, found, named = [], 0, 0
    for check in checks:
        found += float(check.get("pattern_auroc", 0.0) or 0.0) >= FOUND_AUROC
        named += bool(check.get("shortcut_named"))
        rel = check.get("reliance") or {}
        ranks.append(int(rel.get("concept_rank", rel.get("shortcut_rank", 0)) or 0))
    true_ranks = ""
    if counterfactual and planted:
        effects = _counterfactual_table(rd.root)
        true_ranks = ", ".join(str(planted_effect_rank(effects, p["concept"], p["finding"], p["absent"])[1])
                               for p in planted)
    flags = classify_flags(reliance, truth, {(p["finding"], p["concept"]) for p in planted})
    return {
        "config": name or rd.root.name,
        "shortcuts": "; ".join(f"{p['concept']} -> {'no ' if p['absent'] else ''}{p['finding']}" for p in planted)
        or "none",
        "recovery": m4.get("recovery"), "recovery_of_ceiling": m4.get("recovery_of_hidden_ceiling"),
        "names_top1": m4.get("concept_accuracy"), "names_category": m4.get("category_accuracy"),
        "n_shortcuts": len(checks), "found": found, "named": named,
        "ranked_first": sum(r == 1 for r in ranks), "ranks": ", ".join(str(r) if r else "other category"
                                                                      for r in ranks),
        "true_ranks": true_ranks,
        "false_alarms": int((flags["kind"] == "false alarm").sum()),
        "population_flags": int((flags["kind"] == "population").sum()),
    }


def _counterfactual_table(root: Path) -> pd.DataFrame:
    path = root / "benchmark" / "counterfactual.parquet"
    if path.exists():
        return pd.read_parquet(path)
    table = counterfactual_effects(root)
    write_table(path, table)
    return table


def summary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The mean row and the worst row of the suite's table (worst: the lowest recovery and names, the fewest
    shortcuts found, named and ranked first as a share of those planted, the most false alarms)."""
    num = table.copy()
    for col in ("found", "named", "ranked_first"):
        num[col] = np.where(num["n_shortcuts"] > 0, num[col] / num["n_shortcuts"].clip(lower=1), np.nan)
    mean = {"config": "mean", "shortcuts": ""}
    worst = {"config": "worst", "shortcuts": ""}
    for col in ("recovery", "recovery_of_ceiling", "names_top1", "names_category", "found", "named", "ranked_first"):
        mean[col], worst[col] = num[col].mean(), num[col].min()
    for col in ("false_alarms", "population_flags", "n_shortcuts"):
        mean[col], worst[col] = num[col].mean(), num[col].max()
    mean["ranks"] = worst["ranks"] = mean["true_ranks"] = worst["true_ranks"] = ""
    return pd.DataFrame([mean, worst], columns=list(COLUMNS))

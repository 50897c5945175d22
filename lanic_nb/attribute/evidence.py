"""Where a finding's evidence comes from, by the patterns' own names: the finding itself, or confounders?

A classifier of findings can score well by reading what travels with a finding (the tubes and portable films
of sick patients) instead of the finding. Attribution says which patterns carried each prediction; their
annotation (category and concepts, from the text side of the VLM: no labels, no truth) says what those
patterns are. Per finding, over the images the classifier calls positive, this module reports the share of
the positive pattern evidence that comes from **device and artifact** patterns, and the share from patterns
**named by the finding's own concept** (or one of its synonyms). It works on any run, real data included.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lanic_nb.attribute.core import Attribution, finding_name
from lanic_nb.concepts.vocabulary import load_vocabulary, match_concept, normalize_name

CONFOUNDER_CATEGORIES = ("device", "artifact")


def own_concept_patterns(table: pd.DataFrame, finding: str, vocab: pd.DataFrame | None = None) -> np.ndarray:
    """(n_patterns,) bool: the pattern's first concept names ``finding``: its vocabulary entry or a synonym, or a
    narrower name that holds one of its multi-word forms as whole words ("small pleural effusion", "bilateral
    pleural effusions" for Pleural Effusion; not "pericardial effusion", though "effusion" is a synonym)."""
    vocab = load_vocabulary() if vocab is None else vocab
    target = match_concept(finding, vocab)
    forms = {_singular(normalize_name(finding))}
    if target is not None:
        row = vocab.loc[vocab["concept"] == target]
        forms |= {_singular(normalize_name(target))}
        forms |= {_singular(normalize_name(x)) for syns in row["synonyms"] for x in syns}
    phrases = [f" {f} " for f in forms if " " in f]  # multi-word forms, matched as whole words

    def names_it(name: str) -> bool:
        padded = f" {_singular(normalize_name(name))} "
        return match_concept(name, vocab) == target or any(f in padded for f in phrases)

    names = table["concept_1"].fillna("").astype(str) if "concept_1" in table else pd.Series([""] * len(table))
    return np.array([bool(n) and names_it(n) for n in names])


def _singular(words: str) -> str:
    """Each word without a plural -s ("effusions" -> "effusion"), so narrower names match in either number."""
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words.split())


def evidence_shares(attr: Attribution, table: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per finding: over images with P(finding) >= ``threshold``, the share of positive pattern evidence from
    device/artifact patterns, from the finding's own concept, and from the rest.

    table: the pattern table (patterns.parquet; rows in pattern order, with ``category`` and ``concept_1``).
    Shares are of the summed positive contributions of all patterns on those images.
    """
    n_classes = attr.logits.shape[1]
    if len(table) != attr.contributions.shape[1]:
        raise ValueError(f"pattern table has {len(table)} rows, the attribution {attr.contributions.shape[1]} patterns")
    vocab = load_vocabulary()
    cats = table["category"].fillna("").astype(str).to_numpy() if "category" in table else np.full(len(table), "")
    confounder = torch.from_numpy(np.isin(cats, CONFOUNDER_CATEGORIES))
    probs = torch.sigmoid(attr.logits)
    rows = []
    for c in range(n_classes):
        finding = finding_name(c, n_classes)
        own = torch.from_numpy(own_concept_patterns(table, finding, vocab))
        positive = probs[:, c] >= threshold
        pos = attr.contributions[positive, :, c].clamp_min(0).sum(0)  # (n_patterns,) evidence toward c
        rows.append({"finding": finding, "n_images": int(positive.sum()),
                     "confounder_share": _share(pos, confounder), "own_share": _share(pos, own),
                     "other_share": _share(pos, ~confounder & ~own),
                     "n_own_patterns": int(own.sum()),
                     "top_confounder": _top(pos, confounder, table)})
    return pd.DataFrame(rows)


def _share(pos: torch.Tensor, mask: torch.Tensor) -> float:
    total = float(pos.sum())
    return float(pos[mask].sum()) / total if total > 0 else float("nan")


def _top(pos: torch.Tensor, mask: torch.Tensor, table: pd.DataFrame) -> str:
    """The strongest confounder pattern's name: "pattern 12 (portable film)", or ""."""
    if not bool(mask.any()) or float(pos[mask].max()) <= 0:
        return ""
    p = int(torch.where(mask, pos, torch.full_like(pos, -1.0)).argmax())
    name = str(table["concept_1"].iloc[p]) if "concept_1" in table else ""
    return f"pattern {int(table['pattern_id'].iloc[p]) if 'pattern_id' in table else p} ({name})"

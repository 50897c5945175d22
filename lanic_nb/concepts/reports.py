"""The reports' side of naming: which reports mention a concept, and label-free checks of a unit on real data.

``mention_matrix`` (which reports mention a concept without negation) feeds the reports' contrast of
``lanic_nb.concepts.annotate``; ``report_purity`` (how much a unit's top images' reports agree on one concept)
and ``top_sentences`` (the report sentences that excite a unit most) need no planted truth, so they work on
any dataset with reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lanic_nb.concepts.mining import split_sentences
from lanic_nb.concepts.vocabulary import normalize_name


def top_sentences(activations: np.ndarray, sentences: Sequence[str], k: int = 3) -> list[list[str]]:
    """Per unit, the k sentences (distinct texts) that activate it most; (n_sentences, n_units) in."""
    act = np.asarray(activations)
    out = []
    for u in range(act.shape[1]):
        picked: list[str] = []
        for i in np.argsort(-act[:, u], kind="stable"):
            if act[i, u] <= 0 or len(picked) >= k:
                break
            if sentences[i] not in picked:
                picked.append(sentences[i])
        out.append(picked)
    return out


_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|resolved|cannot|rather than)\b")


def mention_matrix(reports: Sequence[str], vocab: pd.DataFrame) -> np.ndarray:
    """(n_reports, n_concepts) bool: the concept (or a synonym) is mentioned in a sentence without a negation
    or hedge cue. Crude on purpose: it needs no labeler, so it works on any report text."""
    patterns = [
        re.compile(r"\b(" + "|".join(re.escape(normalize_name(t)) for t in (c, *s) if normalize_name(t)) + r")s?\b")
        for c, s in zip(vocab["concept"], vocab["synonyms"], strict=True)
    ]
    out = np.zeros((len(reports), len(vocab)), dtype=bool)
    for i, report in enumerate(reports):
        text = " . ".join(normalize_name(s) for s in split_sentences(report) if not _NEGATION.search(s.lower()))
        for c, pat in enumerate(patterns):
            out[i, c] = bool(pat.search(text))
    return out


def report_purity(activations: np.ndarray, mentions: np.ndarray, k: int = 20, min_firing: int = 5) -> pd.DataFrame:
    """Monosemanticity without planted truth: for each unit, the concept most often (positively) mentioned
    in the reports of its top-k images, and that share ("purity") minus the concept's base rate ("lift").
    Units firing on fewer than ``min_firing`` images get NaN (two images agree by chance too easily)."""
    act = np.asarray(activations)
    base = mentions.mean(axis=0)  # (C,)
    rows = []
    for u in range(act.shape[1]):
        top = np.argsort(-act[:, u], kind="stable")[:k]
        top = top[act[top, u] > 0]
        if len(top) < min(min_firing, k):
            rows.append({"unit": u, "purity_concept": -1, "purity": np.nan, "lift": np.nan})
            continue
        share = mentions[top].mean(axis=0)
        c = int(np.argmax(share - base))
        rows.append({"unit": u, "purity_concept": c, "purity": float(share[c]), "lift": float(share[c] - base[c])})
    return pd.DataFrame(rows, columns=["unit", "purity_concept", "purity", "lift"])

"""Plain-language explanations of a prediction from its top pattern contributions.

The default explanation is a deterministic template: the probability, then the patterns that push the
logit toward the finding and those that push against it, each named by its category and concepts. This
is what the attribution *shows*; it adds no knowledge of its own.

CXR-LanIC planned richer text from a large multimodal model. ``Annotator`` is the seam for that: any
object with an ``annotate`` method of the right signature can be passed to ``explain_prediction``, and
``lanic_nb.explain.annotator.HFAnnotator`` is one on a local Hugging Face image-text-to-text model. None is
called by default and nothing here opens a network connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PatternEvidence:
    """One pattern's part in one prediction."""

    pattern_id: int
    """Pattern id (row of patterns.parquet)."""
    contribution: float
    """Its additive contribution to the finding's logit (signed)."""
    category: str
    """Its category (cardiac, pulmonary, pleural, structural, device, artifact) or "" if unknown."""
    concepts: tuple[str, ...]
    """Its best-matching concepts, best first (may be empty)."""

    def label(self) -> str:
        """E.g. ``pattern 12 (pleural: blunted costophrenic angle, fluid)``."""
        what = ", ".join(self.concepts) if self.concepts else "no concept"
        return f"pattern {self.pattern_id} ({self.category + ': ' if self.category else ''}{what})"


@runtime_checkable
class Annotator(Protocol):
    """Plug-in for richer text, e.g. a multimodal model the user runs themselves.

    ``image_path`` is the image's file (None when unavailable). Return one or more sentences; they are
    appended to the template explanation.
    """

    def annotate(self, finding: str, probability: float, evidence: Sequence[PatternEvidence],
                 image_path: Path | None) -> str: ...


def pattern_info(patterns_table: pd.DataFrame, n_concepts: int = 3) -> dict[int, tuple[str, tuple[str, ...]]]:
    """pattern_id -> (category, concepts) from the pattern table (columns category, concept_1..n)."""
    info = {}
    concept_cols = [c for c in (f"concept_{i}" for i in range(1, n_concepts + 1)) if c in patterns_table]
    for row in patterns_table.itertuples(index=False):
        d = row._asdict()
        cat = d.get("category")
        cat = "" if cat is None or (isinstance(cat, float) and np.isnan(cat)) else str(cat)
        concepts = tuple(str(d[c]) for c in concept_cols if isinstance(d[c], str) and d[c])
        info[int(d["pattern_id"])] = (cat, concepts)
    return info


def top_evidence(contributions: np.ndarray, info: dict[int, tuple[str, tuple[str, ...]]],
                 pattern_ids: np.ndarray | None = None, n: int = 6) -> list[PatternEvidence]:
    """The ``n`` largest |contributions| (n_patterns,) of one image and finding, largest first."""
    c = np.asarray(contributions, dtype=np.float64)
    ids = np.arange(len(c)) if pattern_ids is None else np.asarray(pattern_ids)
    order = np.argsort(-np.abs(c), kind="stable")[:n]
    out = []
    for j in order:
        if c[j] == 0:
            break
        cat, concepts = info.get(int(ids[j]), ("", ()))
        out.append(PatternEvidence(int(ids[j]), float(c[j]), cat, concepts))
    return out


def signed(v: float) -> str:
    """A signed number that stays informative when small: +1.25, -0.03, +4.2e-04."""
    return f"{v:+.2f}" if v == 0 or abs(v) >= 0.01 else f"{v:+.1e}"


def likelihood(p: float) -> str:
    """The probability in words: likely present, possibly present, probably absent or likely absent."""
    if p >= 0.8:
        return "likely present"
    if p >= 0.5:
        return "possibly present"
    if p >= 0.2:
        return "probably absent"
    return "likely absent"


def explain_prediction(
    finding: str,
    probability: float,
    evidence: Sequence[PatternEvidence],
    total_abs: float | None = None,
    error: float | None = None,
    annotator: Annotator | None = None,
    image_path: Path | None = None,
) -> str:
    """A short paragraph: probability, patterns pushing toward / against, their share of the evidence.

    ``total_abs`` is the sum of |contribution| over all patterns (for the share sentence); ``error`` the
    reconstruction-error term of the logit (mentioned when it is large compared with the top pattern).
    """
    parts = [f"{finding}: probability {probability:.2f} ({likelihood(probability)})."]
    pro = [e for e in evidence if e.contribution > 0]
    con = [e for e in evidence if e.contribution < 0]
    if pro:
        parts.append("Pushing toward it: " + "; ".join(f"{e.label()} {signed(e.contribution)}" for e in pro) + ".")
    if con:
        parts.append("Pushing against it: " + "; ".join(f"{e.label()} {signed(e.contribution)}" for e in con) + ".")
    if not evidence:
        parts.append("No pattern is active on this image.")
    if total_abs and total_abs > 0 and evidence:
        share = sum(abs(e.contribution) for e in evidence) / total_abs
        parts.append(f"These {len(evidence)} patterns carry {100 * share:.0f}% of the patterns' total evidence.")
    if error is not None and evidence and abs(error) > abs(evidence[0].contribution):
        parts.append(f"The transcoders' reconstruction error adds {signed(error)}, more than any single pattern: "
                     "read this explanation with care.")
    if annotator is not None:
        parts.append(annotator.annotate(finding, probability, list(evidence), image_path).strip())
    return " ".join(parts)

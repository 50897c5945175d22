"""What each finding leans on: how much a pattern lifts a finding's logit on films without the finding.

A pattern that is a finding's own evidence stays quiet on films without the finding; a pattern of something
that travels with the finding (a tube, a portable marker) fires on such films as often as on the others, and if
the classifier learned the shortcut, it lifts the finding's logit there. So the **reliance** of finding F on
pattern P is measured on the films whose labels say F is absent (label 0): P's mean contribution to F's logit on
the quarter of them where P fires most, minus the same on the half where it fires least (logit units), with a
bootstrap band over the films. Nothing here reads planted truth: labels, the decomposition and the patterns'
categories are what a real run has too.

A concept that follows a finding's **absence** (a collimated film drawn where the finding is not) lowers the logit
instead; its mirror is measured on the films whose labels say F is present (label 1), where the finding's own
evidence is there and its own signs of absence are quiet: **lowering** is minus the same lift on those films, with
its band. Orderings in that direction (``direction=-1``) read it.

A device or artifact pattern is **flagged** for a finding when it stands out among the device and artifact
patterns: the largest reliance, with the lower end of its band above zero and above the upper end of the
runner-up's band. Patterns of other categories are ranked but never flagged: a finding that travels with
another finding (edema with effusion) is the population's own confounding, not a shortcut.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd
import torch

from lanic_nb.attribute.core import Attribution, finding_name
from lanic_nb.attribute.evidence import CONFOUNDER_CATEGORIES

COLUMNS = ("finding", "pattern", "pattern_id", "name", "category", "reliance", "lo", "hi", "rank", "confounder_rank",
           "flagged", "n_films", "lowering", "lowering_lo", "lowering_hi", "n_films_with")


def reliance_lift(contributions: np.ndarray, activations: np.ndarray, weights: np.ndarray | None = None,
                  high: float = 0.25, low: float = 0.5) -> np.ndarray:
    """Per pattern: mean contribution over the ``high`` share of films where it fires most, minus the mean over
    the ``low`` share where it fires least  # (P,) or (B, P).

    contributions, activations: (m, P) for one finding's logit on m films. ``weights`` (B, m): film counts of B
    bootstrap resamples (the groups are fixed by the full sample; each resample reweights the films).
    """
    m = contributions.shape[0]
    order = np.argsort(activations, axis=0, kind="stable")  # ascending per pattern
    n_hi, n_lo = max(1, int(round(high * m))), max(1, int(round(low * m)))
    hi = np.zeros(contributions.shape, bool)
    lo = np.zeros(contributions.shape, bool)
    np.put_along_axis(hi, order[m - n_hi:], True, axis=0)
    np.put_along_axis(lo, order[:n_lo], True, axis=0)
    w = np.ones((1, m)) if weights is None else np.asarray(weights, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w @ (contributions * hi)) / (w @ hi) - (w @ (contributions * lo)) / (w @ lo)
    return out[0] if weights is None else out


def reliance_table(attr: Attribution, labels: np.ndarray, table: pd.DataFrame, *, n_boot: int = 200,
                   level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per (finding, pattern): the reliance of the finding on the pattern (module docstring), with its band.

    attr: the decomposition of the films (n, P, C); labels: (n, C) report labels (1 / 0 / -1 uncertain / NaN; only
    0 counts as without the finding); table: the pattern table (rows in pattern order, with ``category`` and
    ``concept_1``). Columns: finding, pattern (row of the table), pattern_id, name, category, reliance, lo, hi (the
    ``level`` band of ``n_boot`` bootstrap resamples of the films), rank (1 = largest reliance for the finding),
    confounder_rank (the same among device and artifact patterns; 0 for the others), flagged, n_films; then
    lowering, lowering_lo, lowering_hi, n_films_with (the lowering on the films with the finding and its band; NaN
    where fewer than 4 films have it). Sorted by finding, then reliance, largest first.
    """
    n, n_patterns, n_classes = attr.contributions.shape
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (n, n_classes):
        raise ValueError(f"labels have shape {labels.shape}, the attribution {(n, n_classes)}")
    if len(table) != n_patterns:
        raise ValueError(f"pattern table has {len(table)} rows, the attribution {n_patterns} patterns")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    cats = _column(table, "category", n_patterns)
    names = _column(table, "concept_1", n_patterns)
    ids = table["pattern_id"].to_numpy() if "pattern_id" in table else np.arange(n_patterns)
    confounder = np.isin(cats, CONFOUNDER_CATEGORIES)
    activations = attr.activations.double().numpy()
    rng, rng_with = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    frames = []
    for c in range(n_classes):
        rows = np.flatnonzero(labels[:, c] == 0)
        if len(rows) < 4 or n_patterns == 0:  # a quarter and a half of the films must differ
            continue
        lift, band = _lift_and_band(attr, activations, rows, c, 1, rng, n_boot, quantiles)
        frame = _ranked(finding_name(c, n_classes), lift, band, confounder, names, cats, ids, len(rows))
        with_rows = np.flatnonzero(labels[:, c] == 1)
        if len(with_rows) >= 4:
            low, low_band = _lift_and_band(attr, activations, with_rows, c, -1, rng_with, n_boot, quantiles)
        else:
            low, low_band = np.full(n_patterns, np.nan), np.full((2, n_patterns), np.nan)
        frames.append(frame.assign(lowering=low, lowering_lo=low_band[0], lowering_hi=low_band[1],
                                   n_films_with=len(with_rows)))
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["finding", "reliance"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _lift_and_band(attr: Attribution, activations: np.ndarray, rows: np.ndarray, c: int, sign: int,
                   rng: np.random.Generator, n_boot: int, quantiles: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """``sign`` times the lift of finding ``c``'s logit on ``rows``, and its bootstrap band (2, P)."""
    contrib = sign * attr.contributions[torch.from_numpy(rows), :, c].double().numpy()  # (m, P)
    act = activations[rows]
    counts = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=n_boot)  # (B, m)
    return reliance_lift(contrib, act), np.nanquantile(reliance_lift(contrib, act, counts), quantiles, axis=0)


def _column(table: pd.DataFrame, name: str, n: int) -> np.ndarray:
    return table[name].fillna("").astype(str).to_numpy() if name in table else np.full(n, "")


def _ranked(finding: str, lift: np.ndarray, band: np.ndarray, confounder: np.ndarray, names: np.ndarray,
            cats: np.ndarray, ids: np.ndarray, n_films: int) -> pd.DataFrame:
    n_patterns = len(lift)
    order = np.argsort(-np.nan_to_num(lift, nan=-np.inf), kind="stable")
    rank = np.empty(n_patterns, int)
    rank[order] = np.arange(1, n_patterns + 1)
    conf_order = [int(p) for p in order if confounder[p]]
    conf_rank = np.zeros(n_patterns, int)
    conf_rank[conf_order] = np.arange(1, len(conf_order) + 1)
    flagged = np.zeros(n_patterns, bool)
    if conf_order:
        first = conf_order[0]
        runner_up_hi = band[1, conf_order[1]] if len(conf_order) > 1 else -np.inf
        flagged[first] = bool(band[0, first] > max(0.0, runner_up_hi))
    return pd.DataFrame({"finding": finding, "pattern": np.arange(n_patterns), "pattern_id": ids, "name": names,
                         "category": cats, "reliance": lift, "lo": band[0], "hi": band[1], "rank": rank,
                         "confounder_rank": conf_rank, "flagged": flagged, "n_films": n_films})


SHORTCUT_CATEGORIES: tuple[str, ...] = (*CONFOUNDER_CATEGORIES, "structural")
"""The categories a planted shortcut can be named into (not a finding's own cardiac, pulmonary or pleural)."""


def shortcut_rank(reliance: pd.DataFrame, finding: str, pattern: int, direction: int = 1,
                  categories: tuple[str, ...] = SHORTCUT_CATEGORIES) -> int:
    """Where ``pattern`` stands among ``finding``'s patterns of ``categories`` in ``direction`` (1: by reliance, what
    lifts the finding; -1: by lowering, as a concept that follows the finding's absence does), largest first; 0
    when the pattern is not of those categories."""
    order = _ordered(reliance, finding, direction, categories)
    if pattern not in set(order["pattern"]):
        return 0
    return int(np.flatnonzero(order["pattern"].to_numpy() == pattern)[0]) + 1


def _ordered(reliance: pd.DataFrame, finding: str, direction: int, categories: tuple[str, ...]) -> pd.DataFrame:
    """``finding``'s rows of ``categories``, strongest in ``direction`` first: reliance for 1, lowering for -1 (minus
    reliance for a table without that column); NaN last."""
    g = reliance[(reliance["finding"] == finding) & reliance["category"].isin(categories)]
    if direction < 0 and "lowering" in g:
        key = g["lowering"].astype(float).to_numpy()
    else:
        key = np.sign(direction) * g["reliance"].astype(float).to_numpy()
    return g.iloc[np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")]


def by_name(reliance: pd.DataFrame, finding: str, direction: int = 1,
            categories: tuple[str, ...] = SHORTCUT_CATEGORIES) -> pd.DataFrame:
    """``finding``'s rows of ``categories`` read by name, as a user reads the table: each name keeps its best pattern
    in ``direction`` (``_ordered``), names ordered best first, ranked from 1 (the index)."""
    out = _ordered(reliance, finding, direction, categories).drop_duplicates("name", keep="first")
    out = out.reset_index(drop=True)
    out.index += 1
    return out


def concept_rank(reliance: pd.DataFrame, finding: str, names: Collection[str], direction: int = 1,
                 categories: tuple[str, ...] = SHORTCUT_CATEGORIES) -> tuple[int, int | None]:
    """Where a concept stands among what ``finding`` leans on, read by name (``by_name``: several patterns may
    carry one concept; each name keeps its best pattern): (the rank of the best name in ``names``, the pattern that
    carries it), or (0, None) when no pattern of ``categories`` has such a name."""
    best = by_name(reliance, finding, direction, categories)
    hits = best.index[best["name"].isin(list(names)).to_numpy()]
    if not len(hits):
        return 0, None
    return int(hits[0]), int(best.loc[hits[0], "pattern"])


def leans_on(reliance: pd.DataFrame) -> dict[str, dict]:
    """Per finding: its flagged pattern (or None) and its top device or artifact pattern, as plain dicts."""
    out: dict[str, dict] = {}
    for finding, g in reliance.groupby("finding", sort=True):
        top = g[g["confounder_rank"] == 1]
        entry = [_entry(r) for r in top.itertuples()]
        out[str(finding)] = {"top_confounder": entry[0] if entry else None,
                             "flagged": entry[0] if entry and bool(top["flagged"].iloc[0]) else None}
    return out


def _entry(r) -> dict:
    return {"pattern_id": int(r.pattern_id), "name": str(r.name), "category": str(r.category),
            "reliance": float(r.reliance), "lo": float(r.lo), "hi": float(r.hi)}

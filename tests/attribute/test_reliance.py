"""What each finding leans on: the reliance table against a plain reference and on a planted shortcut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lanic_nb.attribute.core import Attribution
from lanic_nb.attribute.reliance import by_name, concept_rank, leans_on, reliance_lift, reliance_table, shortcut_rank


def _plain_lift(contrib: np.ndarray, act: np.ndarray, high: float = 0.25, low: float = 0.5) -> np.ndarray:
    """One pattern at a time, with sorted lists: the mean over the films where it fires most minus least."""
    m = len(act)
    out = []
    for p in range(act.shape[1]):
        order = sorted(range(m), key=lambda i: (act[i, p], i))
        top = order[m - max(1, round(high * m)):]
        bottom = order[: max(1, round(low * m))]
        out.append(np.mean([contrib[i, p] for i in top]) - np.mean([contrib[i, p] for i in bottom]))
    return np.array(out)


def _world(n: int = 400, seed: int = 0, shortcut: bool = True):
    """Two findings ("0" and "1": finding_name of a two-class head), four patterns: 0 a portable marker (artifact)
    that lifts finding 0's logit wherever it is drawn, 1 a tube (device) the classifier ignores, 2 finding 0's own
    pattern (pulmonary), active only with the finding, 3 a grid (artifact) with a small push on finding 1. Without
    ``shortcut`` neither the marker nor the grid push."""
    rng = np.random.default_rng(seed)
    has = rng.random((n, 2)) < 0.3
    marker = rng.random(n) < np.where(has[:, 0], 0.8, 0.3)
    tube = rng.random(n) < 0.4
    grid = rng.random(n) < 0.5
    act = np.stack([marker * rng.uniform(0.5, 1.5, n), tube * rng.uniform(0.5, 1.5, n),
                    has[:, 0] * rng.uniform(0.5, 1.5, n), grid * rng.uniform(0.5, 1.5, n)], 1)
    push = 1.0 if shortcut else 0.0
    effect = np.array([[push, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.1 * push]])
    contributions = act[:, :, None] * effect[None] + rng.normal(0, 0.02, (n, 4, 2))
    contributions = torch.from_numpy(contributions)
    other, error = torch.zeros(n, 2, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64)
    bias = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    attr = Attribution(contributions, other, bias, error, contributions.sum(1) + bias, torch.from_numpy(act))
    labels = has.astype(float)
    labels[rng.random((n, 2)) < 0.05] = np.nan  # unlabelled films are left out
    table = pd.DataFrame({"pattern_id": np.arange(4), "category": ["artifact", "device", "pulmonary", "artifact"],
                          "concept_1": ["portable film", "tube", "consolidation", "grid lines"]})
    return attr, labels, table


def test_lift_matches_a_plain_reference_and_resamples_match_explicit_ones():
    rng = np.random.default_rng(1)
    contrib, act = rng.normal(size=(37, 5)), rng.random((37, 5))
    act[:, 2] = 0.0  # a pattern silent on every film: ties everywhere
    np.testing.assert_allclose(reliance_lift(contrib, act), _plain_lift(contrib, act), atol=1e-12)
    counts = rng.multinomial(37, np.full(37, 1 / 37), size=4)
    fast = reliance_lift(contrib, act, counts)
    order = np.argsort(act, axis=0, kind="stable")
    for b, w in enumerate(counts):  # an explicit resample: repeat each film by its count, groups from the full sample
        for p in range(5):
            top, bottom = order[37 - round(0.25 * 37):, p], order[: round(0.5 * 37), p]
            hi = np.repeat(contrib[top, p], w[top])
            lo = np.repeat(contrib[bottom, p], w[bottom])
            expected = (hi.mean() if len(hi) else np.nan) - (lo.mean() if len(lo) else np.nan)
            np.testing.assert_allclose(fast[b, p], expected, atol=1e-12)


def test_the_planted_shortcut_is_flagged_and_its_own_pattern_is_not():
    attr, labels, table = _world()
    rel = reliance_table(attr, labels, table, n_boot=100)
    f0 = rel[rel.finding == "0"].set_index("pattern")
    assert f0.loc[0, "confounder_rank"] == 1 and bool(f0.loc[0, "flagged"])
    assert f0.loc[0, "lo"] <= f0.loc[0, "reliance"] <= f0.loc[0, "hi"]
    assert f0.loc[0, "reliance"] == pytest.approx(1.0, abs=0.15)  # the marker's mean activation where it is drawn
    assert abs(f0.loc[2, "reliance"]) < 0.05  # the finding's own pattern is silent without the finding
    assert f0.loc[2, "confounder_rank"] == 0 and not f0["flagged"].drop(0).any()
    assert f0["n_films"].iloc[0] == int((labels[:, 0] == 0).sum())
    # The grid's push on finding 1 is ten times smaller, and still real: the band decides, not a threshold.
    lean = leans_on(rel)
    assert lean["0"]["flagged"]["name"] == "portable film"
    assert lean["1"]["flagged"]["name"] == "grid lines"
    assert lean["1"]["flagged"]["reliance"] == pytest.approx(0.1, abs=0.03)


def test_no_shortcut_flags_nothing():
    attr, labels, table = _world(shortcut=False, seed=3)
    rel = reliance_table(attr, labels, table, n_boot=100)
    assert not rel["flagged"].any()


def test_reliance_checks_its_inputs():
    attr, labels, table = _world(n=40)
    with pytest.raises(ValueError, match="labels have shape"):
        reliance_table(attr, labels[:, :1], table)
    with pytest.raises(ValueError, match="pattern table has 3 rows"):
        reliance_table(attr, labels, table.iloc[:3])
    assert reliance_table(attr, np.ones_like(labels), table).empty  # no film without a finding
    none = attr._replace(contributions=attr.contributions[:, :0], activations=attr.activations[:, :0])
    assert reliance_table(none, labels, table.iloc[:0]).empty  # a run without patterns


def test_shortcut_rank_in_the_shortcuts_direction_and_categories():
    rel = pd.DataFrame({"finding": ["F"] * 5 + ["G"], "pattern": [0, 1, 2, 3, 4, 0],
                        "category": ["artifact", "device", "structural", "pulmonary", "artifact", "artifact"],
                        "reliance": [0.3, 0.5, -0.4, 0.9, -0.1, 0.0]})
    assert shortcut_rank(rel, "F", 1) == 1 and shortcut_rank(rel, "F", 0) == 2
    assert shortcut_rank(rel, "F", 2) == 4  # the most negative: last when the shortcut lifts
    assert shortcut_rank(rel, "F", 2, direction=-1) == 1  # ... and first when it follows the finding's absence
    assert shortcut_rank(rel, "F", 3) == 0  # a finding's own category is not ranked
    assert shortcut_rank(rel, "G", 0) == 1 and shortcut_rank(rel, "G", 1) == 0
    assert shortcut_rank(rel, "F", 2, categories=("artifact", "device")) == 0


def test_concept_rank_reads_names_as_a_user_does():
    """Several patterns may carry one concept: names are ranked by their best pattern, so a concept is first when any
    of its patterns leads, and its rank counts the other names above it, not their patterns."""
    rel = pd.DataFrame({"finding": ["F"] * 6,
                        "pattern": [0, 1, 2, 3, 4, 5],
                        "name": ["marker", "tube", "tube", "marker", "lungs", "grid"],
                        "category": ["artifact", "device", "device", "artifact", "pulmonary", "artifact"],
                        "reliance": [0.05, 0.4, 0.3, 0.5, 0.9, -0.6]})
    table = by_name(rel, "F")
    assert table["name"].tolist() == ["marker", "tube", "grid"] and table.index.tolist() == [1, 2, 3]
    assert table["pattern"].tolist() == [3, 1, 5] and by_name(rel, "F", direction=-1)["name"].iloc[0] == "grid"
    assert concept_rank(rel, "F", {"marker"}) == (1, 3)  # pattern 3 leads, though pattern 0 is third
    assert concept_rank(rel, "F", {"tube"}) == (2, 1)  # one name above it, however many of its patterns
    assert shortcut_rank(rel, "F", 0) == 4  # by pattern, the weaker marker pattern stands behind both tubes
    assert concept_rank(rel, "F", {"grid"}) == (3, 5) and concept_rank(rel, "F", {"grid"}, direction=-1) == (1, 5)
    assert concept_rank(rel, "F", {"lungs"}) == (0, None)  # a finding's own category is not ranked
    assert concept_rank(rel, "F", set()) == (0, None) and concept_rank(rel, "G", {"marker"}) == (0, None)


def test_lowering_is_the_mirror_on_films_with_the_finding():
    """A concept drawn where finding 0 is absent (collimation) and lowering its logit: measured on the films that have
    the finding, it leads in the lowering direction; the column equals a plain reference on those films."""
    rng = np.random.default_rng(5)
    n = 400
    has = rng.random(n) < 0.3
    collimation = rng.random(n) < np.where(has, 0.3, 0.6)
    tube = rng.random(n) < 0.4
    act = np.stack([collimation * rng.uniform(0.5, 1.5, n), tube * rng.uniform(0.5, 1.5, n),
                    has * rng.uniform(0.5, 1.5, n)], 1)
    effect = np.array([[-1.0], [0.05], [2.0]])
    contributions = torch.from_numpy(act[:, :, None] * effect[None] + rng.normal(0, 0.02, (n, 3, 1)))
    zeros = torch.zeros(n, 1, dtype=torch.float64)
    attr = Attribution(contributions, zeros, torch.zeros(1, dtype=torch.float64), zeros, contributions.sum(1),
                       torch.from_numpy(act))
    labels = has[:, None].astype(float)
    table = pd.DataFrame({"pattern_id": np.arange(3), "category": ["artifact", "device", "pulmonary"],
                          "concept_1": ["collimation", "tube", "consolidation"]})
    rel = reliance_table(attr, labels, table, n_boot=100).set_index("pattern")
    with_rows = np.flatnonzero(has)
    reference = -_plain_lift(contributions[with_rows, :, 0].numpy(), act[with_rows])
    np.testing.assert_allclose(rel.loc[[0, 1, 2], "lowering"].to_numpy(), reference, atol=1e-12)
    assert rel.loc[0, "lowering"] == pytest.approx(1.0, abs=0.15)
    assert rel.loc[0, "lowering_lo"] <= rel.loc[0, "lowering"] <= rel.loc[0, "lowering_hi"]
    assert (rel["n_films_with"] == has.sum()).all()
    reset = rel.reset_index()
    assert concept_rank(reset, "0", {"collimation"}, direction=-1) == (1, 0)
    assert concept_rank(reset, "0", {"collimation"}) == (2, 0)  # it lifts nothing
    few = labels.copy()
    few[with_rows[3:], 0] = np.nan  # three films with the finding: no lowering
    assert reliance_table(attr, few, table, n_boot=10)["lowering"].isna().all()


def test_a_planted_concept_is_ranked_among_patterns_of_its_kind():
    from lanic_nb.attribute.stage import rank_categories
    from lanic_nb.concepts.vocabulary import load_vocabulary

    vocab = load_vocabulary()
    assert set(rank_categories("portable_marker", vocab)) == {"device", "artifact"}
    assert set(rank_categories("central_venous_catheter", vocab)) == {"device", "artifact"}
    assert set(rank_categories("scoliosis", vocab)) == {"device", "artifact", "structural"}

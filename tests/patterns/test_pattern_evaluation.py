"""Evaluation of unit sets against planted truth (patterns.evaluate): recovery, accuracy, probes, per concept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lanic_nb.concepts.annotate import annotate_units
from lanic_nb.concepts.vocabulary import load_vocabulary
from lanic_nb.io import write_table
from lanic_nb.metrics import auroc_matrix, probe_aurocs
from lanic_nb.patterns.evaluate import (
    RECOVERY_CSV,
    best_concepts,
    evaluate_unit_sets,
    headline_metrics,
    recovery_by_concept,
    summarize_units,
)
from lanic_nb.rundir import RunDir


def test_auroc_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    act = rng.random((60, 4))
    act[:, 2] = np.round(act[:, 2], 1)  # ties
    y = rng.random((60, 3)) < 0.3
    auc = auroc_matrix(act, y)
    for u in range(4):
        for k in range(3):
            assert auc[u, k] == pytest.approx(roc_auc_score(y[:, k], act[:, u]))
    y[:, 1] = False
    assert np.isnan(auroc_matrix(act, y)[:, 1]).all()


def test_summarize_units_recovery_and_accuracy():
    vocab = load_vocabulary()
    concepts = ["pleural_effusion", "pacemaker", "scoliosis"]
    cats = {"pleural_effusion": "pleural", "pacemaker": "device", "scoliosis": "structural"}
    auc = np.array([[0.99, 0.5, 0.5], [0.5, 0.97, 0.6], [0.6, 0.55, 0.7]])  # scoliosis not recovered
    ann = pd.DataFrame({"unit": [0, 1, 2], "concept_1": ["pleural effusion", "chest tube", "scoliosis"],
                        "category": ["pleural", "device", "structural"]})
    s = summarize_units(auc, concepts, cats, ann, vocab)
    assert s["recovery"] == pytest.approx(2 / 3)
    assert s["n_monosemantic"] == 2
    assert s["category_accuracy"] == 1.0 and s["concept_accuracy"] == 0.5
    best = best_concepts(auc, concepts)
    assert list(best["best_concept"]) == concepts and best.loc[1, "margin"] == pytest.approx(0.37)


def test_evaluate_unit_sets_reads_truth_and_writes_table(tmp_path):
    vocab = load_vocabulary()
    ids = [f"im{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    present = {"pacemaker": rng.random(40) < 0.3, "scoliosis": rng.random(40) < 0.4}
    ann = pd.DataFrame({"unit": [0, 1], "concept_1": ["pacemaker", "rib fracture"], "category": ["device", "device"]})
    act = np.stack([present["pacemaker"] * 2.0, rng.random(40)], axis=1)
    table, _ = evaluate_unit_sets(tmp_path, ids, {"ensemble patterns": (act, ann)}, vocab)
    assert table.empty and not (RunDir(tmp_path).patterns / "evaluation.csv").exists()  # no truth: real data
    gt = pd.DataFrame([{"image_id": i, "concept": c, "category": {"pacemaker": "device", "scoliosis": "structural"}[c],
                        "present": bool(present[c][k]), "side": "", "severity": 0.0}
                       for k, i in enumerate(ids) for c in present])
    write_table(RunDir(tmp_path).ground_truth, gt)
    table, per_unit = evaluate_unit_sets(tmp_path, ids, {"ensemble patterns": (act, ann)}, vocab)
    assert (RunDir(tmp_path).patterns / "evaluation.csv").exists()
    m = headline_metrics(table)
    assert m["recovery"] == 0.5 and m["category_accuracy"] == 1.0 and m["concept_accuracy"] == 1.0
    units = per_unit["ensemble patterns"]
    assert units.loc[0, "best_concept"] == "pacemaker" and units.loc[0, "name_right"] and units.loc[0, "category_right"]
    # "rib fracture" names neither planted concept; its category (device) is pacemaker's, not scoliosis'
    assert not units.loc[1, "name_right"]
    assert units.loc[1, "category_right"] == (units.loc[1, "best_concept"] == "pacemaker")


def test_probe_is_fitted_on_train_rows_and_scored_on_test_rows():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 3))
    train = np.arange(400) < 300
    y = np.where(train, f[:, 0] > 0, f[:, 0] < 0)[:, None]  # the test rows follow the opposite rule
    auc = probe_aurocs(f, y, train, ~train)
    assert auc[0] < 0.05  # a probe fitted on every row would sit near 0.5
    one_class = probe_aurocs(f, np.zeros((400, 1), bool), train, ~train)
    assert np.isnan(one_class[0])


def test_recovery_by_concept_separates_lost_in_units_from_absent_in_representation(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    ids = [f"im{i}" for i in range(n)]
    split = np.where(np.arange(n) < 200, "train", "test")
    present = {"pacemaker": rng.random(n) < 0.3, "scoliosis": rng.random(n) < 0.3, "collimation": rng.random(n) < 0.3}
    # The representation carries pacemaker and collimation (spread over two dims each), not scoliosis.
    emb = rng.normal(size=(n, 6)) * 0.3
    emb[:, 0] += present["pacemaker"]
    emb[:, 1] += present["pacemaker"]
    emb[:, 2] += present["collimation"]
    emb[:, 3] -= present["collimation"]
    # The units find pacemaker only: collimation is in reach but lost by the units.
    units = {"ensemble patterns": np.stack([present["pacemaker"] + 0.1 * rng.random(n), rng.random(n)], axis=1),
             "embedding dims": emb}
    t = recovery_by_concept(tmp_path, ids, split, units, {"embedding": emb})
    assert t.empty and not (RunDir(tmp_path).patterns / RECOVERY_CSV).exists()  # no truth: real data
    cats = {"pacemaker": "device", "scoliosis": "structural", "collimation": "artifact"}
    gt = pd.DataFrame([{"image_id": i, "concept": c, "category": cats[c], "present": bool(present[c][k]),
                        "side": "", "severity": 0.0} for k, i in enumerate(ids) for c in present])
    write_table(RunDir(tmp_path).ground_truth, gt)
    t = recovery_by_concept(tmp_path, ids, split, units, {"embedding": emb}).set_index("concept")
    assert (RunDir(tmp_path).patterns / RECOVERY_CSV).exists()
    assert t.loc["pacemaker", "recovered"] and t.loc["pacemaker", "in_reach"]
    assert t.loc["collimation", "in_reach"] and not t.loc["collimation", "recovered"]
    assert not t.loc["scoliosis", "in_reach"] and t.loc["scoliosis", "probe_embedding"] < 0.8
    assert t.loc["collimation", "probe_embedding"] > 0.95 and t.loc["collimation", "best_ensemble_patterns"] < 0.7
    assert t.loc["collimation", "category"] == "artifact"
    assert t.loc["pacemaker", "prevalence"] == pytest.approx(present["pacemaker"].mean())


def test_zero_units_summarize_to_nothing_recovered():
    vocab = load_vocabulary()
    auc = auroc_matrix(np.zeros((10, 0)), np.arange(10)[:, None] < 5)
    s = summarize_units(auc, ["pacemaker"], {"pacemaker": "device"},
                        annotate_units(np.zeros((10, 0)), np.zeros((10, 3)), vocab.head(3)), vocab)
    assert s["n_units"] == 0 and s["recovery"] == 0.0 and s["n_monosemantic"] == 0


def test_category_agreement_counts_every_unit():
    vocab = load_vocabulary()
    auc = np.array([[0.7, 0.6], [0.55, 0.65]])  # no unit reaches 0.9, yet each has a best concept
    ann = pd.DataFrame({"unit": [0, 1], "concept_1": ["pacemaker", "pacemaker"], "category": ["device", "device"]})
    s = summarize_units(auc, ["pacemaker", "scoliosis"], {"pacemaker": "device", "scoliosis": "structural"}, ann, vocab)
    assert np.isnan(s["category_accuracy"]) and s["category_agreement"] == 0.5


def test_gallery_purity_counts_sub_patterns_and_confounded_names():
    """A unit firing on the strongest half of a concept's images has a pure gallery but an AUROC near 0.75; a unit
    on a marker that rides on a finding has both in its gallery (either name is true of it); a unit on a concept
    most images carry is not pure (no lift); a unit on random images is not."""
    from lanic_nb.patterns.evaluate import gallery_purity, summarize_galleries

    rng = np.random.default_rng(2)
    n = 400
    finding = rng.random(n) < 0.25
    marker = finding & (rng.random(n) < 0.8)
    common = rng.random(n) < 0.7
    severity = rng.random(n)
    y = np.column_stack([finding, marker, common])
    act = np.column_stack([finding * (severity > 0.5) * (1 + severity), marker * (1 + rng.random(n)),
                           common * (1 + rng.random(n)), rng.random(n) * (rng.random(n) < 0.3)])
    concepts = ["pleural_effusion", "portable_marker", "laterality_marker"]
    gal = gallery_purity(act, y, concepts)
    assert auroc_matrix(act, y)[0, 0] < 0.9  # not "monosemantic" by AUROC ...
    assert gal.loc[0, "pure_concepts"] == ["pleural_effusion"] and gal.loc[0, "purity"] == 1.0  # ... but pure
    assert sorted(gal.loc[1, "pure_concepts"]) == ["pleural_effusion", "portable_marker"]
    assert gal.loc[2, "pure_concepts"] == [] and gal.loc[3, "pure_concepts"] == []
    cats = {"pleural_effusion": "pleural", "portable_marker": "artifact", "laterality_marker": "artifact"}
    ann = pd.DataFrame({"unit": [0, 1, 2, 3], "concept_1": ["edema", "portable film", "laterality marker", "edema"],
                        "category": ["pleural", "artifact", "artifact", "pulmonary"]})
    s = summarize_galleries(gal, cats, ann, load_vocabulary())
    assert s["n_gallery_pure"] == 2
    assert s["concept_accuracy_gallery"] == 0.5 and s["category_accuracy_gallery"] == 1.0

"""Concept vocabulary, report mining, mask-free annotation, and the evaluation-only ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lanic_nb.concepts.annotate import (
    CATEGORIES,
    AnnotationConfig,
    annotate_units,
    concept_similarity,
    embed_concepts,
    extend_vocabulary,
    infer_category,
    load_text_encoder,
    load_vocabulary,
    match_concept,
    mention_matrix,
    mine_noun_phrases,
    prompt_names,
    read_iu_reports,
    report_purity,
    representative_images,
    top_sentences,
)
from lanic_nb.metrics import auroc_matrix
from lanic_nb.patterns.evaluate import best_concepts, summarize_units
from lanic_nb.phantom.generate import CONCEPTS


def test_vocabulary_covers_six_categories_with_synonyms():
    vocab = load_vocabulary()
    assert len(vocab) >= 150
    counts = vocab["category"].value_counts()
    assert set(counts.index) == set(CATEGORIES) and counts.min() >= 15
    assert (vocab["synonyms"].map(len) > 0).mean() > 0.9


def test_every_phantom_concept_maps_to_a_vocabulary_entry_of_its_category():
    vocab = load_vocabulary().set_index("concept")
    for name, concept in CONCEPTS.items():
        entry = match_concept(name, vocab.reset_index())
        assert entry is not None, name
        assert vocab.loc[entry, "category"] == concept.category, (name, entry)


def test_miner_finds_known_phrases():
    reports = [
        "FINDINGS: Small left pleural effusion. No pneumothorax. The cardiac silhouette is enlarged.",
        "Moderate right pleural effusion with adjacent atelectasis. Sternotomy wires are intact.",
        "No pleural effusion or pneumothorax. Normal cardiac silhouette. Sternotomy wires noted.",
        "Pleural effusions are seen bilaterally. Endotracheal tube terminates above the carina.",
    ]
    mined = mine_noun_phrases(reports, min_count=2)
    found = dict(zip(mined["phrase"], mined["count"], strict=True))
    assert found["pleural effusion"] == 4  # plural folded, once per report
    assert found["pneumothorax"] == 2 and found["cardiac silhouette"] == 2 and found["sternotomy wires"] == 2
    for junk in ("small", "left pleural effusion", "no", "pleural", "enlarged", "effusion left"):
        assert junk not in found


def test_miner_on_real_indiana_reports():
    pytest.importorskip("torchxrayvision")
    reports = read_iu_reports()
    assert len(reports) == 3955
    mined = mine_noun_phrases(reports, min_count=20)
    top = set(mined["phrase"].head(60))
    for phrase in ("pleural effusion", "pneumothorax", "consolidation", "cardiomediastinal silhouette", "heart size"):
        assert phrase in top, phrase
    vocab = extend_vocabulary(load_vocabulary(), mined, max_new=50)
    new = vocab[vocab["mined"]]
    assert len(new) == 50 and not set(new["concept"]) & set(load_vocabulary()["concept"])
    assert infer_category("thoracic aorta", load_vocabulary()) == "cardiac"


def test_miner_never_returns_function_words_or_adjectives_on_indiana_reports():
    """Regression: the miner emitted "over", "further", "due", "most", "cardiac", "hilar", "free", "low" as phrases."""
    pytest.importorskip("torchxrayvision")
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    mined = mine_noun_phrases(read_iu_reports(), min_count=5)
    assert len(mined) > 300
    phrases = list(mined["phrase"])
    with_stopword = [p for p in phrases if set(p.split()) & ENGLISH_STOP_WORDS]
    assert not with_stopword, with_stopword[:10]
    for junk in ("place", "over", "further", "near", "cardiac", "hilar", "bony", "soft", "free", "low", "mid",
                 "posterior", "somewhat", "x-xxxx", "chest x-xxxx", "recommend", "followup"):
        assert junk not in phrases, junk
    heads = {p.split()[-1] for p in phrases}
    assert not heads & {"pleural", "pulmonary", "cardiac", "hilar", "mediastinal", "lateral", "enlarged", "seen"}
    for phrase in ("pleural effusion", "pneumothorax", "heart size", "cardiomediastinal silhouette", "granuloma"):
        assert phrase in phrases, phrase


def test_miner_drops_fragments_boilerplate_and_located_variants():
    reports = [
        "EXAMINATION: PA chest radiograph. FINDINGS: Right subclavian line with tip in the superior vena cava.",
        "EXAMINATION: PA chest radiograph. FINDINGS: Tip of the catheter in the superior vena cava. Tube in place.",
        "EXAMINATION: PA chest radiograph. FINDINGS: Overlying ECG leads. Calcified right hilar node.",
        "EXAMINATION: Portable AP chest radiograph. FINDINGS: Overlying ECG leads. Tube in place.",
    ]
    found = set(mine_noun_phrases(reports, min_count=2)["phrase"])
    assert "superior vena cava" in found and "ecg leads" in found
    for junk in ("vena cava", "cava", "vena", "chest radiograph", "place", "overlying ecg leads", "tip", "hilar node"):
        assert junk not in found, junk


def test_qualified_variants_of_known_concepts_become_synonyms():
    vocab = load_vocabulary()
    mined = pd.DataFrame({"phrase": ["mid lung consolidation", "cardiac pacemaker device", "median sternotomy wires",
                                     "superior vena cava"], "count": [40, 30, 20, 10]})
    out = extend_vocabulary(vocab, mined, max_new=10)
    assert list(out.loc[out["mined"], "concept"]) == ["superior vena cava"]
    syn = dict(zip(out["concept"], out["synonyms"], strict=True))
    assert "mid lung consolidation" in syn["consolidation"] and "cardiac pacemaker device" in syn["pacemaker"]
    assert "median sternotomy wires" in syn["sternotomy wires"]


def test_representative_images_adaptive_count():
    cfg = AnnotationConfig(top_fraction=0.93, min_images=2, max_images=5)
    act = np.array([0.0, 10.0, 9.5, 1.0, 9.4, 0.0, 9.2])
    # threshold 10 - 0.07 * 10 = 9.3 keeps 10, 9.5, 9.4 (9.2 is below)
    assert list(representative_images(act, cfg)) == [1, 2, 4]
    act2 = np.array([0.0, 10.0, 1.0, 2.0])
    assert list(representative_images(act2, cfg)) == [1, 3]  # min_images tops it up
    assert len(representative_images(np.zeros(5), cfg)) == 0


def _tiny_world(n_per=30, d=12, seed=0):
    """Concept embeddings on orthogonal axes, images near one concept each, a template off-axis."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=g)).Q.T
    vocab = pd.DataFrame(
        {
            "concept": ["pleural effusion", "cardiomegaly", "pacemaker", "laterality marker", "scoliosis"],
            "category": ["pleural", "cardiac", "device", "artifact", "structural"],
            "synonyms": [[], [], [], [], []],
        }
    )
    concept_emb = q[:5]
    template = q[5]
    labels = np.repeat(np.arange(5), n_per)
    images = F.normalize(concept_emb[labels] + 0.8 * template + 0.3 * torch.randn(len(labels), d, generator=g), dim=1)
    return vocab, concept_emb, template, labels, images


def test_annotation_picks_the_planted_concept():
    vocab, concept_emb, template, labels, images = _tiny_world()
    sim = concept_similarity(images, concept_emb, template).numpy()
    rng = np.random.default_rng(0)
    # unit u fires on the images of concept u (graded), and weakly at random elsewhere
    act = np.stack([np.where(labels == u, 1.0 + rng.random(len(labels)), 0.1 * rng.random(len(labels))) for u in range(5)], 1)
    ann = annotate_units(act, sim, vocab, AnnotationConfig(min_images=3))
    assert list(ann["concept_1"]) == list(vocab["concept"])
    assert list(ann["category"]) == list(vocab["category"])
    assert (ann["category_confidence"] > 0.5).all()
    assert (ann["score_1"] > ann["score_2"]).all()


def test_top_sentences_ranks_by_activation():
    act = np.array([[0.1, 0.0], [0.9, 0.0], [0.5, 0.2], [0.9, 0.0]])
    texts = ["a", "b", "c", "b"]
    assert top_sentences(act, texts, k=2) == [["b", "c"], ["c"]]


def test_auroc_matrix_matches_sklearn():
    from sklearn.metrics import roc_auc_score

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


def test_poisoned_truth_fails_any_read_and_is_restored(tmp_path):
    from conftest import poisoned_ground_truth

    from lanic_nb.evaluation import load_ground_truth
    from lanic_nb.io import write_table
    from lanic_nb.rundir import RunDir

    gt = pd.DataFrame({"image_id": ["a"], "concept": ["pacemaker"], "category": ["device"], "present": [True],
                       "side": [""], "severity": [1.0]})
    write_table(RunDir(tmp_path).ground_truth, gt)
    with poisoned_ground_truth(tmp_path):
        assert RunDir(tmp_path).ground_truth.exists()  # an exists() check does not dodge the guard
        with pytest.raises(Exception):  # noqa: B017 - pyarrow raises its own error type
            load_ground_truth(tmp_path)
        with pytest.raises(Exception):  # noqa: B017
            pd.read_parquet(RunDir(tmp_path).ground_truth)
    pd.testing.assert_frame_equal(load_ground_truth(tmp_path), gt)


@pytest.mark.notebook
def test_training_notebooks_ran_with_the_truth_poisoned(small_run):
    """small_run runs 01-03 (embedding, classifier, transcoders) with ground_truth.parquet unreadable; had
    any of them read it, until("03") would have raised. Afterwards the truth is back for evaluation."""
    from conftest import TRAINING_STAGES

    from lanic_nb.evaluation import load_ground_truth

    run = small_run.until("03")
    assert {s[:2] for s in small_run.done} >= set(TRAINING_STAGES)
    assert len(load_ground_truth(run)) > 0


@pytest.mark.notebook
def test_pattern_stage_before_evaluation_never_reads_the_truth(small_run, monkeypatch):
    """The merge, activations, statistics and annotation run with every parquet read of the truth raising."""
    import pyarrow.parquet as pq

    import lanic_nb.evaluation as evaluation
    from lanic_nb.patterns import merge as P
    from lanic_nb.rundir import RunDir

    run = small_run.until("03")
    truth = RunDir(run).ground_truth.resolve()

    def guard(fn):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, str | Path) and Path(path).resolve() == truth:
                raise AssertionError(f"the pattern stage opened the ground truth: {path}")
            return fn(path, *args, **kwargs)

        return wrapped

    def forbidden(*args, **kwargs):
        raise AssertionError("load_ground_truth called outside evaluation")

    monkeypatch.setattr(evaluation, "load_ground_truth", forbidden)
    monkeypatch.setattr(pd, "read_parquet", guard(pd.read_parquet))
    monkeypatch.setattr(pq, "read_table", guard(pq.read_table))
    inp = P.load_stage_inputs(run)
    alive = P.latent_alive(inp.ensemble, inp.x)
    ps = P.merge_latents(inp.ensemble.W_dec, P.MergeConfig(sim_threshold=0.5), alive=alive)
    act = P.pattern_activations(inp.ensemble, ps, inp.x).numpy()
    P.pattern_stats(act, inp.image_ids)
    vocab = load_vocabulary().head(40)
    emb, tmpl = embed_concepts(load_text_encoder(inp.store), vocab)
    ann = annotate_units(act, concept_similarity(inp.x, emb, tmpl).numpy(), vocab)
    assert len(ann) == ps.n_patterns
    with pytest.raises(AssertionError, match="ground truth"):
        pd.read_parquet(truth)  # the guard itself works


def test_mentions_skip_negations_and_purity_finds_the_concept():
    vocab = load_vocabulary()
    reports = ["Small left pleural effusion.", "No pleural effusion. Pacemaker in place.", "Pacer leads intact.",
               "Heart size is normal."] * 5
    m = mention_matrix(reports, vocab)
    col = {c: i for i, c in enumerate(vocab["concept"])}
    assert list(m[:4, col["pleural effusion"]]) == [True, False, False, False]
    assert list(m[:4, col["pacemaker"]]) == [False, True, True, False]  # synonym "pacer" counts
    act = np.zeros((20, 1))
    act[[1, 2, 5, 6], 0] = 1.0  # fires on the pacemaker reports
    assert np.isnan(report_purity(act, m, k=10, min_firing=5).loc[0, "purity"])  # 4 firing images: too few
    p = report_purity(act, m, k=4, min_firing=4)
    assert vocab["concept"][p.loc[0, "purity_concept"]] == "pacemaker"
    assert p.loc[0, "purity"] == 1.0 and p.loc[0, "lift"] == pytest.approx(0.5)


def test_evaluate_unit_sets_reads_truth_and_writes_table(tmp_path):
    from lanic_nb.io import write_table
    from lanic_nb.patterns.evaluate import evaluate_unit_sets, headline_metrics
    from lanic_nb.rundir import RunDir

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
    assert per_unit["ensemble patterns"].loc[0, "best_concept"] == "pacemaker"


def test_probe_is_fitted_on_train_rows_and_scored_on_test_rows():
    from lanic_nb.patterns.evaluate import probe_aurocs

    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 3))
    train = np.arange(400) < 300
    y = np.where(train, f[:, 0] > 0, f[:, 0] < 0)[:, None]  # the test rows follow the opposite rule
    auc = probe_aurocs(f, y, train, ~train)
    assert auc[0] < 0.05  # a probe fitted on every row would sit near 0.5
    one_class = probe_aurocs(f, np.zeros((400, 1), bool), train, ~train)
    assert np.isnan(one_class[0])


def test_recovery_by_concept_separates_lost_in_units_from_absent_in_representation(tmp_path):
    from lanic_nb.io import write_table
    from lanic_nb.patterns.evaluate import RECOVERY_CSV, recovery_by_concept
    from lanic_nb.rundir import RunDir

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
    s = summarize_units(auc, ["pacemaker"], {"pacemaker": "device"}, annotate_units(np.zeros((10, 0)), np.zeros((10, 3)), vocab.head(3)), vocab)
    assert s["n_units"] == 0 and s["recovery"] == 0.0 and s["n_monosemantic"] == 0


def test_category_agreement_counts_every_unit():
    vocab = load_vocabulary()
    auc = np.array([[0.7, 0.6], [0.55, 0.65]])  # no unit reaches 0.9, yet each has a best concept
    ann = pd.DataFrame({"unit": [0, 1], "concept_1": ["pacemaker", "pacemaker"], "category": ["device", "device"]})
    s = summarize_units(auc, ["pacemaker", "scoliosis"], {"pacemaker": "device", "scoliosis": "structural"}, ann, vocab)
    assert np.isnan(s["category_accuracy"]) and s["category_agreement"] == 0.5


def test_mined_variants_of_known_concepts_become_synonyms_not_rivals():
    # Regression: "flattened diaphragms" (plural of hyperinflation's synonym) and "lung consolidation" used to be
    # added as separate concepts, so a unit named by them counted as wrongly named.
    vocab = load_vocabulary()
    mined = pd.DataFrame({"phrase": ["flattened diaphragms", "lung consolidation", "plate-like", "scoliosis",
                                     "plate-likes"], "count": [50, 40, 30, 20, 10]})
    out = extend_vocabulary(vocab, mined, max_new=10)
    assert list(out.loc[out["mined"], "concept"]) == ["plate-like"]  # its plural is folded into it, not re-added
    syn = dict(zip(out["concept"], out["synonyms"], strict=True))
    assert "flattened diaphragms" in syn["hyperinflation"]
    assert "lung consolidation" in syn["consolidation"]
    assert syn["scoliosis"] == list(vocab.set_index("concept").loc["scoliosis", "synonyms"])  # itself: unchanged
    assert len(out) == len(vocab) + 1


def test_prompt_names_keep_only_names_the_text_knows():
    vocab = pd.DataFrame({"concept": ["under-exposure", "nodule"], "category": ["artifact", "pulmonary"],
                          "synonyms": [["underexposure", "underpenetrated film"], ["granuloma"]]})
    reports = ["Study is limited by underexposure.", "No focal consolidation."]
    assert prompt_names(vocab, reports) == [["underexposure"], ["nodule", "granuloma"]]  # none known: keep all
    assert prompt_names(vocab) == [["under-exposure", "underexposure", "underpenetrated film"], ["nodule", "granuloma"]]
    assert prompt_names(vocab, ["Two nodules."])[1] == ["nodule"]  # plurals count

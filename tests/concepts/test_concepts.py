"""Concept vocabulary, report mining, mask-free annotation, report purity, and the shared concept space."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from lanic_nb.concepts.annotate import (
    AnnotationConfig,
    annotate_units,
    concept_similarity,
    finding_groups,
    fires_on_few,
    group_bits,
    label_aurocs,
    own_findings,
    prompt_names,
    quiet_images,
    representative_images,
    unit_groups,
)
from lanic_nb.concepts.mining import mine_noun_phrases
from lanic_nb.concepts.reports import mention_matrix, report_purity, top_sentences
from lanic_nb.concepts.vocabulary import (
    CATEGORIES,
    extend_vocabulary,
    infer_category,
    load_vocabulary,
    match_concept,
    name_alternatives,
    not_a_name,
)
from lanic_nb.data.openi import read_openi_reports
from lanic_nb.metrics import auroc_matrix
from lanic_nb.phantom.config import CONCEPTS


@functools.cache
def iu_reports() -> list[str]:
    """FINDINGS + IMPRESSION of the 3,955 Indiana University reports that torchxrayvision ships (read at test
    time through the project's one OpenI reader, never copied into the repository)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision (which ships the Indiana University reports) is not installed")
    return read_openi_reports(Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz")["report"].tolist()


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
    reports = iu_reports()
    assert len(reports) == 3955
    mined = mine_noun_phrases(reports, min_count=20)
    top = set(mined["phrase"].head(60))
    for phrase in ("pleural effusion", "pneumothorax", "consolidation", "cardiomediastinal silhouette", "heart size"):
        assert phrase in top, phrase
    vocab = extend_vocabulary(load_vocabulary(), mined, max_new=30)
    new = vocab[vocab["mined"]]
    assert len(new) == 30 and not set(new["concept"]) & set(load_vocabulary()["concept"])
    assert infer_category("thoracic aorta", load_vocabulary()) == "cardiac"


def test_miner_never_returns_function_words_or_adjectives_on_indiana_reports():
    """Regression: the miner emitted "over", "further", "due", "most", "cardiac", "hilar", "free", "low" as phrases."""
    mined = mine_noun_phrases(iu_reports(), min_count=5)
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


def test_mining_the_indiana_reports_adds_findings_and_keeps_anatomy_and_boilerplate_out_of_the_names():
    """What mining the 3,955 real reports adds to the vocabulary: the top phrases are anatomy ("lung", "heart",
    "silhouette") and boilerplate ("structure", "active disease"), which would compete with what a pattern shows.
    They stay out of the names; the findings and devices the curated list lacks come in."""
    mined = mine_noun_phrases(iu_reports(), min_count=5)
    assert {"lung", "heart", "silhouette", "structure", "active disease"} <= set(mined["phrase"].head(40))
    curated = load_vocabulary()
    vocab = extend_vocabulary(curated, mined)
    new = list(vocab.loc[vocab["mined"], "concept"])
    for junk in ("lung", "heart", "silhouette", "structure", "active disease", "cardiomediastinal silhouette",
                 "cardiopulmonary abnormality", "cardiopulmonary process", "osseous structures", "chest", "lobe",
                 "aorta", "mediastinal contour", "pulmonary vasculature", "lung volume", "airspace", "mid lung"):
        assert junk not in new, junk
    assert not [c for c in new if not_a_name(c)]
    for finding in ("fracture", "calcification", "adenopathy", "tortuosity", "hernia", "eventration", "picc"):
        assert finding in new, finding
    assert new.index("fracture") < 5  # the most frequent name the curated list lacks
    heart_size = vocab.index[vocab["concept"] == "heart size"][0]  # a curated name of anatomy keeps its place
    assert not vocab.loc[heart_size, "mined"]


def test_not_a_name():
    for phrase in ("lung", "Lungs", "cardiomediastinal silhouette", "active disease", "left lung", "mid lung",
                   "superior vena cava", "osseous structures intact", "technical factors"):
        assert not_a_name(phrase), phrase
    for phrase in ("lung nodule", "fracture", "perihilar haziness", "tube", "calcified granuloma", "elevation"):
        assert not not_a_name(phrase), phrase
    assert not_a_name("ecg leads", extra={"ecg", "leads"}) and not not_a_name("ecg leads")


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
                                     "eventration", "superior vena cava"], "count": [40, 30, 20, 10, 5]})
    out = extend_vocabulary(vocab, mined, max_new=10)
    assert list(out.loc[out["mined"], "concept"]) == ["eventration"]  # "superior vena cava": anatomy, no name
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
    act = np.stack([np.where(labels == u, 1.0 + rng.random(len(labels)), 0.1 * rng.random(len(labels)))
                    for u in range(5)], 1)
    ann = annotate_units(act, sim, vocab, AnnotationConfig(min_images=3))
    assert list(ann["concept_1"]) == list(vocab["concept"])
    assert list(ann["category"]) == list(vocab["category"])
    assert (ann["category_confidence"] > 0.5).all()
    assert (ann["score_1"] > ann["score_2"]).all()


def test_top_sentences_ranks_by_activation():
    act = np.array([[0.1, 0.0], [0.9, 0.0], [0.5, 0.2], [0.9, 0.0]])
    texts = ["a", "b", "c", "b"]
    assert top_sentences(act, texts, k=2) == [["b", "c"], ["c"]]


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


class _BagOfWordsEncoder:
    """A stand-in text tower: each text is the normalized sum of fixed random vectors of its words."""

    def __init__(self, d: int = 16):
        self.d, self.words = d, {}

    def encode_texts(self, texts):
        out = torch.zeros(len(texts), self.d)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                if w not in self.words:
                    self.words[w] = torch.randn(self.d, generator=torch.Generator().manual_seed(len(self.words)))
                out[i] += self.words[w]
        return F.normalize(out, dim=1)


def test_concept_space_extends_the_vocabulary_and_scores_every_image(monkeypatch):
    import lanic_nb.concepts.space as space_mod

    encoder = _BagOfWordsEncoder()
    seen = {}
    monkeypatch.setattr(space_mod, "load_text_encoder",
                        lambda store, name: seen.setdefault("args", (store, name)) and encoder)
    reports = ["Small left pleural effusion. Bullet fragment."] * 3 + ["Bullet fragment. No effusion."] * 2
    manifest = pd.DataFrame({"report": reports + [None]})
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    space = space_mod.concept_space("STORE", manifest, x.numpy(), encoder="some-vlm", mine_min_count=2, max_mined=5)
    assert seen["args"] == ("STORE", "some-vlm")
    assert list(space.vocab.loc[space.vocab["mined"], "concept"]) == ["bullet fragment"] and space.n_mined == 1
    assert set(space.mined["phrase"]) >= {"bullet fragment", "pleural effusion"}
    assert space.similarity.shape == (6, len(space.vocab))
    expect = concept_similarity(x, space.concept_emb, space.template_emb).numpy()
    assert np.allclose(space.similarity, expect, atol=1e-6)
    # known_names_only: each concept is prompted by the names its reports use (all names when off).
    i = int(np.flatnonzero(space.vocab["concept"] == "pleural effusion")[0])
    for known, names in ((True, prompt_names(space.vocab, manifest["report"].fillna(""))[i]),
                         (False, prompt_names(space.vocab)[i])):
        got = space_mod.concept_space("STORE", manifest, x.numpy(), mine_min_count=2, max_mined=5,
                                      known_names_only=known).concept_emb[i]
        want = F.normalize(encoder.encode_texts([f"A chest x-ray image of a {n}" for n in names]).sum(0), dim=0)
        assert torch.allclose(got, want, atol=1e-5), (known, names)
    assert len(prompt_names(space.vocab)[i]) > len(prompt_names(space.vocab, manifest["report"].fillna(""))[i])


def test_contrast_names_the_detected_concept_not_its_companion():
    """A unit fires on concept A, which co-occurs with B (a portable marker with tubes). The text side sees B
    more clearly than A, so plain MAMMI scoring names B; comparing the unit's images with silent look-alikes
    (which share B) names A."""
    rng = np.random.default_rng(0)
    n = 600
    b = rng.random(n) < 0.5
    a = np.where(b, rng.random(n) < 0.8, rng.random(n) < 0.05)
    emb = np.column_stack([a, b, rng.normal(0, 0.3, (n, 6))]).astype(np.float32)
    vocab = pd.DataFrame({"concept": ["a", "b", "c"], "category": ["device", "artifact", "pulmonary"],
                          "synonyms": [[], [], []]})
    sim = np.column_stack([0.2 * a + rng.normal(0, 0.3, n), b + rng.normal(0, 0.05, n), rng.normal(0, 1, n)])
    act = (a * (1 + rng.random(n)))[:, None].astype(np.float32)
    plain = annotate_units(act, sim, vocab, AnnotationConfig(max_images=400))
    contrast = annotate_units(act, sim, vocab, AnnotationConfig(max_images=400, contrast_neighbors=5), embeddings=emb)
    assert plain.loc[0, "concept_1"] == "b"
    assert contrast.loc[0, "concept_1"] == "a" and contrast.loc[0, "category"] == "device"
    with pytest.raises(ValueError, match="embeddings"):
        annotate_units(act, sim, vocab, AnnotationConfig(contrast_neighbors=5))


def test_report_contrast_names_what_the_reports_tell_apart():
    """A unit detects A (a portable marker), which rides on B (an effusion, the shortcut's finding). Both in the
    images and in the text side, B dominates the unit's images and, less, their look-alikes' (which carry the
    finding without the marker), so the image side names B. The reports mention A on exactly the images that
    show it: their contrast names A. Weight 0 and absent mentions leave the image-side name unchanged."""
    rng = np.random.default_rng(1)
    n = 800
    b = rng.random(n) < 0.5
    a = np.where(b, rng.random(n) < 0.7, rng.random(n) < 0.1)
    emb = np.column_stack([0.3 * a, b, rng.normal(0, 0.3, (n, 6))]).astype(np.float32)
    vocab = pd.DataFrame({"concept": ["a", "b", "c"], "category": ["artifact", "pleural", "device"],
                          "synonyms": [[], [], []]})
    sim = np.column_stack([0.1 * a + rng.normal(0, 1, n), 2 * b * (1 + a) + rng.normal(0, 0.3, n), rng.normal(0, 1, n)])
    act = (a * (1 + rng.random(n)))[:, None].astype(np.float32)
    mentions = np.column_stack([a, b & (rng.random(n) < 0.9), np.zeros(n, bool)])
    cfg = AnnotationConfig(max_images=400, contrast_neighbors=5)
    images = annotate_units(act, sim, vocab, cfg, embeddings=emb, mentions=mentions)  # report_weight 0
    assert images.loc[0, "concept_1"] == "b"
    told = annotate_units(act, sim, vocab, AnnotationConfig(max_images=400, contrast_neighbors=5, report_weight=1.0),
                          embeddings=emb, mentions=mentions)
    assert told.loc[0, "concept_1"] == "a" and told.loc[0, "category"] == "artifact"
    unmentioned = annotate_units(act, sim, vocab, AnnotationConfig(max_images=400, contrast_neighbors=5,
                                                                   report_weight=1.0), embeddings=emb)
    assert unmentioned.loc[0, "concept_1"] == "b"
    with pytest.raises(ValueError, match="report_weight"):
        AnnotationConfig(report_weight=-1)


def test_finding_groups_and_unit_groups():
    labels = np.array([[1, 0, np.nan], [1, 1, -1], [0, np.nan, 1], [np.nan, np.nan, np.nan]])
    g = finding_groups(labels)
    assert g.tolist() == [1, 3, 4, 0]  # bit f set where finding f is positive; 0, -1 and missing are not
    # a finding on every representative image is the unit's own subject and leaves the key; one on some stays
    assert unit_groups(g, np.array([0, 1]), 0.9).tolist() == [0, 2, 4, 0]
    assert unit_groups(g, np.array([0, 2]), 0.9).tolist() == g.tolist()
    # a finding the unit separates (own_auroc) is its own whatever its share among the representative images
    assert unit_groups(g, np.array([0, 2]), 0.9, separates=np.array([False, True, False])).tolist() == [1, 1, 4, 0]
    assert group_bits(g).tolist() == [[True, False, False], [True, True, False], [False, False, True],
                                      [False, False, False]]


def test_a_finding_the_unit_separates_is_its_subject_however_mixed_its_top_films():
    """A dense detector of finding B (it fires on every film, most on the severe ones). Its representative images
    are the most severe B films, which all carry a device D, and the reports of a third of them hedge on B, so
    fewer than 0.9 of them are labelled B. Matched within the B-labelled films, B cancels against the milder B
    films and D names the unit (own_auroc off). The unit separates B's labels at AUROC 0.98: with ``own_auroc``
    B is its subject, its look-alikes lack B, and B names it."""
    rng = np.random.default_rng(0)
    n = 2000
    b = np.arange(n) < 400
    sev = rng.random(n)
    d = (b & (sev > 0.7)) | (~b & (rng.random(n) < 0.05))
    act = (0.2 + b * (1 + sev) + 0.05 * rng.random(n))[:, None].astype(np.float32)
    labelled = b & ~((sev > 0.85) & (np.arange(n) % 3 == 0))
    emb = np.column_stack([b, d, rng.normal(0, 0.3, (n, 6))]).astype(np.float32)
    sim = np.column_stack([b + rng.normal(0, 0.5, n), 1.5 * d + rng.normal(0, 0.5, n), rng.normal(0, 1, n)])
    vocab = pd.DataFrame({"concept": ["b", "d", "c"], "category": ["cardiac", "device", "artifact"],
                          "synonyms": [[], [], []]})
    groups = finding_groups(np.where(labelled, 1.0, 0.0)[:, None])
    rep = representative_images(act[:, 0], AnnotationConfig(contrast_neighbors=5))
    assert labelled[rep].mean() < 0.9 and d[rep].all() and fires_on_few(act[:, 0]) is False
    off = annotate_units(act, sim, vocab, AnnotationConfig(contrast_neighbors=5, own_auroc=1.0), embeddings=emb,
                         groups=groups)
    on = annotate_units(act, sim, vocab, AnnotationConfig(contrast_neighbors=5), embeddings=emb, groups=groups)
    assert off.loc[0, "concept_1"] == "d"
    assert on.loc[0, "concept_1"] == "b" and on.loc[0, "category"] == "cardiac"
    with pytest.raises(ValueError, match="own_auroc"):
        AnnotationConfig(own_auroc=0.2)


def test_quiet_images_of_a_dense_unit_per_group():
    act = np.array([0.0, 0.0, 1.0, 2.0])
    assert quiet_images(act).tolist() == [True, True, False, False]  # silent on half: the silent ones
    dense = np.array([0.1, 0.2, 0.9, 1.0, 0.3, 0.4])
    assert quiet_images(dense).tolist() == [True, True, False, False, True, False]  # at or below its median
    # per group: the group that the unit follows (values 0.9, 1.0) still has a quiet image of its own
    assert quiet_images(dense, np.array([0, 0, 1, 1, 0, 0])).tolist() == [True, True, True, False, False, False]


def _marker_on_finding(n: int = 1000):
    """Marker A on 210 films, 180 of them among the 400 films of finding B; a unit that fires most on A, a little on
    B alone; the text side sees B more clearly. Returns a, b, embeddings, vocabulary, similarity, activations."""
    rng = np.random.default_rng(2)
    b = np.arange(n) < 400
    a = (np.arange(n) < 180) | ((np.arange(n) >= 400) & (np.arange(n) < 430))
    emb = np.column_stack([0.2 * a, b, rng.normal(0, 0.3, (n, 6))]).astype(np.float32)
    vocab = pd.DataFrame({"concept": ["a", "b", "c"], "category": ["artifact", "pulmonary", "device"],
                          "synonyms": [[], [], []]})
    sim = np.column_stack([0.6 * a + rng.normal(0, 0.5, n), 2 * b + rng.normal(0, 0.5, n), rng.normal(0, 1, n)])
    act = (np.where(a, 2.0, np.where(b, 1.0, 0.1)) + 0.1 * rng.random(n))[:, None].astype(np.float32)
    return a, b, emb, vocab, sim, act


def test_matched_look_alikes_name_an_unreported_shortcut_marker():
    """A unit detects an unreported marker A that rides on finding B (labelled from the reports: 86% of the
    marker's films carry B) and also excites a little on B alone, so it fires on every film. The text side sees
    B more clearly; against unmatched look-alikes (the films it is quietest on, which lack B) B stands out and
    names the unit. Matched on the report-labelled findings, B cancels and A names it. (Exciting on every B film,
    this unit also separates B's labels at AUROC 0.96, which with ``own_auroc`` would make B its subject: the
    phantoms' marker detectors follow their finding only through the marker, at 0.84; see the next test.)"""
    a, b, emb, vocab, sim, act = _marker_on_finding()
    labels = np.where(b, 1.0, np.nan)[:, None]
    cfg = AnnotationConfig(max_images=100, contrast_neighbors=5, own_auroc=1.0)
    plain = annotate_units(act, sim, vocab, cfg, embeddings=emb)
    matched = annotate_units(act, sim, vocab, cfg, embeddings=emb, groups=finding_groups(labels))
    assert plain.loc[0, "concept_1"] == "b"
    assert matched.loc[0, "concept_1"] == "a" and matched.loc[0, "category"] == "artifact"


def test_a_reported_marker_the_unit_follows_more_closely_than_its_finding_is_no_subject():
    """The unit of the previous test detects marker A, which rides on finding B, and separates B's labels at AUROC
    0.96: by ``own_auroc`` alone B is its subject, its look-alikes lack B, and B (clearer on the text side) names
    it. The reports mention A (as they say "portable AP"), and the unit separates those mentions at 1.0, more
    closely than B: with ``own_rivals`` (A's category among them) B stays a context to match, cancels, and A
    names the unit. Without the mentions, or with the rule off, B does."""
    a, b, emb, vocab, sim, act = _marker_on_finding()
    n = len(a)
    groups = finding_groups(np.where(b, 1.0, np.nan)[:, None])
    mentions = np.column_stack([a, b, np.zeros(n, bool)])
    cfg = AnnotationConfig(max_images=100, contrast_neighbors=5)
    found = label_aurocs(act, group_bits(groups))[0, 0]
    assert cfg.own_auroc <= found < 0.99  # the premise: own_auroc alone makes B the subject
    assert own_findings(act, groups, replace(cfg, own_rivals=()), mentions, vocab["category"].to_numpy()).all()
    assert not own_findings(act, groups, cfg, mentions, vocab["category"].to_numpy()).any()
    rivals = annotate_units(act, sim, vocab, cfg, embeddings=emb, mentions=mentions, groups=groups)
    assert rivals.loc[0, "concept_1"] == "a" and rivals.loc[0, "category"] == "artifact"
    for off in (annotate_units(act, sim, vocab, replace(cfg, own_rivals=()), embeddings=emb, mentions=mentions,
                               groups=groups),
                annotate_units(act, sim, vocab, cfg, embeddings=emb, groups=groups)):
        assert off.loc[0, "concept_1"] == "b"
    # a rival that too few reports mention (fewer than min_images) does not count
    few = mentions.copy()
    few[:, 0] = a & (np.arange(n) < 3)
    assert own_findings(act, groups, cfg, few, vocab["category"].to_numpy()).all()


def test_name_alternatives_variants_and_head_words():
    vocab = pd.DataFrame({
        "concept": ["pleural effusion", "large pleural effusion", "bilateral pleural effusions", "pneumothorax",
                    "tension pneumothorax", "grid lines", "artifact", "endotracheal tube", "chest tube", "tube",
                    "motion blur", "motion"],
        "category": ["pleural", "pleural", "pleural", "pleural", "pleural", "artifact", "artifact", "device", "device",
                     "device", "artifact", "artifact"],
        "synonyms": [["effusion"], [], [], [], [], ["grid artifact"], [], [], [], [], ["patient motion"], []],
        "mined": [False] * 9 + [True, False, True],
    })
    alt = {vocab["concept"][i]: [vocab["concept"][j] for j in a] for i, a in enumerate(name_alternatives(vocab))}
    assert alt["large pleural effusion"] == ["pleural effusion"]  # qualifiers stripped: the finding
    assert alt["bilateral pleural effusions"] == ["pleural effusion"]  # ... plural folded too
    assert alt["artifact"] == ["grid lines"]  # a category's name: the concepts named "... artifact"
    assert sorted(alt["tube"]) == ["chest tube", "endotracheal tube"]  # a mined head word
    assert alt["motion"] == ["motion blur"]
    assert alt["pneumothorax"] == []  # a curated one-word finding stays, whatever ends on it
    assert alt["pleural effusion"] == alt["endotracheal tube"] == alt["tension pneumothorax"] == []
    unmined = name_alternatives(vocab.drop(columns="mined"))  # a curated vocabulary: only the category names
    assert unmined[9] == [] and unmined[6] == [5]


def test_finding_level_name_breaks_a_tie_only():
    """The best-scoring concept is a qualified variant; its finding scores within beta of it and names the unit.
    Where the finding scores below beta x best, the variant keeps the name; finding_level=False keeps the order."""
    vocab = pd.DataFrame({"concept": ["pleural effusion", "large pleural effusion", "edema"],
                          "category": ["pleural", "pleural", "pulmonary"], "synonyms": [[], [], []]})
    rng = np.random.default_rng(3)
    n = 300
    on = rng.random(n) < 0.3
    act = (on * (1 + rng.random(n)))[:, None].astype(np.float32)
    base = np.column_stack([on + rng.normal(0, 0.1, n), on + rng.normal(0, 0.1, n), rng.normal(0, 1, n)])

    def named(gap: float, **kw) -> pd.Series:
        sim = base + np.array([0.0, gap, 0.0]) * on[:, None]
        return annotate_units(act, sim, vocab, AnnotationConfig(top_fraction=0.5, max_images=200, standardize=False,
                                                              **kw)).loc[0]

    tie = named(0.02)
    assert tie["concept_1"] == "pleural effusion" and tie["concept_2"] == "large pleural effusion"
    assert tie["score_1"] < tie["score_2"]  # the variant scored higher; the finding names it anyway
    assert named(0.02, finding_level=False)["concept_1"] == "large pleural effusion"
    assert named(0.5)["concept_1"] == "large pleural effusion"  # clearly better: the variant is the name


def test_sparse_part_of_a_finding_is_contrasted_with_films_without_it():
    """A sparse unit fires on the most severe films of finding A. Its silent films include A's milder films, the
    nearest look-alikes; against them A cancels and what grows with severity (S) names the unit. With
    ``own_apart`` its look-alikes lack A, and A names it."""
    rng = np.random.default_rng(4)
    n = 1000
    a = rng.random(n) < 0.3
    sev = rng.random(n)
    act = (a * (sev > 0.7) * (1 + sev))[:, None].astype(np.float32)
    assert 0 < (act > 0).mean() < 0.5
    emb = np.column_stack([2.0 * a, rng.normal(0, 0.3, (n, 6))]).astype(np.float32)
    sim = np.column_stack([a + rng.normal(0, 0.1, n), 0.8 * a * sev + rng.normal(0, 0.1, n), rng.normal(0, 1, n)])
    vocab = pd.DataFrame({"concept": ["a", "s", "c"], "category": ["pleural", "artifact", "device"],
                          "synonyms": [[], [], []]})
    groups = finding_groups(a[:, None].astype(float))
    base = dict(max_images=400, contrast_neighbors=5, standardize=False)
    mixed = annotate_units(act, sim, vocab, AnnotationConfig(**base, own_apart=False), embeddings=emb, groups=groups)
    apart = annotate_units(act, sim, vocab, AnnotationConfig(**base), embeddings=emb, groups=groups)
    assert mixed.loc[0, "concept_1"] == "s"
    assert apart.loc[0, "concept_1"] == "a" and apart.loc[0, "category"] == "pleural"
    with pytest.raises(ValueError, match="own_share"):
        AnnotationConfig(own_share_sparse=1.5)


def test_label_aurocs_in_chunks_equal_one_pass():
    rng = np.random.default_rng(5)
    act = rng.random((300, 7)).astype(np.float32)
    labels = rng.random((300, 3)) < 0.3
    labels[:, 2] = False  # a label no film carries: AUROC undefined, 0 here
    one = label_aurocs(act, labels, budget=1 << 25)
    assert np.allclose(one[:, :2], auroc_matrix(act, labels)[:, :2]) and (one[:, 2] == 0).all()
    assert np.array_equal(label_aurocs(act, labels, budget=600), one)  # two units per chunk

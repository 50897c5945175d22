"""The phantom encoder: its recipe (stream, captions, resumable pretraining), and the shipped folder (loads
through local-dir:, matches today's generator, carries the phantom as its card says)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from lanic_nb.concepts.vocabulary import load_vocabulary
from lanic_nb.embed.encoders import PHANTOM, PHANTOM_ENCODER_DIR, load_encoder
from lanic_nb.io import read_json
from lanic_nb.phantom import draw
from lanic_nb.phantom.captions import describe, vocabulary_names
from lanic_nb.phantom.config import CONCEPT_NAMES, PhantomConfig
from lanic_nb.phantom.encoder import CARD_NAME, PretrainConfig, pretrain, stream_batch
from lanic_nb.phantom.encoder_card import check_fingerprint, evaluate_encoder
from lanic_nb.phantom.generate import sample_truth


def tiny(**kw) -> PretrainConfig:
    base = dict(steps=4, batch_size=4, image_size=32, source_size=48, vision_width=32, text_layers=1,
                text_width=32, text_heads=2, embed_dim=16, context_length=48, vocab_size=3000, warmup_steps=1,
                eval_every=0, checkpoint_every=2)
    return PretrainConfig(**{**base, **kw})


def test_stream_is_a_pure_function_of_the_step():
    names = vocabulary_names()
    a, ta, na = stream_batch(tiny(), 3, names)
    b, tb, nb = stream_batch(tiny(), 3, names)
    c, _, _ = stream_batch(tiny(), 4, names)
    assert a.shape == (4, 32, 32) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert na.shape == (4, len(CONCEPT_NAMES)) and set(na.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b) and ta == tb and torch.equal(na, nb)
    assert not torch.equal(a, c)


def test_stream_never_draws_a_runs_population():
    """The stream plants concepts independently (no latent states, no shortcut) at its own seed."""
    phantom = tiny().stream_phantom()
    assert not phantom.latent_states and phantom.shortcut_concept == "" and phantom.seed == 1_000
    rows = [{r.concept: r.present for r in sample_truth(phantom, i)[0]} for i in range(2000)]
    present = np.array([[r[c] for c in CONCEPT_NAMES] for r in rows], dtype=float)
    assert np.allclose(present.mean(0), 0.3, atol=0.05)
    corr = np.corrcoef(present.T)
    assert np.abs(corr[~np.eye(len(CONCEPT_NAMES), dtype=bool)]).max() < 0.12


def test_captions_name_planted_concepts_only():
    names = vocabulary_names()
    cfg = PhantomConfig(seed=5)
    for i in range(200):
        rows = sample_truth(cfg, i)[0]
        text = describe(rows, np.random.default_rng(i), names).lower()
        for r in rows:
            if not r.present:
                # no name of an absent concept (its own words may be part of another's name: "effusion")
                own = [n for n in names[r.concept] if not any(n in m for c, ns in names.items() if c != r.concept
                                                              for m in ns)]
                assert not any(re.search(rf"\b{re.escape(n)}\b", text) for n in own), (r.concept, text)


def test_pretraining_resumes_to_the_same_weights(tmp_path):
    cfg = tiny()
    whole, _, hist = pretrain(tmp_path / "a", cfg, device="cpu")
    part, _, _ = pretrain(tmp_path / "b", cfg, device="cpu", stop_at=2)
    assert (tmp_path / "b" / "checkpoint" / "checkpoint.json").exists()
    resumed, _, hist_b = pretrain(tmp_path / "b", cfg, device="cpu")
    assert len(hist["loss"]) == len(hist_b["loss"]) == cfg.steps
    for (k, v), w in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="another recipe"):
        pretrain(tmp_path / "b", replace(cfg, lr=5e-4), device="cpu")


def test_language_gap_captions_never_use_the_vocabularys_words():
    """The paraphrase table: every concept has paraphrases; none contains its concept's vocabulary name or synonyms or
    is itself a vocabulary entry; a paraphrase stream's captions and phrases name nothing by the vocabulary's words."""
    from lanic_nb.concepts.vocabulary import load_vocabulary, normalize_name
    from lanic_nb.phantom.captions import caption_names, paraphrase_names
    from lanic_nb.phantom.encoder import step_phrases

    vocab = load_vocabulary()
    entries = {normalize_name(c) for c in vocab["concept"]} | {normalize_name(x) for syns in vocab["synonyms"]
                                                               for x in syns}
    own = vocabulary_names()
    gap = paraphrase_names()
    assert set(gap) == set(CONCEPT_NAMES) and min(len(v) for v in gap.values()) >= 4
    for concept, paraphrases in gap.items():
        for p in paraphrases:
            key = normalize_name(p)
            assert key not in entries, p
            assert not any(re.search(rf"(^| ){re.escape(normalize_name(n))}( |$)", key) for n in own[concept]), p
    cfg = tiny(words="paraphrase", tag_weight=0.0)
    assert caption_names("paraphrase") == gap
    texts = []
    for step in range(20):
        _, batch_texts, _ = stream_batch(replace(cfg, caption_fraction=1.0), step, gap)
        texts += batch_texts + step_phrases(np.random.default_rng(step), gap)
    for text in texts:
        key = normalize_name(text)
        for concept, names in own.items():
            canonical = normalize_name(names[0])
            assert not re.search(rf"(^| ){re.escape(canonical)}( |$)", key), (concept, text)
    with pytest.raises(ValueError, match="words must be one of"):
        tiny(words="latin")


def test_language_gap_command_never_writes_the_shipped_encoder(tmp_path, monkeypatch):
    """--language-gap trains in its own folder (a first step, then stops as an interruption would), with the
    paraphrase words and no tagging loss in its recipe."""
    from lanic_nb.io import read_json
    from lanic_nb.phantom.encoder import main

    monkeypatch.chdir(tmp_path)
    assert main(["--language-gap", "--stop-at", "1", "--batch-size", "4", "--eval-every", "0", "--device", "cpu"]) == 0
    meta = read_json(tmp_path / "runs" / "phantom_encoder_gap" / "checkpoint" / "checkpoint.json")
    assert meta["step"] == 1 and meta["config"]["words"] == "paraphrase" and meta["config"]["tag_weight"] == 0.0
    assert not (tmp_path / "runs" / "phantom_encoder").exists()


# ---- the shipped encoder ----

def test_shipped_encoder_loads_through_local_dir_offline():
    enc = load_encoder(PHANTOM)
    assert enc.name == f"local-dir:{PHANTOM_ENCODER_DIR.resolve()}"
    card = read_json(PHANTOM_ENCODER_DIR / CARD_NAME)
    assert enc.embed_dim == card["recipe"]["embed_dim"] and enc.image_size == card["recipe"]["image_size"]
    size = sum(p.stat().st_size for p in PHANTOM_ENCODER_DIR.iterdir())
    assert size < 42e6, f"the shipped folder is {size / 1e6:.1f} MB"
    x = torch.rand(2, 224, 224)
    emb = enc.encode_images(torch.stack([enc.preprocess_array(im) for im in x]))
    assert emb.shape == (2, enc.embed_dim) and torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_tokenizer_covers_the_concept_vocabulary():
    """Every word of every vocabulary name is one WordPiece token, so concepts are prompted by whole words."""
    tok = load_encoder(PHANTOM).tokenizer.tokenizer
    words = {w for c, syns in zip(*load_vocabulary()[["concept", "synonyms"]].T.values, strict=True)
             for name in [c, *syns] for w in re.findall(r"[a-z]+", name.lower())}
    split = sorted(w for w in words if len(tok.tokenize(w)) != 1)
    assert not split


def test_fingerprint_matches_todays_generator():
    ok, message = check_fingerprint(PHANTOM_ENCODER_DIR)
    assert ok, message + ": retrain the encoder (python -m lanic_nb.phantom.encoder) or restore the generator"


def test_fingerprint_catches_a_changed_drawing(monkeypatch):
    original = draw._devices

    def thicker(dens, *args, **kwargs):
        original(dens, *args, **kwargs)
        dens *= 1.01  # a 1% change of density anywhere is a different phantom

    monkeypatch.setattr(draw, "_devices", thicker)
    ok, message = check_fingerprint(PHANTOM_ENCODER_DIR)
    assert not ok and "images changed" in message


def test_card_figures_reproduce_on_a_fresh_seed():
    """The card's probe and zero-shot figures hold, within noise, on a small phantom of another seed."""
    card = read_json(PHANTOM_ENCODER_DIR / CARD_NAME)["evaluation"]
    fresh = evaluate_encoder(PHANTOM, n_images=800, seed=31_337)
    for concept in ("cardiomegaly", "pleural_effusion", "pacemaker", "portable_marker", "collimation",
                    "endotracheal_tube"):
        assert card["probe_auroc"][concept] >= 0.95
        assert fresh["probe_auroc"][concept] >= card["probe_auroc"][concept] - 0.05, concept
    assert fresh["zeroshot_auroc_mean"] >= card["zeroshot_auroc_mean"] - 0.05
    assert fresh["recall@10"] > 3 * fresh["recall@10_chance"]

"""Embedding store: layout, resume equality, corrupt images, sentences; and notebook 01 in small mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_encoder, tiny_manifest

from lanic_nb.embed.store import EmbeddingStore, embed_manifest, sentence_table, split_sentences
from lanic_nb.manifest import manifest_hash
from lanic_nb.rundir import RunDir


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("enc"))


def _run(tmp_path, name, encoder, manifest, **kw):
    run = tmp_path / name
    return embed_manifest(run, encoder, manifest, data_dir=tmp_path / "data", **kw)


def test_store_layout_and_values(tmp_path, encoder):
    m = tiny_manifest(tmp_path / "data", n=7)
    store = _run(tmp_path, "a", encoder, m, batch_size=3)
    d = encoder.embed_dim
    assert store.image.shape == (7, d) and isinstance(store.image, np.memmap)
    assert store.header["manifest_hash"] == manifest_hash(m) and store.header["dtype"] == "float32"
    assert store.complete and store.ok.all()
    np.testing.assert_allclose(np.linalg.norm(store.image, axis=1), 1.0, rtol=1e-5)
    # The store's image rows equal encoding the decoded images directly (row alignment).
    from lanic_nb.images import load_image

    x = torch.stack([encoder.preprocess_array(torch.from_numpy(load_image(tmp_path / "data" / p)))
                     for p in m["image_path"]])
    np.testing.assert_allclose(store.image, encoder.encode_images(x).numpy(), atol=1e-5)
    # Reports: rows with empty report stay NaN; others equal encode_texts of the report.
    has = m["report"].str.len().to_numpy() > 0
    assert np.isnan(store.report[~has]).all() and not np.isnan(store.report[has]).any()
    np.testing.assert_allclose(store.report[has], encoder.encode_texts(list(m["report"][has])).numpy(), atol=1e-5)
    # Sentences: table aligned with the sentence matrix.
    assert len(store.sentences) == store.sentence.shape[0] > 0
    first = store.sentences.iloc[0]
    np.testing.assert_allclose(store.sentence[0], encoder.encode_texts([first["text"]])[0].numpy(), atol=1e-5)
    reopened = EmbeddingStore.open(RunDir(tmp_path / "a").embed)
    np.testing.assert_array_equal(reopened.image, store.image)


def test_resume_equals_uninterrupted_run(tmp_path, encoder):
    m = tiny_manifest(tmp_path / "data", n=11, corrupt=(4,))
    full = _run(tmp_path, "full", encoder, m, batch_size=3)
    part = _run(tmp_path, "part", encoder, m, batch_size=3, max_batches=2)
    assert not part.complete and part.header["done_batches"] == [0, 1]
    assert (part.status[6:] == "pending").all() and np.isnan(part.image[6:]).all()
    resumed = _run(tmp_path, "part", encoder, m, batch_size=3)
    assert resumed.complete
    for key in ("image", "report", "sentence"):
        a, b = getattr(full, key), getattr(resumed, key)
        assert a.tobytes() == b.tobytes(), key  # bit-for-bit, NaN rows included
    assert list(full.status) == list(resumed.status)


def test_changed_manifest_rebuilds(tmp_path, encoder):
    m = tiny_manifest(tmp_path / "data", n=6)
    _run(tmp_path, "r", encoder, m, batch_size=4, max_batches=1)
    store = _run(tmp_path, "r", encoder, m.iloc[:5].reset_index(drop=True), batch_size=4)
    assert store.image.shape[0] == 5 and store.complete and store.ok.all()


def test_corrupt_and_missing_images_are_nan_rows_with_reason(tmp_path, encoder):
    m = tiny_manifest(tmp_path / "data", n=6, corrupt=(1,))
    (tmp_path / "data" / m.loc[3, "image_path"]).unlink()
    store = _run(tmp_path, "c", encoder, m, batch_size=4)
    assert store.ok.tolist() == [True, False, True, False, True, True]
    assert "corrupt" in store.status[1] or "not a recognised" in store.status[1]
    assert store.status[3] == "file not found"
    assert np.isnan(store.image[[1, 3]]).all() and not np.isnan(store.image[store.ok]).any()
    from lanic_nb.io import read_table

    status = read_table(RunDir(tmp_path / "c").embed / "status.parquet")
    assert status["status"].tolist() == list(store.status) and status["image_id"].tolist() == list(m["image_id"])


def test_workers_give_the_same_embeddings(tmp_path, encoder):
    m = tiny_manifest(tmp_path / "data", n=5)
    a = _run(tmp_path, "w0", encoder, m, batch_size=2)
    b = _run(tmp_path, "w2", encoder, m, batch_size=2, num_workers=2)
    assert a.image.tobytes() == b.image.tobytes()


def test_sentence_split():
    assert split_sentences("FINDINGS: Heart is big. No effusion.\nIMPRESSION: Cardiomegaly.") == [
        "Heart is big.", "No effusion.", "Cardiomegaly."]
    t = sentence_table(["A b. C d.", "", "E f."])
    assert t["row"].tolist() == [0, 0, 2] and t["sentence"].tolist() == [0, 1, 0]


def test_bad_arguments(tmp_path, encoder):
    m = tiny_manifest(tmp_path / "data", n=2)
    with pytest.raises(ValueError, match="batch_size"):
        _run(tmp_path, "x", encoder, m, batch_size=0)


@pytest.mark.notebook
def test_notebook_01_small(small_run):
    from lanic_nb.manifest import FINDINGS
    from lanic_nb.rundir import load_metrics

    run = small_run.until("01")
    m = load_metrics(run, "01_embed")
    assert m["n_images"] > 0 and m["n_ok"] == m["n_images"] and m["n_sentences"] >= m["n_images"]
    assert 0.0 <= m["recall@10"] <= 1.0 and 0 < m["recall@10_chance"] <= 1.0
    assert set(m["zeroshot_auroc"]) == set(FINDINGS)
    assert all(v is None or 0.0 <= v <= 1.0 for v in m["zeroshot_auroc"].values())
    # Small mode embeds with the shipped phantom encoder, as the demo does: no CLIP is trained.
    assert "clip_steps" not in m and 0 <= m["encoder_load_seconds"] < 60
    assert m["encoder"].endswith("resources/phantom_encoder")
    card = m["encoder_card"]  # the encoder's figures on an unseen phantom seed, recorded with the run's
    assert card["probe_at_target"] >= 21 and len(card["probe_auroc"]) == 23 and card["zeroshot_auroc_mean"] >= 0.97
    store = EmbeddingStore.open(RunDir(run).embed)
    assert store.complete and store.image.shape == (m["n_images"], m["embed_dim"])
    scores = __import__("pandas").read_parquet(RunDir(run).clip / "zeroshot_scores.parquet")
    assert len(scores) == m["n_images"] and scores[list(FINDINGS)].stack().between(0, 1).all()
    assert not (RunDir(run).clip / "open_clip_model.safetensors").exists()


def test_retrained_encoder_under_the_same_name_rebuilds(tmp_path):
    m = tiny_manifest(tmp_path / "data", n=4)
    first = tiny_encoder(tmp_path / "clip", steps=0)
    a = np.array(_run(tmp_path, "s", first, m, batch_size=4).image)
    second = tiny_encoder(tmp_path / "clip", steps=2)  # same folder, same name, new weights
    assert first.name == second.name and first.fingerprint() != second.fingerprint()
    b = _run(tmp_path, "s", second, m, batch_size=4)
    assert b.header["encoder_fingerprint"] == second.fingerprint() and not np.allclose(a, b.image)


def test_run_embed_small_trains_a_clip_from_scratch(tmp_path):
    """The teaching option: model="small" trains a CLIP on the run's own pairs into clip/ and embeds with it."""
    from lanic_nb.embed.clip_small import SmallClipConfig
    from lanic_nb.embed.stage import EmbedConfig, run_embed
    from lanic_nb.phantom.config import PhantomConfig
    from lanic_nb.phantom.generate import make_phantom_dataset

    make_phantom_dataset(tmp_path, PhantomConfig(n_images=40, image_size=32), workers=1)
    res = run_embed(tmp_path, EmbedConfig(device="cpu", model="small", batch_size=16, num_workers=0,
                                          small_clip=SmallClipConfig(steps=2, batch_size=8, image_size=32)))
    assert res.train_log is not None and len(res.train_log["losses"]) == 2 and res.card is None
    assert res.summary["clip_steps"] == 2 and "encoder_load_seconds" not in res.summary
    assert res.encoder.name == f"local-dir:{(RunDir(tmp_path).clip).resolve()}"
    assert res.store.complete and res.store.image.shape == (40, res.encoder.embed_dim)

"""Synthetic data of ``bench/scale.py``: a MIMIC-sized embedding store with planted directions, and the rest of a
minimal run directory (manifest, placeholder images, concept vocabulary). Helpers only; nothing runs here.

Each row is a sparse non-negative combination of K known unit directions in R^d (direction k active with its
own probability, 2-20%, magnitude uniform in [0.5, 1.5]) plus Gaussian noise, L2-normalized. Finding j of
five is positive when one of its directions (k % 5 == j) is strongly present (then 5% of labels flipped, 5%
uncertain, 30% missing), so the classifier's masked loss sees every label kind. Every direction feeds a
finding on purpose: a direction the labels ignore gets little variance in the classifier's hidden layer,
and the transcoders, which reconstruct that layer, have little reason to spend a latent on it. The store is
written with the library's own embedding-store layout (lanic_nb.embed.store), so the gallery and
load_embedded read it as they read a real run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lanic_nb.concepts.vocabulary import CATEGORIES
from lanic_nb.embed.store import FILES, FORMAT_VERSION, _new_store, _write_status, sentence_table
from lanic_nb.io import write_json, write_table
from lanic_nb.manifest import FINDINGS, conform, manifest_hash
from lanic_nb.rundir import RunDir

CHUNK = 16384  # rows generated per step (bounds the temporaries to a few tens of MB)
N_THUMBS = 16  # placeholder PNGs, reused cyclically by every row


@dataclass
class Planted:
    """What was planted (ground truth for the final check; the pipeline never sees it)."""

    directions: np.ndarray  # (K, d) unit rows
    prob: np.ndarray  # (K,) activation probability of each direction
    active: np.ndarray  # (n_rows, K) bool: direction k present in row i
    labels: np.ndarray  # (n_rows, 5) the manifest's labels: 1 / 0 / -1 / NaN
    split: np.ndarray  # (n_rows,) "train" / "val" / "test"


def splits(n_rows: int, n_val: int, n_test: int, seed: int) -> np.ndarray:
    """Random split with exactly n_val / n_test rows (one patient per row, so no patient crosses splits)."""
    order = np.random.default_rng([seed, 1]).permutation(n_rows)
    split = np.full(n_rows, "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    return split


def build_manifest(n_rows: int, split: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """The manifest of the synthetic run: cyclic placeholder image paths, one patient per row, no reports.

    dataset is "phantom" because the only images anyone sees (the HTML thumbnails) are phantom drawings; the
    gallery's patient-data guard keys on that name.
    """
    rows = np.arange(n_rows)
    ids = pd.Series(rows).map("syn{:06d}".format)
    df = pd.DataFrame({
        "image_id": ids, "image_path": pd.Series(rows % N_THUMBS).map("images/thumb_{:02d}.png".format),
        "patient_id": ids, "study_id": ids, "view": "PA", "split": split, "report": "", "dataset": "phantom",
        "status": "ok"})
    for j, f in enumerate(FINDINGS):
        df[f] = np.nan if labels is None else labels[:, j]
    return conform(df)


def write_embedding_store(run: RunDir, n_rows: int, dim: int, n_dirs: int, n_val: int, n_test: int,
                          seed: int = 0, noise: float = 0.01) -> tuple[np.memmap, Planted]:
    """Generate the rows straight into ``run/embed/image.f32`` (the library's store layout) and write the
    manifest; returns the writable memmap (n_rows, dim) and the planted truth."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_dirs, dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    prob = np.exp(rng.uniform(np.log(0.02), np.log(0.2), n_dirs)).astype(np.float32)
    split = splits(n_rows, n_val, n_test, seed)
    bare = build_manifest(n_rows, split)
    header = {"format_version": FORMAT_VERSION, "encoder": "synthetic:planted-directions",
              "encoder_fingerprint": f"synthetic-{seed}", "preprocess": "none (synthetic)", "dim": dim,
              "dtype": "float32", "n_rows": n_rows, "n_sentences": 0, "manifest_hash": manifest_hash(bare),
              "batch_size": n_rows, "files": FILES, "done_batches": [], "errors": {}, "complete": False}
    folder = run.embed
    _new_store(folder, header, sentence_table([]))
    x = np.memmap(folder / FILES["image"], dtype=np.float32, mode="r+", shape=(n_rows, dim))
    active = np.zeros((n_rows, n_dirs), dtype=bool)
    labels = np.zeros((n_rows, len(FINDINGS)), dtype=np.float32)
    for s in range(0, n_rows, CHUNK):
        m = min(CHUNK, n_rows - s)
        on = rng.random((m, n_dirs), dtype=np.float32) < prob
        coef = on * rng.uniform(0.5, 1.5, (m, n_dirs)).astype(np.float32)
        v = coef @ dirs + noise * rng.standard_normal((m, dim), dtype=np.float32)
        x[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        active[s : s + m] = on
        labels[s : s + m] = _label_rule(coef, rng)
    x.flush()
    write_manifest(run, build_manifest(n_rows, split, labels))
    header.update(done_batches=[0], complete=True)
    write_json(folder / "header.json", header)
    _write_status(folder, header, bare["image_id"].astype(str).tolist())
    return x, Planted(dirs, prob, active, labels, split)


def _label_rule(coef: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Finding j is positive when any direction k with k % 5 == j is strongly present (coefficient above 1.0),
    so every planted direction is evidence for one finding and the classifier's hidden layer must carry all
    of them; then 5% of labels flipped, 5% uncertain (-1), 30% missing (NaN)."""
    y = np.stack([(coef[:, j::5] > 1.0).any(axis=1) for j in range(5)], axis=1).astype(np.float32)  # (m, 5)
    u = rng.random(y.shape)
    y = np.where(u < 0.05, 1.0 - y, y)
    y = np.where((u >= 0.05) & (u < 0.10), -1.0, y)
    return np.where(u >= 0.70, np.nan, y).astype(np.float32)


def write_manifest(run: RunDir, manifest: pd.DataFrame) -> Path:
    return write_table(run.manifest, manifest)


def write_thumbnails(run: RunDir, size: int = 64) -> None:
    """The N_THUMBS placeholder PNGs every row's image_path points to (phantom drawings at ``size`` px)."""
    from lanic_nb.phantom.config import PhantomConfig
    from lanic_nb.phantom.generate import generate_image

    cfg = PhantomConfig(n_images=N_THUMBS, image_size=size)
    for i in range(N_THUMBS):
        img, _ = generate_image(cfg, i)
        path = run.data / "images" / f"thumb_{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)


def concept_vocabulary(planted: Planted, n_distractors: int, seed: int = 0
                       ) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor]:
    """A synthetic vocabulary: one concept per planted direction (its "text embedding" is the direction) and
    ``n_distractors`` concepts at random directions; categories cycle through the library's six. Returns
    (vocab with concept / category / synonyms / mined, concept embeddings (C, d), template embedding (d,))."""
    rng = np.random.default_rng([seed, 2])
    k, d = planted.directions.shape
    noise = rng.standard_normal((n_distractors + 1, d)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    emb = np.concatenate([planted.directions, noise[:-1]])
    names = [f"planted {i:02d}" for i in range(k)] + [f"distractor {i:03d}" for i in range(n_distractors)]
    vocab = pd.DataFrame({"concept": names, "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(len(names))],
                          "synonyms": [[] for _ in names], "mined": False})
    return vocab, torch.from_numpy(emb), torch.from_numpy(noise[-1])

"""The phantom encoder's card: the fingerprint of the phantom generator it was trained on, and its figures.

* **Fingerprint.** The encoder only means something for the generator that drew its training images. The
  card records a fingerprint of a fixed set of generated images (their truth and report text exactly, their
  pixels as 4x4-pooled thumbnails, which survive last-bit differences of floating point between CPUs but not
  a changed drawing); a test fails when the generator drifts from it, so the shipped weights are retrained
  rather than silently mismatched.
* **Figures**, measured on a phantom seed the encoder never saw, with the demo's population: a linear probe
  on the image embedding per planted concept (AUROC), zero-shot AUROC of the five findings (prompt pairs, as
  notebook 01), and image-to-report recall@10 against chance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lanic_nb.embed.clip_eval import evaluate_clip, zero_shot_scores
from lanic_nb.embed.encoders import Encoder, load_encoder, preprocess_gray
from lanic_nb.io import read_tensors, write_tensors
from lanic_nb.manifest import FINDINGS, split_by_patient
from lanic_nb.metrics import probe_aurocs
from lanic_nb.phantom.config import CONCEPT_NAMES, PhantomConfig
from lanic_nb.phantom.generate import generate_study, patient_index, study_report

log = logging.getLogger(__name__)

FINGERPRINT_NAME = "fingerprint.safetensors"
FINGERPRINT_CONFIG = PhantomConfig(n_images=12, image_size=224, seed=424_242)
FINGERPRINT_POOL = 4
PROBE_TARGET = 0.95


def _fingerprint_images() -> tuple[torch.Tensor, str]:
    """(n, 56, 56) pooled thumbnails of the fingerprint set and the sha256 of its truth and report text."""
    cfg = FINGERPRINT_CONFIG
    thumbs, h = [], hashlib.sha256()
    for i in range(cfg.n_images):
        img, rows, states = generate_study(cfg, i)
        x = torch.from_numpy(img).float()[None, None]
        thumbs.append(F.avg_pool2d(x, FINGERPRINT_POOL)[0, 0])
        report = study_report(cfg, i, rows, states)
        h.update(json.dumps([[r.concept, r.present, r.side, r.severity] for r in rows]).encode())
        h.update(json.dumps({k: v for k, v in states.items()}, sort_keys=True).encode())
        h.update(report.text.encode())
    return torch.stack(thumbs), h.hexdigest()


def generator_fingerprint() -> dict:
    """What the card records: the text hash, a hash of the thumbnails rounded to whole gray levels, the set."""
    thumbs, text_hash = _fingerprint_images()
    pix = hashlib.sha256(thumbs.round().to(torch.uint8).numpy().tobytes()).hexdigest()
    return {"truth_and_reports_sha256": text_hash, "thumbnails_sha256": pix, "seed": FINGERPRINT_CONFIG.seed,
            "n_images": FINGERPRINT_CONFIG.n_images, "image_size": FINGERPRINT_CONFIG.image_size,
            "pool": FINGERPRINT_POOL}


def write_fingerprint(folder: str | Path) -> Path:
    thumbs, text_hash = _fingerprint_images()
    path = Path(folder) / FINGERPRINT_NAME
    write_tensors(path, {"thumbnails": thumbs}, metadata={"truth_and_reports_sha256": text_hash})
    return path


def check_fingerprint(folder: str | Path, tolerance: float = 0.5) -> tuple[bool, str]:
    """Does today's generator still draw what the encoder in ``folder`` was trained on?

    Exact on truth and report text; on pixels, every pooled thumbnail value within ``tolerance`` gray levels.
    """
    from safetensors import safe_open

    path = Path(folder) / FINGERPRINT_NAME
    with safe_open(str(path), framework="pt") as f:
        want_hash = (f.metadata() or {}).get("truth_and_reports_sha256")
    want = read_tensors(path)["thumbnails"]
    thumbs, text_hash = _fingerprint_images()
    if text_hash != want_hash:
        return False, "the phantom's truth or reports changed since the encoder was trained"
    diff = float((thumbs - want).abs().max())
    if diff > tolerance:
        return False, f"the phantom's images changed since the encoder was trained (max pooled difference {diff:.2f})"
    return True, f"matches (max pooled difference {diff:.3f} gray levels)"


def held_out_phantom(cfg: PhantomConfig) -> tuple[torch.Tensor, pd.DataFrame, pd.DataFrame]:
    """Images (n, S, S) in [0, 1], a manifest-like table (image_id, patient_id, report, split, labels) and
    the truth (n, n_concepts) of a phantom drawn in memory."""
    from lanic_nb.data.labeler import label_reports

    images, records, truth = [], [], []
    for i in range(cfg.n_images):
        img, rows, states = generate_study(cfg, i)
        images.append(torch.from_numpy(img))
        report = study_report(cfg, i, rows, states)
        records.append({"image_id": f"ph{i:06d}", "patient_id": f"p{patient_index(cfg, i):05d}",
                        "report": report.text})
        truth.append({r.concept: r.present for r in rows})
    table = pd.DataFrame(records)
    labels = label_reports(table["report"].tolist())
    for f in FINDINGS:
        table[f] = labels[f].to_numpy()
    table["split"] = split_by_patient(table["patient_id"], (0.7, 0.0, 0.3), seed=cfg.seed)
    return torch.stack(images), table, pd.DataFrame(truth)[list(CONCEPT_NAMES)]


@torch.no_grad()
def embed_gray(model: torch.nn.Module, images: torch.Tensor, size: int, mean, std, batch: int = 256) -> np.ndarray:
    """(n, H, W) uint8 films -> (n, d) unit image embeddings, preprocessed as ``Encoder.preprocess_array``."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([preprocess_gray(im.float() / 255.0, size, mean, std) for im in images[i: i + batch]])
        out.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1).cpu())
    return torch.cat(out).numpy()


class ProgressProbe:
    """The check pretraining logs every few thousand steps: linear probes on held-out hospital phantoms."""

    def __init__(self, cfg, n_images: int = 1200):
        self.size = cfg.image_size
        phantom = PhantomConfig(n_images=n_images, image_size=cfg.source_size, seed=cfg.eval_seed + 1)
        self.images, table, truth = held_out_phantom(phantom)
        self.train = (table["split"] == "train").to_numpy()
        self.truth = truth.to_numpy(bool)

    def __call__(self, model: torch.nn.Module, tokenizer=None) -> dict:
        from lanic_nb.embed.clip_small import CLIP_MEAN, CLIP_STD

        model.eval()
        emb = embed_gray(model, self.images, self.size, CLIP_MEAN, CLIP_STD)
        auc = probe_aurocs(emb, self.truth, self.train, ~self.train)
        return {"probe_at_target": int(np.nansum(auc >= PROBE_TARGET)),
                "probe_auroc": {c: round(float(a), 3) for c, a in zip(CONCEPT_NAMES, auc, strict=True)}}


def evaluate_encoder(encoder: Encoder | str, cfg=None, n_images: int = 4000, seed: int | None = None) -> dict:
    """The card's figures on ``n_images`` unseen phantom films (the demo's population, seed ``eval_seed``)."""
    t0 = time.perf_counter()
    if isinstance(encoder, str):
        encoder = load_encoder(encoder)
    seed = seed if seed is not None else (cfg.eval_seed if cfg is not None else 2_027)
    phantom = PhantomConfig(n_images=n_images, image_size=224, seed=seed)
    images, table, truth = held_out_phantom(phantom)
    emb = embed_gray(encoder.model, images, encoder.image_size, encoder.mean, encoder.std)
    train, test = (table["split"] == "train").to_numpy(), (table["split"] == "test").to_numpy()
    auc = probe_aurocs(emb, truth.to_numpy(bool), train, test)
    probe = {c: round(float(a), 4) for c, a in zip(CONCEPT_NAMES, auc, strict=True)}
    reports = encoder.encode_texts(table["report"].tolist()).cpu().numpy()
    scores = zero_shot_scores(encoder, emb)
    clip = evaluate_clip(table, emb, reports, scores, split="test")
    missed = sorted(c for c, a in probe.items() if not a >= PROBE_TARGET)
    summary = (f"probe AUROC >= {PROBE_TARGET} for {len(CONCEPT_NAMES) - len(missed)} of {len(CONCEPT_NAMES)} "
               f"concepts; zero-shot mean {clip['zeroshot_auroc_mean']:.3f}; recall@10 {clip['recall@10']:.2f} "
               f"(chance {clip['recall@10_chance']:.3f})")
    return {
        "phantom": {"seed": seed, "n_images": n_images, "population": "hospital (latent states), default shortcut",
                    "n_train": int(train.sum()), "n_test": int(test.sum())},
        "probe_auroc": probe, "probe_target": PROBE_TARGET,
        "probe_at_target": len(CONCEPT_NAMES) - len(missed), "probe_missed": missed,
        "zeroshot_auroc": clip["zeroshot_auroc"], "zeroshot_auroc_mean": clip["zeroshot_auroc_mean"],
        "recall@10": clip["recall@10"], "recall@10_chance": clip["recall@10_chance"],
        "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
    }

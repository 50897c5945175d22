"""How well a CLIP encoder reads the run's images: image-to-report retrieval and zero-shot scores of the five
findings (prompt pairs), written to ``clip/``. Works for any encoder (the small CLIP, BiomedCLIP, a folder)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lanic_nb.embed.encoders import (
    Encoder,
)
from lanic_nb.io import write_json, write_table
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import auroc
from lanic_nb.rundir import RunDir

log = logging.getLogger(__name__)


# Zero-shot prompt pairs, phrased the way reports phrase a finding and its negation.
# Several prompts per side are averaged (CLIP's prompt ensembling).
PROMPTS: dict[str, tuple[list[str], list[str]]] = {
    "Atelectasis": (["atelectasis.", "basilar atelectasis."], ["no atelectasis.", "no evidence of atelectasis."]),
    "Cardiomegaly": (["cardiomegaly.", "the heart is enlarged."], ["no cardiomegaly.", "normal heart size."]),
    "Consolidation": (["consolidation.", "lung consolidation."], ["no consolidation.", "no focal consolidation."]),
    "Edema": (["pulmonary edema.", "interstitial edema."], ["no pulmonary edema.", "no evidence of edema."]),
    "Pleural Effusion": (["pleural effusion.", "there is a pleural effusion."],
                         ["no pleural effusion.", "the costophrenic angles are sharp."]),
}



def zero_shot_scores(encoder: Encoder, image_emb: np.ndarray, prompts: dict | None = None) -> pd.DataFrame:
    """(n, d) normalized image embeddings -> (n, 5) P(positive prompt | image) per finding.

    Each finding is a two-way softmax between its positive and negative prompt embeddings (prompts of
    one side averaged, then renormalized), with the model's own temperature.
    """
    prompts = prompts or PROMPTS
    scale = encoder.model.logit_scale.exp().item()
    x = torch.from_numpy(np.nan_to_num(np.asarray(image_emb, dtype=np.float32))).to(encoder.device)
    cols = {}
    for f in FINDINGS:
        pos, neg = (F.normalize(encoder.encode_texts(p).mean(0), dim=0) for p in prompts[f])
        logits = scale * (x @ torch.stack([pos, neg]).T)  # (n, 2)
        cols[f] = logits.softmax(-1)[:, 0].cpu().numpy()
    out = pd.DataFrame(cols)
    out[np.isnan(np.asarray(image_emb)).any(1)] = np.nan  # unreadable images get no score
    return out


def evaluate_clip(
    manifest: pd.DataFrame, image_emb: np.ndarray, report_emb: np.ndarray, scores: pd.DataFrame,
    split: str = "test", k: int = 10,
) -> dict:
    """Image->report recall@k and zero-shot AUROC per finding on ``split``.

    A retrieval hit is a top-k report whose text equals the image's own report (templated reports repeat,
    and identical texts have identical embeddings). Zero-shot AUROC: label 1 vs 0/not mentioned, -1 dropped.
    """
    usable = ~np.isnan(image_emb).any(1) & ~np.isnan(report_emb).any(1)
    rows = np.flatnonzero((manifest["split"] == split).to_numpy() & usable)
    texts = manifest["report"].astype(str).to_numpy()[rows]
    sim = image_emb[rows] @ report_emb[rows].T  # (m, m)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    hits = (texts[top] == texts[:, None]).any(1)
    metrics: dict = {"split": split, "n_images": int(len(rows)), f"recall@{k}": float(hits.mean()),
                     f"recall@{k}_chance": float(min(1.0, k / max(1, len(rows))))}
    aucs = {}
    for f in FINDINGS:
        y = manifest[f].to_numpy(dtype=float)[rows]
        keep = y != -1
        yb = (y[keep] == 1).astype(int)
        aucs[f] = auroc(yb, scores[f].to_numpy()[rows][keep]) if 0 < yb.sum() < len(yb) else None
    metrics["zeroshot_auroc"] = aucs
    valid = [v for v in aucs.values() if v is not None]
    metrics["zeroshot_auroc_mean"] = float(np.mean(valid)) if valid else None
    return metrics


def write_clip_evaluation(
    run_dir: str | Path, encoder: Encoder, manifest: pd.DataFrame, image_emb: np.ndarray, report_emb: np.ndarray,
    split: str = "test",
) -> dict:
    """Zero-shot scores of every image and the ``split`` metrics -> clip/zeroshot_scores.parquet, metrics.json."""
    rd = RunDir(Path(run_dir))
    image_emb, report_emb = np.asarray(image_emb), np.asarray(report_emb)
    scores = zero_shot_scores(encoder, image_emb)
    metrics = dict(evaluate_clip(manifest, image_emb, report_emb, scores, split), encoder=encoder.name)
    write_table(rd.clip / "zeroshot_scores.parquet",
                pd.concat([manifest[["image_id"]].reset_index(drop=True), scores], axis=1))
    write_json(rd.clip / "metrics.json", metrics)
    return metrics

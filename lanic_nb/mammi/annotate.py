"""Name neurons three ways from the same activations and image-concept similarities: MAMMI and two baselines.

* **MAMMI** (Kim, Ahn, Kim, MICCAI 2024): ``lanic_nb.concepts.annotate.annotate_units`` (adaptive
  representative images, beta threshold), the same naming the transcoder patterns get.
* **CLIP-Dissect** (Oikarinen & Weng, ICLR 2023), its soft-WPMI score: with p(t|x) the VLM's softmax over
  concepts for image x, a neuron's top-k images weighted by a softmax of their activations give
  p(t|neuron) = sum_i w_i p(t|x_i); score = log p(t|neuron) - lambda log p(t), p(t) the mean over all images.
* **top-k mean**: the mean (centred) similarity of each concept over the neuron's k top images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lanic_nb.concepts.annotate import AnnotationConfig, annotate_units

METHODS = ("mammi", "clip_dissect", "topk_mean")


def clip_dissect_scores(
    activations: np.ndarray, similarity: np.ndarray, k: int = 20, temperature: float = 0.05,
    lam: float = 1.0, act_temperature: float = 1.0,
) -> np.ndarray:
    """(n_units, n_concepts) soft-WPMI scores, CLIP-Dissect style (higher = better name).

    similarity: (n_images, n_concepts) image-text similarity; p(t|x) = softmax(similarity / temperature).
    A unit's top-k images are weighted by softmax of their (range-normalized) activation / act_temperature.
    """
    act = np.asarray(activations, np.float64)
    logits = np.asarray(similarity, np.float64) / temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)  # (n, C)
    log_prior = np.log(p.mean(axis=0) + 1e-12)  # (C,)
    k = min(k, len(act))
    out = np.zeros((act.shape[1], p.shape[1]))
    for u in range(act.shape[1]):
        a = act[:, u]
        top = np.argsort(-a, kind="stable")[:k]
        span = max(float(a.max() - a.min()), 1e-12)
        w = np.exp((a[top] - a[top].max()) / span / act_temperature * k)  # sharper for larger k
        w /= w.sum()
        out[u] = np.log(w @ p[top] + 1e-12) - lam * log_prior
    return out


def topk_mean_scores(activations: np.ndarray, similarity: np.ndarray, k: int = 20) -> np.ndarray:
    """(n_units, n_concepts) mean centred similarity over each unit's k top-activating images."""
    act = np.asarray(activations)
    sim = np.asarray(similarity, np.float64)
    sim = sim - sim.mean(axis=0, keepdims=True)  # a concept close to every image names none
    top = np.argsort(-act, axis=0, kind="stable")[: min(k, len(act))]  # (k, n_units)
    return sim[top].mean(axis=0)  # (n_units, C)


def annotate_neurons(
    activations: np.ndarray, similarity: np.ndarray, vocab: pd.DataFrame, cfg: AnnotationConfig | None = None,
    k: int = 20,
) -> pd.DataFrame:
    """One row per unit: MAMMI's annotation (concepts.annotate_units) plus both baselines' top concept."""
    table = annotate_units(activations, similarity, vocab, cfg)
    concepts = vocab["concept"].to_numpy()
    for method, scores in (("clip_dissect", clip_dissect_scores(activations, similarity, k=k)),
                           ("topk_mean", topk_mean_scores(activations, similarity, k=k))):
        best = scores.argmax(axis=1)
        table[f"{method}_concept"] = concepts[best] if len(concepts) else ""
        table[f"{method}_score"] = scores[np.arange(len(best)), best]
    return table.rename(columns={"concept_1": "mammi_concept", "score_1": "mammi_score"})


def neuron_table(unit_set: str, annotations: pd.DataFrame, per_unit: pd.DataFrame | None) -> pd.DataFrame:
    """The rows written to ``mammi/neurons.parquet`` for one unit set (names of all methods, truth if any)."""
    cols = ["unit", "n_images", "mammi_concept", "mammi_score", "n_kept", "category",
            "clip_dissect_concept", "clip_dissect_score", "topk_mean_concept", "topk_mean_score"]
    out = annotations.reindex(columns=cols)  # a set whose units never vary lacks the concept columns
    if per_unit is not None:
        out = out.merge(per_unit, on="unit", how="left")
    out.insert(0, "unit_set", unit_set)
    return out

"""Name the neurons of any torch model with concepts, mask-free (MAMMI), next to two simpler baselines.

MAMMI (Kim, Ahn, Kim, MICCAI 2024) needs only a neuron's activations over a probing set and a
vision-language model: the neuron's *representative* images (adaptive count) are scored against every
concept prompt, and concepts within beta = 0.95 of the best are kept. That scoring already lives in
``lanic_nb.concepts.annotate.annotate_units`` (used for the transcoder patterns); here it is applied to neurons,
whose activations come from forward hooks (conv channels averaged over space, as MAMMI does for DenseNet).

Two baselines read the same (n_images, n_units) activations and (n_images, n_concepts) similarities:

* **CLIP-Dissect** (Oikarinen & Weng, ICLR 2023), its soft-WPMI score: with p(t|x) the VLM's softmax over
  concepts for image x, a neuron's top-k images weighted by a softmax of their activations give
  p(t|neuron) = sum_i w_i p(t|x_i); score = log p(t|neuron) - lambda log p(t), p(t) the mean over all images.
* **top-k mean**: the mean (centred) similarity of each concept over the neuron's k top images.

A small CNN trained here on the phantom for the five findings is the model whose neurons are named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lanic_nb.checks import require_at_least_one
from lanic_nb.classify import masked_bce, policy_targets
from lanic_nb.concepts.annotate import AnnotationConfig, annotate_units, match_concept
from lanic_nb.manifest import FINDINGS
from lanic_nb.metrics import auroc_matrix, mean_auroc
from lanic_nb.progress import progress as progress_bar

log = logging.getLogger(__name__)

METHODS = ("mammi", "clip_dissect", "topk_mean")

# ------------------------------------------------------------------------------------------ activations


def _batch_input(batch) -> torch.Tensor:
    # Loaders yield a tensor, or a tuple/list/dict whose first (or "image") entry is the input.
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


@torch.no_grad()
def capture_activations(
    model: nn.Module, layer_name: str, loader: Iterable, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(n_images, n_units) activations of ``model``'s submodule ``layer_name`` over ``loader``.

    A forward hook reads the layer's output: (batch, C, H, W) conv maps are averaged over space (one value
    per channel, as MAMMI does), (batch, U) outputs are kept, anything else is flattened after dim 1.
    """
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise ValueError(f"layer_name {layer_name!r} is not a submodule; some are {list(modules)[1:8]}")
    chunks: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.mean(dim=(2, 3)) if out.dim() == 4 else out.flatten(1)  # (batch, n_units)
        chunks.append(out.detach().float().cpu())

    handle = modules[layer_name].register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            model(_batch_input(batch).to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------------ the small CNN


@dataclass
class CNNConfig:
    """A tiny CNN for the five findings, trained on the phantom's grayscale images."""

    image_size: int = 64
    """Input side in pixels (images are resized to it)."""
    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    """Output channels of the conv blocks; the last block ("conv<n>") is the layer annotated. Each block but the
    last halves the side, so five blocks see ~63 px of a 64 px image (cardiomegaly needs that view; three blocks
    see ~15 px and reached mean AUROC 0.70 on the demo phantom, five 0.91)."""
    hidden: int = 64
    """Width of the fully connected hidden layer ("fc1")."""
    epochs: int = 12
    """Training epochs."""
    lr: float = 3e-3
    """AdamW learning rate."""
    batch_size: int = 64
    """Minibatch size."""
    seed: int = 0
    """Seeds the initialization and the batch order."""

    def __post_init__(self) -> None:
        require_at_least_one(self, ("image_size", "hidden", "epochs", "batch_size"))
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class FindingCNN(nn.Module):
    """(batch, 1, S, S) -> conv blocks (conv, ReLU, 2x2 max-pool) -> global mean -> fc1 -> ReLU -> 5 logits."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        c_in = 1
        for i, c in enumerate(cfg.channels, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c, 3, padding=1))
            c_in = c
        self.fc1 = nn.Linear(c_in, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, len(FINDINGS))

    @property
    def last_conv(self) -> str:
        return f"conv{len(self.cfg.channels)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(self.cfg.channels) + 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
            if i < len(self.cfg.channels):
                x = F.max_pool2d(x, 2)
        return self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    x = images.float().unsqueeze(1)  # (n, 1, H, W)
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def train_cnn(
    images: torch.Tensor, labels: np.ndarray, cfg: CNNConfig, device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FindingCNN, pd.DataFrame]:
    """Train on (n, H, W) [0, 1] images and (n, 5) labels (1 / 0 / -1 / NaN; uncertain and missing ignored)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = FindingCNN(cfg).to(device)
    x = _resize(images, cfg.image_size)
    t = policy_targets(labels, "ignore")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rows = []
    model.train()
    for epoch in progress_bar(range(cfg.epochs), desc="cnn", disable=not progress):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = masked_bce(model(x[idx].to(device)), t[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        rows.append({"epoch": epoch + 1, "loss": total / max(1, len(x))})
    model.eval()
    return model, pd.DataFrame(rows)


@torch.no_grad()
def cnn_auroc(model: FindingCNN, images: torch.Tensor, labels: np.ndarray, device="cpu") -> float:
    """Mean AUROC over the five findings (uncertain labels left out)."""
    x = _resize(images, model.cfg.image_size)
    logits = torch.cat([model(x[s : s + 256].to(device)).cpu() for s in range(0, len(x), 256)])
    return mean_auroc(np.asarray(labels, np.float32), logits.numpy())


def image_batches(images: torch.Tensor, size: int, batch_size: int = 256) -> list[torch.Tensor]:
    """(n, H, W) images as a list of (b, 1, size, size) batches: a loader for ``capture_activations``."""
    x = _resize(images, size)
    return [x[s : s + batch_size] for s in range(0, len(x), batch_size)]


# ------------------------------------------------------------------------------------------ baselines


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


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_annotations(
    activations: np.ndarray, annotations: pd.DataFrame, presence: pd.DataFrame, vocab: pd.DataFrame,
    monosemantic_at: float = 0.9,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score each method's names against planted truth (phantom only; ``presence`` from lanic_nb.evaluation).

    presence: (n_images, n_planted) bool, row-aligned with ``activations``. Per unit: its best planted concept
    and AUROC (monosemanticity), and per method the AUROC of the unit for the planted concept its name refers
    to (0.5 when the name is no planted concept). Summary per method: mean assigned AUROC, and top-1 accuracy
    over monosemantic units (best AUROC >= monosemantic_at): the name equals that concept's vocabulary entry.
    """
    from lanic_nb.patterns.evaluate import best_concepts

    planted = list(presence.columns)
    auc = auroc_matrix(activations, presence.to_numpy())  # (n_units, n_planted)
    per_unit = best_concepts(auc, planted)
    vocab_of = {p: match_concept(p, vocab) for p in planted}
    planted_of: dict[str, int] = {}
    for i, p in enumerate(planted):
        if vocab_of[p] is not None:
            planted_of.setdefault(vocab_of[p], i)
    mono = per_unit["best_auroc"].to_numpy() >= monosemantic_at
    truth = np.array([vocab_of[c] for c in per_unit["best_concept"]], dtype=object)
    summary = {"n_units": len(per_unit), "n_monosemantic": int(mono.sum()),
               "mean_best_auroc": float(per_unit["best_auroc"].mean()) if len(per_unit) else np.nan}
    for m in METHODS:
        names = annotations[f"{m}_concept"].fillna("").to_numpy()
        idx = [planted_of.get(n, -1) for n in names]
        assigned = np.array([auc[u, j] if j >= 0 and np.isfinite(auc[u, j]) else 0.5 for u, j in enumerate(idx)])
        per_unit[f"{m}_auroc"] = assigned
        summary[f"{m}_assigned_auroc"] = float(assigned.mean()) if len(assigned) else np.nan
        summary[f"{m}_top1_accuracy"] = float((names[mono] == truth[mono]).mean()) if mono.any() else np.nan
    return per_unit, pd.DataFrame([summary])


def vlm_ceiling(similarity: np.ndarray, presence: pd.DataFrame, vocab: pd.DataFrame) -> pd.DataFrame:
    """Per planted concept, the AUROC of the VLM's similarity to that concept's vocabulary entry over all images.

    Any annotator that reads only image-text similarity can name a unit for a concept only as well as the VLM
    tells that concept's images apart: this is the ceiling of every method here (phantom only, evaluation).
    """

    auc = auroc_matrix(similarity, presence.to_numpy())  # (n_concepts in vocab, n_planted)
    index = {c: i for i, c in enumerate(vocab["concept"])}
    rows = []
    for j, planted in enumerate(presence.columns):
        name = match_concept(planted, vocab)
        i = index.get(name, -1)
        rows.append({"planted": planted, "concept": name or "", "zero_shot_auroc": float(auc[i, j]) if i >= 0 else np.nan})
    return pd.DataFrame(rows, columns=["planted", "concept", "zero_shot_auroc"])


def ceiling_metrics(ceiling: pd.DataFrame | None) -> dict:
    """``vlm_ceiling_mean`` and the per-concept ``vlm_ceiling`` for record_metrics ({} without planted truth)."""
    if ceiling is None or not len(ceiling):
        return {}
    auc = ceiling["zero_shot_auroc"].astype(float)
    return {"vlm_ceiling_mean": float(auc.mean()),
            "vlm_ceiling": {p: round(float(a), 3) for p, a in zip(ceiling["planted"], auc, strict=True)}}


def neuron_table(unit_set: str, annotations: pd.DataFrame, per_unit: pd.DataFrame | None) -> pd.DataFrame:
    """The rows written to ``mammi/neurons.parquet`` for one unit set (names of all methods, truth if any)."""
    cols = ["unit", "n_images", "mammi_concept", "mammi_score", "n_kept", "category",
            "clip_dissect_concept", "clip_dissect_score", "topk_mean_concept", "topk_mean_score"]
    out = annotations.reindex(columns=cols)  # a set whose units never vary lacks the concept columns
    if per_unit is not None:
        out = out.merge(per_unit, on="unit", how="left")
    out.insert(0, "unit_set", unit_set)
    return out


# ------------------------------------------------------------------------------------------ the stage


def load_images(manifest: pd.DataFrame, data_dir, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The manifest's images as one (n, size, size) [0, 1] tensor, and an ok mask (unreadable -> False)."""
    from pathlib import Path

    from lanic_nb.embed.clip_small import load_gray_stack, manifest_images

    return load_gray_stack(manifest_images(manifest, Path(data_dir)), size)


def unit_activations(inp, patterns, cnn: FindingCNN, images: torch.Tensor, device="cpu") -> dict[str, np.ndarray]:
    """(n_images, n_units) activations of the three unit sets compared: the CNN's last conv channels, the
    diagnostic classifier's hidden units, and the transcoder patterns (``inp``: patterns.load_stage_inputs,
    ``patterns``: the run's PatternSet)."""
    from lanic_nb.patterns.merge import pattern_activations
    from lanic_nb.transcoder.stage import hidden_targets

    return {
        "cnn last conv": capture_activations(cnn, cnn.last_conv, image_batches(images, cnn.cfg.image_size), device),
        "classifier hidden": hidden_targets(inp.classifier, inp.x.numpy(), device).cpu().numpy(),
        "transcoder patterns": pattern_activations(inp.ensemble, patterns, inp.x).numpy(),
    }


def evaluate_stage(
    run_dir, image_ids, sets: dict[str, tuple[np.ndarray, pd.DataFrame]], vocab: pd.DataFrame,
    monosemantic_at: float = 0.9, similarity: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Summary (one row per unit set) and per-unit truth tables; empty on a run without planted truth.
    With ``similarity`` (n_images, n_concepts), the tables also hold "vlm ceiling" (:func:`vlm_ceiling`)."""
    from lanic_nb.evaluation import ground_truth_matrix, has_ground_truth, load_ground_truth

    if not has_ground_truth(run_dir):
        return pd.DataFrame(), {}
    presence = ground_truth_matrix(load_ground_truth(run_dir), list(image_ids))
    rows, per_unit = [], {}
    if similarity is not None:
        per_unit["vlm ceiling"] = vlm_ceiling(similarity, presence, vocab)
    for name, (act, ann) in sets.items():
        per_unit[name], summary = evaluate_annotations(act, ann, presence, vocab, monosemantic_at)
        rows.append(summary.assign(unit_set=name))
    table = pd.concat(rows, ignore_index=True)
    return table[["unit_set", *[c for c in table.columns if c != "unit_set"]]], per_unit


def flat_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """``<metric>_<unit set>`` figures for record_metrics."""
    out: dict[str, float] = {}
    for _, row in summary.iterrows():
        suffix = "_" + str(row["unit_set"]).replace(" ", "_")
        for key, val in row.items():
            if key != "unit_set":
                out[f"{key}{suffix}"] = float(val)
    return out


def plot_methods(summary: pd.DataFrame):
    """Grouped bars: per unit set, each method's mean AUROC for the concept it named, and top-1 accuracy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    xs = np.arange(len(summary))
    for ax, metric in zip(axes, ("assigned_auroc", "top1_accuracy"), strict=True):
        for i, m in enumerate(METHODS):
            ax.bar(xs + (i - 1) * 0.27, summary[f"{m}_{metric}"].fillna(0), width=0.27, label=m)
        ax.set_xticks(xs, summary["unit_set"], fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    axes[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig

"""Name units (patterns, latents, embedding dimensions) with radiology concepts, without masks (MAMMI-style).

MAMMI (Kim, Ahn, Kim, MICCAI 2024) annotates a neuron from its *representative* images only: those whose
activation is within 7% of the neuron's range from its maximum, so a rare-class neuron keeps few images and a
frequent one many (this adaptive count is its class-imbalance correction). Each concept is scored by the
vision-language model's image-text similarity to "A chest x-ray image of a {concept}" minus the similarity
to the bare template, summed over those images; concepts within beta = 0.95 of the best are kept.
A unit's category is the score-weighted vote of its concepts. The vocabulary comes from
``lanic_nb.concepts.vocabulary``; ``lanic_nb.concepts.space`` builds it together with the similarities.

The reports' side (which reports mention a concept, how much a unit's top films' reports agree, a unit's top
sentences) lives in ``lanic_nb.concepts.reports``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lanic_nb.concepts.vocabulary import name_alternatives, normalize_name
from lanic_nb.embed.encoders import LOCAL_PREFIX, load_encoder
from lanic_nb.metrics import auroc_matrix

TEMPLATE = "A chest x-ray image of a {}"


@dataclass
class AnnotationConfig:
    """How a unit's representative images are chosen and its concepts kept. The defaults are MAMMI's released
    ones (plain scoring, no contrast); the settings after ``contrast_neighbors`` extend it and act only with
    contrast (the demo's choices: notebooks/params/demo.yaml; the measured reasons: docs/decisions.md)."""

    top_fraction: float = 0.93
    """Representative images: activation > max - (1 - top_fraction) * (max - min), in (0, 1]. Default: MAMMI's
    released code (Kim et al., MICCAI 2024, arXiv 2407.11375)."""
    min_images: int = 5
    """At least this many representative images (the top ones) when the threshold keeps fewer. Default: MAMMI."""
    max_images: int = 200
    """At most this many representative images (the top ones). Default: engineering (bounds the cost per unit)."""
    beta: float = 0.95
    """Concepts scoring at least beta times the best are kept (MAMMI's adaptive concept threshold), in (0, 1].
    Default: MAMMI."""
    n_top: int = 3
    """Concepts reported per unit (concept_1 .. concept_n). Default: engineering (what a card shows)."""
    category_beta: float = 0.8
    """Concepts scoring at least category_beta times the best vote for the unit's category, in (0, 1].
    Default: chosen on the phantom."""
    center: bool = True
    """Subtract each concept's mean similarity over all images (a concept close to every image names none).
    Default: on, as MAMMI subtracts the bare template's similarity for the same reason."""
    standardize: bool = True
    """Also divide by each concept's standard deviation over the images, so concepts compete on one scale (not in
    MAMMI). Default: on, chosen on the phantom (docs/decisions.md)."""
    contrast_neighbors: int = 0
    """Contrast (0: off, as MAMMI): score a concept by how much more the representative images show it than their
    ``contrast_neighbors`` nearest images (by embedding) on which the unit is quiet (``quiet_images``). What
    co-occurs with the unit's concept (tubes on a portable film) is shared by those look-alikes and cancels; what
    the unit detects does not. Needs the image embeddings. Default: off, as MAMMI (the demo: 20)."""
    own_share: float = 0.9
    """With finding groups: a finding carried by at least this share of a unit's representative images is the
    unit's subject, not a context to match (``unit_groups``), in (0, 1]. Default: chosen on the phantom."""
    finding_level: bool = True
    """Name a unit at the level of a finding when the scores allow: if the best concept is a qualified variant
    ("large pleural effusion") or a bare head word ("tube", "artifact") and a concept of the finding's level it
    stands for (``vocabulary.name_alternatives``) scores within ``beta`` of it, that concept is concept_1.
    Default: on, chosen on the phantom."""
    own_auroc: float = 0.9
    """With finding groups: a finding whose report-labelled films the unit's activation separates from the rest at
    this AUROC or more is its subject too, however few of its representative images carry the label, in [0.5, 1]
    (1: off). A dense unit's few representative images are the films where many things meet, so its own finding
    must not cancel against look-alikes. Default: chosen on the phantom."""
    own_rivals: tuple[str, ...] = ("device", "artifact")
    """With the reports' mentions: a finding is a unit's own by ``own_auroc`` only if the unit follows it more
    closely (label AUROC) than every concept of these categories that at least ``min_images`` reports mention, so
    a shortcut marker's detector that also separates its finding stays named by the marker. Empty: off. Default:
    devices and artifacts (the confounders of hospital data), chosen on the phantom."""
    own_share_sparse: float = 0.8
    """``own_share`` for a sparse unit (firing on fewer than half of the images; 0: ``own_share``), in [0, 1]: such a
    unit is often one part of a finding and has few representative images. Default: chosen on the phantom."""
    own_apart: bool = True
    """With finding groups: a sparse unit takes its look-alikes only from films without its own findings, since
    its silent films hold the rest of its finding's films. Default: on, chosen on the phantom."""
    report_weight: float = 0.0
    """With contrast and the reports' mentions: add, per representative image, this weight times how much more
    often its report mentions the concept than its look-alikes' reports (a share difference in [-1, 1]) to the
    image-side score (z units per image); 0: images alone. A reported device ("portable AP") is named by the
    reports where the image side alone may name the finding it rides on. Default: 0, as MAMMI (the demo: 1.0)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {self.min_images}")
        if self.max_images < self.min_images:
            raise ValueError(f"max_images must be >= min_images, got {self.max_images}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.n_top < 1:
            raise ValueError(f"n_top must be >= 1, got {self.n_top}")
        if not 0.0 < self.category_beta <= 1.0:
            raise ValueError(f"category_beta must be in (0, 1], got {self.category_beta}")
        if self.contrast_neighbors < 0:
            raise ValueError(f"contrast_neighbors must be >= 0, got {self.contrast_neighbors}")
        if not 0.0 <= self.own_share_sparse <= 1.0 or not 0.0 < self.own_share <= 1.0:
            raise ValueError("own_share and own_share_sparse must be shares, "
                             f"got {self.own_share}, {self.own_share_sparse}")
        if not 0.5 <= self.own_auroc <= 1.0:
            raise ValueError(f"own_auroc must be an AUROC in [0.5, 1], got {self.own_auroc}")
        if self.report_weight < 0:
            raise ValueError(f"report_weight must be >= 0, got {self.report_weight}")
        self.own_rivals = tuple(str(c) for c in self.own_rivals)  # papermill passes a list


# ------------------------------------------------------------------------------------ text-side scoring


def load_text_encoder(store, name: str = ""):
    """The VLM whose text tower names the units: ``name``, else the encoder the embedding store was made with."""
    name = name or store.header["encoder"]
    if name.startswith(LOCAL_PREFIX) and not Path(name[len(LOCAL_PREFIX) :]).exists():
        name = LOCAL_PREFIX + str(Path(store.path).parent / "clip")  # the run folder moved: use its own clip/
    return load_encoder(name, device="cpu")


@torch.no_grad()
def embed_concepts(
    encoder, vocab: pd.DataFrame, template: str = TEMPLATE, known_text: Iterable[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept embeddings (C, d) (mean of the prompt over the concept and its synonyms, unit norm) and the
    bare-template embedding (d,), both from the VLM's text tower on CPU.

    known_text: if given (e.g. the reports the VLM was trained on), only names that occur in it enter a
    concept's mean (all of them when none does). A text tower trained on that text alone gives names it never
    read arbitrary embeddings, which would otherwise drown the ones it knows.
    """
    texts, owner = [], []
    for i, names in enumerate(prompt_names(vocab, known_text)):
        for name in names:
            texts.append(template.format(name))
            owner.append(i)
    emb = encoder.encode_texts(texts).float().cpu()  # (n_texts, d)
    sums = torch.zeros(len(vocab), emb.shape[1]).index_add_(0, torch.tensor(owner), emb)
    bare = encoder.encode_texts([template.replace("{}", "").strip()]).float().cpu()[0]
    return F.normalize(sums, dim=1), F.normalize(bare, dim=0)


def prompt_names(vocab: pd.DataFrame, known_text: Iterable[str] | None = None) -> list[list[str]]:
    """Per concept, the names whose prompts are averaged: the concept and its synonyms, restricted to those
    occurring (as whole words, plural too) in ``known_text`` when given, all of them when none occurs."""
    seen = " " + " . ".join(normalize_name(t) for t in known_text) + " " if known_text is not None else None
    out = []
    for concept, syns in zip(vocab["concept"], vocab["synonyms"], strict=True):
        names = [concept, *syns]
        out.append(([n for n in names if _occurs(n, seen)] or names) if seen is not None else names)
    return out


def _occurs(name: str, text: str) -> bool:
    # ``text`` is normalized and space-padded: a whole-word match (plural too) is a plain substring test.
    key = normalize_name(name)
    return bool(key) and (f" {key} " in text or f" {key}s " in text)


def concept_similarity(image_emb: torch.Tensor, concept_emb: torch.Tensor, template_emb: torch.Tensor) -> torch.Tensor:
    """(n, C) similarity of each image to each concept prompt minus its similarity to the bare template."""
    img = F.normalize(image_emb.float(), dim=1)
    return img @ concept_emb.T - (img @ template_emb)[:, None]


def representative_images(act: np.ndarray, cfg: AnnotationConfig) -> np.ndarray:
    """Indices of a unit's representative images (adaptive count, MAMMI), highest activation first."""
    hi, lo = float(act.max()), float(act.min())
    if hi <= lo:
        return np.zeros(0, np.int64)  # a unit that never varies has no representative images
    order = np.argsort(-act, kind="stable")
    n = int((act > hi - (1 - cfg.top_fraction) * (hi - lo)).sum())
    n = int(np.clip(n, cfg.min_images, cfg.max_images))
    n = min(n, int((act > lo).sum()))
    return order[:n]


def finding_groups(labels: np.ndarray) -> np.ndarray:
    """(n_images,) ints: one group per set of positive findings (labels (n_images, n_findings): 1 positive; 0, -1
    uncertain and NaN missing all count as not positive). The labels come from the reports (a labeler), never
    from a planted truth."""
    pos = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1
    if not pos.size:
        return np.zeros(len(pos), np.int64)
    return (pos * (1 << np.arange(pos.shape[1], dtype=np.int64))).sum(axis=1)


def group_bits(groups: np.ndarray) -> np.ndarray:
    """(n_images, n_bits) bool: the findings (bits of :func:`finding_groups`) each image is labelled with."""
    groups = np.asarray(groups, dtype=np.int64)
    n_bits = max(1, int(groups.max(initial=0)).bit_length())
    return (groups[:, None] & (1 << np.arange(n_bits, dtype=np.int64))) != 0


def label_aurocs(act: np.ndarray, labels: np.ndarray, budget: int = 1 << 25) -> np.ndarray:
    """(n_units, n_labels) AUROC of each unit's activation for each label column (0 where a label is constant),
    ``budget`` floats of ranks at a time, so memory stays bounded at MIMIC's scale, where one pass over all units
    would rank n_films x n_units floats at once (docs/decisions.md#naming-own_auroc)."""
    step = max(1, budget // max(1, len(act)))
    out = [auroc_matrix(act[:, u : u + step], labels) for u in range(0, act.shape[1], step)]
    return np.nan_to_num(np.concatenate(out) if out else np.zeros((0, labels.shape[1])), nan=0.0)


def unit_groups(groups: np.ndarray, rep: np.ndarray, own_share: float,
                separates: np.ndarray | None = None) -> np.ndarray:
    """The finding groups (bitmasks, :func:`finding_groups`) one unit compares within: findings that at least
    ``own_share`` of its representative images carry are the unit's own subject and leave the key (a pleural
    effusion pattern is contrasted with films without effusion); findings it only often rides on stay in it
    (a marker that follows effusion is contrasted with effusion films without the marker). ``separates``
    ((n_bits,) bool, see ``AnnotationConfig.own_auroc``): findings that are the unit's own whatever their share."""
    groups = np.asarray(groups, dtype=np.int64)
    if len(rep) == 0:
        return groups
    n_bits = max(1, int(groups.max()).bit_length())
    bits = 1 << np.arange(n_bits, dtype=np.int64)
    own_bits = ((groups[rep, None] & bits) != 0).mean(axis=0) >= own_share  # (n_bits,), from the rep rows only
    if separates is not None:
        own_bits |= np.asarray(separates, bool)
    return groups & ~int(bits[own_bits].sum())


def own_findings(act: np.ndarray, groups: np.ndarray, cfg: AnnotationConfig, mentions: np.ndarray | None = None,
                 categories: np.ndarray | None = None) -> np.ndarray:
    """(n_units, n_bits) bool: the findings each unit separates at ``cfg.own_auroc`` or more (AUROC of its activation
    for the report labels) and, with ``mentions`` and the vocabulary's ``categories``, follows more closely than any
    mentioned concept of the categories ``cfg.own_rivals`` (see ``AnnotationConfig.own_rivals``)."""
    found = label_aurocs(act, group_bits(groups))  # (n_units, n_bits)
    separates = found >= cfg.own_auroc
    if mentions is not None and categories is not None and cfg.own_rivals and separates.any():
        mentions = np.asarray(mentions, dtype=bool)
        rivals = np.isin(categories, cfg.own_rivals) & (mentions.sum(axis=0) >= cfg.min_images)
        if rivals.any():
            closest = label_aurocs(act, mentions[:, rivals]).max(axis=1)  # (n_units,)
            separates &= found > closest[:, None]
    return separates


def fires_on_few(act: np.ndarray) -> bool:
    """A sparse unit: silent (activation <= 0) on at least half of the images (its median activation is 0)."""
    return len(act) == 0 or float(np.median(act)) <= 0


def quiet_images(act: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """(n_images,) bool: where a unit is quiet, the pool its look-alikes come from. Silent images (activation 0)
    for a unit that fires on fewer than half of the images; for one that fires on most (a marker detector that
    every film excites a little) the images at or below its median activation, since the few silent ones would
    be look-alikes of nothing. With ``groups``, such a unit's median in each group: one that also follows a
    finding still has quiet images among that finding's films."""
    act = np.asarray(act)
    if fires_on_few(act):
        return act <= 0
    if groups is None:
        return act <= float(np.median(act))
    groups = np.asarray(groups)
    quiet = np.zeros(len(act), bool)
    for g in np.unique(groups):
        at = groups == g
        quiet[at] = act[at] <= max(0.0, float(np.median(act[at])))
    return quiet


def silent_neighbors(embeddings: np.ndarray, rep: np.ndarray, silent: np.ndarray, k: int,
                     groups: np.ndarray | None = None, unit: bool = False) -> np.ndarray:
    """(len(rep), k) indices: for each representative image, its k nearest silent images by cosine; with
    ``groups`` ((n_images,) ints), only among silent images of its own group while the group holds k of them.
    ``unit``: the embeddings already have unit norm (``annotate_units`` normalizes them once for all units)."""
    cand = np.flatnonzero(silent)
    if len(cand) == 0:
        return np.zeros((len(rep), 0), np.int64)
    e = embeddings if unit else _unit_rows(embeddings)
    k = min(k, len(cand))
    out = np.empty((len(rep), k), np.int64)
    groups = None if groups is None else np.asarray(groups)
    keys = np.zeros(len(rep), np.int64) if groups is None else groups[rep]
    for key in np.unique(keys):
        at = np.flatnonzero(keys == key)
        pool = cand if groups is None else cand[groups[cand] == key]
        if len(pool) < k:
            pool = cand
        sims = e[rep[at]] @ e[pool].T  # (len(at), len(pool))
        out[at] = pool[np.argpartition(-sims, k - 1, axis=1)[:, :k]]
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def annotate_units(
    activations: np.ndarray, similarity: np.ndarray, vocab: pd.DataFrame, cfg: AnnotationConfig | None = None,
    embeddings: np.ndarray | None = None, mentions: np.ndarray | None = None, groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """Name every unit: top concepts with scores, kept count, category and its confidence.

    activations: (n_images, n_units); similarity: (n_images, n_concepts) from :func:`concept_similarity`.
    Concepts are ranked by their similarity summed over the representative images (as MAMMI sums), minus,
    with ``cfg.contrast_neighbors``, that of each image's silent look-alikes (``embeddings``: (n_images, d));
    ``score_k`` reports that sum divided by the number of images, so scores compare across units. With
    ``mentions`` ((n_images, n_concepts) bool, :func:`mention_matrix` of each image's report) and
    ``cfg.report_weight``, the reports' contrast is added (see ``AnnotationConfig.report_weight``). With
    ``groups`` ((n_images,) ints, e.g. the findings each report is labelled with, :func:`finding_groups`) an image's
    look-alikes come from its own group: what a shortcut concept rides on (its finding) is then shared by both
    sides and cancels in the images and the reports alike.
    """
    cfg = cfg or AnnotationConfig()
    if cfg.contrast_neighbors and embeddings is None:
        raise ValueError("contrast_neighbors needs the image embeddings (embeddings=...)")
    act = np.asarray(activations, dtype=np.float32)
    sim = np.asarray(similarity, dtype=np.float32)
    if cfg.center or cfg.standardize:
        sim = sim - sim.mean(axis=0, keepdims=True)
    if cfg.standardize:
        sim = sim / (sim.std(axis=0, keepdims=True) + 1e-6)
    concepts = vocab["concept"].to_numpy()
    cats = vocab["category"].to_numpy()
    alternatives = name_alternatives(vocab) if cfg.finding_level else []
    unit_emb = _unit_rows(np.asarray(embeddings, np.float32)) if cfg.contrast_neighbors else None
    separates = None
    if groups is not None and cfg.contrast_neighbors and cfg.own_auroc < 1:
        separates = own_findings(act, groups, cfg, mentions, cats)
    rows = []
    for u in range(act.shape[1]):
        rep = representative_images(act[:, u], cfg)
        row: dict = {"unit": u, "n_images": len(rep)}
        if len(rep) == 0:
            rows.append(row | {"category": "", "category_confidence": 0.0, "n_kept": 0})
            continue
        score = sim[rep].sum(axis=0)  # (C,) summed over representative images, as MAMMI sums
        if cfg.contrast_neighbors:
            sparse = fires_on_few(act[:, u])
            share = cfg.own_share_sparse if sparse and cfg.own_share_sparse else cfg.own_share
            told = None if separates is None else separates[u]
            keys = None if groups is None else unit_groups(groups, rep, share, told)
            quiet = quiet_images(act[:, u], keys)
            if keys is not None and cfg.own_apart and (sparse or (told is not None and told.any())):
                quiet &= keys == groups  # the look-alikes lack the unit's own findings (see own_apart, own_auroc)
            near = silent_neighbors(unit_emb, rep, quiet, cfg.contrast_neighbors, keys, unit=True)
            if near.shape[1]:
                score = score - sim[near].mean(axis=1).sum(axis=0)
                if mentions is not None and cfg.report_weight:
                    told = mentions[rep].mean(axis=0) - mentions[near.reshape(-1)].mean(axis=0)  # (C,)
                    score = score + cfg.report_weight * len(rep) * told
        order = np.argsort(-score, kind="stable")
        best = float(score[order[0]])
        if cfg.finding_level:
            order = _finding_level_first(order, score, alternatives, _adaptive(best, cfg.beta))
        for r in range(cfg.n_top):
            row[f"concept_{r + 1}"] = concepts[order[r]] if r < len(order) else ""
            row[f"score_{r + 1}"] = float(score[order[r]]) / len(rep) if r < len(order) else np.nan
        row["n_kept"] = int((score >= _adaptive(best, cfg.beta)).sum())
        voters = (score >= _adaptive(best, cfg.category_beta)) & (cats != "")
        votes: Counter[str] = Counter()
        for c in np.nonzero(voters)[0]:
            votes[cats[c]] += max(float(score[c]), 1e-9)  # a positive weight even when all scores are <= 0
        total = sum(votes.values())
        cat, w = votes.most_common(1)[0] if votes else ("", 0.0)
        rows.append(row | {"category": cat, "category_confidence": w / total if total else 0.0})
    columns = ["unit", "n_images", *(f"{k}_{r + 1}" for r in range(cfg.n_top) for k in ("concept", "score")),
               "n_kept", "category", "category_confidence"]
    return pd.DataFrame(rows, columns=columns)


def _finding_level_first(order: np.ndarray, score: np.ndarray, alternatives: list[list[int]],
                         floor: float) -> np.ndarray:
    """The ranking with the best concept's finding-level alternative (``name_alternatives``) first, when one scores
    at least ``floor`` (the adaptive beta threshold: a tie the scores cannot break)."""
    alt = [j for j in alternatives[order[0]] if score[j] >= floor]
    if not alt:
        return order
    pick = max(alt, key=lambda j: score[j])
    return np.concatenate([[pick], order[order != pick]])


def _adaptive(best: float, beta: float) -> float:
    # beta * best when the best score is positive; for a negative best, the same relative distance below it.
    return best * beta if best > 0 else best - (1 - beta) * abs(best)

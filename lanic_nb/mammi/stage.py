"""The MAMMI stage (notebook 08): name the neurons of three unit sets three ways, and compare.

``run_mammi`` trains the small CNN on the run's images (train split), captures the activations of its last
conv layer, of the diagnostic classifier's hidden units and of the transcoder patterns (stage 04), names
every unit with MAMMI, CLIP-Dissect and top-k mean in the shared concept space (``concepts.space``), and
writes ``mammi/neurons.parquet``; on the phantom also ``mammi/summary.csv`` and ``mammi/vlm_ceiling.csv``
(the planted truth is read by ``lanic_nb.mammi.evaluate`` only after every unit is named), and
``metrics/08_mammi.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lanic_nb.concepts.annotate import AnnotationConfig
from lanic_nb.concepts.space import ConceptSpace, concept_space
from lanic_nb.device import pick_device
from lanic_nb.io import write_table
from lanic_nb.mammi.annotate import annotate_neurons, neuron_table
from lanic_nb.mammi.cnn import (
    CNNConfig,
    FindingCNN,
    capture_activations,
    cnn_auroc,
    image_batches,
    load_images,
    train_cnn,
)
from lanic_nb.mammi.evaluate import ceiling_metrics, evaluate_stage, flat_metrics
from lanic_nb.manifest import FINDINGS
from lanic_nb.patterns.merge import PatternSet
from lanic_nb.patterns.stage import StageInputs, load_stage_inputs
from lanic_nb.patterns.units import pattern_activations
from lanic_nb.rundir import RunDir, record_metrics
from lanic_nb.transcoder.stage import hidden_targets

log = logging.getLogger(__name__)

UNIT_SETS = ("cnn last conv", "classifier hidden", "transcoder patterns")


@dataclass
class MammiConfig:
    """Parameters of notebook 08 (its demo defaults)."""

    device: str = "auto"
    """Where the CNN trains and the models run: "auto" (CUDA when present), "cpu", "cuda", ..."""
    cnn_size: int = 64
    """CNN input side (pixels)."""
    cnn_channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    """Conv blocks (all but the last halve the side); the last one is annotated."""
    cnn_hidden: int = 64
    """Width of the CNN's fully connected hidden layer."""
    cnn_epochs: int = 12
    """CNN training epochs."""
    cnn_lr: float = 3e-3
    """CNN AdamW learning rate."""
    k_top: int = 20
    """Top images for the CLIP-Dissect and top-k mean baselines."""
    top_fraction: float = 0.93
    """MAMMI: representative images have activation > max - (1 - top_fraction)(max - min)."""
    beta: float = 0.95
    """MAMMI: keep concepts scoring at least beta times the best."""
    min_images: int = 5
    """At least this many representative images per unit."""
    max_images: int = 200
    """At most this many representative images per unit."""
    mine_min_count: int = 5
    """Mined report phrases must occur in this many reports."""
    max_mined: int = 200
    """Mined phrases added to the vocabulary."""
    known_names_only: bool = True
    """Prompt a concept only by the names (concept, synonyms) its reports use."""
    encoder: str = ""
    """VLM; empty: the encoder the embedding store was made with."""
    monosemantic_at: float = 0.9
    """A unit detects a planted concept when its AUROC reaches this."""

    def __post_init__(self) -> None:
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)  # papermill passes a list
        if not self.cnn_channels or min(self.cnn_channels) < 1:
            raise ValueError(f"cnn_channels must be a non-empty list of positive ints, got {self.cnn_channels}")
        if self.cnn_lr <= 0:
            raise ValueError(f"cnn_lr must be > 0, got {self.cnn_lr}")
        self.annotation_config()
        for name in ("cnn_size", "cnn_hidden", "cnn_epochs", "k_top", "mine_min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_mined < 0:
            raise ValueError(f"max_mined must be >= 0, got {self.max_mined}")
        if not 0.5 <= self.monosemantic_at <= 1.0:
            raise ValueError(f"monosemantic_at must be an AUROC in [0.5, 1], got {self.monosemantic_at}")

    def cnn_config(self) -> CNNConfig:
        return CNNConfig(image_size=self.cnn_size, channels=self.cnn_channels, hidden=self.cnn_hidden,
                         epochs=self.cnn_epochs, lr=self.cnn_lr)

    def annotation_config(self) -> AnnotationConfig:
        return AnnotationConfig(top_fraction=self.top_fraction, beta=self.beta, min_images=self.min_images,
                                max_images=self.max_images)


@dataclass
class MammiResult:
    """What notebook 08 shows; the tables are also written under ``mammi/`` (see the module doc)."""

    cnn: FindingCNN
    cnn_log: pd.DataFrame  # epoch, loss
    cnn_auroc: float  # test mean AUROC over the five findings (NaN when no finding has both classes)
    activations: dict[str, np.ndarray]  # unit set -> (n_images, n_units)
    concepts: ConceptSpace
    annotations: dict[str, pd.DataFrame]  # unit set -> annotate_neurons table
    summary: pd.DataFrame  # summary.csv: one row per unit set (empty without planted truth)
    per_unit: dict[str, pd.DataFrame]  # unit set (and "vlm ceiling") -> truth table (empty without truth)
    neurons: pd.DataFrame  # neurons.parquet
    metrics: dict = field(default_factory=dict)  # as written to metrics/08_mammi.json

    @property
    def ceiling(self) -> pd.DataFrame | None:
        """vlm_ceiling.csv: per planted concept, the zero-shot AUROC of its vocabulary entry (None without truth)."""
        return self.per_unit.get("vlm ceiling")


def unit_activations(
    inp: StageInputs, patterns: PatternSet, cnn: FindingCNN, images: torch.Tensor, device="cpu"
) -> dict[str, np.ndarray]:
    """(n_images, n_units) activations of the three unit sets compared: the CNN's last conv channels, the
    diagnostic classifier's hidden units, and the transcoder patterns."""
    return {
        "cnn last conv": capture_activations(cnn, cnn.last_conv, image_batches(images, cnn.cfg.image_size), device),
        "classifier hidden": hidden_targets(inp.classifier, inp.x.numpy(), device).cpu().numpy(),
        "transcoder patterns": pattern_activations(inp.ensemble, patterns, inp.x).numpy(),
    }


def run_mammi(run_dir: str | Path, config: MammiConfig | None = None) -> MammiResult:
    """Train the CNN, name the units of the three sets three ways, evaluate on the phantom; write ``mammi/``."""
    cfg = config or MammiConfig()
    rd = RunDir(Path(run_dir))
    dev = pick_device(cfg.device)
    inp = load_stage_inputs(rd.root, dev)
    patterns = PatternSet.load(rd.patterns)
    images, ok = load_images(inp.manifest, rd.data, cfg.cnn_size)
    log.info("%d images (%d readable), %d patterns", len(images), int(ok.sum()), patterns.n_patterns)

    split = inp.manifest["split"].astype(str).to_numpy()
    labels = inp.manifest[list(FINDINGS)].to_numpy(dtype=np.float32)
    train, test = (split == "train") & ok, (split == "test") & ok
    cnn, cnn_log = train_cnn(images[train], labels[train], cfg.cnn_config(), dev)
    auc = cnn_auroc(cnn, images[test], labels[test], dev)
    log.info("CNN test mean AUROC over the five findings: %.3f", auc)

    acts = unit_activations(inp, patterns, cnn, images, dev)
    space = concept_space(inp.store, inp.manifest, inp.x, encoder=cfg.encoder, mine_min_count=cfg.mine_min_count,
                          max_mined=cfg.max_mined, known_names_only=cfg.known_names_only)
    log.info("%d concepts (%d mined)", len(space.vocab), space.n_mined)
    ann_cfg = cfg.annotation_config()
    annotations = {name: annotate_neurons(a, space.similarity, space.vocab, ann_cfg, k=cfg.k_top)
                   for name, a in acts.items()}

    # Against the planted truth (phantom only): read after every unit is named.
    sets = {name: (acts[name], annotations[name]) for name in acts}
    summary, per_unit = evaluate_stage(rd.root, inp.image_ids, sets, space.vocab, cfg.monosemantic_at,
                                       similarity=space.similarity)
    neurons = pd.concat([neuron_table(name, ann, per_unit.get(name)) for name, ann in annotations.items()],
                        ignore_index=True)
    out = rd.stage("mammi")
    write_table(out / "neurons.parquet", neurons)
    if len(summary):
        write_table(out / "summary.csv", summary)
    result = MammiResult(cnn, cnn_log, auc, acts, space, annotations, summary, per_unit, neurons)
    if result.ceiling is not None:
        write_table(out / "vlm_ceiling.csv", result.ceiling)
    result.metrics = {
        "cnn_auroc": auc,
        "n_units": {name: int(a.shape[1]) for name, a in acts.items()},
        **flat_metrics(summary),
        **ceiling_metrics(result.ceiling),
    }
    record_metrics(rd.root, "08_mammi", result.metrics)
    return result
